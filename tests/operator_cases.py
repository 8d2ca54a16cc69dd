"""The registry of operator cases shared by every operator check (``test_operator_suite.py``).

Each :class:`Case` names a form, builds a small operator from random parameters through the
package's public API only, and assembles the same matrix densely with the reference builders below.
Those builders are written straight from docs/design.md section 3 with plain loops and share no code with
the package: they are the independent reference of every check.  The per-form test modules import
them from here.

A new form gets every check of the suite by adding one ``Case`` to :data:`CASES`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import zlib

import numpy as np

import gcrflinalg

# ============================================================================= dense references
# docs/design.md section 3, flat index n = l*P + i*W + j (label-major); video: frame-major on top.

#: Neighbourhood half-sets of offsets (di, dj), in the order of the parameters' K axis.
OFFSETS = {
    4: [(0, 1), (1, 0)],
    8: [(0, 1), (1, 0), (1, 1), (1, -1)],
    12: [(0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0)],
}


def dense_grid_coupling(block, L, H, W, nbhd):
    """``A`` of a grid form (3.1/3.2) by explicit loops: ``block(k, i, j)`` is the ``L x L`` block of
    edge ``k`` at pixel ``(i, j)``, placed at ``(p, q)`` and, transposed, at ``(q, p)``."""
    P = H * W
    A = np.zeros((L * P, L * P))
    for k, (di, dj) in enumerate(OFFSETS[nbhd]):
        for i in range(H):
            for j in range(W):
                ii, jj = i + di, j + dj
                if not (0 <= ii < H and 0 <= jj < W):
                    continue
                p, q = i * W + j, ii * W + jj
                blk = block(k, i, j)
                for m in range(L):
                    for n in range(L):
                        A[m * P + p, n * P + q] += blk[m, n]
                        A[n * P + q, m * P + p] += blk[m, n]
    return A


def dense_grid_general(pairwise, lam, nbhd):
    """M of 3.1 for one system: ``A[(m,p),(n,q)] = pairwise[k, m, n, i, j]``."""
    K, L, _, H, W = pairwise.shape
    return lam * np.eye(L * H * W) + dense_grid_coupling(lambda k, i, j: pairwise[k, :, :, i, j], L, H, W, nbhd)


def dense_grid_potts(weights, lam, L, nbhd):
    """M of 3.2 for one system: ``A[(m,p),(n,q)] = w[k,i,j]`` for ``m != n``."""
    K, H, W = weights.shape
    off = 1.0 - np.eye(L)
    return lam * np.eye(L * H * W) + dense_grid_coupling(lambda k, i, j: weights[k, i, j] * off, L, H, W, nbhd)


def dense_multires(params, lam, levels, cross_forms, L):
    """M of 3.3 for one system: level blocks on the diagonal, child-parent couplings off it.

    ``levels`` holds ``(form, neighbourhood, H, W)`` per level; ``params`` the level parameters
    followed by the couplings.
    """
    S = len(levels)
    blocks = [dense_grid_general(p, 0.0, nbhd) if form == "general" else dense_grid_potts(p, 0.0, L, nbhd)
              for p, (form, nbhd, _, _) in zip(params[:S], levels)]
    sizes = [b.shape[0] for b in blocks]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    M = lam * np.eye(starts[-1])
    for s in range(S):
        M[starts[s]:starts[s + 1], starts[s]:starts[s + 1]] += blocks[s]
    for s in range(S - 1):
        _, _, Hf, Wf = levels[s]
        _, _, Hc, Wc = levels[s + 1]
        c = params[S + s]
        for i in range(Hf):
            for j in range(Wf):
                pi, pj = int(np.floor(i * Hc / Hf)), int(np.floor(j * Wc / Wf))
                for m in range(L):
                    for n in range(L):
                        if cross_forms[s] == "general":
                            val = c[m, n, i, j]
                        else:
                            val = c[i, j] if m != n else 0.0
                        r = starts[s] + m * Hf * Wf + i * Wf + j
                        col = starts[s + 1] + n * Hc * Wc + pi * Wc + pj
                        M[r, col] += val
                        M[col, r] += val
    return M


def dense_lowrank_general(emb, lam):
    """3.4: ``A[(m,p),(n,q)] = sum_d E[d,m,p] E[d,n,q]`` for all pairs; ``M = A + lam I``."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim > 4:
        lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), emb.shape[:-4])
        return np.stack([dense_lowrank_general(emb[i], lam[i]) for i in range(emb.shape[0])])
    d, n_labels, h, w = emb.shape
    p_count = h * w
    n = n_labels * p_count
    m_mat = np.zeros((n, n))
    for m in range(n_labels):
        for i in range(h):
            for j in range(w):
                row = m * p_count + i * w + j
                for nl in range(n_labels):
                    for k in range(h):
                        for l in range(w):
                            m_mat[row, nl * p_count + k * w + l] = np.dot(emb[:, m, i, j], emb[:, nl, k, l])
    return m_mat + float(lam) * np.eye(n)


def dense_lowrank_potts(psi, lam, n_labels):
    """3.5: ``A[(m,p),(n,q)] = <psi_p, psi_q>`` if ``m != n``, else 0; ``M = A + lam I``."""
    psi = np.asarray(psi, dtype=np.float64)
    if psi.ndim > 3:
        lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), psi.shape[:-3])
        return np.stack([dense_lowrank_potts(psi[i], lam[i], n_labels) for i in range(psi.shape[0])])
    d, h, w = psi.shape
    p_count = h * w
    n = n_labels * p_count
    m_mat = np.zeros((n, n))
    for m in range(n_labels):
        for nl in range(n_labels):
            if m == nl:
                continue
            for pi in range(p_count):
                for qi in range(p_count):
                    m_mat[m * p_count + pi, nl * p_count + qi] = np.dot(psi[:, pi // w, pi % w],
                                                                        psi[:, qi // w, qi % w])
    return m_mat + float(lam) * np.eye(n)


def video_coupled(u, v, neighbourhood):
    """Frames ``u`` and ``v`` share a temporal block (3.6)."""
    return u != v and (neighbourhood == "fc" or abs(u - v) in neighbourhood)


def dense_video(S, T, lam, neighbourhood):
    """``M`` of 3.6 for one system, entry by entry (vector index ``(v, l, i, j)``)."""
    S = np.asarray(S, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    V, Ds, L, H, W = S.shape
    Dt = T.shape[1]
    n = L * H * W
    Sf = S.reshape(V, Ds, n)
    Tf = T.reshape(V, Dt, n)
    M = lam * np.eye(V * n)
    for u in range(V):
        for v in range(V):
            for a in range(n):
                for c in range(n):
                    value = 0.0
                    if u == v:
                        value += sum(Sf[u, d, a] * Sf[u, d, c] for d in range(Ds))
                    if video_coupled(u, v, neighbourhood):
                        value += sum(Tf[u, d, a] * Tf[v, d, c] for d in range(Dt))
                    M[u * n + a, v * n + c] += value
    return M


def dense_video_batch(S, T, lam, neighbourhood):
    batch = S.shape[:-5]
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), batch)
    n = int(np.prod(S.shape[-5:])) // S.shape[-4]
    out = np.zeros(batch + (n, n))
    for idx in np.ndindex(*batch):
        out[idx] = dense_video(S[idx], T[idx], float(lam[idx]), neighbourhood)
    return out


# ============================================================================= cases


@dataclass(frozen=True)
class Case:
    """One operator configuration.

    ``sample(rng, dtype, batch_shape)`` draws the parameters (numpy, without ``lam``), in the order of
    the keys of ``op.parameter_gradients`` (the keys are the same names); ``construct(params, lam, xp)``
    builds the operator through the public API; ``dense_one(params, lam)`` assembles ``M`` of one
    system with the references above (float64); ``large(rng)`` builds an operator of the form with
    more than 8192 unknowns, cheaply (for the ``to_dense`` guard).
    """

    form: str
    id: str
    sample: Callable
    construct: Callable
    dense_one: Callable
    large: Callable
    methods: tuple = ("cg", "pcg", "gmres", "jacobi", "gauss_seidel", "direct", "auto")
    info: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ public helpers
    def make(self, rng, dtype=np.float64, batch_shape=(), xp=np):
        """``(op, params)``: random parameters of ``dtype`` with ``batch_shape`` and a ``lam`` (per
        system) of ``1 + `` the Gershgorin radius of ``A`` (the dense reference), so that ``M`` is
        strictly diagonally dominant: positive definite, and Jacobi converges.  ``params`` holds the
        numpy arrays the operator was built from, ``"lam"`` (shape ``batch_shape``) included."""
        batch_shape = tuple(batch_shape)
        params = {k: np.ascontiguousarray(v, dtype=dtype)
                  for k, v in self.sample(rng, dtype, batch_shape).items()}
        lam = np.empty(batch_shape, dtype=np.float64)
        for idx in np.ndindex(*batch_shape):
            A = self.dense_one(self._item(params, idx), 0.0)
            lam[idx] = 1.0 + np.abs(A).sum(axis=1).max()
        params["lam"] = lam.astype(dtype)
        return self.rebuild(params, xp), params

    def rebuild(self, params, xp=np):
        """The operator of ``params`` (e.g. perturbed copies, for finite differences)."""
        lam = np.asarray(params["lam"])
        arrays = {k: xp.asarray(v) for k, v in params.items() if k != "lam"}
        lam_arg = float(lam) if lam.ndim == 0 else xp.asarray(lam)
        return self.construct(arrays, lam_arg, xp)

    def dense(self, params):
        """The dense reference ``M``, shape ``batch_shape + (N, N)``, float64."""
        lam = np.asarray(params["lam"], dtype=np.float64)
        items = [self.dense_one(self._item(params, idx), float(lam[idx])) for idx in np.ndindex(*lam.shape)]
        return np.stack(items).reshape(lam.shape + items[0].shape)

    def names(self, params):
        return [k for k in params if k != "lam"]

    @staticmethod
    def _item(params, idx):
        return {k: np.asarray(v[idx], dtype=np.float64) for k, v in params.items() if k != "lam"}


def _grid_case(nbhd, L, H, W, scale=0.3):
    K = len(OFFSETS[nbhd])

    def sample(rng, dtype, batch):
        return {"pairwise": scale * rng.standard_normal(batch + (K, L, L, H, W))}

    def construct(p, lam, xp):
        return gcrflinalg.GridGCRF(p["pairwise"], lam, nbhd)

    def dense_one(p, lam):
        return dense_grid_general(p["pairwise"], lam, nbhd)

    def large(rng):
        return gcrflinalg.GridGCRF(0.1 * rng.standard_normal((K, 1, 1, 91, 91)), 1.0, nbhd)

    methods = Case.methods + (("reduced_cg",) if nbhd == 4 else ())
    return Case("grid", f"grid-n{nbhd}-L{L}-{H}x{W}", sample, construct, dense_one, large, methods,
                dict(neighbourhood=nbhd, L=L, H=H, W=W, vector_shape=(L, H, W)))


def _grid_potts_case(nbhd, L, H, W, scale=0.3):
    K = len(OFFSETS[nbhd])

    def sample(rng, dtype, batch):
        return {"weights": scale * rng.standard_normal(batch + (K, H, W))}

    def construct(p, lam, xp):
        return gcrflinalg.GridPottsGCRF(p["weights"], lam, L, nbhd)

    def dense_one(p, lam):
        return dense_grid_potts(p["weights"], lam, L, nbhd)

    def large(rng):
        return gcrflinalg.GridPottsGCRF(0.1 * rng.standard_normal((K, 91, 91)), 1.0, 1, nbhd)

    return Case("grid_potts", f"grid_potts-n{nbhd}-L{L}-{H}x{W}", sample, construct, dense_one, large,
                Case.methods + ("potts_split",),
                info=dict(neighbourhood=nbhd, L=L, H=H, W=W, vector_shape=(L, H, W)))


def _multires_case(case_id, levels, cross_forms, L, scale=0.3):
    """``levels``: ``(form, neighbourhood, H, W)`` per level, finest first."""
    S = len(levels)
    names = [f"levels[{s}].{'pairwise' if f == 'general' else 'weights'}" for s, (f, _, _, _) in enumerate(levels)]
    names += [f"cross[{s}]" for s in range(S - 1)]

    def sample(rng, dtype, batch):
        out = {}
        for name, (form, nbhd, H, W) in zip(names, levels):
            K = len(OFFSETS[nbhd])
            shape = (K, L, L, H, W) if form == "general" else (K, H, W)
            out[name] = scale * rng.standard_normal(batch + shape)
        for s, form in enumerate(cross_forms):
            _, _, H, W = levels[s]
            shape = (L, L, H, W) if form == "general" else (H, W)
            out[names[S + s]] = scale * rng.standard_normal(batch + shape)
        return out

    def construct(p, lam, xp):
        lv = [gcrflinalg.GeneralLevel(p[names[s]], nbhd) if form == "general"
              else gcrflinalg.PottsLevel(p[names[s]], nbhd)
              for s, (form, nbhd, _, _) in enumerate(levels)]
        return gcrflinalg.MultiResGCRF(lv, [p[n] for n in names[S:]], lam, num_labels=L,
                                       cross_forms=list(cross_forms))

    def dense_one(p, lam):
        return dense_multires([p[n] for n in names], lam, levels, cross_forms, L)

    def large(rng):
        lv = [gcrflinalg.GeneralLevel(0.1 * rng.standard_normal((2, 1, 1, 91, 91)), 4),
              gcrflinalg.PottsLevel(0.1 * rng.standard_normal((2, 2, 2)), 4)]
        return gcrflinalg.MultiResGCRF(lv, [0.1 * rng.standard_normal((1, 1, 91, 91))], 1.0, num_labels=1,
                                       cross_forms=["general"])

    return Case("multires", case_id, sample, construct, dense_one, large,
                info=dict(levels=levels, cross_forms=cross_forms, L=L,
                          vector_shape=(sum(L * H * W for _, _, H, W in levels),)))


def _lowrank_case(D, L, H, W, scale=0.3):
    def sample(rng, dtype, batch):
        return {"embeddings": scale * rng.standard_normal(batch + (D, L, H, W))}

    def construct(p, lam, xp):
        return gcrflinalg.LowRankGCRF(p["embeddings"], lam)

    def dense_one(p, lam):
        return dense_lowrank_general(p["embeddings"], lam)

    def large(rng):
        return gcrflinalg.LowRankGCRF(0.01 * rng.standard_normal((1, 1, 91, 91)), 1.0)

    return Case("lowrank", f"lowrank-D{D}-L{L}-{H}x{W}", sample, construct, dense_one, large,
                info=dict(D=D, L=L, H=H, W=W, vector_shape=(L, H, W)))


def _lowrank_potts_case(D, L, H, W, scale=0.3):
    def sample(rng, dtype, batch):
        return {"embeddings": scale * rng.standard_normal(batch + (D, H, W))}

    def construct(p, lam, xp):
        return gcrflinalg.LowRankPottsGCRF(p["embeddings"], lam, L)

    def dense_one(p, lam):
        return dense_lowrank_potts(p["embeddings"], lam, L)

    def large(rng):
        return gcrflinalg.LowRankPottsGCRF(0.01 * rng.standard_normal((1, 91, 91)), 1.0, 1)

    return Case("lowrank_potts", f"lowrank_potts-D{D}-L{L}-{H}x{W}", sample, construct, dense_one, large,
                info=dict(D=D, L=L, H=H, W=W, vector_shape=(L, H, W)))


def _video_case(neighbourhood, V, Ds, Dt, L, H, W, scale=0.3):
    tag = "fc" if neighbourhood == "fc" else "".join(str(d) for d in sorted(neighbourhood))

    def sample(rng, dtype, batch):
        return {"spatial": scale * rng.standard_normal(batch + (V, Ds, L, H, W)),
                "temporal": scale * rng.standard_normal(batch + (V, Dt, L, H, W))}

    def construct(p, lam, xp):
        return gcrflinalg.VideoGCRF(p["spatial"], p["temporal"], lam, neighbourhood)

    def dense_one(p, lam):
        return dense_video(p["spatial"], p["temporal"], lam, neighbourhood)

    def large(rng):
        return gcrflinalg.VideoGCRF(0.01 * rng.standard_normal((1, 1, 1, 91, 91)),
                                    0.01 * rng.standard_normal((1, 1, 1, 91, 91)), 1.0, neighbourhood)

    return Case("video", f"video-{tag}-V{V}-L{L}-{H}x{W}", sample, construct, dense_one, large,
                info=dict(neighbourhood=neighbourhood, V=V, L=L, H=H, W=W, vector_shape=(V, L, H, W)))


#: Every registered case.  Forms named exactly as ``gcrflinalg.forms.registry.FORMS`` keys.
CASES = [
    _grid_case(4, 1, 4, 5),
    _grid_case(4, 3, 3, 5),
    _grid_case(4, 2, 1, 7),            # a 1 x N image
    _grid_case(8, 3, 4, 4),
    _grid_case(8, 1, 3, 5),
    _grid_case(12, 1, 5, 4),
    _grid_case(12, 3, 3, 5),
    _grid_potts_case(4, 3, 4, 5),
    _grid_potts_case(8, 3, 3, 5),
    _grid_potts_case(8, 2, 1, 6),      # a 1 x N image
    _grid_potts_case(12, 2, 4, 4),
    _multires_case("multires-2lvl-general-potts", [("general", 4, 4, 5), ("potts", 8, 2, 3)], ["general"], 2),
    _multires_case("multires-3lvl", [("potts", 4, 5, 4), ("general", 12, 3, 3), ("potts", 8, 2, 2)],
                   ["potts", "general"], 2),
    _multires_case("multires-3lvl-mixed", [("general", 12, 5, 7), ("potts", 4, 3, 4), ("general", 8, 2, 3)],
                   ["potts", "general"], 2),
    _lowrank_case(3, 2, 3, 5),
    _lowrank_case(4, 3, 5, 7),
    _lowrank_case(2, 3, 1, 6),         # a 1 x N image
    _lowrank_potts_case(3, 3, 3, 4),
    _lowrank_potts_case(4, 3, 5, 7),
    _lowrank_potts_case(5, 2, 1, 5),   # a 1 x N image
    _video_case("fc", 3, 2, 2, 2, 2, 3),
    _video_case({1, 2}, 4, 2, 2, 2, 2, 2),
]

FORMS = {"grid", "grid_potts", "multires", "lowrank", "lowrank_potts", "video"}


def case_by_id(case_id):
    for c in CASES:
        if c.id == case_id:
            return c
    raise KeyError(case_id)


def case_rng(*key):
    """A seeded generator per key (stable across runs and test orderings)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


_INSTANCES = {}


def instance(case, dtype=np.float64, batch=()):
    """``(params, dense)`` of a case, cached (the dense reference is assembled by Python loops);
    the parameters are fresh copies at every call."""
    key = (case.id, np.dtype(dtype).name, tuple(batch))
    if key not in _INSTANCES:
        _, params = case.make(case_rng("params", *key), dtype, batch)
        _INSTANCES[key] = (params, case.dense(params))
    params, dense = _INSTANCES[key]
    return {k: v.copy() for k, v in params.items()}, dense
