"""Forward and adjoint solves of a G-CRF: ``x = M^{-1} b`` and ``g = M^{-1} dL/dx``.

``M`` is symmetric, so the adjoint solve is a solve with the same operator; operators that factor
(the ``"direct"`` method of the low-rank and video forms) cache their factor, so the backward pass
reuses the forward pass's factorisation.
"""
from __future__ import annotations

import time

import numpy as np

from ._validation import check_finite, check_pd_policy, check_solver_options
from .tolerances import default_rtol

__all__ = ["solve", "adjoint_solve", "METHODS", "DEFAULT_METHOD"]

#: Methods every operator accepts; ``"direct"``, ``"reduced_cg"`` and ``"potts_split"`` need a
#: form-specific solver.
METHODS = ("cg", "pcg", "gmres", "jacobi", "gauss_seidel", "direct", "reduced_cg", "potts_split", "auto")

#: The default method of :func:`solve`, :func:`adjoint_solve`, ``Problem.solve`` and the torch/JAX
#: layers: the fastest applicable path of each form (docs/design.md, "The default method").
DEFAULT_METHOD = "auto"


def solve(op, b, method: str = DEFAULT_METHOD, *, x0=None, check_pd=True, **solver_options):
    """Solve the G-CRF system ``M x = (A + lam I) x = b`` for every system of the batch.

    Parameters
    ----------
    op : GCRFOperator
        The precision matrix ``M``.
    b : array, shape ``(..., *op.batch_shape, *op.vector_shape)`` or ``(..., *op.batch_shape, N)``
        Unary scores; any DLPack-exporting array.  Further leading axes are further right-hand sides.
    method : {"auto", "cg", "pcg", "gmres", "jacobi", "gauss_seidel", "direct", "reduced_cg", "potts_split"}
        ``"auto"`` (default): the form's fastest path, chosen by measurement (docs/design.md, "The
        default method"): ``"reduced_cg"`` on a 4-neighbourhood :class:`GridGCRF`, the ``L + 1``
        split on :class:`GridPottsGCRF`, CG or the factorisation by the break-even rule on the
        low-rank and video forms, plain CG otherwise.  ``"cg"`` is plain CG on ``M``, on every
        form; ``"pcg"`` CG preconditioned with the operator's per-pixel block-Jacobi inverse;
        ``"direct"`` an exact factorisation where the form has one; ``"reduced_cg"`` CG on the
        red-black reduced (Schur complement) system of a 4-neighbourhood :class:`GridGCRF` (about
        half the iterations on half-length vectors); ``"potts_split"`` CG on the ``L + 1`` systems
        of size ``P`` of :class:`GridPottsGCRF` (no ``callback`` or ``M``).
    x0 : array, optional
        Initial guess, shape of ``b`` (iterative methods).
    check_pd : {True, False, "exact"}
        Positive definiteness (docs/design.md section 6).  ``True`` (default): the form's cheap
        certificate runs once per operator, costing at most about one product (Gershgorin on the
        grid and multi-resolution forms; ``lam > ||psi||_2^2`` from the ``D x D`` factor on
        low-rank Potts; the sufficient bound on video); where it is inconclusive the solve goes
        ahead and is guarded as listed below.  ``"exact"``: the same, then where it is
        inconclusive the costlier test (``op.check_positive_definite(exact=True)``: a matrix-free
        Lanczos estimate of ``lambda_min(M)`` on 3.1 and 3.3, at most about 2000 and typically
        60-300 products at relative tolerance 1e-6; the extreme eigenvalues of ``W`` on 3.2; the
        capacitance factorisation on 3.6).  ``False``: no upfront check.  In every case the
        curvature test of CG stays on (it costs nothing).

        What is guaranteed where no certificate decided, per method:

        - ``cg``, ``pcg``, ``reduced_cg``, ``potts_split`` (``auto`` on 3.2), ``auto`` where
          it picks one of these: CG's curvature test raises :class:`NotPositiveDefiniteError` on a
          direction ``p`` with ``p^T M p / p^T p <= -c eps ||M||_est`` (clearly negative, not
          rounding), quoting that Rayleigh quotient, which bounds ``lambda_min(M)`` from above.
          CG only sees ``M`` along its Krylov directions: an indefinite ``M`` whose negative
          eigenvectors ``b`` barely excites can converge unnoticed to the solution of the
          indefinite system.  Use ``"exact"`` to rule that out.
        - ``gmres``, ``jacobi``, ``gauss_seidel``: no guarantee.  On an indefinite ``M`` they may
          diverge, stall or converge to the solution of the indefinite system; no error is raised
          (non-convergence is reported in the result).
        - ``direct``: on 3.1-3.3 the sparse LU factors an indefinite but nonsingular ``M`` without
          complaint (LU does not test definiteness): no detection; a singular ``M`` fails in the
          factorisation.  On 3.5 the Cholesky factor of ``lam I - psi psi^T`` (the default
          certificate) detects exactly; on 3.4 ``M`` is always positive definite; on 3.6 the
          Cholesky factorisation of the capacitance matrix ``lam I + B``, which the direct solve
          builds anyway, detects exactly and raises.
    **solver_options
        ``rtol``, ``atol``, ``maxiter``, ``callback`` and the method's own options (``restart``,
        ``omega``), as in :mod:`solvers`.  ``rtol`` defaults to
        :func:`gcrflinalg.tolerances.default_rtol` of the operator's dtype.

    Returns
    -------
    SolveResult
        ``x`` has the shape of ``b``; ``residual_norms`` the history per system; ``method`` the
        path that ran (``"cg"``, ``"pcg"``, ``"gmres"``, ``"jacobi"``, ``"gauss_seidel"``,
        ``"direct"``, ``"reduced_cg"``, ``"potts_split"``, or ``"cg+direct"`` where ``"auto"``
        started CG and handed over to the factorisation) and ``requested_method`` the ``method``
        passed here.

    Raises
    ------
    ValueError
        NaN/Inf in ``b`` or ``x0``, wrong shapes, complex input, an unknown method.
    NotPositiveDefiniteError
        A certificate or exact test found a violated bound, or CG's curvature test failed; both
        name ``lam`` (``value``) and the threshold it must exceed (``bound``; from CG a proven lower
        bound of it, ``lam - p^T M p / p^T p``).
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    check_pd = check_pd_policy(check_pd)
    # rtol, atol and maxiter are checked here once, for every method path (solvers' own check)
    solver_options = check_solver_options(solver_options)
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
    if bflat.size == 0:  # an empty batch (or no right-hand side): an empty result, nothing to solve
        return _empty_result(op, bflat, barr, flat, method)
    solver_options.setdefault("rtol", default_rtol(op.dtype))  # one table: gcrflinalg.tolerances
    from solvers import NotPositiveDefiniteError

    # parameters the operator views (writeable caller arrays) are re-read once: the solve and
    # what it reuses (certificate, factors) describe the parameters as they are now
    with op._synced():
        level = 2 if check_pd == "exact" else int(bool(check_pd))  # checks done: 0 none, 1 cheap, 2 exact
        if level > int(op._pd_checked):
            op.check_positive_definite(exact=level == 2)
            op._pd_checked = level
        try:
            result = op._solve(bflat, method, x0flat, dict(solver_options))
            if result is NotImplemented:
                result = _generic_solve(op, bflat, method, x0flat, solver_options)
        except NotPositiveDefiniteError as err:
            if err.quantity == "p^T A p / p^T p":  # CG's curvature test on M itself: name lam
                raise _curvature_error(op, err) from err
            raise
    x = result.x
    result.x = x if flat else x.reshape(barr.shape)
    result.requested_method = method
    return result


def adjoint_solve(op, grad_x, **options):
    """The adjoint solve of the backward pass: ``g = M^{-T} dL/dx = M^{-1} dL/dx``.

    ``g`` is ``dL/db``; with the forward solution ``x``, ``op.parameter_gradients(x, g)`` gives the
    gradients of the parameters.  Takes the options of :func:`solve`; a factorisation cached by a
    forward ``method="direct"`` solve is reused.
    """
    return solve(op, grad_x, **options)


def _curvature_error(op, err):
    from .backend import to_host
    from .results import curvature_not_positive_definite

    nb = len(op.batch_shape)
    system = tuple(err.system[len(err.system) - nb:]) if (err.system and nb) else ()
    lam = np.broadcast_to(to_host(op.lam), op.batch_shape)[system]
    return curvature_not_positive_definite(type(op).__name__, lam=float(lam), rayleigh=err.value,
                                           system=system)


def _empty_result(op, bflat, barr, flat, method):
    from .results import make_result

    systems = tuple(bflat.shape[:-1])
    x = op.xp.zeros(bflat.shape, dtype=op.dtype)
    result = make_result(x if flat else x.reshape(barr.shape), converged=np.ones(systems, bool),
                         iterations=np.zeros(systems, np.int64), history=np.zeros((1,) + systems),
                         matvecs=0, time_s=0.0, method=method, bnorm=np.zeros(systems))
    result.requested_method = method  # nothing ran: ``method`` repeats the request
    return result


def _flatten(op, arr):
    nv = len(op.vector_shape)
    return arr.reshape(arr.shape[: arr.ndim - nv] + (op.size,))


def _generic_solve(op, bflat, method, x0flat, options):
    import solvers

    if method == "direct":
        raise ValueError(f"{type(op).__name__} has no direct solver; use an iterative method "
                         "('cg', 'pcg', 'gmres', 'jacobi', 'gauss_seidel')")
    if method == "potts_split":
        raise ValueError(f"{type(op).__name__} has no Potts split; method='potts_split' is for GridPottsGCRF")
    if method == "reduced_cg":
        raise ValueError(f"{type(op).__name__} has no red-black reduction; method='reduced_cg' is for "
                         "GridGCRF with neighbourhood=4")
    # "auto" with no form-specific path: plain CG, the fastest of the generic methods on every form
    # (block Jacobi is lam I on the grid and multi-resolution forms, so "pcg" repeats CG's iterates at a higher cost)
    ran = "cg" if method == "auto" else method
    name = ran
    if ran == "pcg":
        options = dict(options)
        options.setdefault("M", op.block_jacobi_preconditioner())
        name = "cg"
    fn = getattr(solvers, name)
    if name == "cg":  # the forms' products are computed in working precision (see solvers.cg)
        options = dict(options)
        options.setdefault("true_residual", "bound")
    t0 = time.perf_counter()
    result = fn(op, bflat, x0flat, **options)
    result.time_s = getattr(result, "time_s", None) or (time.perf_counter() - t0)
    result.method = ran
    return result
