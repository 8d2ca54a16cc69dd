"""The loop shared by the stationary iterations (Jacobi, Gauss-Seidel/SOR)."""
from __future__ import annotations

import numpy as np

from ._operator import finish, norms

__all__ = ["stationary_loop"]


def stationary_loop(pb, x, step, maxiter, callback):
    """Iterate ``x <- step(x, r, active)`` until every system meets the stopping rule.

    Each iteration costs one product for the true residual ``r = b - A x``; systems that converged
    are frozen (``step`` must leave them unchanged).

    Parameters
    ----------
    pb : the prepared problem of :func:`solvers._operator.prepare`
    x : array, shape ``(*batch, n)``
        Initial iterate (the solver's own copy).
    step : callable ``(x, r, active) -> x``
        One iteration from the iterate ``x`` and its residual ``r = b - A x`` on the systems where
        the boolean ``active`` (shape ``batch``) is True.
    maxiter : int
    callback : callable or None
        Called as ``callback(x)`` after every iteration.
    """
    xp, op, b, tol = pb.xp, pb.op, pb.b, pb.tol
    r = b - op.apply(x)
    matvecs = 1
    rnorm = norms(xp, r)
    pb.history.append(rnorm)
    iterations = xp.zeros(pb.batch, dtype=np.int64)
    broken = xp.zeros(pb.batch, dtype=bool)
    active = rnorm > tol
    k = 0
    while k < maxiter and bool(xp.any(active)):
        x = step(x, r, active)
        iterations = iterations + active
        r = b - op.apply(x)
        matvecs += 1
        rnorm = xp.where(active, norms(xp, r), rnorm)
        pb.history.append(rnorm)
        # breakdown: the iteration diverged (the residual overflowed to Inf/NaN)
        broken = broken | (active & ~xp.isfinite(rnorm))
        active = active & (rnorm > tol)
        k += 1
        if callback is not None:
            callback(x)
    return finish(pb, x, final_norm=norms(xp, r), iterations=iterations, broken=broken, matvecs=matvecs)
