"""Spectral estimates the accelerations need, from a short CG run's Ritz values (no dense algebra).

The Lanczos tridiagonal of ``k`` CG steps (:mod:`solvers._lanczos`) gives Ritz values inside the
spectrum whose extremes converge first; ``k`` products buy both ends of the spectrum of ``A`` (or of
``D^{-1} A``, the Jacobi-scaled operator) to the accuracy the accelerations need.
"""
from __future__ import annotations

import numpy as np

from .backend import to_host

from ._cg import cg
from ._operator import prepare

__all__ = ["ritz_bounds", "estimate_jacobi_radius", "ESTIMATE_STEPS"]

#: CG steps of the spectral estimates (each one product with ``A``).
ESTIMATE_STEPS = 40


def _probe(pb, seed):
    """Seeded random right-hand sides of the problem's batch shape, on its device and dtype."""
    rng = np.random.default_rng(seed)
    return pb.xp.asarray(rng.standard_normal(pb.b.shape)).astype(pb.dtype)


def ritz_bounds(A, b, *, M=None, steps=None, seed=0):
    """``(theta_min, theta_max, products)``: extreme Ritz values of ``A`` (``M A`` with ``M``).

    ``steps`` CG steps (default :data:`ESTIMATE_STEPS`, at most ``n``) from a seeded random start
    of ``b``'s shape; the values are the extremes over the batch (one interval for every system).
    ``theta_min >= lambda_min`` and ``theta_max <= lambda_max`` up to rounding: the interval lies
    inside the spectrum and grows towards it with ``steps``.
    """
    pb = prepare(A, b, None, rtol=0.0, atol=0.0, maxiter=None, method="ritz_bounds")
    steps = min(ESTIMATE_STEPS if steps is None else int(steps), max(pb.n, 1))
    res = cg(A, _probe(pb, seed), rtol=0.0, maxiter=steps, M=M, check_pd=False, true_residual=False)
    theta = np.asarray(res.ritz_values, dtype=np.float64).reshape(-1)
    theta = theta[np.isfinite(theta)]
    if theta.size == 0:
        raise ValueError("ritz_bounds: CG took no step (n = 0 or a zero operator)")
    return float(theta.min()), float(theta.max()), int(res.matvecs)


def estimate_jacobi_radius(A, b, *, steps=None, seed=0):
    """``(rho_J, products)``: the spectral radius of the Jacobi iteration matrix ``I - D^{-1} A``.

    For SPD ``A`` the eigenvalues ``mu`` of ``D^{-1} A`` are real and ``rho_J = max |1 - mu|``; the
    extreme ``mu`` come from the Ritz values of Jacobi-preconditioned CG (:func:`ritz_bounds`), so
    the estimate is a lower bound of ``rho_J`` that sharpens with ``steps``.  The maximum over the
    systems of a batch.
    """
    pb = prepare(A, b, None, rtol=0.0, atol=0.0, maxiter=None, method="estimate_jacobi_radius")
    d = pb.xp.broadcast_to(pb.op.diagonal(), pb.b.shape)
    if not bool(pb.xp.all(d > 0)):
        raise ValueError(f"estimate_jacobi_radius: the diagonal of A must be positive (smallest entry "
                         f"{float(to_host(pb.xp.min(d))):.6g})")
    inv_d = 1.0 / d

    def jacobi_scaling(R):
        return R * inv_d

    lo, hi, products = ritz_bounds(A, b, M=jacobi_scaling, steps=steps, seed=seed)
    return max(abs(1.0 - lo), abs(hi - 1.0)), products
