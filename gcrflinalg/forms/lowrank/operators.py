"""Dense low-rank G-CRFs from embeddings (docs/design.md 3.4 and 3.5), never forming ``N x N``.

* :class:`LowRankGCRF`: ``M = lam I + E^T E`` with embeddings ``E`` of shape ``(..., D, L, H, W)``
  read as a ``D x N`` matrix (index ``n = l*P + i*W + j``).  Always positive definite.
* :class:`LowRankPottsGCRF`: ``M = lam I + (11^T - I_L) (x) W``, ``W = psi^T psi``, with embeddings
  ``psi`` of shape ``(..., D, H, W)``.  Positive definite iff ``lam > ||psi||_2^2`` (for ``L >= 2``).

Products cost O(N D) (3.4: two thin matrix products) and O(P D L) (3.5: the label sum is formed in
the ``D``-dimensional embedding space, shared by every label).

``method="direct"`` solves exactly through the Woodbury identity (:mod:`gcrflinalg.forms.lowrank.woodbury`): one
``D x D`` Cholesky factorisation per ``lam I +- c G`` (``G`` the Gram matrix ``E E^T`` or
``psi psi^T``), computed once per operator and cached, so the adjoint solve of the backward pass and
any later right-hand sides reuse it.  For 3.5 that factorisation exists iff ``lam > ||psi||_2^2``:
the positive-definiteness check is exact, and the eigenvalues of ``G`` name the bound when it fails.

``method="auto"`` (the default) chooses between the direct solve and CG with a cost model (see
:func:`break_even_products` and :func:`auto_solve`).
"""
from __future__ import annotations

import math
import operator
import time

import numpy as np

from ...backend import _array_kernels_on, get_array_module, synchronize, to_host
from ...operator import GCRFOperator
from ...results import direct_options, direct_result, raise_if_lam_below, refined_direct_solve
from ...tolerances import default_rtol
from ..._validation import as_lam, as_parameter, borrowed_parameters, check_finite, readonly
from .woodbury import WoodburyFactor

__all__ = ["LowRankGCRF", "LowRankPottsGCRF", "direct_is_cheaper", "break_even_products", "auto_solve"]

#: A floating-point operation inside a matrix-matrix product (the Gram matrix) runs about this many
#: times faster than one inside the memory-bound float64 matrix-vector products of an iterative
#: solver (measured by ``python -m studies.timing_auto``: the low-rank direct solve at
#: 41 x 41, L = 21, D = 128 costs about 7.5-8 float64 products on the 2-core development machine).
GEMM_SPEEDUP = 11.0
#: CG iteration count assumed by the ``"auto"`` cost model (capped by the exact-arithmetic bound:
#: ``D + 1`` for 3.4 and ``2 D + 1`` for 3.5, the number of distinct eigenvalues of ``M``).
CG_ITERATIONS_ESTIMATE = 50
#: Options a direct solve accepts; the iterative-solver options are accepted and ignored.
_DIRECT_IGNORED = frozenset({"maxiter", "callback", "M", "restart", "omega"})


def direct_is_cheaper(*, factor_flops: float, matvec_flops: float, max_cg_iterations: int,
                      n_rhs: int, factored: bool) -> bool:
    """The ``"auto"`` cost model: is the direct solve expected to be faster than CG?

    Direct: ``factor_flops / GEMM_SPEEDUP`` once (zero when the factor is cached) plus about two
    matrix-vector products per right-hand side (the solve and its residual check).  CG:
    ``min(CG_ITERATIONS_ESTIMATE, max_cg_iterations)`` products per right-hand side.

    Parameters
    ----------
    factor_flops : float
        Flops of the factorisation (Gram matrix plus the ``D x D`` Cholesky factorisations).
    matvec_flops : float
        Flops of one product ``M v`` for one right-hand side.
    max_cg_iterations : int
        The exact-arithmetic bound on CG iterations (number of distinct eigenvalues of ``M``).
    n_rhs : int
        Right-hand sides solved together.
    factored : bool
        Whether the factorisation is already cached.
    """
    direct = (0.0 if factored else factor_flops / GEMM_SPEEDUP) + 2.0 * matvec_flops * n_rhs
    cg = min(CG_ITERATIONS_ESTIMATE, max_cg_iterations) * matvec_flops * n_rhs
    return direct <= cg


#: CG iterations ``"auto"`` runs before it judges the convergence rate
AUTO_PROBE_ITERATIONS = 3


def break_even_products(*, factor_flops: float, matvec_flops: float, n_rhs: int, dtype=np.float64) -> float:
    """The direct solve's cost in products with ``M`` (every right-hand side at once): the
    factorisation at :data:`GEMM_SPEEDUP` plus the solve and its residual check.  The factorisation
    runs in float64 whatever the operator's dtype, while the memory-bound products of a float32
    operator move half the bytes: in float32 products the factorisation costs twice as many."""
    scale = 8.0 / np.dtype(dtype).itemsize
    return factor_flops / GEMM_SPEEDUP / (matvec_flops * max(n_rhs, 1)) * scale + 2.0


def _predicted_iterations(history, tol):
    """CG iterations still needed per system, extrapolating the rate of the last two steps."""
    if np.ndim(history[-1]) == 0 and np.ndim(tol) == 0:  # one system: plain floats
        last, prev = float(history[-1]), float(history[max(len(history) - 3, 0)])
        steps = max(min(len(history) - 1, 2), 1)
        if last <= float(tol):
            return 0.0
        rate = (last / prev) ** (1.0 / steps) if prev > 0 else 0.0
        if rate >= 1.0:
            return math.inf
        if rate <= 0.0:
            return 0.0
        return math.log(float(tol) / last) / math.log(rate)
    h = np.asarray(history, dtype=np.float64)
    last = h[-1]
    prev = h[max(len(h) - 3, 0)]
    steps = min(len(h) - 1, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(prev > 0, last / prev, 0.0) ** (1.0 / max(steps, 1))
        need = np.where(last <= tol, 0.0,
                        np.where(rate < 1.0, np.log(tol / last) / np.log(rate), np.inf))
    return float(np.max(need, initial=0.0))


def auto_solve(op, b, x0, options, *, break_even: float, factored: bool, direct):
    """``method="auto"`` on the factorising forms (3.4–3.6): CG, or the exact factorisation, per
    problem.

    The factorisation costs about ``break_even`` products (:func:`break_even_products`).  With the
    factor cached, or a break-even of at most ``AUTO_PROBE_ITERATIONS + 2`` products (a
    factorisation no dearer than the probe and the direct solve's own two products: the probe
    could not be won back), the direct solve runs at once (the result's ``method`` is
    ``"direct"``).  Otherwise CG runs :data:`AUTO_PROBE_ITERATIONS` steps; the rate of its last
    steps predicts the iterations still needed, and when they cost more than the factorisation the
    direct solve takes over from scratch (``"cg+direct"``; exact, so the CG
    iterate is not needed).  Else CG goes on from its iterate for at most ``break_even`` more
    steps, and hands over to the direct solve if that did not suffice (bounding the loss at about
    twice the better method); a CG answer reports ``"cg"``.  ``matvecs`` counts every
    product of both methods.  With a ``callback`` or a preconditioner ``M``, plain CG runs.
    """
    import solvers

    if {"callback", "M", "restart", "omega"} & set(options):
        return NotImplemented
    exact_options = {k: v for k, v in options.items() if k in ("rtol", "atol", "refine", "check_residual")}
    # a factorisation no dearer than the probe: the probe could not pay for itself.  Above that
    # CG is probed first: on a flat spectrum (E E^T close to a multiple of I) it converges in
    # about as many products as the factorisation costs, and the probe says so
    if factored or break_even <= AUTO_PROBE_ITERATIONS + 2:
        result = direct(b, exact_options)
        result.method = "direct"
        return result
    t0 = time.perf_counter()
    cg_options = {k: options[k] for k in ("rtol", "atol") if k in options}
    cg_options.setdefault("rtol", default_rtol(op.dtype))
    maxiter = options.get("maxiter")
    bnorm = np.asarray(to_host(op.xp.linalg.norm(b.astype(np.float64, copy=False), axis=-1)))
    tol = np.maximum(cg_options["rtol"] * bnorm, float(cg_options.get("atol", 0.0)))
    history, switched = [], []
    budget = AUTO_PROBE_ITERATIONS + int(math.ceil(break_even))

    def hand_over(k, rnorm):
        # one CG run, no restart: from the end of the probe on, stop as soon as the rate of the last
        # steps predicts more iterations than the factorisation costs, or once the probe plus that
        # cost is spent
        history.append(np.asarray(rnorm, dtype=np.float64))
        if (k >= AUTO_PROBE_ITERATIONS and _predicted_iterations(history, tol) > break_even) or k >= budget:
            switched.append(k)
            return True
        return False

    result = solvers.cg(op, b, x0, maxiter=maxiter, monitor=hand_over, true_residual="bound", **cg_options)
    if switched:
        exact = direct(b, exact_options)
        exact.matvecs += result.matvecs
        iterations = np.asarray(exact.iterations) + np.asarray(result.iterations)
        exact.iterations = int(iterations) if np.ndim(iterations) == 0 else iterations
        exact.method = "cg+direct"
        exact.time_s = time.perf_counter() - t0
        return exact
    result.method = "cg"
    result.time_s = time.perf_counter() - t0
    return result


def _check_finite_by_product(emb, name):
    """Raise ``ValueError`` when ``emb`` ``(..., D, L, H, W)`` holds NaN or Inf.

    One matrix-vector product with a vector of ones (the same BLAS the solve's products use, so
    no other thread pool is woken): a row sum is finite unless the row holds NaN or Inf (``Inf *
    1`` and ``NaN`` propagate), or its finite entries overflow, which the exact test settles.
    """
    if emb.size == 0:
        return
    xp = get_array_module(emb)
    d = emb.shape[-4]
    flat = emb.reshape(-1, d, math.prod(emb.shape[-3:]))
    sums = flat @ xp.ones(flat.shape[-1], dtype=emb.dtype)
    if not bool(xp.isfinite(sums).all()):
        check_finite(emb, name)


def _single_vector(op, vflat) -> bool:
    """Whether ``vflat`` is one vector ``(N,)`` of an unbatched NumPy operator (its products then
    skip the batched column machinery: two BLAS matrix-vector calls on the C-ordered
    embeddings, ``(E v)^T E``, and a compiled in-place ``+ lam v`` without a temporary)."""
    return (op.xp is np and vflat.ndim == 1 and not op.batch_shape and vflat.dtype == op.dtype
            and vflat.flags.c_contiguous and not _array_kernels_on())


class _LowRankOperator(GCRFOperator):
    """Shared machinery: flat products over any leading axes, the direct-solve driver, Gauss–Seidel
    dispatch.  Subclasses define ``_apply_flat``, ``_direct_flat``, the factor and the cost model."""

    _factor_cache = None
    #: what is cached from the embeddings (dropped when watched embeddings change)
    _CACHED = ("_factor_cache", "_twin64", "_rows", "_gram")

    # ------------------------------------------------------------------ products
    def _flatten(self, arr):
        nv = len(self.vector_shape)
        return arr.reshape(arr.shape[: arr.ndim - nv] + (self.size,))

    def matvec(self, v):
        """``M v`` for every system; ``v`` of shape ``(..., *batch_shape, *vector_shape)`` or
        ``(..., *batch_shape, N)``, extra leading axes handled in one matrix product."""
        arr, flat = self.as_vectors(v)
        out = self._apply_flat(self._flatten(arr))
        return out if flat else out.reshape(arr.shape)

    __matmul__ = matvec

    def _matvec(self, v):
        return self._apply_flat(self._flatten(v)).reshape(v.shape)

    def _lam_flat(self):
        return self.lam[..., None]  # (*batch, 1): broadcasts against (..., *batch, N)

    # ------------------------------------------------------------------ direct solve
    def factorize(self):
        """Compute (once) and return the cached Woodbury factorisation of this operator (recomputed
        when watched embeddings changed since)."""
        self._sync_parameters()
        if self._factor_cache is None:
            self._factor_cache = self._compute_factor()
        return self._factor_cache

    def _solve(self, b, method: str, x0, options: dict):
        """``"direct"``: the exact Woodbury solve with iterative refinement (see
        :meth:`_direct_solve`).  ``"auto"``: CG, switched to the direct solve when its convergence
        rate says the factorisation is cheaper (:func:`auto_solve`).  Every other method runs the
        generic iterative solver on this operator."""
        if method == "auto":
            n_rhs = math.prod(b.shape[: b.ndim - len(self.batch_shape) - 1])
            return auto_solve(self, b, x0, options, break_even=self._break_even(n_rhs),
                              factored=self._factor_cache is not None, direct=self._direct_solve)
        if method != "direct":
            return NotImplemented
        return self._direct_solve(b, options)

    def _direct_solve(self, b, options: dict):
        """The exact solve.  ``x0`` is not needed; ``rtol`` and ``atol`` set the tolerance of the
        ``converged`` flag and of the automatic refinement: rounds ``x += M^{-1} (b - M x)`` on
        the true residual (evaluated in float64 for a float32 operator) until the tolerance is
        met or a round stops halving the residual (:func:`gcrflinalg.results.refined_direct_solve`).
        ``refine=k`` runs exactly ``k`` rounds instead; ``check_residual=False`` (with no
        ``refine``) skips the residual (one product with ``M``), leaving ``NaN`` as the final
        residual norm and ``converged=True``."""
        rtol, atol, refine = direct_options(options, self.dtype, ignored=_DIRECT_IGNORED | {"check_residual"})
        xp = self.xp
        t0 = time.perf_counter()
        if refine is None and not bool(options.get("check_residual", True)):
            x = self._direct_flat(b)
            bnorm = to_host(xp.linalg.norm(b, axis=-1))
            synchronize(xp)
            return direct_result(x, rnorm=np.full(np.shape(bnorm), np.nan), bnorm=bnorm, rtol=rtol,
                                 atol=atol, matvecs=0, time_s=time.perf_counter() - t0)
        return refined_direct_solve(self._direct_flat, self._residual_function(b), b, rtol=rtol,
                                    atol=atol, refine=refine, xp=xp, t0=t0)

    def _residual_function(self, b):
        """``x -> b - M x``; in float64 (a float64 copy of the parameters) for a float32 operator."""
        if self.dtype == np.float64:
            return lambda x: b - self._apply_flat(x)
        twin = self._float64_twin()
        b64 = b.astype(np.float64)
        return lambda x: b64 - twin._apply_flat(x.astype(np.float64))

    def _float64_twin(self):
        """The same matrix with float64 parameters (cached): residuals of float32 solves."""
        if getattr(self, "_twin64", None) is None:
            with borrowed_parameters():  # the float64 casts are private to the twin: no second copy
                self._twin64 = self._make_float64_twin()
        return self._twin64

    # ------------------------------------------------------------------ Gauss–Seidel
    def _gauss_seidel_sweep(self, x, b, omega):
        xp = self.xp
        nb = math.prod(self.batch_shape)
        xh = np.array(to_host(x), order="C").reshape((nb,) + self._sweep_shape())  # swept in place
        bh = np.ascontiguousarray(to_host(b)).reshape(xh.shape)
        lam = np.ascontiguousarray(to_host(self.lam)).reshape(nb)
        self._sweep_kernel(xh, bh, lam, float(omega))
        xh = xh.reshape(x.shape)
        return xh if xp is np else xp.asarray(xh)


def _check_dims(shape, names, what):
    for size, name in zip(shape, names):
        if size < 1:
            raise ValueError(f"{what} must have {name} >= 1; got shape {tuple(shape)}")


class LowRankGCRF(_LowRankOperator):
    """Dense low-rank G-CRF ``M = lam I + E^T E`` (docs/design.md 3.4).

    ``A[(m,p),(n,q)] = sum_d E[d,m,p] E[d,n,q]`` for all pairs, ``p = q`` included; positive definite
    for every ``lam > 0``.  Memory O(N D).

    Parameters
    ----------
    embeddings : array, shape ``(..., D, L, H, W)``
        ``E``; leading axes are batch axes.  NumPy, CuPy or any DLPack-exporting array; float32 or
        float64 (other real dtypes become float64).  Never modified.  Results describe the parameters as they are at the call (docs/guarantees.md):
        a writeable NumPy input is viewed, not copied, and re-checked by every solve (cached factors
        are rebuilt when it changed); the public attribute is a read-only view.
    lam : float or array of the batch shape
        The diagonal shift, ``> 0``.

    Notes
    -----
    Product: ``M v = E^T (E v) + lam v`` as two thin matrix products, O(N D).

    Direct solve (Woodbury): ``M^{-1} b = (b - E^T K E b) / lam`` with
    ``K = (lam I_D + E E^T)^{-1}`` from the Cholesky factorisation of that ``D x D`` matrix; cost
    O(N D^2 + D^3) once, O(N D) per right-hand side.  Relative error
    ``O(eps cond(M))`` with ``cond(M) = (lam + ||E||_2^2) / lam``: accuracy degrades when ``lam`` is
    tiny against ``||E||_2^2`` (cancellation in ``b - E^T K E b``); ``refine=1`` (one step of
    iterative refinement) brings the residual down to that of a backward-stable dense solve,
    ``O(eps ||M|| ||x||)``.
    """

    def __init__(self, embeddings, lam):
        # M is positive definite whatever E is: only a cached factor depends on E's values, so
        # the fingerprint is taken when one is first stored (a CG-only operator never hashes E)
        emb, watched, fingerprint = as_parameter(embeddings, "embeddings", min_ndim=4, view=True,
                                                 check=False)
        xp = get_array_module(emb)
        _check_dims(emb.shape[-4:], ("D", "L", "H", "W"), "embeddings (..., D, L, H, W)")
        # on NumPy the finiteness of E is checked where E is first read: a product checks the
        # D-vector E v it forms anyway (free), every other read the whole of E once (_emb_flat)
        self._finite_pending = xp is np
        if xp is not np:
            _check_finite_by_product(emb, "embeddings")
        if watched:
            self._watch("embeddings", emb, fingerprint, lazy=True)
        batch_shape = tuple(emb.shape[:-4])
        d, n_labels, h, w = emb.shape[-4:]
        lam_full, lam_shape = as_lam(lam, batch_shape, emb.dtype, xp)
        super().__init__(xp=xp, dtype=emb.dtype, batch_shape=batch_shape,
                         vector_shape=(n_labels, h, w), lam=lam_full, lam_shape=lam_shape)
        self.embeddings = readonly(emb)
        self.rank = int(d)
        self._emb_raw = emb.reshape(batch_shape + (d, self.size))  # (*batch, D, N)
        self._rows = None

    @property
    def _emb_flat(self):
        """``E`` as ``(*batch, D, N)``, checked for NaN/Inf on its first use (``ValueError``)."""
        if self._finite_pending:
            self._check_embeddings()
        return self._emb_raw

    def _check_embeddings(self):
        """The exact NaN/Inf test of ``E`` (``ValueError``); passed, nothing is pending."""
        _check_finite_by_product(self.embeddings, "embeddings")
        self._finite_pending = False

    def _checked_product(self, ev):
        """``ev = E v`` (``(*batch, D, ...)``) from a finite ``v``: NaN/Inf in ``ev`` come from ``E``
        (``Inf * 0`` and ``NaN`` propagate), and then raise ``ValueError``; a finite ``ev``
        proves nothing about the rest of ``E`` but is all this product read.  Costs a test of
        ``D`` values per column."""
        if not np.isfinite(ev).all():
            self._check_embeddings()  # raises, or finite entries whose sums overflowed
        return ev

    # ------------------------------------------------------------------ products
    def _columns(self, vflat):
        """``(..., *batch, N)`` -> ``(*batch, N, k)`` with the extra axes as columns, and its inverse."""
        nb = len(self.batch_shape)
        extra = vflat.shape[: vflat.ndim - nb - 1]
        if not extra:
            return vflat[..., None], lambda c: c[..., 0]
        k = math.prod(extra)
        cols = self.xp.moveaxis(vflat.reshape((k,) + vflat.shape[len(extra):]), 0, -1)

        def back(c):
            return self.xp.moveaxis(c, -1, 0).reshape(vflat.shape)

        return cols, back

    def _embed_t(self):
        return self.xp.swapaxes(self._emb_flat, -1, -2)  # (*batch, N, D)

    def _apply_flat(self, vflat):
        # M v = E^T (E v) + lam v
        emb = self._emb_raw
        if _single_vector(self, vflat):
            from .kernels import add_scaled

            out = self._checked_product(emb @ vflat) @ emb
            add_scaled(out, out.dtype.type(self.lam), vflat)
            return out
        cols, back = self._columns(vflat)
        ev = emb @ cols  # (*batch, D, k)
        if self.xp is np:
            self._checked_product(ev)
        return back(self.xp.swapaxes(emb, -1, -2) @ ev) + self._lam_flat() * vflat

    def _diagonal(self):
        # M_nn = lam + sum_d E[d, n]^2
        lam = self.lam.reshape(self.lam.shape + (1, 1, 1))
        emb = self._emb_flat.reshape(self.embeddings.shape)
        return lam + (emb * emb).sum(axis=-4)

    def _to_dense(self):
        xp = self.xp
        a = self._embed_t() @ self._emb_flat
        return a + self.lam[..., None, None] * xp.eye(self.size, dtype=self.dtype)

    # ------------------------------------------------------------------ direct solve
    def _compute_factor(self):
        emb = self._emb_raw
        gram = emb @ self.xp.swapaxes(emb, -1, -2)  # (*batch, D, D)
        if self._finite_pending:
            # diag(E E^T) holds the squared row norms of E: finite exactly when every entry of E
            # is (or a finite row's squares overflowed, which the exact test settles)
            if np.isfinite(np.diagonal(gram, axis1=-2, axis2=-1)).all():
                self._finite_pending = False
            else:
                self._check_embeddings()
        return WoodburyFactor(gram, self.lam, None, dtype=self.dtype)

    def _direct_flat(self, bflat):
        # x = (b - E^T K (E b)) / lam
        factor = self.factorize()
        cols, back = self._columns(bflat)
        y = factor.coefficients(self._emb_flat @ cols)
        return (bflat - back(self._embed_t() @ y)) / self._lam_flat()

    def _prefer_direct(self, n_rhs):
        n, d = self.size, self.rank
        return direct_is_cheaper(factor_flops=2.0 * n * d * d + 4.0 * d ** 3,
                                 matvec_flops=4.0 * n * d, max_cg_iterations=d + 1,
                                 n_rhs=n_rhs, factored=self._factor_cache is not None)

    def _break_even(self, n_rhs):
        n, d = self.size, self.rank
        return break_even_products(factor_flops=2.0 * n * d * d + 4.0 * d ** 3,
                                   matvec_flops=4.0 * n * d, n_rhs=n_rhs, dtype=self.dtype)

    def _make_float64_twin(self):
        return LowRankGCRF(self._emb_flat.reshape(self.embeddings.shape).astype(np.float64),
                           self.lam.astype(np.float64))

    # ------------------------------------------------------------------ solver hooks
    def _sweep_shape(self):
        return (self.size,)

    def _sweep_kernel(self, x, b, lam, omega):
        from .kernels import gauss_seidel_general

        if self._rows is None:
            rows = np.ascontiguousarray(to_host(self._embed_t()))
            nb = math.prod(self.batch_shape)
            diag = np.ascontiguousarray(to_host(self.diagonal())).reshape(nb, self.size)
            self._rows = (rows.reshape(nb, self.size, self.rank), diag)
        rows, diag = self._rows
        gauss_seidel_general(rows, diag, lam, x, b, omega)

    def block_jacobi_preconditioner(self):
        """Inverse of the per-pixel ``L x L`` blocks ``lam I + E_p^T E_p`` (``E_p = E[:, :, p]``),
        applied to arrays of shape ``(..., *batch_shape, N)``."""
        xp = self.xp
        n_labels = self.vector_shape[0]
        p = self.size // n_labels
        e = self._emb_flat.reshape(self.batch_shape + (self.rank, n_labels, p))
        blocks = xp.einsum("...dmp,...dnp->...pmn", e, e)
        blocks = blocks + self.lam[..., None, None, None] * xp.eye(n_labels, dtype=self.dtype)
        inv = xp.linalg.inv(blocks)  # (*batch, P, L, L)

        def apply(r):
            rr = r.reshape(r.shape[:-1] + (n_labels, p))
            return xp.einsum("...pmn,...np->...mp", inv, rr).reshape(r.shape)

        return apply

    # ------------------------------------------------------------------ gradients
    def _parameter_gradients(self, x, g):
        # dL/dE = -(E g) x^T - (E x) g^T,  (D x N) per system
        xf = self._flatten(x)[..., None, :]  # (*batch, 1, N)
        gf = self._flatten(g)[..., None, :]
        eg = self._emb_flat @ _swap_last(gf)  # (*batch, D, 1)
        ex = self._emb_flat @ _swap_last(xf)
        grad = negative_rank_two(self.xp, eg[..., 0], xf[..., 0, :], ex[..., 0], gf[..., 0, :])
        return {"embeddings": grad.reshape(self.embeddings.shape)}


class LowRankPottsGCRF(_LowRankOperator):
    """Dense low-rank Potts G-CRF (docs/design.md 3.5).

    ``A[(m,p),(n,q)] = <psi_p, psi_q>`` if ``m != n`` and ``0`` if ``m == n``:
    ``M = I_L (x) (lam I_P - W) + 1 1^T (x) W`` with ``W = psi^T psi``.  Positive definite iff
    ``lam > ||psi||_2^2`` (when ``L >= 2``; for ``L = 1``, ``M = lam I``).  Memory O(P D).

    Parameters
    ----------
    embeddings : array, shape ``(..., D, H, W)``
        ``psi``; leading axes are batch axes.  Never modified.  Results describe the parameters as they are at the call (docs/guarantees.md):
        a writeable NumPy input is viewed, not copied, and re-checked by every solve (cached factors
        are rebuilt when it changed); the public attribute is a read-only view.
    lam : float or array of the batch shape
        The diagonal shift, ``> 0``.
    num_labels : int
        ``L >= 1``.

    Notes
    -----
    Product: with ``Y = psi V^T`` (``D x L``, one matrix product for all labels),
    ``M v`` has label rows ``q_l = psi^T (sum_m Y_m - Y_l) + lam v_l``: the label sum is taken in
    the embedding space and shared, O(P D L) in all.

    Direct solve: the label sum ``s = sum_l x_l`` solves ``(lam I + (L-1) W) s = sum_l b_l``, then
    ``(lam I - W) x_l = b_l - W s`` for every label; both are ``lam I_P +- psi^T psi`` systems solved
    by Woodbury with the ``D x D`` capacitance matrices ``lam I + (L-1) psi psi^T`` and
    ``lam I - psi psi^T`` (Cholesky; O(P D^2 + D^3) once, O(P D L) per right-hand side).  With
    ``psi psi^T = Q diag(s) Q^T`` the per-label inverse is ``Q diag(1 / (lam - s)) Q^T``: relative
    error ``O(eps cond(M))``, ``cond(M) = (lam + (L-1)||psi||_2^2) / (lam - ||psi||_2^2)``,
    so accuracy degrades as ``lam`` approaches ``||psi||_2^2`` (and when ``lam`` is tiny against
    ``||psi||_2^2``).  The eigenvalues ``lam - s_i`` and ``lam + (L-1) s_i`` are the spectrum of ``M``
    (with ``lam``); the Cholesky factorisation of ``lam I - psi psi^T`` exists iff ``lam > max s``,
    which makes :meth:`check_positive_definite` exact (an indefinite but invertible ``M`` is still
    solved exactly, through the eigendecomposition, when the check is skipped).
    """

    def __init__(self, embeddings, lam, num_labels):
        if isinstance(num_labels, bool):
            raise TypeError("num_labels must be an integer >= 1; got a bool")
        try:
            n_labels = operator.index(num_labels)
        except TypeError:
            raise TypeError(f"num_labels must be an integer >= 1; got {num_labels!r}") from None
        if n_labels < 1:
            raise ValueError(f"num_labels must be >= 1; got {n_labels}")
        psi, watched, fingerprint = as_parameter(embeddings, "embeddings", min_ndim=3, view=True)
        if watched:
            self._watch("embeddings", psi, fingerprint)
        xp = get_array_module(psi)
        _check_dims(psi.shape[-3:], ("D", "H", "W"), "embeddings (..., D, H, W)")
        batch_shape = tuple(psi.shape[:-3])
        d, h, w = psi.shape[-3:]
        lam_full, lam_shape = as_lam(lam, batch_shape, psi.dtype, xp)
        super().__init__(xp=xp, dtype=psi.dtype, batch_shape=batch_shape,
                         vector_shape=(n_labels, h, w), lam=lam_full, lam_shape=lam_shape)
        self.embeddings = readonly(psi)
        self.rank = int(d)
        self.num_labels = n_labels
        self.num_pixels = int(h * w)
        self._psi = psi.reshape(batch_shape + (d, self.num_pixels))  # (*batch, D, P)
        self._rows = None
        self._gram = None

    # ------------------------------------------------------------------ products
    def _labels(self, vflat):
        """``(..., N)`` -> ``(..., L, P)``: one row per label (a view)."""
        return vflat.reshape(vflat.shape[:-1] + (self.num_labels, self.num_pixels))

    def _psi_t(self):
        return self.xp.swapaxes(self._psi, -1, -2)  # (*batch, P, D)

    def _apply_flat(self, vflat):
        # q_l = psi^T (sum_m Y_m - Y_l) + lam v_l,  Y_m = psi v_m  (rows of V psi^T, shape (L, D))
        v = self._labels(vflat)
        y = v @ self._psi_t()  # (..., L, D)
        t = y.sum(axis=-2, keepdims=True) - y
        return (t @ self._psi).reshape(vflat.shape) + self._lam_flat() * vflat

    def _to_dense(self):
        xp = self.xp
        n_labels = self.num_labels
        wmat = self._psi_t() @ self._psi  # (*batch, P, P)
        off = (1.0 - xp.eye(n_labels, dtype=self.dtype))[:, None, :, None]
        a = off * wmat[..., None, :, None, :]
        a = a.reshape(self.batch_shape + (self.size, self.size))
        return a + self.lam[..., None, None] * xp.eye(self.size, dtype=self.dtype)

    # ------------------------------------------------------------------ factor, PD, direct solve
    def _compute_factor(self):
        self._gram = self._psi @ self._psi_t()  # (*batch, D, D)
        label_sum = WoodburyFactor(self._gram, self.lam, self.xp.asarray(float(self.num_labels - 1)))
        per_label = WoodburyFactor(self._gram, self.lam, self.xp.asarray(-1.0))
        return label_sum, per_label

    def squared_spectral_norm(self):
        """``||psi||_2^2 = lambda_max(psi psi^T)`` per system (float64, shape ``batch_shape``)."""
        return self.factorize()[1].gram_eigenvalues[..., -1]

    def check_positive_definite(self, exact: bool = False) -> bool:
        """Raise :class:`NotPositiveDefiniteError` unless ``lam > ||psi||_2^2`` in every system
        (``L >= 2``; docs/design.md section 6); return True.  The test is exact and cheap, so it runs
        the same with or without ``exact``.

        The test is the Cholesky factorisation of the ``D x D`` capacitance matrix
        ``lam I - psi psi^T``, which exists iff ``lam > ||psi||_2^2`` (exact up to its round-off,
        ``O(eps D ||psi||_2^2)``); the factorisation is cached and reused by the direct solve.  On
        failure the eigenvalues of ``psi psi^T`` name the bound.  At the bound itself the
        factorisation can succeed by rounding, so ``lam`` must also exceed ``||psi||_2^2`` by a
        relative margin of 8 ulps of the dtype: ``1 / trace((lam I - psi psi^T)^{-1})``, a lower
        bound of the capacitance's smallest eigenvalue, clears it in ``O(D)``; only systems it does not
        clear get the eigenvalues of ``psi psi^T`` (``O(D^3)``)."""
        if self.num_labels < 2:
            return True
        with np.errstate(divide="ignore", invalid="ignore"):  # an exactly singular capacitance
            per_label = self.factorize()[1]
            chol_ok = bool(per_label.is_positive_definite())
        eps = float(np.finfo(self.dtype).eps)
        if chol_ok:
            # F = (lam I - psi psi^T)^{-1} is at hand: lambda_min(lam I - psi psi^T) >= 1 / trace(F),
            # so a large enough 1 / trace(F) clears the margin without any eigenvalue (O(D))
            xp = self.xp
            trace = xp.trace(per_label.range_inverse.astype(np.float64), axis1=-2, axis2=-1)
            with np.errstate(divide="ignore", invalid="ignore"):
                if bool(xp.all((trace > 0) & (1.0 / trace > 16.0 * eps * self.lam))):
                    return True
        bound = self.squared_spectral_norm()
        if chol_ok:
            margin = 1.0 + 8.0 * eps
            raise_if_lam_below(self.lam, bound * margin, bound_name="||psi||_2^2 (1 + 8 eps)",
                               form=type(self).__name__, reason="lam is within rounding of the bound")
            return True
        raise_if_lam_below(self.lam, bound, bound_name="||psi||_2^2", form=type(self).__name__)
        return True

    def _direct_flat(self, bflat):
        lam = self.lam[..., None, None]
        if self.num_labels == 1:
            return bflat / self._lam_flat()
        label_sum, per_label = self.factorize()
        brows = self._labels(bflat)  # (..., L, P)
        y = brows @ self._psi_t()  # (..., L, D): rows psi b_l
        # z = psi s = F_sum (psi sum_l b_l); the factors' matrices are symmetric, so rows multiply
        # from the right
        z = y.sum(axis=-2, keepdims=True) @ label_sum.range_inverse  # (..., 1, D)
        rhs = y - z @ self._gram  # rows psi (b_l - W s)
        c = rhs @ per_label.capacitance_inverse
        # x_l = (b_l - W s - psi^T K psi (b_l - W s)) / lam = (b_l - psi^T (z + c_l)) / lam
        return ((brows - (z + c) @ self._psi) / lam).reshape(bflat.shape)

    def _prefer_direct(self, n_rhs):
        p, d, n_labels = self.num_pixels, self.rank, self.num_labels
        return direct_is_cheaper(factor_flops=2.0 * p * d * d + 8.0 * d ** 3,
                                 matvec_flops=4.0 * p * d * n_labels, max_cg_iterations=2 * d + 1,
                                 n_rhs=n_rhs, factored=self._factor_cache is not None)

    def _break_even(self, n_rhs):
        p, d, n_labels = self.num_pixels, self.rank, self.num_labels
        return break_even_products(factor_flops=2.0 * p * d * d + 8.0 * d ** 3,
                                   matvec_flops=4.0 * p * d * n_labels, n_rhs=n_rhs, dtype=self.dtype)

    def _make_float64_twin(self):
        return LowRankPottsGCRF(self.embeddings.astype(np.float64), self.lam.astype(np.float64),
                                self.num_labels)

    # ------------------------------------------------------------------ solver hooks
    def _sweep_shape(self):
        return (self.num_labels, self.num_pixels)

    def _sweep_kernel(self, x, b, lam, omega):
        from .kernels import gauss_seidel_potts

        if self._rows is None:
            nb = math.prod(self.batch_shape)
            rows = np.ascontiguousarray(to_host(self._psi_t()))
            self._rows = rows.reshape(nb, self.num_pixels, self.rank)
        gauss_seidel_potts(self._rows, lam, x, b, omega)

    def block_jacobi_preconditioner(self):
        """Inverse of the per-pixel ``L x L`` blocks ``lam I + a_p (11^T - I)``, ``a_p = |psi_p|^2``,
        in closed form: ``(lam - a_p)^{-1} (I - a_p / (lam + (L-1) a_p) 11^T)``.

        Raises :class:`NotPositiveDefiniteError` when some block is not positive definite
        (``lam <= max_p a_p``, so ``M`` is not either)."""
        n_labels, p = self.num_labels, self.num_pixels
        if n_labels == 1:
            inv_lam = 1.0 / self._lam_flat()
            return lambda r: r * inv_lam
        a = (self._psi * self._psi).sum(axis=-2)  # (*batch, P)
        raise_if_lam_below(self.lam, a.max(axis=-1), bound_name="max_p |psi_p|^2",
                           form=type(self).__name__ + " (pixel block)")
        lam = self.lam[..., None]
        shrink = (a / (lam + (n_labels - 1) * a))[..., None, :]  # (*batch, 1, P)
        scale = (1.0 / (lam - a))[..., None, :]

        def apply(r):
            rr = r.reshape(r.shape[:-1] + (n_labels, p))
            out = (rr - shrink * rr.sum(axis=-2, keepdims=True)) * scale
            return out.reshape(r.shape)

        return apply

    # ------------------------------------------------------------------ gradients
    def _parameter_gradients(self, x, g):
        # dL/dpsi = -[(psi G) X^T + (psi X) G^T - sum_l ((psi g_l) x_l^T + (psi x_l) g_l^T)]
        #         = -(T_g x + T_x g),  T_v = Y_v (11^T - I),  Y_v = psi v^T  (D x L)
        shape = self.batch_shape + (self.num_labels, self.num_pixels)
        xl, gl = x.reshape(shape), g.reshape(shape)
        yg = self._psi @ _swap_last(gl)
        yx = self._psi @ _swap_last(xl)
        tg = yg.sum(axis=-1, keepdims=True) - yg
        tx = yx.sum(axis=-1, keepdims=True) - yx
        grad = -(tg @ xl + tx @ gl)
        return {"embeddings": grad.reshape(self.embeddings.shape)}


def negative_rank_two(xp, a, u, b, v):
    """``-(a u^T + b v^T)`` for stacks ``a, b`` of shape ``(..., D)`` and ``u, v`` of ``(..., N)``.

    One ``(D x 2) @ (2 x N)`` product, so the ``D x N`` result (as large as the embeddings) is written
    once, with no temporaries of its size: the gradient contractions of docs/design.md section 5.
    """
    left = -xp.stack([a, b], axis=-1)  # (..., D, 2)
    right = xp.stack([u, v], axis=-2)  # (..., 2, N)
    return left @ right


def _swap_last(a):
    """Swap the last two axes (NumPy and CuPy arrays)."""
    return a.swapaxes(-1, -2)
