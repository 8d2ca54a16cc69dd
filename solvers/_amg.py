"""Algebraic multigrid (PyAMG, the optional extra ``amg``) as a CG preconditioner."""
from __future__ import annotations

import time

import numpy as np

from .backend import get_array_module

from ._operator import as_operator

__all__ = ["amg_preconditioner", "AMGPreconditioner", "AMG_KINDS"]

#: the PyAMG hierarchies ``amg_preconditioner`` builds, by name
AMG_KINDS = ("ruge_stuben", "smoothed_aggregation")


def _pyamg():
    try:
        import pyamg
    except ImportError:
        raise ImportError(
            "amg_preconditioner needs PyAMG, the optional extra 'amg': pip install 'gcrflinalg[amg]' "
            "(or pip install pyamg)") from None
    return pyamg


class AMGPreconditioner:
    """One multigrid V-cycle of a PyAMG hierarchy per application (``z ~ A^{-1} r``).

    Attributes
    ----------
    shape : ``(n, n)``
    dtype : numpy dtype
    kind : str
    hierarchy : pyamg.multilevel.MultilevelSolver
    setup_time_s : float
        Seconds spent assembling ``A`` (when given as an operator) and building the hierarchy:
        the setup a solve pays once, reported apart from the iterations.
    """

    def __init__(self, hierarchy, kind, n, dtype, setup_time_s, cycle="V"):
        self.hierarchy = hierarchy
        self.kind = kind
        self.shape = (n, n)
        self.dtype = np.dtype(dtype)
        self.setup_time_s = float(setup_time_s)
        self._apply = hierarchy.aspreconditioner(cycle=cycle)

    def matvec(self, R):
        """One V-cycle from zero on every system of ``R`` (shape ``(*batch, n)``, NumPy)."""
        xp = get_array_module(R)
        if xp is not np:
            raise TypeError("amg_preconditioner runs on the CPU (PyAMG): pass NumPy arrays")
        n = self.shape[0]
        R2 = np.asarray(R, dtype=np.float64).reshape(-1, n)
        Z = np.empty_like(R2)
        for i in range(R2.shape[0]):
            Z[i] = self._apply.matvec(R2[i])
        return Z.reshape(R.shape).astype(R.dtype, copy=False)

    __call__ = matvec

    def __repr__(self):
        return (f"AMGPreconditioner(kind={self.kind!r}, n={self.shape[0]}, levels={len(self.hierarchy.levels)}, "
                f"setup_time_s={self.setup_time_s:.3g})")


def amg_preconditioner(A, kind="ruge_stuben", **options):
    """An algebraic multigrid V-cycle (PyAMG) on the assembled matrix of ``A``, for :func:`cg`.

    ``cg(A, b, M=amg_preconditioner(A))`` runs CG with the project's stopping rule (the true
    residual relative to ``||b||``), not PyAMG's own (relative to ``||r_0||``, and in a
    preconditioned norm under ``accel``).  The hierarchy is built in float64 on the CPU.

    Parameters
    ----------
    A : dense array, SciPy sparse matrix, or operator with ``tocsr()`` (the grid and
        multi-resolution G-CRFs), SPD
    kind : {"ruge_stuben", "smoothed_aggregation"}
        ``pyamg.ruge_stuben_solver`` (classical AMG) or ``pyamg.smoothed_aggregation_solver``.
    **options
        Passed to the PyAMG constructor.

    Returns
    -------
    AMGPreconditioner
        With ``setup_time_s`` (assembly and hierarchy).

    Raises
    ------
    ImportError
        PyAMG is not installed (the message names the extra ``amg``).
    TypeError
        ``A`` has no entries to assemble (a LinearOperator, an operator without ``tocsr()``), or
        lives on the GPU.
    """
    if kind not in AMG_KINDS:
        raise ValueError(f"amg_preconditioner: kind must be one of {AMG_KINDS}, got {kind!r}")
    pyamg = _pyamg()
    t0 = time.perf_counter()
    op = as_operator(A, None)
    if op.xp is not np:
        raise TypeError("amg_preconditioner runs on the CPU (PyAMG): pass a NumPy/SciPy matrix or operator")
    csr = op.csr()
    if csr is None:
        raise TypeError(f"amg_preconditioner needs the matrix entries: pass a dense or sparse matrix, or an "
                        f"operator with tocsr(); got {type(op.A).__name__}")
    csr = csr.astype(np.float64).tocsr()
    build = pyamg.ruge_stuben_solver if kind == "ruge_stuben" else pyamg.smoothed_aggregation_solver
    ml = build(csr, **options)
    return AMGPreconditioner(ml, kind, op.n, op.dtype, time.perf_counter() - t0)
