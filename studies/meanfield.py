"""Mean-field inference is Jacobi / Gauss–Seidel: a teaching study on built-in G-CRF problems.

For a Gaussian model ``p(x) ∝ exp(-1/2 x^T J x + h^T x)`` (a G-CRF: ``J = M``, ``h = b``) the
mean-field update of one factor is ``mu_i <- (h_i - sum_{j != i} J_ij mu_j) / J_ii``.  Run on all
factors at once (parallel schedule) it is the Jacobi iteration for ``J mu = h``; run one factor after
another (sequential schedule) it is the Gauss–Seidel sweep.  This study runs
:mod:`gcrflinalg.meanfield` (written in the probabilistic vocabulary, sharing no code with the
solvers) next to :func:`solvers.jacobi`, :func:`solvers.gauss_seidel` (natural ordering) and
:func:`solvers.cg` on the same systems, and

1. prints ``max_i |mu_i^(k) - x_i^(k)|`` (relative to ``max(1, max_i |mu_i^(k)|)``, so that a
   diverging pair of sequences compares too) for every iteration ``k``: zero up to rounding,
2. prints how many iterations each needs to reach ``||h - J mu|| <= rtol ||h||``, next to CG,
   in two regimes of the diagonal shift ``lam``: ``jacobi`` (``lam`` above the spectral radius of
   the couplings, where both schedules converge) and ``pd`` (``lam`` just above the
   positive-definiteness bound: sequential mean-field still converges, slowly, while parallel
   mean-field diverges exactly as Jacobi does),
3. draws ``meanfield.png`` (and ``meanfield_pd.png`` for the second regime): residual vs
   iteration, the difference per iteration at the 1e-16 scale, and the labelling (arg max over
   labels of the means) as the iterations go, next to CG's;
4. writes ``meanfield.json`` with every number.

Run ``python -m studies.meanfield --help`` for the options.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from typing import Any

import numpy as np

from gcrflinalg.forms import FORMS
from studies._common import Outputs, Progress, array_module, study_parser

#: equality of the iterates is asserted to this tolerance (relative to max(1, max |mu|)), float64
EQUALITY_TOL = 1e-12

DEFAULT_FORMS = tuple(FORMS)  # every registered form
QUICK_FORMS = ("grid_potts", "grid", "lowrank_potts")


# ---------------------------------------------------------------------------------------- problems
@dataclasses.dataclass
class System:
    """One G-CRF system in canonical form, ready for mean-field and the solvers."""

    name: str
    form: str
    index: int
    matrix: Any  # scipy CSR or dense ndarray (N, N): the precision J = M
    h: np.ndarray  # (N,): the potential b
    vector_shape: tuple  # (L, H, W) when the vector is one labelled image, else (N,)
    image: Any = None  # (H, W, 3) picture the problem was derived from, if any
    lam: float = float("nan")  # the diagonal shift
    lam_rule: str = "jacobi"
    offdiag_radius: float = float("nan")  # rho(A - diag A): lam above it makes Jacobi converge
    pd_bound: float = float("nan")  # -lambda_min(A): lam above it makes M positive definite
    neighbourhood: Any = None


def _operator_matrix(op):
    """The operator's CSR matrix when its form has one, else its dense matrix (small sizes)."""
    for name in ("to_sparse", "tocsr", "to_csr"):
        method = getattr(op, name, None)
        if callable(method):
            try:
                return method().tocsr()
            except (TypeError, NotImplementedError, AttributeError):
                pass
    return op.to_dense()


def load_system(form: str, index: int, *, seed: int = 0, size: str = "small", lam_rule: str = "jacobi") -> System:
    """Problem ``index`` of ``form`` from :mod:`gcrflinalg.problems` in canonical form.

    ``lam_rule`` (``"jacobi"`` or ``"pd"``) places the diagonal shift ``lam`` as
    :func:`gcrflinalg.problems.make_params` describes.  The precision is the operator's CSR matrix
    where the form is sparse, else its dense matrix (the ``"small"`` problems have ``N`` of a few
    hundred to a few thousand).
    """
    from gcrflinalg import problems

    prob = problems.make_problem(form, index, seed=seed, size=size, dtype=np.float64, lam_rule=lam_rule)
    op = prob.operator
    if getattr(op, "batch_shape", ()) != ():
        raise ValueError(f"{prob.name}: mean-field takes one system; got batch_shape {op.batch_shape}")
    matrix = _operator_matrix(op)
    h = np.asarray(prob.b, dtype=np.float64).reshape(-1)
    vshape = tuple(getattr(op, "vector_shape", (h.size,)))
    meta = getattr(prob, "meta", {}) or {}
    image = None
    if meta.get("source") == "photo" and "stride" in meta and "crop" in meta:
        image = problems.load_photo(meta["stride"], meta["crop"])
    return System(name=f"{prob.name} [lam: {lam_rule}]", form=form, index=index, matrix=matrix, h=h,
                  vector_shape=vshape if len(vshape) == 3 else (h.size,), image=image,
                  lam=float(meta.get("lam", np.nan)), lam_rule=lam_rule,
                  offdiag_radius=float(meta.get("offdiag_radius", np.nan)),
                  pd_bound=float(meta.get("pd_bound", np.nan)), neighbourhood=meta.get("neighbourhood"))


# --------------------------------------------------------------------------------------- one study
def _first_below(rel, rtol):
    """The first iteration whose relative residual is ``<= rtol`` (None if never)."""
    hits = np.flatnonzero(np.asarray(rel) <= rtol)
    return int(hits[0]) if hits.size else None


def _capture(x_list):
    def callback(xk):
        x_list.append(np.array(xk, dtype=np.float64, copy=True))
    return callback


def _iterate_differences(means, xs):
    """``max_i |mu_i^(k) - x_i^(k)|`` and the same relative to ``max(1, max_i |mu_i^(k)|)``, for the
    iterations ``k`` where both are finite (a diverging schedule overflows eventually)."""
    k = min(len(xs), means.shape[0])  # a solver stops early at an exactly zero or non-finite residual
    a, b = np.asarray(means[:k], dtype=np.float64), np.stack(xs[:k])
    finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    if not finite.all():
        k = int(np.argmin(finite))
    diff = np.abs(a[:k] - b[:k]).max(axis=1)
    return diff, diff / np.maximum(1.0, np.abs(a[:k]).max(axis=1))


def compare_on_system(system: System, *, iterations: int, rtol: float) -> dict:
    """Mean-field (both schedules) against Jacobi, Gauss–Seidel and CG on one system.

    Returns a JSON-ready dict: per-iteration max differences, relative residual histories,
    iterations to ``rtol``, times; the labellings of the means at a few iterations and the input
    picture are kept under ``"_labellings"`` and ``"_image"`` (arrays for the figure, left out of the
    record).
    """
    import solvers
    from gcrflinalg.meanfield import parallel_meanfield, sequential_meanfield

    J, h = system.matrix, system.h
    hnorm = float(np.linalg.norm(h))
    t = {}
    with np.errstate(over="ignore", invalid="ignore"):  # parallel mean-field may diverge (lam: pd)
        t0 = time.perf_counter()
        mf_par = parallel_meanfield(J, h, iterations=iterations)
        t["mf_parallel"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mf_seq = sequential_meanfield(J, h, iterations=iterations)
        t["mf_sequential"] = time.perf_counter() - t0

        # the solvers' iterates, captured by their callbacks (rtol = atol = 0: run every iteration)
        jac_x = [np.zeros_like(h)]
        t0 = time.perf_counter()
        solvers.jacobi(J, h, rtol=0.0, atol=0.0, maxiter=iterations, callback=_capture(jac_x))
        t["jacobi"] = time.perf_counter() - t0
        gs_x = [np.zeros_like(h)]
        t0 = time.perf_counter()
        solvers.gauss_seidel(J, h, rtol=0.0, atol=0.0, maxiter=iterations, ordering="natural",
                             callback=_capture(gs_x))
        t["gauss_seidel"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cg = solvers.cg(J, h, rtol=1e-12, maxiter=iterations)
    t["cg"] = time.perf_counter() - t0

    d_par, rel_par = _iterate_differences(mf_par.means, jac_x)
    d_seq, rel_seq = _iterate_differences(mf_seq.means, gs_x)
    res = {
        "mf_parallel": mf_par.relative_residuals,
        "mf_sequential": mf_seq.relative_residuals,
        "cg": np.asarray(cg.residual_norms) / hnorm,
    }
    to_rtol = {name: _first_below(r, rtol) for name, r in res.items()}
    final_par = res["mf_parallel"][-1]
    diverged = bool(not np.isfinite(final_par) or final_par > 1.0)
    exact = np.asarray(cg.x)
    labellings = {}
    if len(system.vector_shape) == 3:
        for k in (1, 2, 5):
            if k <= iterations and np.isfinite(mf_par.means[k]).all():
                labellings[f"parallel MF, k = {k}"] = np.argmax(mf_par.means[k].reshape(system.vector_shape), axis=0)
        conv = to_rtol["mf_sequential"]
        if conv is not None:
            labellings[f"sequential MF, k = {conv}\n(converged)"] = np.argmax(
                mf_seq.means[conv].reshape(system.vector_shape), axis=0)
        labellings["CG (exact mean)"] = np.argmax(exact.reshape(system.vector_shape), axis=0)
    equal = bool(d_par.size > 1 and d_seq.size > 1 and rel_par.max() <= EQUALITY_TOL
                 and rel_seq.max() <= EQUALITY_TOL)
    return {
        "name": system.name,
        "form": system.form,
        "index": system.index,
        "lam_rule": system.lam_rule,
        "lam": system.lam,
        "offdiag_radius": system.offdiag_radius,
        "pd_bound": system.pd_bound,
        "neighbourhood": system.neighbourhood,
        "n": int(h.size),
        "nnz": int(J.nnz) if hasattr(J, "nnz") else int(np.count_nonzero(J)),
        "iterations": iterations,
        "compared_iterations": {"parallel_vs_jacobi": int(d_par.size) - 1,
                                "sequential_vs_gauss_seidel": int(d_seq.size) - 1},
        "max_abs_diff_parallel_vs_jacobi": float(d_par.max()),
        "max_abs_diff_sequential_vs_gauss_seidel": float(d_seq.max()),
        "max_rel_diff_parallel_vs_jacobi": float(rel_par.max()),
        "max_rel_diff_sequential_vs_gauss_seidel": float(rel_seq.max()),
        "equal": equal,
        "parallel_diverged": diverged,
        "diff_parallel_vs_jacobi": d_par.tolist(),
        "diff_sequential_vs_gauss_seidel": d_seq.tolist(),
        "rel_diff_parallel_vs_jacobi": rel_par.tolist(),
        "rel_diff_sequential_vs_gauss_seidel": rel_seq.tolist(),
        "relative_residuals": {k: v.tolist() for k, v in res.items()},
        "iterations_to_rtol": to_rtol,
        "final_error_vs_cg": {
            "mf_parallel": float(np.abs(mf_par.mean - exact).max()),
            "mf_sequential": float(np.abs(mf_seq.mean - exact).max()),
        },
        "time_s": t,
        "_labellings": labellings,
        "_image": system.image,
    }


# ------------------------------------------------------------------------------------------ output
def _fmt_iters(k, cap):
    return f">{cap}" if k is None else str(k)


def iteration_table(rec: dict) -> str:
    """Per-iteration table of one system: max differences (relative to ``max(1, max |mu|)``) and
    relative residuals."""
    d_par, d_seq = rec["rel_diff_parallel_vs_jacobi"], rec["rel_diff_sequential_vs_gauss_seidel"]
    res = rec["relative_residuals"]
    last = rec["iterations"]
    rows = [k for k in range(last + 1) if k <= 10 or k % 10 == 0 or k == last]

    def cell(values, k, fmt, width, missing):
        return f"{values[k]:>{width}{fmt}}" if k < len(values) else f"{missing:>{width}}"

    lines = ["max|difference| / max(1, max|mu|) per iteration, and relative residuals ||h - J mu|| / ||h||",
             f"{'k':>5}  {'|MF par - Jacobi|':>18}  {'|MF seq - GS|':>14}  "
             f"{'res MF par':>11}  {'res MF seq':>11}  {'res CG':>11}"]
    for k in rows:
        lines.append(f"{k:>5}  {cell(d_par, k, '.2e', 18, '(overflow)')}  {cell(d_seq, k, '.2e', 14, '(overflow)')}  "
                     f"{cell(res['mf_parallel'], k, '.3e', 11, '')}  {cell(res['mf_sequential'], k, '.3e', 11, '')}  "
                     f"{cell(res['cg'], k, '.3e', 11, '(done)')}")
    return "\n".join(lines)


def same_as_jacobi(rec: dict, records: list) -> bool:
    """Whether ``rec`` (a ``lam: pd`` record) is the same system as its ``lam: jacobi`` record."""
    if rec.get("lam_rule") != "pd":
        return False
    twin = next((r for r in records if r.get("lam_rule") == "jacobi" and r["form"] == rec["form"]
                 and r["index"] == rec["index"]), None)
    return twin is not None and math.isclose(twin["lam"], rec["lam"], rel_tol=1e-9)


#: why some ``lam: pd`` rows repeat their ``lam: jacobi`` rows (see :func:`gcrflinalg.problems.make_params`)
SAME_SYSTEM_NOTE = (
    "Rows marked (= jacobi) are the same system as their [lam: jacobi] row: both rules set "
    "lam = (1 + margin) x bound with the same margin, and on the 4-neighbourhood grids the two bounds "
    "coincide -- the couplings form a bipartite (red-black) graph, so the spectrum of A - diag A is "
    "symmetric about 0 and the positive-definiteness bound -lambda_min(A) equals the Jacobi bound "
    "rho(A - diag A).  Elsewhere the PD bound is lower and the pd lam is smaller.")


def summary_table(records: list, rtol: float) -> str:
    """One line per system: equality of the iterates and iterations to ``rtol``."""
    head = (f"{'problem':<32} {'N':>6} {'max|par-Jac|':>12} {'max|seq-GS|':>11} "
            f"{'MF par':>8} {'MF seq':>6} {'CG':>4}  equal")
    lines = [f"iterations to ||h - J mu|| <= {rtol:g} ||h||  (max differences relative to max(1, |mu|))",
             head, "-" * len(head)]
    same_any = False
    for r in records:
        it = r["iterations_to_rtol"]
        cap = r["iterations"]
        par = "diverges" if r["parallel_diverged"] else _fmt_iters(it["mf_parallel"], cap)
        lines.append(
            f"{r['name'][:32]:<32} {r['n']:>6} {r['max_rel_diff_parallel_vs_jacobi']:>12.1e} "
            f"{r['max_rel_diff_sequential_vs_gauss_seidel']:>11.1e} "
            f"{par:>8} {_fmt_iters(it['mf_sequential'], cap):>6} "
            f"{_fmt_iters(it['cg'], cap):>4}  {'yes' if r['equal'] else 'NO'}"
            + ("  (= jacobi)" if same_as_jacobi(r, records) else ""))
        same_any = same_any or same_as_jacobi(r, records)
    if same_any:
        lines.append(SAME_SYSTEM_NOTE)
    return "\n".join(lines)


def plot(rec: dict, path: str, rtol: float) -> None:
    """The slide: residuals (left), the differences at the rounding scale (right), labellings below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strip = list(rec["_labellings"].items())
    image = rec["_image"]
    fig = plt.figure(figsize=(13, 8.6 if strip else 4.8), layout="constrained")
    if strip:
        top, bottom = fig.subfigures(2, 1, height_ratios=[1.6, 1])
    else:
        top, bottom = fig, None
    ax_res, ax_diff = top.subplots(1, 2)

    res = {k: np.asarray(v, dtype=float) for k, v in rec["relative_residuals"].items()}
    k_mf = np.arange(len(res["mf_parallel"]))
    ax_res.semilogy(k_mf, res["mf_parallel"], color="C0", lw=2.2, label="mean-field, parallel")
    ax_res.semilogy(k_mf, res["mf_sequential"], color="C1", lw=2.2, label="mean-field, sequential")
    ax_res.semilogy(np.arange(len(res["cg"])), res["cg"], color="C2", lw=2.2, label="conjugate gradients")
    mark = max(1, len(k_mf) // 25)
    ax_res.semilogy(k_mf[::mark], res["mf_parallel"][::mark], "o", mfc="none", color="k", ms=5,
                    label="Jacobi iterates (markers)")
    ax_res.semilogy(k_mf[::mark], res["mf_sequential"][::mark], "s", mfc="none", color="0.4", ms=5,
                    label="Gauss–Seidel iterates (markers)")
    ax_res.axhline(rtol, color="0.5", ls=":", lw=1)
    ax_res.text(k_mf[-1], rtol, f"rtol = {rtol:g} ", va="bottom", ha="right", color="0.4", fontsize=9)
    if rec["parallel_diverged"]:
        ax_res.set_ylim(top=1e4)
        ax_res.text(k_mf[-1] * 0.5, 2e3, "parallel mean-field (= Jacobi) diverges", ha="center",
                    va="top", color="C0", fontsize=10)
    ax_res.set_xlabel("iteration k")
    ax_res.set_ylabel(r"relative residual $\|h - J\mu^{(k)}\| \,/\, \|h\|$")
    ax_res.set_title("How far mean-field trails CG", fontsize=12)
    ax_res.legend(fontsize=8.5, loc="upper right" if not rec["parallel_diverged"] else "lower left")
    ax_res.grid(True, which="major", alpha=0.3)

    floor = 1e-19
    d_par = np.maximum(np.asarray(rec["rel_diff_parallel_vs_jacobi"]), floor)
    d_seq = np.maximum(np.asarray(rec["rel_diff_sequential_vs_gauss_seidel"]), floor)
    ax_diff.semilogy(np.arange(len(d_par)), d_par, "o-", ms=3, color="C0", label="|parallel MF − Jacobi|")
    ax_diff.semilogy(np.arange(len(d_seq)), d_seq, "s-", ms=3, color="C1",
                     label="|sequential MF − Gauss–Seidel|")
    eps = np.finfo(np.float64).eps
    right = max(len(d_par), len(d_seq)) - 1
    ax_diff.axhline(eps, color="0.4", ls="--", lw=1)
    ax_diff.text(right, eps / 1.6, "float64 machine epsilon ", va="top", ha="right", fontsize=9, color="0.3")
    ax_diff.axhline(EQUALITY_TOL, color="C3", ls=":", lw=1)
    ax_diff.text(right, EQUALITY_TOL * 1.4, "asserted in the tests: 1e-12 ", va="bottom", ha="right",
                 fontsize=9, color="C3")
    ax_diff.text(right, floor * 1.8, "exactly 0 (drawn at 1e-19) ", va="bottom", ha="right", fontsize=9,
                 color="0.3")
    ax_diff.set_ylim(floor / 3, max(1e-10, 10 * float(max(d_par.max(), d_seq.max()))))
    ax_diff.set_xlabel("iteration k")
    ax_diff.set_ylabel(r"$\max_i\, |\mu_i^{(k)} - x_i^{(k)}| \,/\, \max(1, \max_i |\mu_i^{(k)}|)$")
    ax_diff.set_title("Same iterates, up to rounding", fontsize=12)
    ax_diff.legend(fontsize=8.5, loc="upper left")
    ax_diff.grid(True, which="major", alpha=0.3)

    if bottom is not None:
        panels = ([("input", image)] if image is not None else []) + strip
        axes = np.atleast_1d(bottom.subplots(1, len(panels)))
        many = max(int(np.max(lab)) for _, lab in strip) >= 10
        for ax, (title, data) in zip(axes, panels):
            if title == "input":
                ax.imshow(np.clip(np.asarray(data), 0, 1) if np.ndim(data) == 3 else data,
                          cmap=None if np.ndim(data) == 3 else "gray", interpolation="nearest")
            else:
                ax.imshow(data, cmap="tab20" if many else "tab10", vmin=0, vmax=19 if many else 9,
                          interpolation="nearest")
            ax.set_title(title, fontsize=10)
            ax.axis("off")
        bottom.supxlabel("labelling = arg max over labels of the means", fontsize=9, color="0.3")
    fig.suptitle(f"Gaussian mean-field = Jacobi (parallel) = Gauss–Seidel (sequential)  —  "
                 f"{rec['name']}, N = {rec['n']}", fontsize=13)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = study_parser(
        "meanfield",
        "Show that Gaussian mean-field inference produces exactly the Jacobi iterates (parallel "
        "schedule) and the Gauss-Seidel iterates (sequential schedule, natural ordering) on built-in "
        "G-CRF problems, and how far both trail conjugate gradients.  Prints the per-iteration "
        "differences and a summary table; writes summary.md, meanfield.json, meanfield.csv and "
        "meanfield.png (meanfield_pd.png for the hard regime) into --out.  Exit status 0 when every "
        "iterate matched to 1e-12.  Runs on the CPU (SciPy matrices).",
        quick_help=f"a run under 30 s: forms {' '.join(QUICK_FORMS)}, one problem each, 150 iterations",
        forms=DEFAULT_FORMS, forms_default="study",
        forms_help=f"default: {' '.join(DEFAULT_FORMS)}; with --quick: {' '.join(QUICK_FORMS)}")
    parser.add_argument("--problems", type=int, default=None,
                        help="problems per form and lam rule (default 3; 1 with --quick)")
    parser.add_argument("--lam-rule", choices=("jacobi", "pd", "both"), default="both",
                        help="where the diagonal shift lam sits: 'jacobi' above the spectral radius "
                             "of the couplings (both schedules converge), 'pd' just above the "
                             "positive-definiteness bound (parallel mean-field may diverge, "
                             "exactly as Jacobi does), or both (default: both)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="mean-field / Jacobi / Gauss-Seidel iterations per problem (default 400; "
                             "150 with --quick)")
    parser.add_argument("--rtol", type=float, default=1e-6,
                        help="relative residual that counts as converged in the summary table "
                             "(default: 1e-6)")
    parser.add_argument("--size", default="small",
                        help="problem size passed to gcrflinalg.problems.make_problem "
                             "(small, medium; mean-field forms dense matrices of the low-rank and "
                             "video forms, so keep them small; default: small)")
    parser.add_argument("--no-plot", action="store_true", help="skip the figures")
    return parser


def _median_ratio(records, method):
    """Median over the problems of (iterations of ``method`` to rtol) / (iterations of CG)."""
    ratios = [r["iterations_to_rtol"][method] / r["iterations_to_rtol"]["cg"] for r in records
              if r["iterations_to_rtol"][method] and r["iterations_to_rtol"]["cg"]]
    return (float(np.median(ratios)), len(ratios)) if ratios else (None, 0)


def _ratio_line(records, rule):
    seq, n_seq = _median_ratio(records, "mf_sequential")
    par, n_par = _median_ratio(records, "mf_parallel")
    diverged = sum(r["parallel_diverged"] for r in records)
    parts = [f"lam: {rule}:"]
    parts.append(f"sequential mean-field needs {seq:.1f}x the iterations of CG (median over {n_seq})"
                 if seq is not None else "sequential mean-field never reached rtol")
    parts.append(f"parallel {par:.1f}x (median over {n_par})" if par is not None else "parallel never")
    parts.append(f"parallel diverged on {diverged} of {len(records)}")
    return {"mf_sequential": seq, "mf_parallel": par}, "; ".join([parts[0] + " " + parts[1]] + parts[2:])


#: columns of ``meanfield.csv`` (one row per system)
CSV_COLUMNS = ("name", "form", "index", "lam_rule", "lam", "same_as_jacobi", "n", "nnz", "iterations",
               "max_rel_diff_parallel_vs_jacobi", "max_rel_diff_sequential_vs_gauss_seidel", "equal",
               "parallel_diverged", "to_rtol_mf_parallel", "to_rtol_mf_sequential", "to_rtol_cg")


def main(argv=None) -> int:
    """Run the study; returns 0 when every mean-field iterate equals the solver's (to 1e-12)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend != "cpu":
        array_module(args.backend)  # a clear message without CuPy / a GPU
        parser.error("--backend gpu: the mean-field study runs on the CPU only (SciPy matrices)")
    forms = tuple(dict.fromkeys(args.forms)) if args.forms else (QUICK_FORMS if args.quick else DEFAULT_FORMS)
    rules = ("jacobi", "pd") if args.lam_rule == "both" else (args.lam_rule,)
    n_problems = args.problems if args.problems is not None else (1 if args.quick else 3)
    iterations = args.iterations if args.iterations is not None else (150 if args.quick else 400)
    if n_problems < 1 or iterations < 1:
        parser.error("--problems and --iterations must be >= 1")
    out = Outputs(args.out)

    t_start = time.perf_counter()
    jobs = [(rule, form, i) for rule in rules for form in forms for i in range(n_problems)]
    records = {rule: [] for rule in rules}
    skipped = []
    with Progress(len(jobs), "meanfield", enabled=not args.no_progress, unit="problem") as bar:
        for rule, form, index in jobs:
            bar(f"meanfield: {form} #{index} [lam: {rule}]")
            try:
                system = load_system(form, index, seed=args.seed, size=args.size, lam_rule=rule)
            except (MemoryError, ValueError, NotImplementedError, ImportError) as exc:
                skipped.append({"form": form, "index": index, "lam_rule": rule,
                                "reason": f"{type(exc).__name__}: {exc}"})
                continue
            rec = compare_on_system(system, iterations=iterations, rtol=args.rtol)
            records[rule].append(rec)
    everything = [r for rule in rules for r in records[rule]]
    if not everything:
        print("no problem could be run:", *(s["reason"] for s in skipped), sep="\n  ", file=sys.stderr)
        return 2
    for r in everything:
        r["same_as_jacobi"] = same_as_jacobi(r, everything)

    sections, shown_recs, medians = [], [], {}
    for rule in rules:
        if not records[rule]:
            continue
        # the representative problem: the first one, or in the pd regime the first where parallel
        # mean-field diverges (the instructive case)
        shown = next((r for r in records[rule] if rule == "pd" and r["parallel_diverged"]), records[rule][0])
        shown_recs.append((rule, shown))
        sections.append(f"Mean-field vs Jacobi / Gauss-Seidel, iteration by iteration: {shown['name']} "
                        f"(N = {shown['n']})\n" + iteration_table(shown))
    sections.append("(every iteration of every problem is in meanfield.json)")
    lines = [summary_table(everything, args.rtol)]
    lines += [f"skipped {s['form']}/{s['index']} (lam: {s['lam_rule']}): {s['reason']}" for s in skipped]
    sections.append("\n".join(lines))
    all_equal = all(r["equal"] for r in everything)
    lines = ["mean-field iterates equal the Jacobi / Gauss-Seidel iterates to 1e-12: "
             + ("yes, on every problem" if all_equal else "NO (see the table)")]
    for rule in rules:
        if records[rule]:
            medians[rule], line = _ratio_line(records[rule], rule)
            lines.append(line)
    sections.append("\n".join(lines))
    text = "\n\n".join(sections)
    print(text)
    elapsed = time.perf_counter() - t_start

    out.text("summary.md", "# Gaussian mean-field = Jacobi / Gauss-Seidel\n\n"
             + "\n\n".join(f"```\n{sec}\n```" for sec in sections) + "\n")
    figures = []
    if not args.no_plot:
        for rule, shown in shown_recs:
            name = "meanfield.png" if rule == shown_recs[0][0] else f"meanfield_{rule}.png"
            figures.append(out.figure(name, lambda path, shown=shown: plot(shown, path, args.rtol)))
    record = {
        "study": "meanfield",
        "settings": {"forms": list(forms), "problems_per_form": n_problems, "lam_rules": list(rules),
                     "iterations": iterations, "rtol": args.rtol, "size": args.size, "seed": args.seed,
                     "quick": args.quick, "equality_tol": EQUALITY_TOL},
        "all_equal": all_equal,
        "median_iteration_ratio_to_cg": medians,
        "same_system_note": SAME_SYSTEM_NOTE if any(r["same_as_jacobi"] for r in everything) else None,
        "problems": everything,
        "skipped": skipped,
        "figures": figures,
        "time_s": elapsed,
    }
    out.json("meanfield.json", record)
    rows = [dict(r, **{f"to_rtol_{k}": v for k, v in r["iterations_to_rtol"].items()}) for r in everything]
    out.csv("meanfield.csv", rows, CSV_COLUMNS)
    print(f"\nmean-field study: {len(everything)} systems in {elapsed:.1f} s")
    out.report()
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
