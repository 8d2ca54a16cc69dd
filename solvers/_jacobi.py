"""(Damped) Jacobi iteration, batched."""
from __future__ import annotations

import numpy as np

from ._operator import prepare
from ._stationary import stationary_loop

__all__ = ["jacobi"]


def positive_diagonal(pb, method):
    """The diagonal of ``A`` broadcast to ``(*batch, n)``; ``ValueError`` unless every entry is > 0."""
    xp = pb.xp
    d = pb.op.diagonal()
    try:
        d = xp.broadcast_to(d, pb.b.shape)
    except ValueError:
        raise ValueError(
            f"{method}: A.diagonal() has shape {tuple(d.shape)}, which does not broadcast to b's shape "
            f"{tuple(pb.b.shape)}"
        ) from None
    # guard: a zero (division by zero) or negative diagonal entry
    if not bool(xp.all(d > 0)):
        dmin = float(xp.min(d))
        raise ValueError(
            f"{method}: the diagonal of A must be positive (smallest entry {dmin:.6g}); "
            "the method divides by it"
        )
    return d


def jacobi(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, omega=1.0, callback=None):
    """Solve ``A x = b`` with the (damped) Jacobi iteration.

    One iteration, for every system of the batch at once (``D = diag(A)``)::

        x_{k+1} = x_k + omega D^{-1} (b - A x_k)

    ``omega = 1`` is plain Jacobi (for a Gaussian model, the parallel mean-field update).  It
    converges for strictly diagonally dominant ``A``, and for SPD ``A`` when
    ``0 < omega < 2 / lambda_max(D^{-1} A)``.

    Parameters
    ----------
    A : dense array ``(n, n)``, sparse matrix, or object with ``shape``, batched ``matvec`` and
        ``diagonal()`` (a LinearOperator without ``diagonal()`` is rejected with ``TypeError``).
    b : array, shape ``(n,)`` or ``(*batch, n)``
    x0 : array, shape ``b.shape``, optional (never modified)
    rtol, atol : float
        Stopping rule ``||b - A x||_2 <= max(rtol ||b||_2, atol)`` per system.
    maxiter : int, optional
        Maximum number of iterations (default ``10 n``).
    omega : float
        Damping factor, ``omega > 0``.
    callback : callable, optional
        Called as ``callback(x)`` after every iteration.

    Returns
    -------
    SolveResult
        ``info = -1`` when the iteration diverged to Inf/NaN.
        ``residual_norms`` are true residual norms ``||b - A x_k||`` (one product per iteration).
    """
    if not np.isfinite(omega) or not omega > 0:
        raise ValueError(f"jacobi: omega must be > 0, got {omega!r}")
    pb = prepare(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, method="jacobi")
    xp, b, x, dt = pb.xp, pb.b, pb.x, pb.dtype
    maxiter = 10 * pb.n if pb.maxiter is None else pb.maxiter
    d = positive_diagonal(pb, "jacobi")
    w_over_d = dt.type(omega) / d  # omega D^{-1}

    def step(x, r, active):
        # x <- x + omega D^{-1} r on the systems still iterating
        return xp.where(active[..., None], x + w_over_d * r, x)

    return stationary_loop(pb, x, step, maxiter, callback)
