"""CSR assembly of the grid G-CRFs with a cached index pattern.

The sparsity pattern of ``M = lam I + A`` depends only on ``(H, W, L, neighbourhood)`` and on the
form (general blocks or Potts).  It is computed once and kept as ``(indptr, indices, source)``:
``data = values[source]`` where ``values`` is the system's raveled parameter array followed by
``lam``, so assembling a new image of a seen size is a single gather.
"""
from __future__ import annotations

import functools

import numpy as np

from ...backend import sparse_module
from ...neighbourhoods import neighbourhood_offsets

__all__ = ["csr_pattern", "assemble_csr"]


@functools.lru_cache(maxsize=4)
def csr_pattern(height: int, width: int, num_labels: int, neighbourhood: int, potts: bool):
    """The CSR pattern of ``M`` for one system, on the host.

    Entry ``(m, p), (n, q)`` of an in-image edge ``k`` (``q = p + d_k``) and its transpose both read
    parameter ``pairwise[k, m, n, i, j]`` (general, flat index ``((k L + m) L + n) P + p``) or
    ``weights[k, i, j]`` for ``m != n`` (Potts, flat index ``k P + p``); the diagonal reads ``lam``
    (flat index = number of parameters).  No two parameters land on one entry.

    Built directly in CSR order: every pixel's neighbours (and itself) sorted by pixel index give
    the sorted columns ``n P + q`` of each row ``(m, p)``.

    Returns
    -------
    indptr : int64 ndarray ``(N + 1,)``
    indices : int32 ndarray ``(nnz,)``
    source : int32 or int64 ndarray ``(nnz,)``
        Index into ``concatenate([params.ravel(), [lam]])`` of every stored entry.
    """
    H, W, L = int(height), int(width), int(num_labels)
    offsets = neighbourhood_offsets(neighbourhood)
    K, P = len(offsets), H * W
    n_params = K * P if potts else K * L * L * P
    idx = np.int64 if n_params >= np.iinfo(np.int32).max else np.int32
    FWD, BWD, SELF, NONE = 0, 1, 2, 3
    # per pixel, S = 2K + 1 slots: the neighbour q through each edge (both directions) and p itself
    i = np.arange(H)[:, None]
    j = np.arange(W)[None, :]
    pixel = (i * W + j).ravel()
    q_slots, kind_slots, k_slots = [pixel], [np.full(P, SELF)], [np.zeros(P, dtype=np.int64)]
    for k, (di, dj) in enumerate(offsets):
        for sign, kind in ((1, FWD), (-1, BWD)):
            qi, qj = i + sign * di, j + sign * dj
            inside = ((qi >= 0) & (qi < H) & (qj >= 0) & (qj < W)).ravel()
            q_slots.append(np.where(inside, (qi * W + qj).ravel(), P))
            kind_slots.append(np.where(inside, kind, NONE))
            k_slots.append(np.full(P, k))
    q = np.stack(q_slots, axis=1)  # (P, S), P marks a missing neighbour
    order = np.argsort(q, axis=1, kind="stable")
    q = np.take_along_axis(q, order, axis=1).astype(idx)
    kind = np.take_along_axis(np.stack(kind_slots, axis=1), order, axis=1)
    kk = np.take_along_axis(np.stack(k_slots, axis=1), order, axis=1).astype(idx)
    # entries indexed (m, p, n, s): rows m P + p in order, columns n P + q sorted within a row
    m = np.arange(L, dtype=idx)[:, None, None, None]
    n = np.arange(L, dtype=idx)[None, None, :, None]
    p = pixel.astype(idx)[None, :, None, None]
    q, kind, kk = q[None, :, None, :], kind[None, :, None, :], kk[None, :, None, :]
    same = m == n
    valid = np.where(kind == SELF, same, kind != NONE)
    if potts:
        valid &= (kind == SELF) | ~same
        src_fwd, src_bwd = kk * P + p, kk * P + q
    else:
        src_fwd = ((kk * L + m) * L + n) * P + p
        src_bwd = ((kk * L + n) * L + m) * P + q
    valid = np.broadcast_to(valid, (L, P, L, q.shape[-1]))
    source = np.where(kind == FWD, src_fwd, np.where(kind == BWD, src_bwd, idx(n_params)))
    source = np.broadcast_to(source, valid.shape)[valid]
    indices = np.broadcast_to(n * P + q, valid.shape)[valid].astype(np.int32)
    indptr = np.zeros(L * P + 1, dtype=np.int64)
    np.cumsum(valid.sum(axis=(2, 3)).ravel(), out=indptr[1:])
    for a in (indptr, indices, source):
        a.setflags(write=False)
    return indptr, indices, source


_DEVICE_PATTERNS: dict = {}


def _pattern_on(xp, key):
    host = csr_pattern(*key)
    if xp is np:
        return host
    dev_key = (key, int(xp.cuda.runtime.getDevice()))
    if dev_key not in _DEVICE_PATTERNS:
        if len(_DEVICE_PATTERNS) >= 8:
            _DEVICE_PATTERNS.pop(next(iter(_DEVICE_PATTERNS)))
        indptr, indices, source = host
        # cupyx.scipy.sparse stores 32-bit indices
        _DEVICE_PATTERNS[dev_key] = (xp.asarray(indptr.astype(np.int32)), xp.asarray(indices),
                                     xp.asarray(source))
    return _DEVICE_PATTERNS[dev_key]


def assemble_csr(xp, params, lam, height, width, num_labels, neighbourhood, potts):
    """CSR matrix ``M`` of one system (SciPy or ``cupyx.scipy.sparse``).

    Parameters
    ----------
    params : array ``(K, L, L, H, W)`` (general) or ``(K, H, W)`` (Potts), one system
    lam : scalar array
    """
    indptr, indices, source = _pattern_on(xp, (int(height), int(width), int(num_labels),
                                               int(neighbourhood), bool(potts)))
    values = xp.concatenate([params.reshape(-1), xp.reshape(lam, (1,)).astype(params.dtype)])
    data = values[source]
    N = num_labels * height * width
    sp = sparse_module(xp)
    mat = sp.csr_matrix((data, indices, indptr), shape=(N, N))
    if xp is np:
        mat.has_sorted_indices = True
    return mat
