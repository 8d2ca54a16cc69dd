"""Compiled loops of the problem builders: the Lanczos vector updates and the k-means passes.

Serial Numba loops (no thread pool), without fast-math, so every result is a fixed sequence of IEEE
operations: the same on every machine.  Sums over long vectors keep eight partial sums (element
``i`` goes to sum ``i mod 8``), added in a fixed order at the end: as deterministic as one running
sum, and not limited by the latency of one chain of additions.

The k-means passes compute exactly what the NumPy expressions they replace compute (the same
operations in the same order), so the clusters do not change: see
:func:`gcrflinalg.problems.photo.colour_clusters`.
"""
from __future__ import annotations

import numba

__all__ = ["lanczos_orthogonalise", "scaled_copy", "nearer_squared_distances", "assign_and_sum"]


@numba.njit(cache=True, nogil=True)
def _update_dot(w, x, c, y):
    """``w -= c x`` in place, then ``y . w`` (eight partial sums, fixed order)."""
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
def lanczos_orthogonalise(w, v, v_prev, beta):
    """``w -= beta v_prev``, ``alpha = v . w``, ``w -= alpha v`` in place; returns ``(alpha, w . w)``.

    All arrays of shape ``(n,)``, float64, C-contiguous: two passes over ``w``.
    """
    alpha = _update_dot(w, v_prev, beta, v)
    return alpha, _update_dot(w, v, alpha, w)


@numba.njit(cache=True, nogil=True)
def scaled_copy(out, w, beta):
    """``out = w / beta`` (shape ``(n,)``)."""
    for i in range(w.shape[0]):
        out[i] = w[i] / beta


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


@numba.njit(cache=True, nogil=True)
def assign_and_sum(pix, pix2, cross2, c2, labels, counts, sums):
    """One Lloyd assignment: ``labels[p] = argmin_l (pix2[p] - cross2[p, l]) + c2[l]`` (the first
    minimum), with the label counts and the per-label colour sums accumulated in pixel order.

    ``pix (P, 3)``, ``pix2 (P,)`` the squared norms, ``cross2 (P, L) = (2 pix) @ centres^T``,
    ``c2 (L,)`` the centres' squared norms; writes ``labels (P,)``, ``counts (L,)``, ``sums (L, 3)``.
    """
    P, L = cross2.shape
    counts[:] = 0
    sums[:] = 0.0
    for p in range(P):
        best = 0
        dbest = (pix2[p] - cross2[p, 0]) + c2[0]
        for l in range(1, L):
            d = (pix2[p] - cross2[p, l]) + c2[l]
            if d < dbest:
                dbest = d
                best = l
        labels[p] = best
        counts[best] += 1
        sums[best, 0] += pix[p, 0]
        sums[best, 1] += pix[p, 1]
        sums[best, 2] += pix[p, 2]

