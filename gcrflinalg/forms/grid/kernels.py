"""Structured products of the grid G-CRFs (docs/design.md 3.1, 3.2): Numba kernels on the CPU, sliced
array code for any other backend (CuPy).

Shapes used throughout (``B`` systems, ``E`` right-hand sides per system, ``K`` offsets):

- ``pairwise``: ``(B, K, L, L, H, W)``, ``weights``: ``(B, K, H, W)``;
- vectors ``v`` and products ``out``: ``(E, B, R, H, W)`` (``R = L`` labels, or any number of
  ``P``-vectors for the weight products);
- ``offsets``: the ``(di, dj)`` half-set of the neighbourhood, edge ``k`` at ``p = (i, j)`` joining
  ``p`` and ``q = (i + di, j + dj)``; edges leaving the image are skipped.

Every product *accumulates* into ``out`` and computes only the pairwise part ``A v`` (no ``lam``).
Each kernel reads every stored block once per product: one block row ``pairwise[b, k, m, n, i, :]``
serves both the product of the edge and of its transpose.

Also here: the multicolour Gauss–Seidel sweeps (:func:`pairwise_colour_sweep`,
:func:`potts_colour_sweep`) and the compiled CG on the ``P x P`` systems of the Potts split
(:func:`shifted_weight_cg`).
"""
from __future__ import annotations

import functools

import numba
import numpy as np

from solvers import CURVATURE_TOLERANCE

from ... import threads as threads_policy
from ...backend import _array_kernels_on

__all__ = [
    "pairwise_product",
    "pairwise_product_columns",
    "lanczos_columns",
    "pixel_major",
    "weight_product",
    "shifted_weight_cg",
    "product_threads",
    "pixel_colouring",
    "colour_masks",
    "pairwise_colour_sweep",
    "potts_colour_sweep",
    "edge_ranges",
]


def edge_ranges(di: int, dj: int, height: int, width: int):
    """Slices of the pixels ``p`` whose neighbour ``q = p + (di, dj)`` is inside the image.

    Returns ``(p_rows, p_cols, q_rows, q_cols)`` as slices: ``x[..., p_rows, p_cols]`` and
    ``x[..., q_rows, q_cols]`` are the two ends of every in-image edge of this offset.
    """
    i0, i1 = max(0, -di), min(height, height - di)
    j0, j1 = max(0, -dj), min(width, width - dj)
    i1, j1 = max(i0, i1), max(j0, j1)
    return slice(i0, i1), slice(j0, j1), slice(i0 + di, i1 + di), slice(j0 + dj, j1 + dj)


def _use_numba(arr) -> bool:
    """Numba kernels for NumPy arrays; sliced array code (any backend) otherwise, and on NumPy too
    when the array-kernel switch is on (:func:`gcrflinalg.backend._array_kernels_on`)."""
    return isinstance(arr, np.ndarray) and not _array_kernels_on()


def _offset_arrays(offsets):
    """``(di, dj)`` int64 arrays of the offsets (cached per stencil: the kernels only read them)."""
    return _offset_arrays_cached(tuple((int(a), int(b)) for a, b in offsets))


@functools.lru_cache(maxsize=64)
def _offset_arrays_cached(offsets):
    di = np.array([o[0] for o in offsets], dtype=np.int64)
    dj = np.array([o[1] for o in offsets], dtype=np.int64)
    return di, dj


# ---------------------------------------------------------------------------------------------
# general blocks: out[m, p] += P[k,m,n,p] v[n, q];  out[n, q] += P[k,m,n,p] v[m, p]

#: products with at least this many stored block entries run on several Numba threads
PARALLEL_MIN_ENTRIES = 1 << 20


def product_threads() -> int:
    """Threads used by large general products: :func:`gcrflinalg.threads.get_num_threads` (an
    explicit :func:`gcrflinalg.set_num_threads`, else ``GCRFLINALG_NUM_THREADS``, else Numba's
    count, lowered to a followed framework's)."""
    return threads_policy.get_num_threads()


@numba.njit(inline="always")
def _edge_segment(coef, out_p, x_q, out_q, x_p, start, length, shift):  # pragma: no cover
    # Pixels p = start .. start+length-1 (flat), q = p + shift:
    #   out_p[p] += coef[p] x_q[q];  out_q[q] += coef[p] x_p[p].
    # Slices starting at 0 let the two loops vectorise.
    c = coef[start:start + length]
    o = out_p[start:start + length]
    x = x_q[start + shift:start + shift + length]
    for j in range(length):
        o[j] += c[j] * x[j]
    o = out_q[start + shift:start + shift + length]
    x = x_p[start:start + length]
    for j in range(length):
        o[j] += c[j] * x[j]


@numba.njit(inline="always")
def _edge_segments(coef, out_p, x_q, out_q, x_p, di, dj, height, width):  # pragma: no cover
    # All in-image edges of one offset: one contiguous run when dj == 0, one run per row otherwise.
    i0 = max(0, -di)
    i1 = min(height, height - di)
    j0 = max(0, -dj)
    j1 = min(width, width - dj)
    shift = di * width + dj
    if i1 <= i0 or j1 <= j0:
        return
    if dj == 0:
        _edge_segment(coef, out_p, x_q, out_q, x_p, i0 * width, (i1 - i0) * width, shift)
    else:
        for i in range(i0, i1):
            _edge_segment(coef, out_p, x_q, out_q, x_p, i * width + j0, j1 - j0, shift)


@numba.njit(inline="always")
def _edge_segment4(c0, c1, c2, c3, out_m, x_m, o0, o1, o2, o3, x0, x1, x2, x3, start, length, shift):
    # pragma: no cover - compiled
    # Four label columns n0..n3 (all != m) of row label m at once, p = start.., q = p + shift:
    #   out_m[p] += sum_i c_i[p] x_i[q];  o_i[q] += c_i[p] x_m[p].
    # out_m is read and written once for four blocks instead of four times.
    e = start + length
    a0, a1, a2, a3 = c0[start:e], c1[start:e], c2[start:e], c3[start:e]
    om = out_m[start:e]
    xm = x_m[start:e]
    y0, y1 = x0[start + shift:e + shift], x1[start + shift:e + shift]
    y2, y3 = x2[start + shift:e + shift], x3[start + shift:e + shift]
    for j in range(length):
        om[j] += a0[j] * y0[j] + a1[j] * y1[j] + a2[j] * y2[j] + a3[j] * y3[j]
    p0, p1 = o0[start + shift:e + shift], o1[start + shift:e + shift]
    p2, p3 = o2[start + shift:e + shift], o3[start + shift:e + shift]
    for j in range(length):
        t = xm[j]
        p0[j] += a0[j] * t
        p1[j] += a1[j] * t
        p2[j] += a2[j] * t
        p3[j] += a3[j] * t


@numba.njit(inline="always")
def _edge_segments4(c0, c1, c2, c3, out_m, x_m, o0, o1, o2, o3, x0, x1, x2, x3, di, dj, height, width):
    # pragma: no cover - compiled
    i0 = max(0, -di)
    i1 = min(height, height - di)
    j0 = max(0, -dj)
    j1 = min(width, width - dj)
    shift = di * width + dj
    if i1 <= i0 or j1 <= j0:
        return
    if dj == 0:
        _edge_segment4(c0, c1, c2, c3, out_m, x_m, o0, o1, o2, o3, x0, x1, x2, x3,
                       i0 * width, (i1 - i0) * width, shift)
    else:
        for i in range(i0, i1):
            _edge_segment4(c0, c1, c2, c3, out_m, x_m, o0, o1, o2, o3, x0, x1, x2, x3,
                           i * width + j0, j1 - j0, shift)


@numba.njit(nogil=True)
def _pairwise_item(pw, v, out, di, dj, b, k, m):  # pragma: no cover - compiled
    # Edge k of system b, row label m: every block row pw[b, k, m, n] read once.
    # Columns n != m go four at a time (one pass over out[m] for four blocks); n = m (whose two
    # updates touch the same label row) and the remainder one at a time.
    L, H, W = pw.shape[2], pw.shape[4], pw.shape[5]
    P = H * W
    others = np.empty(L, dtype=np.int64)
    count = 0
    for n in range(L):
        if n != m:
            others[count] = n
            count += 1
    n_fused = (count // 4) * 4
    for g in range(0, n_fused, 4):
        n0, n1, n2, n3 = others[g], others[g + 1], others[g + 2], others[g + 3]
        for e in range(v.shape[0]):
            _edge_segments4(pw[b, k, m, n0].reshape(P), pw[b, k, m, n1].reshape(P),
                            pw[b, k, m, n2].reshape(P), pw[b, k, m, n3].reshape(P),
                            out[e, b, m].reshape(P), v[e, b, m].reshape(P),
                            out[e, b, n0].reshape(P), out[e, b, n1].reshape(P),
                            out[e, b, n2].reshape(P), out[e, b, n3].reshape(P),
                            v[e, b, n0].reshape(P), v[e, b, n1].reshape(P),
                            v[e, b, n2].reshape(P), v[e, b, n3].reshape(P), di[k], dj[k], H, W)
    for g in range(n_fused, count + 1):
        n = others[g] if g < count else m
        blk = pw[b, k, m, n].reshape(P)
        for e in range(v.shape[0]):
            _edge_segments(blk, out[e, b, m].reshape(P), v[e, b, n].reshape(P),
                           out[e, b, n].reshape(P), v[e, b, m].reshape(P), di[k], dj[k], H, W)


@numba.njit(cache=True, nogil=True)
def _pairwise_product_nb(pw, v, out, di, dj):  # pragma: no cover - compiled
    B, K, L = pw.shape[0], pw.shape[1], pw.shape[2]
    for b in range(B):
        for k in range(K):
            for m in range(L):
                _pairwise_item(pw, v, out, di, dj, b, k, m)


@numba.njit(cache=True, nogil=True, parallel=True)
def _pairwise_product_parallel_nb(pw, v, out, acc, lam, init, di, dj):  # pragma: no cover - compiled
    # Work items (b, k, m) dealt round-robin to T = len(acc) + 1 threads; thread t > 0
    # accumulates into its private acc[t - 1] (the transposed term writes every label row), which
    # it zeroes itself; thread 0 first sets out = lam v when `init`.  The copies are summed into
    # out at the end, each thread taking a slice of the pixels.
    B, K, L = pw.shape[0], pw.shape[1], pw.shape[2]
    n_items = B * K * L
    T = acc.shape[0] + 1
    for t in numba.prange(T):
        if t == 0:
            if init:
                _scale_into(out, v, lam)
        else:
            acc[t - 1].reshape(-1)[:] = 0
        for item in range(t, n_items, T):  # interleaved: every thread gets a share of every offset
            b = item // (K * L)
            k = (item // L) % K
            m = item % L
            if t == 0:
                _pairwise_item(pw, v, out, di, dj, b, k, m)
            else:
                _pairwise_item(pw, v, acc[t - 1], di, dj, b, k, m)
    flat = out.reshape(-1)
    n = flat.size
    for t in numba.prange(T):
        lo = t * n // T
        hi = (t + 1) * n // T
        seg = flat[lo:hi]
        for a in range(T - 1):
            src = acc[a].reshape(-1)[lo:hi]
            for i in range(hi - lo):
                seg[i] += src[i]


@numba.njit(nogil=True)
def _scale_into(out, v, lam):  # pragma: no cover - compiled
    # out[e, b] = lam[b] v[e, b]
    E, B = v.shape[0], v.shape[1]
    for e in range(E):
        for b in range(B):
            o = out[e, b].reshape(-1)
            x = v[e, b].reshape(-1)
            a = lam[b]
            for i in range(o.size):
                o[i] = a * x[i]


@numba.njit(cache=True, nogil=True)
def _pairwise_product_serial_nb(pw, v, out, lam, init, di, dj):  # pragma: no cover - compiled
    if init:
        _scale_into(out, v, lam)
    _pairwise_product_nb(pw, v, out, di, dj)


def _pairwise_product_xp(xp, pw, v, out, offsets):
    H, W = pw.shape[-2:]
    for k, (di, dj) in enumerate(offsets):
        pi, pj, qi, qj = edge_ranges(di, dj, H, W)
        blk = pw[:, k, :, :, pi, pj]  # (B, L, L, h, w)
        out[..., pi, pj] += xp.einsum("bmnij,ebnij->ebmij", blk, v[..., qi, qj])
        out[..., qi, qj] += xp.einsum("bmnij,ebmij->ebnij", blk, v[..., pi, pj])


def pairwise_product(pw, v, out, offsets, lam=None):
    """Accumulate the general pairwise product ``out += A v`` (docs/design.md 3.1), or with ``lam`` write
    ``M v = lam v + A v`` into ``out`` (whose contents are then ignored).

    ``(A v)[m, p] = sum_k sum_n pairwise[k, m, n, p] v[n, p + d_k]
                  + sum_k sum_n pairwise[k, n, m, p - d_k] v[n, p - d_k]``

    On the CPU large products (:data:`PARALLEL_MIN_ENTRIES`) are split into :func:`product_threads`
    parts, each accumulating into its own copy of ``out`` (zeroed and summed by the threads),
    scheduled dynamically (:mod:`gcrflinalg.threads`): a thread that has lost its core leaves its
    part to the others.

    Parameters
    ----------
    pw : array, shape ``(B, K, L, L, H, W)``, C-contiguous
    v, out : arrays, shape ``(E, B, L, H, W)``, C-contiguous, of ``pw``'s dtype
    offsets : tuple of ``(di, dj)``
    lam : array ``(B,)``, optional
        The diagonal shift of every system; when given ``out = lam v + A v``.
    """
    if _use_numba(pw):
        di, dj = _offset_arrays(offsets)
        init = lam is not None
        lam_arr = np.ascontiguousarray(lam, dtype=pw.dtype).reshape(-1) if init else np.zeros(1, pw.dtype)
        threads = min(product_threads(), pw.shape[0] * pw.shape[1] * pw.shape[2])
        if pw.size >= PARALLEL_MIN_ENTRIES and threads > 1:
            acc = np.empty((threads - 1,) + out.shape, dtype=out.dtype)
            with threads_policy.parallel_kernel(threads):
                _pairwise_product_parallel_nb(pw, v, out, acc, lam_arr, init, di, dj)
        else:
            _pairwise_product_serial_nb(pw, v, out, lam_arr, init, di, dj)
    else:
        from ...backend import get_array_module
        if lam is not None:
            out[...] = lam.reshape((1, -1) + (1,) * (v.ndim - 2)) * v
        _pairwise_product_xp(get_array_module(pw), pw, v, out, offsets)
    return out


# ---------------------------------------------------------------------------------------------
# general blocks, many vectors as the last axis ("columns"): v, out of shape (B, L, H, W, E)


def pixel_major(pw):
    """The pairwise blocks reordered pixel-major, ``(B, H * W, K, L, L)`` C-contiguous (a copy): the
    layout in which :func:`pairwise_product_columns` reads every block of a pixel together."""
    B, K, L, _, H, W = pw.shape
    return np.ascontiguousarray(pw.reshape(B, K, L, L, H * W).transpose(0, 4, 1, 2, 3))


@numba.njit(inline="always")
def _rows_update(c, src, s_idx, dst, d_idx, b, L, L4, E):  # pragma: no cover - compiled
    # dst[:, d] += c src[:, s] for an L x L block c (or a transposed view of one): output rows two at
    # a time and input rows four at a time (unroll and jam), so that each load of an input row
    # serves two output rows and each load and store of an output row four input rows.
    L2 = L - L % 2
    for m in range(0, L2, 2):
        o0 = dst[b, m, d_idx]
        o1 = dst[b, m + 1, d_idx]
        for n in range(0, L4, 4):
            a0, a1, a2, a3 = c[m, n], c[m, n + 1], c[m, n + 2], c[m, n + 3]
            e0, e1, e2, e3 = c[m + 1, n], c[m + 1, n + 1], c[m + 1, n + 2], c[m + 1, n + 3]
            v0 = src[b, n, s_idx]
            v1 = src[b, n + 1, s_idx]
            v2 = src[b, n + 2, s_idx]
            v3 = src[b, n + 3, s_idx]
            for e in range(E):
                x0 = v0[e]
                x1 = v1[e]
                x2 = v2[e]
                x3 = v3[e]
                o0[e] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                o1[e] += e0 * x0 + e1 * x1 + e2 * x2 + e3 * x3
        for n in range(L4, L):
            a0, e0 = c[m, n], c[m + 1, n]
            v0 = src[b, n, s_idx]
            for e in range(E):
                x0 = v0[e]
                o0[e] += a0 * x0
                o1[e] += e0 * x0
    for m in range(L2, L):
        o0 = dst[b, m, d_idx]
        for n in range(0, L4, 4):
            a0, a1, a2, a3 = c[m, n], c[m, n + 1], c[m, n + 2], c[m, n + 3]
            v0 = src[b, n, s_idx]
            v1 = src[b, n + 1, s_idx]
            v2 = src[b, n + 2, s_idx]
            v3 = src[b, n + 3, s_idx]
            for e in range(E):
                o0[e] += a0 * v0[e] + a1 * v1[e] + a2 * v2[e] + a3 * v3[e]
        for n in range(L4, L):
            a0 = c[m, n]
            v0 = src[b, n, s_idx]
            for e in range(E):
                o0[e] += a0 * v0[e]


@numba.njit(inline="always")
def _pixel_edges(cp, v, out, b, p, i, j, di, dj, height, width, q_lo=0, q_hi=-1):  # pragma: no cover - compiled
    """Both ends of every in-image edge of pixel ``p = (i, j)`` for ``E`` columns:
    ``out[:, p] += C_k v[:, q]`` and ``out[:, q] += C_k^T v[:, p]`` (``cp`` pixel-major blocks
    ``(B, P, K, L, L)``, ``v`` and ``out`` ``(B, L, P, E)``); with ``q_hi >= 0`` only the edges
    whose other end ``q`` lies in ``[q_lo, q_hi)``."""
    K, L = cp.shape[2], cp.shape[3]
    E = v.shape[3]
    L4 = L - L % 4
    for k in range(K):
        qi = i + di[k]
        qj = j + dj[k]
        if qi < 0 or qi >= height or qj < 0 or qj >= width:
            continue
        q = qi * width + qj
        if q_hi >= 0 and (q < q_lo or q >= q_hi):
            continue
        c = cp[b, p, k]
        _rows_update(c, v, q, out, p, b, L, L4, E)
        _rows_update(c.T, v, p, out, q, b, L, L4, E)


@numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def _pairwise_product_columns_nb(cp, v, out, lam, di, dj, height, width, dots, want_dots):  # pragma: no cover
    # cp: (B, P, K, L, L); v, out: (B, L, P, E).  Pixel by pixel: the rows of E values of p and of
    # its neighbours stay in cache while all K L^2 blocks of p are applied to every column.
    # out = lam v is written just ahead of the first pixel that adds to it (every offset points
    # forward, q = p + di W + dj > p), while that part of v is in cache.
    B, P, K, L = cp.shape[0], cp.shape[1], cp.shape[2], cp.shape[3]
    E = v.shape[3]
    reach = 0
    for k in range(K):
        reach = max(reach, di[k] * width + dj[k])
    for b in range(B):
        a = lam[b]
        done = 0
        for i in range(height):
            for j in range(width):
                p = i * width + j
                top = min(P, p + reach + 1)
                while done < top:
                    for m in range(L):
                        o = out[b, m, done]
                        x = v[b, m, done]
                        for e in range(E):
                            o[e] = a * x[e]
                    done += 1
                _pixel_edges(cp, v, out, b, p, i, j, di, dj, height, width)
                if want_dots:
                    # out[:, p] is final here (its other terms came from earlier pixels): v . M v
                    for m in range(L):
                        o = out[b, m, p]
                        x = v[b, m, p]
                        for e in range(E):
                            dots[b, e] += x[e] * o[e]
    return out


def _pairwise_product_columns_xp(xp, pw, v, out, offsets, lam):
    out[...] = lam.reshape((-1,) + (1,) * (v.ndim - 1)) * v
    H, W = pw.shape[-2:]
    for k, (di, dj) in enumerate(offsets):
        pi, pj, qi, qj = edge_ranges(di, dj, H, W)
        blk = pw[:, k, :, :, pi, pj]  # (B, L, L, h, w)
        out[:, :, pi, pj] += xp.einsum("bmnij,bnije->bmije", blk, v[:, :, qi, qj])
        out[:, :, qi, qj] += xp.einsum("bmnij,bmije->bnije", blk, v[:, :, pi, pj])
    return out


def pairwise_product_columns(pw, v, out, offsets, lam, pixel_blocks=None, dots=None):
    """``out = lam v + A v`` of the general form for ``E`` vectors stored as the *last* axis.

    The layout of a block of vectors as columns (``V`` of shape ``(N, E)`` per system, as in
    ``A @ V``): each stored block entry is read once and applied to all ``E`` columns from
    contiguous memory, the same flops as ``E`` products at the memory traffic of about one.

    Parameters
    ----------
    pw : array, shape ``(B, K, L, L, H, W)``, C-contiguous
    v, out : arrays, shape ``(B, L, H, W, E)``, C-contiguous, of ``pw``'s dtype
    offsets : tuple of ``(di, dj)``
    lam : array ``(B,)``
    pixel_blocks : array, optional
        :func:`pixel_major` of ``pw`` (the compiled kernel's layout; computed here when not given).
    dots : array ``(B, E)``, optional
        Overwritten with the quadratic forms ``v_e^T M v_e`` of every column (accumulated as the
        product goes, while both are in cache).
    """
    if _use_numba(pw):
        cp = pixel_major(pw) if pixel_blocks is None else pixel_blocks
        B, L, H, W, E = v.shape
        di, dj = _offset_arrays(offsets)
        lam_arr = np.ascontiguousarray(lam, dtype=pw.dtype).reshape(-1)
        want = dots is not None
        acc = np.zeros((B, E), dtype=np.float64) if want else np.zeros((1, 1))
        _pairwise_product_columns_nb(cp, v.reshape(B, L, H * W, E), out.reshape(B, L, H * W, E),
                                     lam_arr, di, dj, H, W, acc, want)
        if want:
            dots[...] = acc
        return out
    from ...backend import get_array_module
    _pairwise_product_columns_xp(get_array_module(pw), pw, v, out, offsets, lam)
    if dots is not None:
        dots[...] = (v * out).sum(axis=(1, 2, 3))
    return out


# ---------------------------------------------------------------------------------------------
# scalar edge weights: out[r, p] += w[k,p] x[r, q];  out[r, q] += w[k,p] x[r, p]


@numba.njit(cache=True, nogil=True)
def _weight_product_nb(wt, x, out, di, dj):  # pragma: no cover - compiled
    B, K, H, W = wt.shape
    P = H * W
    E, R = x.shape[0], x.shape[2]
    for b in range(B):
        for k in range(K):
            w = wt[b, k].reshape(P)
            for e in range(E):
                for r in range(R):
                    _edge_segments(w, out[e, b, r].reshape(P), x[e, b, r].reshape(P),
                                   out[e, b, r].reshape(P), x[e, b, r].reshape(P), di[k], dj[k], H, W)


def _weight_product_xp(xp, wt, x, out, offsets):
    H, W = wt.shape[-2:]
    for k, (di, dj) in enumerate(offsets):
        pi, pj, qi, qj = edge_ranges(di, dj, H, W)
        w = wt[None, :, k, None, pi, pj]  # (1, B, 1, h, w)
        out[..., pi, pj] += w * x[..., qi, qj]
        out[..., qi, qj] += w * x[..., pi, pj]


def weight_product(wt, x, out, offsets):
    """Accumulate ``out += W x`` for the symmetric ``P x P`` edge-weight matrix ``W`` of every
    system, applied to ``R`` pixel vectors at once (docs/design.md 3.2).

    ``(W x)[p] = sum_k w[k, p] x[p + d_k] + sum_k w[k, p - d_k] x[p - d_k]``

    Parameters
    ----------
    wt : array, shape ``(B, K, H, W)``, C-contiguous
    x, out : arrays, shape ``(E, B, R, H, W)``, C-contiguous, of ``wt``'s dtype
    offsets : tuple of ``(di, dj)``
    """
    if _use_numba(wt):
        di, dj = _offset_arrays(offsets)
        _weight_product_nb(wt, x, out, di, dj)
    else:
        from ...backend import get_array_module
        _weight_product_xp(get_array_module(wt), wt, x, out, offsets)
    return out


# ---------------------------------------------------------------------------------------------
# multicolour Gauss-Seidel

#: ``colour(i, j) = (a * i + j) mod C`` per neighbourhood: ``(a, C)``.  For every offset
#: ``(di, dj)`` of the neighbourhood ``a * di + dj`` is not a multiple of ``C``, so no two pixels of
#: one colour are neighbours (4: red-black; 8: four colours, the fewest a 2 x 2 clique allows;
#: 12: five colours).
_COLOURINGS = {4: (1, 2), 8: (2, 4), 12: (2, 5)}


def pixel_colouring(neighbourhood: int) -> tuple[int, int]:
    """``(a, C)`` of the pixel colouring ``colour(i, j) = (a i + j) mod C`` of a neighbourhood."""
    return _COLOURINGS[int(neighbourhood)]


def colour_masks(neighbourhood: int, height: int, width: int) -> np.ndarray:
    """Boolean ``(C, H, W)``: ``masks[c]`` marks the pixels of colour ``c``."""
    a, C = pixel_colouring(neighbourhood)
    colour = (a * np.arange(height)[:, None] + np.arange(width)[None, :]) % C
    return colour[None] == np.arange(C)[:, None, None]


@numba.njit(cache=True, nogil=True)
def _pairwise_colour_sweep_nb(pw, x, b, lam, di, dj, a, C, omega):  # pragma: no cover - compiled
    # x, b: (B, L, H, W); lam: (B,).  For colour c, acc = (A x) at the pixels of colour c, then
    # x_p <- (1 - omega) x_p + omega (b_p - acc_p) / lam for those pixels (the pixel block is lam I).
    B, K, L, _, H, W = pw.shape
    acc = np.zeros((L, H, W), dtype=x.dtype)
    for bb in range(B):
        for c in range(C):
            acc[:] = 0
            for k in range(K):
                dik = di[k]
                djk = dj[k]
                for m in range(L):
                    for n in range(L):
                        for i in range(H):
                            js = (c - a * i) % C
                            iq = i + dik
                            if 0 <= iq < H:  # p = (i, j) of colour c, q = p + d
                                for j in range(js, W, C):
                                    jq = j + djk
                                    if 0 <= jq < W:
                                        acc[m, i, j] += pw[bb, k, m, n, i, j] * x[bb, n, iq, jq]
                            ip = i - dik
                            if 0 <= ip < H:  # q = (i, j) of colour c, p = q - d
                                for j in range(js, W, C):
                                    jp = j - djk
                                    if 0 <= jp < W:
                                        acc[n, i, j] += pw[bb, k, m, n, ip, jp] * x[bb, m, ip, jp]
            for m in range(L):
                for i in range(H):
                    for j in range((c - a * i) % C, W, C):
                        x[bb, m, i, j] += omega * ((b[bb, m, i, j] - acc[m, i, j]) / lam[bb] - x[bb, m, i, j])


@numba.njit(cache=True, nogil=True)
def _potts_colour_sweep_nb(wt, x, b, lam, di, dj, a, C, omega):  # pragma: no cover - compiled
    # (A x)[m, p] = sum_q w_pq (s_q - x[m, q]) with s = sum_l x_l, restricted to the colour's pixels.
    B, K, H, W = wt.shape
    L = x.shape[1]
    acc = np.zeros((L, H, W), dtype=x.dtype)
    s = np.zeros((H, W), dtype=x.dtype)
    for bb in range(B):
        s[:] = 0
        for m in range(L):
            for i in range(H):
                for j in range(W):
                    s[i, j] += x[bb, m, i, j]
        for c in range(C):
            acc[:] = 0
            for k in range(K):
                dik = di[k]
                djk = dj[k]
                for i in range(H):
                    js = (c - a * i) % C
                    iq = i + dik
                    if 0 <= iq < H:
                        for j in range(js, W, C):
                            jq = j + djk
                            if 0 <= jq < W:
                                w = wt[bb, k, i, j]
                                for m in range(L):
                                    acc[m, i, j] += w * (s[iq, jq] - x[bb, m, iq, jq])
                    ip = i - dik
                    if 0 <= ip < H:
                        for j in range(js, W, C):
                            jp = j - djk
                            if 0 <= jp < W:
                                w = wt[bb, k, ip, jp]
                                for m in range(L):
                                    acc[m, i, j] += w * (s[ip, jp] - x[bb, m, ip, jp])
            for i in range(H):
                for j in range((c - a * i) % C, W, C):
                    tot = 0.0
                    for m in range(L):
                        x[bb, m, i, j] += omega * ((b[bb, m, i, j] - acc[m, i, j]) / lam[bb] - x[bb, m, i, j])
                        tot += x[bb, m, i, j]
                    s[i, j] = tot


def _colour_sweep(params, compiled_sweep, product_xp, x, b, lam, offsets, neighbourhood, omega):
    """Dispatch of the multicolour sweeps: the compiled kernel on NumPy, else the array version.

    ``compiled_sweep(params, x, b, lam, di, dj, a, C, omega)`` updates ``x`` in place;
    ``product_xp(xp, v)`` is ``A v`` for ``v`` of shape ``(B, L, H, W)`` on any backend.
    """
    if _use_numba(params):
        a, C = pixel_colouring(neighbourhood)
        di, dj = _offset_arrays(offsets)
        compiled_sweep(params, x, b, lam, di, dj, a, C, x.dtype.type(omega))
        return x
    from ...backend import get_array_module
    xp = get_array_module(params)
    lam = lam[:, None, None, None]
    # the full product per colour, the update applied at that colour's pixels only
    masks = xp.asarray(colour_masks(neighbourhood, *x.shape[-2:]))
    for c in range(masks.shape[0]):
        upd = x + omega * ((b - product_xp(xp, x)) / lam - x)
        x = xp.where(masks[c], upd, x)
    return x


def pairwise_colour_sweep(pw, x, b, lam, offsets, neighbourhood, omega):
    """One multicolour Gauss–Seidel (SOR) sweep on ``(lam I + A) x = b``, general blocks.

    Pixels are visited colour by colour (:func:`pixel_colouring`); all pixels of one colour are
    updated at once and exactly, ``x_p <- (1 - omega) x_p + omega (b_p - sum_{q != p} A_pq x_q) / lam``,
    because the ``L x L`` diagonal block of every pixel is ``lam I``.

    Parameters
    ----------
    pw : array ``(B, K, L, L, H, W)``
    x, b : arrays ``(B, L, H, W)``; ``x`` is updated in place on the CPU and returned
    lam : array ``(B,)``
    """
    def product(xp, v):
        out = xp.zeros_like(v)[None]
        _pairwise_product_xp(xp, pw, v[None], out, offsets)
        return out[0]

    return _colour_sweep(pw, _pairwise_colour_sweep_nb, product, x, b, lam, offsets, neighbourhood, omega)


def potts_colour_sweep(wt, x, b, lam, offsets, neighbourhood, omega):
    """One multicolour Gauss–Seidel (SOR) sweep on ``(lam I + A) x = b``, Potts weights
    (``(A x)_m = W (s - x_m)``, ``s = sum_l x_l``); see :func:`pairwise_colour_sweep`."""
    def product(xp, v):
        t = v.sum(axis=1, keepdims=True) - v
        out = xp.zeros_like(t)[None]
        _weight_product_xp(xp, wt, t[None], out, offsets)
        return out[0]

    return _colour_sweep(wt, _potts_colour_sweep_nb, product, x, b, lam, offsets, neighbourhood, omega)


# ---------------------------------------------------------------------------------------------
# conjugate gradients on the P x P systems (lam I + alpha W) of the Potts split


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _shifted_weight_cg_nb(wt, lam, rhs, x, di, dj, rtol, maxiter, iterations, eps, ctol, found):  # pragma: no cover
    # For every (e, b, r): CG on (lam[b] I + W_b) x = rhs with W_b from the (pre-scaled) weights
    # wt[b]; x holds the initial guess and is overwritten.  Stops when the recursively updated
    # residual satisfies ||r|| <= rtol ||rhs|| or after maxiter steps.  Inner products accumulate in
    # float64.  Returns -1 if all systems were positive definite along their Krylov directions,
    # else the flat index (e, b, r) of a system whose direction p failed the curvature test of
    # solvers.cg: p^T A p / p^T p <= -ctol eps max_k ||A p_k|| / ||p_k||, or <= 0 while the residual
    # is far above rounding level; found[0], found[1] then hold that Rayleigh quotient and the
    # threshold (0 in the second case).  A non-positive quotient at rounding level stops the system;
    # the recursive residual is not driven below eps^2 ||rhs||.
    E, B, R, H, W = x.shape
    P = H * W
    K = wt.shape[1]
    res = np.empty(P, dtype=x.dtype)
    p = np.empty(P, dtype=x.dtype)
    q = np.empty(P, dtype=x.dtype)
    for e in range(E):
        for b in range(B):
            lam_b = lam[b]
            for r in range(R):
                xs = x[e, b, r].reshape(P)
                bs = rhs[e, b, r].reshape(P)
                # q = A x (no product for x = 0, as solvers.cg without x0)
                zero_start = True
                for t in range(P):
                    q[t] = lam_b * xs[t]
                    if xs[t] != 0:
                        zero_start = False
                if not zero_start:
                    for k in range(K):
                        _edge_segments(wt[b, k].reshape(P), q, xs, q, xs, di[k], dj[k], H, W)
                bnorm2 = 0.0
                rr = 0.0
                for t in range(P):
                    res[t] = bs[t] - q[t]
                    p[t] = res[t]
                    bnorm2 += float(bs[t]) * float(bs[t])
                    rr += float(res[t]) * float(res[t])
                tol2 = max(rtol * rtol, eps ** 4) * bnorm2
                it = 0
                norm_est = 0.0
                while rr > tol2 and it < maxiter:
                    for t in range(P):
                        q[t] = lam_b * p[t]
                    for k in range(K):
                        _edge_segments(wt[b, k].reshape(P), q, p, q, p, di[k], dj[k], H, W)
                    pq = 0.0
                    pp = 0.0
                    qq = 0.0
                    for t in range(P):
                        pq += float(p[t]) * float(q[t])
                        pp += float(p[t]) * float(p[t])
                        qq += float(q[t]) * float(q[t])
                    if pp > 0.0:
                        norm_est = max(norm_est, np.sqrt(qq / pp))
                    if not pq > 0.0:  # the curvature test
                        if pp == 0.0:
                            break
                        rq = pq / pp
                        threshold = -ctol * eps * norm_est
                        if not rq > threshold:  # not positive definite (or NaN)
                            found[0] = rq
                            found[1] = threshold
                            return (e * B + b) * R + r
                        # within rounding of p^T A p: a proof all the same while the residual is
                        # far above rounding level ctol eps (||rhs|| + ||A||_est ||x||)
                        xx = 0.0
                        for t in range(P):
                            xx += float(xs[t]) * float(xs[t])
                        level = ctol * eps * (np.sqrt(bnorm2) + norm_est * np.sqrt(xx))
                        if np.sqrt(rr) > level:
                            found[0] = rq
                            found[1] = 0.0
                            return (e * B + b) * R + r
                        break  # rounding: stop here
                    alpha = rr / pq
                    rr_new = 0.0
                    for t in range(P):
                        xs[t] += alpha * p[t]
                        res[t] -= alpha * q[t]
                        rr_new += float(res[t]) * float(res[t])
                    beta = rr_new / rr
                    rr = rr_new
                    for t in range(P):
                        p[t] = res[t] + beta * p[t]
                    it += 1
                iterations[e, b, r] = it
    return -1


def shifted_weight_cg(wt, lam, rhs, x, offsets, rtol, maxiter):
    """CG on every ``P x P`` system ``(lam_b I + W_b) x = rhs`` of a stack, on the CPU.

    Parameters
    ----------
    wt : ndarray ``(B, K, H, W)``
        Edge weights of ``W_b`` (scaled as the system needs, e.g. ``(L - 1) w`` or ``-w``).
    lam : ndarray ``(B,)``
    rhs, x : ndarrays ``(E, B, R, H, W)``, C-contiguous; ``x`` (initial guess) is overwritten; a
        system whose ``x`` is zero starts without a product (``r = rhs``)
    rtol : float
        Stop when the recursively updated residual has ``||r|| <= rtol ||rhs||``.
    maxiter : int

    Returns
    -------
    iterations : int ndarray ``(E, B, R)``
    failed : int
        ``-1``, or the flat index of a system whose direction ``p`` failed the curvature test of
        :func:`solvers.cg` (``p^T A p / p^T p <= -c eps ||A||_est``, ``c`` =
        ``solvers.CURVATURE_TOLERANCE``, ``||A||_est = max_k ||A p_k|| / ||p_k||``).
    rayleigh : float
        That system's Rayleigh quotient ``p^T A p / p^T p`` (an upper bound of its
        ``lambda_min``), NaN when ``failed == -1``.

    A non-positive quotient above the threshold fails the test too while the residual is far
    above rounding level (``||r|| > c eps (||rhs|| + ||A||_est ||x||)``, as in :func:`solvers.cg`);
    at rounding level it is rounding: that system stops there (the caller's refinement measures
    the true residual).  The recursive residual is not driven below
    ``eps^2 ||rhs||``.
    """
    di, dj = _offset_arrays(offsets)
    iterations = np.zeros(x.shape[:3], dtype=np.int64)
    found = np.full(2, np.nan)
    eps = float(np.finfo(x.dtype).eps)
    failed = _shifted_weight_cg_nb(wt, lam, rhs, x, di, dj, float(rtol), int(maxiter), iterations,
                                   eps, float(CURVATURE_TOLERANCE), found)
    return iterations, int(failed), float(found[0])


@numba.njit(inline="always")
def _lanczos_pixels(cp, w, q, qp, a, b, di, dj, height, width, sq, cq, cpc, dots, beta2, start, stop, reach,
                    head, tail):  # pragma: no cover - compiled
    # The pixels [start, stop) of one Lanczos pass on E probes (columns): each pixel's new vector
    # x = sq w - cq q - cpc qp is formed just ahead of the first pixel that reads it, stored over qp,
    # and w is overwritten by M x as in _pairwise_product_columns_nb (w[d] is read before the
    # product writes there: every write of the product lies behind the frontier ``done``).  Only
    # the edges inside the range are applied; x . M x is accumulated for the pixels whose M x is
    # then final, all but the first ``head`` and the last ``tail``.
    L = cp.shape[3]
    E = w.shape[3]
    done = start
    for p in range(start, stop):
        i = p // width
        j = p - i * width
        top = min(stop, p + reach + 1)
        while done < top:
            for m in range(L):
                o = w[b, m, done]
                x0 = q[b, m, done]
                x1 = qp[b, m, done]
                for e in range(E):
                    x = sq[e] * o[e] - cq[e] * x0[e] - cpc[e] * x1[e]
                    x1[e] = x
                    beta2[e] += x * x
                    o[e] = a * x
            done += 1
        _pixel_edges(cp, qp, w, b, p, i, j, di, dj, height, width, start, stop)
        if p >= start + head and p < stop - tail:
            for m in range(L):
                o = w[b, m, p]
                x = qp[b, m, p]
                for e in range(E):
                    dots[e] += x[e] * o[e]


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={"contract"}, error_model="numpy")
def _lanczos_columns_nb(cp, w, q, qp, lam, di, dj, height, width, sq, cq, cpc, starts, dots, beta2,
                        band, dots_out, beta2_out):  # pragma: no cover - compiled
    # The pixels split into the ranges [starts[t], starts[t + 1]), each at least 2 reach + 1 long,
    # run as independent tasks (any thread, any order); then, per boundary between two ranges,
    # the edges that cross it and x . M x of the 2 reach pixels around it.  dots, beta2: (B, T, E)
    # per range; band: (B, T - 1, E) per boundary; summed at the end in a fixed order into
    # dots_out, beta2_out (B, E), so the result does not depend on the thread count.
    B, P, K = cp.shape[0], cp.shape[1], cp.shape[2]
    L = cp.shape[3]
    E = w.shape[3]
    T = starts.shape[0] - 1
    reach = 0
    for k in range(K):
        reach = max(reach, di[k] * width + dj[k])
    for task in numba.prange(B * T):
        b = task // T
        t = task - b * T
        _lanczos_pixels(cp, w, q, qp, lam[b], b, di, dj, height, width, sq, cq, cpc, dots[b, t], beta2[b, t],
                        starts[t], starts[t + 1], reach, reach if t > 0 else 0, reach if t < T - 1 else 0)
    for task in numba.prange(B * (T - 1)):
        b = task // (T - 1)
        t = task - b * (T - 1)
        cut = starts[t + 1]
        for p in range(cut - reach, cut):
            i = p // width
            _pixel_edges(cp, qp, w, b, p, i, p - i * width, di, dj, height, width, cut, P)
        acc = band[b, t]
        for p in range(cut - reach, cut + reach):
            for m in range(L):
                o = w[b, m, p]
                x = qp[b, m, p]
                for e in range(E):
                    acc[e] += x[e] * o[e]
    for b in range(B):
        for e in range(E):
            d = 0.0
            s2 = 0.0
            for t in range(T):
                d += dots[b, t, e]
                s2 += beta2[b, t, e]
            c = 0.0
            for t in range(T - 1):
                c += band[b, t, e]
            dots_out[b, e] = d + c
            beta2_out[b, e] = s2
    return w


#: pixel ranges of the one-pass Lanczos step (fixed, whatever the thread count: the same sums)
LANCZOS_RANGES = 8
#: the one-pass Lanczos step runs on several threads from this many block entries (pixels x labels x columns)
LANCZOS_PARALLEL_MIN_ENTRIES = 1 << 16


def lanczos_ranges(n_pixels, reach, ranges=LANCZOS_RANGES):
    """Starts of the pixel ranges of :func:`lanczos_columns`: at most ``ranges`` of about equal
    length, each at least ``4 reach`` pixels long (one range when the image is smaller)."""
    count = max(1, min(int(ranges), n_pixels // max(4 * reach, 1)))
    return np.linspace(0, n_pixels, count + 1).round().astype(np.int64)


@functools.lru_cache(maxsize=64)
def _lanczos_ranges_cached(n_pixels, reach):
    return lanczos_ranges(n_pixels, reach)


def lanczos_columns(pixel_blocks, w, q, qp, offsets, lam, height, width, sq, cq, cpc, threads=None):
    """One fused Lanczos pass on ``E`` probes stored as columns (compiled, NumPy float64).

    ``x = sq w - cq q - cpc qp`` (per column) is written over ``qp``, then ``w <- lam x + A x``.

    The pixels are split into at most :data:`LANCZOS_RANGES` ranges (:func:`lanczos_ranges`), run
    as independent tasks on :func:`product_threads` threads with dynamic scheduling
    (:mod:`gcrflinalg.threads`; one thread below :data:`LANCZOS_PARALLEL_MIN_ENTRIES`); the edges
    that cross a boundary between two ranges, and ``x . M x`` near it, follow.  The split does
    not depend on the thread count, so neither do the sums.

    Parameters
    ----------
    pixel_blocks : array, shape ``(B, H * W, K, L, L)``
        :func:`pixel_major` of the pairwise blocks.
    w, q, qp : arrays, shape ``(B, L, H * W, E)``, C-contiguous float64
        ``w`` holds ``M q`` (unnormalised) on entry.
    sq, cq, cpc : arrays, shape ``(E,)``
        The coefficients of the three-term recurrence.
    threads : int, optional
        Thread count (default :func:`product_threads`).

    Returns
    -------
    dots, beta2 : arrays, shape ``(B, E)``
        ``x . M x`` and ``||x||^2`` per column.
    """
    di, dj = _offset_arrays(offsets)
    B, L, P, E = w.shape
    starts = _lanczos_ranges_cached(P, int(max(int(a) * width + int(c) for a, c in offsets)))
    T = starts.size - 1
    dots = np.zeros((B, T, E))
    beta2 = np.zeros((B, T, E))
    band = np.zeros((B, max(T - 1, 0), E))
    dots_out = np.empty((B, E))
    beta2_out = np.empty((B, E))
    lam_arr = np.ascontiguousarray(lam, dtype=np.float64).reshape(-1)
    threads = product_threads() if threads is None else int(threads)
    threads = 1 if B * L * P * E < LANCZOS_PARALLEL_MIN_ENTRIES else max(1, min(threads, B * T))
    with threads_policy.parallel_kernel(threads):
        _lanczos_columns_nb(pixel_blocks, w, q, qp, lam_arr, di, dj, height, width,
                            np.ascontiguousarray(sq, dtype=np.float64), np.ascontiguousarray(cq, dtype=np.float64),
                            np.ascontiguousarray(cpc, dtype=np.float64), starts, dots, beta2, band, dots_out,
                            beta2_out)
    return dots_out, beta2_out
