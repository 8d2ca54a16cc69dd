"""Numba Gauss–Seidel sweeps of the low-rank G-CRFs (CPU), O(N D) per sweep, never ``N x N``.

A sweep visits the unknowns in their natural order ``n = l*P + p`` and keeps the embedding product
of the current iterate up to date, so each row of ``M x`` costs one ``D``-vector dot product.
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["gauss_seidel_general", "gauss_seidel_potts"]


@numba.njit(cache=True)
def gauss_seidel_general(rows, diag, lam, x, b, omega):  # pragma: no cover - compiled
    """One SOR sweep on ``(lam I + E^T E) x = b`` for each system, in place on ``x``.

    Parameters
    ----------
    rows : (B, N, D)  ``E^T``: row ``n`` holds the embedding ``E[:, n]``
    diag : (B, N)     ``lam + |E[:, n]|^2``
    lam : (B,)
    x, b : (B, N)

    Row ``n``: ``(M x)_n = lam x_n + E[:, n] . y`` with ``y = E x`` kept current;
    ``x_n <- x_n + omega (b_n - (M x)_n) / M_nn`` and ``y <- y + E[:, n] * change``.
    """
    nb, n, d = rows.shape
    y = np.zeros(d, dtype=rows.dtype)
    for bi in range(nb):
        y[:] = 0.0
        for i in range(n):
            xi = x[bi, i]
            for k in range(d):
                y[k] += rows[bi, i, k] * xi
        for i in range(n):
            acc = lam[bi] * x[bi, i]
            for k in range(d):
                acc += rows[bi, i, k] * y[k]
            step = omega * (b[bi, i] - acc) / diag[bi, i]
            x[bi, i] += step
            for k in range(d):
                y[k] += rows[bi, i, k] * step
    return x


@numba.njit(cache=True)
def gauss_seidel_potts(rows, lam, x, b, omega):  # pragma: no cover - compiled
    """One SOR sweep on the low-rank Potts system for each system, in place on ``x``.

    Parameters
    ----------
    rows : (B, P, D)  ``psi^T``: row ``p`` holds the embedding ``psi_p``
    lam : (B,)
    x, b : (B, L, P)

    Row ``(l, p)``: ``(M x)_{l,p} = lam x_{l,p} + psi_p . (Y_total - Y_l)`` with ``Y_m = psi x_m``
    and ``Y_total = sum_m Y_m`` kept current; the diagonal of ``M`` is ``lam``.
    """
    nb, p_count, d = rows.shape
    n_labels = x.shape[1]
    y = np.zeros((n_labels, d), dtype=rows.dtype)
    total = np.zeros(d, dtype=rows.dtype)
    for bi in range(nb):
        y[:, :] = 0.0
        total[:] = 0.0
        for m in range(n_labels):
            for p in range(p_count):
                xv = x[bi, m, p]
                for k in range(d):
                    y[m, k] += rows[bi, p, k] * xv
        for m in range(n_labels):
            for k in range(d):
                total[k] += y[m, k]
        for m in range(n_labels):
            for p in range(p_count):
                acc = lam[bi] * x[bi, m, p]
                for k in range(d):
                    acc += rows[bi, p, k] * (total[k] - y[m, k])
                step = omega * (b[bi, m, p] - acc) / lam[bi]
                x[bi, m, p] += step
                for k in range(d):
                    delta = rows[bi, p, k] * step
                    y[m, k] += delta
                    total[k] += delta
    return x


@numba.njit(cache=True, nogil=True)
def add_scaled(out, scale, v):  # pragma: no cover - compiled
    """``out += scale * v`` in place for 1-D arrays (no temporary: a product's ``+ lam v``)."""
    for i in range(out.size):
        out[i] += scale * v[i]
