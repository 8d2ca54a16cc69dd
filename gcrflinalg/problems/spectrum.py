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

#: Relative accuracy of the Lanczos (ARPACK) estimates.  ``lam = (1 + margin) rho(B)`` needs ``rho``
#: to a small fraction of the smallest margin studied (1e-3), not to full accuracy.
LANCZOS_TOL = 1e-6


def extreme_eigenvalues(matvec, n, rng):
    """``(lambda_min, lambda_max)`` of a symmetric operator ``(n, n)`` given by ``matvec``.

    Dense ``eigvalsh`` for small ``n``; otherwise Lanczos (ARPACK, relative tolerance
    :data:`LANCZOS_TOL`) for the eigenvalue ``mu`` of
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
        ev = spla.eigsh(op, k=1, which="LM", v0=v0, tol=LANCZOS_TOL, maxiter=max(1000, 20 * n),
                        return_eigenvectors=False)
        return float(ev[0])

    mu = top(matvec)
    other = top(lambda v: matvec(v) - mu * v) + mu
    return (min(mu, other), max(mu, other))



def _bipartite_signs(op, b_matvec, n, rng):
    """``+-1`` per unknown from the operator's two-colouring, when ``B`` couples only unknowns of
    different colours (checked with one random product pair); else None."""
    classes = getattr(op, "colour_classes", None)
    if not callable(classes):
        return None
    masks = np.asarray(to_host(classes()))
    if masks.ndim != 2 or masks.shape != (2, n):
        return None
    signs = np.where(masks[0], 1.0, -1.0)
    v = rng.standard_normal(n)
    bv = b_matvec(v)
    gap = np.linalg.norm(b_matvec(signs * v) + signs * bv)
    return signs if gap <= 1e-10 * max(np.linalg.norm(bv), np.finfo(float).tiny) else None


def _largest_algebraic(matvec, n, rng):
    import scipy.sparse.linalg as spla

    op = spla.LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
    ev = spla.eigsh(op, k=1, which="LA", v0=rng.standard_normal(n), tol=LANCZOS_TOL,
                    maxiter=max(1000, 20 * n), return_eigenvectors=False)
    return float(ev[0])


def offdiag_spectrum(op, rng):
    """``(rho(B), pd_bound)`` of an unbatched float64 NumPy operator ``op`` (``M = lam I + A``).

    Parameters
    ----------
    op : GCRFOperator
        The problem's operator, any ``lam``.
    rng : numpy.random.Generator
        Seeds the Lanczos start vector.

    A form whose unknowns split in two colours that ``B`` only couples across (the grid forms on
    4-neighbourhoods, through their ``colour_classes()``) has a symmetric spectrum: one Lanczos run
    for ``lambda_max(B)`` gives ``rho(B)`` and the bound, about one CG solve's products.

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

    signs = _bipartite_signs(op, b_matvec, n, rng) if np.all(diag == lam) and n > 150 else None
    if signs is not None:
        # a two-colouring that B only couples across (red-black on a 4-neighbourhood): S B S = -B
        # with S = diag(signs), so the spectrum of B is symmetric and one end gives both
        bmax = _largest_algebraic(b_matvec, n, rng)
        bmin = -bmax
    else:
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
