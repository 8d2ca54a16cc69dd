"""Multi-resolution grid G-CRFs (docs/design.md 3.3): a pyramid of grid forms coupled child-to-parent.

Level ``s = 0 .. S-1`` (level 0 finest) is a grid G-CRF (general blocks or Potts) on its own
``H_s x W_s`` image.  Fine pixel ``p = (i, j)`` of level ``s`` and its parent
``(floor(i H_{s+1} / H_s), floor(j W_{s+1} / W_s))`` of level ``s + 1`` are joined by an ``L x L``
block ``cross[s][m, n, i, j]`` (general coupling) or by ``cross[s][i, j]`` for every ``m != n``
(Potts coupling), entered symmetrically.  The unknown vector is the concatenation of the levels'
flat ``(L, H_s, W_s)`` vectors, level 0 first: ``vector_shape = (N,)``, ``N = L sum_s H_s W_s``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from ..backend import sparse_module, to_host
from ..operator import GCRFOperator
from .._validation import as_parameter, check_finite, readonly
from .grid import kernels as grid_kernels
from .grid.operators import GridGCRF, GridPottsGCRF, SparseAssembled
from .grid.scan import scan_blocks
from .grid.solves import gershgorin_check, sparse_direct_solve
from .registry import ParameterLayout

__all__ = ["MultiResGCRF", "GeneralLevel", "PottsLevel", "layer_layout"]


@dataclasses.dataclass(frozen=True)
class GeneralLevel:
    """One level with general blocks: ``pairwise`` of shape ``(*batch, K, L, L, H, W)`` (3.1)."""

    pairwise: Any
    neighbourhood: int = 4


@dataclasses.dataclass(frozen=True)
class PottsLevel:
    """One level with Potts weights: ``weights`` of shape ``(*batch, K, H, W)`` (3.2)."""

    weights: Any
    neighbourhood: int = 4


_FORMS = ("general", "potts")


class MultiResGCRF(SparseAssembled, GCRFOperator):
    """Multi-resolution grid G-CRF ``M = lam I + A`` (docs/design.md 3.3).

    Parameters
    ----------
    levels : sequence of :class:`GeneralLevel` / :class:`PottsLevel`
        The ``S >= 1`` levels, finest first; all share the batch shape and ``L``.
    cross : sequence of ``S - 1`` arrays
        ``cross[s]`` couples level ``s`` to level ``s + 1``: shape ``(*batch, L, L, H_s, W_s)`` for
        a general coupling (block ``cross[s][:, :, i, j]`` at rows of fine pixel ``(i, j)``, columns
        of its parent) or ``(*batch, H_s, W_s)`` for a Potts coupling.  Never modified.  Results describe the parameters as they are at the call (docs/guarantees.md):
        a writeable NumPy input is viewed, not copied, and re-checked by every solve (cached factors
        are rebuilt when it changed); the public attribute is a read-only view.
    lam : float or array of shape ``batch``
        Diagonal shift, ``> 0``.
    num_labels : int, optional
        ``L``; required when every level is Potts, checked otherwise.
    cross_forms : "general", "potts" or a sequence of them, optional
        Form of each coupling; default: the form of its finer level.

    Attributes
    ----------
    level_operators : list of GridGCRF / GridPottsGCRF
        The levels as grid operators (sharing ``lam``).
    level_shapes : list of ``(L, H_s, W_s)``
    level_slices : list of slices of the flat vector
    parents : list of ``(rows, cols)`` integer arrays, the parent of every fine row / column
    """

    def __init__(self, levels: Sequence, cross: Sequence, lam, *, num_labels=None, cross_forms=None):
        levels = list(levels)
        cross = list(cross)
        if not levels:
            raise ValueError("levels must hold at least one GeneralLevel or PottsLevel")
        if len(cross) != len(levels) - 1:
            raise ValueError(f"cross must hold len(levels) - 1 = {len(levels) - 1} couplings; got {len(cross)}")
        L = self._infer_labels(levels, num_labels)
        ops = []
        for s, level in enumerate(levels):
            if isinstance(level, GeneralLevel):
                try:
                    op = GridGCRF._level(level.pairwise, lam, level.neighbourhood)
                except ValueError as err:
                    raise ValueError(f"levels[{s}]: {err}") from None
                if op.num_labels != L:
                    raise ValueError(f"levels[{s}] has {op.num_labels} labels; the other levels have {L}")
            else:
                try:
                    op = GridPottsGCRF(level.weights, lam, L, level.neighbourhood)
                except ValueError as err:
                    raise ValueError(f"levels[{s}]: {err}") from None
            ops.append(op)
        xp, dtype, batch = ops[0].xp, np.result_type(*[o.dtype for o in ops]), ops[0].batch_shape
        for s, op in enumerate(ops):
            if op.batch_shape != batch:
                raise ValueError(f"levels[{s}] has batch shape {op.batch_shape}; levels[0] has {batch}")
            if op.xp is not xp:
                raise TypeError(f"levels[{s}] lives on another device than levels[0]")
        if any(o.dtype != dtype for o in ops):  # mixed precision: compute in the widest
            ops = [_rebuild(o, dtype, lam) for o in ops]
        if cross_forms is None:
            cross_forms = ["general" if isinstance(levels[s], GeneralLevel) else "potts"
                           for s in range(len(cross))]
        elif isinstance(cross_forms, str):
            cross_forms = [cross_forms] * len(cross)
        cross_forms = list(cross_forms)
        if len(cross_forms) != len(cross) or any(f not in _FORMS for f in cross_forms):
            raise ValueError(f"cross_forms must be 'general', 'potts' or {len(cross)} of them; got {cross_forms!r}")
        self.cross_forms = cross_forms
        self.cross = []
        self._cross_sums = []  # per coupling: (sum_n |C_mn|, sum_m |C_mn|) from the construction's read, or None
        cross_watched = []
        for s, (c, form) in enumerate(zip(cross, cross_forms)):
            H, W = ops[s].height, ops[s].width
            tail = (L, L, H, W) if form == "general" else (H, W)
            arr, watched, fp = as_parameter(c, f"cross[{s}]", min_ndim=len(tail), xp=xp, view=True,
                                            check=False)
            if tuple(arr.shape) != batch + tail:
                raise ValueError(f"cross[{s}] ({form} coupling of levels {s} and {s + 1}) must have shape "
                                 f"{batch + tail}; got {tuple(arr.shape)}")
            fp, sums = _scan_cross(arr, f"cross[{s}]", form, dtype)
            if watched and arr.dtype == dtype:
                cross_watched.append((f"cross[{s}]", arr, fp))
            self._cross_sums.append(sums)
            self.cross.append(readonly(arr.astype(dtype, copy=False)))
        self.level_operators = ops
        self.num_labels = L
        self.level_shapes = [o.vector_shape for o in ops]
        sizes = [o.size for o in ops]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.level_slices = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self.parents = []
        self._aggregators = []
        for s in range(len(ops) - 1):
            (Hf, Wf), (Hc, Wc) = (ops[s].height, ops[s].width), (ops[s + 1].height, ops[s + 1].width)
            rows = (np.arange(Hf) * Hc) // Hf
            cols = (np.arange(Wf) * Wc) // Wf
            self.parents.append((xp.asarray(rows), xp.asarray(cols)))
            # 0/1 matrices summing children into parents: out_c = R_rows @ t @ R_cols^T
            r_rows = np.zeros((Hc, Hf), dtype=dtype)
            r_rows[rows, np.arange(Hf)] = 1
            r_cols = np.zeros((Wc, Wf), dtype=dtype)
            r_cols[cols, np.arange(Wf)] = 1
            self._aggregators.append((xp.asarray(r_rows), xp.asarray(r_cols.T.copy())))
        super().__init__(xp=xp, dtype=dtype, batch_shape=batch, vector_shape=(int(starts[-1]),),
                         lam=ops[0].lam, lam_shape=ops[0]._lam_shape)
        self._n_systems = math.prod(batch)
        for o in ops:  # the levels' viewed writeable parameters: a solve re-checks them here
            self._watched.extend(o._watched)
        for name, arr, fp in cross_watched:
            self._watch(name, arr, fp)

    @staticmethod
    def _infer_labels(levels, num_labels):
        L = None
        for s, level in enumerate(levels):
            if not isinstance(level, (GeneralLevel, PottsLevel)):
                raise TypeError(f"levels[{s}] must be a GeneralLevel or a PottsLevel; got {type(level).__name__}")
            if isinstance(level, GeneralLevel) and L is None:
                shape = np.shape(level.pairwise) if not hasattr(level.pairwise, "shape") else level.pairwise.shape
                if len(shape) < 5:
                    raise ValueError(f"levels[{s}].pairwise must have shape (..., K, L, L, H, W); got {tuple(shape)}")
                L = int(shape[-4])
        if num_labels is not None:
            if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
                raise ValueError(f"num_labels must be an integer >= 1; got {num_labels!r}")
            if L is not None and L != num_labels:
                raise ValueError(f"num_labels = {num_labels} but the general levels have L = {L}")
            L = int(num_labels)
        if L is None:
            raise ValueError("num_labels is required when every level is a PottsLevel")
        return L

    # ------------------------------------------------------------------ layout
    @property
    def num_levels(self) -> int:
        return len(self.level_operators)

    def split_levels(self, v):
        """Views of the levels of ``v`` (shape ``(..., N)``): a list of ``(..., L, H_s, W_s)``."""
        lead = v.shape[:-1]
        return [v[..., sl].reshape(lead + shape) for sl, shape in zip(self.level_slices, self.level_shapes)]

    def join_levels(self, parts):
        """The inverse of :meth:`split_levels`: concatenate ``(..., L, H_s, W_s)`` arrays."""
        lead = parts[0].shape[:-3]
        return self.xp.concatenate([p.reshape(lead + (math.prod(p.shape[-3:]),)) for p in parts], axis=-1)

    # ------------------------------------------------------------------ couplings
    def _gather_parents(self, s, v_coarse):
        rows, cols = self.parents[s]
        return v_coarse[..., rows, :][..., cols]

    def _aggregate_children(self, s, t):
        r_rows, r_cols_t = self._aggregators[s]
        return r_rows @ t @ r_cols_t

    def _cross_products(self, s, v_fine, v_coarse):
        """``(C v_coarse, C^T v_fine)`` of coupling ``s``: the contributions to the fine and to the
        coarse level; shapes of ``v_fine`` and ``v_coarse``."""
        xp = self.xp
        c = self.cross[s]
        vpar = self._gather_parents(s, v_coarse)
        if self.cross_forms[s] == "general":
            to_fine = xp.einsum("...mnij,...nij->...mij", c, vpar)
            t = xp.einsum("...mnij,...mij->...nij", c, v_fine)
        else:
            c = c[..., None, :, :]
            to_fine = c * (vpar.sum(axis=-3, keepdims=True) - vpar)
            t = c * (v_fine.sum(axis=-3, keepdims=True) - v_fine)
        return to_fine, self._aggregate_children(s, t)

    # ------------------------------------------------------------------ products
    def matvec(self, v):
        """``M v`` for every system; ``v`` of shape ``(..., *batch_shape, N)``."""
        arr, flat = self.as_vectors(v)
        return self._product(arr)

    __matmul__ = matvec

    def _matvec(self, v):
        return self._product(v)

    def _product(self, v):
        parts = self.split_levels(v)
        out = [op._product(p) for op, p in zip(self.level_operators, parts)]
        for s in range(self.num_levels - 1):
            to_fine, to_coarse = self._cross_products(s, parts[s], parts[s + 1])
            out[s] = out[s] + to_fine
            out[s + 1] = out[s + 1] + to_coarse
        return self.join_levels(out)

    # ------------------------------------------------------------------ CSR / dense
    def to_sparse(self, index=()):
        """``M`` of one system as CSR (SciPy or ``cupyx.scipy.sparse``): the levels' matrices on
        the block diagonal, the couplings off it."""
        xp = self.xp
        index = self.level_operators[0]._check_index(index)
        sp = sparse_module(xp)
        rows, cols, vals = [], [], []
        for sl, op in zip(self.level_slices, self.level_operators):
            coo = op.to_sparse(index).tocoo()
            rows.append(coo.row.astype(np.int64) + sl.start)
            cols.append(coo.col.astype(np.int64) + sl.start)
            vals.append(coo.data)
        L = self.num_labels
        for s in range(self.num_levels - 1):
            fine, coarse = self.level_operators[s], self.level_operators[s + 1]
            Pf, Pc = fine.height * fine.width, coarse.height * coarse.width
            prow, pcol = (to_host(a) for a in self.parents[s])
            parent = (prow[:, None] * coarse.width + pcol[None, :]).ravel()  # (Pf,)
            c = self.cross[s][index]
            m = np.arange(L)[:, None, None]
            n = np.arange(L)[None, :, None]
            p = np.arange(Pf)[None, None, :]
            r = np.broadcast_to(m * Pf + p, (L, L, Pf)) + self.level_slices[s].start
            q = np.broadcast_to(n * Pc + parent[None, None, :], (L, L, Pf)) + self.level_slices[s + 1].start
            if self.cross_forms[s] == "general":
                v = c.reshape(L, L, Pf)
                keep = np.ones((L, L), dtype=bool)
            else:
                v = xp.broadcast_to(c.reshape(1, 1, Pf), (L, L, Pf))
                keep = (m != n)[..., 0]
            r, q = xp.asarray(r[keep].ravel()), xp.asarray(q[keep].ravel())
            v = v[xp.asarray(keep)].ravel()
            rows += [r, q]
            cols += [q, r]
            vals += [v, v]
        index_dtype = np.int64 if xp is np else np.int32  # cupyx.scipy.sparse: 32-bit indices
        rows = xp.concatenate([xp.asarray(a).astype(index_dtype) for a in rows])
        cols = xp.concatenate([xp.asarray(a).astype(index_dtype) for a in cols])
        mat = sp.coo_matrix((xp.concatenate(vals), (rows, cols)), shape=self.shape)
        return mat.tocsr()

    # ------------------------------------------------------------------ solver hooks
    def _gauss_seidel_sweep(self, x, b, omega):
        # Level by level, finest first; inside a level the level's multicolour sweep with the
        # couplings to the neighbouring levels (at their current values) moved to the right side.
        xs = self.split_levels(x)
        bs = self.split_levels(b)
        new = [xi for xi in xs]
        for s, op in enumerate(self.level_operators):
            rhs = bs[s]
            if s > 0:
                _, to_coarse = self._cross_products(s - 1, new[s - 1], new[s])
                rhs = rhs - to_coarse
            if s < self.num_levels - 1:
                to_fine, _ = self._cross_products(s, new[s], new[s + 1])
                rhs = rhs - to_fine
            new[s] = op._gauss_seidel_sweep(new[s], rhs, omega)
        return self.join_levels(new)

    def _holds_derived(self):
        # the levels' Gershgorin radii are computed at their construction
        return super()._holds_derived() or any(op._holds_derived() for op in self.level_operators)

    def _parameters_changed(self):
        super()._parameters_changed()
        self._cross_sums = [None] * len(self.cross)  # recomputed from the arrays when needed
        for op in self.level_operators:  # their cached radii and bounds describe the old values
            if op._watched:
                op._parameters_changed()

    def _solve(self, b, method, x0, options):
        if method == "direct":
            return sparse_direct_solve(self, b, options)
        return NotImplemented

    # ------------------------------------------------------------------ positive definiteness
    def gershgorin_bound(self):
        """Largest Gershgorin radius of ``A`` (levels and couplings) per system, shape ``batch``."""
        xp = self.xp
        L = self.num_labels
        self._sync_parameters()  # the levels' arrays are watched here (their radii refreshed on change)
        radii = [(op._radii if getattr(op, "_radii", None) is not None else op._gershgorin_radii())
                 .reshape(self.batch_shape + op.vector_shape) for op in self.level_operators]
        radii = [xp.array(r, copy=True) for r in radii]
        for s in range(self.num_levels - 1):
            if self._cross_sums[s] is not None:
                to_fine, t = self._cross_sums[s]
            elif self.cross_forms[s] == "general":
                c = xp.abs(self.cross[s])
                to_fine, t = c.sum(axis=-3), c.sum(axis=-4)
            else:
                c = xp.abs(self.cross[s])
                to_fine = t = xp.broadcast_to((L - 1) * c[..., None, :, :],
                                              self.batch_shape + self.level_shapes[s])
            radii[s] += to_fine
            radii[s + 1] += self._aggregate_children(s, t)
        lead = self.batch_shape + (-1,)
        return xp.concatenate([r.reshape(lead) for r in radii], axis=-1).max(axis=-1)

    def check_positive_definite(self, exact: bool = False) -> bool:
        """``lam`` above :meth:`gershgorin_bound` certifies ``M`` positive definite (returns True).
        Otherwise, by default, the solve goes ahead guarded by CG's curvature test (returns False);
        with ``exact=True`` a matrix-free Lanczos estimate of ``lambda_min(M) <= 0`` raises
        :class:`NotPositiveDefiniteError` naming ``lam`` (docs/design.md section 6; as
        :meth:`GridGCRF.check_positive_definite`)."""
        return gershgorin_check(self, exact=exact)

    # ------------------------------------------------------------------ gradients
    def _parameter_gradients(self, x, g):
        """Level gradients as in docs/design.md section 5, keyed ``"levels[s].pairwise"`` /
        ``"levels[s].weights"``, and the coupling gradients ``"cross[s]"``:

        - general: ``dL/dcross[s][m, n, p] = -(g_p[m] x_par[n] + x_p[m] g_par[n])``;
        - Potts: ``dL/dcross[s][p] = -[G_p X_par - g_p.x_par + G_par X_p - g_par.x_p]``,

        with ``p`` a fine pixel of level ``s`` and ``par`` its parent on level ``s + 1``.
        """
        xs, gs = self.split_levels(x), self.split_levels(g)
        grads = {}
        for s, op in enumerate(self.level_operators):
            for name, val in op._parameter_gradients(xs[s], gs[s]).items():
                grads[f"levels[{s}].{name}"] = val
        for s in range(self.num_levels - 1):
            xpar = self._gather_parents(s, xs[s + 1])
            gpar = self._gather_parents(s, gs[s + 1])
            xf, gf = xs[s], gs[s]
            if self.cross_forms[s] == "general":
                grad = -(gf[..., :, None, :, :] * xpar[..., None, :, :, :]
                         + xf[..., :, None, :, :] * gpar[..., None, :, :, :])
            else:
                grad = -(gf.sum(-3) * xpar.sum(-3) - (gf * xpar).sum(-3)
                         + gpar.sum(-3) * xf.sum(-3) - (gpar * xf).sum(-3))
            grads[f"cross[{s}]"] = grad
        return grads


def _rebuild(op, dtype, lam):
    if isinstance(op, GridGCRF):
        return GridGCRF._level(op.pairwise.astype(dtype), lam, op.neighbourhood)
    return GridPottsGCRF(op.weights.astype(dtype), lam, op.num_labels, op.neighbourhood)



def layer_layout(options) -> ParameterLayout:
    """The parameter tensors of a multires layer call (the form registry's ``layout`` hook).

    ``options``: ``level_forms`` (required; ``"general"`` / ``"potts"`` per level, finest first,
    its length is ``S``), ``neighbourhood`` (one for every level or one per level; default 4),
    ``cross_forms`` (as :class:`MultiResGCRF`; default: the form of the finer level) and
    ``num_labels`` (required when every level is Potts).  The parameters are the ``S`` level
    tensors (``levels[s].pairwise`` ``(K, L, L, H_s, W_s)`` or ``levels[s].weights``
    ``(K, H_s, W_s)``), then the ``S - 1`` couplings ``cross[s]`` (``(L, L, H_s, W_s)`` general or
    ``(H_s, W_s)`` Potts), each with leading batch axes.
    """
    level_forms = options.get("level_forms")
    if isinstance(level_forms, str):
        level_forms = (level_forms,)
    if not level_forms or any(f not in _FORMS for f in level_forms):
        raise ValueError("form 'multires' needs level_forms, a tuple of 'general' / 'potts' per level "
                         f"(finest first); got {level_forms!r}")
    level_forms = tuple(level_forms)
    S = len(level_forms)
    neighbourhood = options.get("neighbourhood", 4)
    neighbourhoods = (tuple(neighbourhood) if isinstance(neighbourhood, (tuple, list))
                      else (neighbourhood,) * S)
    if len(neighbourhoods) != S:
        raise ValueError(f"neighbourhood must be one value or {S} (one per level); got {neighbourhood!r}")
    cross_forms = options.get("cross_forms")
    if cross_forms is None:
        cross_forms = level_forms[:-1]
    elif isinstance(cross_forms, str):
        cross_forms = (cross_forms,) * (S - 1)
    cross_forms = tuple(cross_forms)
    if len(cross_forms) != S - 1 or any(f not in _FORMS for f in cross_forms):
        raise ValueError(f"cross_forms must be 'general', 'potts' or {S - 1} of them; got {cross_forms!r}")
    num_labels = options.get("num_labels")
    parameters = [(f"levels[{s}].pairwise", "K, L, L, H, W") if f == "general" else
                  (f"levels[{s}].weights", "K, H, W") for s, f in enumerate(level_forms)]
    parameters += [(f"cross[{s}]", "L, L, H, W") if f == "general" else (f"cross[{s}]", "H, W")
                   for s, f in enumerate(cross_forms)]

    def build(params, lam):
        params = list(params)
        levels = [GeneralLevel(p, nb) if f == "general" else PottsLevel(p, nb)
                  for p, f, nb in zip(params[:S], level_forms, neighbourhoods)]
        return MultiResGCRF(levels, params[S:], lam, num_labels=num_labels, cross_forms=cross_forms)

    return ParameterLayout(tuple(parameters), build)


def _scan_cross(arr, name, form, dtype):
    """Check a coupling array for NaN/Inf in one read: ``(fingerprint, sums)``.

    A general coupling ``C`` ``(*batch, L, L, H, W)`` on NumPy (float32/float64, the operator's
    dtype) is read once by the grid forms' scan: its fingerprint and the sums of ``|C|`` over
    either label, ``(sum_n |C_mn|, sum_m |C_mn|)`` of shapes ``(*batch, L, H, W)``, which the
    Gershgorin bound adds to the levels' radii.  Elsewhere (Potts couplings, CuPy, a dtype cast)
    ``(None, None)`` after the finiteness check: the operator fingerprints a watched array itself.
    """
    if form != "general" or arr.dtype != dtype or not grid_kernels._use_numba(arr) or not arr.flags.c_contiguous:
        check_finite(arr, name)
        return None, None
    L, H, W = arr.shape[-3:]
    batch = arr.shape[:-4]
    h, rows, cols, _ = scan_blocks(arr.reshape((math.prod(batch), 1, L, L, H, W)))
    to_fine = rows[:, 0].reshape(batch + (L, H, W))
    t = cols.sum(axis=1)[:, 0].reshape(batch + (L, H, W))
    if not (np.isfinite(to_fine).all() and np.isfinite(t).all()):
        check_finite(arr, name)  # NaN/Inf raise; finite entries whose sums overflowed pass
    return h, (to_fine, t)
