"""Forward and adjoint solves of a G-CRF: ``x = M^{-1} b`` and ``g = M^{-1} dL/dx``.

``M`` is symmetric, so the adjoint solve is a solve with the same operator; operators that factor
(the ``"direct"`` method of the low-rank and video forms) cache their factor, so the backward pass
reuses the forward pass's factorisation.
"""
from __future__ import annotations

import time

from ._validation import check_finite
from .tolerances import default_rtol

__all__ = ["solve", "adjoint_solve", "METHODS"]

#: Methods every operator accepts; ``"direct"`` and ``"reduced_cg"`` need a form-specific solver
#: (``"auto"`` falls back to ``"cg"``).
METHODS = ("cg", "pcg", "gmres", "jacobi", "gauss_seidel", "direct", "reduced_cg", "auto")


def solve(op, b, method: str = "cg", *, x0=None, check_pd: bool = True, **solver_options):
    """Solve the G-CRF system ``M x = (A + lam I) x = b`` for every system of the batch.

    Parameters
    ----------
    op : GCRFOperator
        The precision matrix ``M``.
    b : array, shape ``(..., *op.batch_shape, *op.vector_shape)`` or ``(..., *op.batch_shape, N)``
        Unary scores; any DLPack-exporting array.  Further leading axes are further right-hand sides.
    method : {"cg", "pcg", "gmres", "jacobi", "gauss_seidel", "direct", "reduced_cg", "auto"}
        ``"pcg"`` is CG preconditioned with the operator's per-pixel block-Jacobi inverse;
        ``"direct"`` an exact factorisation where the form has one; ``"reduced_cg"`` CG on the
        red-black reduced (Schur complement) system of a 4-neighbourhood :class:`GridGCRF` (about
        half the iterations on half-length vectors); ``"auto"`` lets the form choose.
    x0 : array, optional
        Initial guess, shape of ``b`` (iterative methods).
    check_pd : bool
        Check the form's positive-definiteness bound first (DESIGN.md section 6); a violation raises
        :class:`NotPositiveDefiniteError` naming ``lam`` and the bound.
    **solver_options
        ``rtol``, ``atol``, ``maxiter``, ``callback`` and the method's own options (``restart``,
        ``omega``), as in :mod:`solvers`.  ``rtol`` defaults to
        :func:`gcrflinalg.tolerances.default_rtol` of the operator's dtype.

    Returns
    -------
    SolveResult
        ``x`` has the shape of ``b``; ``residual_norms`` the history per system.

    Raises
    ------
    ValueError
        NaN/Inf in ``b`` or ``x0``, wrong shapes, complex input, an unknown method.
    NotPositiveDefiniteError
        ``check_pd`` found a violated bound, or CG met ``p^T M p <= 0``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    barr, flat = op.as_vectors(b, "b")
    check_finite(barr, "b")
    bflat = _flatten(op, barr)
    x0flat = None
    if x0 is not None:
        x0arr, _ = op.as_vectors(x0, "x0")
        if x0arr.shape != barr.shape:
            raise ValueError(f"x0 must have the shape of b {tuple(barr.shape)}; got {tuple(x0arr.shape)}")
        check_finite(x0arr, "x0")
        x0flat = _flatten(op, x0arr)
    if check_pd and not op._pd_checked:
        op.check_positive_definite()
        op._pd_checked = True
    solver_options.setdefault("rtol", default_rtol(op.dtype))  # one table: gcrflinalg.tolerances
    result = op._solve(bflat, method, x0flat, dict(solver_options))
    if result is NotImplemented:
        result = _generic_solve(op, bflat, method, x0flat, solver_options)
    x = result.x
    result.x = x if flat else x.reshape(barr.shape)
    return result


def adjoint_solve(op, grad_x, **options):
    """The adjoint solve of the backward pass: ``g = M^{-T} dL/dx = M^{-1} dL/dx``.

    ``g`` is ``dL/db``; with the forward solution ``x``, ``op.parameter_gradients(x, g)`` gives the
    gradients of the parameters.  Takes the options of :func:`solve`; a factorisation cached by a
    forward ``method="direct"`` solve is reused.
    """
    return solve(op, grad_x, **options)


def _flatten(op, arr):
    nv = len(op.vector_shape)
    return arr.reshape(arr.shape[: arr.ndim - nv] + (op.size,))


def _generic_solve(op, bflat, method, x0flat, options):
    import solvers

    if method == "direct":
        raise ValueError(f"{type(op).__name__} has no direct solver; use an iterative method "
                         "('cg', 'pcg', 'gmres', 'jacobi', 'gauss_seidel')")
    if method == "reduced_cg":
        raise ValueError(f"{type(op).__name__} has no red-black reduction; method='reduced_cg' is for "
                         "GridGCRF with neighbourhood=4")
    if method == "auto":
        method = "cg"
    if method == "pcg":
        options = dict(options)
        options.setdefault("M", op.block_jacobi_preconditioner())
        method = "cg"
    fn = getattr(solvers, method)
    t0 = time.perf_counter()
    result = fn(op, bflat, x0flat, **options)
    result.time_s = getattr(result, "time_s", None) or (time.perf_counter() - t0)
    return result
