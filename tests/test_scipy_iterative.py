"""SciPy's own iterative-solver test module, run against :func:`solvers.cg` and :func:`solvers.gmres`.

The module ``scipy/sparse/linalg/_isolve/tests/test_iterative.py`` of the installed SciPy is read at
test time (nothing of it is committed here), its import of SciPy's solvers is pointed at ours and
its solver list cut to the two calls we share with SciPy.  Every test of it then runs here as it
runs in SciPy's own suite, with these exclusions, each skipped with its reason:

- complex systems (``rand-cmplx*``, ``nonsymposdef-F`` and ``test_abi``'s second call): the
  solvers are real; a complex ``A`` or ``b`` is a ``ValueError`` by design;
- tests of SciPy-only solvers: ``test_show`` (``tfqmr``'s printout) and ``TestQMR``.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
import types

import numpy as np
import pytest

import solvers

_SCIPY_MODULE = "scipy.sparse.linalg._isolve.tests.test_iterative"

#: tests of the SciPy module that do not concern cg/gmres, with the reason
EXCLUDED = {
    "test_show": "prints tfqmr's convergence report: tfqmr is a SciPy-only solver",
    "TestQMR": "tests qmr, a SciPy-only solver",
}

COMPLEX_REASON = "complex system: the solvers are real (complex input is a ValueError by design)"


def _source():
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "sparse", "linalg", "_isolve", "tests",
                        "test_iterative.py")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _ours(fn, name):
    """``fn`` under SciPy's name, skipping the test on a complex system (see the module docstring)."""

    def solver(A, b, *args, **kwargs):
        if np.iscomplexobj(A) or np.iscomplexobj(b) or getattr(getattr(A, "dtype", None), "kind", "") == "c":
            pytest.skip(COMPLEX_REASON)
        return fn(A, b, *args, **kwargs)

    solver.__name__ = solver.__qualname__ = name
    return solver


def _load():
    text = _source()
    if text is None:
        return None, "the installed SciPy ships no test_iterative.py"
    import scipy.sparse.linalg._isolve as isolve

    shim = types.ModuleType("_gcrflinalg_isolve_shim")
    for name in ("bicg", "bicgstab", "cgs", "gcrotmk", "lgmres", "minres", "qmr", "tfqmr"):
        setattr(shim, name, getattr(isolve, name))
    shim.cg = _ours(solvers.cg, "cg")
    shim.gmres = _ours(solvers.gmres, "gmres")
    sys.modules[shim.__name__] = shim
    text, n_import = re.subn(r"from scipy\.sparse\.linalg\._isolve import", f"from {shim.__name__} import", text)
    text, n_solvers = re.subn(r"_SOLVERS = \[[^\]]*\]", "_SOLVERS = [cg, gmres]", text, count=1)
    if n_import != 1 or n_solvers != 1:
        return None, "the layout of SciPy's test_iterative.py changed (its import or _SOLVERS list)"
    module = types.ModuleType(_SCIPY_MODULE)
    module.__file__ = "<scipy test_iterative.py, pointed at solvers.cg/gmres>"
    exec(compile(text, module.__file__, "exec"), module.__dict__)
    return module, None


_MODULE, _WHY = _load()

if _MODULE is None:
    def test_scipy_iterative_module():
        pytest.skip(_WHY)
else:
    for _name, _value in vars(_MODULE).items():
        if _name in EXCLUDED:
            continue
        if _name.startswith(("test_", "Test")) or _name in ("solver", "case"):
            globals()[_name] = _value

    @pytest.mark.parametrize("name", sorted(EXCLUDED))
    def test_excluded(name):
        pytest.skip(EXCLUDED[name])


def test_harness_runs_our_solvers():
    """The loaded module's solvers are ours, and only ours are under test."""
    if _MODULE is None:
        pytest.skip(_WHY)
    assert [s.__name__ for s in _MODULE._SOLVERS] == ["cg", "gmres"]
    calls = []
    original = _MODULE._SOLVERS[0]
    A = np.diag([1.0, 2.0, 3.0])
    x, info = original(A, np.ones(3))
    calls.append(info)
    assert calls == [0] and np.allclose(x, [1.0, 0.5, 1.0 / 3.0], rtol=1e-4)
    assert isinstance(original(A, np.ones(3)), solvers.SolveResult)
