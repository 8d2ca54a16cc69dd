"""One read of the general grid form's pairwise blocks for everything an operator needs up front.

:func:`scan_pairwise` reads ``pairwise`` ``(B, K, L, L, H, W)`` once and, in the same pass,

- checks that every entry is finite (NaN/Inf anywhere make the radii below NaN),
- computes its fingerprint (:mod:`gcrflinalg._fingerprint`),
- accumulates the Gershgorin radii ``R[m, p] = sum_{c != (m, p)} |A_{(m, p), c}|`` and returns
  their maximum per system (the default positive-definiteness certificate, docs/design.md
  section 6),
- and, on the 4-neighbourhood, writes the colour-ordered blocks of the red-black reduction
  (:func:`gcrflinalg.forms.grid.redblack.red_black_blocks`) that ``method="reduced_cg"`` (the
  ``"auto"`` choice there) solves with.

So a fresh operator and its default solve read the parameters once before the solve itself,
instead of once for each job (and once more for a defensive copy).
"""
from __future__ import annotations

import numba
import numpy as np

from ... import threads as threads_policy
from ..._fingerprint import hash_words, mix, tail_term, words_of
from .redblack import colour_dims, write_block_row

__all__ = ["scan_blocks", "scan_pairwise", "take_blocks", "give_back_blocks", "POOL_MAX_BYTES"]


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "nsz", "contract"})
def _scan_pairwise_nb(pw, words, per_word, rows, cols, partial, G, build, wp):  # pragma: no cover - compiled
    # Items (system, edge direction k, range of first labels m).  Each block row pw[b, k, m, n]
    # adds |A| into the row sums of label m (owned by the item) and the column sums of label n
    # (direction k's own; split over several label ranges, each range has its copy, summed later
    # by _radii_nb) and, when asked, is written into the red-black blocks while
    # it is in cache.  Its fingerprint words: float64 entries are words, hashed in the same loop
    # (one read); float32 entries pair up into words that may straddle two rows, so each row's
    # words (a word belongs to the row holding its first entry) are hashed first and the row is
    # then summed from cache.  per_word = 0: no fingerprint (the sums alone).
    B, K, L, _, H, W = pw.shape
    P = H * W
    parts = cols.shape[1]
    for it in numba.prange(B * K * parts):
        b = it // (K * parts)
        k = (it // parts) % K
        part = it % parts
        h = np.uint64(0)
        for m in range(part * L // parts, (part + 1) * L // parts):
            start = ((b * K + k) * L + m) * L * P
            row_sum = rows[b, k, m]
            row_sum[:] = 0  # the sums start here, in cache (the arrays come uninitialised)
            for n in range(L):
                src = pw[b, k, m, n].reshape(P)
                col_sum = cols[b, part, k, n]
                if m == part * L // parts:
                    col_sum[:] = 0
                first = start + n * P
                if per_word == 1:
                    for p in range(P):
                        h += mix(words[first + p], first + p)
                        a = abs(src[p])
                        row_sum[p] += a
                        col_sum[p] += a
                else:
                    if per_word == 2:
                        h += hash_words(words, (first + 1) // 2, min(words.size, (first + P + 1) // 2))
                    for p in range(P):
                        a = abs(src[p])
                        row_sum[p] += a
                        col_sum[p] += a
                if build:
                    write_block_row(G, b, k, m, n, pw[b, k, m, n], wp)
        partial[it] = h


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "nsz", "contract"})
def _radii_nb(rows, cols, mask, shift, R):  # pragma: no cover - compiled
    # R[b, m, p] = sum_k mask_k[p] rows[b, k, m, p] + sum_k mask_k[p - s_k] cols[b, :, k, m, p - s_k]:
    # edge k at p joins row (m, p) to row (n, p + s_k).  Masked entries add 0, or NaN when they are
    # NaN/Inf (the masked-out tail of the column sums is added at p = 0 for that reason).
    B, K, L, P = rows.shape
    parts = cols.shape[1]
    for it in numba.prange(B * L):
        b = it // L
        m = it % L
        out = R[b, m]
        for p in range(P):
            out[p] = 0
        for k in range(K):
            mk = mask[k]
            s = shift[k]
            row_sum = rows[b, k, m]
            for p in range(P):
                out[p] += row_sum[p] * mk[p]
            for q in range(parts):
                col_sum = cols[b, q, k, m]
                for p in range(P - s):
                    out[p + s] += col_sum[p] * mk[p]
                for p in range(P - s, P):
                    out[0] += col_sum[p] * mk[p]


def scan_blocks(pw, *, blocks=None, build_blocks=False, fingerprint=True):
    """Read ``pw`` ``(B, K, L, L, H, W)`` (C-contiguous NumPy float array) once: its fingerprint and
    the sums of ``|pw|`` over either label, and, when asked, the red-black blocks.

    Returns
    -------
    fingerprint : int or None
        As :func:`gcrflinalg._fingerprint.scan` computes it; None with ``fingerprint=False``.
    rows : ndarray, shape ``(B, K, L, H * W)``
        ``rows[b, k, m] = sum_n |pw[b, k, m, n]|`` (NaN where an entry is NaN or Inf).
    cols : ndarray, shape ``(B, parts, K, L, H * W)``
        Partial sums ``sum_m |pw[b, k, m, n]|`` over the thread parts (their sum over ``parts``).
    blocks : ndarray or None
        As :func:`scan_pairwise` (4-neighbourhood only).
    """
    B, K, L, _, H, W = pw.shape
    P = H * W
    if build_blocks and K != 2:
        raise ValueError("the red-black blocks need the 4-neighbourhood (K = 2)")
    threads = threads_policy.get_num_threads() if pw.size >= (1 << 20) else 1
    # at least two items per thread (dynamic scheduling evens out a descheduled thread); the
    # directions split for free, a split of the labels costs a copy of the column sums
    parts = max(1, min(L, -(-2 * threads // (B * K)) if threads > 1 else 1))
    rows = _take_scratch((B, K, L, P), pw.dtype)
    cols = _take_scratch((B, parts, K, L, P), pw.dtype)
    partial = np.empty(B * K * parts, dtype=np.uint64)
    if build_blocks:
        _, wp, F = colour_dims(H, W)
        if blocks is None:
            blocks = take_blocks((B, 2, 4, L, L, F), pw.dtype, (H, W))
        G = blocks
    else:
        wp = 0
        G = np.zeros((1, 2, 4, 1, 1, 1), dtype=pw.dtype)
    words, tail = words_of(pw.reshape(-1))
    with threads_policy.parallel_kernel(min(threads, B * K * parts)):
        _scan_pairwise_nb(pw, words, 8 // pw.dtype.itemsize if fingerprint else 0, rows, cols, partial, G,
                          bool(build_blocks), wp)
    if not fingerprint:
        return None, rows, cols, (blocks if build_blocks else None)
    h = int(partial.sum(dtype=np.uint64))
    if tail >= 0:  # an odd float32 count: the last entry is a word of its own
        h = (h + tail_term(tail, words.size)) % (1 << 64)
    return h, rows, cols, (blocks if build_blocks else None)


def scan_pairwise(pw, offsets, *, blocks=None, build_blocks=False, fingerprint=True):
    """Read ``pw`` ``(B, K, L, L, H, W)`` (C-contiguous NumPy float array) once.

    Parameters
    ----------
    pw : ndarray
        The pairwise blocks of ``B`` systems.
    offsets : sequence of (int, int)
        The ``K`` edge offsets of the neighbourhood (``di > 0``, or ``di = 0`` and ``dj > 0``).
    blocks : ndarray, optional
        A zero-initialised (or previously written, same ``H, W``) red-black block array
        ``(B, 2, 4, L, L, F)`` to write into; taken from :func:`take_blocks` when
        ``build_blocks`` and not given.
    build_blocks : bool
        Write the red-black blocks (4-neighbourhood only).
    fingerprint : bool
        Compute the fingerprint (an operator that does not watch ``pw`` has no use for it).

    Returns
    -------
    finite : bool
    fingerprint : int or None
        As :func:`gcrflinalg._fingerprint.scan` computes it (None with ``fingerprint=False``).
    bound : ndarray, shape ``(B,)``
        Largest Gershgorin radius of ``A`` per system.
    blocks : ndarray or None
    radii : ndarray, shape ``(B, L, H, W)``
        The Gershgorin radii per row of ``A``.
    """
    B, K, L, _, H, W = pw.shape
    P = H * W
    h, rows, cols, blocks = scan_blocks(pw, blocks=blocks, build_blocks=build_blocks, fingerprint=fingerprint)
    mask = np.ascontiguousarray(edge_mask_of(offsets, H, W).reshape(K, P), dtype=pw.dtype)
    shift = np.array([di * W + dj for di, dj in offsets], dtype=np.int64)
    radii = np.empty((B, L, P), dtype=pw.dtype)
    parallel = pw.size >= (1 << 20)
    with threads_policy.parallel_kernel(min(threads_policy.get_num_threads(), B * L) if parallel else 1):
        _radii_nb(rows, cols, mask, shift, radii)
    give_back_scratch(rows, cols)
    radii = radii.reshape(B, L, H, W)
    bound = radii.reshape(B, -1).max(axis=1) if radii.size else np.zeros(B, dtype=pw.dtype)
    finite = bool(np.isfinite(bound).all())
    if not finite:  # NaN/Inf somewhere, or finite entries whose radius overflowed
        finite = bool(np.isfinite(pw).all())
        bound = np.where(np.isfinite(bound), bound, np.inf).astype(pw.dtype)
    return finite, h, bound, blocks, radii


# ---------------------------------------------------------------------------------------------
# the scan's row and column sums: scratch arrays kept for the next operator of the same size

_SCRATCH: dict = {}


def _take_scratch(shape, dtype):
    """An uninitialised array of ``shape`` (the scan zeroes each row where it starts summing):
    one given back by an earlier scan of the same size, whose pages are mapped already, else a
    new one."""
    kept = _SCRATCH.get((tuple(shape), np.dtype(dtype).str))
    if kept:
        try:
            return kept.pop()
        except IndexError:  # taken meanwhile by another thread
            pass
    return np.empty(shape, dtype=dtype)


def give_back_scratch(*arrays) -> None:
    """Keep the row and column sums of a finished scan (two per size, within
    :data:`POOL_MAX_BYTES` together with the block buffers) for :func:`_take_scratch`; the caller
    must not use them afterwards."""
    for arr in arrays:
        kept = _SCRATCH.setdefault((tuple(arr.shape), arr.dtype.str), [])
        total = sum(a.nbytes for lst in list(_SCRATCH.values()) + list(_POOL.values()) for a in lst)
        if len(kept) < 2 and total + arr.nbytes <= POOL_MAX_BYTES:
            kept.append(arr)


def edge_mask_of(offsets, height, width):
    """``(K, H, W)``: 1 where edge ``k`` at ``(i, j)`` stays inside the image, else 0."""
    mask = np.zeros((len(offsets), height, width))
    for k, (di, dj) in enumerate(offsets):
        mask[k, max(0, -di):min(height, height - di), max(0, -dj):min(width, width - dj)] = 1.0
    return mask


# ---------------------------------------------------------------------------------------------
# red-black block buffers of operators that are gone, for the next operator of the same size

#: at most this many bytes of block buffers are kept for reuse
POOL_MAX_BYTES = 1 << 30
_POOL: dict = {}


def take_blocks(shape, dtype, image):
    """A block buffer of ``shape`` for :func:`scan_pairwise` of an ``image = (H, W)`` operator: one
    kept from an operator of the same size that is gone (its pads and out-of-image entries are
    zero and every other entry is rewritten, so it needs no clearing, and its pages are already
    mapped: a network building one operator per step writes its blocks into warm memory), else a
    new zero array.  The image size is part of the key: two sizes can share ``F``, not the pads."""
    kept = _POOL.get((tuple(shape), np.dtype(dtype).str, tuple(image)))
    if kept:
        try:
            return kept.pop()
        except IndexError:  # taken meanwhile by another thread
            pass
    return np.zeros(shape, dtype=dtype)  # calloc: zero pages for free


def give_back_blocks(blocks, image, holders: int = 0) -> bool:
    """Keep ``blocks`` for reuse when nothing but the caller (and ``holders`` known references)
    refers to it -- no view, no result, no user variable -- and the pool has room."""
    import sys

    # references: the caller's, this function's argument, getrefcount's own, and ``holders``
    if sys.getrefcount(blocks) > 3 + holders:
        return False
    key = (tuple(blocks.shape), blocks.dtype.str, tuple(image))
    kept = _POOL.setdefault(key, [])
    total = sum(b.nbytes for lst in _POOL.values() for b in lst)
    if len(kept) >= 2 or total + blocks.nbytes > POOL_MAX_BYTES:
        return False
    kept.append(blocks)
    return True
