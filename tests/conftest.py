"""Shared fixtures: backends (CuPy variants skip cleanly without a GPU) and seeded generators."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# tests import the shared checks module as a sibling
sys.path.insert(0, os.path.dirname(__file__))

from gcrflinalg.backend import cupy_available  # noqa: E402

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
