"""Exact log-determinants, marginal variances and log-determinant gradients from each form's structure.

Low-rank forms (docs/design.md 3.4, 3.5) and video (3.6) are ``lam I`` plus a term of rank ``r``
held in an ``r``-dimensional space, so everything here costs ``O(N r^2 + r^3)`` and reuses the
factorisation that the operator caches for its direct solve:

* 3.4, ``M = lam I + E^T E``, ``G = E E^T = Q diag(s) Q^T``, ``F = (lam I_D + G)^{-1}``::

      log det M    = N log lam + sum_i log(1 + s_i / lam)                 (determinant lemma)
      diag(M^{-1}) = (1 - sum_{d,d'} E[d,n] F[d,d'] E[d',n]) / lam          (Woodbury)
      d log det M / dE = 2 F E,    d log det M / d lam = tr(M^{-1}) = (N - tr(F G)) / lam

* 3.5 (``L >= 2``), ``W = psi^T psi``, the split of 3.2:
  ``M^{-1} = (1/L) 1 1^T (x) (lam I + (L-1) W)^{-1} + (I - 1 1^T / L) (x) (lam I - W)^{-1}``, so
  with ``F_c = (lam I_D + c G)^{-1}``::

      log det M = log det(lam I + (L-1) W) + (L-1) log det(lam I - W)
                = N log lam + sum_i log(1 + (L-1) s_i / lam) + (L-1) sum_i log(1 - s_i / lam)
      diag(M^{-1})[l, p] = v_{L-1}[p] / L + (1 - 1/L) v_{-1}[p],  v_c = (1 - c psi_p^T F_c psi_p) / lam
      d log det M / d psi = 2 (L-1) (F_{L-1} - F_{-1}) psi

* 3.6, ``M = lam I + U^T C U`` with the cached Cholesky factor ``lam I + B = L L^T`` of the
  ``r x r`` capacitance matrix (``r = V (Ds + Dt)``) and
  ``M^{-1} = I / lam - U^T H U / lam^2``, ``H = C - (C R)(lam I + B)^{-1}(C R)^T``::

      log det M    = (N - r) log lam + 2 sum_i log L_ii
      diag(M^{-1}) = 1 / lam - diag(E_v^T H_vv E_v) / lam^2       (frame v, E_v = [S_v; T_v])

Grid and multi-resolution forms (3.1–3.3) are factored by a sparse LU of their CSR matrix
(:func:`sparse_factor`), in symmetric mode without row pivoting: for a symmetric positive-definite
matrix that is ``L D L^T`` with every pivot ``> 0``, so a non-positive pivot (or a forced row
interchange) proves ``M`` not positive definite.
"""
from __future__ import annotations

import numpy as np

from solvers import NotPositiveDefiniteError

from ..operator import _sum_to_shape
from ._common import form_kind

__all__ = ["lowrank_logdet", "lowrank_inv_quad", "lowrank_variances", "lowrank_logdet_gradients", "video_logdet",
           "video_variances", "sparse_factor", "sparse_logdet", "sparse_variances",
           "structured_logdet", "structured_variances", "LOGDET_EXACT_MAX_SIZE",
           "VARIANCES_EXACT_MAX_SIZE"]

#: the largest system (unknowns ``N``) whose log-determinant ``method="exact"`` factors by sparse LU
#: (grid and multi-resolution forms); above it use ``method="slq"``.  A 2-D grid's LU fill grows
#: like ``N log N``: ``N = 24,000`` factors in about half a second on one core.
LOGDET_EXACT_MAX_SIZE = 250_000

#: the largest system whose exact marginal variances are computed by sparse LU (``N`` solves in
#: blocks of columns); above it use ``method="stochastic"``.
VARIANCES_EXACT_MAX_SIZE = 10_000


def _lam64(op):
    return op.lam.astype(np.float64)


# ----------------------------------------------------------------------------- low-rank forms
def _potts_parts(op):
    """``(psi (*batch, D, P) float64, G, [(c, F_c, s)])`` of a low-rank Potts operator (``L >= 2``)."""
    op.check_positive_definite()  # lam > ||psi||_2^2, exact; raises otherwise
    label_sum, per_label = op.factorize()
    xp = op.xp
    gram = op._gram.astype(np.float64)
    s = per_label.gram_eigenvalues
    parts = [(float(op.num_labels - 1), label_sum.range_inverse.astype(np.float64), s),
             (-1.0, per_label.range_inverse.astype(np.float64), s)]
    return op._psi.astype(np.float64), xp, gram, parts


def lowrank_logdet(op):
    """``log det M`` of a 3.4 or 3.5 operator, shape ``batch_shape`` (float64, on ``op.xp``)."""
    xp, lam, n = op.xp, _lam64(op), op.size
    if form_kind(op) == "lowrank":
        factor = op.factorize()
        if factor._cholesky_ok:
            # det(lam I_D + G) from the Cholesky factor the solve uses: no eigenvalues needed
            return (n - op.rank) * xp.log(lam) + factor.capacitance_logdet
        s = factor.gram_eigenvalues
        return n * xp.log(lam) + xp.log1p(s / lam[..., None]).sum(axis=-1)
    if op.num_labels == 1:
        return n * xp.log(lam)
    _, _, _, parts = _potts_parts(op)
    L = op.num_labels
    s = parts[0][2]
    return (n * xp.log(lam) + xp.log1p((L - 1) * s / lam[..., None]).sum(axis=-1)
            + (L - 1) * xp.log1p(-s / lam[..., None]).sum(axis=-1))


def lowrank_inv_quad(op, bflat):
    """``b^T M^{-1} b`` of a 3.4 operator for ``b`` of shape ``(*batch_shape, N)``, shape ``batch_shape``
    (float64, on ``op.xp``), from the cached factor in ``D``-space:
    ``b^T M^{-1} b = (b^T b - c^T F c) / lam`` with ``c = E b`` and ``F = (lam I_D + G)^{-1}``
    (Woodbury): one pass over ``E`` instead of the two of a solve."""
    lam = _lam64(op)
    b64 = bflat.astype(np.float64, copy=False)
    factor = op.factorize()  # first: its Gram matrix checks E for NaN/Inf for free
    c = op._emb_flat @ bflat[..., None]  # (*batch, D, 1)
    cfc = factor.range_quadratic(c)[..., 0]  # ||L^{-1} c||^2 from the Cholesky factor
    return ((b64 * b64).sum(axis=-1) - cfc) / lam


def _quadratic_rows(F, E):
    """``sum_{d,d'} E[d,n] F[d,d'] E[d',n]`` for every column ``n``: ``F`` ``(..., D, D)``, ``E``
    ``(..., D, n)`` -> ``(..., n)``, ``O(n D^2)``."""
    return ((F @ E) * E).sum(axis=-2)


def lowrank_variances(op):
    """``diag(M^{-1})`` of a 3.4 or 3.5 operator, shape ``batch_shape + vector_shape``, float64."""
    xp, lam = op.xp, _lam64(op)
    shape = op.batch_shape + op.vector_shape
    if form_kind(op) == "lowrank":
        F = op.factorize().range_inverse.astype(np.float64)
        E = op._emb_flat.astype(np.float64)
        d = (1.0 - _quadratic_rows(F, E)) / lam[..., None]
        return d.reshape(shape)
    L = op.num_labels
    if L == 1:
        return xp.broadcast_to((1.0 / lam).reshape(lam.shape + (1, 1, 1)), shape).copy()
    psi, _, _, parts = _potts_parts(op)
    v = [(1.0 - c * _quadratic_rows(F, psi)) / lam[..., None] for c, F, _ in parts]
    per_pixel = v[0] / L + (1.0 - 1.0 / L) * v[1]  # (*batch, P)
    per_pixel = per_pixel.reshape(op.batch_shape + (1,) + op.vector_shape[1:])
    return xp.broadcast_to(per_pixel, shape).copy()


def lowrank_logdet_gradients(op) -> dict:
    """Exact ``d log det M / d theta`` of a 3.4 or 3.5 operator: ``{parameter: array, "lam": ...}``
    shaped like the parameters (``lam`` summed to the shape it was given in)."""
    xp, lam, n = op.xp, _lam64(op), op.size
    if form_kind(op) == "lowrank":
        factor = op.factorize()
        F = factor.range_inverse.astype(np.float64)
        E = op._emb_flat.astype(np.float64)
        G = E @ xp.swapaxes(E, -1, -2)
        grad_e = 2.0 * (F @ E)
        trace = (n - xp.einsum("...ij,...ji->...", F, G)) / lam
        grads = {"embeddings": grad_e.reshape(op.embeddings.shape)}
    else:
        L = op.num_labels
        if L == 1:
            grads = {"embeddings": xp.zeros(op.embeddings.shape)}
            trace = n / lam
        else:
            psi, _, G, parts = _potts_parts(op)
            (c1, F1, _), (c2, F2, _) = parts
            grads = {"embeddings": (2.0 * (L - 1) * ((F1 - F2) @ psi)).reshape(op.embeddings.shape)}
            p = op.num_pixels

            def tr(c, F):
                return (p - c * xp.einsum("...ij,...ji->...", F, G)) / lam

            trace = tr(c1, F1) + (L - 1) * tr(c2, F2)
    grads["lam"] = _sum_to_shape(trace, op._lam_shape, xp)
    return grads


# ----------------------------------------------------------------------------- video
def _video_parts(op):
    """``(cap, E (*batch, V, D, n) float64, H (*batch, V, D, V, D))`` of a video operator."""
    xp = op.xp
    cap = op.factorize()  # raises NotPositiveDefiniteError when lam I + B has no Cholesky factor
    V, Ds, D, Dt = op.n_frames, op.spatial_dim, cap["D"], cap["Dt"]
    E = op._S.astype(np.float64)
    if Dt:
        E = xp.concatenate([E, op._T.astype(np.float64)], axis=-2)
    core = np.zeros((V, D, V, D))
    for v in range(V):
        core[v, :Ds, v, :Ds] = np.eye(Ds)
    if Dt:
        core[:, Ds:, :, Ds:] = op.coupling[:, None, :, None] * np.eye(Dt)[None, :, None, :]
    core = xp.asarray(core.reshape(V * D, V * D))
    CR = cap["CR"]
    chol = cap["chol"]
    # (lam I + B)^{-1} (C R)^T by two triangular solves
    if xp is np:
        from scipy.linalg import solve_triangular

        flat = chol.reshape((-1,) + chol.shape[-2:])
        crt = xp.swapaxes(CR, -1, -2).reshape(flat.shape)
        sol = np.stack([solve_triangular(c, solve_triangular(c, r, lower=True), lower=True, trans="T")
                        for c, r in zip(flat, crt)]).reshape(CR.shape)
    else:
        sol = xp.linalg.solve(chol @ xp.swapaxes(chol, -1, -2), xp.swapaxes(CR, -1, -2))
    H = core - CR @ sol
    return cap, E, H.reshape(op.batch_shape + (V, D, V, D))


def video_logdet(op):
    xp, lam = op.xp, _lam64(op)
    cap = op.factorize()
    r = cap["B"].shape[-1]
    diag = xp.diagonal(cap["chol"], axis1=-2, axis2=-1)
    return (op.size - r) * xp.log(lam) + 2.0 * xp.log(diag).sum(axis=-1)


def video_variances(op):
    xp, lam = op.xp, _lam64(op)
    _, E, H = _video_parts(op)
    idx = xp.arange(op.n_frames)
    Hvv = xp.moveaxis(H[..., idx, :, idx, :], 0, -3)  # (*batch, V, D, D)
    q = _quadratic_rows(Hvv, E)  # (*batch, V, n)
    lam_b = lam.reshape(lam.shape + (1, 1))
    d = 1.0 / lam_b - q / (lam_b * lam_b)
    return d.reshape(op.batch_shape + op.vector_shape)


# ----------------------------------------------------------------------------- sparse forms
def _check_size(op, limit, what, alternative):
    if op.size > limit:
        raise ValueError(f"{what}: the exact factorisation of a system with N = {op.size} unknowns "
                         f"exceeds the limit {limit} (max_size); use method={alternative!r}, or pass "
                         f"a larger max_size if the memory allows")


def sparse_factor(op, index=()):
    """Sparse LU of ``M`` (one system of a grid or multi-resolution operator), in symmetric mode.

    Returns
    -------
    lu : scipy.sparse.linalg.SuperLU
        ``M = Pr^T L U Pc^T`` with ``Pr = Pc`` (no row interchanges) and ``diag(U) > 0``.

    Raises
    ------
    NotPositiveDefiniteError
        A pivot ``<= 0``, a row interchange, or an exactly singular ``M``: ``M`` is not positive
        definite.
    """
    import scipy.sparse.linalg as spla

    mat = op.to_sparse(index)
    if op.xp is not np:
        mat = mat.get()
    mat = mat.astype(np.float64).tocsc()
    form = type(op).__name__
    where = f" (batch item {tuple(index)})" if index else ""
    try:
        lu = spla.splu(mat, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                       options={"SymmetricMode": True})
    except RuntimeError as err:  # exactly singular
        raise NotPositiveDefiniteError(f"{form} is not positive definite{where}: its sparse LU "
                                       f"factorisation failed ({err})", quantity="pivot",
                                       system=tuple(index) or None) from None
    pivots = lu.U.diagonal()
    if not np.array_equal(lu.perm_r, lu.perm_c) or not bool((pivots > 0).all()):
        worst = float(pivots.min())
        raise NotPositiveDefiniteError(
            f"{form} is not positive definite{where}: the symmetric LU (L D L^T) factorisation has "
            f"the pivot {worst:.6g} <= 0", quantity="pivot", value=worst, bound=0.0,
            system=tuple(index) or None)
    return lu


def sparse_logdet(op, max_size=LOGDET_EXACT_MAX_SIZE):
    _check_size(op, max_size, "logdet", "slq")
    out = np.empty(op.batch_shape)
    for idx in np.ndindex(*op.batch_shape):
        out[idx] = np.log(sparse_factor(op, idx).U.diagonal()).sum()
    return out if op.xp is np else op.xp.asarray(out)


def sparse_variances(op, max_size=VARIANCES_EXACT_MAX_SIZE, block=256):
    """``diag(M^{-1})`` by sparse LU solves of the unit vectors, ``block`` columns at a time."""
    _check_size(op, max_size, "marginal_variances", "stochastic")
    n = op.size
    out = np.empty(op.batch_shape + (n,))
    for idx in np.ndindex(*op.batch_shape):
        lu = sparse_factor(op, idx)
        for j0 in range(0, n, block):
            j1 = min(n, j0 + block)
            rhs = np.zeros((n, j1 - j0))
            rhs[np.arange(j0, j1), np.arange(j1 - j0)] = 1.0
            cols = lu.solve(rhs)
            out[idx + (slice(j0, j1),)] = cols[np.arange(j0, j1), np.arange(j1 - j0)]
    out = out.reshape(op.batch_shape + op.vector_shape)
    return out if op.xp is np else op.xp.asarray(out)


# ----------------------------------------------------------------------------- dispatch
def structured_logdet(op, max_size=LOGDET_EXACT_MAX_SIZE):
    kind = form_kind(op)
    if kind in ("lowrank", "lowrank_potts"):
        return lowrank_logdet(op)
    if kind == "video":
        return video_logdet(op)
    if kind == "sparse":
        return sparse_logdet(op, max_size)
    raise ValueError(f"method='exact' needs a form with a factorisation; {type(op).__name__} has none "
                     "(use method='slq')")


def structured_variances(op, max_size=VARIANCES_EXACT_MAX_SIZE):
    kind = form_kind(op)
    if kind in ("lowrank", "lowrank_potts"):
        return lowrank_variances(op)
    if kind == "video":
        return video_variances(op)
    if kind == "sparse":
        return sparse_variances(op, max_size)
    raise ValueError(f"method='exact' needs a form with a factorisation; {type(op).__name__} has none "
                     "(use method='stochastic')")


def video_logdet_gradients(op) -> dict:
    """Exact ``d log det M / d theta`` of a 3.6 operator from ``M^{-1} = I / lam - U^T H U / lam^2``:

    ``d/dS_v = 2 S_v (M^{-1})_vv = 2 S_v / lam - 2 G_v[S, :] H_vv E_v / lam^2``,
    ``d/dT_u = 2 sum_v K[u, v] T_v (M^{-1})_vu = -2 (sum_v K[u, v] G_v[T, :] H_vu) E_u / lam^2``,
    ``d/dlam = tr(M^{-1}) = N / lam - sum_v tr(H_vv G_v) / lam^2`` (``G_v = E_v E_v^T``)."""
    xp, lam = op.xp, _lam64(op)
    cap, E, H = _video_parts(op)
    V, Ds, Dt = op.n_frames, op.spatial_dim, cap["Dt"]
    G = E @ xp.swapaxes(E, -1, -2)  # (*batch, V, D, D)
    idx = xp.arange(V)
    Hvv = xp.moveaxis(H[..., idx, :, idx, :], 0, -3)  # (*batch, V, D, D)
    lam2 = lam.reshape(lam.shape + (1, 1, 1))
    S = E[..., :Ds, :]
    grad_s = 2.0 * S / lam2 - 2.0 * ((G[..., :Ds, :] @ Hvv) @ E) / (lam2 * lam2)
    grads = {"spatial": grad_s.reshape(op.spatial.shape)}
    if Dt:
        K = xp.asarray(op.coupling, dtype=np.float64)
        # sum_v K[u, v] G_v[T, :] H_vu: (*batch, u, Dt, D)
        coupled = xp.einsum("uv,...vtd,...vdue->...ute", K, G[..., Ds:, :], H)
        grad_t = -2.0 * (coupled @ E) / (lam2 * lam2)
    else:
        grad_t = xp.zeros(op._T.shape)
    grads["temporal"] = grad_t.reshape(op.temporal.shape)
    trace = op.size / lam - xp.einsum("...vij,...vji->...", Hvv, G) / (lam * lam)
    grads["lam"] = _sum_to_shape(trace, op._lam_shape, xp)
    return grads


#: the largest system whose exact log-determinant gradient is computed from the ``N`` columns of
#: ``M^{-1}`` (grid and multi-resolution forms: sparse LU solves, ``N`` gradient contractions)
GRADIENT_EXACT_MAX_SIZE = 2048


def inverse_columns_logdet_gradients(op, max_size=GRADIENT_EXACT_MAX_SIZE) -> dict:
    """Exact ``d log det M / d theta = tr(M^{-1} dM/dtheta) = -sum_j pg(e_j, M^{-1} e_j)`` with
    ``pg = op.parameter_gradients`` (bilinear: ``pg(x, g) = -g^T (dM/dtheta) x``), from the ``N``
    columns of ``M^{-1}`` (sparse LU); for grid and multi-resolution systems of at most
    ``max_size`` unknowns."""
    _check_size(op, max_size, "the exact log-determinant gradient", "stochastic")
    n = op.size
    cols = np.empty(op.batch_shape + (n, n))
    for idx in np.ndindex(*op.batch_shape):
        cols[idx] = sparse_factor(op, idx).solve(np.eye(n))  # symmetric: rows are columns
    xp = op.xp
    total = None
    for j in range(n):
        e = np.zeros(op.batch_shape + (n,))
        e[..., j] = 1.0
        g = op.parameter_gradients(xp.asarray(e, dtype=op.dtype), xp.asarray(cols[..., j, :], dtype=op.dtype))
        if total is None:
            total = {k: -xp.asarray(v, dtype=np.float64) for k, v in g.items()}
        else:
            for k, v in g.items():
                total[k] = total[k] - v
    return total
