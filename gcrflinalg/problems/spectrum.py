"""Spectral facts of a built-in problem that set its ``lam``: from the operator's own product, or
from the factors of a grid problem's pairwise blocks.

For ``M = lam I + A`` the problems need the spectral radius ``rho(B)`` of the off-diagonal part
``B = A - diag(A)`` (``lam > rho(B)`` makes Jacobi converge) and the positive-definiteness bound
``-lambda_min(A)`` (docs/design.md, "Positive definiteness").  :func:`offdiag_spectrum` takes both
from products with the form's operator, ``A v = M v - lam v`` and ``B v = M v - diag(M) v``, so no
form's product is written twice; on the Potts grid, ``B = (1 1^T - I) (x) W`` with ``W`` the
``P x P`` edge-weight matrix the operator assembles itself, so the spectrum of ``W`` gives that of
``B`` from products ``L`` times smaller.  The grid problems know their structure
(:class:`gcrflinalg.problems.coupling.GridCoupling`): :func:`structured_spectrum` applies ``B`` from
the ``L x L`` compatibilities and the edge weights, five to seven times cheaper than the operator's
read of the stored blocks, and on the 4-neighbourhood runs Lanczos on ``B^2`` over the red pixels.

The Lanczos updates and inner products are compiled loops with fixed-order sums (per chunk, the
chunk sums added in order; :mod:`gcrflinalg.problems._kernels`), not BLAS calls: a threaded BLAS
call between two products of a parallel Numba kernel leaves BLAS threads spinning on the cores the
kernel needs (several times slower), and its summation order depends on the BLAS thread count, so
the estimates would depend on the machine.  These are the same on any thread count.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_host

__all__ = ["extreme_eigenvalues", "lanczos_extremes", "offdiag_spectrum", "structured_spectrum",
           "spectrum_tolerance", "LANCZOS_TOL"]

#: a bound below this fraction of ``rho(B)`` is rounding of a structural zero (e.g. ``E^T E`` is PSD)
_ZERO = 1e-9

#: Systems up to this size get their extreme eigenvalues exactly, from a dense ``eigvalsh``.
DENSE_MAX = 800

#: The Potts grid's weight matrix ``W`` up to this many pixels gets them from a dense ``eigvalsh``
#: (Lanczos on a ``P x P`` sparse ``W`` is cheaper than a dense eigensolve well below DENSE_MAX).
DENSE_MAX_WEIGHTS = 200

#: Relative accuracy of the Lanczos estimates when no margin sets it (see
#: :func:`spectrum_tolerance`).
LANCZOS_TOL = 1e-6


def spectrum_tolerance(margin=None) -> float:
    """The relative accuracy ``rho(B)`` needs for ``lam = (1 + margin) rho(B)``: a hundredth of the
    margin (so the margin is met to 1%), at most ``1e-2``; :data:`LANCZOS_TOL` without a margin.

    A looser tolerance is what keeps building a large problem near the cost of one CG solve: Lanczos
    needs far fewer steps for ``rho`` to ``1e-3`` than to ``1e-8``.
    """
    if margin is None:
        return LANCZOS_TOL
    return float(min(1e-2, max(1e-10, float(margin) / 100.0)))


def _dot(u, v) -> float:
    """``u . v`` by a NumPy reduction (no BLAS threads; the same sum on every machine)."""
    return float(np.einsum("i,i->", u, v))


def _ritz_extremes(alpha, beta):
    """``((theta_min, s_min), (theta_max, s_max))``: the extreme eigenvalues of the Lanczos
    tridiagonal matrix and the last components of their unit eigenvectors, by a compiled implicit
    QL sweep that rotates the last row only (the residual bounds need nothing more)."""
    from ..gaussian._kernels import gauss_nodes

    if len(alpha) == 1:
        return (float(alpha[0]), 1.0), (float(alpha[0]), 1.0)
    a = np.asarray(alpha, dtype=np.float64)[None]
    nodes = gauss_nodes(a, np.asarray(beta, dtype=np.float64)[None], row=-1)
    if nodes is None:  # no convergence in the QL sweeps: LAPACK
        from scipy.linalg import eigh_tridiagonal

        theta, S = eigh_tridiagonal(a[0], np.asarray(beta, dtype=np.float64))
        return (float(theta[0]), float(S[-1, 0])), (float(theta[-1]), float(S[-1, -1]))
    theta, last = nodes[0][0], nodes[1][0]
    i, j = int(np.argmin(theta)), int(np.argmax(theta))
    return (float(theta[i]), float(last[i])), (float(theta[j]), float(last[j]))


def lanczos_extremes(matvec, n, rng, tol=LANCZOS_TOL, *, ends="both", maxiter=None, start=None):
    """``(lower, upper, products)``: the extreme eigenvalues of a symmetric operator by Lanczos.

    Plain three-term Lanczos from a seeded random start (no reorthogonalisation: its copies of
    converged Ritz values leave the extremes alone), stopped when the residual bound
    ``beta_k |s_k|`` of each extreme Ritz pair wanted (``ends``: ``"both"``, ``"max"``) is at most
    ``tol |theta|``: an eigenvalue lies that close, so the estimate is good to ``tol`` relative.
    The values returned are the extreme Ritz values widened by those bounds (``theta_min - r``,
    ``theta_max + r``), so that they enclose the spectrum rather than fall inside it: ``lam`` set
    from them keeps Jacobi's radius at most ``1 / (1 + margin)``.
    Each step is one product and two vector updates (no ARPACK restarts).  ``start`` replaces the
    random start vector drawn from ``rng``.
    """
    from ._kernels import lanczos_orthogonalise, scaled_copy

    maxiter = int(maxiter or min(n, 2000))
    v = rng.standard_normal(n) if start is None else np.array(start, dtype=np.float64).reshape(n)
    v /= np.sqrt(_dot(v, v))
    v_prev = np.zeros(n)
    alpha, beta = [], []
    b = 0.0
    lo = hi = None
    for k in range(maxiter):
        w = np.asarray(matvec(v), dtype=np.float64).reshape(n)
        # updated in place below: a copy when it is not the product's own new array
        if not (w.flags.writeable and w.flags.c_contiguous) or np.may_share_memory(w, v) \
                or np.may_share_memory(w, v_prev):
            w = w.copy()
        # w -= b v_prev; a = v . w; w -= a v, and ||w||^2: one compiled pass each, fixed-order sums
        a, b2 = lanczos_orthogonalise(w, v, v_prev, b)
        alpha.append(a)
        b = float(np.sqrt(b2))
        if k % 5 == 4 or b == 0.0 or k == maxiter - 1:
            (theta_lo, s_lo), (theta_hi, s_hi) = _ritz_extremes(alpha, beta)
            r_lo, r_hi = b * abs(s_lo), b * abs(s_hi)
            # widened by the residual bounds: an eigenvalue lies within r of each Ritz value, so the
            # interval encloses the extremes once the extreme Ritz values have found them
            lo, hi = theta_lo - r_lo, theta_hi + r_hi
            scale = max(abs(lo), abs(hi), np.finfo(float).tiny)
            if b == 0.0 or (r_hi <= tol * scale and (ends == "max" or r_lo <= tol * scale)):
                return lo, hi, k + 1
        if b == 0.0:
            break
        beta.append(b)
        scaled_copy(v_prev, w, b)  # the next Lanczos vector, w / b, over the oldest one
        v_prev, v = v, v_prev
    return lo, hi, maxiter


def extreme_eigenvalues(matvec, n, rng, tol=LANCZOS_TOL, dense_max=DENSE_MAX):
    """``(lambda_min, lambda_max)`` of a symmetric operator ``(n, n)`` given by ``matvec``.

    Dense ``eigvalsh`` for ``n <= dense_max``; otherwise one Lanczos run for both ends
    (:func:`lanczos_extremes`, relative tolerance ``tol`` of the largest magnitude).  The start
    vector is seeded, so the result is reproducible.
    """
    if n <= dense_max:
        dense = np.asarray(matvec(np.eye(n)))
        ev = np.linalg.eigvalsh((dense + dense.T) / 2.0)
        return float(ev[0]), float(ev[-1])
    lo, hi, _ = lanczos_extremes(matvec, n, rng, tol)
    return lo, hi


def _bipartite_signs(op, b_matvec, n, rng, *, labels=None):
    """``+-1`` per unknown from the operator's two-colouring, when ``B`` couples only unknowns of
    different colours (checked with one random product pair); else None.

    With ``labels`` the signs are those of the pixels (the colouring of label 0), for a matrix on
    the ``n`` pixels such as the Potts grid's ``W``."""
    classes = getattr(op, "colour_classes", None)
    if not callable(classes):
        return None
    masks = np.asarray(to_host(classes()))
    if labels is not None and masks.ndim == 2 and masks.shape[1] == labels * n:
        masks = masks[:, :n]  # label 0's block: every label of a pixel has the pixel's colour
    if masks.ndim != 2 or masks.shape != (2, n):
        return None
    signs = np.where(masks[0], 1.0, -1.0)
    v = rng.standard_normal(n)
    bv = b_matvec(v)
    r = b_matvec(signs * v) + signs * bv
    gap2, ref2 = _dot(r, r), _dot(bv, bv)
    return signs if gap2 <= 1e-20 * max(ref2, np.finfo(float).tiny) else None


def _potts_weight_matvec(op, b_matvec, n, rng):
    """``(W v, P, L)`` when ``B = (1 1^T - I) (x) W`` (the Potts grid: ``W`` its ``P x P`` edge-weight
    matrix, labels outermost), checked with one random product; else None."""
    weight_matrix = getattr(op, "weight_matrix", None)
    L = getattr(op, "num_labels", None)
    if not callable(weight_matrix) or not getattr(op, "_potts", False) or not L or n % L:
        return None
    try:
        W = weight_matrix()
    except Exception:  # batched or otherwise not a single P x P matrix
        return None
    P = n // L
    if tuple(W.shape) != (P, P):
        return None
    W = W.astype(np.float64).tocsr()

    def w_matvec(v):  # (P,) or (P, k)
        return np.asarray(W @ v)

    # B v = W (s - v_l) per label, s the label sum: one product of each kind checks the structure
    v = rng.standard_normal(n)
    vl = v.reshape(L, P)
    kron = w_matvec((vl.sum(axis=0)[None, :] - vl).T).T.reshape(n)
    bv = b_matvec(v)
    r = bv - kron
    if _dot(r, r) > 1e-20 * max(_dot(bv, bv), np.finfo(float).tiny):
        return None
    return w_matvec, P, int(L)


def _largest_algebraic(matvec, n, rng, tol):
    return lanczos_extremes(matvec, n, rng, tol, ends="max")[1]


def _offdiag_extremes(b_matvec, n, rng, tol, *, bipartite=False, weights=None):
    """``(lambda_min(B), lambda_max(B))`` given what is known of ``B``'s structure.

    ``bipartite``: ``B`` only couples two colour classes, so its spectrum is symmetric and one end
    gives both.  ``weights = (w_matvec, P, L, w_bipartite)``: ``B = (1 1^T - I) (x) W`` with ``W``
    the ``P x P`` matrix of ``w_matvec`` (bipartite or not), whose eigenvalues ``mu`` give those of
    ``B``, ``(L - 1) mu`` and ``-mu``.
    """
    if weights is not None:
        w_matvec, P, L, w_bipartite = weights
        if w_bipartite:  # W bipartite too: its spectrum is symmetric
            wmax = _largest_algebraic(w_matvec, P, rng, tol)
            wmin = -wmax
        else:
            wmin, wmax = extreme_eigenvalues(w_matvec, P, rng, tol, dense_max=DENSE_MAX_WEIGHTS)
        return (min((L - 1) * wmin, -wmax), max((L - 1) * wmax, -wmin)) if L > 1 else (0.0, 0.0)
    if bipartite:
        # a two-colouring that B only couples across (red-black on a 4-neighbourhood): S B S = -B
        # with S = diag(signs), so the spectrum of B is symmetric and one end gives both
        bmax = _largest_algebraic(b_matvec, n, rng, tol)
        return -bmax, bmax
    return extreme_eigenvalues(b_matvec, n, rng, tol)


def _radius_and_bound(bmin, bmax, amin):
    rho = max(abs(bmin), abs(bmax))
    pd_bound = max(-amin, 0.0)
    if pd_bound <= _ZERO * max(rho, np.finfo(float).tiny):
        pd_bound = 0.0
    return rho, pd_bound


def offdiag_spectrum(op, rng, tol=LANCZOS_TOL):
    """``(rho(B), pd_bound)`` of an unbatched float64 NumPy operator ``op`` (``M = lam I + A``).

    Parameters
    ----------
    op : GCRFOperator
        The problem's operator, any ``lam``.
    rng : numpy.random.Generator
        Seeds the Lanczos start vector.
    tol : float
        Relative accuracy of the Lanczos estimates (:func:`spectrum_tolerance`).

    A form whose unknowns split in two colours that ``B`` only couples across (the grid forms on
    4-neighbourhoods, through their ``colour_classes()``, checked with two products) has a symmetric
    spectrum: ``lambda_max(B)`` alone gives ``rho(B)`` and the bound.  On the Potts grid,
    ``B = (1 1^T - I) (x) W`` (checked with one product), so ``rho(B) = (L - 1) rho(W)`` and
    ``lambda_min(B) = min((L - 1) lambda_min(W), -lambda_max(W))`` come from Lanczos on the
    ``P x P`` matrix ``W``.  Plain Lanczos to the tolerance the margin needs costs a few dozen
    products.  :func:`structured_spectrum` gives the same facts of a grid problem from its factors,
    without products of ``op``.

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

    structured = np.all(diag == lam) and n > DENSE_MAX
    potts = _potts_weight_matvec(op, b_matvec, n, rng) if structured else None
    signs = _bipartite_signs(op, b_matvec, n, rng) if structured and potts is None else None
    if potts is not None:
        w_matvec, P, L = potts
        wsigns = _bipartite_signs(op, w_matvec, P, rng, labels=L) if P > DENSE_MAX_WEIGHTS else None
        bmin, bmax = _offdiag_extremes(b_matvec, n, rng, tol, weights=(w_matvec, P, L, wsigns is not None))
    else:
        bmin, bmax = _offdiag_extremes(b_matvec, n, rng, tol, bipartite=signs is not None)
    if np.all(diag == lam):  # diag(A) = 0 (grid, Potts, multi-resolution): A = B
        amin = bmin
    else:
        amin, _ = extreme_eigenvalues(a_matvec, n, rng, tol)
    return _radius_and_bound(bmin, bmax, amin)


def _leaning_start(rng, vectors):
    """A random unit vector plus half of each of ``vectors`` (each scaled to unit length)."""
    v = rng.standard_normal(vectors[0].shape[0])
    v /= np.sqrt(_dot(v, v))
    for x in vectors:
        v += 0.5 * x / np.sqrt(_dot(x, x))
    return v


def structured_spectrum(coupling, rng, tol=LANCZOS_TOL):
    """``(rho(B), pd_bound, probe)`` of a grid problem from its factors
    (:class:`gcrflinalg.problems.coupling.GridCoupling`), without its operator.

    The structure is known rather than tested.  Each product is a small matrix product of the
    factors per tile of pixels (:meth:`GridCoupling.matvec`) instead of a read of the stored blocks.

    - General grid, 4-neighbourhood: ``B`` only couples red and black pixels, so its spectrum is
      symmetric, ``+-sigma_i(C)`` for ``C = B[red, black]``.  Lanczos runs on ``C C^T`` (``B^2`` on
      the red pixels, vectors of half the length, each product two half-size ones), whose largest
      eigenvalue ``rho^2`` it gets to the relative tolerance ``tol (2 - tol)``, so that ``rho`` is
      good to ``tol`` as on the other paths.  A polynomial of degree ``k`` in ``B^2`` is one of
      degree ``2 k`` in ``B`` at the price of ``k`` products: about half the products of Lanczos on
      ``B``.
    - General grid, 8- and 12-neighbourhoods: Lanczos on ``B``, both ends.
    - Potts grid: Lanczos on ``W`` (``P x P``; one end on the 4-neighbourhood), as
      :func:`offdiag_spectrum` does, from the same start vector, so the two give the same ``rho``
      and bound to rounding.

    On the general grid Lanczos starts from a random unit vector plus half of each of the four
    vectors of :meth:`GridCoupling.likely_extreme_vectors` (products of the extreme eigenvectors
    of the mean compatibility and of ``W``): the residual bounds that stop it do not depend on the
    start, which only shortens the run (a third to a half fewer products at the thesis's size) and makes it
    less likely to stop on a Ritz value short of the extreme one.

    ``probe`` is a random vector of shape ``(N,)`` for :meth:`GridCoupling.matches`, the one product
    with the problem's operator that checks the factors.
    """
    n = coupling.size
    L, P = coupling.num_labels, coupling.num_pixels
    bipartite = coupling.neighbourhood == 4
    probe = None
    if n <= DENSE_MAX:
        bmin, bmax = _offdiag_extremes(coupling.matvec, n, rng, tol)
    elif coupling.potts:
        probe = rng.standard_normal(n)
        w_bipartite = bipartite and P > DENSE_MAX_WEIGHTS
        if w_bipartite:
            rng.standard_normal(P)  # offdiag_spectrum's test of W's colouring draws this
        bmin, bmax = _offdiag_extremes(None, n, rng, tol, weights=(coupling.weight_matvec, P, L, w_bipartite))
    elif bipartite:
        probe = rng.standard_normal(n)
        start = _leaning_start(rng, list(coupling.likely_extreme_vectors(red_only=True)))
        # hi^2 <= rho^2 / (1 - tol (2 - tol)) = (rho / (1 - tol))^2: the bound on the other paths
        _, square, _ = lanczos_extremes(coupling.red_square_matvec, coupling.red_size, rng, tol * (2.0 - tol),
                                        ends="max", start=start)
        bmax = float(np.sqrt(max(square, 0.0)))
        bmin = -bmax
    else:
        out = np.empty(n)

        def b_matvec(v):  # into one buffer: Lanczos uses each product once
            return coupling.matvec(v, out=out)

        start = _leaning_start(rng, coupling.likely_extreme_vectors())
        bmin, bmax, _ = lanczos_extremes(b_matvec, n, rng, tol, start=start)
    if probe is None:
        probe = rng.standard_normal(n)
    rho, pd_bound = _radius_and_bound(bmin, bmax, bmin)  # diag(A) = 0 on the grids: A = B
    return rho, pd_bound, probe
