"""Chebyshev iteration from eigenvalue bounds (given, or from a short CG's Ritz values)."""
from __future__ import annotations

import time

import numpy as np

from ._operator import prepare
from ._preconditioners import as_preconditioner
from ._spectral import ritz_bounds
from ._stationary import stationary_loop

__all__ = ["chebyshev", "UPPER_SAFETY"]

#: Estimated bounds widen the largest Ritz value by this factor: Chebyshev diverges on eigenvalues
#: above the interval, while one below it only slows it down.
UPPER_SAFETY = 1.05


def chebyshev(A, b, x0=None, *, eig_bounds=None, M=None, rtol=1e-5, atol=0.0, maxiter=None, callback=None,
              estimate_steps=None):
    """Solve ``A x = b`` (SPD ``A``) with the Chebyshev iteration on an eigenvalue interval.

    With ``[l, u]`` containing the spectrum of ``A`` (of ``M A`` with a preconditioner), ``theta =
    (u + l) / 2``, ``delta = (u - l) / 2``, ``sigma = theta / delta`` (Saad, *Iterative Methods for
    Sparse Linear Systems*, Alg. 12.1)::

        d_0 = z_0 / theta,                          rho_0 = 1 / sigma
        x_{k+1} = x_k + d_k,                        z_k = M (b - A x_k)
        rho_{k+1} = 1 / (2 sigma - rho_k)
        d_{k+1} = rho_{k+1} rho_k d_k + (2 rho_{k+1} / delta) z_{k+1}

    No inner products: every step is fixed by ``[l, u]``, and the error falls at least as
    ``2 ((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^k`` with ``kappa = u / l``, CG's bound, which CG
    meets without bounds.  Each iteration costs one product (the true residual, which the stopping
    rule uses).

    Parameters
    ----------
    A : dense array, sparse matrix, LinearOperator or batched operator (SPD)
    b : array, shape ``(n,)`` or ``(*batch, n)``
    x0 : array, shape ``b.shape``, optional (never modified)
    eig_bounds : (float, float), optional
        ``0 < l < u`` enclosing the spectrum.  Default: the extreme Ritz values of
        ``estimate_steps`` CG steps on a random start (:func:`solvers._spectral.ritz_bounds`), the
        upper one widened by :data:`UPPER_SAFETY`.
    M : preconditioner, optional
        As for :func:`cg` (SPD); the bounds are then those of ``M A``.
    rtol, atol, maxiter, callback
        As for every solver (``maxiter`` default ``10 n``).
    estimate_steps : int, optional
        CG steps of the bounds' estimate (default :data:`solvers._spectral.ESTIMATE_STEPS`).

    Returns
    -------
    SolveResult
        ``eig_bounds`` the interval used; ``matvecs`` and ``time_s`` include the estimate's
        products and time.  ``residual_norms`` are true residual norms.  ``info = -1`` when the
        iteration diverged (an upper bound below ``lambda_max``).
    """
    t0 = time.perf_counter()
    products = 0
    if eig_bounds is None:
        lo, hi, products = ritz_bounds(A, b, M=M, steps=estimate_steps)
        hi *= UPPER_SAFETY
    else:
        try:
            lo, hi = (float(v) for v in eig_bounds)
        except (TypeError, ValueError):
            raise TypeError(f"chebyshev: eig_bounds must be a pair of floats (lower, upper), got {eig_bounds!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 < lo < hi):
        raise ValueError(f"chebyshev: eig_bounds must satisfy 0 < lower < upper (finite), got ({lo!r}, {hi!r}); "
                         "A must be positive definite")
    setup = time.perf_counter() - t0
    pb = prepare(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, method="chebyshev")
    pb.t0 -= setup
    xp, dt = pb.xp, pb.dtype
    maxiter = 10 * pb.n if pb.maxiter is None else pb.maxiter
    precond = as_preconditioner(M, xp, pb.n, dt)
    theta, delta = 0.5 * (hi + lo), 0.5 * (hi - lo)
    sigma = theta / delta
    state = {"d": None, "rho": 1.0 / sigma}

    def step(x, r, active):
        z = r if precond is None else precond(r)
        if state["d"] is None:
            d = z / dt.type(theta)
        else:
            rho_new = 1.0 / (2.0 * sigma - state["rho"])
            d = dt.type(rho_new * state["rho"]) * state["d"] + dt.type(2.0 * rho_new / delta) * z
            state["rho"] = rho_new
        d = xp.where(active[..., None], d, dt.type(0))
        state["d"] = d
        return x + d

    res = stationary_loop(pb, pb.x, step, maxiter, callback)
    res.eig_bounds = (float(lo), float(hi))
    res.matvecs += products
    return res
