"""The house plan: one-way layers, one form registry, studies on the public API.

The layering is written as import-linter contracts in ``setup.cfg`` (``[importlinter]``); this module
runs them, and checks by AST what import-linter cannot express (no private name of another layer).
"""
from __future__ import annotations

import ast
import importlib
import pathlib
import shutil
import subprocess
import sys

import pytest

import gcrflinalg
from gcrflinalg.forms.registry import FORMS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_files(package):
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path):
    """``(module, names)`` of every import statement of ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ROOT).parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            yield module, tuple(alias.name for alias in node.names)


@pytest.mark.skipif(shutil.which("lint-imports") is None and importlib.util.find_spec("importlinter") is None,
                    reason="import-linter is not installed (pip install -e '.[test]')")
def test_import_linter_contracts_are_kept():
    out = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                          "sys.exit(lint_imports_command())"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_solvers_know_nothing_of_gcrflinalg():
    for path in _python_files("solvers"):
        for module, _ in _imports(path):
            assert not module.startswith(("gcrflinalg", "studies")), f"{path.relative_to(ROOT)} imports {module}"
    code = "import sys, solvers; solvers.cg; print(sorted(m for m in sys.modules if m.startswith('gcrflinalg')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_gcrflinalg_uses_only_public_names_of_solvers():
    for path in _python_files("gcrflinalg"):
        for module, names in _imports(path):
            if module.split(".")[0] == "solvers":
                private = [p for p in module.split(".")[1:] + list(names)
                           if p.startswith("_") and not p.startswith("__")]
                assert not private, f"{path.relative_to(ROOT)} imports private {module} {names}"


def test_studies_use_only_public_names():
    for path in _python_files("studies"):
        for module, names in _imports(path):
            top = module.split(".")[0]
            if top in ("gcrflinalg", "solvers"):
                parts = module.split(".")[1:] + list(names)
                assert not any(p.startswith("_") and not p.startswith("__") for p in parts), \
                    f"{path.relative_to(ROOT)} imports a private name: {module} {names}"
        source = path.read_text()
        assert "._params" not in source and "backend._cupy" not in source, path.name


def test_import_is_cheap():
    """``import gcrflinalg`` loads no operator module, no solver and no compiler."""
    code = ("import sys, gcrflinalg; print(sorted(m for m in sys.modules if m.startswith("
            "('numba', 'scipy', 'gcrflinalg.forms.grid', 'solvers._'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ the form registry
def test_registry_lists_every_form_once():
    from gcrflinalg import problems

    assert problems.FORMS == tuple(FORMS)
    assert len({spec.operator for spec in FORMS.values()}) == len(FORMS)
    for name, spec in FORMS.items():
        assert spec.name == name
        cls = spec.operator_class()
        assert issubclass(cls, gcrflinalg.GCRFOperator)
        assert callable(spec.problem_maker())
        for export in spec.exports:
            assert export in gcrflinalg.__all__
            assert getattr(gcrflinalg, export) is getattr(importlib.import_module(spec.module), export)
        assert getattr(gcrflinalg, spec.exports[0]) is cls


@pytest.mark.parametrize("form", list(FORMS))
def test_registry_builds_every_builtin_problem(form):
    from gcrflinalg import problems

    prob = problems.make_problem(form, 0, size="tiny")
    spec = FORMS[form]
    assert isinstance(prob.operator, spec.operator_class())
    for name, ndim in zip(spec.parameter_names, spec.parameter_ndims):
        assert prob.params[name].ndim == ndim
    assert prob.b.ndim == (1 if spec.vector_axes == "N" else spec.vector_ndim)


def test_layers_read_the_registry():
    from gcrflinalg.interop import _forms

    assert set(_forms.FORMS) == {name for name, spec in FORMS.items() if spec.parameters or spec.layout}
    assert all(_forms.FORMS[name] is FORMS[name] for name in _forms.FORMS)
    torch = pytest.importorskip("torch")  # noqa: F841
    from gcrflinalg.interop import torch as layers

    for name in _forms.FORMS:
        layer = getattr(layers, FORMS[name].layer)
        assert layer.__name__ == FORMS[name].layer


def test_unknown_form_names_the_registered_ones():
    from gcrflinalg.forms.registry import get_form, register

    with pytest.raises(ValueError, match="grid_potts"):
        get_form("potts")
    with pytest.raises(ValueError, match="registered already"):
        register(FORMS["grid"])
