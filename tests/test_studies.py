"""The studies run end to end from the command line, with one convention: usage, options, progress,
outputs (summary/timing markdown, JSON, CSV, PNG) and the paths printed."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from gcrflinalg import cupy_available, problems
from studies import convergence, meanfield, timing
from studies._common import (STUDIES, Progress, markdown_table, speed_words, timing_summary, timing_table,
                             write_csv)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("time_s", "setup_s", "solve_s", "build_s")

#: the extra arguments that keep each study's quick run short in the tests
QUICK_ARGS = {
    "convergence": [],
    "meanfield": [],
    "timing": [],
    "timing_grid": [],
    "timing_lowrank": [],
    "timing_video": [],
    "timing_training": [],
    "timing_auto": [],
    "timing_overhead": [],
    "train": ["--steps", "4"],
    "uncertainty": [],
}
#: the markdown summary each study writes
SUMMARY = {name: "timing.md" if name.startswith("timing") else "summary.md" for name in STUDIES}


def _run(args, **kw):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, **kw)


def _without_timings(runs):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in runs]


_QUICK_RUNS = {}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Each study's ``--quick`` run in a subprocess, run once per module on first use."""
    def get(name):
        if name not in _QUICK_RUNS:
            if name == "train":
                pytest.importorskip("torch", reason="PyTorch is not installed")
            out = tmp_path_factory.mktemp(name)
            proc = _run([f"studies.{name}", "--quick", "--out", str(out), *QUICK_ARGS[name]])
            _QUICK_RUNS[name] = (out, proc)
        return _QUICK_RUNS[name]
    return get


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_study_quick_run_writes_and_names_its_outputs(name, quick_runs):
    out, proc = quick_runs(name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(os.listdir(out))
    md = [f for f in files if f.endswith(".md")]
    assert SUMMARY[name] in md, files
    assert [f for f in files if f.endswith(".json")], files
    assert [f for f in files if f.endswith(".csv")], files
    pngs = [f for f in files if f.endswith(".png")]
    assert pngs, files
    for f in pngs:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    for f in files:  # every file written is named on standard output
        assert str(out / f) in proc.stdout, (f, proc.stdout[-2000:])
        assert (out / f).stat().st_size > 0, f
    # the progress log on a non-terminal: plain lines, no carriage returns, complete counts
    assert "\r" not in proc.stderr
    counts = re.findall(r": (\d+)/(\d+) \[", proc.stderr)
    assert counts, proc.stderr[-2000:]
    done, total = counts[-1]
    assert done == total, counts[-1]


def test_timing_studies_share_one_table_format(quick_runs):
    for name in ("timing", "timing_grid", "timing_lowrank", "timing_video", "timing_training", "timing_auto",
                 "timing_overhead"):
        out, proc = quick_runs(name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        text = (out / "timing.md").read_text()
        header = next(line for line in text.splitlines() if line.startswith("| family"))
        cells = [c.strip() for c in header.strip("|").split("|")]
        assert cells == ["family", "case", "what", "time (ms)", "peer", "peer (ms)", "this vs peer", "target",
                         "met"], (name, cells)
        rows = json.loads((out / "timing.json").read_text())["rows"]
        for r in rows:
            if r.get("peer") and r.get("peer_time_s"):
                assert r["comparison"].endswith(("x faster", "x slower")), r
                assert r["comparison"] in text
        assert "targets:" in proc.stdout and "met" in proc.stdout
        assert "| family" not in proc.stdout  # the terminal gets the summary, the file the table


def test_python_m_studies_lists_every_study():
    for args in (["studies"], ["studies", "--help"]):
        proc = _run(args)
        assert proc.returncode == 0, proc.stderr
        for name, line in STUDIES.items():
            assert f"{name}  " in proc.stdout and line in proc.stdout, name


@pytest.mark.parametrize("name", list(STUDIES))
def test_usage_line_and_common_options(name):
    module = __import__(f"studies.{name}", fromlist=["build_parser"])
    if hasattr(module, "build_parser"):
        text = module.build_parser().format_help()
    else:
        proc = _run([f"studies.{name}", "--help"])
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
    assert text.startswith(f"usage: python -m studies.{name}"), text[:200]
    for option in ("--help", "--quick", "--backend", "--out", "--seed"):
        assert option in text, (name, option)
    assert f"results{os.sep}{name}{os.sep}" in text.replace("\n", "").replace(" ", ""), name


def test_forms_parse_the_same_way_in_convergence_and_meanfield():
    argv = ["--forms", "grid", "lowrank_potts"]
    for module in (convergence, meanfield):
        assert module.build_parser().parse_args(argv).forms == ["grid", "lowrank_potts"], module.__name__
        assert "--forms FORM [FORM ...]" in module.build_parser().format_help()
        with pytest.raises(SystemExit):
            module.build_parser().parse_args(["--forms", "grid,lowrank"])
    assert convergence.build_parser().parse_args([]).forms == list(problems.FORMS)


@pytest.mark.skipif(cupy_available(), reason="a GPU is present")
@pytest.mark.parametrize("name", ["timing_video", "meanfield"])
def test_gpu_backend_fails_clearly_without_cupy_from_the_command_line(name, tmp_path):
    proc = _run([f"studies.{name}", "--quick", "--backend", "gpu", "--out", str(tmp_path)])
    assert proc.returncode != 0 and "CuPy" in proc.stderr and "Traceback" not in proc.stderr


def test_progress_log_without_a_terminal():
    stream = io.StringIO()
    with Progress(150, "items", stream=stream) as bar:
        for _ in range(150):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and lines[-1].startswith("items: 150/150")
    assert 10 <= len(lines) <= 12  # a tenth at a time
    stream = io.StringIO()
    with Progress(3, "steps", stream=stream) as bar:  # announced steps complete on close
        for k in range(3):
            bar(f"steps: #{k}")
    assert stream.getvalue().splitlines()[-1].startswith("steps: #2: 3/3")


def test_speed_words():
    assert speed_words(1.0, 2.5) == "2.5x faster"
    assert speed_words(3.0, 2.0) == "1.5x slower"
    assert speed_words(None, 1.0) is None
    rows = [dict(family="f", case="c", what="w", time_s=0.001, peer="p", peer_time_s=0.004, target="t", met=True)]
    assert "4.0x faster" in timing_table(rows) and "1.000" not in timing_table(rows)
    assert timing_summary(rows).startswith("targets: 1 met, 0 missed")


def _convergence_quick(quick_runs):
    out, proc = quick_runs("convergence")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def quick_run(quick_runs):
    return _convergence_quick(quick_runs)


def test_convergence_quick_writes_every_file(quick_run):
    for name in ("summary.md", "runs.json", "runs.csv", "residual_vs_iteration.png", "residual_vs_time.png"):
        assert (quick_run / name).stat().st_size > 0, name
    for name in ("residual_vs_iteration.png", "residual_vs_time.png"):
        assert (quick_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (quick_run / "summary.md").read_text()
    assert "Average iterations to converge" in text and "Gauss–Seidel" in text


def test_convergence_record_has_every_method_for_every_form_converged(quick_run):
    record = json.loads((quick_run / "runs.json").read_text())
    runs = record["runs"]
    assert record["options"]["forms"] == list(problems.FORMS)
    for form in problems.FORMS:
        expected = convergence.methods_for(form)
        assert ("direct" in expected) == (form in convergence.DIRECT_FORMS)
        assert ("reduced_cg" in expected) == (form in convergence.REDUCED_FORMS)
        for method in expected:
            sel = [r for r in runs if r["form"] == form and r["method"] == method]
            # the red-black reduction runs on the 4-neighbourhood problems: indices 0 and 2 of 3
            assert len(sel) == (2 if method == "reduced_cg" else 3), (form, method)
            for r in sel:
                assert r["converged"], (form, method, r["problem"], r["error"])
                assert r["rel_residual"] <= 1e-6 * (1 + 1e-9)
                assert r["iterations"] >= (0 if method == "direct" else 1) and r["time_s"] > 0
                assert r["matvecs"] >= (0 if method == "direct" else 1)
    # the representative problem keeps its residual history, starting at 1 (x0 = 0)
    hist = [r for r in runs if r["index"] == 0 and r["method"] != "direct"]
    assert hist and all(r["residual_history"][0] == pytest.approx(1.0) for r in hist)
    assert all(r["residual_history"][-1] == pytest.approx(r["rel_residual"]) for r in hist)
    assert all("residual_history" not in r for r in runs if r["index"] != 0)
    # the classical ordering on these systems: Jacobi needs the most iterations
    summary = {(s["form"], s["method"]): s for s in record["summary"]}
    for form in problems.FORMS:
        assert summary[(form, "jacobi")]["iterations"] >= summary[(form, "cg")]["iterations"]
    # the reduced system needs fewer CG steps than the full one on the same problems
    for r in (r for r in runs if r["method"] == "reduced_cg"):
        full = next(f for f in runs if f["method"] == "cg" and f["problem"] == r["problem"])
        assert r["iterations"] < full["iterations"], (r["problem"], r["iterations"], full["iterations"])
    assert len(record["problems"]) == 3 * len(problems.FORMS)


def test_convergence_csv_matches_json(quick_run):
    record = json.loads((quick_run / "runs.json").read_text())
    with open(quick_run / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(record["runs"])
    assert list(rows[0]) == list(convergence.RUN_COLUMNS)
    assert rows[0]["problem"] == record["runs"][0]["problem"]


def test_dask_path_returns_the_in_process_record(tmp_path):
    distributed = pytest.importorskip("distributed")
    kw = dict(forms=["grid_potts", "multires", "lowrank", "video"], count=2, size="tiny", progress=False)
    local, meta_local = convergence.run_study(**kw)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        remote, meta_remote = convergence.run_study(dask_address=cluster.scheduler_address, **kw)
        # the command line takes the same path
        argv = ["--forms", "grid_potts", "multires", "lowrank", "video", "--count", "2", "--size", "tiny",
                "--dask", cluster.scheduler_address, "--out", str(tmp_path), "--no-progress"]
        assert convergence.main(argv) == 0
    cli = json.loads((tmp_path / "runs.json").read_text())
    assert cli["options"]["dask"] is True
    assert [(r["problem"], r["method"], r["iterations"]) for r in cli["runs"]] == \
        [(r["problem"], r["method"], r["iterations"]) for r in local]
    assert meta_remote == meta_local
    assert len(remote) == len(local)
    for a, b in zip(_without_timings(local), _without_timings(remote)):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-300), key
            elif key == "residual_history":
                np.testing.assert_allclose(b[key], a[key], rtol=1e-12)
            else:
                assert b[key] == a[key], key


def test_convergence_cli_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        convergence.main(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--out", "--quick", "--backend", "--forms", "--count", "--size", "--methods", "--rtol",
                   "--maxiter", "--restart", "--dtype", "--dask", "--seed", "--no-progress"):
        assert option in help_text, option
    out = tmp_path / "one"
    assert convergence.main(["--forms", "lowrank_potts", "--count", "1", "--size", "tiny", "--methods", "cg",
                             "direct", "--dtype", "float32", "--rtol", "1e-4", "--out", str(out),
                             "--no-progress"]) == 0
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["cg", "direct"] and all(r["converged"] for r in runs)
    with pytest.raises(SystemExit):
        convergence.main(["--forms", "nope"])


@pytest.mark.skipif(cupy_available(), reason="a GPU is present")
def test_gpu_backend_fails_cleanly_without_cupy(tmp_path):
    with pytest.raises(SystemExit, match="CuPy"):
        convergence.main(["--quick", "--backend", "gpu", "--out", str(tmp_path)])


def test_timing_quick_runs_end_to_end(quick_runs):
    out, proc = quick_runs("timing")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "timing.json").read_text())
    rows = record["rows"]
    families = {r.get("family") for r in rows}
    assert set(timing.FAMILIES) <= families and "photo" in families
    for r in rows:
        for key in ("entry", "case", "what", "time_s", "peer", "ratio", "target", "met"):
            assert key in r, (r, key)
    assert not [r for r in rows if r.get("error")], [r["error"] for r in rows if r.get("error")]
    photo = [r for r in rows if r["entry"] == timing.PHOTO_ENTRY]
    assert len(photo) == 1 and photo[0]["rel_residual"] < 1e-8
    assert (out / "timing.md").read_text().count("\n|") >= len(rows) + 1
    for family in (*timing.FAMILIES, "photo"):
        assert (out / f"timing_{family}.png").stat().st_size > 0, family


def test_timing_reports_a_missing_family_instead_of_failing():
    rows = timing.run_family("no_such_family")
    assert len(rows) == 1 and rows[0]["time_s"] is None and "not available" in rows[0]["error"]


def test_common_helpers(tmp_path):
    table = markdown_table([dict(a=1, b=0.5, c="x"), dict(a=None, b=float("nan"), c="yy")], ["a", "b", "c"])
    assert table.splitlines() == ["| a   | b   | c   |", "| --: | --: | --- |", "|   1 | 0.5 | x   |",
                                  "|   - |   - | yy  |"]
    write_csv(tmp_path / "x.csv", [dict(a=[1, 2], b=None)], ["a", "b"])
    assert (tmp_path / "x.csv").read_text().splitlines()[1] == '"[1, 2]",'
    with Progress(3, "t", enabled=False) as bar:
        bar.update()
        bar("message")
    assert bar.count == 2  # the step announced by the call completes on close


def test_photo_comparison_skips_cleanly_without_the_peer(monkeypatch):
    monkeypatch.setattr(timing, "_densecrf_available", lambda: False)
    (row,) = timing.photo_peer_comparison(quick=True, repeats=1)
    assert row["skipped"] and row["ratio"] is None and row["met"] is None
    assert "not installed" in row["peer"] and row["time_s"] > 0 and row["rel_residual"] < 1e-8


# ---------------------------------------------------------------------------- the regime sweep
_SWEEP = dict(forms=["grid", "lowrank"], count=2, sizes=["tiny"], margins=["0.1", "1"], progress=False,
              methods=["jacobi", "gauss_seidel", "sor", "cg"])
_TIMINGS = TIMING_KEYS


def _untimed(runs):
    return [{k: v for k, v in r.items() if k not in _TIMINGS} for r in runs]


def test_convergence_resume_after_an_interruption_gives_the_uninterrupted_table(tmp_path, monkeypatch):
    argv = ["--forms", "grid", "lowrank", "--count", "2", "--sizes", "tiny", "--margins", "0.1", "1",
            "--methods", "jacobi", "cg", "--no-progress"]
    whole = tmp_path / "whole"
    assert convergence.main(argv + ["--out", str(whole)]) == 0
    cut = tmp_path / "cut"
    calls = []
    original = convergence._task

    def interrupted(**task):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if stopped by the user after three problems
        calls.append(task)
        return original(**task)

    monkeypatch.setattr(convergence, "_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convergence.main(argv + ["--out", str(cut)])
    with open(cut / "runs.jsonl") as fh:
        assert len(fh.read().splitlines()) == 3  # every finished problem was written as it finished
    assert not (cut / "runs.csv").exists()
    monkeypatch.setattr(convergence, "_task", original)
    done = []
    monkeypatch.setattr(convergence, "_task", lambda **task: done.append(task) or original(**task))
    assert convergence.main(argv + ["--out", str(cut), "--resume"]) == 0
    assert len(done) == 8 - 3  # only the problems still missing ran
    a = json.loads((whole / "runs.json").read_text())
    b = json.loads((cut / "runs.json").read_text())
    assert _untimed(b["runs"]) == _untimed(a["runs"])
    assert b["problems"] == a["problems"]
    # the tables without timings are the same text
    assert convergence.theory_table(b["runs"]) == convergence.theory_table(a["runs"])
    sa, sb = (convergence.summarise(x["runs"], ["grid", "lowrank"]) for x in (a, b))
    keep = ("form", "method", "size", "regime", "problems", "converged", "iterations", "iterations_median",
            "iterations_q1", "iterations_q3", "predicted_median", "ratio_median")
    assert [{k: s[k] for k in keep} for s in sb] == [{k: s[k] for k in keep} for s in sa]
    with open(cut / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(a["runs"]) and {r["margin"] for r in rows} and "predicted_iterations" in rows[0]
    # without --resume the log starts afresh
    assert convergence.main(argv + ["--out", str(cut)]) == 0
    with open(cut / "runs.jsonl") as fh:
        assert len(fh.read().splitlines()) == 8


def test_convergence_runs_are_tidy_rows_with_theory():
    runs, meta = convergence.run_study(**_SWEEP)
    assert len(meta) == 2 * 2 * 2
    for col in ("margin", "size", "predicted_iterations", "regime", "dtype", "rtol", "jacobi_radius", "kappa"):
        assert all(col in r for r in runs), col
    assert set(convergence.RUN_COLUMNS) <= set(runs[0])
    for r in runs:
        if r["form"] == "grid" and r["regime"] in ("0.1", "1"):
            # lam = (1 + margin) rho(B) and diag(A) = 0: rho_J = 1 / (1 + margin)
            assert r["margin"] == float(r["regime"])
            assert r["jacobi_radius"] == pytest.approx(1 / (1 + r["margin"]), rel=1e-6)
        assert r["size"] == "tiny" and r["dtype"] == "float64" and r["rtol"] == 1e-6
        if r["method"] in ("jacobi", "gauss_seidel", "sor", "cg"):
            assert r["predicted_iterations"] > 0
        assert r["kappa"] is None or r["kappa"] >= 1
    # a smaller margin takes more iterations, as predicted
    for form in ("grid", "lowrank"):
        for method in ("jacobi", "cg"):
            small = [r["iterations"] for r in runs if r["form"] == form and r["method"] == method and r["regime"] == "0.1"]
            big = [r["iterations"] for r in runs if r["form"] == form and r["method"] == method and r["regime"] == "1"]
            assert np.median(small) > np.median(big), (form, method)
    summary = convergence.summarise(runs, ["grid", "lowrank"])
    s = next(s for s in summary if s["form"] == "grid" and s["method"] == "jacobi" and s["regime"] == "0.1")
    assert s["iterations_q1"] <= s["iterations_median"] <= s["iterations_q3"] and s["problems"] == 2


def test_predicted_jacobi_iterations_match_the_measured():
    # grid problem at margin 0.1: rho_J = 1/1.1; Jacobi's residual contracts by rho_J per iteration
    rows = convergence.run_problem("grid", 0, size="small", methods=["jacobi"], rtol=1e-10, margin="0.1",
                                   keep_history=True)
    r = rows[0]
    assert r["converged"]
    pred = r["predicted_iterations"]
    # ||r_k|| <= rho_J^k ||r_0|| (the iteration matrix is symmetric): never more than predicted, and
    # the start's small weight on the slowest modes saves a bounded number of iterations
    assert r["iterations"] <= math.ceil(pred) and r["iterations"] >= 0.8 * pred
    # the rate itself: iterations from one residual level to another, within 10% of the theory
    hist = np.asarray(r["residual_history"])
    k1, k2 = int(np.argmax(hist <= 1e-4)), int(np.argmax(hist <= 1e-10))
    rate_pred = math.log(1e-6) / math.log(r["jacobi_radius"])
    assert abs((k2 - k1) / rate_pred - 1) < 0.1, (k2 - k1, rate_pred)


def test_seed_regime_puts_jacobi_at_25_iterations():
    assert convergence.seed_margin(1e-6) == pytest.approx(10 ** (6 / 25) - 1)
    rows = convergence.run_problem("grid_potts", 0, size="tiny", methods=["jacobi"], rtol=1e-6, margin="seed",
                                   keep_history=False)
    assert rows[0]["predicted_iterations"] == pytest.approx(25, rel=1e-6)
    assert 15 <= rows[0]["iterations"] <= 25


def test_iterations_vs_margin_figure_has_axes_and_series():
    runs, _ = convergence.run_study(**_SWEEP)
    fig = convergence.plot_vs_margin(runs, ["grid", "lowrank"], what="iterations")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax, form in zip(axes, ("grid", "lowrank")):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert "margin" in ax.get_xlabel() and ax.get_ylabel() == "iterations"
        assert convergence.FORM_LABELS[form] in ax.get_title()
        labels = ax.get_legend_handles_labels()[1]
        for method in ("jacobi", "gauss_seidel", "sor", "cg"):
            assert convergence.METHOD_LABELS[method] in labels, (form, method, labels)
            assert f"{convergence.METHOD_LABELS[method]} predicted" in labels, (form, method)
        # the predicted Jacobi line runs through the medians of the predicted counts at both margins
        line = next(l for l in ax.get_lines() if l.get_label() == "Jacobi predicted")
        xs, ys = line.get_data()
        assert len(xs) == 2 and list(xs) == sorted(xs)
        expected = [np.median([r["predicted_iterations"] for r in runs if r["form"] == form
                               and r["method"] == "jacobi" and r["regime"] == reg]) for reg in ("0.1", "1")]
        np.testing.assert_allclose(ys, expected)
        # the measured series falls with the margin
        measured = next(c for c in ax.containers if c.get_label() == "Jacobi")
        my = measured.lines[0].get_ydata()
        assert my[0] > my[-1]
    tfig = convergence.plot_vs_margin(runs, ["grid"], what="time")
    ax = [a for a in tfig.axes if a.get_visible()][0]
    assert "time" in ax.get_ylabel() and ax.get_xscale() == "log"
    assert not any("predicted" in lab for lab in ax.get_legend_handles_labels()[1])


def test_convergence_sweep_flags_parse():
    args = convergence.build_parser().parse_args(
        ["--margins", "1e-3", "seed", "drawn", "--sizes", "large", "thesis", "--dtypes", "float32", "--rtols",
         "1e-6", "1e-8", "--resume"])
    opts = convergence._options(args)
    assert opts["margins"] == ["1e-3", "seed", "drawn"] and opts["sizes"] == ["large", "thesis"]
    assert opts["dtypes"] == ["float32"] and opts["rtols"] == [1e-6, 1e-8] and args.resume
    with pytest.raises(SystemExit):
        convergence.build_parser().parse_args(["--margins", "-1"])
    sweep = convergence._options(convergence.build_parser().parse_args(["--sweep"]))
    assert sweep["margins"] == list(convergence.SWEEP_MARGINS) and sweep["sizes"] == ["medium", "large"]
    assert sweep["count"] == 25 and sweep["methods"] == list(convergence.METHODS)
    thesis = convergence._options(convergence.build_parser().parse_args(["--thesis"]))
    assert thesis["sizes"] == ["thesis"] and thesis["margins"] == ["seed"] and thesis["forms"] == ["grid", "grid_potts"]


def test_convergence_report_is_regenerated_by_one_command(tmp_path, monkeypatch):
    tiny = ["--forms", "grid", "grid_potts", "--methods", "jacobi", "gauss_seidel", "cg", "--count", "1",
            "--sizes", "tiny"]
    monkeypatch.setattr(convergence, "REPORT_SWEEPS", (
        ("thesis", tiny + ["--margins", "seed"]),
        ("medium", tiny + ["--margins", "0.1", "1", "seed"]),
        ("large", tiny + ["--margins", "0.1", "1"]),
    ))
    doc = tmp_path / "docs" / "convergence.md"
    doc.parent.mkdir()
    text = convergence.write_report(str(doc), results=str(tmp_path / "results"), figures=str(tmp_path / "figures"))
    assert doc.read_text() == text
    assert convergence.REPORT_COMMAND in text
    for heading in ("## Iterations against the margin", "## Measured and predicted iterations",
                    "## Fastest method per form and regime", "## The thesis's Fig. 2.3 side by side"):
        assert heading in text
    assert "24.8" in text and "16.4" in text
    for link in re.findall(r"\]\(([^)]+\.png)\)", text):
        assert (doc.parent / link).resolve().is_file(), link
    # regenerating resumes every sweep: nothing is solved again
    monkeypatch.setattr(convergence, "_task", lambda **task: pytest.fail(f"ran {task}"))
    assert convergence.write_report(str(doc), results=str(tmp_path / "results"),
                                    figures=str(tmp_path / "figures")) == text
