"""Symmetric Gauss-Seidel / SSOR as a CG preconditioner, colour by colour (vectorised, CPU or GPU)."""
from __future__ import annotations

import time

import numpy as np

from .backend import asarray, get_array_module, to_host

from ._gauss_seidel import greedy_coloring
from ._operator import as_operator, compute_dtype

__all__ = ["ssor_preconditioner", "SSORPreconditioner"]


class SSORPreconditioner:
    """``z = M_SSOR^{-1} r``: one forward and one backward SOR sweep on ``A z = r`` from ``z = 0``.

    ``M_SSOR = (D / omega + L) (D / omega)^{-1} (D / omega + U) / (2 - omega)`` (``A = L + D +
    U``), symmetric positive definite for SPD ``A`` and ``0 < omega < 2``; ``omega = 1`` is
    symmetric Gauss-Seidel.  The unknowns are visited colour by colour (no two of one colour are
    coupled), forward through the colours and back, every colour's unknowns at once.

    Attributes
    ----------
    shape : ``(n, n)``
    dtype : numpy dtype
    omega : float
    num_colours : int
    matrix_free : bool
        True when the sweeps use only ``A``'s product and diagonal (an operator with
        ``colour_classes()``, e.g. the grid G-CRFs): ``2 C - 1`` products per application for ``C``
        colours.  False: row blocks of the assembled CSR matrix, about two products' work.
    setup_time_s : float
        Seconds spent building it (colouring, row blocks).
    """

    def __init__(self, op, omega, diag, classes=None, groups=None):
        self.op = op
        self.omega = float(omega)
        self.shape = (op.n, op.n)
        self.dtype = np.dtype(op.dtype)
        self._diag = diag
        self._classes = classes  # (C, n) boolean masks (matrix-free)
        self._groups = groups  # [(rows, csr rows, diag rows)] (CSR)
        self.matrix_free = classes is not None
        self.num_colours = int(classes.shape[0]) if classes is not None else len(groups)
        self.setup_time_s = 0.0

    def _order(self):
        C = self.num_colours
        return list(range(C)) + list(range(C - 1, -1, -1))

    def matvec(self, R):
        """``M_SSOR^{-1} R`` for ``R`` of shape ``(*batch, n)``."""
        xp = get_array_module(R)
        R = R.astype(self.dtype, copy=False)
        w = self.dtype.type(self.omega)
        X = xp.zeros_like(R)
        first = True
        if self.matrix_free:
            for c in self._order():
                mask = self._classes[c]
                # from X = 0 the first colour needs no product
                AX = 0 if first else self.op.apply(X)
                X = xp.where(mask, X + w * (R - AX) / self._diag, X)
                first = False
            return X
        shape = R.shape
        R2 = R.reshape(-1, self.shape[0])
        X = xp.zeros_like(R2)
        for c in self._order():
            rows, sub, d = self._groups[c]
            AX = (sub @ X.T).T
            X[:, rows] = X[:, rows] + w * (R2[:, rows] - AX) / d
        return X.reshape(shape)

    __call__ = matvec

    def __repr__(self):
        kind = "matrix-free" if self.matrix_free else "CSR"
        return (f"SSORPreconditioner(n={self.shape[0]}, omega={self.omega:g}, colours={self.num_colours}, "
                f"{kind}, dtype={self.dtype})")


def ssor_preconditioner(A, omega=1.0):
    """The SSOR (``omega = 1``: symmetric Gauss-Seidel) preconditioner of SPD ``A``, for :func:`cg`.

    Pass the result as ``M``: ``cg(A, b, M=ssor_preconditioner(A))``.  Ordering by colours keeps
    every half sweep a handful of vectorised updates (NumPy or CuPy):

    * an operator with ``colour_classes()`` (boolean ``(C, n)``: unknowns of one colour are not
      coupled; the grid G-CRFs provide their pixel colouring, red-black on 4-neighbourhoods) is
      swept matrix-free, with its own product and ``diagonal()``;
    * otherwise the CSR matrix (dense, sparse, or ``tocsr()``) is coloured greedily and swept by
      row blocks.

    Parameters
    ----------
    A : SPD matrix or operator (see above); a LinearOperator without entries is rejected
        (``TypeError``).
    omega : float in ``(0, 2)``

    Returns
    -------
    SSORPreconditioner
    """
    if not np.isfinite(omega) or not 0 < omega < 2:
        raise ValueError(f"ssor_preconditioner: omega must lie in (0, 2), got {omega!r}")
    t0 = time.perf_counter()
    op = as_operator(A, None)
    xp = op.xp
    diag = asarray(op.diagonal()).astype(op.dtype, copy=False)
    if not bool(xp.all(diag > 0)):
        raise ValueError(f"ssor_preconditioner: the diagonal of A must be positive (smallest entry "
                         f"{float(to_host(xp.min(diag))):.6g})")
    colour_classes = getattr(op.A, "colour_classes", None) if op.kind == "custom" else None
    if callable(colour_classes):
        classes = xp.asarray(colour_classes()).astype(bool)
        if classes.ndim != 2 or classes.shape[1] != op.n:
            raise ValueError(f"colour_classes() returned shape {tuple(classes.shape)}; expected (C, {op.n})")
        P = SSORPreconditioner(op, omega, diag, classes=classes)
    else:
        csr = op.csr()
        if csr is None:
            raise TypeError(
                f"ssor_preconditioner needs the matrix entries or a colouring: pass a dense or sparse "
                f"matrix, or an operator with tocsr() (one matrix, not a batch) or colour_classes(); got "
                f"{type(op.A).__name__}")
        dtype = compute_dtype(csr.dtype)
        csr = csr.astype(dtype)
        d = diag.reshape(-1, op.n)
        if d.shape[0] > 1 and not bool(xp.all(d == d[:1])):
            raise TypeError("ssor_preconditioner: the operator holds one matrix per batch item; it needs "
                            "colour_classes() for matrix-free sweeps")
        d = d[0]
        colours = greedy_coloring(csr)
        host = csr.get() if type(csr).__module__.startswith("cupyx") else csr
        from .backend import sparse_module

        sp = sparse_module(xp)
        groups = []
        for c in range(int(colours.max()) + 1 if colours.size else 0):
            rows_h = np.flatnonzero(colours == c)
            rows = xp.asarray(rows_h)
            groups.append((rows, sp.csr_matrix(host[rows_h]), d[rows]))
        P = SSORPreconditioner(op, omega, d, groups=groups)
    P.setup_time_s = time.perf_counter() - t0
    return P
