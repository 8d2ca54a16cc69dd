"""Samples of the G-CRF's Gaussian ``x ~ N(mu, M^{-1})``, ``mu = M^{-1} b``.

* **3.4, perturb-and-MAP** (exact): ``M = (sqrt(lam) I)^2 + E^T E`` is a sum of known PSD
  factors, so with ``z1 ~ N(0, I_N)``, ``z2 ~ N(0, I_D)`` the perturbed unaries
  ``b + sqrt(lam) z1 + E^T z2`` have covariance ``M`` and their MAP estimate
  ``x = M^{-1} (b + sqrt(lam) z1 + E^T z2)`` has covariance ``M^{-1} M M^{-1} = M^{-1}``: one
  batched Woodbury solve for all samples with the cached factor ``F = (lam I + G)^{-1}``, written
  ``x = (b + sqrt(lam) z1 + E^T (z2 - F E r)) / lam`` with ``E r = E b + sqrt(lam) E z1 + G z2``
  (two passes over ``E`` for every sample at once; accuracy that of the Woodbury solve,
  ``O(eps cond(M))``).
* **3.5, perturb-and-MAP** (exact, ``L >= 2``): ``M = F^T F + I_L (x) (lam I - W)`` with
  ``F = 1_L^T (x) psi`` (``F x = psi sum_l x_l``) and ``lam I - W`` positive definite (the form's
  certificate ``lam > ||psi||_2^2``); its square root is
  ``sqrt(lam) I + psi^T Q diag(f(s)) Q^T psi`` with ``G = psi psi^T = Q diag(s) Q^T`` and
  ``f(s) = -1 / (sqrt(lam - s) + sqrt(lam))`` (no division by ``s``).  The perturbation is
  ``psi^T z2`` on every label plus that square root of ``z1_l``.
* **3.1–3.3, perturb-and-MAP on the edge splitting** (exact up to the solve's tolerance), where the
  Gershgorin certificate holds (``M_rr >= sum_{c != r} |M_rc|`` in every row): every off-diagonal
  pair contributes the rank-one PSD term ``|a| (e_r + sign(a) e_c)(e_r + sign(a) e_c)^T`` and the
  rest of the diagonal, ``M_rr - sum_{c != r} |M_rc| >= 0``, a PSD diagonal, so
  ``M = F^T F`` with a sparse ``F`` of one row per edge and per unknown; the perturbation is
  ``F^T z`` and ``x = M^{-1} (b + F^T z)`` one batched solve (sparse LU up to
  ``VARIANCES_EXACT_MAX_SIZE`` unknowns, CG at ``rtol = 1e-10`` above).
* **3.6, exact square root**: ``M = lam I + Y^T B Y`` with ``Y = R^+ U`` of orthonormal rows (from
  the per-frame Gram matrices ``G_v = R_v R_v^T``) and the ``r x r`` matrix
  ``B = R^T C R = Z diag(mu) Z^T``; then ``M^{-1/2} = lam^{-1/2} I + Y^T Z diag(h) Z^T Y`` with
  ``h = (lam + mu)^{-1/2} - lam^{-1/2}`` and ``x = mu + M^{-1/2} z``.
* **grid and multi-resolution, Lanczos** (Chow & Saad, 2014): ``M^{-1/2} z`` is approximated in
  the Krylov space of ``M`` and ``z`` by ``y_k = ||z|| Q_k T_k^{-1/2} e_1`` (full
  reorthogonalisation, all samples in lock-step).  **Stopping rule**: every ``check_every`` steps
  the change of the iterate since the previous check, ``||y_k - y_{k'}|| / ||y_k||``, is the error
  estimate (checks after ``check_every`` steps, then spaced by half the steps taken); a sample
  stops once it is ``<= rtol`` (or its Krylov space is invariant, where the
  approximation is exact).  For symmetric positive-definite ``M`` the error of ``y_k`` decreases
  at least like ``((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^k``, ``kappa = cond(M)``, so once it is in
  that regime the estimate bounds the true error up to a factor ``1 / (1 - rate)``.  The
  result's ``error`` is the largest estimate over the samples.
"""
from __future__ import annotations

import math
import time

import numpy as np

from solvers import NotPositiveDefiniteError

from ..backend import get_array_module, to_host
from ..solve import solve
from ..tolerances import default_rtol
from ._common import as_generator, block_product, check_operator, form_kind, positive_int, synced
from .lanczos import LanczosState, tridiagonal_eigh
from .results import SampleResult

__all__ = ["sample"]

_METHODS = ("auto", "perturb_and_map", "exact", "lanczos")


def sample(op, b, num_samples, *, method="auto", rng=None, rtol=None, maxiter=None, check_every=4):
    """Draw samples of ``x ~ N(M^{-1} b, M^{-1})``, the G-CRF's Gaussian.

    Parameters
    ----------
    op : GCRFOperator
    b : array, shape ``(*batch_shape, *vector_shape)`` or ``(*batch_shape, N)``
        The unaries.
    num_samples : int
        ``>= 1``.
    method : {"auto", "perturb_and_map", "exact", "lanczos"}
        ``"perturb_and_map"`` on the low-rank forms (3.4, 3.5) and, where the Gershgorin
        certificate holds, on the grid and multi-resolution forms (3.1–3.3; ``ValueError`` naming
        the violated row sum otherwise); ``"exact"`` (the spectral square root) on video;
        ``"lanczos"`` on any form.  ``"auto"``: perturb-and-MAP on 3.4 and 3.5, the square root on
        3.6, Lanczos on 3.1–3.3.  See the module notes for the formulas.
    rng : None, int or numpy.random.Generator
        Source of the standard normal draws (drawn on the host, float64).
    rtol : float, optional
        Lanczos stopping tolerance (relative change of the iterate); default ``1e-7`` in float64,
        ``1e-4`` in float32.
    maxiter : int, optional
        Lanczos step limit (default ``min(N, 1000)``).
    check_every : int
        Lanczos steps before the first convergence check and the least spacing of the next ones
        (each check eigendecomposes every sample's tridiagonal, so later checks are spaced by half
        the steps taken).

    Returns
    -------
    SampleResult
        ``samples`` of shape ``(num_samples, *b.shape)`` in the operator's dtype and backend,
        ``mean = M^{-1} b``, ``method``, ``error`` (0 for the exact methods, the largest Lanczos
        error estimate otherwise) and ``info``.

    Raises
    ------
    TypeError, ValueError
        ``num_samples`` not an integer, or ``< 1``; an unknown or inapplicable method.
    NotPositiveDefiniteError
        ``M`` is not positive definite (the form's certificate or factorisation, or a Ritz value
        ``<= 0`` in Lanczos).
    """
    check_operator(op)
    num_samples = positive_int(num_samples, "num_samples")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
    gen = as_generator(rng)
    t0 = time.perf_counter()
    arr, flat = op.as_vectors(b, "b")
    nb, nv = len(op.batch_shape), len(op.vector_shape)
    if arr.ndim != nb + nv:
        raise ValueError(f"b must have shape {op.batch_shape + op.vector_shape} or "
                         f"{op.batch_shape + (op.size,)} (one right-hand side per system); got {tuple(np.shape(b))}")
    bflat = arr.reshape(op.batch_shape + (op.size,))
    kind = form_kind(op)
    if method == "auto":
        method = {"lowrank": "perturb_and_map", "lowrank_potts": "perturb_and_map", "video": "exact"}.get(kind, "lanczos")
    if method == "perturb_and_map" and kind not in ("lowrank", "lowrank_potts", "sparse"):
        raise ValueError(f"method='perturb_and_map' applies to the low-rank, grid and multi-resolution "
                         f"forms; {type(op).__name__} takes 'lanczos'" + (" or 'exact'" if kind == "video" else ""))
    if method == "exact" and kind != "video":
        raise ValueError(f"method='exact' (the spectral square root) applies to VideoGCRF; use "
                         f"{'perturb_and_map' if kind.startswith('lowrank') else 'lanczos'} for {type(op).__name__}")
    if method == "perturb_and_map" and kind == "sparse":
        x, mean, info = _edge_splitting(op, bflat, num_samples, gen)
        error = info["solve_rtol"]
    elif method == "perturb_and_map":
        x, mean, info = _perturb_and_map(op, bflat, num_samples, gen, kind)
        error = 0.0
    elif method == "exact":
        x, mean, info = _video_square_root(op, bflat, num_samples, gen)
        error = 0.0
    else:
        x, mean, info, error = _lanczos_samples(op, bflat, num_samples, gen, rtol, maxiter, check_every)
    x = x.astype(op.dtype, copy=False).reshape((num_samples,) + tuple(arr.shape))
    mean = mean.astype(op.dtype, copy=False).reshape(arr.shape)
    x, mean = op._restore(x, flat), op._restore(mean, flat)
    info["time_s"] = time.perf_counter() - t0
    return SampleResult(samples=x, method=method, error=float(error), info=info, mean=mean)


def _normal(gen, shape, xp):
    z = gen.standard_normal(shape)
    return z if xp is np else xp.asarray(z)


def _direct(op, rhs):
    result = solve(op, rhs.astype(op.dtype, copy=False), method="direct")
    return result.x


# ----------------------------------------------------------------------------- low-rank forms
def _perturb_and_map(op, bflat, num_samples, gen, kind):
    xp = op.xp
    S, n = num_samples, op.size
    lam = op.lam.astype(np.float64)[..., None]  # (*batch, 1)
    if kind == "lowrank":
        # Rows layout (*batch, S, N).  With r = b + sqrt(lam) z1 + E^T z2, Woodbury gives
        # x = (r - E^T F E r) / lam, F = (lam I + G)^{-1}, G = E E^T, and E r = E b + sqrt(lam) E z1 + G z2,
        # so x = (b + sqrt(lam) z1 + E^T (z2 - F E r)) / lam: two passes over E for all samples.
        factor = op.factorize()
        E = op._emb_flat.astype(np.float64, copy=False)  # (*batch, D, N)
        G = factor._gram.astype(np.float64, copy=False)
        F = factor.range_inverse.astype(np.float64, copy=False)
        z1 = _normal(gen, op.batch_shape + (S + 1, n), xp)
        z2 = _normal(gen, op.batch_shape + (S + 1, op.rank), xp)
        z1[..., 0, :] = 0.0  # row 0: the mean
        z2[..., 0, :] = 0.0
        root = xp.sqrt(lam)[..., None]  # (*batch, 1, 1)
        b_rows = bflat[..., None, :].astype(np.float64)
        er = (b_rows @ xp.swapaxes(E, -1, -2)) + root * (z1 @ xp.swapaxes(E, -1, -2)) + z2 @ G
        x = (b_rows + root * z1 + (z2 - er @ F) @ E) / lam[..., None]
        x = xp.moveaxis(x, -2, 0)
        return x[1:], x[0], {"solves": 1}
    z1 = _normal(gen, (S,) + op.batch_shape + (n,), xp)
    if op.num_labels == 1:  # M = lam I
        noise = xp.sqrt(lam) * z1
    else:
        from ..forms.lowrank.woodbury import gram_eigh

        op.check_positive_definite()  # lam > ||psi||_2^2: lam I - W is positive definite
        op.factorize()
        psi = op._psi.astype(np.float64)  # (*batch, D, P)
        s, Q = gram_eigh(op._gram)
        L, P = op.num_labels, op.num_pixels
        f = -1.0 / (xp.sqrt(xp.maximum(lam - s, 0.0)) + xp.sqrt(lam))  # (*batch, D)
        core = (Q * f[..., None, :]) @ xp.swapaxes(Q, -1, -2)  # Q diag(f) Q^T
        z1 = z1.reshape((S,) + op.batch_shape + (L, P))
        proj = xp.einsum("...lp,...dp->...ld", z1, psi)  # psi z1_l, (S, *batch, L, D)
        root = xp.sqrt(lam)[..., None] * z1 + xp.einsum("...ld,...de,...ep->...lp", proj, core, psi)
        z2 = _normal(gen, (S,) + op.batch_shape + (op.rank,), xp)
        shared = xp.einsum("...d,...dp->...p", z2, psi)[..., None, :]  # psi^T z2 on every label
        noise = (root + shared).reshape((S,) + op.batch_shape + (n,))
    rhs = xp.concatenate([bflat[None].astype(np.float64), bflat[None] + noise], axis=0)
    x = _direct(op, rhs)
    return x[1:], x[0], {"solves": 1}


# ----------------------------------------------------------------------------- grid forms
def _edge_splitting(op, bflat, num_samples, gen):
    """Perturb-and-MAP with ``M = F^T F`` from the edge splitting (module notes)."""
    import scipy.sparse as sps

    from .exact import VARIANCES_EXACT_MAX_SIZE

    xp, n = op.xp, op.size
    noise = np.empty((num_samples,) + op.batch_shape + (n,))
    for idx in np.ndindex(*op.batch_shape):
        mat = op.to_sparse(idx)
        mat = (mat.get() if xp is not np else mat).astype(np.float64).tocoo()
        diag = np.zeros(n)
        np.add.at(diag, mat.row[mat.row == mat.col], mat.data[mat.row == mat.col])
        upper = (mat.row < mat.col) & (mat.data != 0)
        r, c, a = mat.row[upper], mat.col[upper], mat.data[upper]
        absum = np.zeros(n)
        off = mat.row != mat.col
        np.add.at(absum, mat.row[off], np.abs(mat.data[off]))
        rest = diag - absum
        if rest.min() < 0:
            worst = int(np.argmin(rest))
            where = f" (batch item {idx})" if idx else ""
            raise ValueError(
                f"method='perturb_and_map' on {type(op).__name__}{where} needs the Gershgorin certificate "
                f"M_rr >= sum_c |M_rc| in every row; row {worst} has M_rr = {diag[worst]:.6g} < "
                f"{absum[worst]:.6g}; use method='lanczos'")
        m = len(a)
        rows = np.concatenate([np.arange(m), np.arange(m), m + np.arange(n)])
        cols = np.concatenate([r, c, np.arange(n)])
        vals = np.concatenate([np.sqrt(np.abs(a)), np.sign(a) * np.sqrt(np.abs(a)), np.sqrt(rest)])
        F = sps.csr_matrix((vals, (rows, cols)), shape=(m + n, n))
        z = gen.standard_normal((m + n, num_samples))
        noise[(slice(None),) + idx] = (F.T @ z).T
    noise = noise if xp is np else xp.asarray(noise)
    rhs = xp.concatenate([bflat[None].astype(np.float64), bflat[None] + noise], axis=0)
    if n <= VARIANCES_EXACT_MAX_SIZE:
        result = solve(op, rhs.astype(op.dtype, copy=False), method="direct")
        rtol = float(np.max(to_host(result.residual_norms[-1]) / np.maximum(to_host(result.b_norm), 1e-300)))
    else:
        rtol = 1e-10 if op.dtype == np.float64 else default_rtol(op.dtype)
        result = solve(op, rhs.astype(op.dtype, copy=False), rtol=rtol)
    x = result.x
    return x[1:], x[0], {"solves": 1, "solve_method": result.method, "solve_rtol": rtol}


# ----------------------------------------------------------------------------- video
def _video_square_root(op, bflat, num_samples, gen):
    xp = op.xp
    cap = op.factorize()  # raises NotPositiveDefiniteError
    V, Ds, D, Dt = op.n_frames, op.spatial_dim, cap["D"], cap["Dt"]
    E = op._S.astype(np.float64)
    if Dt:
        E = xp.concatenate([E, op._T.astype(np.float64)], axis=-2)  # (*batch, V, D, n)
    G = E @ xp.swapaxes(E, -1, -2)
    G = 0.5 * (G + xp.swapaxes(G, -1, -2))
    s, Q = xp.linalg.eigh(G)
    keep = s > (D * np.finfo(np.float64).eps) * xp.maximum(s.max(axis=-1, keepdims=True), 1e-300)
    root = xp.where(keep, xp.sqrt(xp.where(keep, s, 1.0)), 0.0)          # sqrt(s) on kept directions
    inv_root = xp.where(keep, 1.0 / xp.where(keep, root, 1.0), 0.0)
    R = Q * root[..., None, :]                                            # (*batch, V, D, D)
    core = np.zeros((V, D, V, D))
    for v in range(V):
        core[v, :Ds, v, :Ds] = np.eye(Ds)
    if Dt:
        core[:, Ds:, :, Ds:] = op.coupling[:, None, :, None] * np.eye(Dt)[None, :, None, :]
    core = xp.asarray(core)
    # B = R^T C R, blocks (u, v) = R_u^T C_uv R_v
    B = xp.einsum("...uad,uavb,...vbe->...udve", R, core, R).reshape(op.batch_shape + (V * D, V * D))
    mu, Z = xp.linalg.eigh(0.5 * (B + xp.swapaxes(B, -1, -2)))
    lam = op.lam.astype(np.float64)[..., None]
    if bool((lam + mu <= 0).any()):
        raise NotPositiveDefiniteError("VideoGCRF is not positive definite: lam + lambda_min(B) <= 0",
                                       quantity="lam")
    h = 1.0 / xp.sqrt(lam + mu) - 1.0 / xp.sqrt(lam)                     # (*batch, r)
    S, n = num_samples, op.frame_size
    z = _normal(gen, (S,) + op.batch_shape + (V, n), xp)
    y = xp.einsum("...vdn,s...vn->s...vd", E, z)                          # U z
    y = xp.einsum("...vde,s...vd->s...ve", Q, y) * inv_root              # Y z = R^+ U z
    y = y.reshape((S,) + op.batch_shape + (V * D,))
    w = xp.einsum("...ij,s...j->s...i", Z, h * xp.einsum("...ji,s...j->s...i", Z, y))
    w = w.reshape((S,) + op.batch_shape + (V, D)) * inv_root
    w = xp.einsum("...vde,s...ve->s...vd", Q, w)
    dev = z / xp.sqrt(lam)[..., None] + xp.einsum("...vdn,s...vd->s...vn", E, w)
    mean = _direct(op, bflat[None])[0]
    x = mean[None] + dev.reshape((S,) + op.batch_shape + (op.size,))
    return x, mean, {"solves": 1, "rank": int(V * D)}


# ----------------------------------------------------------------------------- Lanczos
def _lanczos_samples(op, bflat, num_samples, gen, rtol, maxiter, check_every):
    with synced(op):  # the parameters checked once for the mean's solve and every product
        return _lanczos_samples_synced(op, bflat, num_samples, gen, rtol, maxiter, check_every)


def _lanczos_samples_synced(op, bflat, num_samples, gen, rtol, maxiter, check_every):
    xp = op.xp
    n = op.size
    rtol = (1e-7 if op.dtype == np.float64 else 1e-4) if rtol is None else float(rtol)
    maxiter = min(n, 1000) if maxiter is None else positive_int(maxiter, "maxiter")
    check_every = positive_int(check_every, "check_every")
    apply = block_product(op)
    mean = solve(op, bflat, rtol=max(default_rtol(op.dtype) * 1e-2, 1e-12) if op.dtype == np.float64
                 else default_rtol(op.dtype)).x
    # samples in chunks: the stored basis holds chunk * steps vectors of length N
    chunk = max(1, min(num_samples, (2 ** 24) // max(1, n * math.prod(op.batch_shape) * 8)))
    out, errors, steps, matvecs = [], [], 0, 0
    for c0 in range(0, num_samples, chunk):
        c = min(chunk, num_samples - c0)
        z = _normal(gen, (c,) + op.batch_shape + (n,), xp)
        y, err, k, mv = _lanczos_inverse_sqrt(apply, z, rtol, maxiter, check_every, type(op).__name__)
        out.append(y)
        errors.append(err)
        steps, matvecs = max(steps, k), matvecs + mv
    dev = xp.concatenate(out, axis=0)
    error = max(errors)
    info = {"iterations": steps, "matvecs": matvecs, "rtol": rtol}
    return mean.astype(np.float64)[None] + dev, mean, info, error


def _lanczos_inverse_sqrt(apply, z, rtol, maxiter, check_every, form):
    """``M^{-1/2} z`` for every column of ``z`` by lock-step Lanczos; ``(y, max error estimate,
    steps, matvecs)``."""
    xp = get_array_module(z)
    state = LanczosState(apply, z, reorthogonalize=True, breakdown=1e-13)
    prev = None
    err = xp.full(state.norms.shape, np.inf)
    next_check = check_every
    while True:
        state.step()
        k = state.steps
        done_all = not bool(state.active.any()) or k >= maxiter
        if k < next_check and not done_all:
            continue
        next_check = k + max(check_every, k // 2)
        theta, s0, S = tridiagonal_eigh(state, what=form)
        coef = (S * (s0 / xp.sqrt(theta))[..., None, :]).sum(axis=-1)  # T^{-1/2} e_1
        coef = xp.where(xp.abs(coef) > 0, coef, 0.0)
        if prev is not None:
            pad = xp.zeros(coef.shape[:-1] + (k - prev.shape[-1],))
            diff = coef - xp.concatenate([prev, pad], axis=-1)
            err = xp.sqrt((diff * diff).sum(axis=-1) / (coef * coef).sum(axis=-1))
            err = xp.where(state.active, err, 0.0)  # an invariant Krylov space: exact
        prev = coef
        converged = (err <= rtol) | ~state.active
        if bool(converged.all()) or k >= maxiter:
            break
    y = state.norms[..., None] * xp.einsum("k...n,...k->...n", state.basis(k), coef)
    finite_err = float(to_host(xp.max(xp.where(state.active, err, 0.0))))
    return y, finite_err, k, state.matvecs
