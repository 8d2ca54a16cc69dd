"""solvers.compare prints its table by default, stays quiet with verbose=False and saves its plot."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

import solvers


def _system(n=30):
    A = sp.diags([-np.ones(n - 1), 4.0 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="csr")
    return A, np.random.default_rng(0).standard_normal(n)


def test_compare_prints_its_table_by_default(capsys):
    A, b = _system()
    table = solvers.compare(A, b, rtol=1e-8)
    printed = capsys.readouterr().out
    assert printed.strip() == str(table).strip()
    for name in ("jacobi", "gauss_seidel", "gmres", "cg"):
        assert name in printed
    assert isinstance(table, solvers.Comparison) and len(table) == 4


def test_compare_verbose_false_is_silent(capsys):
    A, b = _system()
    table = solvers.compare(A, b, methods=("cg",), rtol=1e-8, verbose=False)
    assert capsys.readouterr().out == ""
    assert table["cg"].converged


def test_compare_saves_the_plot(tmp_path, capsys):
    A, b = _system()
    path = tmp_path / "compare.png"
    solvers.compare(A, b, methods=("jacobi", "cg"), rtol=1e-8, save=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(path) in capsys.readouterr().out
    quiet = tmp_path / "quiet.png"
    solvers.compare(A, b, methods=("cg",), rtol=1e-8, save=str(quiet), verbose=False)
    assert quiet.exists() and capsys.readouterr().out == ""
