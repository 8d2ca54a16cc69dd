"""Default tolerances of every solve, in one place (docs/design.md section 4, "Tolerances").

:func:`gcrflinalg.solve`, :func:`gcrflinalg.adjoint_solve` and the differentiable layers
(:mod:`gcrflinalg.interop`) all take their default ``rtol`` from :func:`default_rtol`, so a solve
has the same stopping rule ``||b - M x|| <= max(rtol ||b||, atol)`` whichever door it came in by.

The float32 value leaves room for the rounding of the answer itself: a float32 ``x`` carries a
relative error of at least ``u = 2^-24 ~ 6e-8`` per entry, so even the correctly rounded solution
has a residual up to about ``u ||M|| ||x||``, i.e. ``u cond(M) ||b||`` in the worst case.  ``1e-4``
is met by every system with ``cond(M)`` up to about ``10^3`` whatever ``b`` is (and far beyond for
typical right-hand sides), by CG, whose recursive residual is replaced by the true one, and by the
direct solves, which refine against a float64 residual.  Float64 keeps ``1e-8``, tight enough for
gradient checks.
"""
from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_RTOL", "default_rtol"]

#: default relative tolerance per computational dtype
DEFAULT_RTOL = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 1e-4}


def default_rtol(dtype) -> float:
    """The default ``rtol`` of a solve computing in ``dtype``: ``1e-8`` in float64, ``1e-4`` in
    float32 (any other dtype computes in float64 and gets its value)."""
    return DEFAULT_RTOL.get(np.dtype(dtype), DEFAULT_RTOL[np.dtype(np.float64)])
