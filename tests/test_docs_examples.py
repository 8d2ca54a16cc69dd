"""The executable examples of the documentation (docs/examples/plot_*.py) run as plain scripts.

The documentation build runs them too (sphinx-gallery); this keeps them checked by the test suite
alone, without Sphinx.  Each asserts what it teaches, so a run without an exception is the test.
"""
from __future__ import annotations

import pathlib
import runpy

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples").glob("plot_*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        plt.close("all")
