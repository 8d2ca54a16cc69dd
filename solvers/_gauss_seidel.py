"""Gauss-Seidel / SOR sweeps: natural ordering (Numba, CPU) or multicolour (vectorised, CPU/GPU)."""
from __future__ import annotations

import time

import numpy as np
from numba import njit

from .backend import array_kernels_on, sparse_module, to_host

from ._jacobi import positive_diagonal
from ._operator import prepare
from ._stationary import stationary_loop

__all__ = ["gauss_seidel", "greedy_coloring"]


@njit(cache=True)
def _sor_sweep_csr(indptr, indices, data, diag, x, b, omega, active):  # pragma: no cover - compiled
    """One forward SOR sweep over the rows of a CSR matrix, in place, for each active system."""
    nsys, n = x.shape
    for s in range(nsys):
        if not active[s]:
            continue
        for i in range(n):
            acc = b[s, i]
            for k in range(indptr[i], indptr[i + 1]):
                j = indices[k]
                if j != i:
                    acc -= data[k] * x[s, j]
            x[s, i] = (1.0 - omega) * x[s, i] + omega * acc / diag[i]


@njit(cache=True)
def _greedy_coloring(indptr, indices, n):  # pragma: no cover - compiled
    colors = np.full(n, -1, dtype=np.int64)
    mark = np.full(n + 1, -1, dtype=np.int64)
    for i in range(n):
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            if j != i and colors[j] >= 0:
                mark[colors[j]] = i
        c = 0
        while mark[c] == i:
            c += 1
        colors[i] = c
    return colors


def greedy_coloring(csr):
    """Greedy colouring of the (symmetrised) sparsity graph of a CSR matrix.

    Returns a host int array ``colors`` of shape ``(n,)`` such that no two rows of one colour are
    coupled by a nonzero ``a_ij`` or ``a_ji``.
    """
    import scipy.sparse as sp

    P = sp.csr_matrix(
        (np.ones(len(to_host(csr.indices))), to_host(csr.indices), to_host(csr.indptr)), shape=csr.shape
    )
    P = (P + P.T).tocsr()
    P.sort_indices()
    return _greedy_coloring(P.indptr.astype(np.int64), P.indices.astype(np.int64), P.shape[0])


def _warm_up(pb, kernel, *args):
    """Call a Numba kernel on an empty problem so that its one-time compilation (or cache load)
    is done now, and leave that time out of the solver's ``time_s``."""
    t = time.perf_counter()
    kernel(*args)
    pb.t0 += time.perf_counter() - t


class _MulticolorSweeper:
    """SOR sweep by colour classes: all rows of one colour are updated at once (NumPy or CuPy)."""

    def __init__(self, xp, csr, diag):
        sp = sparse_module(xp)
        colors = greedy_coloring(csr)
        host = csr.get() if type(csr).__module__.startswith("cupyx") else csr  # colours on the host
        self.groups = []
        for c in range(int(colors.max()) + 1 if colors.size else 0):
            rows_h = np.flatnonzero(colors == c)
            rows = xp.asarray(rows_h)
            sub = sp.csr_matrix(host[rows_h])  # rows of colour c, all columns
            self.groups.append((rows, sub, diag[rows]))

    def sweep(self, xp, X, B, omega, active):
        # X, B: (nsys, n); x_R <- x_R + omega (b_R - A_R x) / d_R  (A_R x includes the diagonal term)
        for rows, sub, d in self.groups:
            AX = (sub @ X.T).T
            new = X[:, rows] + omega * (B[:, rows] - AX) / d
            X[:, rows] = xp.where(active[:, None], new, X[:, rows])
        return X


def gauss_seidel(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, omega=1.0, ordering="auto",
                 callback=None):
    """Solve ``A x = b`` with Gauss-Seidel (``omega = 1``) or SOR sweeps.

    One iteration is one forward sweep over the unknowns ``i`` (in the chosen order)::

        x_i <- (1 - omega) x_i + omega / a_ii * (b_i - sum_{j != i} a_ij x_j)

    using the newest values of ``x_j``.  For a Gaussian model with ``omega = 1`` this is the
    sequential mean-field update.  Converges for SPD ``A`` and ``0 < omega < 2``.

    Orderings:

    * ``"natural"``: rows ``0..n-1`` in order, a Numba kernel over the CSR rows (CPU only; a dense
      ``A`` is converted to CSR once).
    * ``"multicolor"``: greedy colouring of the sparsity graph; all rows of one colour are updated
      at once with a sparse product (vectorised; works on CuPy).  Same fixed point, different path.
    * ``"auto"``: natural on the CPU, multicolour on the GPU (and on the CPU when the array-kernel
      switch of :mod:`solvers.backend` is on, so that tests run the GPU's path).

    If ``A`` has a method ``gauss_seidel_sweep(x, b, omega)`` (``x``, ``b`` of shape
    ``(*batch, n)``, returning the swept ``x``), it is used whatever ``ordering`` says (the G-CRF
    operators provide multicolour sweeps).  Otherwise ``A`` must be dense, sparse, or provide
    ``tocsr()``; a LinearOperator is rejected with ``TypeError``.

    Parameters
    ----------
    A : dense array ``(n, n)``, sparse matrix, or operator with ``gauss_seidel_sweep``/``tocsr``
    b : array, shape ``(n,)`` or ``(*batch, n)``
    x0 : array, shape ``b.shape``, optional (never modified)
    rtol, atol : float
        Stopping rule ``||b - A x||_2 <= max(rtol ||b||_2, atol)`` per system.
    maxiter : int, optional
        Maximum number of sweeps (default ``10 n``).
    omega : float
        Relaxation factor, ``0 < omega < 2``.
    ordering : {"auto", "natural", "multicolor"}
    callback : callable, optional
        Called as ``callback(x)`` after every sweep.

    Returns
    -------
    SolveResult
        ``info = -1`` when the iteration diverged to Inf/NaN.
        ``residual_norms`` are true residual norms after each sweep (one product per sweep).
        ``time_s`` leaves out Numba's one-time compilation (or cache load) of the sweep kernels.
    """
    if not np.isfinite(omega) or not 0 < omega < 2:
        raise ValueError(f"gauss_seidel: omega must lie in (0, 2), got {omega!r}")
    if ordering not in ("auto", "natural", "multicolor"):
        raise ValueError(f"gauss_seidel: ordering must be 'auto', 'natural' or 'multicolor', got {ordering!r}")
    pb = prepare(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, method="gauss_seidel")
    xp, op, b, x, dt = pb.xp, pb.op, pb.b, pb.x, pb.dtype
    maxiter = 10 * pb.n if pb.maxiter is None else pb.maxiter
    n = pb.n
    w = dt.type(omega)
    if b.size == 0:  # an empty batch: nothing to solve, an empty result like the other solvers
        return stationary_loop(pb, x, lambda x, r, active: x, maxiter, callback)

    custom_sweep = getattr(op.A, "gauss_seidel_sweep", None) if op.kind == "custom" else None
    if custom_sweep is not None:
        def sweep(X, active):
            Xn = custom_sweep(X.copy(), b, omega)  # the sweep may overwrite its x; X is kept for masking
            return xp.where(active[..., None], xp.asarray(Xn).astype(dt, copy=False), X)
    else:
        csr = op.csr()
        if csr is None:
            raise TypeError(
                f"gauss_seidel needs the matrix entries: pass a dense or sparse matrix, or an operator "
                f"with gauss_seidel_sweep(x, b, omega) or tocsr(); got {type(op.A).__name__}"
            )
        csr = csr.astype(dt)
        diag = positive_diagonal(pb, "gauss_seidel")
        if op.kind == "custom" and op.diagonal().ndim > 1 and np.prod(op.diagonal().shape[:-1]) > 1:
            # guard: one CSR matrix cannot stand for an operator with a matrix per batch item
            raise TypeError(
                f"gauss_seidel: {type(op.A).__name__} holds one matrix per batch item; it needs a "
                "gauss_seidel_sweep(x, b, omega) method"
            )
        diag = diag.reshape(-1, n)[0]  # one matrix: its diagonal
        if ordering == "auto":
            ordering = "natural" if xp is np and not array_kernels_on() else "multicolor"
        nb = int(np.prod(pb.batch, dtype=np.int64))
        B2 = xp.ascontiguousarray(b.reshape(nb, n))
        if ordering == "natural":
            if xp is not np:
                raise ValueError("gauss_seidel: ordering='natural' runs on the CPU only; use 'multicolor' on the GPU")
            indptr, indices = csr.indptr, csr.indices
            data = np.ascontiguousarray(csr.data, dtype=dt)
            dg = np.ascontiguousarray(diag, dtype=dt)
            empty = np.empty((0, n), dtype=dt)
            _warm_up(pb, _sor_sweep_csr, indptr, indices, data, dg, empty, empty.copy(), float(omega),
                     np.empty(0, dtype=bool))

            def sweep(X, active):
                X2 = np.array(X.reshape(nb, n), dtype=dt, order="C", copy=True)
                _sor_sweep_csr(indptr, indices, data, dg, X2, B2, float(omega),
                               np.ascontiguousarray(active.reshape(nb)))
                return X2.reshape(X.shape)
        else:
            _warm_up(pb, _greedy_coloring, np.zeros(1, np.int64), np.zeros(0, np.int64), 0)
            sweeper = _MulticolorSweeper(xp, csr, diag)

            def sweep(X, active):
                X2 = X.reshape(nb, n).copy()
                X2 = sweeper.sweep(xp, X2, B2, w, active.reshape(nb))
                return X2.reshape(X.shape)

    return stationary_loop(pb, x, lambda x, r, active: sweep(x, active), maxiter, callback)
