"""Solver convergence study: Jacobi, Gauss–Seidel, SOR, Chebyshev, GMRES, CG, block-Jacobi, SSOR and
algebraic-multigrid PCG and direct solves on the built-in G-CRF problems of every form, swept over
regimes, with the theory beside every measurement.

Run ``python -m studies.convergence`` (``--quick`` for a run under a minute, ``--sweep`` for the
regime sweep, ``--thesis`` for the thesis-size comparison, ``--help`` for every option).  Every run
(one method on one problem in one regime) is one row of a tidy table; the sweep axes are

- ``--margins``: ``lam = (1 + margin) rho(B)`` (``B`` the off-diagonal part of ``A``), so that
  the Jacobi radius of the grid forms is ``1 / (1 + margin)``; values are numbers, ``drawn``
  (a margin drawn in ``[0.05, 0.3]`` per problem) and ``seed`` (the margin at which Jacobi's
  predicted count is 25 at the run's ``rtol``: the regime of the thesis's Fig. 2.3);
- ``--sizes``: ``tiny``/``small``/``medium`` crops, ``large`` (the whole photograph at stride 8,
  75 x 64 pixels), ``thesis`` (the whole photograph at stride 6, 100 x 85 pixels, 21 labels) and
  ``full`` (600 x 512 pixels);
- ``--dtypes`` and ``--rtols``.

Beside each measurement the row holds the problem's theory (computed matrix-free): the Jacobi
radius ``rho_J``, the extreme Ritz values and ``kappa`` from CG's Lanczos coefficients, and the
method's predicted iterations (Jacobi ``ln(rtol) / ln(rho_J)``; Gauss–Seidel by Young,
``rho_GS = rho_J^2``, which holds where the sweep is consistently ordered, red-black on
4-neighbourhood grids; SOR with Young's ``omega*``, ``rho = omega* - 1``; CG, PCG and Chebyshev
``sqrt(kappa) ln(2 / rtol) / 2`` with the ``kappa`` of their own operator).

It writes into ``--out``: ``summary.md`` (the tables), ``runs.jsonl`` (every finished problem as it
finishes: ``--resume`` skips those, so an interrupted sweep restarts where it stopped),
``runs.json`` and ``runs.csv`` (every run), ``iterations_vs_margin.png`` and ``time_vs_margin.png``
(log-log, measured medians with quartiles and the predicted lines, one panel per form), and
``residual_vs_iteration.png`` / ``residual_vs_time.png`` (the representative problem of each form).

``--dask ADDRESS`` solves the problems on an existing ``dask.distributed`` cluster: each task
rebuilds its problem from ``(form, index, seed, margin, size)`` on the worker, so no operator is
shipped, and the record is the same as in-process apart from the timings.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np

from gcrflinalg.forms import FORMS
from studies._common import (Outputs, RunLog, array_module, markdown_table, quartiles, run_sweep,
                             study_parser)

__all__ = ["METHODS", "DIRECT_FORMS", "SIZES", "methods_for", "run_problem", "run_study", "summarise",
           "predicted_iterations", "seed_margin", "plot_vs_margin", "main"]

#: Every method of the study, in table order.
METHODS = ("jacobi", "gauss_seidel", "sor", "chebyshev", "gmres", "cg", "pcg", "ssor_cg", "amg_cg",
           "reduced_cg", "potts_split", "direct")
#: The methods that run through :mod:`solvers` directly (the others through ``gcrflinalg.solve``).
SOLVER_METHODS = ("sor", "chebyshev", "ssor_cg", "amg_cg")
#: Forms with an exact direct solver (the form registry says: all of them, sparse factorisation for
#: the grid and multi-resolution forms, Woodbury identities for the low-rank and video forms).
DIRECT_FORMS = tuple(name for name, spec in FORMS.items() if "direct" in spec.methods)
#: Forms with the red-black reduction (on their 4-neighbourhood problems only).
REDUCED_FORMS = tuple(name for name, spec in FORMS.items() if "reduced_cg" in spec.methods)
#: Forms with the Potts ``L + 1`` split.
SPLIT_FORMS = tuple(name for name, spec in FORMS.items() if "potts_split" in spec.methods)
#: Forms with assembled sparse matrices (``tocsr``): SSOR (colour-ordered) and AMG apply.
SPARSE_FORMS = ("grid", "grid_potts", "multires")

#: Problem sizes: ``size -> (make_problem size, overrides)``.
SIZES = {
    "tiny": ("tiny", {}),
    "small": ("small", {}),
    "medium": ("medium", {}),
    "large": ("large", {"stride": 8}),
    "thesis": ("large", {"stride": 6, "num_labels": 21}),
    "full": ("full", {}),
}
#: Forms without the whole-photograph sizes (video crops frames from the photograph).
_CROP_ONLY_FORMS = ("video",)
#: Jacobi's predicted iterations in the ``seed`` regime (the thesis's Fig. 2.3: 24.8 on average).
SEED_JACOBI_ITERATIONS = 25

METHOD_LABELS = {
    "jacobi": "Jacobi",
    "gauss_seidel": "Gauss–Seidel",
    "sor": "SOR (Young)",
    "chebyshev": "Chebyshev",
    "gmres": "GMRES",
    "cg": "CG",
    "pcg": "PCG (block Jacobi)",
    "ssor_cg": "PCG (SSOR)",
    "amg_cg": "PCG (AMG)",
    "reduced_cg": "CG, red-black reduced",
    "potts_split": "CG, Potts L + 1 split",
    "direct": "direct",
}
PRECONDITIONERS = {"pcg": "block_jacobi", "ssor_cg": "ssor", "amg_cg": "amg_ruge_stuben"}
FORM_LABELS = {name: spec.title for name, spec in FORMS.items()}
FORMS_ORDER = {name: i for i, name in enumerate(FORMS)}
_STYLE = {
    "jacobi": dict(color="#1f77b4", ls="-"),
    "gauss_seidel": dict(color="#ff7f0e", ls="-"),
    "sor": dict(color="#bcbd22", ls="-"),
    "chebyshev": dict(color="#17becf", ls="--"),
    "gmres": dict(color="#2ca02c", ls="--"),
    "cg": dict(color="#d62728", ls="-"),
    "pcg": dict(color="#9467bd", ls=":"),
    "ssor_cg": dict(color="#e377c2", ls="-."),
    "amg_cg": dict(color="#7f7f7f", ls="-"),
    "reduced_cg": dict(color="#8c564b", ls="-."),
    "potts_split": dict(color="#8c564b", ls=":"),
    "direct": dict(color="black", ls="none", marker="*", ms=10),
}

#: Columns of ``runs.csv`` (``runs.json`` has these and the residual histories).
RUN_COLUMNS = ("form", "method", "preconditioner", "margin", "regime", "size", "num_labels", "N", "dtype",
               "rtol", "problem", "index", "source", "converged", "info", "iterations", "matvecs",
               "setup_s", "solve_s", "time_s", "build_s", "rel_residual", "predicted_iterations", "jacobi_radius",
               "consistently_ordered", "lambda_min", "lambda_max", "kappa", "omega", "error")

_WARMED = set()


def _amg_available() -> bool:
    try:
        import pyamg  # noqa: F401
    except ImportError:
        return False
    return True


def methods_for(form: str, methods=METHODS) -> list[str]:
    """The methods of ``methods`` that apply to ``form`` (``"direct"`` only where the form has one,
    ``"reduced_cg"`` only on the general grid, SSOR and AMG on the forms with a sparse matrix, AMG
    only with PyAMG installed)."""
    out = []
    for m in methods:
        if m == "direct" and form not in DIRECT_FORMS:
            continue
        if m == "reduced_cg" and form not in REDUCED_FORMS:
            continue
        if m == "potts_split" and form not in SPLIT_FORMS:
            continue
        if m in ("ssor_cg", "amg_cg") and form not in SPARSE_FORMS:
            continue
        if m == "amg_cg" and not _amg_available():
            continue
        out.append(m)
    return out


def forms_for_size(forms, size):
    """The forms of ``forms`` with problems of ``size``."""
    return [f for f in forms if not (f in _CROP_ONLY_FORMS and SIZES[size][0] in ("large", "full"))]


# --------------------------------------------------------------------------- theory
def seed_margin(rtol: float, iterations: int = SEED_JACOBI_ITERATIONS) -> float:
    """The margin at which Jacobi's predicted count ``ln(rtol) / ln(rho_J)`` is ``iterations``, with
    ``rho_J = 1 / (1 + margin)`` (the grid forms): ``margin = rtol^(-1/iterations) - 1``."""
    return float(rtol ** (-1.0 / iterations) - 1.0)


def _iterations_for_rate(rate, rtol):
    if rate is None or not (0.0 < rate < 1.0):
        return None
    return float(math.log(rtol) / math.log(rate))


def predicted_iterations(method: str, rtol: float, *, jacobi_radius=None, kappa=None, consistently_ordered=False):
    """The iterations theory predicts for ``method`` to reduce the residual by ``rtol``.

    - Jacobi: ``ln(rtol) / ln(rho_J)``;
    - Gauss–Seidel: Young's ``rho_GS = rho_J^2`` (consistently ordered matrices; elsewhere the same
      formula, which the measurement then contradicts);
    - SOR with Young's ``omega* = 2 / (1 + sqrt(1 - rho_J^2))``: ``rho = omega* - 1``;
    - CG, PCG and Chebyshev: ``sqrt(kappa) ln(2 / rtol) / 2`` (from ``2 ((sqrt(kappa) - 1) /
      (sqrt(kappa) + 1))^k <= rtol``), with the ``kappa`` of the method's (preconditioned) operator.

    None where no theory applies (GMRES, the direct solve) or the facts are missing.
    """
    rho = jacobi_radius
    if method == "jacobi":
        return _iterations_for_rate(rho, rtol)
    if method == "gauss_seidel":
        return _iterations_for_rate(None if rho is None else rho * rho, rtol)
    if method == "sor":
        if rho is None or not 0.0 <= rho < 1.0:
            return None
        omega = 2.0 / (1.0 + math.sqrt(1.0 - rho * rho))
        return _iterations_for_rate(omega - 1.0, rtol)
    if method in ("cg", "pcg", "ssor_cg", "amg_cg", "chebyshev", "reduced_cg"):
        if kappa is None or not math.isfinite(kappa) or kappa < 1.0:
            return None
        return float(0.5 * math.sqrt(kappa) * math.log(2.0 / rtol))
    return None


def _problem_spectrum(problem, xp, dtype, rtol, cg_result):
    """``rho_J``, whether the sweep is consistently ordered, and ``(lambda_min, lambda_max, kappa)``
    of ``M`` from CG's Ritz values (an untimed CG run where the timed one has none)."""
    import solvers
    from gcrflinalg import to_host

    op = problem.operator
    lam = float(problem.meta["lam"])
    diag = to_host(op.diagonal()).reshape(-1)
    if np.all(diag == np.asarray(lam, dtype=diag.dtype)):
        # diag(A) = 0 (grid, Potts, multi-resolution): D^{-1} B = B / lam, rho_J = rho(B) / lam
        rho_j = float(problem.meta["offdiag_radius"]) / lam
    else:
        rho_j, _ = solvers.estimate_jacobi_radius(op, xp.reshape(problem.b, (-1,)))
    ordered = problem.form in ("grid", "grid_potts") and problem.meta.get("neighbourhood") == 4
    res = cg_result
    if res is None or getattr(res, "ritz_values", None) is None:
        res = solvers.cg(op, xp.reshape(problem.b, (-1,)), rtol=rtol, maxiter=10 * problem.size, check_pd=False)
    theta = np.asarray(res.ritz_values, dtype=np.float64).reshape(-1)
    theta = theta[np.isfinite(theta)]
    if theta.size == 0 or theta[0] <= 0:
        return rho_j, ordered, (None, None, None)
    return rho_j, ordered, (float(theta[0]), float(theta[-1]), float(theta[-1] / theta[0]))


# --------------------------------------------------------------------------- one problem
def _call(method, op, b, options):
    """One solve of ``method``: ``gcrflinalg.solve`` or the :mod:`solvers` function."""
    if method in SOLVER_METHODS:
        import solvers

        opts = {k: v for k, v in options.items() if k != "check_pd"}
        return getattr(solvers, method)(op, b.reshape(-1), **opts)
    from gcrflinalg import solve

    return solve(op, b, method, **options)


def _warm_up(problem, method, xp, dtype, options):
    """Solve once, untimed, on a fresh copy of the operator so that compilation (numba kernels) and
    first-call costs stay out of the timings; the timed operator keeps no cached factorisation."""
    key = (problem.form, method, xp.__name__, np.dtype(dtype).name)
    if key in _WARMED:
        return
    from gcrflinalg import problems

    op = problems.build_operator(problem.form, problem.params, dtype=dtype, xp=xp)
    opts = dict(options, check_pd=False)
    if method != "direct":
        opts["maxiter"] = 3
    try:
        _call(method, op, problem.b, opts)
    except Exception:  # the timed run reports the error
        pass
    _WARMED.add(key)


def _margin_value(margin, rtol):
    """The ``margin`` argument of ``make_problem`` for a regime: a number, ``seed`` or ``drawn``."""
    if margin == "drawn":
        return None
    if margin == "seed":
        return seed_margin(rtol)
    return float(margin)


def run_problem(form: str, index: int, *, seed: int = 0, size: str = "small", methods=METHODS,
                rtol: float = 1e-6, maxiter: int = 10000, restart: int = 20, backend: str = "cpu",
                dtype: str = "float64", margin="drawn", keep_history: bool | None = None) -> list[dict]:
    """Build problem ``index`` of ``form`` in one regime and solve it with every method of ``methods``.

    The problem is rebuilt from ``(form, index, seed, size, margin)``, so this function is all a
    remote worker needs.

    Returns
    -------
    list of dict
        One row per method with the keys of :data:`RUN_COLUMNS`; when ``keep_history`` (default: for
        index 0, the representative problem) also ``residual_history`` (relative residual norms, the
        initial one first).
    """
    return _solve_problem(form, index, seed=seed, size=size, methods=methods, rtol=rtol, maxiter=maxiter,
                          restart=restart, backend=backend, dtype=dtype, margin=margin,
                          keep_history=keep_history)[0]


def _solve_problem(form, index, *, seed, size, methods, rtol, maxiter, restart, backend, dtype, margin="drawn",
                   keep_history=None):
    """:func:`run_problem`'s rows and the problem's description (one task of the study)."""
    from gcrflinalg import problems, to_host
    from gcrflinalg.backend import synchronize

    xp = array_module(backend)
    keep_history = index == 0 if keep_history is None else keep_history
    psize, overrides = SIZES[size]
    t_build = time.perf_counter()
    problem = problems.make_problem(form, index, seed=seed, size=psize, dtype=np.dtype(dtype), xp=xp,
                                    margin=_margin_value(margin, rtol), **overrides)
    build_s = time.perf_counter() - t_build
    op, b = problem.operator, problem.b
    try:
        op.check_positive_definite()  # once, outside the timings (problems are PD by construction)
    except Exception:
        pass
    rows, results = [], {}
    for method in methods_for(form, methods):
        if method == "reduced_cg" and problem.meta.get("neighbourhood") != 4:
            continue  # the red-black colouring needs the 4-neighbourhood
        options = dict(rtol=rtol, check_pd=False)  # checked once above
        if method != "direct":
            options["maxiter"] = maxiter
        if method == "gmres":  # its maxiter counts restart cycles (as SciPy's): the same product budget
            options["restart"] = restart
            options["maxiter"] = -(-maxiter // restart)
        _warm_up(problem, method, xp, dtype, options)
        row = dict(form=form, method=method, preconditioner=PRECONDITIONERS.get(method),
                   margin=float(problem.meta["margin"]), regime=str(margin), size=size,
                   num_labels=problem.meta["num_labels"], N=problem.size, dtype=str(dtype), rtol=float(rtol),
                   problem=problem.name, index=int(index), source=problem.meta["source"])
        try:
            # the representative problem's times (plotted) are the best of 3 solves, each on a fresh
            # operator so that no factorisation is reused
            elapsed = np.inf
            for repeat in range(3 if keep_history else 1):
                run_op = op if repeat == 0 else problems.build_operator(form, problem.params, dtype=dtype, xp=xp)
                synchronize(xp)
                t0 = time.perf_counter()
                result = _call(method, run_op, b, options)
                synchronize(xp)
                elapsed = min(elapsed, time.perf_counter() - t0)
        except Exception as exc:  # recorded, not fatal: the table shows the method did not converge
            row.update(converged=False, info=None, iterations=None, matvecs=None, setup_s=None, solve_s=None,
                       time_s=None, rel_residual=None, omega=None, error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            continue
        results[method] = result
        norms = to_host(result.residual_norms).astype(np.float64).reshape(-1)
        b_norm = float(to_host(result.b_norm)) if result.b_norm is not None else float(norms[0])
        rel = norms / b_norm if b_norm > 0 else norms
        setup = getattr(result, "setup_time_s", None)
        row.update(converged=bool(np.all(to_host(result.converged))), info=int(np.max(to_host(result.info))),
                   iterations=int(np.max(to_host(result.iterations))), matvecs=int(result.matvecs),
                   setup_s=None if setup is None else float(setup),
                   solve_s=float(elapsed - (setup or 0.0)), time_s=float(elapsed), rel_residual=float(rel[-1]),
                   omega=getattr(result, "omega", None), error=None)
        if keep_history:
            row["residual_history"] = rel.tolist()
        rows.append(row)
    t_theory = time.perf_counter()
    rho_j, ordered, (lmin, lmax, kappa) = _problem_spectrum(problem, xp, dtype, rtol, results.get("cg"))
    theory_s = time.perf_counter() - t_theory
    for row in rows:
        res = results.get(row["method"])
        own_kappa = kappa
        if row["method"] in ("pcg", "ssor_cg", "amg_cg", "reduced_cg"):
            own_kappa = _finite(getattr(res, "condition_estimate", None)) if res is not None else None
        row.update(jacobi_radius=rho_j, consistently_ordered=ordered, lambda_min=lmin, lambda_max=lmax,
                   kappa=own_kappa, build_s=build_s + theory_s,
                   predicted_iterations=predicted_iterations(row["method"], rtol, jacobi_radius=rho_j,
                                                             kappa=own_kappa, consistently_ordered=ordered))
    meta = dict(problem.meta, regime=str(margin), study_size=size)
    return rows, meta


def _finite(value):
    if value is None:
        return None
    v = float(np.max(np.asarray(value, dtype=np.float64)))
    return v if math.isfinite(v) else None


def _task_list(forms, count, *, sizes, margins, dtypes, rtols):
    """Every ``(form, index, margin, size, dtype, rtol)`` task, in table order."""
    tasks = []
    for size in sizes:
        for dtype in dtypes:
            for rtol in rtols:
                for margin in margins:
                    for form in forms_for_size(forms, size):
                        for i in range(count):
                            tasks.append(dict(form=form, index=i, margin=margin, size=size, dtype=dtype,
                                              rtol=float(rtol)))
    return tasks


def run_study(forms, count: int, *, seed: int = 0, size: str = "small", methods=METHODS, rtol: float = 1e-6,
              maxiter: int = 10000, restart: int = 20, backend: str = "cpu", dtype: str = "float64",
              dask_address: str | None = None, progress: bool = True, sizes=None, margins=("drawn",),
              dtypes=None, rtols=None, log: RunLog | None = None):
    """Run :func:`run_problem` for problems ``0 .. count-1`` of every form in every regime.

    Parameters
    ----------
    sizes, margins, dtypes, rtols : sequences, optional
        The sweep axes (default: the single ``size``, ``"drawn"``, ``dtype`` and ``rtol``).
    dask_address : str, optional
        Address of a running ``dask.distributed`` scheduler (or a ``Client``/cluster object): the
        problems are solved there, one task per problem.  Default: in this process.
    log : studies._common.RunLog, optional
        Records every finished problem as it finishes and skips those it already holds (resume).

    Returns
    -------
    runs : list of dict
        Every run, in (size, dtype, rtol, margin, form, index, method) order whichever way they
        were computed.
    problems_meta : list of dict
        The description of every problem (:attr:`gcrflinalg.problems.Problem.meta`).
    """
    sizes = list(sizes or [size])
    dtypes = list(dtypes or [dtype])
    rtols = list(rtols or [rtol])
    tasks = _task_list(forms, count, sizes=sizes, margins=list(margins), dtypes=dtypes, rtols=rtols)
    fixed = dict(seed=seed, methods=list(methods), maxiter=maxiter, restart=restart, backend=backend)
    full = [dict(task, **fixed) for task in tasks]
    results = run_sweep(full, _task, log=log, progress=progress, label="convergence", dask_address=dask_address,
                        describe=lambda t: f"{t['form']} #{t['index']} {t['size']} margin {t['margin']}")
    runs = [row for rows, _ in results for row in rows]
    problems_meta = [meta for _, meta in results]
    return runs, problems_meta


def _task(*, form, index, margin, size, dtype, rtol, seed, methods, maxiter, restart, backend):
    """One task of the sweep (module level, so that Dask workers can run it)."""
    return _solve_problem(form, index, seed=seed, size=size, methods=tuple(methods), rtol=rtol, maxiter=maxiter,
                          restart=restart, backend=backend, dtype=dtype, margin=margin)


# --------------------------------------------------------------------------- tables
_REGIME_KEYS = ("size", "regime", "dtype", "rtol")


def regimes(runs):
    """The distinct ``(size, regime, dtype, rtol)`` of the runs, in order of appearance."""
    return list(dict.fromkeys(tuple(r[k] for k in _REGIME_KEYS) for r in runs))


def _regime_text(reg):
    size, margin, dtype, rtol = reg
    return f"size {size}, margin {margin}, {dtype}, rtol {rtol:g}"


def summarise(runs, forms, methods=METHODS) -> list[dict]:
    """Per (regime, form, method): problems, fraction converged, and over the converged runs the mean,
    median and quartiles of the iterations, the mean products, the mean and median wall time (ms,
    setup included) and median setup, the median predicted iterations and the median ratio
    measured / predicted (over all runs: an unconverged run counts with its iteration limit)."""
    out = []
    for reg in regimes(runs):
        in_reg = [r for r in runs if tuple(r[k] for k in _REGIME_KEYS) == reg]
        for form in forms:
            for method in methods_for(form, methods):
                sel = [r for r in in_reg if r["form"] == form and r["method"] == method]
                if not sel:
                    continue
                conv = [r for r in sel if r["converged"]]
                row = dict(size=reg[0], regime=reg[1], dtype=reg[2], rtol=reg[3], form=form, method=method,
                           problems=len(sel), converged=len(conv) / len(sel))
                its = [r["iterations"] for r in conv if r["iterations"] is not None]
                row["iterations"] = float(np.mean(its)) if its else None
                row["iterations_q1"], row["iterations_median"], row["iterations_q3"] = quartiles(its)
                mv = [r["matvecs"] for r in conv if r["matvecs"] is not None]
                row["matvecs"] = float(np.mean(mv)) if mv else None
                ts = [r["time_s"] * 1e3 for r in conv if r["time_s"] is not None]
                row["time_ms"] = float(np.mean(ts)) if ts else None
                row["time_ms_q1"], row["time_ms_median"], row["time_ms_q3"] = quartiles(ts)
                setups = [r["setup_s"] * 1e3 for r in conv if r.get("setup_s") is not None]
                row["setup_ms_median"] = quartiles(setups)[1]
                pred = [r["predicted_iterations"] for r in sel if r.get("predicted_iterations") is not None]
                row["predicted_median"] = quartiles(pred)[1]
                ratios = [r["iterations"] / r["predicted_iterations"] for r in sel
                          if r.get("predicted_iterations") and r["iterations"] is not None]
                row["ratio_q1"], row["ratio_median"], row["ratio_q3"] = quartiles(ratios)
                row["margin_median"] = quartiles([r["margin"] for r in sel])[1]
                row["consistently_ordered"] = float(np.mean([bool(r.get("consistently_ordered")) for r in sel]))
                errors = sorted({r["error"] for r in sel if r["error"]})
                row["error"] = errors[0] if errors else None
                out.append(row)
    return out


def _cell(s, m):
    if s is None:
        return None
    if s["iterations"] is None:
        return "failed" if s["converged"] == 0 else None
    if m == "direct":
        return "exact" + ("" if s["converged"] == 1 else f" ({s['converged']:.0%})")
    return f"{s['iterations']:.1f}" + ("" if s["converged"] == 1 else f" ({s['converged']:.0%})")


def overview_table(summary, forms, methods=METHODS, regime=None) -> str:
    """Forms x methods: average iterations to converge (``-`` where the method does not apply)."""
    rows = []
    sel = [s for s in summary if regime is None or tuple(s[k] for k in _REGIME_KEYS) == regime]
    methods = [m for m in methods if any(s["method"] == m for s in sel)]
    for form in forms:
        row = {"form": FORM_LABELS.get(form, form)}
        if not any(s["form"] == form for s in sel):
            continue
        for m in methods:
            s = next((s for s in sel if s["form"] == form and s["method"] == m), None)
            row[m] = _cell(s, m)
        rows.append(row)
    return markdown_table(rows, ["form", *methods], headers=["form", *[METHOD_LABELS[m] for m in methods]])


def form_table(summary, form, regime=None) -> str:
    rows = [dict(s, method=METHOD_LABELS[s["method"]], converged=f"{s['converged']:.0%}",
                 iq=None if s["iterations_q1"] is None else f"{s['iterations_q1']:.4g}–{s['iterations_q3']:.4g}")
            for s in summary if s["form"] == form and (regime is None or tuple(s[k] for k in _REGIME_KEYS) == regime)]
    return markdown_table(rows, ["method", "iterations", "iterations_median", "iq", "predicted_median", "matvecs",
                                 "time_ms_median", "setup_ms_median", "converged"],
                          headers=["method", "mean iterations", "median", "quartiles", "predicted (median)",
                                   "mean matvecs", "median time (ms)", "median setup (ms)", "converged"],
                          floatfmt=".4g")


def theory_table(runs, methods=("jacobi", "gauss_seidel", "sor", "chebyshev", "cg")) -> str:
    """Measured / predicted iterations (medians over problems) per regime, form and method; Gauss–Seidel
    and SOR split by whether the sweep is consistently ordered (red-black: Young's theory holds)."""
    rows = []
    groups = {}
    for r in runs:
        if r["method"] not in methods or r.get("predicted_iterations") is None:
            continue
        ordered = bool(r.get("consistently_ordered")) if r["method"] in ("gauss_seidel", "sor") else None
        key = (tuple(r[k] for k in _REGIME_KEYS), r["form"], r["method"], ordered)
        groups.setdefault(key, []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    for key in sorted(groups, key=lambda k: (regimes(runs).index(k[0]), FORMS_ORDER.get(k[1], 99), order[k[2]],
                                            k[3] is False)):
        (size, margin, _, _), form, method, ordered = key
        sel = groups[key]
        measured = [r["iterations"] for r in sel if r["iterations"] is not None]
        ratios = [r["iterations"] / r["predicted_iterations"] for r in sel if r["iterations"] is not None]
        rows.append(dict(regime=f"{size}, {margin}", form=FORM_LABELS.get(form, form), method=METHOD_LABELS[method],
                         margin=quartiles([r["margin"] for r in sel])[1], measured=quartiles(measured)[1],
                         predicted=quartiles([r["predicted_iterations"] for r in sel])[1],
                         ratio=quartiles(ratios)[1], ordered={True: "yes", False: "no", None: ""}[ordered],
                         converged=f"{np.mean([bool(r['converged']) for r in sel]):.0%}", n=len(sel)))
    return markdown_table(rows, ["regime", "form", "method", "ordered", "n", "margin", "measured", "predicted", "ratio",
                                 "converged"],
                          headers=["size, margin", "form", "method", "red-black (Young)", "problems",
                                   "margin (median)", "measured (median)", "predicted (median)",
                                   "measured / predicted (median)", "converged"], floatfmt=".3g")


def fastest_table(summary) -> str:
    """Per regime and form: the fastest method in median wall time, setup included, and the runner-up."""
    rows = []
    keys = list(dict.fromkeys((tuple(s[k] for k in _REGIME_KEYS), s["form"]) for s in summary))
    for reg, form in keys:
        cand = [s for s in summary if tuple(s[k] for k in _REGIME_KEYS) == reg and s["form"] == form
                and s["converged"] == 1 and s["time_ms_median"] is not None]
        cand.sort(key=lambda s: s["time_ms_median"])
        if not cand:
            continue
        best = cand[0]
        second = cand[1] if len(cand) > 1 else None
        rows.append(dict(regime=f"{reg[0]}, margin {reg[1]}", form=FORM_LABELS.get(form, form),
                         fastest=METHOD_LABELS[best["method"]], time=best["time_ms_median"],
                         second=METHOD_LABELS[second["method"]] if second else None,
                         time2=second["time_ms_median"] if second else None,
                         cg=next((s["time_ms_median"] for s in cand if s["method"] == "cg"), None),
                         amg=next((s["time_ms_median"] for s in cand if s["method"] == "amg_cg"), None)))
    return markdown_table(rows, ["regime", "form", "fastest", "time", "second", "time2", "cg", "amg"],
                          headers=["size, margin", "form", "fastest (setup included)", "median ms", "runner-up",
                                   "median ms", "CG (ms)", "PCG AMG (ms)"], floatfmt=".3g")


def crossover_lines(runs) -> list[str]:
    """Per size and form, where AMG-preconditioned CG (setup included) overtakes the fastest other
    method in median wall time, as markdown bullets."""
    out = []
    keys = list(dict.fromkeys((r["size"], r["form"]) for r in runs if r["method"] == "amg_cg"))
    for size, form in keys:
        wins, losses = [], []
        regs = list(dict.fromkeys(r["regime"] for r in runs if r["size"] == size and r["form"] == form))
        regs.sort(key=lambda g: quartiles([r["margin"] for r in runs if r["size"] == size and r["form"] == form
                                           and r["regime"] == g])[1])
        for regime in regs:
            sel = [r for r in runs if r["size"] == size and r["form"] == form and r["regime"] == regime]
            med = {}
            for m in dict.fromkeys(r["method"] for r in sel):
                ts = [r["time_s"] for r in sel if r["method"] == m and r["converged"] and r["time_s"] is not None]
                if ts and len(ts) == sum(1 for r in sel if r["method"] == m):
                    med[m] = float(np.median(ts))
            if "amg_cg" not in med or len(med) < 2:
                continue
            best = min((m for m in med if m != "amg_cg"), key=med.get)
            margin = quartiles([r["margin"] for r in sel])[1]
            entry = f"{margin:.3g} ({METHOD_LABELS[best]} {1e3 * med[best]:.3g} ms, AMG {1e3 * med['amg_cg']:.3g} ms)"
            (wins if med["amg_cg"] < med[best] else losses).append(entry)
        head = f"- {FORM_LABELS.get(form, form)}, size {size}: "
        if wins:
            text = head + "AMG-PCG fastest at margin " + "; ".join(wins) + (
                f"; slower at {'; '.join(losses)}" if losses else "") + "."
        else:
            text = head + "AMG-PCG never fastest; the fastest other method against it, at margin " + \
                "; ".join(losses) + "."
        out.append(text)
    return out


#: The thesis's Fig. 2.3 (25 images, about 109 x 85 pixels, 21 labels, tolerance 1e-6).
THESIS = {"jacobi": 24.8, "gauss_seidel": 16.4}
THESIS_CG_VS_MEANFIELD = 2.5


def thesis_table(runs) -> str | None:
    """The ``seed`` regime at the thesis size beside the thesis's Fig. 2.3 (None without such runs)."""
    sel = [r for r in runs if r["regime"] == "seed" and r["size"] == "thesis"]
    if not sel:
        sel = [r for r in runs if r["regime"] == "seed"]
        if not sel:
            return None
    rows = []
    for form in dict.fromkeys(r["form"] for r in sel):
        row = {"form": FORM_LABELS.get(form, form), "size": sel[0]["size"],
               "N": int(np.median([r["N"] for r in sel if r["form"] == form]))}
        for m in ("jacobi", "gauss_seidel", "gmres", "cg"):
            its = [r["iterations"] for r in sel if r["form"] == form and r["method"] == m and r["converged"]]
            row[m] = float(np.mean(its)) if its else None
        ratios = []
        for p in dict.fromkeys(r["problem"] for r in sel if r["form"] == form):
            t = {r["method"]: r["time_s"] for r in sel if r["problem"] == p and r["form"] == form and r["converged"]}
            if t.get("jacobi") and t.get("cg"):
                ratios.append(t["jacobi"] / t["cg"])
        row["ratio_median"] = float(np.median(ratios)) if ratios else None
        row["ratio_max"] = float(np.max(ratios)) if ratios else None
        rows.append(row)
    rows.append({"form": "thesis, Fig. 2.3", "size": "~109 x 85, 21 labels", "N": 195000, "jacobi": THESIS["jacobi"],
                 "gauss_seidel": THESIS["gauss_seidel"], "gmres": None, "cg": None, "ratio_median": None,
                 "ratio_max": THESIS_CG_VS_MEANFIELD})
    return markdown_table(rows, ["form", "size", "N", "jacobi", "gauss_seidel", "gmres", "cg", "ratio_median",
                                 "ratio_max"],
                          headers=["", "size", "N", "Jacobi", "Gauss–Seidel", "GMRES", "CG",
                                   "time Jacobi / CG (median)", "(max)"], floatfmt=".3g")


# --------------------------------------------------------------------------- figures
def plot_histories(runs, forms, path, *, xaxis: str, rtol: float) -> None:
    """Relative residual (log scale) against iterations or wall time, one panel per form."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, len(forms))
    nrows = -(-len(forms) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.ravel()[len(forms):]:
        ax.set_visible(False)
    floor = rtol * 1e-3
    first = regimes(runs)[:1]
    runs = [r for r in runs if tuple(r[k] for k in _REGIME_KEYS) in first]
    for ax, form in zip(axes.ravel(), forms):
        rep = [r for r in runs if r["form"] == form and r.get("residual_history")]
        rep.sort(key=lambda r: METHODS.index(r["method"]) if r["method"] in METHODS else len(METHODS))
        iterative = [r["time_s"] or 0.0 for r in rep if r["method"] != "direct"]
        x_right = 1.05e3 * max(iterative) if iterative else 1.0
        for r in rep:
            hist = np.asarray(r["residual_history"], dtype=float)
            if xaxis == "iteration":
                x = np.arange(len(hist), dtype=float)
            else:
                # every iteration costs about the same, so iteration k is placed at k/iterations of
                # the solve's wall time
                x = np.linspace(0.0, (r["time_s"] or 0.0) * 1e3, len(hist))
            label = METHOD_LABELS.get(r["method"], r["method"])
            style = dict(_STYLE.get(r["method"], {}))
            if r["method"] == "direct":
                # an exact solve lands at rounding level, far below rtol: mark it on the floor, at
                # one step or at its wall time (at the right edge, annotated, when that is off scale)
                x = np.array([1.0 if xaxis == "iteration" else (r["time_s"] or 0.0) * 1e3])
                label = "direct (exact: at the floor)"
                hist = np.array([floor * 1.6])
                if xaxis == "time" and x[0] > 1.25 * x_right:
                    ax.annotate(f"direct: {x[0]:.3g} ms \u2192", xy=(x_right, floor * 1.6), xytext=(-8, 0),
                                textcoords="offset points", ha="right", va="center", fontsize=8)
                    x = np.array([x_right])
            else:
                # solvers that report the residual once per round repeat it within the round: draw
                # the rounds' end points, joined
                keep = np.r_[True, hist[1:] != hist[:-1]]
                keep[-1] = True
                if keep.sum() < 0.5 * len(hist):
                    x, hist = x[keep], hist[keep]
                    style.setdefault("marker", "o")
                    style.setdefault("ms", 3)
            ax.semilogy(x, np.maximum(hist, floor), label=label, lw=1.6, **style)
        ax.axhline(rtol, color="0.5", lw=0.8, ls=(0, (4, 3)))
        ax.set_ylim(floor, 2.0)
        name = rep[0]["problem"] if rep else form
        n = rep[0]["N"] if rep else ""
        ax.set_title(f"{FORM_LABELS.get(form, form)}\n{name}, N = {n}", fontsize=10)
        ax.set_xlabel("iteration" if xaxis == "iteration" else "wall time (ms)")
        ax.set_ylabel(r"relative residual $\|b - Mx\| / \|b\|$")
        ax.set_xlim(left=0)
        if xaxis == "time" and rep:
            ax.set_xlim(right=x_right * 1.03)
        ax.grid(True, which="major", alpha=0.3)
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = [METHOD_LABELS[m] for m in METHODS]
    handles = dict(sorted(handles.items(), key=lambda kv: next(
        (i for i, o in enumerate(order) if kv[0].startswith(o.split(" ")[0])), len(order))))
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=len(handles),
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    what = "iteration" if xaxis == "iteration" else "wall time"
    fig.suptitle(f"Relative residual vs {what} (representative problem of each form; dashed: rtol = {rtol:g})")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=130)
    plt.close(fig)


_PREDICTED_METHODS = ("jacobi", "gauss_seidel", "sor", "cg")


def plot_vs_margin(runs, forms, target=None, *, what: str = "iterations"):
    """Iterations (or wall time, setup included) against the margin, log-log, one panel per form.

    Measured: the median over the problems of each margin regime (markers) with the quartiles (error
    bars), at the problems' median margin.  Predicted (dashed, same colour): the theory's iterations
    for Jacobi, Gauss–Seidel (Young), SOR (Young's omega) and CG (the ``kappa`` bound), medians
    per regime.  Runs that did not converge are drawn hollow at their iteration limit.

    ``target``: None (return a new Figure) or a path (the figure is saved there).  Uses
    ``matplotlib.figure.Figure`` (no display needed).  Returns the Figure.
    """
    from matplotlib.figure import Figure

    key = "iterations" if what == "iterations" else "time_s"
    size_list = list(dict.fromkeys(r["size"] for r in runs))
    forms = [f for f in forms if any(r["form"] == f for r in runs)]
    ncols = min(3, max(1, len(forms)))
    nrows = -(-max(1, len(forms)) // ncols)
    fig = Figure(figsize=(4.8 * ncols, 3.9 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[len(forms):]:
        ax.set_visible(False)
    for ax, form in zip(axes, forms):
        for size_i, size in enumerate(size_list):
            marker = "osD^v"[size_i % 5]
            fr = [r for r in runs if r["form"] == form and r["size"] == size]
            for method in [m for m in METHODS if m != "direct" and any(r["method"] == m for r in fr)]:
                mr = [r for r in fr if r["method"] == method]
                style = _STYLE.get(method, {})
                xs, meds, los, his, pred_x, pred = [], [], [], [], [], []
                hollow_x, hollow_y = [], []
                for regime in dict.fromkeys(r["regime"] for r in mr):
                    rr = [r for r in mr if r["regime"] == regime]
                    xm = quartiles([r["margin"] for r in rr])[1]
                    vals = [r[key] * (1e3 if key == "time_s" else 1.0) for r in rr if r[key] is not None]
                    q1, med, q3 = quartiles(vals)
                    if med is None or xm is None:
                        continue
                    if all(r["converged"] for r in rr):
                        xs.append(xm)
                        meds.append(med)
                        los.append(med - q1)
                        his.append(q3 - med)
                    else:
                        hollow_x.append(xm)
                        hollow_y.append(med)
                    p = quartiles([r.get("predicted_iterations") for r in rr
                                   if r.get("predicted_iterations") is not None])[1]
                    if key == "iterations" and method in _PREDICTED_METHODS and p is not None:
                        pred_x.append(xm)
                        pred.append(p)
                label = METHOD_LABELS[method] + (f" ({size})" if len(size_list) > 1 else "")
                order = np.argsort(xs)
                if xs:
                    ax.errorbar(np.asarray(xs)[order], np.asarray(meds)[order],
                                yerr=[np.asarray(los)[order], np.asarray(his)[order]], color=style.get("color"),
                                marker=marker, ms=4, lw=1.2, capsize=2, label=label)
                if hollow_x:
                    ax.plot(hollow_x, hollow_y, ls="none", marker=marker, mfc="none", color=style.get("color"),
                            label=f"{label}: not converged (limit)")
                if pred_x:
                    o = np.argsort(pred_x)
                    ax.plot(np.asarray(pred_x)[o], np.asarray(pred)[o], ls="--", lw=1.0, color=style.get("color"),
                            label=f"{METHOD_LABELS[method]} predicted" + (f" ({size})" if len(size_list) > 1 else ""))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("margin  (lam = (1 + margin) rho(B))")
        ax.set_ylabel("iterations" if key == "iterations" else "wall time (ms, setup included)")
        ax.set_title(FORM_LABELS.get(form, form), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    title = ("Iterations to converge vs margin (medians, quartile bars; dashed: theory)" if key == "iterations"
             else "Wall time vs margin (medians, quartile bars)")
    fig.suptitle(title)
    if target is not None:
        fig.savefig(target, dpi=120)
    return fig


# --------------------------------------------------------------------------- command line
#: The presets: the regime sweep (``--sweep``) and the thesis-size comparison (``--thesis``).
SWEEP_MARGINS = ("0.001", "0.01", "0.1", "1")
SWEEP_SIZES = ("medium", "large")
THESIS_FORMS = ("grid", "grid_potts")
THESIS_METHODS = ("jacobi", "gauss_seidel", "gmres", "cg")


def _margin_arg(text):
    if text in ("seed", "drawn"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a margin is a number > 0, 'seed' or 'drawn'; got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"a margin must be > 0; got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = study_parser(
        "convergence",
        "Solver convergence study on built-in G-CRF problems of every form: Jacobi, Gauss-Seidel, SOR, Chebyshev, "
        "GMRES, CG, block-Jacobi / SSOR / AMG PCG and the direct solve, to the same relative residual, swept over "
        "margins, sizes, dtypes and tolerances, with the predicted iterations beside the measured ones.  Writes "
        "summary.md, runs.jsonl (resumable), runs.json, runs.csv and plots.",
        quick_help="3 small problems per form (instead of 25 of --sizes), for a run under a minute",
        forms=_forms())
    parser.add_argument("--count", type=int, default=None,
                        help="problems per form and regime (default 25, or 3 with --quick)")
    parser.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=None, metavar="SIZE",
                        help="problem sizes, any of: " + " ".join(SIZES) + " (crops of 5-8, 9-16, 20-32 pixels a "
                             "side; the whole photograph at stride 8 (75 x 64), at stride 6 with 21 labels "
                             "(100 x 85, the thesis's size), at full resolution (600 x 512)); default medium "
                             "(--quick: small; --sweep: medium large; --thesis: thesis)")
    parser.add_argument("--size", choices=tuple(SIZES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--margins", nargs="+", type=_margin_arg, default=None, metavar="MARGIN",
                        help="lam = (1 + margin) rho(B): numbers > 0, 'drawn' (in [0.05, 0.3] per problem) or "
                             "'seed' (Jacobi predicted at 25 iterations: the thesis's regime); default drawn "
                             "(--sweep: " + " ".join(SWEEP_MARGINS) + "; --thesis: seed)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, metavar="METHOD",
                        help=f"methods to run, any of: {' '.join(METHODS)} (default: all; --thesis: "
                             f"{' '.join(THESIS_METHODS)})")
    parser.add_argument("--rtols", nargs="+", type=float, default=None, metavar="RTOL",
                        help="stopping rules ||b - M x|| <= rtol ||b||, the same for every method (default: 1e-6)")
    parser.add_argument("--rtol", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--maxiter", type=int, default=10000,
                        help="iteration limit of every iterative method (GMRES: inner iterations; "
                             "default: %(default)s)")
    parser.add_argument("--restart", type=int, default=20, help="GMRES restart length (default: %(default)s)")
    parser.add_argument("--dtypes", nargs="+", choices=("float64", "float32"), default=None, metavar="DTYPE",
                        help="floating dtypes of the systems (default: float64)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sweep", action="store_true",
                        help="the regime sweep: every form and method, margins " + " ".join(SWEEP_MARGINS)
                             + ", sizes medium and large, 25 problems (23 minutes on 2 idle cores)")
    parser.add_argument("--thesis", action="store_true",
                        help="the thesis's Fig. 2.3 side by side: the seed regime at the thesis's size (100 x 85 "
                             "pixels, 21 labels), grid forms, Jacobi / Gauss-Seidel / GMRES / CG, 25 problems (about 40 "
                             "seconds on 2 idle cores)")
    parser.add_argument("--report", metavar="PATH", default=None,
                        help="run (or resume, from results/convergence-report/) the sweeps of the report and write it "
                             "to PATH (docs/studies/convergence.md), its figures to studies/figures/")
    parser.add_argument("--resume", action="store_true",
                        help="keep the problems already finished in --out (runs.jsonl) and run only the others")
    parser.add_argument("--dask", metavar="ADDRESS", default=None,
                        help="address of a running dask.distributed scheduler (e.g. tcp://host:8786) to "
                             "solve the problems on, one task per problem; workers need gcrflinalg "
                             "installed (default: solve in this process)")
    return parser


def _forms():
    from gcrflinalg.problems import FORMS

    return FORMS


def _options(args):
    """The sweep's axes and options from the command line and its presets."""
    if args.quick:
        sizes, margins, count = ["small"], ["drawn"], 3
    elif args.thesis:
        sizes, margins, count = ["thesis"], ["seed"], 25
    elif args.sweep:
        sizes, margins, count = list(SWEEP_SIZES), list(SWEEP_MARGINS), 25
    else:
        sizes, margins, count = ["medium"], ["drawn"], 25
    sizes = args.sizes or ([args.size] if args.size else sizes)
    margins = args.margins or margins
    count = args.count if args.count is not None else count
    rtols = args.rtols or ([args.rtol] if args.rtol is not None else [1e-6])
    dtypes = args.dtypes or ([args.dtype] if args.dtype else ["float64"])
    forms = list(dict.fromkeys(args.forms))
    methods = args.methods or (list(THESIS_METHODS) if args.thesis else list(METHODS))
    if args.thesis and args.forms == list(_forms()):
        forms = list(THESIS_FORMS)
    methods = [m for m in METHODS if m in methods]
    return dict(sizes=list(dict.fromkeys(sizes)), margins=list(dict.fromkeys(margins)), count=count,
                rtols=list(dict.fromkeys(rtols)), dtypes=list(dict.fromkeys(dtypes)), forms=forms, methods=methods)


def report(runs, problems_meta, opts, *, header) -> str:
    """The markdown report of a finished sweep (printed and written as ``summary.md``)."""
    forms, methods = opts["forms"], opts["methods"]
    summary = summarise(runs, forms, methods)
    notes = ("Mean over the problems each method converged on (a percentage follows where some did not). "
             "lam = (1 + margin) rho(B), so the Jacobi radius of the grid forms is 1/(1 + margin).  On the Potts "
             "grid, CG is the toolkit's split solve (one CG on the label sum, then L label systems of size P at "
             "once; its iterations add both phases); PCG is plain CG on M with the block-Jacobi preconditioner, "
             "PCG (SSOR) with symmetric Gauss-Seidel in colour order, PCG (AMG) with a PyAMG Ruge-Stuben V-cycle "
             "(its time includes the setup).  CG, red-black reduced, runs on the 4-neighbourhood general grids "
             "only: CG on the Schur complement of the red pixels after exact elimination of the black ones.")
    sections = [f"# Solver convergence on built-in G-CRF problems\n\n{header}."]
    for reg in regimes(runs):
        sections.append(f"## Average iterations to converge ({_regime_text(reg)})\n\n" + notes + "\n\n"
                        + overview_table(summary, forms, methods, regime=reg))
    sections.append("## Measured and predicted iterations\n\nMedians over the problems.  Predicted: Jacobi "
                    "ln(rtol)/ln(rho_J); Gauss-Seidel by Young (rho_GS = rho_J^2), which holds where the sweep is "
                    "consistently ordered (red-black on 4-neighbourhood grids: 'yes'); SOR with Young's omega* = "
                    "2/(1 + sqrt(1 - rho_J^2)); CG and Chebyshev sqrt(kappa) ln(2/rtol)/2 with kappa from CG's "
                    "Ritz values.  Residual-based counts (the stopping rule) fall below the error-based theory "
                    "while the start residual has little weight on the slowest modes.  An unconverged run counts with "
                    "its iteration limit.\n\n" + theory_table(runs))
    sections.append("## Fastest method per form and regime (wall time, setup included)\n\n" + fastest_table(summary))
    thesis = thesis_table(runs)
    if thesis:
        sections.append("## The thesis's Fig. 2.3 side by side\n\nThe seed regime: the margin at which "
                        "Jacobi's predicted count is 25 at rtol 1e-6.  'time Jacobi / CG' is the wall-time ratio "
                        "of parallel mean-field (Jacobi) to CG per problem.\n\n" + thesis)
    for reg in regimes(runs):
        for form in forms:
            if any(r["form"] == form and tuple(r[k] for k in _REGIME_KEYS) == reg for r in runs):
                sections.append(f"## {FORM_LABELS.get(form, form)} ({_regime_text(reg)})\n\n"
                                + form_table(summary, form, regime=reg))
    errors = sorted({(r["form"], r["method"], r["error"]) for r in runs if r["error"]})
    if errors:
        sections.append("## Errors\n\n" + "\n".join(f"- {f} / {m}: {e}" for f, m, e in errors))
    build = list({(r["problem"], r["regime"], r["size"], r["dtype"], r["rtol"]): r["build_s"] for r in runs
                  if r.get("build_s") is not None}.values())
    if build:
        sections.append(f"Building a problem with its spectral facts (rho(B) for lam, the Jacobi radius, kappa "
                        f"from CG's Ritz values) took {np.median(build):.3g} s (median), {np.max(build):.3g} s at "
                        "most (column build_s of runs.csv).")
    sections.append("Figures: `iterations_vs_margin.png`, `time_vs_margin.png` (medians and quartiles against the "
                    "margin, predicted lines dashed), `residual_vs_iteration.png`, `residual_vs_time.png` "
                    "(representative problem of each form, index 0, first regime).  Every run: `runs.json`, "
                    "`runs.csv`; the resumable log: `runs.jsonl`.")
    return "\n\n".join(sections) + "\n", summary


#: The sweeps of the report (docs/studies/convergence.md), each ``(name, arguments)``.
REPORT_SWEEPS = (
    ("thesis", ["--thesis", "--count", "25"]),
    ("medium", ["--margins", "0.001", "0.01", "0.1", "1", "seed", "--sizes", "medium", "--count", "25",
                "--maxiter", "5000"]),
    ("large", ["--forms", "grid", "grid_potts", "--margins", "0.001", "0.01", "0.1", "1", "--sizes", "large",
               "--count", "25", "--maxiter", "5000"]),
)
REPORT_COMMAND = "python -m studies.convergence --report docs/studies/convergence.md"


def write_report(path, *, results="results/convergence-report", figures="studies/figures", progress=False) -> str:
    """Run (or resume) the report's sweeps (:data:`REPORT_SWEEPS`) and write the report to ``path``.

    Each sweep writes into ``results/<name>/`` and resumes what is there; the figures go to
    ``figures`` (linked from the report).  Returns the report's text.
    """
    import json
    import shutil

    records = {}
    for name, argv in REPORT_SWEEPS:
        folder = os.path.join(results, name)
        main(argv + ["--out", folder, "--resume"] + ([] if progress else ["--no-progress"]))
        with open(os.path.join(folder, "runs.json"), encoding="utf-8") as fh:
            records[name] = json.load(fh)
    os.makedirs(figures, exist_ok=True)
    rel = os.path.relpath(figures, os.path.dirname(os.path.abspath(path)) or ".")
    for name in ("medium", "large"):
        for fig in ("iterations_vs_margin.png", "time_vs_margin.png"):
            shutil.copyfile(os.path.join(results, name, fig), os.path.join(figures, f"convergence_{name}_{fig}"))
    text = report_text(records, figures=rel)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {path}")
    return text


def _thesis_numbers(runs):
    out = {}
    for form in ("grid", "grid_potts"):
        sel = [r for r in runs if r["form"] == form and r["regime"] == "seed" and r["converged"]]
        its = {m: [r["iterations"] for r in sel if r["method"] == m] for m in ("jacobi", "gauss_seidel", "cg")}
        out[form] = {m: float(np.mean(v)) if v else float("nan") for m, v in its.items()}
    return out


def report_text(records, *, figures="../../studies/figures") -> str:
    """The markdown of docs/studies/convergence.md from the report's sweeps (``name -> runs.json``)."""
    med, large, thesis = records["medium"], records["large"], records["thesis"]
    env = med["environment"]

    def header(rec, name):
        o = rec["options"]
        return (f"`{name}`: {o['count']} problem(s) per form and regime, sizes {' '.join(o['sizes'])}, margins "
                f"{' '.join(o['margins'])}, rtol {' '.join(f'{r:g}' for r in o['rtols'])}, maxiter {o['maxiter']}, "
                f"{len(rec['runs'])} runs")

    tn = _thesis_numbers(thesis["runs"])
    lines = [
        "# Convergence of the solvers",
        "",
        "Jacobi, Gauss–Seidel, SOR with Young's relaxation, Chebyshev, GMRES, CG, PCG (block Jacobi, SSOR, "
        "algebraic multigrid) and the direct solves on built-in problems of every form, swept over the margin "
        "of `lam` above the Jacobi bound, the size and the tolerance, with the theory's predicted iterations "
        "beside every measurement.  Every method stops on the same rule, the true residual "
        "`||b - M x|| <= rtol ||b||`.",
        "",
        "This page is generated; regenerate it (and its figures in `studies/figures/`) with",
        "",
        "```",
        REPORT_COMMAND,
        "```",
        "",
        "which runs (or resumes, from `results/convergence-report/`) the three sweeps below on the CPU.  "
        f"Measured on {env['cpus']} CPU cores shared with other work ({env['platform']}), so the times are "
        "noisy; iteration counts are exact.",
        "",
    ] + [f"- {header(records[name], name)}" for name, _ in REPORT_SWEEPS] + [
        "",
        "The everyday commands: `python -m studies.convergence` (25 problems per form at the medium size, "
        "margins drawn in [0.05, 0.3]; about a minute), `--quick` (under a minute), `--sweep` (every form and "
        "method, margins 1e-3 1e-2 0.1 1, sizes medium and large, 25 problems: the long sweep, 23 "
        "minutes on 2 idle cores, 1100 problem runs), `--thesis` (the seed regime at the thesis's size, 25 problems per grid "
        "form: about 40 seconds on 2 idle cores).  `--resume` continues an interrupted sweep from "
        "`runs.jsonl`.",
        "",
        "## Regimes",
        "",
        "`lam = (1 + margin) rho(B)` with `B = A - diag(A)`, so on the grid and multi-resolution forms "
        "(`diag(A) = 0`) the Jacobi iteration matrix has radius exactly `rho_J = 1/(1 + margin)`.  The "
        "`seed` regime takes the margin at which Jacobi's predicted count `ln(rtol)/ln(rho_J)` is 25 at "
        "rtol 1e-6 (margin = 10^(6/25) - 1 = 0.738), the regime of the thesis's Fig. 2.3 (Jacobi 24.8 "
        "iterations on average).",
        "",
        "## Iterations against the margin",
        "",
        "Medians over the problems with quartile bars; dashed: the theory (Jacobi `ln(rtol)/ln(rho_J)`, "
        "Gauss–Seidel by Young `rho_GS = rho_J^2`, SOR with `omega* = 2/(1 + sqrt(1 - rho_J^2))`, CG "
        "`sqrt(kappa) ln(2/rtol)/2` with `kappa` from CG's own Ritz values).  Hollow markers: not converged "
        "within `--maxiter`, drawn at the limit.",
        "",
        f"![iterations against margin, medium size]({figures}/convergence_medium_iterations_vs_margin.png)",
        "",
        f"![iterations against margin, whole photograph at stride 8]({figures}/convergence_large_iterations_vs_margin.png)",
        "",
        "## Wall time against the margin (setup included)",
        "",
        f"![time against margin, medium size]({figures}/convergence_medium_time_vs_margin.png)",
        "",
        f"![time against margin, whole photograph at stride 8]({figures}/convergence_large_time_vs_margin.png)",
        "",
        "## Measured and predicted iterations",
        "",
        "Medians over the problems; the ratio is measured / predicted per problem (median).  Gauss–Seidel and "
        "SOR are split by whether the sweep is consistently ordered (red-black on the 4-neighbourhood grids, "
        "where Young's theorem holds) or not (8- and 12-neighbourhoods, four or five colours; the "
        "multi-resolution and low-rank sweeps).  Young's prediction holds only in the first case, and there "
        "for the rate (the residual-based counts of the red-black sweep start below it, ratios about 0.6).  "
        "Elsewhere Gauss–Seidel is far faster than the formula: on those problems the positive-definiteness "
        "bound lies well below `rho(B)`, so Jacobi's slowest mode is the largest eigenvalue of `M` (where "
        "Jacobi over-corrects), which a Gauss–Seidel sweep damps at once, while the small end of the "
        "spectrum stays far from 0 (CG's low counts there say the same).  The residual-based Jacobi counts "
        "fall a roughly constant number of iterations below `ln(rtol)/ln(rho_J)` (the start residual has "
        "little weight on the slowest modes), so their ratios sit a little under 1 and approach it as rtol "
        "shrinks; Chebyshev meets its bound almost exactly, CG beats it.  An unconverged run counts with "
        "its iteration limit.",
        "",
        theory_table(med["runs"]),
        "",
        theory_table(large["runs"]),
        "",
        "## Fastest method per form and regime",
        "",
        "Median wall time per solve, setup included (the SSOR colouring, the AMG hierarchy, the SOR and "
        "Chebyshev spectral estimates); the last two columns locate the crossover between plain CG and "
        "AMG-preconditioned CG.",
        "",
        fastest_table(summarise(med["runs"], med["options"]["forms"], med["options"]["methods"])),
        "",
        fastest_table(summarise(large["runs"], large["options"]["forms"], large["options"]["methods"])),
        "",
        "Where algebraic multigrid (setup included) overtakes the fastest of the other methods, one "
        "solve per problem:",
        "",
        *crossover_lines(med["runs"] + large["runs"]),
        "",
        "With many right-hand sides the hierarchy is built once and the crossover moves to larger "
        "margins: the setup column of `summary.md` is the part paid once.",
        "",
        "## The thesis's Fig. 2.3 side by side",
        "",
        thesis_table(thesis["runs"]) or "(no seed-regime runs)",
        "",
        "Where ours differ and why.  In the seed regime our Jacobi averages "
        f"{tn['grid']['jacobi']:.1f} (general grid) and {tn['grid_potts']['jacobi']:.1f} (Potts grid) iterations "
        f"against the thesis's 24.8, and Gauss–Seidel {tn['grid']['gauss_seidel']:.1f} / "
        f"{tn['grid_potts']['gauss_seidel']:.1f} against 16.4.  The seed margin is chosen so that the "
        "*predicted* Jacobi count is 25; our stopping rule is the residual, which falls faster than the "
        "asymptotic rate at first, so the measured count lands a few iterations lower.  Our Gauss–Seidel "
        "sweeps in colour order, red-black on the 4-neighbourhood problems, where Young's theorem "
        "(rho_GS = rho_J^2) predicts half of Jacobi's count, and the measurements follow it (see the table "
        "above); on the 8-neighbourhood problems the four-colour sweep does better still.  The thesis's "
        "Gauss–Seidel/Jacobi ratio, 16.4 / 24.8 = 0.66, is well above Young's 0.5: its sweep order or its "
        "systems were not consistently ordered, and the thesis does not say which.  "
        f"CG needs {tn['grid']['cg']:.1f} iterations on the general grid, as GMRES does (the systems are "
        "symmetric: GMRES converging within its restart length takes CG's steps in exact arithmetic, at a "
        f"higher cost per step); on the Potts grid CG on M takes {tn['grid_potts']['cg']:.1f}, and the "
        "toolkit's L + 1 split (potts_split) runs CG on systems of size P, each step far cheaper than a "
        "product with M.  The thesis's systems come from "
        "trained networks on its images; ours from the photograph with contrast-based weights, at the "
        "thesis's size (the whole "
        "photograph at stride 6: 100 x 85 pixels, 21 labels, N = 178,500).  The time ratio 'Jacobi / CG' "
        "compares parallel mean-field (Jacobi is parallel mean-field for a Gaussian model) with CG in the "
        "same process, on the CPU; the thesis's 'up to 2.5x' comes from its own implementation and hardware, "
        "so only the order of magnitude is comparable.",
        "",
        "## Building the problems",
        "",
        "`lam` needs `rho(B)`.  The problems get it by plain Lanczos (no ARPACK restarts) to a hundredth of "
        "the margin, relative: the accuracy `lam` needs, not full accuracy.  On the grid forms Lanczos does "
        "not use the operator's product but the factors of the pairwise blocks: the general grid's block of "
        "offset `k` at pixel `p` is `C_k w_k(p)` (an `L x L` label compatibility times a contrast weight), so "
        "`B v` is one small matrix product per tile of pixels, `(L, 2 K L) x (2 K L, 64)`, five to seven times "
        "cheaper than the operator's product, which reads all `K L^2 P` stored entries.  On the "
        "4-neighbourhood `B` only couples red and black pixels, so Lanczos runs on `B^2` over the red pixels "
        "(vectors of half the length, each step two half-size products, a polynomial of twice the degree in "
        "`B`): 10 to 15 steps at the thesis's size where Lanczos on `B` took 35.  On the 8- and "
        "12-neighbourhoods it runs on `B` for both ends; its start leans on the products of the extreme "
        "eigenvectors of the mean compatibility and of `W`, near the ends of `B`'s spectrum, which saves a "
        "third to a half of the steps (25 to 30 instead of 40 to 45) and, from a sample of problems, stops "
        "short of the extreme eigenvalue less often than a random start.  On the Potts grid `B = (1 1^T - I) "
        "(x) W`, so Lanczos runs on the `P x P` weight matrix `W` (`rho(B) = (L - 1) rho(W)`).  The operator "
        "is built once, with its `lam`, and one product with it checks the factors (were they wrong, its own "
        "products would set `lam`), for the first problem of each configuration (neighbourhood, labels, "
        "image size) in a process: the check tests the conventions of the two products, which do not depend "
        "on the values.  Lanczos's updates and sums are compiled loops with fixed-order sums, the "
        "same on any thread count, and nothing in the build calls BLAS: the threads a BLAS library leaves "
        "spinning after a product made the parallel kernels that followed it (Lanczos's products, the CG "
        "solve) two to four times slower.  The photograph is block-averaged once per stride; the colour "
        "clusters are drawn per problem (their seed is part of the problem) by a compiled k-means that gives "
        "the plain NumPy k-means's labels and centres.  The per-problem build time (the photograph's colour "
        "clusters, the parameters, `rho(B)`, and for the low-rank and video forms the Jacobi-radius estimate) "
        "is the `build_s` column of `runs.csv`; the first problem of a process also pays the loading of the "
        "compiled kernels.",
        "",
    ]
    for name, _ in REPORT_SWEEPS:
        runs = records[name]["runs"]
        for form in dict.fromkeys(r["form"] for r in runs):
            sel = [r for r in runs if r["form"] == form]
            build = list({(r["problem"], r["regime"]): r["build_s"] for r in sel
                          if r.get("build_s") is not None}.values())
            cg = [r["time_s"] for r in sel if r["method"] == "cg" and r["time_s"] is not None]
            if build and cg:
                lines.append(f"- `{name}`, {FORM_LABELS.get(form, form)}: building {np.median(build):.3g} s per "
                             f"problem (median, {np.max(build):.3g} s at most) against {np.median(cg):.3g} s for "
                             "its CG solve (median).")
    lines += ["", BUILD_MEASUREMENTS]
    return "\n".join(lines) + "\n"


#: Building against solving, measured apart from the sweeps (hand-run; the report carries the text).
BUILD_MEASUREMENTS = """\
The study's `build_s` is taken between the solves of the other methods, on a machine whose page
cache and allocator the sweep keeps busy.  Building alone, with the script below (best of 5 builds
and first CG solves per problem at the thesis's size, one each at full resolution, `full` as its
argument), on the idle 2-core machine, this version and the previous one alternated in two rounds
(the range over the rounds; one run each at full resolution):

| problem | neighbourhood | thesis: build / CG, now | before | full resolution: build / CG, now | before |
| ------- | ------------- | ----------------------: | -----: | -------------------------------: | -----: |
| grid 0 | 4 | 0.63-0.64 | 1.23-1.24 | 0.32 | 0.96 |
| grid 1 | 8 | 0.90-0.92 | 1.59-1.61 | 1.13 (0.79) | 1.88 |
| grid 2 | 4 | 0.58-0.63 | 1.20-1.21 | 0.35 | 1.19 |
| grid 3 | 12 | 0.74 | 1.36-1.40 | 1.30 (0.51) | 1.69 |
| grid_potts 0 | 4 | 0.93-0.94 | 1.40 | 0.46 | 0.73 |
| grid_potts 1 | 8 | 1.22-1.26 | 1.70-1.71 | 0.80 | 0.89 |
| grid_potts 2 | 4 | 0.91-0.93 | 1.36 | 0.56 | 0.79 |
| grid_potts 3 | 12 | 1.07-1.08 | 1.53-1.56 | 0.94 | 1.16 |

What changed from the previous version:

- The factors' product (Lanczos's product on the general grid, and `W`'s on the Potts grid) takes
  four rows of its tile at a time and four terms of each sum at a time: each partial sum is loaded
  and stored once per four multiply-adds instead of once per one, so the loop is bound by the
  arithmetic rather than the stores (47-50 against 25-27 GFlop/s for the tile's product on one
  core).  Every sum is still one multiply-add per term in the same order, so the products, the
  Lanczos runs and every problem's `lam` are the same to the bit.  At the thesis's size one product
  takes 0.53 ms (4-neighbourhood), 1.00 ms (8) and 1.44 ms (12) against 0.81-0.90, 1.57-1.86 and
  2.48-2.75 ms, five to seven times less than the operator's product.
- The product that checks the factors against the operator runs for the first problem of each
  configuration (Potts or general, neighbourhood, labels, image size) in a process, not for every
  problem (`GridCoupling.agrees_with`).  The best of 5 builds is one without it; the first build of
  a configuration pays one product of the operator more, and so do the 8- and 12-neighbourhood rows
  at full resolution, which are each the first of their configuration (in brackets: a second
  problem of the configuration, best of 2).  The operator reads its blocks (NaN/Inf, Gershgorin
  radii, red-black blocks) at its first use: without the check that is the first CG solve, which
  takes a few ms more than a later one on the 4-neighbourhood and saves the construction's read.
  Build and first solve together: 90-93 ms against 106-107 ms on the 4-neighbourhood, 168-169 ms
  against 217-218 ms on the 8-neighbourhood, 218-221 ms against 288-290 ms on the 12-neighbourhood.
- k-means runs its Lloyd iterations as one compiled loop whose assignment goes label by label over
  blocks of pixels (a vectorised inner loop), with the same labels and centres to the bit; a
  clustering of the thesis-size photograph takes 3.7-4.2 ms instead of 5.8-5.9.

At full resolution a single build of 2 to 6 GB of blocks (21 labels) varies by tens of percent
with the page faults of its first touch, so one run each is a rough figure.  What is left above one
CG solve is the Potts grid on the 8- and 12-neighbourhoods at the thesis's size: 13-16 ms against a
CG solve of 12-14 ms, most of it fixed costs of the problem rather than of its spectrum (the
clustering, the seeded noise of the unaries and the probe vector, about 2 ms each to draw; Lanczos
on the `P x P` weights for both ends, about 4 ms).

Two changes were measured and dropped.  A pool that writes a problem's blocks into the array of
an earlier problem of the same shape that nothing refers to any more saved 3-7 ms per
general-grid problem (NumPy maps large arrays with huge pages, so the first touch of 60 MB costs
about 8 ms rather than the 18-35 ms of small pages), too little to keep hundreds of MB alive
behind the caller's back.  Checking the Lanczos residual bounds after every step (instead of every
fifth) stops the 8- and 12-neighbourhood runs 3-4 steps earlier but moves `lam` within the
tolerance on 69 of 128 built-in problems, and with it every published figure on them.

```python
import gc, sys, time
from gcrflinalg import solve
from gcrflinalg.problems import colour_clusters, load_photo, make_problem
from studies.convergence import seed_margin

kw = dict(margin=seed_margin(1e-6), num_labels=21)
kw.update(size="full") if sys.argv[1:] == ["full"] else kw.update(size="large", stride=6)
reps = 1 if kw["size"] == "full" else 5
for form in ("grid", "grid_potts"):
    make_problem(form, 0, **kw)  # compiled kernels loaded
    for index in range(4):
        build, cg = [], []
        for _ in range(reps):
            gc.collect()
            t = time.perf_counter(); p = make_problem(form, index, **kw); build.append(time.perf_counter() - t)
            t = time.perf_counter(); solve(p.operator, p.b, method="cg", rtol=1e-6); cg.append(time.perf_counter() - t)
            nb = p.meta["neighbourhood"]; del p
        print(f"{form} {index} ({nb}-nb): build {min(build):.3f} s, CG {min(cg):.3f} s, ratio {min(build) / min(cg):.2f}")
image = load_photo(6)
t = [time.perf_counter(), colour_clusters(image, 21, seed=1), time.perf_counter()]
print(f"colour_clusters, 100 x 85 pixels, 21 labels: {t[2] - t[0]:.4f} s")
```

The colour clusters of the thesis-size photograph (21 labels) take 0.0037 to 0.0042 s (0.0058 to
0.0059 s before)."""


def main(argv=None) -> int:
    """Run the study; returns the process exit status."""
    args = build_parser().parse_args(argv)
    array_module(args.backend)  # fail early and clearly without a GPU
    if args.report:
        write_report(args.report, progress=not args.no_progress)
        return 0
    opts = _options(args)
    if opts["count"] < 1:
        raise SystemExit("error: --count must be >= 1")
    out = Outputs(args.out)
    log = RunLog(out.path("runs.jsonl"), resume=args.resume)
    resumed = len(log)
    t0 = time.perf_counter()
    runs, problems_meta = run_study(opts["forms"], opts["count"], seed=args.seed, methods=opts["methods"],
                                    maxiter=args.maxiter, restart=args.restart, backend=args.backend,
                                    dask_address=args.dask, progress=not args.no_progress, sizes=opts["sizes"],
                                    margins=opts["margins"], dtypes=opts["dtypes"], rtols=opts["rtols"], log=log)
    elapsed = time.perf_counter() - t0
    out._add("runs.jsonl")
    header = (f"Convergence study: {opts['count']} problem(s) per form and regime, sizes {' '.join(opts['sizes'])}, "
              f"margins {' '.join(opts['margins'])}, {' '.join(opts['dtypes'])}, backend {args.backend}, rtol "
              f"{' '.join(f'{r:g}' for r in opts['rtols'])}, GMRES restart {args.restart}, maxiter {args.maxiter}, "
              f"seed {args.seed}; {len(runs)} runs in {elapsed:.1f} s"
              + (f" ({resumed} problem(s) resumed from runs.jsonl)" if resumed else ""))
    text, summary = report(runs, problems_meta, opts, header=header)
    print(text)

    out.text("summary.md", text)
    record = dict(
        study="convergence",
        options=dict(forms=opts["forms"], count=opts["count"], sizes=opts["sizes"], margins=opts["margins"],
                     methods=opts["methods"], rtols=opts["rtols"], dtypes=opts["dtypes"], maxiter=args.maxiter,
                     restart=args.restart, backend=args.backend, seed=args.seed, dask=args.dask is not None),
        environment=dict(python=platform.python_version(), numpy=np.__version__, platform=platform.platform(),
                         cpus=os.cpu_count()),
        elapsed_s=elapsed,
        summary=summary,
        problems=problems_meta,
        runs=runs,
    )
    out.json("runs.json", record)
    out.csv("runs.csv", runs, RUN_COLUMNS)
    forms = opts["forms"]
    rtol = opts["rtols"][0]
    for name, xaxis in (("residual_vs_iteration.png", "iteration"), ("residual_vs_time.png", "time")):
        out.figure(name, lambda path, xaxis=xaxis: plot_histories(runs, forms, path, xaxis=xaxis, rtol=rtol))
    out.figure("iterations_vs_margin.png", lambda path: plot_vs_margin(runs, forms, path, what="iterations"))
    out.figure("time_vs_margin.png", lambda path: plot_vs_margin(runs, forms, path, what="time"))
    out.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
