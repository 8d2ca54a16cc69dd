"""Solve paths and positive-definiteness checks of the grid forms (docs/design.md 3.1, 3.2, 6).

- :func:`potts_split_solve`: the Potts ``L + 1`` split, ``(lam I + (L-1) W) s = sum_l b_l`` then
  ``(lam I - W) x_l = b_l - W s``, in refinement rounds;
- :func:`sparse_direct_solve`: sparse LU of every system's CSR matrix, cached for the adjoint solve;
- :func:`gershgorin_check`: the Gershgorin certificate, and on request (``exact=True``) a
  matrix-free Lanczos estimate of ``lambda_min(M)`` where it is inconclusive.

The multi-resolution form uses the last two as well.
"""
from __future__ import annotations

import math
import time

import numpy as np

from solvers import NotPositiveDefiniteError, cg

from ...backend import sparse_linalg_module, to_host
from ...results import (curvature_not_positive_definite, direct_options, make_result, not_positive_definite,
                         refined_direct_solve)
from . import kernels
from .kernels import shifted_weight_cg, weight_product

__all__ = ["potts_split_solve", "sparse_direct_solve", "gershgorin_check", "lanczos_lambda_min",
           "LANCZOS_TOL", "LANCZOS_NCV", "LANCZOS_MAXITER"]

#: Lanczos (ARPACK ``eigsh``, ``which="SA"``) of :func:`lanczos_lambda_min`: relative tolerance of
#: the Ritz value, Lanczos basis size and number of restarts.  Each restart costs about
#: ``LANCZOS_NCV - 1`` products with ``M``, so one estimate costs at most about
#: ``LANCZOS_NCV * LANCZOS_MAXITER`` products (typically 60-300 on the grids).
LANCZOS_TOL = 1e-6
LANCZOS_NCV = 20
LANCZOS_MAXITER = 100


class _ShiftedWeightSystem:
    """The ``P x P`` operator ``lam I + alpha W`` of every system, on stacks of pixel vectors.

    ``matvec`` takes ``(E, B, [R,] P)`` arrays (``B`` systems, ``R`` vectors per system) as the
    batched solvers pass them.
    """

    def __init__(self, op, alpha: float):
        self.op = op
        self.alpha = float(alpha)
        self._scaled_weights = op.xp.ascontiguousarray(op._params * op.dtype.type(alpha))
        self._lam = op._lam_flat.reshape(1, -1, 1, 1, 1)
        P = op.height * op.width
        self.shape = (P, P)
        self.dtype = op.dtype

    def matvec(self, X):
        op = self.op
        x = op.xp.ascontiguousarray(X.reshape((X.shape[0], op._n_systems, -1, op.height, op.width)))
        out = self._lam * x
        weight_product(self._scaled_weights, x, out, op.offsets)
        return out.reshape(X.shape)


def potts_split_solve(op, b, x0, options):
    """``M x = b`` by the ``L + 1`` split of docs/design.md 3.2, in refinement rounds.

    Each round solves ``M d = r`` for the current residual ``r = b - M x``: CG on the label sum
    ``(lam I + (L-1) W) s = sum_l r_l``, then CG on all ``L`` systems ``(lam I - W) d_l = r_l - W s``
    at once, and sets ``x += d``.  Rounds stop when the true residual meets
    ``||b - M x|| <= max(rtol ||b||, atol)`` per system, when the iteration budget (``maxiter``,
    default ``10 P``) is spent, or when a round no longer halves the residual (the limit of the
    dtype).  Inner tolerances are tightened by ``L`` for the sum (its error reaches every label
    through ``W``).  The inner CG runs as one compiled loop per ``P``-sized system on the CPU
    (:func:`gcrflinalg.forms.grid.kernels.shifted_weight_cg`) and as the batched :func:`solvers.cg` on
    other backends.

    Returns a ``SolveResult`` whose ``iterations`` count the CG steps of both phases (the label
    phase counts as its slowest label) and whose ``residual_norms`` hold the true residual norm of
    the full system at the start and at the end of every round, repeated across the round's steps.
    """
    t0 = time.perf_counter()
    xp = op.xp
    rtol = float(options.pop("rtol", 1e-5))  # checked by gcrflinalg.solve
    atol = float(options.pop("atol", 0.0))
    maxiter = options.pop("maxiter", None)
    check_pd = options.pop("check_pd", True)
    if options:
        raise TypeError(f"unexpected solver options {sorted(options)} for the Potts L + 1 split")
    L, B = op.num_labels, op._n_systems
    P = op.height * op.width
    sys_shape = b.shape[: b.ndim - 1]
    bb = b.reshape((-1, B, L, P))
    E = bb.shape[0]
    x = xp.zeros_like(bb) if x0 is None else xp.array(x0.reshape(bb.shape), copy=True)
    bnorm = xp.sqrt(xp.sum(bb * bb, axis=(2, 3)))  # (E, B)
    tol = xp.maximum(rtol * bnorm, atol)
    budget = 10 * P if maxiter is None else int(maxiter)
    sum_sys, label_sys = _ShiftedWeightSystem(op, L - 1), _ShiftedWeightSystem(op, -1.0)
    grid = (E, B, L, op.height, op.width)

    def residual(x):
        return bb - op._product(x.reshape((E,) + op.batch_shape + op.vector_shape)).reshape(bb.shape)

    r = residual(x)
    rnorm = xp.sqrt(xp.sum(r * r, axis=(2, 3)))
    rounds = [(np.zeros((E, B), dtype=np.int64), to_host(rnorm))]
    used = np.zeros((E, B), dtype=np.int64)
    matvecs = 1
    for _ in range(10):
        todo = to_host(rnorm > tol)
        remaining = budget - int(used.max())
        if not todo.any() or remaining <= 0:
            break
        # relative inner tolerance: the tightest any unfinished system needs, with margins for the
        # coupling of the two phases (the sum's error reaches every label through W)
        need = float(to_host(tol / xp.where(rnorm > 0, rnorm, 1))[todo].min())
        r = xp.where(xp.asarray(todo)[..., None, None], r, 0)  # finished systems sit still
        # the two phases share what is left of maxiter: the label sum at most remaining - 1 steps
        # (none when one is left, s = 0), the labels the rest, so a round never exceeds the budget
        s, s_iters, s_mv = _shifted_solve(op, sum_sys, r.sum(axis=2)[:, :, None], 0.5 * need / L,
                                          maxiter=remaining - 1, check_pd=check_pd)
        if s is None:  # p^T M p <= 0 met with check_pd=False: stop, unconverged
            break
        Ws = op._weight_matvec(xp.ascontiguousarray(s.reshape(E, B, 1, op.height, op.width)))
        d, d_iters, d_mv = _shifted_solve(op, label_sys, r - Ws.reshape(E, B, 1, P), 0.5 * need,
                                          maxiter=remaining - int(s_iters.max(initial=0)),
                                          check_pd=check_pd)
        if d is None:
            break
        x = x + d
        r = residual(x)
        previous, rnorm = rnorm, xp.sqrt(xp.sum(r * r, axis=(2, 3)))
        steps = (s_iters.reshape(E, B) + d_iters.reshape(E, B, L).max(axis=2)) * todo
        used += steps
        matvecs += s_mv + d_mv + 2
        rounds.append((steps, to_host(rnorm)))
        if not to_host((rnorm < 0.5 * previous) | (rnorm <= tol)).all():
            break  # a round that does not halve the residual: the dtype's accuracy is reached
    converged = to_host(rnorm <= tol)
    history = _round_history(rounds, used)
    x = x.reshape(grid).reshape(b.shape)
    result = make_result(x, converged=converged.reshape(sys_shape), iterations=used.reshape(sys_shape),
                          history=history.reshape((-1,) + sys_shape), matvecs=matvecs,
                          time_s=time.perf_counter() - t0, method="potts_split",
                          bnorm=to_host(bnorm).reshape(sys_shape))
    return result


def gershgorin_check(op, exact=False) -> bool:
    """The positive-definiteness check of the general grid and multi-resolution forms
    (docs/design.md section 6).  Returns True when every system is certified positive definite.

    ``lam`` above ``op.gershgorin_bound()`` certifies a system (about one product's work for all of
    them).  A system below it is undecided: by default it is left to CG's curvature test
    (returns False).  With ``exact=True`` each undecided system gets a matrix-free Lanczos estimate
    of ``lambda_min(M)`` (:func:`lanczos_lambda_min`); an estimate ``<= 0`` proves it indefinite and
    raises :class:`NotPositiveDefiniteError` naming ``lam`` and ``-lambda_min(A) >= lam - estimate``.
    """
    bound = to_host(op.gershgorin_bound()).reshape(op.batch_shape)
    lam = to_host(op.lam).reshape(op.batch_shape).astype(np.float64)
    undecided = np.argwhere(lam <= bound)  # (count, ndim) rows, also for an unbatched operator
    if not exact or len(undecided) == 0:
        return len(undecided) == 0
    for idx in undecided:
        idx = tuple(int(i) for i in idx)
        lmin, products = lanczos_lambda_min(op, idx)
        if lmin is not None and lmin <= 0:
            raise not_positive_definite(
                type(op).__name__, value=float(lam[idx]), bound=float(lam[idx] - lmin),
                bound_name="-lambda_min(A)", relation=">=", system=idx,
                reason=(f"Lanczos ({products} products with M) finds lambda_min(M) <= {lmin:.6g} <= 0 "
                        f"(lam is below the Gershgorin bound {float(bound[idx]):.6g})"))
    return False


def sparse_direct_solve(op, b, options):
    """``M x = b`` by a sparse LU (SuperLU) of every system's CSR matrix ``op.to_sparse(index)``.

    The factors are cached in ``op._factors`` so that the adjoint solve reuses the forward
    factorisation.  ``b`` has shape ``(*extra, *op.batch_shape, N)``.  Iterative refinement on the
    true residual (float64 for a float32 operator) follows as in the other direct solves
    (:func:`gcrflinalg.results.refined_direct_solve`; ``refine=k`` for exactly ``k`` rounds).
    """
    xp = op.xp
    rtol, atol, refine = direct_options(options, op.dtype, ignored=("maxiter", "callback"))
    t0 = time.perf_counter()
    n_sys = math.prod(op.batch_shape)

    def lu_solve(rhs_all):
        bb = rhs_all.reshape((-1, n_sys, op.size))
        x = xp.empty_like(bb)
        for sys_i, idx in enumerate(np.ndindex(*op.batch_shape)):
            x[:, sys_i, :] = _sparse_factor(op, idx)(bb[:, sys_i, :].T).reshape(op.size, -1).T
        return x.reshape(rhs_all.shape)

    if op.dtype == np.float64:
        def residual(x):
            return b - op.matvec(x)
    else:
        mats = op.__dict__.setdefault("_csr64", {})
        b64 = b.astype(np.float64).reshape((-1, n_sys, op.size))

        def residual(x):
            x64 = x.astype(np.float64).reshape(b64.shape)
            r = xp.empty_like(b64)
            for sys_i, idx in enumerate(np.ndindex(*op.batch_shape)):
                if idx not in mats:
                    mats[idx] = op.to_sparse(idx).astype(np.float64)
                r[:, sys_i, :] = b64[:, sys_i, :] - (mats[idx] @ x64[:, sys_i, :].T).T
            return r.reshape(b.shape)

    return refined_direct_solve(lu_solve, residual, b, rtol=rtol, atol=atol, refine=refine, xp=xp, t0=t0)


def _sparse_factor(op, index):
    factors = op.__dict__.setdefault("_factors", {})
    if index not in factors:
        mat = op.to_sparse(index).tocsc()
        factors[index] = sparse_linalg_module(op.xp).splu(mat).solve
    return factors[index]


def lanczos_lambda_min(op, index):
    """A Lanczos estimate of ``lambda_min(M)`` of one system of ``op``, matrix-free.

    ARPACK (``scipy.sparse.linalg.eigsh``, ``which="SA"``; ``cupyx`` on CuPy) on the operator's own
    product ``op.aslinearoperator(index)`` (no CSR assembly), in float64 arithmetic around
    products in the operator's dtype, from a fixed start vector: tolerance :data:`LANCZOS_TOL`
    (relative), basis :data:`LANCZOS_NCV`, at most :data:`LANCZOS_MAXITER` restarts, i.e. at most
    about ``LANCZOS_NCV * LANCZOS_MAXITER`` products.  Systems of at most ``LANCZOS_NCV + 1``
    unknowns are done densely from ``n`` products.  A Ritz value is never below ``lambda_min`` (up
    to the rounding of the products), so an estimate ``<= 0`` proves ``M`` indefinite.

    Returns
    -------
    (estimate or None, products)
        None when no Ritz value was obtained.
    """
    lin = op.aslinearoperator(index)
    n = lin.shape[0]
    xp = op.xp
    count = [0]

    def mv(v):
        count[0] += 1
        return lin.matvec(xp.asarray(v).astype(op.dtype)).astype(np.float64).reshape(-1)

    if n <= LANCZOS_NCV + 1:
        cols = xp.stack([mv(e) for e in xp.eye(n)], axis=1)
        vals = to_host(xp.linalg.eigvalsh(0.5 * (cols + cols.T)))
        return float(vals[0]), count[0]
    v0 = np.random.default_rng(0).standard_normal(n)
    try:
        if xp is np:
            from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

            A64 = LinearOperator((n, n), matvec=mv, rmatvec=mv, dtype=np.float64)
            try:
                vals = eigsh(A64, k=1, which="SA", tol=LANCZOS_TOL, ncv=LANCZOS_NCV,
                             maxiter=LANCZOS_MAXITER, v0=v0, return_eigenvectors=False)
            except ArpackNoConvergence as err:
                vals = err.eigenvalues
        else:
            from cupyx.scipy.sparse.linalg import LinearOperator, eigsh

            A64 = LinearOperator((n, n), matvec=mv, dtype=np.float64)
            vals = to_host(eigsh(A64, k=1, which="SA", tol=LANCZOS_TOL, ncv=LANCZOS_NCV,
                                 maxiter=LANCZOS_MAXITER, return_eigenvectors=False))
    except Exception:  # no estimate: CG still guards the solve
        return None, count[0]
    return (float(np.min(vals)) if len(vals) else None), count[0]


def _shifted_solve(op, system, rhs, rtol, *, maxiter, check_pd):
    """Solve ``(lam I + alpha W) x = rhs`` for a stack ``rhs`` of shape ``(E, B, R, P)``.

    Numba CG (one compiled loop per system, inner products in float64) on the CPU; the batched
    :func:`solvers.cg` on ``system`` elsewhere.  Both start from ``x = 0`` without a product and
    stop on the recursively updated residual (no closing true-residual product: the caller's
    refinement measures the true residual), so they take the same steps and count the same
    products.  ``rtol`` is kept ``>= eps`` of the dtype.  Returns ``(x, iterations (E, B, R),
    matvecs)``, or ``(None, None, 0)`` when ``p^T A p <= 0`` was met and ``check_pd`` is False.
    """
    E, B, R, P = rhs.shape
    # below eps the steps buy nothing (the caller's true residual is the judge), and solvers.cg,
    # which replaces its recursive residual by the true one now and then, would run to maxiter
    rtol = max(rtol, float(np.finfo(op.dtype).eps))
    if kernels._use_numba(op._params):
        rhs5 = np.ascontiguousarray(rhs.reshape(E, B, R, op.height, op.width))
        x = np.zeros_like(rhs5)
        iters, failed, rayleigh = shifted_weight_cg(system._scaled_weights, op._lam_flat, rhs5, x,
                                                    op.offsets, rtol, maxiter)
        if failed >= 0:
            if not check_pd:
                return None, None, 0
            e, b, r = np.unravel_index(failed, (E, B, R))
            raise _split_not_pd(op, system, int(b), rayleigh)
        return x.reshape(rhs.shape), iters, int(iters.max(initial=0))  # x = 0: no first product

    try:
        res = cg(system, rhs, rtol=rtol, atol=0.0, maxiter=maxiter, check_pd=check_pd, true_residual=False)
    except NotPositiveDefiniteError as err:
        b = int(err.system[1]) if err.system else 0
        raise _split_not_pd(op, system, b, err.value) from err
    iters = np.broadcast_to(np.asarray(res.iterations), (E, B, R))
    if not check_pd and np.any(np.asarray(res.info) < 0):
        return None, None, 0
    return res.x, iters, res.matvecs


def _split_not_pd(op, system, b, rayleigh):
    """The error of a failed curvature test on ``lam I + alpha W`` of system ``b`` of the split:
    ``lam I + alpha W`` has ``lambda_min <= rho``, so ``max(lambda_max(W), -(L-1) lambda_min(W))``
    (``alpha = -1``: ``lambda_max(W)``; ``alpha = L - 1``: ``-(L-1) lambda_min(W)``) is at least
    ``lam - rho``."""
    idx = tuple(int(i) for i in np.unravel_index(b, op.batch_shape)) if op.batch_shape else ()
    which = "lam I - W" if system.alpha < 0 else f"lam I + {system.alpha:g} W"
    return curvature_not_positive_definite(
        "GridPottsGCRF", lam=float(op._lam_flat[b]), rayleigh=float(rayleigh), system=idx,
        threshold_name="max(lambda_max(W), -(L-1) lambda_min(W))", matrix="S",
        how=f"CG on the split system S = {which}")


def _round_history(rounds, used):
    """``(max(used) + 1, E, B)`` residual history from per-round (steps, end norms)."""
    n_rows = int(used.max()) + 1
    hist = np.empty((n_rows,) + used.shape, dtype=np.float64)
    hist[:] = rounds[0][1]
    pos = np.zeros(used.shape, dtype=np.int64)
    for steps, norms in rounds[1:]:
        pos = pos + steps
        # from the end of this round on, every row holds the round's end norm
        rows = np.arange(n_rows).reshape((-1,) + (1,) * used.ndim)
        hist = np.where((rows >= pos) & (steps > 0), norms, hist)
    return hist
