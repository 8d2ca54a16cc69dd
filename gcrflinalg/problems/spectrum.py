"""Spectral facts of a built-in problem that set its ``lam``, computed from the operator's own product.

For ``M = lam I + A`` the problems need the spectral radius ``rho(B)`` of the off-diagonal part
``B = A - diag(A)`` (``lam > rho(B)`` makes Jacobi converge) and the positive-definiteness bound
``-lambda_min(A)`` (docs/design.md, "Positive definiteness").  Both come from products with the form's
operator, ``A v = M v - lam v`` and ``B v = M v - diag(M) v``, so no form's product is written twice.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_host

__all__ = ["extreme_eigenvalues", "offdiag_spectrum"]

#: a bound below this fraction of ``rho(B)`` is rounding of a structural zero (e.g. ``E^T E`` is PSD)
_ZERO = 1e-9


def extreme_eigenvalues(matvec, n, rng):
    """``(lambda_min, lambda_max)`` of a symmetric operator ``(n, n)`` given by ``matvec``.

    Dense ``eigvalsh`` for small ``n``; otherwise Lanczos (ARPACK) for the eigenvalue ``mu`` of
    largest magnitude, then for the largest-magnitude eigenvalue of ``A - mu I``, which is the other
    end of the spectrum shifted by ``mu``.  The start vector is seeded, so the result is reproducible.
    """
    import scipy.sparse.linalg as spla

    if n <= 150:
        dense = np.asarray(matvec(np.eye(n)))
        ev = np.linalg.eigvalsh((dense + dense.T) / 2.0)
        return float(ev[0]), float(ev[-1])
    v0 = rng.standard_normal(n)

    def top(mv):
        op = spla.LinearOperator((n, n), matvec=mv, matmat=mv, dtype=np.float64)
        ev = spla.eigsh(op, k=1, which="LM", v0=v0, tol=1e-8, maxiter=max(1000, 20 * n),
                        return_eigenvectors=False)
        return float(ev[0])

    mu = top(matvec)
    other = top(lambda v: matvec(v) - mu * v) + mu
    return (min(mu, other), max(mu, other))



def offdiag_spectrum(op, rng):
    """``(rho(B), pd_bound)`` of an unbatched float64 NumPy operator ``op`` (``M = lam I + A``).

    Parameters
    ----------
    op : GCRFOperator
        The problem's operator, any ``lam``.
    rng : numpy.random.Generator
        Seeds the Lanczos start vector.

    Returns
    -------
    rho : float
        Spectral radius of ``B = A - diag(A)``.
    pd_bound : float
        ``max(-lambda_min(A), 0)``: ``M`` is positive definite iff ``lam`` exceeds it.
    """
    n = op.size
    lam = float(to_host(op.lam))
    diag = to_host(op.diagonal()).reshape(n)

    def a_matvec(v):  # (n,) or (n, k)
        return (to_host(op.matvec(np.ascontiguousarray(v.T))) - lam * v.T).T

    def b_matvec(v):
        return (to_host(op.matvec(np.ascontiguousarray(v.T))) - diag * v.T).T

    bmin, bmax = extreme_eigenvalues(b_matvec, n, rng)
    rho = max(abs(bmin), abs(bmax))
    if np.all(diag == lam):  # diag(A) = 0 (grid, Potts, multi-resolution): A = B
        amin = bmin
    else:
        amin, _ = extreme_eigenvalues(a_matvec, n, rng)
    pd_bound = max(-amin, 0.0)
    if pd_bound <= _ZERO * max(rho, np.finfo(float).tiny):
        pd_bound = 0.0
    return rho, pd_bound
