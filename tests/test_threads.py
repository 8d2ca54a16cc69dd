"""The thread policy of the compiled kernels (gcrflinalg.threads): public setter, context manager,
environment variable, framework cap; results do not depend on the thread count."""
from __future__ import annotations

import numba
import numpy as np
import pytest

import gcrflinalg
from gcrflinalg import threads


@pytest.fixture(autouse=True)
def _automatic(monkeypatch):
    monkeypatch.delenv(threads.ENV_VARIABLE, raising=False)
    gcrflinalg.set_num_threads(None)
    yield
    gcrflinalg.set_num_threads(None)


def test_public_names():
    for name in ("get_num_threads", "set_num_threads", "num_threads"):
        assert name in gcrflinalg.__all__
        assert getattr(gcrflinalg, name) is getattr(threads, name)


def test_automatic_count_is_numbas():
    assert gcrflinalg.get_num_threads() == numba.get_num_threads()


def test_set_num_threads_sets_and_restores():
    before = gcrflinalg.get_num_threads()
    gcrflinalg.set_num_threads(1)
    assert gcrflinalg.get_num_threads() == 1
    gcrflinalg.set_num_threads(10_000)  # lowered to Numba's pool size
    assert gcrflinalg.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    gcrflinalg.set_num_threads(None)
    assert gcrflinalg.get_num_threads() == before


def test_context_manager_restores_even_on_error():
    gcrflinalg.set_num_threads(1)
    with gcrflinalg.num_threads(None):
        assert gcrflinalg.get_num_threads() == numba.get_num_threads()
    assert gcrflinalg.get_num_threads() == 1
    gcrflinalg.set_num_threads(None)
    before = gcrflinalg.get_num_threads()
    with pytest.raises(RuntimeError):
        with gcrflinalg.num_threads(1):
            assert gcrflinalg.get_num_threads() == 1
            raise RuntimeError
    assert gcrflinalg.get_num_threads() == before


def test_environment_variable_and_explicit_setting(monkeypatch):
    monkeypatch.setenv(threads.ENV_VARIABLE, "1")
    assert gcrflinalg.get_num_threads() == 1
    monkeypatch.setenv(threads.ENV_VARIABLE, "not a number")
    assert gcrflinalg.get_num_threads() == numba.get_num_threads()


def test_follow_caps_only_the_automatic_count():
    with threads.follow(1):
        assert gcrflinalg.get_num_threads() == 1
        with gcrflinalg.num_threads(numba.config.NUMBA_NUM_THREADS):
            assert gcrflinalg.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    assert gcrflinalg.get_num_threads() == numba.get_num_threads()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_invalid_counts(bad):
    with pytest.raises((TypeError, ValueError)):
        gcrflinalg.set_num_threads(bad)


def test_parallel_kernel_restores_numbas_settings():
    n, chunk = numba.get_num_threads(), numba.get_parallel_chunksize()
    with threads.parallel_kernel(1) as used:
        assert used == 1
        assert numba.get_num_threads() == 1
        assert numba.get_parallel_chunksize() == threads.CHUNK_SIZE
    assert (numba.get_num_threads(), numba.get_parallel_chunksize()) == (n, chunk)


def test_results_do_not_depend_on_the_thread_count():
    from gcrflinalg.forms.grid import kernels

    rng = np.random.default_rng(0)
    L, H, W = 8, 96, 96  # large enough for the parallel product (PARALLEL_MIN_ENTRIES)
    pw = rng.standard_normal((2, L, L, H, W)) * 0.01
    assert pw.size >= kernels.PARALLEL_MIN_ENTRIES
    op = gcrflinalg.GridGCRF(pw, 4.0)
    b = rng.standard_normal((L, H, W))
    outs = []
    for n in (1, numba.config.NUMBA_NUM_THREADS):
        with gcrflinalg.num_threads(n):
            outs.append((op.matvec(b), gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-10).x))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-8, atol=1e-10)
