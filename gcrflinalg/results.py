"""Building the results and the positive-definiteness errors of the G-CRF solve paths.

Every method that is not a plain call of a :mod:`solvers` routine (the direct solves of every form,
the Potts ``L + 1`` split, the red-black reduced CG) reports through :func:`make_result` or
:func:`direct_result`, so that its :class:`solvers.SolveResult` reads exactly like an iterative
solver's: ``info = 0`` converged, ``> 0`` the iterations spent without meeting
``||b - M x|| <= max(rtol ||b||, atol)``, and ``residual_norms`` starting with ``||b - M x0||``.

Every violated positive-definiteness condition is raised through :func:`not_positive_definite`, with
one message format::

    <Form> is not positive definite (batch item (i, ...)): lam = <value> must exceed <bound>; <why>

and the facts as attributes of :class:`solvers.NotPositiveDefiniteError` (``quantity="lam"``,
``value``, ``bound`` — None where the violation was detected without a bound, e.g. by CG's
curvature test — and ``system``, the batch index or None for an unbatched operator).
"""
from __future__ import annotations

import time

import operator

import numpy as np

from solvers import NotPositiveDefiniteError, SolveResult

from .backend import get_array_module, synchronize, to_host

__all__ = ["direct_options", "make_result", "direct_result", "refined_direct_solve", "not_positive_definite",
           "raise_if_lam_below", "curvature_not_positive_definite"]

#: cap on the automatic iterative-refinement rounds of the direct solves (docs/design.md 4)
REFINE_MAX_ROUNDS = 5


def direct_options(options, dtype, *, ignored=()):
    """``(rtol, atol, refine)`` of a direct solve's options (``refine`` None for automatic rounds).

    ``ignored`` names options of the iterative methods that a direct solve accepts and ignores
    (``maxiter``, ``callback`` ...); any other unknown option is a ``TypeError``.  The values
    themselves were checked by :func:`gcrflinalg.solve`.
    """
    from .tolerances import default_rtol

    unknown = set(options) - {"rtol", "atol", "refine"} - set(ignored)
    if unknown:
        raise TypeError(f"method='direct' got unexpected options {sorted(unknown)}")
    refine = options.get("refine")
    if refine is not None:
        refine = operator.index(refine)
        if refine < 0:
            raise ValueError(f"refine must be >= 0; got {refine}")
    return float(options.get("rtol", default_rtol(dtype))), float(options.get("atol", 0.0)), refine


def make_result(x, *, converged, iterations, history, matvecs, time_s, method, bnorm) -> SolveResult:
    """A :class:`solvers.SolveResult` from host arrays.

    Parameters
    ----------
    x : array, shape ``(*systems, N)``
        The solution (any backend).
    converged, iterations, bnorm : array_like of shape ``systems``
        Per-system convergence flags, iteration counts and ``||b||``.
    history : array_like, shape ``(rows, *systems)``
        Residual norms, ``||b - M x0||`` first and the true residual of ``x`` last.
    matvecs : int
    time_s : float
    method : str
    """
    converged = np.asarray(converged, dtype=bool)
    iterations = np.asarray(iterations, dtype=np.int64)
    info = np.where(converged, 0, np.maximum(iterations, 1))
    bnorm = np.asarray(bnorm, dtype=np.float64)
    if converged.ndim == 0:
        converged, iterations, info, bnorm = bool(converged), int(iterations), int(info), float(bnorm)
    return SolveResult(x=x, info=info, converged=converged, iterations=iterations,
                       residual_norms=np.asarray(history, dtype=np.float64), matvecs=int(matvecs),
                       time_s=float(time_s), method=method, b_norm=bnorm)


def direct_result(x, *, rnorm, bnorm, rtol, atol, matvecs, time_s, method="direct") -> SolveResult:
    """The result of an exact solve: one "iteration", history ``[||b||, ||b - M x||]``.

    ``rnorm`` and ``bnorm`` are host arrays of shape ``systems``; an ``rnorm`` of NaN means that the
    residual was not checked (``check_residual=False``) and counts as converged.
    """
    rnorm = np.asarray(rnorm, dtype=np.float64)
    bnorm = np.asarray(bnorm, dtype=np.float64)
    converged = np.isnan(rnorm) | (rnorm <= np.maximum(float(rtol) * bnorm, float(atol)))
    return make_result(x, converged=converged, iterations=np.ones(rnorm.shape, np.int64),
                       history=np.stack([bnorm, rnorm]), matvecs=matvecs, time_s=time_s,
                       method=method, bnorm=bnorm)


def refined_direct_solve(solve, residual, b, *, rtol, atol, refine=None, xp=np, t0=None,
                         method="direct") -> SolveResult:
    """An exact solve with iterative refinement, as a :class:`SolveResult`.

    ``x = solve(b)``, then rounds ``x += solve(r)`` with ``r = residual(x) = b - M x``.  ``residual``
    should return the residual in float64 for a float32 operator (the product of the float32
    matrix, evaluated in float64): refinement then reaches the accuracy of the float32 answer
    itself instead of stalling at the rounding of a float32 residual.

    Parameters
    ----------
    solve : callable
        ``(*systems, N)`` array in the operator's dtype -> ``M^{-1}`` of it (same shape and dtype).
    residual : callable
        ``x -> b - M x`` (any float dtype; float64 where that is what float32 needs).
    b : array, shape ``(*systems, N)``
    rtol, atol : float
        The tolerance ``max(rtol ||b||, atol)`` of the ``converged`` flag and of the automatic rounds.
    refine : int or None
        None (default): refine automatically until every system meets its tolerance, or a round no
        longer halves the residual of any system that misses it, at most :data:`REFINE_MAX_ROUNDS`
        rounds.  An int ``k``: exactly ``k`` rounds.
    xp : module
        Array namespace.

    Returns
    -------
    SolveResult
        ``matvecs`` counts the residual products (``1 +`` the rounds); history ``[||b||, ||r||]``.
    """
    t0 = time.perf_counter() if t0 is None else t0
    dtype = b.dtype
    x = solve(b)
    bnorm = xp.linalg.norm(b.astype(np.float64), axis=-1)
    r = residual(x)
    rnorm = xp.linalg.norm(r.astype(np.float64, copy=False), axis=-1)
    tol = xp.maximum(float(rtol) * bnorm, float(atol))
    products = 1
    auto = refine is None
    rounds = REFINE_MAX_ROUNDS if auto else int(refine)
    for _ in range(rounds):
        if auto:
            todo = rnorm > tol
            if not bool(to_host(todo.any())):
                break
        x_new = x + solve(r.astype(dtype, copy=False))
        r_new = residual(x_new)
        rnorm_new = xp.linalg.norm(r_new.astype(np.float64, copy=False), axis=-1)
        products += 1
        if not auto:
            x, r, rnorm = x_new, r_new, rnorm_new
            continue
        better = rnorm_new < rnorm  # keep the better iterate of every system
        x = xp.where(better[..., None], x_new, x)
        r = xp.where(better[..., None], r_new, r)
        halved = todo & (rnorm_new <= 0.5 * rnorm)
        rnorm = xp.where(better, rnorm_new, rnorm)
        if not bool(to_host(halved.any())):
            break  # no system that misses its tolerance improves any more: the dtype's limit
    res_h, bnorm_h = to_host(rnorm), to_host(bnorm)
    synchronize(xp)
    return direct_result(x, rnorm=res_h, bnorm=bnorm_h, rtol=rtol, atol=atol, matvecs=products,
                         time_s=time.perf_counter() - t0, method=method)


def _where(system) -> str:
    return f" (batch item {tuple(system)})" if system else ""


def not_positive_definite(form: str, *, value: float, bound=None, bound_name: str, reason: str = "",
                          system=None, relation: str = "=") -> NotPositiveDefiniteError:
    """The :class:`NotPositiveDefiniteError` of a violated condition ``lam > bound``.

    Parameters
    ----------
    form : str
        The operator's class name.
    value : float
        The system's ``lam``.
    bound : float or None
        The value ``lam`` had to exceed, when it is known.
    bound_name : str
        How the bound is written, e.g. ``"||psi||_2^2"``.
    reason : str
        How the violation was found, appended after a semicolon.
    system : tuple or None
        Batch index of the system (None or ``()`` for an unbatched operator).
    relation : str
        How ``bound_name`` relates to ``bound`` in the message: ``"="`` (the bound itself) or
        ``">="`` (a proven lower bound of it).
    """
    system = tuple(int(i) for i in system) if system else None
    limit = f"{bound_name} {relation} {bound:.6g}" if bound is not None else bound_name
    message = f"{form} is not positive definite{_where(system)}: lam = {value:.6g} must exceed {limit}"
    if reason:
        message += f"; {reason}"
    return NotPositiveDefiniteError(message, quantity="lam", value=float(value),
                                    bound=None if bound is None else float(bound), system=system)


def raise_if_lam_below(lam, bound, *, bound_name: str, form: str, reason: str = "") -> None:
    """Raise :func:`not_positive_definite` at the first system with ``lam <= bound``.

    ``lam`` and ``bound`` broadcast to the batch shape (``bound`` on the operator's device).
    """
    xp = get_array_module(bound)
    lam64, bound = xp.broadcast_arrays(xp.asarray(lam, dtype=np.float64), xp.asarray(bound, dtype=np.float64))
    bad = to_host(lam64 <= bound)
    if not bad.any():
        return
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad.reshape(-1))), bad.shape))
    raise not_positive_definite(form, value=float(lam64[idx]), bound=float(bound[idx]),
                                bound_name=bound_name, reason=reason, system=idx)


def curvature_not_positive_definite(form: str, *, lam: float, rayleigh: float, system=None,
                                    threshold_name: str = "-lambda_min(A)", bound=None,
                                    matrix: str = "M", how: str = "CG") -> NotPositiveDefiniteError:
    """The :class:`NotPositiveDefiniteError` of a failed curvature test (docs/design.md section 6).

    A direction ``p`` with Rayleigh quotient ``rho = p^T M p / p^T p <= 0`` proves
    ``lambda_min(M) <= rho``; for ``M = lam I + A`` the threshold ``-lambda_min(A)`` that ``lam``
    must exceed is then at least ``lam - rho`` (``bound``, unless the caller derives another from
    the matrix ``CG`` ran on).  ``value`` is ``lam``, ``bound`` that proven lower bound of the
    threshold, and the message quotes ``rho``.
    """
    lam, rayleigh = float(lam), float(rayleigh)
    bound = lam - rayleigh if bound is None else float(bound)
    reason = (f"{how} met a direction p with Rayleigh quotient p^T {matrix} p / p^T p = {rayleigh:.6g} "
              f"<= 0 (beyond rounding), so lambda_min({matrix}) <= {rayleigh:.6g}")
    return not_positive_definite(form, value=lam, bound=bound, bound_name=threshold_name, reason=reason,
                                 system=system, relation=">=")
