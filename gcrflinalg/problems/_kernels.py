"""Compiled loops of the problem builders: the Lanczos vector updates, the k-means passes, the
product of a grid problem's pairwise part from its factors and the general grid's pairwise blocks.

Every result is a fixed sequence of IEEE operations, the same on any number of threads: sums over
long vectors keep eight partial sums per chunk of :data:`LANCZOS_CHUNK` elements (element ``i`` of
a chunk goes to sum ``i mod 8``), and the chunk sums are added in chunk order; each output entry of
a parallel product is written by one work item.  Nothing here calls BLAS: the threads a BLAS
library leaves spinning after a product slow the parallel kernels that follow it several times
over.  Parallel kernels follow :mod:`gcrflinalg.threads` (dynamic scheduling).

The k-means passes compute what the NumPy expressions they replace compute, in the same order (but
for the three-term products of a BLAS matrix product, which may be fused there), so the clusters do
not change: see :func:`gcrflinalg.problems.photo.colour_clusters`.
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["lanczos_orthogonalise", "scaled_copy", "nearer_squared_distances", "assign_and_sum",
           "squared_distances_to", "unaries_from_distances",
           "factor_product", "pairwise_blocks"]


#: elements per chunk of the Lanczos updates: each chunk's sum is formed on its own, and the chunk
#: sums are added in chunk order, so the result does not depend on how many threads ran
LANCZOS_CHUNK = 1 << 13

#: vectors of at least this length get their Lanczos updates from parallel threads
PARALLEL_MIN_LENGTH = 1 << 16


@numba.njit(cache=True, nogil=True)
def _update_dot(w, x, c, y):  # pragma: no cover - compiled
    # w -= c x in place, then y . w (eight partial sums, fixed order)
    n = w.shape[0]
    m = n - n % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for i in range(0, m, 8):
        w0 = w[i] - x[i] * c
        w1 = w[i + 1] - x[i + 1] * c
        w2 = w[i + 2] - x[i + 2] * c
        w3 = w[i + 3] - x[i + 3] * c
        w4 = w[i + 4] - x[i + 4] * c
        w5 = w[i + 5] - x[i + 5] * c
        w6 = w[i + 6] - x[i + 6] * c
        w7 = w[i + 7] - x[i + 7] * c
        w[i], w[i + 1], w[i + 2], w[i + 3] = w0, w1, w2, w3
        w[i + 4], w[i + 5], w[i + 6], w[i + 7] = w4, w5, w6, w7
        s0 += y[i] * w0
        s1 += y[i + 1] * w1
        s2 += y[i + 2] * w2
        s3 += y[i + 3] * w3
        s4 += y[i + 4] * w4
        s5 += y[i + 5] * w5
        s6 += y[i + 6] * w6
        s7 += y[i + 7] * w7
    tail = 0.0
    for i in range(m, n):
        w[i] -= x[i] * c
        tail += y[i] * w[i]
    return (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + tail


@numba.njit(cache=True, nogil=True)
def _chunk_update_dot(w, x, c, y, k):  # pragma: no cover - compiled
    # _update_dot on chunk k (views: indices from 0, so no negative-index checks in the loop)
    lo = k * LANCZOS_CHUNK
    hi = min(w.shape[0], lo + LANCZOS_CHUNK)
    return _update_dot(w[lo:hi], x[lo:hi], c, y[lo:hi])


@numba.njit(cache=True, nogil=True)
def _chunk_total(partial):  # pragma: no cover - compiled
    total = 0.0
    for k in range(partial.shape[0]):
        total += partial[k]
    return total


@numba.njit(cache=True, nogil=True, parallel=True)
def _orthogonalise_parallel(w, v, v_prev, beta, partial):  # pragma: no cover - compiled
    chunks = partial.shape[0]
    for k in numba.prange(chunks):
        partial[k] = _chunk_update_dot(w, v_prev, beta, v, k)
    alpha = _chunk_total(partial)
    for k in numba.prange(chunks):
        partial[k] = _chunk_update_dot(w, v, alpha, w, k)
    return alpha, _chunk_total(partial)


@numba.njit(cache=True, nogil=True)
def _orthogonalise_serial(w, v, v_prev, beta, partial):  # pragma: no cover - compiled
    chunks = partial.shape[0]
    for k in range(chunks):
        partial[k] = _chunk_update_dot(w, v_prev, beta, v, k)
    alpha = _chunk_total(partial)
    for k in range(chunks):
        partial[k] = _chunk_update_dot(w, v, alpha, w, k)
    return alpha, _chunk_total(partial)


def lanczos_orthogonalise(w, v, v_prev, beta):
    """``w -= beta v_prev``, ``alpha = v . w``, ``w -= alpha v`` in place; returns ``(alpha, w . w)``.

    All arrays of shape ``(n,)``, float64, C-contiguous: two passes over ``w``.  The sums are formed
    per chunk of :data:`LANCZOS_CHUNK` elements (eight partial sums each) and the chunk sums added
    in order: the same result on one thread or many, on every machine.
    """
    from .. import threads

    partial = np.empty(max(1, -(-w.shape[0] // LANCZOS_CHUNK)))
    if w.shape[0] >= PARALLEL_MIN_LENGTH and threads.get_num_threads() > 1:
        with threads.parallel_kernel():
            return _orthogonalise_parallel(w, v, v_prev, float(beta), partial)
    return _orthogonalise_serial(w, v, v_prev, float(beta), partial)


@numba.njit(cache=True, nogil=True, parallel=True)
def _scaled_copy_parallel(out, w, beta):  # pragma: no cover - compiled
    n = w.shape[0]
    for k in numba.prange(-(-n // LANCZOS_CHUNK)):
        for i in range(k * LANCZOS_CHUNK, min(n, (k + 1) * LANCZOS_CHUNK)):
            out[i] = w[i] / beta


@numba.njit(cache=True, nogil=True)
def _scaled_copy_serial(out, w, beta):  # pragma: no cover - compiled
    for i in range(w.shape[0]):
        out[i] = w[i] / beta


def scaled_copy(out, w, beta):
    """``out = w / beta`` (shape ``(n,)``)."""
    from .. import threads

    if w.shape[0] >= PARALLEL_MIN_LENGTH and threads.get_num_threads() > 1:
        with threads.parallel_kernel():
            _scaled_copy_parallel(out, w, float(beta))
    else:
        _scaled_copy_serial(out, w, float(beta))


@numba.njit(cache=True, nogil=True)
def nearer_squared_distances(pix, centre, d2):
    """``d2 = minimum(d2, sum((pix - centre) ** 2, axis=1))`` for ``pix (P, 3)``, ``centre (3,)``.

    The three squares are added left to right, as NumPy's sum over a length-3 axis does.
    """
    c0, c1, c2 = centre[0], centre[1], centre[2]
    for p in range(pix.shape[0]):
        x0 = pix[p, 0] - c0
        x1 = pix[p, 1] - c1
        x2 = pix[p, 2] - c2
        d = (x0 * x0 + x1 * x1) + x2 * x2
        if d < d2[p]:
            d2[p] = d


@numba.njit(inline="always")
def _assign_pixels(pix2, twice, centres, c2, labels, best, lo, hi):  # pragma: no cover - compiled
    # label by label over the pixels lo..hi (the inner loop over pixels vectorises): the same
    # distances as pixel by pixel, and the first minimum kept (a later label must be strictly nearer).
    # The loops index views from 0, so that the compiler knows the indices are not negative.
    L = centres.shape[0]
    q2, lab, bst = pix2[lo:hi], labels[lo:hi], best[lo:hi]
    t0, t1, t2 = twice[0, lo:hi], twice[1, lo:hi], twice[2, lo:hi]
    n = hi - lo
    a0, a1, a2 = centres[0, 0], centres[0, 1], centres[0, 2]
    for p in range(n):
        bst[p] = (q2[p] - ((t0[p] * a0 + t1[p] * a1) + t2[p] * a2)) + c2[0]
        lab[p] = 0
    for l in range(1, L):
        a0, a1, a2, cl = centres[l, 0], centres[l, 1], centres[l, 2], c2[l]
        for p in range(n):  # selects and unconditional stores: no branch in the loop
            d = (q2[p] - ((t0[p] * a0 + t1[p] * a1) + t2[p] * a2)) + cl
            nearer = d < bst[p]
            bst[p] = d if nearer else bst[p]
            lab[p] = l if nearer else lab[p]


@numba.njit(cache=True, nogil=True)
def _assign_serial(pix2, twice, centres, c2, labels, best):  # pragma: no cover - compiled
    P = labels.shape[0]
    for lo in range(0, P, ASSIGN_CHUNK):  # a chunk's rows stay in cache over the labels
        _assign_pixels(pix2, twice, centres, c2, labels, best, lo, min(P, lo + ASSIGN_CHUNK))


@numba.njit(cache=True, nogil=True, parallel=True)
def _assign_parallel(pix2, twice, centres, c2, labels, best):  # pragma: no cover - compiled
    P = labels.shape[0]
    chunks = -(-P // ASSIGN_CHUNK)
    for c in numba.prange(chunks):
        _assign_pixels(pix2, twice, centres, c2, labels, best, c * ASSIGN_CHUNK, min(P, (c + 1) * ASSIGN_CHUNK))


@numba.njit(cache=True, nogil=True)
def _label_sums(pix, labels, counts, sums):  # pragma: no cover - compiled
    counts[:] = 0
    sums[:] = 0.0
    for p in range(pix.shape[0]):
        lab = labels[p]
        counts[lab] += 1
        sums[lab, 0] += pix[p, 0]
        sums[lab, 1] += pix[p, 1]
        sums[lab, 2] += pix[p, 2]


#: pixels per task of the parallel k-means assignment
ASSIGN_CHUNK = 1024
#: the k-means assignment runs on the kernel threads from this many pixel-label pairs
ASSIGN_PARALLEL_MIN = 1 << 16


def assign_and_sum(pix, twice, pix2, centres, c2, labels, counts, sums):
    """One Lloyd assignment: ``labels[p] = argmin_l (pix2[p] - twice[p] . centres[l]) + c2[l]``
    (the first minimum, as ``argmin``), with the label counts and the per-label colour sums
    accumulated in pixel order (as ``bincount``).

    ``pix (P, 3)``, ``twice = (2 pix)^T`` of shape ``(3, P)`` (C-contiguous), ``pix2 (P,)`` the squared
    norms, ``centres (L, 3)``, ``c2 (L,)`` their squared norms; writes ``labels (P,)``, ``counts (L,)``,
    ``sums (L, 3)``.  The three-term
    products are added left to right here, where a BLAS product may fuse them: distances can differ
    in the last bit, which changes a label only at a tie to rounding.  No BLAS call: the threads a
    BLAS library leaves spinning after a product slow the parallel kernels that follow it (the
    spectrum's, the operator's) several times over.  The assignment of each pixel is independent
    (run on the kernel threads for large images; the same labels on any thread count); the sums
    run serially, in pixel order.
    """
    from .. import threads

    best = np.empty(labels.shape[0])
    if pix.shape[0] * centres.shape[0] >= ASSIGN_PARALLEL_MIN and threads.get_num_threads() > 1:
        with threads.parallel_kernel():
            _assign_parallel(pix2, twice, centres, c2, labels, best)
    else:
        _assign_serial(pix2, twice, centres, c2, labels, best)
    _label_sums(pix, labels, counts, sums)


@numba.njit(inline="always")
def _squared_norms(centres, out):  # pragma: no cover - compiled
    # (centres ** 2).sum(1): NumPy adds a length-3 row left to right
    for l in range(centres.shape[0]):
        out[l] = (centres[l, 0] * centres[l, 0] + centres[l, 1] * centres[l, 1]) + centres[l, 2] * centres[l, 2]


@numba.njit(inline="always")
def _lloyd_update(centres, counts, sums, new):  # pragma: no cover - compiled
    # new = where(counts > 0, sums / maximum(counts, 1), centres); returns all(|new - centres| <= 1e-10)
    done = True
    for l in range(centres.shape[0]):
        for j in range(3):
            v = sums[l, j] / float(max(counts[l], 1)) if counts[l] > 0 else centres[l, j]
            if not abs(v - centres[l, j]) <= 1e-10:
                done = False
            new[l, j] = v
    return done


def _lloyd_kernel(parallel):
    assign = _assign_parallel if parallel else _assign_serial

    def lloyd(pix, twice, pix2, centres, iterations, labels, counts, sums, best):  # pragma: no cover - compiled
        c2 = np.empty(centres.shape[0])
        new = np.empty_like(centres)
        for _ in range(iterations):
            _squared_norms(centres, c2)
            assign(pix2, twice, centres, c2, labels, best)
            _label_sums(pix, labels, counts, sums)
            done = _lloyd_update(centres, counts, sums, new)
            centres[:] = new
            if done:
                break

    return numba.njit(cache=True, nogil=True)(lloyd)


_lloyd_serial = _lloyd_kernel(False)
_lloyd_parallel = _lloyd_kernel(True)


def lloyd_iterations(pix, twice, pix2, centres, iterations, labels, counts, sums):
    """At most ``iterations`` Lloyd steps of k-means on ``centres (L, 3)`` (updated in place), in one
    compiled loop: :func:`assign_and_sum`, then ``centres = where(counts > 0, sums / maximum(counts,
    1), centres)``, stopping after the step that moved no centre coordinate by more than ``1e-10``
    (the NumPy expressions' operations in their order: the same centres to the bit).  Large images
    assign on the kernel threads, as :func:`assign_and_sum` does."""
    from .. import threads

    best = np.empty(labels.shape[0])
    if pix.shape[0] * centres.shape[0] >= ASSIGN_PARALLEL_MIN and threads.get_num_threads() > 1:
        with threads.parallel_kernel():
            _lloyd_parallel(pix, twice, pix2, centres, int(iterations), labels, counts, sums, best)
    else:
        _lloyd_serial(pix, twice, pix2, centres, int(iterations), labels, counts, sums, best)


#: pixels per tile of :func:`factor_product`: its ``D L x TILE`` block of gathered, weighted
#: neighbour values stays in the L1/L2 cache
TILE = 64


@numba.njit(inline="always", fastmath={"contract"})
def _factor_tile(stacked, weights, index, v, out, tile, z, acc):  # pragma: no cover - compiled
    # out[:, p] = sum_d M_d (weights[d, p] v[:, index[d, p]]) for the pixels p of one tile;
    # stacked = [M_0 .. M_{D-1}] of shape (L, D L); z[d L + n, t] = weights[d, p] v[n, index[d, p]]
    # (zero past the last pixel, so that the inner loops have TILE steps)
    D, P = weights.shape
    L = v.shape[0]
    p0 = tile * TILE
    T = min(TILE, P - p0)
    for d in range(D):
        u = weights[d, p0: p0 + T]
        q = index[d, p0: p0 + T]
        for n in range(L):
            zr = z[d * L + n]
            vn = v[n]
            for t in range(T):  # u = 0 where there is no edge (q then any valid column)
                zr[t] = u[t] * vn[q[t]]
            for t in range(T, TILE):
                zr[t] = 0.0
    J = D * L
    # out[m, p0 + t] = sum_j stacked[m, j] z[j, t], each sum one multiply-add per j in order from
    # zero (the same bits however the rows and the j are grouped).  Four rows at a time read each z
    # row once for all four, and four j at a time load and store each partial sum once per four
    # multiply-adds instead of once per one: the loop is then bound by the arithmetic, not the stores.
    m0 = 0
    while m0 + 4 <= L:
        _product_rows(stacked, z, out, p0, T, acc, m0, 4, J)
        m0 += 4
    while m0 < L:
        _product_rows(stacked, z, out, p0, T, acc, m0, 1, J)
        m0 += 1


@numba.njit(inline="always", fastmath={"contract"})
def _product_rows(stacked, z, out, p0, T, acc, m0, rows, J):  # pragma: no cover - compiled
    # rows 4 or 1 of the tile's product, starting at row m0 (see _factor_tile)
    J4 = J - J % 4
    if rows == 4:
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        for t in range(TILE):
            a0[t] = 0.0
            a1[t] = 0.0
            a2[t] = 0.0
            a3[t] = 0.0
        for j in range(0, J4, 4):
            z0, z1, z2, z3 = z[j], z[j + 1], z[j + 2], z[j + 3]
            c00, c01, c02, c03 = stacked[m0, j], stacked[m0, j + 1], stacked[m0, j + 2], stacked[m0, j + 3]
            c10, c11, c12, c13 = stacked[m0 + 1, j], stacked[m0 + 1, j + 1], stacked[m0 + 1, j + 2], stacked[m0 + 1, j + 3]
            c20, c21, c22, c23 = stacked[m0 + 2, j], stacked[m0 + 2, j + 1], stacked[m0 + 2, j + 2], stacked[m0 + 2, j + 3]
            c30, c31, c32, c33 = stacked[m0 + 3, j], stacked[m0 + 3, j + 1], stacked[m0 + 3, j + 2], stacked[m0 + 3, j + 3]
            for t in range(TILE):
                x0, x1, x2, x3 = z0[t], z1[t], z2[t], z3[t]
                s = a0[t]
                s += c00 * x0
                s += c01 * x1
                s += c02 * x2
                s += c03 * x3
                a0[t] = s
                s = a1[t]
                s += c10 * x0
                s += c11 * x1
                s += c12 * x2
                s += c13 * x3
                a1[t] = s
                s = a2[t]
                s += c20 * x0
                s += c21 * x1
                s += c22 * x2
                s += c23 * x3
                a2[t] = s
                s = a3[t]
                s += c30 * x0
                s += c31 * x1
                s += c32 * x2
                s += c33 * x3
                a3[t] = s
        for j in range(J4, J):
            zj = z[j]
            c0, c1, c2, c3 = stacked[m0, j], stacked[m0 + 1, j], stacked[m0 + 2, j], stacked[m0 + 3, j]
            for t in range(TILE):
                x = zj[t]
                a0[t] += c0 * x
                a1[t] += c1 * x
                a2[t] += c2 * x
                a3[t] += c3 * x
        for t in range(T):
            out[m0, p0 + t] = a0[t]
            out[m0 + 1, p0 + t] = a1[t]
            out[m0 + 2, p0 + t] = a2[t]
            out[m0 + 3, p0 + t] = a3[t]
    else:
        a0 = acc[0]
        for t in range(TILE):
            a0[t] = 0.0
        for j in range(0, J4, 4):
            z0, z1, z2, z3 = z[j], z[j + 1], z[j + 2], z[j + 3]
            c00, c01, c02, c03 = stacked[m0, j], stacked[m0, j + 1], stacked[m0, j + 2], stacked[m0, j + 3]
            for t in range(TILE):
                s = a0[t]
                s += c00 * z0[t]
                s += c01 * z1[t]
                s += c02 * z2[t]
                s += c03 * z3[t]
                a0[t] = s
        for j in range(J4, J):
            zj = z[j]
            c0 = stacked[m0, j]
            for t in range(TILE):
                a0[t] += c0 * zj[t]
        for t in range(T):
            out[m0, p0 + t] = a0[t]


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def _factor_product_parallel(stacked, weights, index, v, out):  # pragma: no cover - compiled
    D, P = weights.shape
    for tile in numba.prange((P + TILE - 1) // TILE):
        z = np.empty((D * v.shape[0], TILE))
        acc = np.empty((4, TILE))
        _factor_tile(stacked, weights, index, v, out, tile, z, acc)


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _factor_product_serial(stacked, weights, index, v, out):  # pragma: no cover - compiled
    D, P = weights.shape
    z = np.empty((D * v.shape[0], TILE))
    acc = np.empty((4, TILE))
    for tile in range((P + TILE - 1) // TILE):
        _factor_tile(stacked, weights, index, v, out, tile, z, acc)


#: products with fewer output entries than this run on one thread
PARALLEL_MIN_OUTPUTS = 1 << 15


def factor_product(stacked, weights, index, v, out):
    """``out[:, p] = sum_d M_d (weights[d, p] v[:, index[d, p]])``: the product of a grid problem's
    pairwise part from its factors (:class:`gcrflinalg.problems.coupling.GridCoupling`).

    Parameters
    ----------
    stacked : array ``(L, D L)``, the ``L x L`` matrices ``M_d`` side by side
    weights : array ``(D, P_out)``, zero where pixel ``p`` has no neighbour in direction ``d``
    index : int array ``(D, P_out)``, the neighbour's column of ``v`` (any valid column where the
        weight is zero)
    v : array ``(L, P_in)``; out : array ``(L, P_out)``, written

    Pixel tiles are independent (every output entry is written by one tile, in a fixed order of
    operations), so the result does not depend on the thread count; large products run in parallel
    under :mod:`gcrflinalg.threads`' policy (dynamic scheduling), like the grid operators' own.
    """
    from .. import threads

    if out.size >= PARALLEL_MIN_OUTPUTS and threads.get_num_threads() > 1:
        with threads.parallel_kernel():
            _factor_product_parallel(stacked, weights, index, v, out)
    else:
        _factor_product_serial(stacked, weights, index, v, out)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _blocks_parallel(compat, weights, out):  # pragma: no cover - compiled
    K, L = compat.shape[0], compat.shape[1]
    for r in numba.prange(K * L * L):
        k, m, n = r // (L * L), (r // L) % L, r % L
        c = compat[k, m, n]
        w = weights[k]
        o = out[k, m, n]
        for p in range(w.shape[0]):
            o[p] = c * w[p]


def pairwise_blocks(compat, weights):
    """``compat[:, :, :, None, None] * weights[:, None, None]``: the general grid's pairwise blocks
    ``(K, L, L, H, W)`` from ``compat (K, L, L)`` and ``weights (K, H, W)`` (the same products), written
    by parallel threads, which also share the first touch of the new pages."""
    from .. import threads

    compat = np.ascontiguousarray(compat, dtype=np.float64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    K, L = compat.shape[:2]
    out = np.empty((K, L, L) + weights.shape[1:])
    with threads.parallel_kernel():
        _blocks_parallel(compat, weights.reshape(K, -1), out.reshape(K, L, L, -1))
    return out


@numba.njit(cache=True, nogil=True)
def squared_distances_to(img, centres, out):  # pragma: no cover - compiled
    """``out[l, i, j] = |img[i, j] - centres[l]|^2`` for ``img (H, W, 3)``, ``centres (L, 3)``: the
    three squares added as ``numpy.einsum("lhwc,lhwc->lhw", diff, diff)`` adds them
    (``(x0^2 + x2^2) + x1^2``; tests/test_problem_spectrum.py checks the equality), without the
    ``(L, H, W, 3)`` difference array."""
    L, H, W = centres.shape[0], img.shape[0], img.shape[1]
    for l in range(L):
        c0, c1, c2 = centres[l, 0], centres[l, 1], centres[l, 2]
        for i in range(H):
            for j in range(W):
                x0 = img[i, j, 0] - c0
                x1 = img[i, j, 1] - c1
                x2 = img[i, j, 2] - c2
                out[l, i, j] = (x0 * x0 + x2 * x2) + x1 * x1


@numba.njit(cache=True, nogil=True)
def unaries_from_distances(d, scale, noise, z, out):  # pragma: no cover - compiled
    """``out = 1 - d / scale + noise * z`` (elementwise, in that order of operations)."""
    df, zf, of = d.reshape(-1), z.reshape(-1), out.reshape(-1)
    for i in range(df.shape[0]):
        of[i] = (1.0 - df[i] / scale) + noise * zf[i]
