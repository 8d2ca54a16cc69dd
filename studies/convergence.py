"""Solver convergence study: Jacobi, Gauss–Seidel, GMRES, CG, block-Jacobi PCG and direct solves on
the built-in G-CRF problems of every form.

Run ``python -m studies.convergence`` (``--quick`` for a run under a minute, ``--help`` for every
option).  For each form it solves at least 25 built-in problems (:mod:`gcrflinalg.problems`) with
every method to the same stopping rule ``||b - M x|| <= rtol ||b||`` and reports, per form and
method, the average number of iterations to converge, matrix-vector products, wall time and the
fraction of problems that converged.  It writes into ``--out``:

- ``summary.md``: the tables printed on the terminal;
- ``runs.json``: every run (and the residual histories of each form's representative problem, index
  0), with the problems' descriptions and the options used;
- ``runs.csv``: every run, one row each;
- ``residual_vs_iteration.png`` and ``residual_vs_time.png``: relative residual (log scale) of each
  method on the representative problem, one panel per form.

``--dask ADDRESS`` solves the problems on an existing ``dask.distributed`` cluster: each task rebuilds
its problem from ``(form, index, seed)`` on the worker, so no operator is shipped, and the record is
the same as in-process apart from the timings.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from gcrflinalg.forms import FORMS
from studies._common import Outputs, Progress, array_module, markdown_table, study_parser

__all__ = ["METHODS", "DIRECT_FORMS", "methods_for", "run_problem", "run_study", "summarise", "main"]

#: Every method of the study, in table order.
METHODS = ("jacobi", "gauss_seidel", "gmres", "cg", "pcg", "reduced_cg", "direct")
#: Forms with an exact direct solver (the form registry says: all of them, sparse factorisation for
#: the grid and multi-resolution forms, Woodbury identities for the low-rank and video forms).
DIRECT_FORMS = tuple(name for name, spec in FORMS.items() if "direct" in spec.methods)
#: Forms with the red-black reduction (on their 4-neighbourhood problems only).
REDUCED_FORMS = tuple(name for name, spec in FORMS.items() if "reduced_cg" in spec.methods)

METHOD_LABELS = {
    "jacobi": "Jacobi",
    "gauss_seidel": "Gauss–Seidel",
    "gmres": "GMRES",
    "cg": "CG",
    "pcg": "PCG (block Jacobi)",
    "reduced_cg": "CG, red-black reduced",
    "direct": "direct",
}
FORM_LABELS = {name: spec.title for name, spec in FORMS.items()}
_STYLE = {
    "jacobi": dict(color="#1f77b4", ls="-"),
    "gauss_seidel": dict(color="#ff7f0e", ls="-"),
    "gmres": dict(color="#2ca02c", ls="--"),
    "cg": dict(color="#d62728", ls="-"),
    "pcg": dict(color="#9467bd", ls=":"),
    "reduced_cg": dict(color="#8c564b", ls="-."),
    "direct": dict(color="black", ls="none", marker="*", ms=10),
}

#: Columns of ``runs.csv`` (``runs.json`` has these and the residual histories).
RUN_COLUMNS = ("form", "problem", "index", "source", "N", "num_labels", "method", "converged", "info",
               "iterations", "matvecs", "time_s", "rel_residual", "error")

_WARMED = set()


def methods_for(form: str, methods=METHODS) -> list[str]:
    """The methods of ``methods`` that apply to ``form`` (``"direct"`` only where the form has one,
    ``"reduced_cg"`` only on the general grid)."""
    return [m for m in methods
            if (m != "direct" or form in DIRECT_FORMS) and (m != "reduced_cg" or form in REDUCED_FORMS)]


def _warm_up(problem, method, xp, dtype, options):
    """Solve once, untimed, on a fresh copy of the operator so that compilation (numba kernels) and
    first-call costs stay out of the timings; the timed operator keeps no cached factorisation."""
    key = (problem.form, method, xp.__name__, np.dtype(dtype).name)
    if key in _WARMED:
        return
    from gcrflinalg import problems, solve

    op = problems.build_operator(problem.form, problem.params, dtype=dtype, xp=xp)
    opts = dict(options, check_pd=False)
    if method != "direct":
        opts["maxiter"] = 3
    try:
        solve(op, problem.b, method, **opts)
    except Exception:  # the timed run reports the error
        pass
    _WARMED.add(key)


def run_problem(form: str, index: int, *, seed: int = 0, size: str = "small", methods=METHODS,
                rtol: float = 1e-6, maxiter: int = 10000, restart: int = 20, backend: str = "cpu",
                dtype: str = "float64", keep_history: bool | None = None) -> list[dict]:
    """Build problem ``index`` of ``form`` and solve it with every method of ``methods``.

    The problem is rebuilt from ``(form, index, seed, size)``, so this function is all a remote
    worker needs.

    Returns
    -------
    list of dict
        One row per method with the keys of :data:`RUN_COLUMNS`; when ``keep_history`` (default: for
        index 0, the representative problem) also ``residual_history`` (relative residual norms, the
        initial one first).
    """
    return _solve_problem(form, index, seed=seed, size=size, methods=methods, rtol=rtol, maxiter=maxiter,
                          restart=restart, backend=backend, dtype=dtype, keep_history=keep_history)[0]


def _solve_problem(form, index, *, seed, size, methods, rtol, maxiter, restart, backend, dtype, keep_history=None):
    """:func:`run_problem`'s rows and the problem's description (one task of the study)."""
    from gcrflinalg import problems, solve, to_host
    from gcrflinalg.backend import synchronize

    xp = array_module(backend)
    keep_history = index == 0 if keep_history is None else keep_history
    problem = problems.make_problem(form, index, seed=seed, size=size, dtype=np.dtype(dtype), xp=xp)
    op, b = problem.operator, problem.b
    try:
        op.check_positive_definite()  # once, outside the timings (problems are PD by construction)
    except Exception:
        pass
    rows = []
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
        row = dict(form=form, problem=problem.name, index=int(index), source=problem.meta["source"],
                   N=problem.size, num_labels=problem.meta["num_labels"], method=method)
        try:
            # the representative problem's times (plotted) are the best of 3 solves, each on a fresh
            # operator so that no factorisation is reused
            elapsed = np.inf
            for repeat in range(3 if keep_history else 1):
                run_op = op if repeat == 0 else problems.build_operator(form, problem.params, dtype=dtype, xp=xp)
                synchronize(xp)
                t0 = time.perf_counter()
                result = solve(run_op, b, method, **options)
                synchronize(xp)
                elapsed = min(elapsed, time.perf_counter() - t0)
        except Exception as exc:  # recorded, not fatal: the table shows the method did not converge
            row.update(converged=False, info=None, iterations=None, matvecs=None, time_s=None,
                       rel_residual=None, error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            continue
        norms = to_host(result.residual_norms).astype(np.float64).reshape(-1)
        b_norm = float(to_host(result.b_norm)) if result.b_norm is not None else float(norms[0])
        rel = norms / b_norm if b_norm > 0 else norms
        row.update(converged=bool(np.all(to_host(result.converged))), info=int(np.max(to_host(result.info))),
                   iterations=int(np.max(to_host(result.iterations))), matvecs=int(result.matvecs),
                   time_s=float(elapsed), rel_residual=float(rel[-1]), error=None)
        if keep_history:
            row["residual_history"] = rel.tolist()
        rows.append(row)
    return rows, problem.meta


def run_study(forms, count: int, *, seed: int = 0, size: str = "small", methods=METHODS, rtol: float = 1e-6,
              maxiter: int = 10000, restart: int = 20, backend: str = "cpu", dtype: str = "float64",
              dask_address: str | None = None, progress: bool = True):
    """Run :func:`run_problem` for problems ``0 .. count-1`` of every form.

    Parameters
    ----------
    dask_address : str, optional
        Address of a running ``dask.distributed`` scheduler (or a ``Client``/cluster object): the
        problems are solved there, one task per problem.  Default: in this process.

    Returns
    -------
    runs : list of dict
        Every run, in (form, index, method) order whichever way they were computed.
    problems_meta : list of dict
        The description of every problem (:attr:`gcrflinalg.problems.Problem.meta`).
    """
    tasks = [(form, i) for form in forms for i in range(count)]
    kwargs = dict(seed=seed, size=size, methods=tuple(methods), rtol=rtol, maxiter=maxiter, restart=restart,
                  backend=backend, dtype=dtype)
    with Progress(len(tasks), "convergence", enabled=progress, unit="problem") as bar:
        if dask_address is None:
            results = []
            for form, i in tasks:
                bar.set_description(f"convergence: {form} #{i}")
                results.append(_solve_problem(form, i, **kwargs))
                bar.update()
        else:
            results = _run_on_dask(dask_address, tasks, kwargs, bar)
    runs = [row for rows, _ in results for row in rows]
    problems_meta = [meta for _, meta in results]
    return runs, problems_meta


def _run_on_dask(address, tasks, kwargs, bar):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SystemExit("error: --dask needs dask.distributed; pip install -e '.[dask]'") from None
    own_client = not isinstance(address, Client)
    client = Client(address) if own_client else address
    try:
        futures = [client.submit(_solve_problem, form, i, pure=False, **kwargs) for form, i in tasks]
        for _ in as_completed(futures):
            bar.update()
        return client.gather(futures)
    finally:
        if own_client:
            client.close()


# --------------------------------------------------------------------------- tables
def summarise(runs, forms, methods=METHODS) -> list[dict]:
    """Per (form, method): problems, fraction converged, and over the converged runs the mean
    iterations, matrix-vector products and wall time (ms)."""
    out = []
    for form in forms:
        for method in methods_for(form, methods):
            sel = [r for r in runs if r["form"] == form and r["method"] == method]
            if not sel:
                continue
            conv = [r for r in sel if r["converged"]]
            row = dict(form=form, method=method, problems=len(sel), converged=len(conv) / len(sel))
            for key, scale in (("iterations", 1.0), ("matvecs", 1.0), ("time_s", 1e3)):
                vals = [r[key] for r in conv if r[key] is not None]
                row[key if key != "time_s" else "time_ms"] = float(np.mean(vals)) * scale if vals else None
            errors = sorted({r["error"] for r in sel if r["error"]})
            row["error"] = errors[0] if errors else None
            out.append(row)
    return out


def overview_table(summary, forms, methods=METHODS) -> str:
    """Forms x methods: average iterations to converge (``-`` where the method does not apply)."""
    rows = []
    for form in forms:
        row = {"form": FORM_LABELS.get(form, form)}
        for m in methods:
            s = next((s for s in summary if s["form"] == form and s["method"] == m), None)
            if s is None:
                row[m] = None
            elif s["iterations"] is None:
                row[m] = "failed"
            elif m == "direct":
                row[m] = "exact" + ("" if s["converged"] == 1 else f" ({s['converged']:.0%})")
            else:
                row[m] = f"{s['iterations']:.1f}" + ("" if s["converged"] == 1 else f" ({s['converged']:.0%})")
        rows.append(row)
    return markdown_table(rows, ["form", *methods], headers=["form", *[METHOD_LABELS[m] for m in methods]])


def form_table(summary, form) -> str:
    rows = [dict(s, method=METHOD_LABELS[s["method"]], converged=f"{s['converged']:.0%}")
            for s in summary if s["form"] == form]
    return markdown_table(rows, ["method", "iterations", "matvecs", "time_ms", "converged"],
                          headers=["method", "avg iterations", "avg matvecs", "avg time (ms)", "converged"],
                          floatfmt=".4g")


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


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = study_parser(
        "convergence",
        "Solver convergence study on built-in G-CRF problems of every form: Jacobi, Gauss-Seidel, GMRES, "
        "CG, block-Jacobi PCG and the direct solve, to the same relative residual.  Prints average "
        "iterations, matrix-vector products and time per method; writes summary.md, runs.json, runs.csv "
        "and plots (residual vs iteration and vs time).",
        quick_help="3 small problems per form (instead of 25 of --size), for a run under a minute",
        forms=_forms())
    parser.add_argument("--count", type=int, default=None,
                        help="problems per form (default 25, or 3 with --quick)")
    parser.add_argument("--size", choices=("tiny", "small", "medium"), default="medium",
                        help="problem size: crops of 5-8 (tiny, 2-3 labels), 9-16 (small, 3-5 labels) or "
                             "20-32 (medium, 4-7 labels) pixels a side of the photograph at stride 8, 12 or 16 "
                             "(default: %(default)s; --quick uses small)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                        help=f"methods to run, any of: {' '.join(METHODS)} (default: all)")
    parser.add_argument("--rtol", type=float, default=1e-6,
                        help="stopping rule ||b - M x|| <= rtol ||b||, the same for every method "
                             "(default: %(default)g)")
    parser.add_argument("--maxiter", type=int, default=10000,
                        help="iteration limit of every iterative method (GMRES: inner iterations; "
                             "default: %(default)s)")
    parser.add_argument("--restart", type=int, default=20, help="GMRES restart length (default: %(default)s)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="floating dtype of the systems (default: %(default)s)")
    parser.add_argument("--dask", metavar="ADDRESS", default=None,
                        help="address of a running dask.distributed scheduler (e.g. tcp://host:8786) to "
                             "solve the problems on, one task per problem; workers need gcrflinalg "
                             "installed (default: solve in this process)")
    return parser


def _forms():
    from gcrflinalg.problems import FORMS

    return FORMS


def main(argv=None) -> int:
    """Run the study; returns the process exit status."""
    args = build_parser().parse_args(argv)
    array_module(args.backend)  # fail early and clearly without a GPU
    count = args.count if args.count is not None else (3 if args.quick else 25)
    if count < 1:
        raise SystemExit("error: --count must be >= 1")
    size = "small" if args.quick else args.size
    out = Outputs(args.out)
    forms = list(dict.fromkeys(args.forms))
    methods = [m for m in METHODS if m in args.methods]
    t0 = time.perf_counter()
    runs, problems_meta = run_study(forms, count, seed=args.seed, size=size, methods=methods, rtol=args.rtol,
                                    maxiter=args.maxiter, restart=args.restart, backend=args.backend,
                                    dtype=args.dtype, dask_address=args.dask, progress=not args.no_progress)
    elapsed = time.perf_counter() - t0
    summary = summarise(runs, forms, methods)

    header = (f"Convergence study: {count} problem(s) per form, size {size}, {args.dtype}, backend "
              f"{args.backend}, rtol {args.rtol:g}, GMRES restart {args.restart}, seed {args.seed}; "
              f"{len(runs)} runs in {elapsed:.1f} s")
    notes = ("Mean over the problems each method converged on (a percentage follows where some did not). "
             "Every system has lam = (1 + margin) rho(A - diag A) with margin in [0.05, 0.3], so Jacobi "
             "converges with rate at most 1/(1 + margin).  On the Potts grid, CG is the toolkit's split "
             "solve (one CG on the label sum, then L label systems of size P at once; its iterations add "
             "both phases); PCG is plain CG on M with the block-Jacobi preconditioner.  CG, red-black reduced, "
             "runs on the 4-neighbourhood general grids only (half of them): CG on the Schur complement of "
             "the red pixels after exact elimination of the black ones.")
    sections = [f"# Solver convergence on built-in G-CRF problems\n\n{header}.",
                "## Average iterations to converge\n\n" + notes + "\n\n" + overview_table(summary, forms, methods)]
    for form in forms:
        sections.append(f"## {FORM_LABELS.get(form, form)}\n\n" + form_table(summary, form))
    errors = sorted({(r["form"], r["method"], r["error"]) for r in runs if r["error"]})
    if errors:
        sections.append("## Errors\n\n" + "\n".join(f"- {f} / {m}: {e}" for f, m, e in errors))
    sections.append("Figures: `residual_vs_iteration.png`, `residual_vs_time.png` (representative problem "
                    "of each form, index 0).  Every run: `runs.json`, `runs.csv`.")
    text = "\n\n".join(sections) + "\n"
    print(text)

    out.text("summary.md", text)
    record = dict(
        study="convergence",
        options=dict(forms=forms, count=count, size=size, methods=methods, rtol=args.rtol, maxiter=args.maxiter,
                     restart=args.restart, dtype=args.dtype, backend=args.backend, seed=args.seed,
                     dask=args.dask is not None),
        environment=dict(python=platform.python_version(), numpy=np.__version__, platform=platform.platform(),
                         cpus=os.cpu_count()),
        elapsed_s=elapsed,
        summary=summary,
        problems=problems_meta,
        runs=runs,
    )
    out.json("runs.json", record)
    out.csv("runs.csv", runs, RUN_COLUMNS)
    for name, xaxis in (("residual_vs_iteration.png", "iteration"), ("residual_vs_time.png", "time")):
        out.figure(name, lambda path, xaxis=xaxis: plot_histories(runs, forms, path, xaxis=xaxis, rtol=args.rtol))
    out.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
