"""Iterative solvers for ``A x = b``: CG, GMRES, Jacobi, Gauss-Seidel/SOR, and ``compare``.

Backend-agnostic (NumPy/SciPy or CuPy/cupyx, taken from the inputs) and unaware of G-CRFs.  Every
solver follows SciPy's call shape and one stopping rule::

    result = solver(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, ...)
    converged  <=>  ||b - A x||_2 <= max(rtol ||b||_2, atol)      (per system)

``A`` is a dense ``(n, n)`` array, a SciPy/cupyx sparse matrix, a SciPy/cupyx ``LinearOperator``,
or any object with ``shape`` and ``matvec`` (``matvec`` receives the whole batched ``(*batch, n)``
input).  ``b`` has shape ``(n,)`` or ``(*batch, n)``; leading axes are independent systems solved in
lock-step with per-system step sizes and convergence masks.  Each solver returns a
:class:`SolveResult` (``x, info = cg(A, b)`` unpacks like SciPy).
"""
from ._cg import cg
from ._compare import Comparison, compare
from ._errors import NotPositiveDefiniteError
from ._gauss_seidel import gauss_seidel
from ._gmres import gmres
from ._jacobi import jacobi
from ._preconditioners import block_jacobi_preconditioner
from ._result import SolveResult

__all__ = [
    "cg",
    "gmres",
    "jacobi",
    "gauss_seidel",
    "compare",
    "Comparison",
    "SolveResult",
    "NotPositiveDefiniteError",
    "block_jacobi_preconditioner",
]
