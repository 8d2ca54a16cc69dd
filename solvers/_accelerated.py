"""CG with a preconditioner built for the call (SSOR, AMG): setup time reported apart."""
from __future__ import annotations

import time

from ._amg import amg_preconditioner
from ._cg import cg
from ._ssor import ssor_preconditioner

__all__ = ["ssor_cg", "amg_cg"]


def _with_setup(res, method, setup_s):
    res.method = method
    res.setup_time_s = float(setup_s)
    res.time_s += float(setup_s)
    return res


def ssor_cg(A, b, x0=None, *, omega=1.0, **options):
    """CG preconditioned by :func:`ssor_preconditioner` of ``A`` (built in the call).

    ``options`` are :func:`cg`'s.  The result's ``time_s`` includes the preconditioner's setup,
    also reported alone as ``setup_time_s``; ``omega`` is the relaxation; ``matvecs`` counts CG's
    products with ``A`` (a matrix-free SSOR application adds ``2 C - 1`` more, see
    :class:`solvers._ssor.SSORPreconditioner`).
    """
    t0 = time.perf_counter()
    P = ssor_preconditioner(A, omega)
    res = cg(A, b, x0, M=P, **options)
    res = _with_setup(res, "ssor_cg", time.perf_counter() - t0)
    res.omega = float(omega)
    return res


def amg_cg(A, b, x0=None, *, kind="ruge_stuben", amg_options=None, **options):
    """CG preconditioned by :func:`amg_preconditioner` of ``A`` (built in the call; PyAMG).

    ``options`` are :func:`cg`'s; ``amg_options`` go to PyAMG.  ``time_s`` includes the setup
    (assembly and hierarchy), also reported alone as ``setup_time_s``.
    """
    t0 = time.perf_counter()
    P = amg_preconditioner(A, kind, **(amg_options or {}))
    res = cg(A, b, x0, M=P, **options)
    return _with_setup(res, "amg_cg", time.perf_counter() - t0)
