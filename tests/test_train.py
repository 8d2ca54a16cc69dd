"""The end-to-end training study runs, its loss falls, and it writes its plots and record."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed")


def test_quick_training_study_end_to_end(tmp_path, capsys):
    from studies import train

    steps = 25
    rc = train.main(["--quick", "--steps", str(steps), "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    for name in ("training.png", "segmentations.png", "train.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["config"]["form"] == "lowrank_potts" and record["config"]["steps"] == steps
    for model in ("unary", "gcrf"):
        history, summary = record["histories"][model], record["summary"][model]
        assert len(history["loss"]) == steps
        assert summary["loss_last"] < summary["loss_first"], model  # the loss falls
        assert history["step"][-1] == steps
        # better than guessing among L labels on pixels never used in the loss
        assert summary["heldout_accuracy"] > 1.0 / record["config"]["num_labels"]
    assert 0.0 < record["learnt_rho"] < 1.0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("G-CRF held-out accuracy") and "vs unary-only" in last
