"""Compiled (Numba) step of the lock-step Lanczos recurrence on the CPU.

The recurrence's passes are fused: ``alpha = q . w`` (skipped when the product computed it), then
``w <- w - alpha q - beta_prev q_prev`` together with ``||w||^2`` (optionally on unnormalised
vectors with their scales); one probe at a time (its three vectors fit in cache) for probe-major
(C-ordered ``(K, N)``) arrays, one unknown at a time across all probes for probe-minor (Fortran-ordered
``(K, N)``, the layout of a sparse-times-dense block product ``A V^T``).  The
array-expression code of :class:`gcrflinalg.gaussian.lanczos.LanczosState` computes the same
quantities on any backend (CuPy, and NumPy under the array-kernel switch).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..backend import _array_kernels_on

__all__ = ["fused_lanczos_available", "lanczos_update", "gauss_nodes"]


def fused_lanczos_available(*arrays) -> bool:
    """True when the compiled update applies: float64 NumPy arrays, all C-contiguous or all 2-D and
    Fortran-contiguous, and the array-kernel switch off."""
    if _array_kernels_on() or not all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in arrays):
        return False
    return all(a.flags.c_contiguous for a in arrays) or all(
        a.ndim == 2 and a.flags.f_contiguous for a in arrays)


@numba.njit(cache=True, nogil=True)
def _lanczos_update_nb(w, q, q_prev, beta_prev, sq, sp, alpha, beta2, known):  # pragma: no cover - compiled
    # known: alpha holds q . w on entry (computed with the product)
    K, N = w.shape
    for k in range(K):
        wk, qk, pk = w[k], q[k], q_prev[k]
        s = alpha[k]
        if not known:
            s = 0.0
            for i in range(N):
                s += qk[i] * wk[i]
        c = sq[k]
        a = c * c * s
        cw = c
        cq = a * c
        cp = beta_prev[k] * sp[k]
        t = 0.0
        for i in range(N):
            x = cw * wk[i] - cq * qk[i] - cp * pk[i]
            wk[i] = x
            t += x * x
        alpha[k] = a
        beta2[k] = t


@numba.njit(cache=True, nogil=True)
def _lanczos_update_t_nb(w, q, q_prev, beta_prev, sq, sp, alpha, beta2, known):  # pragma: no cover - compiled
    # w, q, q_prev: (N, K) C-contiguous (the transposes of Fortran-ordered (K, N) arrays);
    # known: alpha holds q . w on entry (computed with the product)
    N, K = w.shape
    cq = np.empty(K)
    cp = np.empty(K)
    for k in range(K):
        beta2[k] = 0.0
    if not known:
        for k in range(K):
            alpha[k] = 0.0
        for i in range(N):
            for k in range(K):
                alpha[k] += q[i, k] * w[i, k]
    for k in range(K):
        alpha[k] *= sq[k] * sq[k]
        cq[k] = alpha[k] * sq[k]
        cp[k] = beta_prev[k] * sp[k]
    for i in range(N):
        for k in range(K):
            x = sq[k] * w[i, k] - cq[k] * q[i, k] - cp[k] * q_prev[i, k]
            w[i, k] = x
            beta2[k] += x * x


def lanczos_update(w, q, q_prev, beta_prev, q_scale=None, prev_scale=None, dots=None):
    """In place ``w <- w - alpha q - beta_prev q_prev`` with ``alpha = q . w`` per probe.

    With ``q_scale`` ``s`` and ``prev_scale`` ``s'`` the vectors are given unnormalised: the
    Lanczos vectors are ``s q`` and ``s' q_prev`` and ``w = M q`` on entry, so that
    ``alpha = s^2 q . w`` and ``w <- s w - alpha s q - beta_prev s' q_prev`` (the normalisation of
    the previous step's ``w`` folded into this pass).

    Parameters
    ----------
    w, q, q_prev : numpy.ndarray, shape ``(*probes, N)``, float64, all C-contiguous (or all 2-D and
        Fortran-contiguous)
        ``w = M q`` on entry (overwritten).
    beta_prev : numpy.ndarray, shape ``probes``
    q_scale, prev_scale : numpy.ndarray, shape ``probes``, optional
        Scales of ``q`` and ``q_prev`` (1 when not given).
    dots : numpy.ndarray, shape ``probes``, optional
        ``q . w`` when the product computed it already (the first pass is then skipped).

    Returns
    -------
    alpha, beta2 : numpy.ndarray, shape ``probes``
        ``q . (M q)`` and ``||w||^2`` after the update.
    """
    shape = w.shape[:-1]
    n = w.shape[-1]
    k = int(np.prod(shape))
    known = dots is not None
    alpha = np.array(dots, dtype=np.float64).reshape(k) if known else np.empty(k)
    beta2 = np.empty(k)
    bp = np.ascontiguousarray(beta_prev, dtype=np.float64).reshape(k)
    ones = np.ones(k)
    sq = ones if q_scale is None else np.ascontiguousarray(q_scale, dtype=np.float64).reshape(k)
    sp = ones if prev_scale is None else np.ascontiguousarray(prev_scale, dtype=np.float64).reshape(k)
    if not w.flags.c_contiguous:  # Fortran-ordered (K, N): probe-minor loops on the transposes
        _lanczos_update_t_nb(w.T, q.T, q_prev.T, bp, sq, sp, alpha, beta2, known)
        return alpha, beta2
    _lanczos_update_nb(w.reshape(k, n), q.reshape(k, n), q_prev.reshape(k, n),
                       bp, sq, sp, alpha, beta2, known)
    return alpha.reshape(shape), beta2.reshape(shape)


@numba.njit(cache=True, nogil=True)
def _gauss_nodes_nb(a, b, theta, s0, row):  # pragma: no cover - compiled
    # Implicit QL with Wilkinson shifts on each tridiagonal (diagonal a[p], off-diagonal b[p]),
    # applying the rotations to one row of the eigenvector matrix only (the first: Golub-Welsch).
    # Returns False when some eigenvalue needs more than 60 sweeps.
    P, k = a.shape
    d = np.empty(k)
    e = np.empty(k)
    z = np.empty(k)
    for p in range(P):
        for i in range(k):
            d[i] = a[p, i]
            z[i] = 0.0
            e[i] = b[p, i] if i < k - 1 else 0.0
        z[row] = 1.0
        for l in range(k):
            sweeps = 0
            while True:
                m = l
                while m < k - 1:
                    dd = abs(d[m]) + abs(d[m + 1])
                    if abs(e[m]) + dd == dd:
                        break
                    m += 1
                if m == l:
                    break
                sweeps += 1
                if sweeps > 60:
                    return False
                g = (d[l + 1] - d[l]) / (2.0 * e[l])
                r = math.hypot(g, 1.0)
                g = d[m] - d[l] + e[l] / (g + (r if g >= 0.0 else -r))
                s = 1.0
                c = 1.0
                shift = 0.0
                i = m - 1
                deflated = False
                while i >= l:
                    f = s * e[i]
                    bb = c * e[i]
                    r = math.hypot(f, g)
                    e[i + 1] = r
                    if r == 0.0:  # underflow: split the matrix here and sweep again
                        d[i + 1] -= shift
                        e[m] = 0.0
                        deflated = True
                        break
                    s = f / r
                    c = g / r
                    g = d[i + 1] - shift
                    r = (d[i] - g) * s + 2.0 * c * bb
                    shift = s * r
                    d[i + 1] = g + shift
                    g = c * r - bb
                    f = z[i + 1]
                    z[i + 1] = s * z[i] + c * f
                    z[i] = c * z[i] - s * f
                    i -= 1
                if deflated:
                    continue
                d[l] -= shift
                e[l] = g
                e[m] = 0.0
        for i in range(k):
            theta[p, i] = d[i]
            s0[p, i] = z[i]
    return True


def gauss_nodes(alpha, beta, row=0):
    """Eigenvalues and first eigenvector components of symmetric tridiagonal matrices
    (Golub–Welsch: the nodes and, squared, the weights of the Gauss quadrature); with
    ``row=-1`` the last components instead (Lanczos's residual bounds ``beta_k |S[k, i]|``).

    Parameters
    ----------
    alpha : numpy.ndarray, shape ``(P, k)``
        Diagonals.
    beta : numpy.ndarray, shape ``(P, k - 1)``
        Off-diagonals.

    Returns
    -------
    (theta, s0) : numpy.ndarray, shape ``(P, k)``, or None
        Unordered eigenvalues and the ``row``-th components of their unit eigenvectors (exactly 0 for
        an eigenvalue of a block decoupled from the first row by a zero ``beta``); None when the
        implicit QL iteration did not converge (the caller falls back to a full eigensolver).
    """
    a = np.ascontiguousarray(alpha, dtype=np.float64)
    P, k = a.shape
    b = np.zeros((P, max(k, 1)))
    if k > 1:
        b[:, : k - 1] = beta
    theta = np.empty((P, k))
    s0 = np.empty((P, k))
    if not _gauss_nodes_nb(a, b, theta, s0, int(row) % max(k, 1)):
        return None
    return theta, s0
