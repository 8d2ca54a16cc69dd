"""Iterative solvers for ``A x = b``: CG, GMRES, Jacobi, Gauss-Seidel/SOR, Chebyshev, SSOR- and
AMG-preconditioned CG, and ``compare``.

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
import importlib

# public name -> private module that defines it; loaded on first use, so that importing
# ``solvers.backend`` (the array-backend helpers gcrflinalg builds on) loads no solver
_EXPORTS = {
    "cg": "_cg",
    "CURVATURE_TOLERANCE": "_cg",
    "gmres": "_gmres",
    "jacobi": "_jacobi",
    "gauss_seidel": "_gauss_seidel",
    "compare": "_compare",
    "Comparison": "_compare",
    "SolveResult": "_result",
    "NotPositiveDefiniteError": "_errors",
    "block_jacobi_preconditioner": "_preconditioners",
    "check_options": "_options",
    "sor": "_sor",
    "young_omega": "_sor",
    "chebyshev": "_chebyshev",
    "ssor_preconditioner": "_ssor",
    "amg_preconditioner": "_amg",
    "ssor_cg": "_accelerated",
    "amg_cg": "_accelerated",
    "estimate_jacobi_radius": "_spectral",
    "ritz_bounds": "_spectral",
    "OptionTypeError": "_options",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'solvers' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"solvers.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
