"""Every ```python block of README.md and docs/*.md runs, each on its own.

Sybil finds the blocks (its Markdown parser: fenced ``python`` blocks only, so shell snippets and
plain fences are left alone) and evaluates them with their line numbers, so a traceback points at the
line of the Markdown file.  Each block gets a fresh namespace: a block that leans on a name defined
by an earlier one fails.  A block that imports a module that is not installed (``torch``, ``jax``,
an optional extra) is skipped with the module's name.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_SYBIL = Sybil(parsers=[PythonCodeBlockParser()])


def _examples():
    for path in DOCUMENTS:
        for example in _SYBIL.parse(path):
            yield pytest.param(example, id=f"{path.relative_to(ROOT).as_posix()}:{example.line}")


def _imported_modules(source: str) -> list[str]:
    """Top-level packages the block imports."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name.partition(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.partition(".")[0])
    return list(dict.fromkeys(names))


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def test_documents_found():
    assert (ROOT / "README.md").is_file()
    assert any(True for _ in _SYBIL.parse(ROOT / "README.md")), "README.md has no ```python block"


@pytest.mark.parametrize("example", list(_examples()))
def test_python_block(example):
    missing = [name for name in _imported_modules(str(example.parsed)) if not _installed(name)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (not installed)")
    example.namespace.clear()  # one namespace per block: every block stands alone
    example.evaluate()
