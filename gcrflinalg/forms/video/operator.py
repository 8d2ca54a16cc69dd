"""The spatio-temporal (video) G-CRF operator (docs/design.md 3.6).

``V`` frames share one system.  With per-frame spatial embeddings ``S_v`` (``Ds x n``), temporal
embeddings ``T_v`` (``Dt x n``), ``n = L*H*W`` unknowns per frame and the frame coupling matrix
``K`` (``V x V``, ``K[u, v] = 1`` when ``u != v`` and ``|u - v|`` is in the temporal neighbourhood)::

    M = lam I + blockdiag_v(S_v^T S_v) + sum_{u, v} K[u, v] T_u^T T_v          (block (u, v))
      = lam I + U^T C U,   U = blockdiag_v([S_v; T_v]),   C = I_V (x) J_S + K (x) J_T,

where ``J_S = diag(I_Ds, 0)`` and ``J_T = diag(0, I_Dt)`` pick the spatial and temporal rows of a
frame.  ``A = U^T C U`` has rank at most ``V (Ds + Dt)`` and ``C`` is indefinite, so ``M`` is
positive definite only when ``lam`` is large enough (see :meth:`VideoGCRF.check_positive_definite`).

Products never form ``N x N``: every projection ``S_v p_v``, ``T_v p_v`` is computed once per
product and the temporal message ``c_u = sum_v K[u, v] T_v p_v`` is a ``V x V`` combination of
them (for the fully connected neighbourhood ``c_u = sum_v T_v p_v - T_u p_u``, one cached sum).
The direct solve factors a ``V (Ds + Dt)`` square capacitance matrix once and reuses it for the
adjoint.
"""
from __future__ import annotations

import time

import numpy as np

from ...backend import _array_kernels_on, get_array_module, to_host
from ...operator import GCRFOperator
from ...results import direct_options, not_positive_definite, refined_direct_solve
from ..._validation import as_lam, as_parameter, borrowed_parameters, check_finite, readonly
from ..lowrank.operators import auto_solve, break_even_products, direct_is_cheaper, negative_rank_two
from .kernels import gauss_seidel_video
from .temporal import frame_coupling_matrix, normalise_neighbourhood

__all__ = ["VideoGCRF"]

# options of the iterative methods that the direct solve accepts and ignores
_ITERATIVE_ONLY_OPTIONS = {"maxiter", "callback", "M", "restart", "omega"}


class VideoGCRF(GCRFOperator):
    """Spatio-temporal G-CRF ``M = lam I + blockdiag_v(S_v^T S_v) + sum K[u,v] T_u^T T_v``.

    Parameters
    ----------
    spatial : array, shape ``(..., V, Ds, L, H, W)``
        Spatial embeddings ``S``: frame ``v`` couples its own pixels through ``S_v^T S_v``.
    temporal : array, shape ``(..., V, Dt, L, H, W)``
        Temporal embeddings ``T``: frames ``u != v`` at a distance in the neighbourhood are coupled
        through the block ``T_u^T T_v``.  Same batch axes as ``spatial``.  ``Dt = 0`` is allowed
        (no temporal coupling: ``M`` is block-diagonal over the frames); ``Ds = 0``, ``V = 0`` and
        empty image axes are a ``ValueError``.  Results describe the embeddings as they are at
        the call (docs/guarantees.md): a writeable NumPy input is viewed, not copied, and
        re-checked by every solve; the attributes ``spatial`` and ``temporal`` are read-only.
    lam : float or array of shape ``batch_shape``
        The diagonal shift, ``> 0``.
    neighbourhood : "fc" or iterable of int
        ``"fc"`` couples every pair of frames; a set of frame distances couples only the frames at
        those distances (``{1}``, ``{1, 2}`` and the multiscale ``{1, 2, 4}`` are common).
    product : {"cached", "pairwise"}
        ``"cached"`` (default) computes each projection ``T_v p_v`` once per product and combines
        them over the coupled frames; ``"pairwise"`` applies every coupled block ``T_u^T T_v``
        separately (``V (V - 1)`` projections for ``"fc"``), for comparison.

    Notes
    -----
    The vector shape is ``(V, L, H, W)`` (frame-major, then label-major as in every form).  The
    product costs ``O(V (Ds + Dt) n)`` with ``n = L*H*W``; ``N x N`` is never formed.

    ``M`` is **not** positive definite for every ``lam > 0``: the temporal blocks are off-diagonal
    and can make it indefinite.  :meth:`check_positive_definite` decides it exactly; a cheap
    sufficient condition is ``lam > -lambda_min(K) max_v ||T_v||_2^2`` (see
    :meth:`sufficient_lam`).
    """

    #: what is cached from the embeddings (dropped when watched embeddings change)
    _CACHED = ("_capacitance_matrices_cache", "_capacitance_cache", "_spatial_sq_cache", "_sweep_rows",
               "_twin64")

    def __init__(self, spatial, temporal, lam, neighbourhood="fc", *, product: str = "cached"):
        S, watch_s, fp_s = as_parameter(spatial, "spatial", min_ndim=5, view=True)
        xp = get_array_module(S)
        T, watch_t, fp_t = as_parameter(temporal, "temporal", min_ndim=5, xp=xp, view=True)
        dtype = np.result_type(S.dtype, T.dtype)
        # a watched array stays watched unless the common dtype needs a cast (then it is owned)
        for name, arr, watched, fp in (("spatial", S, watch_s, fp_s), ("temporal", T, watch_t, fp_t)):
            if watched and arr.dtype == dtype:
                self._watch(name, arr, fp)
        S, T = S.astype(dtype, copy=False), T.astype(dtype, copy=False)
        batch_shape = tuple(S.shape[:-5])
        n_frames, ds, n_labels, height, width = S.shape[-5:]
        if tuple(T.shape[:-5]) != batch_shape or T.shape[-5] != n_frames or T.shape[-3:] != S.shape[-3:]:
            raise ValueError(
                f"temporal must have shape (*batch, V, Dt, L, H, W) with the batch, V, L, H, W of "
                f"spatial {tuple(S.shape)} = (*batch, V, Ds, L, H, W); got {tuple(T.shape)}")
        if n_frames < 1 or n_labels < 1 or height < 1 or width < 1:
            raise ValueError(f"spatial must have at least one frame, label and pixel; got shape "
                             f"{tuple(S.shape)}")
        if ds < 1:
            raise ValueError(f"spatial: the axis Ds (spatial rank) is empty; got shape {tuple(S.shape)} "
                             "(Dt = 0 is allowed: no temporal coupling)")
        if product not in ("cached", "pairwise"):
            raise ValueError(f"product must be 'cached' or 'pairwise'; got {product!r}")
        lam_full, lam_shape = as_lam(lam, batch_shape, dtype, xp)
        super().__init__(xp=xp, dtype=dtype, batch_shape=batch_shape,
                         vector_shape=(n_frames, n_labels, height, width), lam=lam_full,
                         lam_shape=lam_shape)
        self.spatial = readonly(S)
        self.temporal = readonly(T)
        self.neighbourhood = normalise_neighbourhood(neighbourhood)
        self.product = product
        self.n_frames = int(n_frames)
        self.frame_size = int(n_labels * height * width)
        self.spatial_dim = int(ds)
        self.temporal_dim = int(T.shape[-4])
        self.coupling = frame_coupling_matrix(self.neighbourhood, self.n_frames)
        self._coupling_xp = xp.asarray(self.coupling, dtype=dtype)
        self._pairs = [tuple(map(int, uv)) for uv in np.argwhere(self.coupling > 0)]
        # (*batch, V, D, n) views of the embeddings (copies only if the input was not contiguous)
        self._S = S.reshape(batch_shape + (n_frames, ds, self.frame_size))
        self._T = T.reshape(batch_shape + (n_frames, self.temporal_dim, self.frame_size))
        self._capacitance_matrices_cache = None
        self._capacitance_cache = None
        self._spatial_sq_cache = None
        self._sweep_rows = None

    @property
    def coupled(self) -> bool:
        """True when some pair of frames is coupled (``K != 0``)."""
        return bool(self._pairs)

    # ------------------------------------------------------------------ products
    def _host_loops(self) -> bool:
        """The per-frame BLAS loops of the CPU (NumPy, unless the array-kernel switch is on:
        :func:`gcrflinalg.backend._array_kernels_on`); else the stacked array code CuPy runs."""
        return self.xp is np and not _array_kernels_on()

    def _project(self, E, p):
        """``E_v p_v`` per frame: ``E`` ``(*batch, V, D, n)``, ``p`` ``(..., *batch, V, n)`` ->
        ``(..., *batch, V, D)``."""
        if not self._host_loops():
            return self.xp.einsum("...vdn,...vn->...vd", E, p)
        # one BLAS product per frame (GEMV, or GEMM over extra right-hand sides); measured
        # 2x faster than a stacked einsum or matmul on the CPU
        E2, p2, out = self._per_frame(E, p, E.shape[-2])
        for i in range(E2.shape[0]):
            np.matmul(p2[:, i, :], E2[i].T, out=out[:, i, :])
        return out.reshape(p.shape[:-1] + (E.shape[-2],))

    def _back_project(self, E, y):
        """``E_v^T y_v`` per frame: ``y`` ``(..., *batch, V, D)`` -> ``(..., *batch, V, n)``."""
        if not self._host_loops():
            return self.xp.einsum("...vdn,...vd->...vn", E, y)
        E2, y2, out = self._per_frame(E, y, E.shape[-1])
        for i in range(E2.shape[0]):
            np.matmul(y2[:, i, :], E2[i], out=out[:, i, :])
        return out.reshape(y.shape[:-1] + (E.shape[-1],))

    def _per_frame(self, E, v, out_len):
        """``E`` as ``(items, D, n)`` and ``v`` as ``(extra, items, len)`` with ``items`` the batch
        systems times frames, and an output buffer ``(extra, items, out_len)``."""
        items = int(np.prod(E.shape[:-2]))
        E2 = E.reshape((items,) + E.shape[-2:])
        lead = v.shape[: v.ndim - E.ndim + 1]
        v = np.broadcast_to(v, lead + E.shape[:-2] + v.shape[-1:])
        # (the extra count spelt out: a -1 is ambiguous when the batch is empty)
        v2 = np.ascontiguousarray(v, dtype=E.dtype).reshape((int(np.prod(lead)), items, v.shape[-1]))
        out = np.empty((v2.shape[0], items, out_len), dtype=E.dtype)
        return E2, v2, out

    def _temporal_message(self, t):
        """``c_u = sum_v K[u, v] t_v`` for ``t`` of shape ``(..., V, Dt)``.

        Fully connected: ``c_u = (sum_v t_v) - t_u`` (the cached sum); otherwise the ``V x V``
        combination over the coupled pairs only.
        """
        if self.neighbourhood == "fc":
            return t.sum(axis=-2, keepdims=True) - t
        return self._coupling_xp @ t

    def _cached_product_host(self, pf):
        """``U^T C U p`` on the CPU, ordered for the cache: ``pf`` ``(..., *batch, V, n)``.

        The spatial term of a frame is a round trip ``S_v^T (S_v p_v)`` done while ``S_v`` is still
        in the last-level cache (the frame's embeddings are read from memory once, not twice); the
        temporal projections ``T_v p_v`` are taken in frame order and the back-projections
        ``T_v^T c_v`` in reverse order, so the last frames' ``T_v`` are reused from the cache.  The
        same BLAS products as the frame-by-frame form, so the same result.
        """
        S2, p2, q = self._per_frame(self._S, pf, self.frame_size)
        items = S2.shape[0]
        coupled = self.coupled
        if coupled:
            T2 = self._T.reshape((items,) + self._T.shape[-2:])
            t = np.empty((p2.shape[0], items, T2.shape[1]), dtype=S2.dtype)
        s = np.empty((p2.shape[0], S2.shape[1]), dtype=S2.dtype)
        for i in range(items):
            np.matmul(p2[:, i, :], S2[i].T, out=s)
            np.matmul(s, S2[i], out=q[:, i, :])
            if coupled:
                np.matmul(p2[:, i, :], T2[i].T, out=t[:, i, :])
        if coupled:
            t = t.reshape(p2.shape[:1] + self.batch_shape + (self.n_frames, T2.shape[1]))
            c = np.ascontiguousarray(self._temporal_message(t), dtype=S2.dtype)
            c = c.reshape((p2.shape[0], items, T2.shape[1]))
            tmp = np.empty((p2.shape[0], self.frame_size), dtype=S2.dtype)
            for i in reversed(range(items)):
                np.matmul(c[:, i, :], T2[i], out=tmp)
                q[:, i, :] += tmp
        return q.reshape(pf.shape[: pf.ndim - len(self.batch_shape) - 2] + self._S.shape[:-2]
                         + (self.frame_size,))

    def _matvec(self, p):
        # q_u = S_u^T S_u p_u + lam p_u + T_u^T c_u,  c_u = sum_v K[u, v] T_v p_v
        lead = p.shape[: p.ndim - 3]
        pf = p.reshape(lead + (self.frame_size,))
        if self._host_loops() and (self.product == "cached" or not self.coupled):
            return self._cached_product_host(pf).reshape(p.shape) + self._lam_times(p)
        q = self._back_project(self._S, self._project(self._S, pf))
        if self.coupled:
            if self.product == "cached":
                c = self._temporal_message(self._project(self._T, pf))
                q = q + self._back_project(self._T, c)
            else:
                q = q + self._pairwise_temporal_product(pf)
        return q.reshape(p.shape) + self._lam_times(p)

    def _pairwise_temporal_product(self, pf):
        """``sum_v K[u, v] T_u^T (T_v p_v)`` one coupled block at a time (no shared projection)."""
        xp = self.xp
        q = xp.zeros_like(pf)
        for u, v in self._pairs:
            T_u, T_v = self._T[..., u:u + 1, :, :], self._T[..., v:v + 1, :, :]
            t_v = self._project(T_v, pf[..., v:v + 1, :])
            q[..., u:u + 1, :] += self._back_project(T_u, t_v)
        return q

    def _diagonal(self):
        # diag(M) = lam + sum_d S[v, d, n]^2 (the temporal blocks lie off the frame diagonal)
        if self._spatial_sq_cache is None:
            self._spatial_sq_cache = (self._S * self._S).sum(axis=-2)
        diag = self._spatial_sq_cache + self.lam.reshape(self.lam.shape + (1, 1))
        return diag.reshape(self.batch_shape + self.vector_shape)

    def _to_dense(self):
        xp, V, n = self.xp, self.n_frames, self.frame_size
        spatial = xp.einsum("...vdm,...vdn->...vmn", self._S, self._S)
        dense = xp.einsum("...udm,...vdn->...umvn", self._T, self._T)
        dense = dense * self._coupling_xp[:, None, :, None]
        idx = xp.arange(V)
        dense[..., idx, :, idx, :] += xp.moveaxis(spatial, -3, 0)
        dense = dense.reshape(self.batch_shape + (V * n, V * n))
        eye = xp.eye(V * n, dtype=self.dtype)
        return dense + self.lam.reshape(self.lam.shape + (1, 1)) * eye

    def block_jacobi_preconditioner(self):
        """A callable applying the inverse of ``M``'s per-pixel ``L x L`` diagonal blocks.

        The block of frame ``v`` at pixel ``p`` is ``lam I + S_v[:, :, p]^T S_v[:, :, p]`` (the
        temporal blocks never touch it).  Applies to arrays of shape ``(..., *batch_shape, N)``.
        """
        xp = self.xp
        V, L, H, W = self.vector_shape
        P = H * W
        S = self._S.reshape(self.batch_shape + (V, self.spatial_dim, L, P))
        blocks = xp.einsum("...vdlp,...vdmp->...vplm", S, S)
        lam = self.lam.reshape(self.lam.shape + (1, 1, 1, 1))
        inv_blocks = xp.linalg.inv(blocks + lam * xp.eye(L, dtype=self.dtype))

        def apply(r):
            rr = r.reshape(r.shape[:-1] + (V, L, P))
            out = xp.einsum("...vplm,...vmp->...vlp", inv_blocks, rr)
            return out.reshape(r.shape)

        return apply

    def _gauss_seidel_sweep(self, x, b, omega):
        # Natural-order SOR sweep on the CPU (a compiled O(V (Ds + Dt) n) loop); device arrays are
        # copied to the host and back.
        nb = int(np.prod(self.batch_shape))
        V, n = self.n_frames, self.frame_size
        if self._sweep_rows is None:
            def rows(E):
                return np.ascontiguousarray(to_host(self.xp.swapaxes(E, -1, -2))).reshape(
                    (nb, V, n, E.shape[-2]))
            T = self._T if self.coupled else self._T[..., :0, :]
            diag = np.ascontiguousarray(to_host(self._diagonal())).reshape(nb, V, n)
            self._sweep_rows = (rows(self._S), rows(T), diag,
                                np.ascontiguousarray(self.coupling, dtype=self.dtype))
        s_rows, t_rows, diag, coupling = self._sweep_rows
        xh = np.array(to_host(x), dtype=self.dtype, order="C").reshape(nb, V, n)
        bh = np.ascontiguousarray(to_host(b), dtype=self.dtype).reshape(nb, V, n)
        lam = np.ascontiguousarray(to_host(self.lam), dtype=self.dtype).reshape(nb)
        gauss_seidel_video(s_rows, t_rows, diag, coupling, lam, xh, bh, self.dtype.type(omega))
        xh = xh.reshape(x.shape)
        return xh if self.xp is np else self.xp.asarray(xh)

    # ------------------------------------------------------------------ gradients
    def _parameter_gradients(self, x, g):
        # dL/dS_v = -(S_v g_v) x_v^T - (S_v x_v) g_v^T
        # dL/dT_w = -(sum_v K[w, v] T_v x_v) g_w^T - (sum_v K[w, v] T_v g_v) x_w^T
        xp = self.xp
        lead = x.shape[: x.ndim - 3]
        xf = x.reshape(lead + (self.frame_size,))
        gf = g.reshape(lead + (self.frame_size,))
        Sx, Sg = self._project(self._S, xf), self._project(self._S, gf)
        dS = negative_rank_two(xp, Sg, xf, Sx, gf)
        if self.coupled:
            cx = self._temporal_message(self._project(self._T, xf))
            cg = self._temporal_message(self._project(self._T, gf))
            dT = negative_rank_two(xp, cx, gf, cg, xf)
        else:
            dT = xp.zeros_like(self._T)
        return {"spatial": dS.reshape(self.spatial.shape),
                "temporal": dT.reshape(self.temporal.shape)}

    # ------------------------------------------------------------------ positive definiteness
    def sufficient_lam(self):
        """A cheap ``lam`` above which ``M`` is certainly positive definite, per system.

        Sufficient condition.  Write ``M = lam I + blockdiag_v(S_v^T S_v) + A_T`` with the temporal
        part ``p^T A_T p = sum_{u,v} K[u, v] t_u . t_v``, ``t_v = T_v p_v``.  The spatial part is
        positive semi-definite and ``sum_{u,v} K[u, v] t_u . t_v >= lambda_min(K) sum_v |t_v|^2
        >= lambda_min(K) max_v ||T_v||_2^2 |p|^2``, hence

            lam > -lambda_min(K) max_v ||T_v||_2^2   implies   M positive definite.

        ``-lambda_min(K) = 1`` for ``"fc"`` with ``V >= 2`` and is at most the largest number of
        frames coupled to one frame (Gershgorin) for the sparse neighbourhoods.  The value returned
        uses the Frobenius norm ``||T_v||_F >= ||T_v||_2``: ``O(V Dt n)`` to compute, never below
        the exact threshold of :meth:`positive_definite_threshold`.

        Returns
        -------
        array, shape ``batch_shape`` (host NumPy, float64)
        """
        if not self.coupled:
            return np.zeros(self.batch_shape)
        kappa = max(0.0, -float(np.linalg.eigvalsh(self.coupling)[0]))
        return kappa * self._max_frame_frobenius_squared()

    def _max_frame_frobenius_squared(self):
        """``max_v ||T_v||_F^2`` per system (host float64), rounded up: one BLAS dot product per
        frame (one read of ``T``, no temporaries), whose rounding error is at most
        ``n eps ||T_v||_F^2`` for ``n`` terms (Higham, *Accuracy and Stability*, 3.1), so
        ``(1 + n eps)`` times the computed value bounds the exact one from above."""
        xp = self.xp
        items = int(np.prod(self.batch_shape, dtype=np.int64))
        frames = self._T.reshape((items, self.n_frames, -1))
        n = frames.shape[-1]
        sums = xp.stack([xp.stack([xp.dot(frames[i, v], frames[i, v]) for v in range(self.n_frames)])
                         for i in range(items)]) if items else xp.zeros((0, self.n_frames))
        fro2 = np.asarray(to_host(sums), dtype=np.float64).max(axis=-1, initial=0.0)
        return (fro2 * (1.0 + n * float(np.finfo(self.dtype).eps))).reshape(self.batch_shape)

    def positive_definite_threshold(self):
        """The exact threshold: ``M`` is positive definite iff ``lam > threshold``, per system.

        ``threshold = max(0, -lambda_min(U^T C U))``, the most negative eigenvalue of the pairwise
        term, computed from the capacitance matrix ``B = R^T C R`` (``G_v = R_v R_v^T``, the
        per-frame Gram matrices of ``[S_v; T_v]``), whose nonzero eigenvalues are those of
        ``U^T C U``.  Costs ``O(V (Ds + Dt)^2 n + (V (Ds + Dt))^3)``.

        Returns
        -------
        array, shape ``batch_shape`` (host NumPy, float64)
        """
        B = self._capacitance_matrices()["B"]
        theta_min = to_host(self.xp.linalg.eigvalsh(B)[..., 0])
        return np.maximum(0.0, -theta_min)

    def check_positive_definite(self, exact: bool = False) -> bool:
        """Check ``M`` for positive definiteness (docs/design.md section 6).

        By default only the sufficient bound of :meth:`sufficient_lam` (``O(V Dt n)``): True when it
        certifies every system, else False, and the solve goes ahead: the direct method's
        capacitance factorisation is the exact test (it runs anyway), CG's curvature test guards
        the iterative methods.  With ``exact=True`` the exact test runs here: ``M`` is positive
        definite iff the Cholesky factorisation of the capacitance matrix ``lam I + B`` exists
        (``B`` as in :meth:`positive_definite_threshold`; cached for the direct solve).  The error
        names ``lam``, the threshold ``-lambda_min(U^T C U)`` it must exceed and the smallest
        eigenvalue of ``M``.
        """
        if not self.coupled:
            return True  # M = lam I + PSD
        lam = to_host(self.lam).astype(np.float64)
        if bool(np.all(lam > self.sufficient_lam())):
            return True
        if not exact:
            return False
        self._capacitance()  # raises when the factorisation fails
        return True

    # ------------------------------------------------------------------ capacitance / direct solve
    def _frame_grams_host(self):
        """The per-frame Gram matrices ``G_v = E_v E_v^T`` (``E_v = [S_v; T_v]``, or ``S_v`` alone
        when no frames are coupled) on the CPU, float64, shape ``(*batch, V, D, D)``.

        Three products per frame instead of four: ``S_v S_v^T`` and ``T_v T_v^T`` as 2-D products of
        a matrix with its own transpose, which NumPy hands to BLAS SYRK (half the flops of a general
        product; a stacked 3-D product would not), and the cross block ``S_v T_v^T`` once (its
        transpose is the other off-diagonal block).  Same dtype as before.
        """
        Ds = self.spatial_dim
        Dt = self.temporal_dim if self.coupled else 0
        items = int(np.prod(self._S.shape[:-2]))
        S2 = self._S.reshape((items, Ds, self.frame_size))
        G = np.empty((items, Ds + Dt, Ds + Dt), dtype=np.float64)
        if Dt:
            T2 = self._T.reshape((items, Dt, self.frame_size))
        for i in range(items):
            G[i, :Ds, :Ds] = S2[i] @ S2[i].T
            if Dt:
                cross = S2[i] @ T2[i].T
                G[i, :Ds, Ds:] = cross
                G[i, Ds:, :Ds] = cross.T
                G[i, Ds:, Ds:] = T2[i] @ T2[i].T
        return G.reshape(self._S.shape[:-2] + (Ds + Dt, Ds + Dt))

    def _gram_square_root(self, G):
        """A square root ``R_v`` with ``G_v = R_v R_v^T`` of every per-frame Gram matrix, float64.

        Any square root serves (``B = R^T C R`` changes by an orthogonal similarity only): the
        Cholesky factor when every ``G_v`` is numerically positive definite (the usual case, ``n``
        much larger than ``D``; about 30x cheaper than an eigendecomposition), else
        ``Q_v Lambda_v^{1/2}`` from the eigendecomposition with the eigenvalues clipped at 0, which
        stays exact for rank-deficient embeddings.
        """
        xp = self.xp
        try:
            R = xp.linalg.cholesky(G)
            ok = bool(xp.isfinite(R).all())  # CuPy may return NaN instead of raising
            if ok:
                # reject factors of numerically singular G (tiny pivots are rounding noise)
                piv = xp.diagonal(R, axis1=-2, axis2=-1)
                scale = xp.sqrt(xp.max(xp.diagonal(G, axis1=-2, axis2=-1), axis=-1))
                ok = bool((piv > 1e3 * np.finfo(self.dtype).eps * scale[..., None]).all())
        except np.linalg.LinAlgError:
            ok = False
        if ok:
            return R
        evals, Q = xp.linalg.eigh(G)
        return Q * xp.sqrt(xp.clip(evals, 0.0, None))[..., None, :]

    def _capacitance_matrices(self):
        """The capacitance matrix ``B = R^T C R`` and ``C R`` (cached), float64.

        With ``E_v = [S_v; T_v]`` (``D x n``, ``D = Ds + Dt``; ``D = Ds`` when no frames are
        coupled), ``G_v = E_v E_v^T = Q_v Lambda_v Q_v^T`` and ``R_v = Q_v Lambda_v^{1/2}``,
        ``U = R Y`` with ``Y`` of orthonormal rows, hence ``M = lam I + Y^T B Y``: the nonzero
        eigenvalues of ``U^T C U`` are those of ``B`` (order ``V D``).  Costs
        ``O(V D^2 n + V^2 D^3)``.
        """
        if self._capacitance_matrices_cache is not None:
            return self._capacitance_matrices_cache
        xp, V, Ds = self.xp, self.n_frames, self.spatial_dim
        Dt = self.temporal_dim if self.coupled else 0
        if self._host_loops():
            G = self._frame_grams_host()
        else:
            S = self._S
            St = xp.swapaxes(S, -1, -2)
            if Dt:
                T = self._T
                Tt = xp.swapaxes(T, -1, -2)
                G = xp.concatenate([
                    xp.concatenate([S @ St, S @ Tt], axis=-1),
                    xp.concatenate([T @ St, T @ Tt], axis=-1),
                ], axis=-2)
            else:
                G = S @ St
        D = Ds + Dt
        G = G.astype(np.float64)
        G = 0.5 * (G + xp.swapaxes(G, -1, -2))
        R = self._gram_square_root(G)  # G_v = R_v R_v^T
        Rs, Rt = R[..., :Ds, :], R[..., Ds:, :]
        K = xp.asarray(self.coupling)
        idx = xp.arange(V)
        # B = R^T C R, block (u, v) = delta_uv Rs_u^T Rs_u + K[u, v] Rt_u^T Rt_v  (Rs/Rt: the
        # spatial/temporal rows of R_v).  Shape (*batch, V, D, V, D).
        B = xp.zeros(self.batch_shape + (V, D, V, D), dtype=np.float64)
        B[..., idx, :, idx, :] = xp.moveaxis(xp.swapaxes(Rs, -1, -2) @ Rs, -3, 0)
        B = B.reshape(self.batch_shape + (V * D, V * D))
        if Dt:
            # all temporal blocks Rt_u^T Rt_v in one GEMM, then masked by K
            Rt_all = xp.moveaxis(Rt, -3, -2).reshape(self.batch_shape + (Dt, V * D))
            mask = xp.repeat(xp.repeat(K, D, axis=0), D, axis=1)
            B += mask * (xp.swapaxes(Rt_all, -1, -2) @ Rt_all)
        # C R: rows (u, spatial) of column block v hold delta_uv Rs_v; rows (u, temporal) hold
        # K[u, v] Rt_v.
        CR = xp.zeros(self.batch_shape + (V, D, V, D), dtype=np.float64)
        CR[..., idx, :Ds, idx, :] = xp.moveaxis(Rs, -3, 0)
        if Dt:
            CR[..., :, Ds:, :, :] = K[:, None, :, None] * xp.moveaxis(Rt, -3, -2)[..., None, :, :, :]
        CR = CR.reshape(self.batch_shape + (V * D, V * D))
        B = 0.5 * (B + xp.swapaxes(B, -1, -2))
        self._capacitance_matrices_cache = {"B": B, "CR": CR, "D": D, "Dt": Dt}
        return self._capacitance_matrices_cache

    def _capacitance(self):
        """Factor ``lam I + B = L L^T`` once (cached): the exact positive-definiteness test.

        ``M``'s eigenvalues are ``lam`` and ``lam + eig(B)`` (see :meth:`_capacitance_matrices`),
        so with ``lam > 0`` ``M`` is positive definite iff the Cholesky factor exists.  On failure
        the smallest eigenvalue of ``B`` is computed for the error message.

        Returns
        -------
        dict with ``B``, ``CR`` (``(*batch, VD, VD)``, float64), ``chol`` (the lower factor),
        ``D`` and ``Dt``.

        Raises
        ------
        NotPositiveDefiniteError
            ``lam <= -lambda_min(B)`` for some system of the batch.
        """
        if self._capacitance_cache is not None:
            return self._capacitance_cache
        xp = self.xp
        mats = self._capacitance_matrices()
        B = mats["B"]
        n_rank = B.shape[-1]
        lam = self.lam.astype(np.float64)[..., None, None]
        shifted = B + lam * xp.eye(n_rank, dtype=np.float64)
        try:
            chol = xp.linalg.cholesky(shifted)
            failed = not bool(xp.isfinite(chol).all())  # CuPy may return NaN instead of raising
        except np.linalg.LinAlgError:
            chol, failed = None, True
        if failed:
            theta = to_host(xp.linalg.eigvalsh(B)[..., 0])
            lam_h = to_host(self.lam).astype(np.float64)
            bad = np.argwhere(np.broadcast_to(lam_h + theta <= 0, self.batch_shape))
            if bad.size == 0:  # rounding at the boundary: treat as (numerically) singular
                bad = np.argwhere(np.broadcast_to(lam_h + theta <= lam_h * 1e-12, self.batch_shape))
            system = tuple(int(i) for i in bad[0]) if bad.size else ()
            lam_s = float(np.broadcast_to(lam_h, self.batch_shape)[system])
            bound = float(-np.broadcast_to(theta, self.batch_shape)[system])
            raise not_positive_definite(
                "VideoGCRF", value=lam_s, bound=bound, bound_name="-lambda_min(pairwise term)",
                system=system, reason=f"the smallest eigenvalue of M is {lam_s - bound:.6g}.  Increase lam or "
                "shrink the temporal embeddings (lam > -lambda_min(K) max_v ||T_v||_2^2 is sufficient)")
        self._capacitance_cache = dict(mats, chol=chol)
        return self._capacitance_cache

    def _solve_capacitance(self, rhs):
        """``(lam I + B)^{-1} rhs`` with the cached Cholesky factor; ``rhs`` ``(..., *batch, VD)``."""
        xp = self.xp
        chol = self._capacitance()["chol"]
        shape = rhs.shape
        # move extra right-hand sides into columns: (*batch, VD, n_rhs)
        extra = rhs.ndim - 1 - len(self.batch_shape)
        cols = xp.moveaxis(rhs.reshape((-1,) + rhs.shape[extra:]), 0, -1)
        if self._host_loops():
            from scipy.linalg import solve_triangular
            y = solve_triangular(chol, cols, lower=True, check_finite=False)
            y = solve_triangular(chol, y, lower=True, trans="T", check_finite=False)
        else:
            y = xp.linalg.solve(chol, cols)
            y = xp.linalg.solve(xp.swapaxes(chol, -1, -2), y)
        return xp.moveaxis(y, -1, 0).reshape(shape)

    def _embed(self, pf):
        """``U p``: per frame ``[S_v p_v; T_v p_v]``, shape ``(..., *batch, V, D)``."""
        y = self._project(self._S, pf)
        if self._capacitance()["Dt"]:
            y = self.xp.concatenate([y, self._project(self._T, pf)], axis=-1)
        return y

    def _apply_core(self, y):
        """``C y`` for ``y`` of shape ``(..., V, D)``: temporal rows become ``sum_v K[u, v] y_v``."""
        Ds = self.spatial_dim
        if y.shape[-1] == Ds:
            return y
        return self.xp.concatenate([y[..., :Ds], self._temporal_message(y[..., Ds:])], axis=-1)

    def _embed_adjoint(self, z):
        """``U^T z`` for ``z`` of shape ``(..., *batch, V, D)``, shape ``(..., *batch, V, n)``."""
        Ds = self.spatial_dim
        out = self._back_project(self._S, z[..., :Ds])
        if z.shape[-1] > Ds:
            out = out + self._back_project(self._T, z[..., Ds:])
        return out

    def solve_direct(self, b):
        """Exact solve ``x = M^{-1} b`` (see :meth:`_solve_direct_flat`); ``b`` of shape
        ``(..., *batch_shape, *vector_shape)`` or ``(..., *batch_shape, N)``, ``x`` of that shape.

        Raises :class:`NotPositiveDefiniteError` when ``M`` is not positive definite.
        """
        arr, flat = self.as_vectors(b, "b")
        check_finite(arr, "b")
        nv = len(self.vector_shape)
        x = self._solve_direct_flat(arr.reshape(arr.shape[: arr.ndim - nv] + (self.size,)))
        return self._restore(x.reshape(arr.shape), flat)

    def _solve_direct_flat(self, b):
        """Exact solve of ``M x = b`` through the capacitance matrix (factored once, cached).

        ``M^{-1} = I / lam - U^T H U / lam^2`` with ``H = C - (C R)(lam I + B)^{-1}(C R)^T``:
        with ``M = lam I + Y^T B Y`` (``U = R Y``, ``Y`` orthonormal rows),
        ``M^{-1} = I / lam + Y^T [(lam + B)^{-1} - I / lam] Y`` and
        ``(lam + B)^{-1} - I / lam = -(B - B (lam + B)^{-1} B) / lam^2``; ``Y^T B Y = U^T C U`` and
        ``Y^T B (lam + B)^{-1} B Y = U^T C R (lam + B)^{-1} R^T C U``.  No inverse of the Gram
        matrices is needed, so rank-deficient embeddings are fine.

        Parameters
        ----------
        b : array, shape ``(..., *batch_shape, N)``

        Returns
        -------
        array, shape of ``b``
        """
        xp = self.xp
        cap = self._capacitance()
        lead = b.shape[:-1]
        bf = b.reshape(lead + (self.n_frames, self.frame_size))
        y = self._embed(bf)                       # U b, (..., V, D)
        yflat = y.reshape(lead + (-1,)).astype(np.float64)
        CRt_y = (xp.swapaxes(cap["CR"], -1, -2) @ yflat[..., None])[..., 0]
        corr = (cap["CR"] @ self._solve_capacitance(CRt_y)[..., None])[..., 0]
        w = self._apply_core(y).astype(np.float64) - corr.reshape(y.shape)
        lam = self.lam.reshape(self.lam.shape + (1, 1))
        x = (bf - self._embed_adjoint(w.astype(self.dtype)) / lam) / lam
        return xp.ascontiguousarray(x.reshape(b.shape))

    def _prefer_direct(self, n_rhs: int) -> bool:
        """The ``"auto"`` cost model of the low-rank forms applied to the capacitance solve."""
        V, n = self.n_frames, self.frame_size
        D = self.spatial_dim + (self.temporal_dim if self.coupled else 0)
        factor_flops = 2.0 * V * D * D * n + 9.0 * V * D ** 3 + 2.0 * (V * D) ** 3
        return direct_is_cheaper(factor_flops=factor_flops, matvec_flops=4.0 * V * D * n,
                                 max_cg_iterations=V * D + 1, n_rhs=n_rhs,
                                 factored=self._capacitance_cache is not None)

    def factorize(self):
        """Compute (once) and return the cached capacitance factorisation used by ``"direct"``.

        Raises :class:`NotPositiveDefiniteError` when ``M`` is not positive definite.
        """
        return self._capacitance()

    def _break_even(self, n_rhs: int) -> float:
        """The capacitance solve's cost in products with ``M`` (see :func:`break_even_products`)."""
        V, n = self.n_frames, self.frame_size
        D = self.spatial_dim + (self.temporal_dim if self.coupled else 0)
        factor_flops = 2.0 * V * D * D * n + 9.0 * V * D ** 3 + 2.0 * (V * D) ** 3
        return break_even_products(factor_flops=factor_flops, matvec_flops=4.0 * V * D * n, n_rhs=n_rhs,
                                   dtype=self.dtype)

    def _solve(self, b, method, x0, options):
        """``"direct"``: the exact capacitance solve (``x0`` ignored) with iterative refinement:
        ``rtol``/``atol`` set the tolerance of the ``converged`` flag and of the automatic rounds
        ``x += M^{-1} (b - M x)`` on the true residual (float64 for a float32 operator; see
        :func:`gcrflinalg.results.refined_direct_solve`); ``refine=k`` runs exactly ``k`` rounds.
        ``"auto"``: CG, switched to the direct solve when its convergence rate says the
        factorisation is cheaper (:func:`gcrflinalg.forms.lowrank.operators.auto_solve`).
        Every other method runs the generic iterative solver on this operator."""
        if method == "auto":
            n_rhs = int(np.prod(b.shape[: b.ndim - len(self.batch_shape) - 1]))
            return auto_solve(self, b, x0, options, break_even=self._break_even(n_rhs),
                              factored=self._capacitance_cache is not None, direct=self._direct_solve)
        if method != "direct":
            return NotImplemented
        return self._direct_solve(b, options)

    def _direct_solve(self, b, options):
        rtol, atol, refine = direct_options(options, self.dtype, ignored=_ITERATIVE_ONLY_OPTIONS)
        t0 = time.perf_counter()
        self._capacitance()  # factors (once); raises when M is not positive definite
        if self.dtype == np.float64:
            def residual(x):
                return b - self.matvec(x)
        else:
            if getattr(self, "_twin64", None) is None:
                with borrowed_parameters():  # the float64 casts are private to the twin
                    self._twin64 = VideoGCRF(self.spatial.astype(np.float64), self.temporal.astype(np.float64),
                                             self.lam.astype(np.float64), self.neighbourhood,
                                             product=self.product)
            twin, b64 = self._twin64, b.astype(np.float64)

            def residual(x):
                return b64 - twin.matvec(x.astype(np.float64))
        return refined_direct_solve(self._solve_direct_flat, residual, b, rtol=rtol, atol=atol,
                                    refine=refine, xp=self.xp, t0=t0)
