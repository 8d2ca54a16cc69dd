"""The studies run end to end: convergence (in-process and on a Dask LocalCluster) and timing."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from gcrflinalg import problems
from gcrflinalg.backend import cupy_available
from studies import convergence, timing
from studies._common import Progress, markdown_table, write_csv

TIMING_KEYS = ("time_s",)


def _without_timings(runs):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in runs]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("convergence")
    assert convergence.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    return out


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


def test_timing_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "timing"
    assert timing.main(["--quick", "--out", str(out), "--no-progress"]) == 0
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
    assert bar.count == 1


def test_photo_comparison_skips_cleanly_without_the_peer(monkeypatch):
    monkeypatch.setattr(timing, "_densecrf_available", lambda: False)
    (row,) = timing.photo_peer_comparison(quick=True, repeats=1)
    assert row["skipped"] and row["ratio"] is None and row["met"] is None
    assert "not installed" in row["peer"] and row["time_s"] > 0 and row["rel_residual"] < 1e-8
