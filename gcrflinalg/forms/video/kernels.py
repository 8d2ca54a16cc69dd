"""Compiled kernels of the video G-CRF: the natural-order Gauss–Seidel/SOR sweep."""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["gauss_seidel_video"]


@numba.njit(cache=True)
def gauss_seidel_video(s_rows, t_rows, diag, coupling, lam, x, b, omega):  # pragma: no cover - compiled
    """One SOR sweep on the video system for each system of the batch, in place on ``x``.

    Parameters
    ----------
    s_rows : (B, V, n, Ds)  ``S_v^T``: row ``i`` holds ``S_v[:, i]``
    t_rows : (B, V, n, Dt)  ``T_v^T``
    diag : (B, V, n)        ``lam + |S_v[:, i]|^2``
    coupling : (V, V)       ``K``
    lam : (B,)
    x, b : (B, V, n)

    Unknowns are visited frame by frame in the natural order.  Row ``(u, i)``:
    ``(M x)_{u,i} = lam x_{u,i} + S_u[:, i] . s_u + T_u[:, i] . c_u`` with ``s_u = S_u x_u`` kept
    current and ``c_u = sum_v K[u, v] T_v x_v``, which does not change while frame ``u`` is swept
    (``K[u, u] = 0``); ``t_u = T_u x_u`` is kept current for the frames after ``u``.
    """
    nb, n_frames, n, ds = s_rows.shape
    dt = t_rows.shape[3]
    s = np.zeros(ds, dtype=s_rows.dtype)
    t = np.zeros((n_frames, dt), dtype=t_rows.dtype)
    c = np.zeros(dt, dtype=t_rows.dtype)
    for bi in range(nb):
        t[:, :] = 0.0
        for v in range(n_frames):
            for i in range(n):
                xi = x[bi, v, i]
                for k in range(dt):
                    t[v, k] += t_rows[bi, v, i, k] * xi
        for u in range(n_frames):
            s[:] = 0.0
            for i in range(n):
                xi = x[bi, u, i]
                for k in range(ds):
                    s[k] += s_rows[bi, u, i, k] * xi
            c[:] = 0.0
            for v in range(n_frames):
                if coupling[u, v] != 0.0:
                    for k in range(dt):
                        c[k] += coupling[u, v] * t[v, k]
            for i in range(n):
                acc = lam[bi] * x[bi, u, i]
                for k in range(ds):
                    acc += s_rows[bi, u, i, k] * s[k]
                for k in range(dt):
                    acc += t_rows[bi, u, i, k] * c[k]
                step = omega * (b[bi, u, i] - acc) / diag[bi, u, i]
                x[bi, u, i] += step
                for k in range(ds):
                    s[k] += s_rows[bi, u, i, k] * step
                for k in range(dt):
                    t[u, k] += t_rows[bi, u, i, k] * step
    return x
