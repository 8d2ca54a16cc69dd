"""One read of the general grid form's pairwise blocks for everything an operator needs up front.

:func:`scan_pairwise` reads ``pairwise`` ``(B, K, L, L, H, W)`` once and, in the same pass,

- checks that every entry is finite,
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
from ..._fingerprint import finite_run, hash_run
from .redblack import colour_dims, write_block_row

__all__ = ["scan_pairwise"]


@numba.njit(cache=True, nogil=True, parallel=True)
def _scan_pairwise_nb(pw, bits, di, dj, R, partial, finite, G, build, wp):  # pragma: no cover - compiled
    B, K, L, _, H, W = pw.shape
    parts = R.shape[1]
    for it in numba.prange(B * parts):
        b = it // parts
        part = it % parts
        h = np.uint64(0)
        ok = True
        acc = R[b, part]
        for m in range(part * L // parts, (part + 1) * L // parts):
            for k in range(K):
                dik, djk = di[k], dj[k]
                i_lo, i_hi = max(0, -dik), min(H, H - dik)
                j_lo, j_hi = max(0, -djk), min(W, W - djk)
                for n in range(L):
                    src = pw[b, k, m, n]
                    base = (((b * K + k) * L + m) * L + n) * H * W
                    # one block row (H W entries, in cache) read by separate simple loops
                    h += hash_run(bits[b, k, m, n].reshape(H * W), base)
                    if not finite_run(src.reshape(H * W)):
                        ok = False
                    for i in range(i_lo, i_hi):
                        for j in range(j_lo, j_hi):
                            a = abs(src[i, j])
                            acc[m, i, j] += a
                            acc[n, i + dik, j + djk] += a
                    if build:
                        write_block_row(G, b, k, m, n, src, wp)
        partial[it] = h
        finite[it] = ok


def scan_pairwise(pw, offsets, *, blocks=None, build_blocks=False):
    """Read ``pw`` ``(B, K, L, L, H, W)`` (C-contiguous NumPy float array) once.

    Parameters
    ----------
    pw : ndarray
        The pairwise blocks of ``B`` systems.
    offsets : sequence of (int, int)
        The ``K`` edge offsets of the neighbourhood.
    blocks : ndarray, optional
        A zero-initialised (or previously written, same ``H, W``) red-black block array
        ``(B, 2, 4, L, L, F)`` to write into; allocated when ``build_blocks`` and not given.
    build_blocks : bool
        Write the red-black blocks (4-neighbourhood only).

    Returns
    -------
    finite : bool
    fingerprint : int
    bound : ndarray, shape ``(B,)``
        Largest Gershgorin radius of ``A`` per system.
    blocks : ndarray or None
    """
    B, K, L, _, H, W = pw.shape
    if build_blocks and K != 2:
        raise ValueError("the red-black blocks need the 4-neighbourhood (K = 2)")
    threads = threads_policy.get_num_threads()
    parts = max(1, min(L, 2 * threads if pw.size >= (1 << 20) else 1))
    R = np.zeros((B, parts, L, H, W), dtype=pw.dtype)
    partial = np.empty(B * parts, dtype=np.uint64)
    finite = np.empty(B * parts, dtype=np.bool_)
    if build_blocks:
        _, wp, F = colour_dims(H, W)
        if blocks is None:
            blocks = np.zeros((B, 2, 4, L, L, F), dtype=pw.dtype)  # calloc: zero pages for free
        G = blocks
    else:
        wp = 0
        G = np.zeros((1, 2, 4, 1, 1, 1), dtype=pw.dtype)
    di = np.array([o[0] for o in offsets], dtype=np.int64)
    dj = np.array([o[1] for o in offsets], dtype=np.int64)
    bits = pw.view(np.uint64 if pw.dtype.itemsize == 8 else np.uint32)
    with threads_policy.parallel_kernel(min(threads, B * parts)):
        _scan_pairwise_nb(pw, bits, di, dj, R, partial, finite, G, bool(build_blocks), wp)
    radii = R.sum(axis=1) if parts > 1 else R[:, 0]
    bound = radii.reshape(B, -1).max(axis=1) if radii.size else np.zeros(B, dtype=pw.dtype)
    return bool(finite.all()), int(partial.sum(dtype=np.uint64)), bound, (blocks if build_blocks else None)
