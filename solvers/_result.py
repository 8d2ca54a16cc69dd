"""The result of every solver: :class:`SolveResult`, and the on-device residual history."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .backend import to_host

__all__ = ["SolveResult"]


@dataclasses.dataclass(repr=False)
class SolveResult:
    """Outcome of one call of a solver on ``A x = b`` (one system or a batch of systems).

    Unpacks like SciPy: ``x, info = cg(A, b)``.

    Attributes
    ----------
    x : ndarray, shape ``b.shape`` = ``(*batch, n)``
        The solution, on the device of the inputs (NumPy or CuPy), in the computational dtype.
    info : int or int ndarray of shape ``batch``
        ``0`` converged; ``> 0`` the iteration limit was reached (the value is the number of
        iterations, at least 1); ``< 0`` breakdown (``-1``: a division by a zero or non-positive
        quantity, see the solver's notes).
    converged : bool or bool ndarray of shape ``batch``
        ``||b - A x||_2 <= max(rtol ||b||_2, atol)`` with the *true* residual of the returned ``x``.
    iterations : int or int ndarray of shape ``batch``
        Iterations taken by each system (a system stops counting once it has converged).
    residual_norms : numpy.ndarray, shape ``(max_iterations + 1, *batch)``
        Residual 2-norms on the host, the initial residual first.  Once a system has stopped, its
        entries repeat its last value.  The last row is always the true residual norm of ``x``.
        What the rows in between hold (true, recursively updated, or Arnoldi estimate) is stated
        by each solver.
    matvecs : int
        Number of applications of ``A`` (each application acts on the whole batch at once).
    time_s : float
        Wall-clock time of the call in seconds (device work synchronised).
    method : str
        The method that ran: the solver's name (``"cg"``, ``"gmres"``, ...), or from
        :func:`gcrflinalg.solve` the path the operator took (``"reduced_cg"``, ``"potts_split"``,
        ``"direct"``, ``"cg+direct"`` when CG handed over to the factorisation).
    b_norm : float or numpy.ndarray of shape ``batch``
        ``||b||_2`` per system (host), used by :attr:`relative_residual`.
    requested_method : str or None
        The ``method`` the caller passed to :func:`gcrflinalg.solve` (``"auto"`` by default; the
        path it chose is :attr:`method`); None from the plain solvers of this package.
    ritz_values : numpy.ndarray or None
        CG and PCG only (else None): the eigenvalues of the Lanczos tridiagonal built from CG's step
        coefficients, ascending, on the host; for PCG those of the preconditioned operator ``P A``.
        Shape ``(m,)`` for one system, ``(*batch, m_max)`` for a batch (each row padded with NaN
        after its own ``m`` values).  They lie in ``[lambda_min, lambda_max]`` up to rounding and
        the extreme ones approach the extreme eigenvalues as CG iterates (no extra products).
    condition_estimate : float, numpy.ndarray of shape ``batch``, or None
        CG and PCG only: ``max(ritz) / min(ritz)``, a lower estimate of ``kappa(A)`` (``kappa(P A)``)
        that sharpens with the iterations; NaN for a system that took no step.
    omega : float or None
        The relaxation factor an SOR or SSOR run used (:func:`solvers.sor` chooses Young's optimum
        when not given); None for the other solvers.
    jacobi_radius : float or None
        The spectral radius ``rho(I - D^{-1} A)`` of the Jacobi iteration matrix estimated by a
        solver that needed it (:func:`solvers.sor` with ``omega=None``); None otherwise.
    eig_bounds : tuple of two floats or None
        The eigenvalue interval ``(lower, upper)`` a Chebyshev iteration ran with.
    setup_time_s : float or None
        The part of ``time_s`` spent building a preconditioner in the call (:func:`solvers.ssor_cg`,
        :func:`solvers.amg_cg`); None for the others.
    """

    x: Any
    info: Any
    converged: Any
    iterations: Any
    residual_norms: np.ndarray
    matvecs: int
    time_s: float
    method: str
    b_norm: Any = None
    requested_method: Any = None
    ritz_values: Any = None
    condition_estimate: Any = None
    omega: Any = None
    jacobi_radius: Any = None
    eig_bounds: Any = None
    setup_time_s: Any = None

    def __iter__(self):
        # SciPy-style unpacking: x, info = solver(A, b)
        yield self.x
        yield self.info

    @property
    def final_residual_norm(self):
        """True residual norm ``||b - A x||_2`` of the returned ``x`` (float or host array)."""
        last = self.residual_norms[-1]
        return float(last) if np.ndim(last) == 0 else last

    @property
    def relative_residual(self):
        """``||b - A x||_2 / ||b||_2`` per system (0 where ``b = 0``)."""
        res = np.asarray(self.residual_norms[-1], dtype=np.float64)
        bn = np.asarray(self.b_norm, dtype=np.float64)
        rel = np.where(bn > 0, res / np.where(bn > 0, bn, 1.0), res)
        return float(rel) if rel.ndim == 0 else rel

    def _requested(self):
        req = self.requested_method
        return f", requested_method={req!r}" if req is not None and req != self.method else ""

    def __repr__(self):
        if np.ndim(self.info) == 0:
            return (
                f"SolveResult(method={self.method!r}{self._requested()}, converged={bool(self.converged)}, "
                f"info={int(self.info)}, iterations={int(self.iterations)}, "
                f"relative_residual={self.relative_residual:.3e}, matvecs={self.matvecs}, "
                f"time_s={self.time_s:.4g})"
            )
        conv = np.asarray(self.converged)
        return (
            f"SolveResult(method={self.method!r}{self._requested()}, batch={conv.shape}, "
            f"converged={int(conv.sum())}/{conv.size}, "
            f"iterations<={int(np.max(self.iterations))}, "
            f"max relative_residual={float(np.max(self.relative_residual)):.3e}, "
            f"matvecs={self.matvecs}, time_s={self.time_s:.4g})"
        )


class _History:
    """Residual norms kept on the device (a list of ``batch``-shaped xp arrays); one copy at the end."""

    def __init__(self, xp):
        self.xp = xp
        self.rows = []

    def append(self, norms):
        self.rows.append(self.xp.asarray(norms))

    def set_last(self, norms):
        self.rows[-1] = self.xp.asarray(norms)

    def to_host(self):
        return to_host(self.xp.stack(self.rows)).astype(np.float64, copy=False)
