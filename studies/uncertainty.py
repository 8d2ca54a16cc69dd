"""The G-CRF as a Gaussian: per-pixel uncertainty, samples, calibration and timings against peers.

A G-CRF is the Gaussian ``x ~ N(M^{-1} b, M^{-1})``.  This study, on the built-in photograph
problems:

1. **maps** — per-pixel standard deviations ``sqrt(diag(M^{-1}))`` (exact) next to mean-field's
   ``1 / sqrt(M_ii)`` (which underestimates them) and the stochastic estimate, with samples;
2. **calibration** — how often stochastic Lanczos quadrature's reported standard error covers its
   true error over seeded repeats, the variance estimator's coverage, and the variances of the
   samples against the exact ones;
3. **timings** — the log-determinant with the quadratic term ``b^T M^{-1} b`` against
   ``linear_operator``'s ``inv_quad_logdet`` (GPyTorch's library; exact Woodbury), exact samples
   against one direct solve, and SLQ against ``imate.logdet`` at the same probes and degree.  The
   peers are optional: a missing one is reported and skipped.  Every library runs with the threads
   it has in the process (its own default unless the thread variables are set before the run);
   each row records them.

Writes ``summary.md``, ``uncertainty.json``, ``uncertainty.csv``, ``uncertainty_maps.png`` and
``uncertainty_calibration.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import gcrflinalg
from gcrflinalg import problems
from studies._common import (Outputs, Progress, array_module, best_time, markdown_table, paired_best, speed_words,
                             study_parser, thread_words)

#: what each part of the study runs, full and quick
SETTINGS = {
    False: dict(map_size="medium", slq_size="large", slq_repeats=100, samples=4000,
                lowrank_shape=(21, 41, 41), lowrank_rank=128, timing_repeats=7),
    True: dict(map_size="small", slq_size="small", slq_repeats=12, samples=1000,
               lowrank_shape=(5, 21, 21), lowrank_rank=32, timing_repeats=2),
}
PROBES, DEGREE = 30, 30
#: the timed calls of each library run in blocks of this many after a pause of this long (s), so
#: that neither runs while the other's idle threads still spin (see studies._common.paired_best)
BLOCK, GAP_S = 3, 0.2


def _peer(name):
    try:
        if name == "imate":
            import imate
            return imate
        import linear_operator  # noqa: F401
        import torch  # noqa: F401
        return linear_operator
    except ImportError:
        return None


# ------------------------------------------------------------------------------------------ maps
def variance_maps(form, size, seed, rng):
    prob = problems.make_problem(form, 0, seed=seed, size=size)
    op, b = prob.operator, prob.b
    t0 = time.perf_counter()
    exact = gcrflinalg.marginal_variances(op)
    t_exact = time.perf_counter() - t0
    est = gcrflinalg.marginal_variances(op, method="stochastic", num_probes=64, rng=rng)
    meanfield = 1.0 / op.diagonal().reshape(op.vector_shape)
    draws = gcrflinalg.sample(op, b, 2, rng=rng)
    z = np.abs(est.values - exact.values) / est.stderr
    ratio = exact.values / meanfield
    rec = {"form": form, "name": prob.name, "n": op.size, "vector_shape": list(op.vector_shape),
           "variance_method": exact.method, "variance_time_s": t_exact,
           "exact_over_meanfield_mean": float(ratio.mean()), "exact_over_meanfield_max": float(ratio.max()),
           "stochastic_within_2se": float(np.mean(z <= 2)),
           "stochastic_max_rel_error": float(np.max(np.abs(est.values - exact.values) / exact.values)),
           "sample_method": draws.method}
    arrays = {"mean": draws.mean[0], "exact": np.sqrt(exact.values[0]), "meanfield": np.sqrt(meanfield[0]),
              "stochastic": np.sqrt(np.maximum(est.values[0], 0)), "sample0": draws.samples[0][0],
              "sample1": draws.samples[1][0]}
    return rec, arrays


def plot_maps(maps, path):
    import matplotlib.pyplot as plt

    cols = [("mean", "mean (label 0)"), ("exact", "exact std"), ("meanfield", "mean-field std 1/sqrt(M_ii)"),
            ("stochastic", "stochastic std (64 probes)"), ("sample0", "sample 1"), ("sample1", "sample 2")]
    fig, axes = plt.subplots(len(maps), len(cols), figsize=(2.6 * len(cols), 2.6 * len(maps)), squeeze=False)
    for row, (rec, arr) in zip(axes, maps):
        lo = min(arr["meanfield"].min(), arr["exact"].min())
        hi = max(arr["exact"].max(), arr["stochastic"].max())
        for ax, (key, title) in zip(row, cols):
            std = key in ("exact", "meanfield", "stochastic")
            im = ax.imshow(arr[key], cmap="viridis" if std else "RdBu_r", vmin=lo if std else None,
                           vmax=hi if std else None)
            ax.set_title(f"{rec['name']}: {title}" if key == "mean" else title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ calibration
def slq_calibration(size, seed, repeats, bar):
    prob = problems.make_problem("grid", 0, seed=seed, size=size)
    op = prob.operator
    exact = gcrflinalg.logdet(op, method="exact")
    z, rel = [], []
    for r in range(repeats):
        res = gcrflinalg.logdet(op, method="slq", num_probes=PROBES, degree=DEGREE, rng=1000 * seed + r)
        z.append(float((res.value - exact.value) / res.stderr))
        rel.append(float(abs(res.value - exact.value) / abs(exact.value)))
    bar.write(f"slq calibration: {prob.name}, N = {op.size}, {repeats} repeats")
    z = np.array(z)
    return {"name": prob.name, "n": op.size, "repeats": repeats, "probes": PROBES, "degree": DEGREE,
            "exact": float(exact.value), "covered_2se": float(np.mean(np.abs(z) <= 2)),
            "covered_1se": float(np.mean(np.abs(z) <= 1)), "median_rel_error": float(np.median(rel))}, z


def sample_calibration(form, seed, n_samples, rng):
    prob = problems.make_problem(form, 0, seed=seed, size="small")
    op, b = prob.operator, prob.b
    exact = gcrflinalg.marginal_variances(op).values.ravel()
    draws = gcrflinalg.sample(op, b, n_samples, rng=rng)
    x = draws.samples.reshape(n_samples, -1)
    var = x.var(axis=0, ddof=1)
    # the sample variance of a normal has relative standard deviation sqrt(2 / (S - 1))
    z = (var / exact - 1.0) / np.sqrt(2.0 / (n_samples - 1))
    return {"form": form, "name": prob.name, "n": op.size, "samples": n_samples, "method": draws.method,
            "error": draws.error, "variance_within_2sd": float(np.mean(np.abs(z) <= 2)),
            "mean_variance_ratio": float(np.mean(var / exact))}, (exact, var)


def plot_calibration(z, scatter, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    ax.hist(z, bins=20, density=True, alpha=0.7, label="SLQ error / reported stderr")
    t = np.linspace(-4, 4, 200)
    ax.plot(t, np.exp(-t * t / 2) / np.sqrt(2 * np.pi), "k-", label="N(0, 1)")
    ax.set_xlabel("(estimate - exact) / stderr")
    ax.legend(fontsize=8)
    ax.set_title(f"SLQ calibration ({len(z)} seeded repeats)")
    ax = axes[1]
    for (name, (exact, var)) in scatter:
        ax.loglog(exact, var, ".", ms=2, alpha=0.5, label=name)
    lim = [min(min(e.min(), v.min()) for _, (e, v) in scatter), max(max(e.max(), v.max()) for _, (e, v) in scatter)]
    ax.loglog(lim, lim, "k-", lw=1)
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("exact variance diag(M^-1)")
    ax.set_ylabel("variance of the samples")
    ax.legend(fontsize=8)
    ax.set_title("samples against exact variances")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ timings
def _lowrank_case(shape, rank, seed):
    rng = np.random.default_rng(seed)
    L, H, W = shape
    emb = rng.standard_normal((rank, L, H, W)) / np.sqrt(rank * L)
    emb.setflags(write=False)  # a read-only input: the operator uses it without a copy (docs/guarantees.md)
    b = rng.standard_normal(shape)
    return emb, 1.0, b


def timing_lowrank(shape, rank, seed, repeats):
    emb, lam, b = _lowrank_case(shape, rank, seed)
    rows = []

    def ours():  # a fresh operator per call: the factor is built inside
        op = gcrflinalg.LowRankGCRF(emb, lam)
        res = gcrflinalg.logdet(op, inv_quad_rhs=b)  # b^T M^-1 b from the same capacitance factor
        return float(res.inv_quad), float(res.value)

    quad, ld = ours()
    case = f"lowrank {shape[0]}x{shape[1]}x{shape[2]}, D={rank}, N={emb[0].size}"
    lo = _peer("linear_operator")
    row = {"case": case, "what": "log det M + b^T M^-1 b", "time_s": None, "peer": "linear_operator.inv_quad_logdet",
           "peer_time_s": None, "rel_diff": None, "target": ">= 3x faster"}
    if lo is not None:
        import torch
        from linear_operator.operators import (DiagLinearOperator, LowRankRootAddedDiagLinearOperator,
                                               LowRankRootLinearOperator)

        root = torch.from_numpy(emb.reshape(rank, -1).T.copy())
        rhs = torch.from_numpy(b.reshape(-1, 1).copy())

        def peer():
            n = root.shape[0]
            A = LowRankRootAddedDiagLinearOperator(LowRankRootLinearOperator(root),
                                                   DiagLinearOperator(torch.full((n,), lam, dtype=torch.float64)))
            q, l = A.inv_quad_logdet(inv_quad_rhs=rhs, logdet=True)
            return float(q), float(l)

        q2, l2 = peer()
        # alternated (a load change hits both), in blocks after a pause (each runs as if alone)
        t_ours, t_peer = paired_best(ours, peer, repeats=repeats, block=BLOCK, gap_s=GAP_S)
        row.update(time_s=t_ours, peer_time_s=t_peer,
                   rel_diff=max(abs(q2 - quad) / abs(quad), abs(l2 - ld) / abs(ld)))
    else:
        row["time_s"] = best_time(ours, repeats=repeats)
    rows.append(row)

    def one_solve():
        op = gcrflinalg.LowRankGCRF(emb, lam)
        return gcrflinalg.solve(op, b, method="direct").x

    def sixteen():
        op = gcrflinalg.LowRankGCRF(emb, lam)
        return gcrflinalg.sample(op, b, 16, rng=0).samples

    t_samples, t_solve = paired_best(sixteen, one_solve, repeats=repeats, block=BLOCK, gap_s=GAP_S)
    rows.append({"case": case, "what": "16 exact samples (perturb-and-MAP)", "time_s": t_samples,
                 "peer": "one direct solve", "peer_time_s": t_solve, "rel_diff": None, "target": "<= 2x the solve"})
    threads = thread_words()  # each library's own count, as in a user's process (nothing is set here)
    for r in rows:
        r["threads"] = threads
    return rows


def timing_slq(size, seed, repeats):
    prob = problems.make_problem("grid", 0, seed=seed, size=size)
    op = prob.operator
    t_exact, exact = best_time(lambda: gcrflinalg.logdet(problems.make_problem("grid", 0, seed=seed, size=size).operator,
                                                         method="exact").value, repeats=1, return_result=True)
    params = prob.params
    errors = {"ours": [], "peer": []}  # relative errors of every timed call (new probes each time)

    def ours():
        fresh = problems.build_operator("grid", params)
        value = gcrflinalg.logdet(fresh, method="slq", num_probes=PROBES, degree=DEGREE,
                                  rng=len(errors["ours"])).value
        errors["ours"].append(float(abs(value - exact) / abs(exact)))
        return value

    ours()
    case = f"grid {prob.name}, N={op.size}"
    row = {"case": case, "what": f"SLQ log det, {PROBES} probes, degree {DEGREE}", "time_s": None,
           "rel_error": None, "peer": "imate.logdet (slq)", "peer_time_s": None,
           "peer_rel_error": None, "exact_time_s": t_exact, "target": ">= 3x faster, same or smaller error"}
    imate = _peer("imate")
    if imate is not None:
        csr = op.to_sparse().tocsr()

        def peer():
            value = float(imate.logdet(csr, method="slq", min_num_samples=PROBES, max_num_samples=PROBES,
                                       lanczos_degree=DEGREE, orthogonalize=0, verbose=False))
            errors["peer"].append(float(abs(value - exact) / abs(exact)))
            return value

        peer()
        t_ours, t_peer = paired_best(ours, peer, repeats=repeats, block=BLOCK, gap_s=GAP_S)
        row.update(time_s=t_ours, peer_time_s=t_peer, peer_rel_error=float(np.median(errors["peer"])))
    else:
        row["time_s"] = best_time(ours, repeats=repeats)
    # the median over the timed calls: one SLQ run's error is itself random
    row["rel_error"] = float(np.median(errors["ours"]))
    row["error_runs"] = len(errors["ours"])
    row["threads"] = thread_words()
    return [row]


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = study_parser(
        "uncertainty",
        "The G-CRF as a Gaussian on the built-in photograph problems: exact per-pixel standard "
        "deviations against mean-field's 1/sqrt(M_ii), samples, the calibration of the stochastic "
        "log-determinant (SLQ) and variance estimates, and timings against linear_operator "
        "(inv_quad_logdet) and imate (logdet) when they are installed.  Writes summary.md, "
        "uncertainty.json, uncertainty.csv, uncertainty_maps.png and uncertainty_calibration.png "
        "into --out.  Runs on the CPU.",
        quick_help="a run of about a minute: small problems, 12 SLQ repeats, small timing cases")
    parser.add_argument("--no-plot", action="store_true", help="skip the figures")
    return parser


CSV_COLUMNS = ("case", "what", "time_s", "peer", "peer_time_s", "comparison", "target", "rel_error",
               "peer_rel_error", "rel_diff", "threads")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend != "cpu":
        array_module(args.backend)  # a clear message without CuPy / a GPU
        parser.error("--backend gpu: the uncertainty study runs on the CPU only")
    cfg = SETTINGS[bool(args.quick)]
    out = Outputs(args.out)
    rng = np.random.default_rng(args.seed)
    steps = ["maps grid", "maps lowrank", "slq calibration", "samples grid", "samples lowrank",
             "timing lowrank", "timing slq"]
    record = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "seed": args.seed}
    maps, scatter, timing_rows = [], [], []
    with Progress(len(steps), "uncertainty", enabled=not args.no_progress, unit="part") as bar:
        bar("uncertainty: maps grid")
        maps.append(variance_maps("grid", cfg["map_size"], args.seed, rng))
        bar("uncertainty: maps lowrank")
        maps.append(variance_maps("lowrank", cfg["map_size"], args.seed, rng))
        bar("uncertainty: slq calibration")
        record["slq_calibration"], z = slq_calibration(cfg["slq_size"], args.seed, cfg["slq_repeats"], bar)
        record["sample_calibration"] = []
        for form in ("grid", "lowrank"):
            bar(f"uncertainty: samples {form}")
            rec, sc = sample_calibration(form, args.seed, cfg["samples"], rng)
            record["sample_calibration"].append(rec)
            scatter.append((rec["name"] + f" ({rec['method']})", sc))
        bar("uncertainty: timing lowrank")
        timing_rows += timing_lowrank(cfg["lowrank_shape"], cfg["lowrank_rank"], args.seed, cfg["timing_repeats"])
        bar("uncertainty: timing slq")
        timing_rows += timing_slq(cfg["slq_size"], args.seed, cfg["timing_repeats"])
    record["maps"] = [m[0] for m in maps]
    for row in timing_rows:
        if row["peer"] == "one direct solve":
            row["comparison"] = f"{row['time_s'] / row['peer_time_s']:.2f}x the solve"
        elif row.get("peer_time_s"):
            row["comparison"] = speed_words(row["time_s"], row["peer_time_s"])
        else:
            row["comparison"] = "peer not installed"
    record["timings"] = timing_rows
    record["peers"] = {"linear_operator": _peer("linear_operator") is not None, "imate": _peer("imate") is not None}

    cal = record["slq_calibration"]
    lines = ["# The G-CRF as a Gaussian: uncertainty, samples, calibration", "",
             f"Command: `python -m studies.uncertainty{' --quick' if args.quick else ''} --seed {args.seed}`", "",
             "## Variances: exact against mean-field", "",
             markdown_table(record["maps"], ["name", "n", "variance_method", "exact_over_meanfield_mean",
                                             "exact_over_meanfield_max", "stochastic_within_2se",
                                             "stochastic_max_rel_error", "sample_method"]), "",
             "Mean-field reports `1/M_ii`; the exact marginal variance `(M^-1)_ii` is larger by the ratio shown.", "",
             "## Calibration", "",
             f"SLQ on {cal['name']} (N = {cal['n']}, {cal['probes']} probes, degree {cal['degree']}): the true "
             f"error lies within 2 reported standard errors in {100 * cal['covered_2se']:.0f}% and within 1 in "
             f"{100 * cal['covered_1se']:.0f}% of {cal['repeats']} seeded repeats (median relative error "
             f"{cal['median_rel_error']:.2g}).", "",
             markdown_table(record["sample_calibration"], ["name", "n", "samples", "method", "error",
                                                           "variance_within_2sd", "mean_variance_ratio"]), "",
             "## Timings (best of repeats, alternated with the peer; fresh operator per call, float64)", "",
             "Errors of SLQ (ours and imate's): the median relative error against the exact value over "
             "all timed calls (new probes each call).  Threads: each library's own count in this process "
             f"({timing_rows[-1]['threads'] if timing_rows else thread_words()}); set the thread variables "
             "before the run for another condition.", "",
             markdown_table(timing_rows, ["case", "what", "time_s", "peer", "peer_time_s", "comparison", "target",
                                          "rel_error", "peer_rel_error", "rel_diff"]), ""]
    missing = [k for k, v in record["peers"].items() if not v]
    if missing:
        lines.append(f"Not installed (skipped): {', '.join(missing)}.")
    out.text("summary.md", "\n".join(lines))
    out.json("uncertainty.json", record)
    out.csv("uncertainty.csv", timing_rows, CSV_COLUMNS)
    if not args.no_plot:
        out.figure("uncertainty_maps.png", lambda p: plot_maps(maps, p))
        out.figure("uncertainty_calibration.png", lambda p: plot_calibration(z, scatter, p))
    print(f"SLQ calibration: {100 * cal['covered_2se']:.0f}% of {cal['repeats']} repeats within 2 stderr")
    for row in timing_rows:
        peer_ms = f"{1e3 * row['peer_time_s']:.1f} ms" if row.get("peer_time_s") else "-"
        print(f"{row['case']}: {row['what']}: {1e3 * row['time_s']:.1f} ms; {row['peer']}: {peer_ms} "
              f"({row['comparison']})")
    out.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
