"""Sparse grid G-CRFs: general ``L x L`` blocks (docs/design.md 3.1) and Potts weights (3.2).

Both operators act on score vectors of shape ``(*batch, L, H, W)`` (flat index
``n = l P + i W + j``), with pixel neighbourhoods 4, 8 or 12 (:mod:`gcrflinalg.neighbourhoods`).
Products are matrix-free (:mod:`gcrflinalg.forms.grid.kernels`: Numba on the CPU, sliced array code on
CuPy); ``to_sparse`` assembles the same matrix as CSR from a cached pattern
(:mod:`gcrflinalg.forms.grid.csr`).  Beyond the generic solvers the operators offer a multicolour
Gauss–Seidel sweep (pixel blocks are ``lam I``, so all pixels of one colour update exactly and at
once), ``method="direct"`` (sparse LU of the CSR matrix, reused by the adjoint solve), the Potts
``L + 1`` split for ``method="cg"`` and ``"auto"``, CG on the red-black reduced system for
``method="reduced_cg"`` and ``"auto"`` (general form, 4-neighbourhood:
:mod:`gcrflinalg.forms.grid.redblack`), and the positive-definiteness checks of docs/design.md
section 6.  ``"auto"`` on the 8- and 12-neighbourhood general form is plain CG (the fastest there,
``python -m studies.timing_auto``).
"""
from __future__ import annotations

import math
import weakref

import numpy as np

from ...backend import get_array_module, to_host
from ...neighbourhoods import neighbourhood_offsets
from ...operator import GCRFOperator
from ...results import not_positive_definite
from ..._validation import as_lam, as_parameter, check_finite, readonly
from . import kernels
from .csr import assemble_csr
from .kernels import (colour_masks, edge_ranges, pairwise_colour_sweep, pairwise_product, pairwise_product_columns,
                      pixel_major, potts_colour_sweep, weight_product)
from .redblack import red_black_blocks, red_black_cg
from .scan import give_back_blocks, scan_pairwise
from .solves import gershgorin_check, potts_split_solve, sparse_direct_solve

__all__ = ["GridGCRF", "GridPottsGCRF"]

#: Potts systems with at most this many pixels get the extreme eigenvalues of ``W`` from a dense
#: eigensolver; larger ones from Lanczos (``eigsh``).
DENSE_EIG_MAX_PIXELS = 1024


class SparseAssembled:
    """Views shared by the sparse forms, built on their ``to_sparse(index)`` CSR assembly."""

    def tocsr(self):
        """``to_sparse()`` of an unbatched operator (the name SciPy-style code looks for)."""
        return self.to_sparse(())

    def _to_dense(self):
        xp = self.xp
        mats = [self.to_sparse(idx).toarray() for idx in np.ndindex(*self.batch_shape)]
        if not mats:  # an empty batch
            return xp.zeros(self.batch_shape + self.shape, dtype=self.dtype)
        return xp.stack(mats).reshape(self.batch_shape + self.shape)


class _GridOperator(SparseAssembled, GCRFOperator):
    """Shared machinery of the grid forms: shapes, the batched product over extra axes, CSR,
    dense view, direct solves and the multicolour Gauss–Seidel sweep.

    Subclasses set ``_params`` (the parameter reshaped to ``(B, ...)``, C-contiguous, never
    written) and implement ``_accumulate_pairwise(v, out)`` on ``(E, B, L, H, W)`` arrays.
    """

    _potts = False
    #: computed from the parameters at construction (:meth:`GridGCRF._scan_parameters`)
    _DERIVED = ("_bound", "_rb_blocks", "_radii")

    def _setup_grid(self, *, xp, dtype, batch_shape, num_labels, height, width, neighbourhood, lam):
        self.offsets = neighbourhood_offsets(neighbourhood)
        self.neighbourhood = int(neighbourhood)
        param = "weights" if self._potts else "pairwise"
        for axis, size in (("L (labels)", num_labels), ("H (image height)", height), ("W (image width)", width)):
            if int(size) < 1:
                raise ValueError(f"{param}: the axis {axis} is empty; every image axis needs at least one "
                                 f"entry (batch axes may be empty)")
        self.num_labels, self.height, self.width = int(num_labels), int(height), int(width)
        lam_arr, lam_shape = as_lam(lam, tuple(batch_shape), dtype, xp)
        super().__init__(xp=xp, dtype=dtype, batch_shape=batch_shape,
                         vector_shape=(self.num_labels, self.height, self.width), lam=lam_arr,
                         lam_shape=lam_shape)
        self._n_systems = math.prod(self.batch_shape)
        self._lam_flat = xp.ascontiguousarray(lam_arr).reshape(self._n_systems)
        self._factors = {}

    # ------------------------------------------------------------------ products
    def matvec(self, v):
        """``M v = lam v + A v`` for every system of the batch (one structured product).

        Parameters
        ----------
        v : array, shape ``(..., *batch_shape, L, H, W)`` or ``(..., *batch_shape, N)``

        Returns
        -------
        array of the same shape as ``v``
        """
        arr, flat = self.as_vectors(v)
        return self._restore(self._product(arr), flat)

    __matmul__ = matvec

    def _matvec(self, v):
        return self._product(v)

    def _product(self, v):
        """``M v`` for ``v`` of shape ``(*extra, *batch_shape, L, H, W)``."""
        xp = self.xp
        shape = v.shape
        B, L, H, W = self._n_systems, self.num_labels, self.height, self.width
        if v.size == 0:  # an empty batch (or no vectors): nothing to multiply
            return xp.zeros(shape, dtype=self.dtype)
        vv = xp.ascontiguousarray(v.reshape((-1, B, L, H, W)))
        return self._shifted_product(vv).reshape(shape)

    def _shifted_product(self, vv):
        """``lam v + A v`` on a C-contiguous ``(E, B, L, H, W)`` array."""
        out = self._lam_flat.reshape(1, self._n_systems, 1, 1, 1) * vv
        self._accumulate_pairwise(vv, out)
        return out

    def pairwise_product(self, v):
        """``A v`` (the pairwise part only, no ``lam`` term); ``v`` shaped as for :meth:`matvec`."""
        arr, flat = self.as_vectors(v)
        xp = self.xp
        vv = xp.ascontiguousarray(arr.reshape((-1, self._n_systems) + self.vector_shape))
        out = xp.zeros_like(vv)
        self._accumulate_pairwise(vv, out)
        return self._restore(out.reshape(arr.shape), flat)

    # ------------------------------------------------------------------ views
    def _check_index(self, index):
        index = tuple(np.atleast_1d(index)) if not isinstance(index, tuple) else index
        if len(index) != len(self.batch_shape):
            raise ValueError(f"index must have {len(self.batch_shape)} entries for batch_shape "
                             f"{self.batch_shape}; got {index}")
        return tuple(int(i) for i in index)

    def _flat_index(self, index) -> int:
        return int(np.ravel_multi_index(index, self.batch_shape)) if index else 0

    def to_sparse(self, index=()):
        """``M`` of one system as a CSR matrix (SciPy, or ``cupyx.scipy.sparse`` on the GPU).

        The index pattern is cached per ``(H, W, L, neighbourhood)``: a new system of a seen size
        only writes values.

        Parameters
        ----------
        index : tuple of int
            Batch index of the system; ``()`` for an unbatched operator.

        Returns
        -------
        csr_matrix, shape ``(N, N)``
        """
        index = self._check_index(index)
        b = self._flat_index(index)
        return assemble_csr(self.xp, self._params[b], self._lam_flat[b], self.height, self.width,
                            self.num_labels, self.neighbourhood, self._potts)

    # ------------------------------------------------------------------ solver hooks
    def colour_classes(self):
        """Boolean ``(C, N)``: the unknowns of colour ``c``, no two of which are coupled.

        The pixel colouring of the multicolour sweeps (red-black on 4-neighbourhoods), every label
        of a pixel in its pixel's colour (the pixel blocks are ``lam I``).  Lets
        :func:`solvers.ssor_preconditioner` sweep matrix-free.
        """
        masks = colour_masks(self.neighbourhood, self.height, self.width)  # (C, H, W)
        C = masks.shape[0]
        full = np.broadcast_to(masks[:, None], (C, self.num_labels, self.height, self.width))
        return self.xp.asarray(np.ascontiguousarray(full).reshape(C, -1))

    def _gauss_seidel_sweep(self, x, b, omega):
        # Multicolour sweep on one batch-shaped x (copied: the caller's array is kept).
        xp = self.xp
        shape = x.shape
        B = self._n_systems
        xs = xp.array(x.reshape((B,) + self.vector_shape), copy=True, order="C")
        bs = xp.ascontiguousarray(b.reshape((B,) + self.vector_shape))
        xs = self._colour_sweep(xs, bs, omega)
        return xs.reshape(shape)

    def _solve(self, b, method, x0, options):
        if method == "direct":
            return self._direct_solve(b, options)
        return NotImplemented

    def _direct_solve(self, b, options):
        return sparse_direct_solve(self, b, options)

    # ------------------------------------------------------------------ positive definiteness
    def gershgorin_bound(self):
        """Largest Gershgorin radius of ``A`` per system, ``max_r sum_{c != r} |A_rc|``.

        ``lam`` above it proves ``M`` positive definite.  Returns an array of ``batch_shape``.
        """
        if getattr(self, "_bound", None) is not None:  # from the construction's read of the parameters
            self._sync_parameters()
            return self._bound.reshape(self.batch_shape)
        R = self._gershgorin_radii()
        return R.reshape(self.batch_shape + (-1,)).max(axis=-1)

    def _parameters_changed(self):
        super()._parameters_changed()
        self._factors.clear()

    def check_positive_definite(self, exact: bool = False) -> bool:
        """Check ``M = lam I + A`` for positive definiteness (docs/design.md section 6).

        ``lam`` above the Gershgorin bound (:meth:`gershgorin_bound`, about one product's work)
        certifies it.  Otherwise, by default, nothing more runs: the solve goes ahead and CG's
        curvature test guards it.  With ``exact=True`` such systems get a matrix-free Lanczos
        estimate of ``lambda_min(M)`` (:func:`gcrflinalg.forms.grid.solves.lanczos_lambda_min`:
        products with ``M`` through :meth:`aslinearoperator`, relative tolerance ``1e-6``, at most
        about 2000 products, typically 60-300); an estimate ``<= 0`` proves ``M`` indefinite.

        Returns
        -------
        bool
            True when every system is certified positive definite; False when some system was
            left undecided (by default) or only estimated (``exact=True``).

        Raises
        ------
        NotPositiveDefiniteError
            ``exact=True`` and Lanczos proved a system indefinite: names ``lam`` and
            ``-lambda_min(A) >= lam - estimate``.
        """
        return gershgorin_check(self, exact=exact)


def _release_blocks(blocks, image):
    # besides the references give_back_blocks counts: this frame, the finalizer's arguments and the
    # dying operator's own attribute (weakref callbacks run before its attributes are cleared)
    give_back_blocks(blocks, image, holders=2)


class GridGCRF(_GridOperator):
    """Sparse grid G-CRF with general ``L x L`` pairwise blocks (docs/design.md 3.1).

    ``M = lam I + A`` with, for every in-image edge ``k`` joining ``p = (i, j)`` and
    ``q = (i + di_k, j + dj_k)``, ``A[(m, p), (n, q)] = A[(n, q), (m, p)] = pairwise[k, m, n, i, j]``.

    Parameters
    ----------
    pairwise : array, shape ``(*batch, K, L, L, H, W)``
        Pairwise blocks; ``K`` = 2, 4, 6 for the 4, 8, 12 neighbourhoods.  Entries of edges leaving
        the image are ignored.  Float32 or float64 (other reals become float64).  Never modified.  Results describe the parameters as they are at the call (docs/guarantees.md):
        a writeable NumPy input is viewed, not copied, and re-checked by every solve (cached factors
        are rebuilt when it changed); the public attribute is a read-only view.  A viewed array is
        first read (NaN/Inf check, fingerprint, Gershgorin radii, red-black blocks) by the first
        product, solve or other use, not by the construction; any other input at construction.
    lam : float or array of shape ``batch``
        Diagonal shift, ``> 0``.
    neighbourhood : {4, 8, 12}

    Raises
    ------
    ValueError
        NaN or Inf in ``pairwise``: at construction, or for a viewed array at its first read.

    Attributes
    ----------
    pairwise : a read-only view of the parameter (of the caller's array when it was writeable NumPy)
    num_labels, height, width, neighbourhood, offsets
    """

    #: the pixel-major copy of the blocks that the column products read (:meth:`matvec_columns`)
    _CACHED = ("_pixel_blocks",)

    def __init__(self, pairwise, lam, neighbourhood=4):
        offsets = neighbourhood_offsets(neighbourhood)
        pw, watched, _ = as_parameter(pairwise, "pairwise", min_ndim=5, view=True, check=False)
        K, L1, L2, H, W = pw.shape[-5:]
        if K != len(offsets) or L1 != L2:
            raise ValueError(
                f"pairwise must have shape (..., K, L, L, H, W) with K = {len(offsets)} for the "
                f"{int(neighbourhood)}-neighbourhood; got {tuple(pw.shape)}")
        xp = get_array_module(pw)
        self.pairwise = readonly(pw)
        self._setup_grid(xp=xp, dtype=pw.dtype, batch_shape=pw.shape[:-5], num_labels=L1, height=H,
                         width=W, neighbourhood=neighbourhood, lam=lam)
        self._blocks_flat = xp.ascontiguousarray(pw.reshape((self._n_systems, K, L1, L1, H, W)))
        self._rb_blocks = None
        self._bound = self._radii = None
        self._scan_pending = False
        if watched and getattr(self, "_eager_layout", True) and kernels._use_numba(self._blocks_flat):
            # viewed: the first read of the parameters (a product, a solve, ...) scans them, so that
            # a first solve reads them once, not once here and once more to see whether they changed
            self._scan_pending = True
            self._watch("pairwise", pw, None, lazy=True)
            return
        fingerprint = self._scan_parameters(fingerprint=watched)
        if watched:
            self._watch("pairwise", pw, fingerprint)

    @property
    def _params(self):
        """The pairwise blocks ``(B, K, L, L, H, W)``; the deferred scan of a viewed array runs on
        first access (:meth:`_scan_now`)."""
        if self._scan_pending:
            self._scan_now()
        return self._blocks_flat

    def _scan_now(self):
        """The scan deferred from the construction (:meth:`_scan_parameters`): NaN/Inf raise here,
        and its fingerprint is the one later solves compare against."""
        self._scan_pending = False
        try:
            fingerprint = self._scan_parameters()
        except BaseException:
            self._scan_pending = True  # raised again by the next read
            raise
        for entry in self._watched:
            if entry[0] == "pairwise":
                entry[2] = int(fingerprint)

    def _sync_parameters(self):
        if self._scan_pending:  # nothing derived yet: the scan reads the values as they are now
            self._scan_now()
            return False
        return super()._sync_parameters()

    def _scan_parameters(self, fingerprint=True):
        """Check ``pairwise`` for NaN/Inf, and on NumPy compute in the same read its fingerprint
        (unless ``fingerprint`` is False: a copied or read-only array, never re-read),
        the Gershgorin bound per system (:meth:`gershgorin_bound`) and, on the 4-neighbourhood,
        the red-black blocks of ``method="reduced_cg"`` (:func:`gcrflinalg.forms.grid.scan.scan_pairwise`).
        Returns the fingerprint (None off NumPy or without one)."""
        if not kernels._use_numba(self._params):
            check_finite(self._params, "pairwise")
            return None
        eager = self.neighbourhood == 4 and getattr(self, "_eager_layout", True)
        finite, fingerprint, bound, blocks, radii = scan_pairwise(self._params, self.offsets,
                                                                  build_blocks=eager, fingerprint=fingerprint)
        if not finite:
            raise ValueError("pairwise contains NaN or Inf")
        self._bound, self._rb_blocks, self._radii = bound, blocks, radii
        if blocks is not None:  # back to the pool when the operator is gone, unless still referenced
            self._blocks_finalizer = weakref.finalize(self, _release_blocks, blocks, (self.height, self.width))
            self._blocks_finalizer.atexit = False
        return fingerprint

    def _parameters_changed(self):
        super()._parameters_changed()
        finalizer = getattr(self, "_blocks_finalizer", None)
        if finalizer is not None:
            finalizer.detach()  # the old blocks may still be held by a caller: not pooled
        self._rb_blocks = None
        self._bound = self._radii = None
        self._scan_parameters(fingerprint=False)  # the sync that saw the change took the new one

    def _accumulate_pairwise(self, v, out):
        pairwise_product(self._params, v, out, self.offsets)

    def _shifted_product(self, vv):
        # lam v written by the product kernel itself (no separate pass over the vectors)
        if vv.dtype != self.dtype:
            return super()._shifted_product(vv)
        out = self.xp.empty_like(vv)
        return pairwise_product(self._params, vv, out, self.offsets, lam=self._lam_flat)

    def matvec_columns(self, V, *, quadratic=False):
        """``M V`` for a block of vectors stored as columns, ``V`` of shape ``(*batch_shape, N, E)``
        (``E`` vectors per system as the last axis, like ``A @ V`` for a matrix ``A``).

        Each stored block entry is read once for all ``E`` columns (contiguous in memory): the
        flops of ``E`` products at about the memory traffic of one.  :meth:`matvec` takes vectors as
        leading axes instead.

        Parameters
        ----------
        V : array, shape ``(*batch_shape, N, E)``
        quadratic : bool
            Also return the quadratic forms ``v_e^T M v_e`` of the columns, shape
            ``(*batch_shape, E)`` (float64), accumulated during the product.

        Returns
        -------
        array, shape ``(*batch_shape, N, E)``, the operator's dtype
            (and the quadratic forms with ``quadratic=True``)
        """
        xp = self.xp
        V = xp.asarray(V)
        if V.ndim != len(self.batch_shape) + 2 or V.shape[:-1] != self.batch_shape + (self.size,):
            raise ValueError(f"V must have shape (*{self.batch_shape}, {self.size}, E); got {tuple(V.shape)}")
        self._sync_parameters()  # the pixel-major copy below describes the values as they are now
        E = V.shape[-1]
        vv = xp.ascontiguousarray(V.astype(self.dtype, copy=False)).reshape(
            (self._n_systems,) + self.vector_shape + (E,))
        out = xp.empty_like(vv)
        if xp is np and getattr(self, "_pixel_blocks", None) is None:
            self._pixel_blocks = pixel_major(self._params)  # cached; dropped when watched values change
        dots = xp.empty((self._n_systems, E), dtype=np.float64) if quadratic else None
        pairwise_product_columns(self._params, vv, out, self.offsets, self._lam_flat,
                                 pixel_blocks=getattr(self, "_pixel_blocks", None), dots=dots)
        if quadratic:
            return out.reshape(V.shape), dots.reshape(self.batch_shape + (E,))
        return out.reshape(V.shape)

    def _lanczos_columns(self, W, Q, Qp, sq, cq, cpc, threads=None):
        """One fused Lanczos pass on ``E`` columns (unbatched, float64, NumPy): ``x = sq W - cq Q -
        cpc Qp`` per column is written over ``Qp`` and ``W`` is overwritten by ``M x``; returns
        ``(x . M x, ||x||^2)``, each of shape ``(E,)``.  ``W, Q, Qp``: ``(N, E)`` C-contiguous.
        ``threads``: the kernel's thread count (default: :mod:`gcrflinalg.threads`); the result
        does not depend on it."""
        from .kernels import lanczos_columns

        self._sync_parameters()
        if getattr(self, "_pixel_blocks", None) is None:
            self._pixel_blocks = pixel_major(self._params)
        H, W_ = self.vector_shape[1:]
        L, E = self.vector_shape[0], W.shape[-1]
        shape = (1, L, H * W_, E)
        dots, beta2 = lanczos_columns(self._pixel_blocks, W.reshape(shape), Q.reshape(shape), Qp.reshape(shape),
                                      self.offsets, self._lam_flat, H, W_, sq, cq, cpc, threads=threads)
        return dots[0], beta2[0]

    def _colour_sweep(self, x, b, omega):
        return pairwise_colour_sweep(self._params, x, b, self._lam_flat, self.offsets,
                                     self.neighbourhood, omega)

    # ------------------------------------------------------------------ red-black reduction
    def red_black_layout(self):
        """The colour-ordered blocks of the red-black reduction used by ``method="reduced_cg"``.

        On NumPy built at construction, in the same read of ``pairwise`` as the finiteness check and
        the Gershgorin bound (:func:`gcrflinalg.forms.grid.scan.scan_pairwise`); elsewhere built on
        first use.  Cached (as many bytes as ``pairwise``) and rebuilt when a watched ``pairwise``
        changed.  4-neighbourhood only.

        Returns
        -------
        array, shape ``(B, 2, 4, L, L, F)``
            ``B`` systems, two colour classes, four neighbour directions and ``F`` slots per class
            (:func:`gcrflinalg.forms.grid.redblack.red_black_blocks`); opaque to callers.
        """
        if self.neighbourhood != 4:
            raise ValueError("the red-black layout needs neighbourhood=4; "
                             f"this operator has neighbourhood={self.neighbourhood}")
        self._sync_parameters()
        if getattr(self, "_rb_blocks", None) is None:
            self._rb_blocks = red_black_blocks(self._params)
        return self._rb_blocks

    def _solve(self, b, method, x0, options):
        if method == "auto" and self.neighbourhood == 4 and not ({"M", "restart", "omega"} & set(options)):
            method = "reduced_cg"
        if method == "reduced_cg":
            if self.neighbourhood != 4:
                raise ValueError("method='reduced_cg' needs a 2-colourable grid: neighbourhood=4 "
                                 f"(this operator has neighbourhood={self.neighbourhood}); use 'cg'")
            return red_black_cg(self, b, x0, options)
        return super()._solve(b, method, x0, options)

    def _parameter_gradients(self, x, g):
        """``dL/dpairwise[k, :, :, i, j] = -(g_p x_q^T + x_p g_q^T)`` on in-image edges, 0 elsewhere
        (docs/design.md section 5)."""
        xp = self.xp
        grad = xp.zeros(self.pairwise.shape, dtype=self.dtype)
        for k, (di, dj) in enumerate(self.offsets):
            pi, pj, qi, qj = edge_ranges(di, dj, self.height, self.width)
            gp, xq = g[..., :, None, pi, pj], x[..., None, :, qi, qj]
            xp_, gq = x[..., :, None, pi, pj], g[..., None, :, qi, qj]
            grad[..., k, :, :, pi, pj] = -(gp * xq + xp_ * gq)
        return {"pairwise": grad}

    @classmethod
    def _level(cls, pairwise, lam, neighbourhood=4):
        """An operator used as a part of a larger one (a multi-resolution level): its solves are not
        run, so no red-black layout is built up front."""
        op = cls.__new__(cls)
        op._eager_layout = False
        op.__init__(pairwise, lam, neighbourhood)
        return op

    def _gershgorin_radii(self):
        """Gershgorin radii per row, ``(B, L, H, W)``: on NumPy from the construction's read of the
        parameters (:meth:`_scan_parameters`), else computed."""
        if getattr(self, "_radii", None) is not None:
            self._sync_parameters()
            return self._radii
        return self._gershgorin_radii_xp()

    def _gershgorin_radii_xp(self):
        # R[m, p] = sum over edges at p of sum_n |pairwise[k, m, n, p]| (p as the edge's first end)
        #         + sum over edges into p of sum_m' |pairwise[k, m', m, p - d]| (p as its second end)
        xp = self.xp
        absw = xp.abs(self._params)
        R = xp.zeros((self._n_systems,) + self.vector_shape, dtype=self.dtype)
        for k, (di, dj) in enumerate(self.offsets):
            pi, pj, qi, qj = edge_ranges(di, dj, self.height, self.width)
            blk = absw[:, k, :, :, pi, pj]
            R[:, :, pi, pj] += blk.sum(axis=2)
            R[:, :, qi, qj] += blk.sum(axis=1)
        return R


class GridPottsGCRF(_GridOperator):
    """Sparse grid G-CRF with Potts pairwise terms (docs/design.md 3.2).

    ``A[(m, p), (n, q)] = weights[k, i, j]`` for ``m != n`` and ``0`` for ``m == n``; with ``W`` the
    symmetric ``P x P`` edge-weight matrix, ``M = I_L (x) (lam I - W) + 1 1^T (x) W``.

    The product uses the shared structure, ``(M v)_l = lam v_l + W (s - v_l)`` with
    ``s = sum_l v_l`` (one pass over the weights for all labels); ``method="potts_split"`` and
    ``"auto"`` solve the ``L + 1`` systems of size ``P`` of the split (``"auto"`` with a ``callback``
    or ``M`` runs plain CG on ``M`` instead; ``"cg"`` is always plain CG on ``M``)

        ``(lam I + (L-1) W) s = sum_l b_l``,   ``(lam I - W) x_l = b_l - W s``.

    Parameters
    ----------
    weights : array, shape ``(*batch, K, H, W)``
        Edge weights; entries of edges leaving the image are ignored.  Never modified.  Results describe the parameters as they are at the call (docs/guarantees.md):
        a writeable NumPy input is viewed, not copied, and re-checked by every solve (cached factors
        are rebuilt when it changed); the public attribute is a read-only view.
    lam : float or array of shape ``batch``
        Diagonal shift; ``M`` is positive definite iff ``lam > lambda_max(W)`` and
        ``lam > -(L-1) lambda_min(W)`` (:meth:`check_positive_definite`).
    num_labels : int
        ``L >= 1``.
    neighbourhood : {4, 8, 12}
    """

    _potts = True

    def __init__(self, weights, lam, num_labels, neighbourhood=4):
        offsets = neighbourhood_offsets(neighbourhood)
        wt, watched, fingerprint = as_parameter(weights, "weights", min_ndim=3, view=True)
        K, H, W = wt.shape[-3:]
        if K != len(offsets):
            raise ValueError(
                f"weights must have shape (..., K, H, W) with K = {len(offsets)} for the "
                f"{int(neighbourhood)}-neighbourhood; got {tuple(wt.shape)}")
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
            raise ValueError(f"num_labels must be an integer >= 1; got {num_labels!r}")
        xp = get_array_module(wt)
        self.weights = readonly(wt)
        self._setup_grid(xp=xp, dtype=wt.dtype, batch_shape=wt.shape[:-3], num_labels=int(num_labels),
                         height=H, width=W, neighbourhood=neighbourhood, lam=lam)
        self._params = xp.ascontiguousarray(wt.reshape((self._n_systems, K, H, W)))
        if watched:
            self._watch("weights", wt, fingerprint)

    def _accumulate_pairwise(self, v, out):
        # (A v)_l = W (s - v_l), s = sum_l v_l: every weight read once for all labels.
        t = v.sum(axis=2, keepdims=True) - v
        weight_product(self._params, t, out, self.offsets)

    def _weight_matvec(self, x):
        """``W x`` on stacks of pixel vectors ``x`` of shape ``(E, B, R, H, W)`` (C-contiguous),
        ``B`` the number of systems."""
        out = self.xp.zeros_like(x)
        weight_product(self._params, x, out, self.offsets)
        return out

    def _colour_sweep(self, x, b, omega):
        return potts_colour_sweep(self._params, x, b, self._lam_flat, self.offsets,
                                  self.neighbourhood, omega)

    def _parameter_gradients(self, x, g):
        """``dL/dweights[k, i, j] = -[G_p X_q - g_p.x_q + G_q X_p - g_q.x_p]`` with label sums
        ``G = sum_l g_l``, ``X = sum_l x_l`` (docs/design.md section 5); 0 on edges leaving the image."""
        xp = self.xp
        G, X = g.sum(axis=-3), x.sum(axis=-3)
        grad = xp.zeros(self.weights.shape, dtype=self.dtype)
        for k, (di, dj) in enumerate(self.offsets):
            pi, pj, qi, qj = edge_ranges(di, dj, self.height, self.width)
            cross_pq = (g[..., pi, pj] * x[..., qi, qj]).sum(axis=-3)
            cross_qp = (g[..., qi, qj] * x[..., pi, pj]).sum(axis=-3)
            grad[..., k, pi, pj] = -(G[..., pi, pj] * X[..., qi, qj] - cross_pq
                                     + G[..., qi, qj] * X[..., pi, pj] - cross_qp)
        return {"weights": grad}

    def _gershgorin_radii(self):
        # Row (m, p) of A holds w_pq for every neighbour q and every label n != m: (L-1) |W| 1.
        xp = self.xp
        ones = xp.ones((1, self._n_systems, 1, self.height, self.width), dtype=self.dtype)
        r = xp.zeros_like(ones)
        weight_product(xp.abs(self._params), ones, r, self.offsets)
        return xp.broadcast_to(r[0] * (self.num_labels - 1), (self._n_systems,) + self.vector_shape)

    # ------------------------------------------------------------------ positive definiteness
    def weight_matrix(self, index=()):
        """The ``P x P`` edge-weight matrix ``W`` of one system as CSR (zero diagonal stored)."""
        index = self._check_index(index)
        b = self._flat_index(index)
        zero = self.xp.zeros((), dtype=self.dtype)
        return assemble_csr(self.xp, self._params[b], zero, self.height, self.width, 1,
                            self.neighbourhood, False)

    def weight_extreme_eigenvalues(self, index=()):
        """``(lambda_min(W), lambda_max(W))`` of one system.

        Dense ``eigvalsh`` for at most :data:`DENSE_EIG_MAX_PIXELS` pixels; otherwise Lanczos
        (``eigsh``, ``which="SA"``/``"LA"``, tolerance ``1e-8`` relative), whose Ritz values lie
        inside ``[lambda_min, lambda_max]`` and converge to them from within.
        """
        Wm = self.weight_matrix(index)
        P = Wm.shape[0]
        xp = self.xp
        if P == 1:
            return 0.0, 0.0
        if P <= DENSE_EIG_MAX_PIXELS:
            ev = to_host(xp.linalg.eigvalsh(Wm.toarray().astype(np.float64)))
            return float(ev[0]), float(ev[-1])
        if xp is np:
            from scipy.sparse.linalg import eigsh
        else:
            from cupyx.scipy.sparse.linalg import eigsh
        Wm = Wm.astype(np.float64)
        lo = float(to_host(eigsh(Wm, k=1, which="SA", tol=1e-8, return_eigenvectors=False))[0])
        hi = float(to_host(eigsh(Wm, k=1, which="LA", tol=1e-8, return_eigenvectors=False))[0])
        return lo, hi

    def check_positive_definite(self, exact: bool = False) -> bool:
        """Check the condition ``lam > lambda_max(W)`` and ``lam > -(L-1) lambda_min(W)``
        (docs/design.md section 6) for every system.

        The Gershgorin radius ``r = max_p sum_q |w_pq|`` (one pass over the weights) certifies a
        system when ``lam > max(1, L-1) r``.  Otherwise, by default, nothing more runs: the split's
        CG runs on exactly ``lam I + (L-1) W`` and ``lam I - W``, whose definiteness is the
        condition, and its curvature test guards the solve.  With ``exact=True`` such systems get
        the extreme eigenvalues of ``W`` (:meth:`weight_extreme_eigenvalues`: dense for at most
        :data:`DENSE_EIG_MAX_PIXELS` pixels, Lanczos on ``W`` otherwise) and the exact test.

        Returns
        -------
        bool
            True when every system is certified positive definite (by Gershgorin, or exactly with
            ``exact=True``); False when some system was left to CG.

        Raises
        ------
        NotPositiveDefiniteError
            ``exact=True`` and a violated condition: names ``lam`` and the violated bound.
        """
        L = self.num_labels
        if L == 1:  # M = lam I
            return True
        xp = self.xp
        ones = xp.ones((1, self._n_systems, 1, self.height, self.width), dtype=self.dtype)
        r = xp.zeros_like(ones)
        weight_product(xp.abs(self._params), ones, r, self.offsets)
        radius = to_host(r.reshape(self._n_systems, -1).max(axis=1))
        lam = to_host(self._lam_flat)
        undecided = np.nonzero(lam <= max(L - 1, 1) * radius)[0]
        if not exact:
            return undecided.size == 0
        for b in undecided:
            idx = tuple(int(i) for i in np.unravel_index(int(b), self.batch_shape)) if self.batch_shape else ()
            lo, hi = self.weight_extreme_eigenvalues(idx)
            bound = max(hi, -(L - 1) * lo)
            if lam[b] <= bound:
                which = (f"lambda_max(W) = {hi:.6g}" if hi >= -(L - 1) * lo
                         else f"-(L-1) lambda_min(W) = -{L - 1} * ({lo:.6g}) = {-(L - 1) * lo:.6g}")
                raise not_positive_definite(
                    "GridPottsGCRF", value=float(lam[b]), bound=bound, system=idx,
                    bound_name="max(lambda_max(W), -(L-1) lambda_min(W))", reason=f"set by {which}")
        return True

    # ------------------------------------------------------------------ the L + 1 split
    def _solve(self, b, method, x0, options):
        # (one label: M = lam I, and the split's label system lam I - W, which need not be
        # definite, does not describe M; the generic CG solves it in one step)
        per_iterate = {"callback", "M"} & set(options)
        if method == "potts_split":
            if per_iterate:
                raise TypeError(f"method='potts_split' takes no {sorted(per_iterate)}: the split solves "
                                "systems of size P, not M; use method='cg' for CG on M")
            if self.num_labels == 1:  # M = lam I: the split's label system does not describe M
                from ...solve import _generic_solve

                return _generic_solve(self, b, "cg", x0, options)
            return potts_split_solve(self, b, x0, options)
        if method == "auto" and self.num_labels > 1 and not per_iterate:
            return potts_split_solve(self, b, x0, options)
        return super()._solve(b, method, x0, options)


