"""Sphinx configuration: API reference (autosummary + numpydoc), Markdown pages (MyST) and the
executable examples (sphinx-gallery).

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` from the repository
root (``pip install -e '.[docs]'``).  PyTorch, JAX and CuPy are not needed: autodoc mocks them.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the checkout's packages, also when not installed
os.environ.setdefault("MPLBACKEND", "Agg")

import gcrflinalg  # noqa: E402

project = "gcrflinalg"
copyright = "gcrflinalg developers"
release = version = gcrflinalg.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "examples/README.rst", "**/sg_execution_times.rst"]

# ---------------------------------------------------------------------------------------- theme
html_theme = "furo"
html_title = f"gcrflinalg {release}"

# ------------------------------------------------------------------------------------ Markdown
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# --------------------------------------------------------------------------------- API reference
# The optional frameworks are imported on first use by gcrflinalg.interop; the documentation
# never needs them.  The torch layer classes are then documented from a mocked torch.nn.Module.
autodoc_mock_imports = ["torch", "jax", "jaxlib", "cupy", "cupyx"]
autodoc_typehints = "none"
autosummary_generate = True
autosummary_ignore_module_all = False
numpydoc_show_class_members = False  # the class template lists the members
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False


#: modules whose public names (``__all__``) the reference documents; submodules found in an
#: ``__all__`` (``gcrflinalg.problems`` ...) are documented the same way
API_MODULES = ["gcrflinalg", "gcrflinalg.interop.torch", "gcrflinalg.interop.jax", "solvers"]


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _api_index() -> tuple[dict, list]:
    """``{module: its __all__}`` for every documented module, and the names objects are indexed at.

    An object exported by several documented modules (``SolveResult`` by ``solvers`` and
    ``gcrflinalg``) is documented on each of their pages but indexed once, under the module sharing
    the longest dotted prefix with the module that defines it; the other pages use ``:no-index:``.
    """
    from sphinx.ext.autodoc.mock import mock

    public, exported = {}, {}
    todo = list(API_MODULES)
    with mock(autodoc_mock_imports):  # the torch layer classes subclass torch.nn.Module
        while todo:
            module_name = todo.pop(0)
            if module_name in public:
                continue
            module = importlib.import_module(module_name)
            public[module_name] = list(getattr(module, "__all__", []))
            for name in public[module_name]:
                obj = getattr(module, name)
                if inspect.ismodule(obj):
                    todo.append(obj.__name__)
                else:
                    exported.setdefault(id(obj), (obj, []))[1].append(module_name)
    homes = []
    for obj, modules in exported.values():
        defined_in = getattr(obj, "__module__", None) or ""
        home = max(modules, key=lambda m: (_shared_prefix(m, defined_in), -modules.index(m)))
        homes.append(f"{home}.{next(n for n in public[home] if getattr(importlib.import_module(home), n) is obj)}")
    return public, sorted(homes)


_public, _homes = _api_index()
# read by docs/_templates/autosummary/*.rst
autosummary_context = {"public": _public, "homes": _homes}

# ------------------------------------------------------------------------------------- examples
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "write_computation_times": False,
}

# --------------------------------------------------- pages written alongside this documentation
# docs/guarantees.md is listed in the "Design" toctree only while it exists.
OPTIONAL_PAGES = ["guarantees"]


def _optional_toctree_entries(app, docname, source):
    if docname != root_doc:
        return
    present = [name for name in OPTIONAL_PAGES if (DOCS / f"{name}.md").is_file()]
    source[0] = source[0].replace("<!-- optional design pages -->", "\n".join(present))


def _reread_index(app, env, added, changed, removed):
    # the index's toctree depends on which optional pages exist: read it again on every build
    return [root_doc]


def setup(app):
    app.connect("source-read", _optional_toctree_entries)
    app.connect("env-get-outdated", _reread_index)
