"""Shared fixtures: backends (CuPy variants skip cleanly without a GPU) and seeded generators.

``--array-kernels`` (or ``GCRFLINALG_ARRAY_KERNELS=1``) runs the session with every kernel on its
array-expression branch, the code CuPy runs, on NumPy input too (see ``solvers.backend``).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# tests import the shared checks module as a sibling
sys.path.insert(0, os.path.dirname(__file__))

from gcrflinalg.backend import cupy_available  # noqa: E402
from solvers.backend import ARRAY_KERNELS_ENV, array_kernels_on, set_array_kernels  # noqa: E402

try:  # Hypothesis profiles of tests/test_properties.py: HYPOTHESIS_PROFILE=ci (default) or long
    from hypothesis import HealthCheck, settings

    _SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    # ci: a fixed set of examples (reproducible CI runs); long: a fresh random exploration
    settings.register_profile("ci", max_examples=12, deadline=None, suppress_health_check=_SLOW, derandomize=True)
    settings.register_profile("long", max_examples=400, deadline=None, suppress_health_check=_SLOW)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass


def pytest_addoption(parser):
    parser.addoption(
        "--array-kernels", action="store_true", default=False,
        help="run every kernel's array-expression branch (the code CuPy runs) on NumPy input too, "
             f"as {ARRAY_KERNELS_ENV}=1 does",
    )


def pytest_configure(config):
    if config.getoption("--array-kernels"):
        set_array_kernels(True)
    try:  # a bad GCRFLINALG_ARRAY_KERNELS fails here, before any test
        array_kernels_on()
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None


def pytest_unconfigure(config):
    if config.getoption("--array-kernels"):
        set_array_kernels(None)


def pytest_report_header(config):
    if array_kernels_on():
        return ("kernels: array-expression branches on NumPy too "
                f"(--array-kernels or {ARRAY_KERNELS_ENV}=1)")
    return None


BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("cupy", id="cupy",
                 marks=pytest.mark.skipif(not cupy_available(), reason="CuPy with a CUDA GPU is not available")),
]


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array namespace under test: numpy always, cupy when a GPU is present."""
    if request.param == "numpy":
        return np
    import cupy
    return cupy


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


@pytest.fixture(params=["compiled", "array"])
def branch(request, monkeypatch):
    """CG's two code paths on NumPy: the fused compiled updates, and the array expressions that
    CuPy (or a machine without Numba) runs."""
    if request.param == "array":
        monkeypatch.setattr("solvers._cg._numba", None)

        def compiled(*args):
            raise AssertionError("the array branch ran a compiled update")

        for name in ("_step_nb", "_direction_nb", "_curvature_nb"):
            monkeypatch.setattr(f"solvers._cg.{name}", compiled)
    return request.param
