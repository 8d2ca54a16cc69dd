"""The compiled Golub–Welsch nodes (implicit QL on the first row) against numpy.linalg.eigh on
tridiagonal matrices: random, clustered, graded, with decoupled blocks, and of size 1 and 2."""
from __future__ import annotations

import numpy as np
import pytest

from gcrflinalg.gaussian._kernels import gauss_nodes


def _dense(a, b):
    k = a.size
    T = np.diag(a)
    if k > 1:
        T += np.diag(b, 1) + np.diag(b, -1)
    return T


def _cases():
    rng = np.random.default_rng(0)
    cases = []
    for k in (1, 2, 3, 7, 30, 120):
        cases.append((f"random-{k}", rng.uniform(0.5, 3.0, k), rng.uniform(-1, 1, max(k - 1, 0))))
    k = 30  # Lanczos-like: nodes cluster at the ends of a spectrum, tiny off-diagonals at the end
    cases.append(("converged", np.linspace(1, 4, k), 1e-9 * rng.standard_normal(k - 1)))
    cases.append(("graded", 10.0 ** rng.uniform(-3, 3, k), 10.0 ** rng.uniform(-3, 1, k - 1)))
    cases.append(("equal-diagonal", np.full(k, 2.0), np.full(k - 1, 0.5)))
    a = rng.uniform(1, 2, k)
    b = rng.uniform(-1, 1, k - 1)
    b[11:] = 0.0  # a probe stopped after 12 steps: the rest is a decoupled identity block
    a[12:] = 1.0
    cases.append(("stopped", a, b))
    b2 = rng.uniform(-1, 1, k - 1)
    b2[5] = 0.0  # an interior split
    cases.append(("split", rng.uniform(1, 2, k), b2))
    return cases


@pytest.mark.parametrize("name, a, b", _cases(), ids=[c[0] for c in _cases()])
def test_nodes_and_weights_match_eigh(name, a, b):
    theta, s0 = gauss_nodes(a[None], b[None])
    w, V = np.linalg.eigh(_dense(a, b))
    order = np.argsort(theta[0], kind="stable")
    scale = np.abs(w).max()
    np.testing.assert_allclose(theta[0][order], w, rtol=0, atol=1e-13 * scale)
    # the Gauss rule of several functions: the weights s0^2 summed against the nodes
    for f in (np.exp, lambda x: x ** 2, lambda x: 1.0 / (x + 10.0)):
        fs = lambda x: f(x / scale)  # noqa: E731 - scaled to the spectrum
        np.testing.assert_allclose((s0[0] ** 2 * fs(theta[0])).sum(), (V[0] ** 2 * fs(w)).sum(), rtol=1e-12)
    np.testing.assert_allclose((s0[0] ** 2).sum(), 1.0, rtol=1e-13)
    if name == "stopped":  # the decoupled block has exactly zero first components
        decoupled = np.abs(s0[0]) == 0
        assert decoupled.sum() == 18


def test_batch_of_probes_and_log_rule():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 2.0, (32, 30))
    b = rng.uniform(-0.3, 0.3, (32, 29))
    theta, s0 = gauss_nodes(a, b)
    for p in range(32):
        w, V = np.linalg.eigh(_dense(a[p], b[p]))
        np.testing.assert_allclose((s0[p] ** 2 * np.log(theta[p])).sum(), (V[0] ** 2 * np.log(w)).sum(),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name, a, b", _cases(), ids=[c[0] for c in _cases()])
def test_last_row_components(name, a, b):
    """``row=-1``: the last components (Lanczos's residual bounds) against eigh's last row."""
    theta, last = gauss_nodes(a[None], b[None], row=-1)
    w, V = np.linalg.eigh(_dense(a, b))
    scale = np.abs(w).max()
    np.testing.assert_allclose(np.sort(theta[0]), w, rtol=0, atol=1e-13 * scale)
    for f in (np.exp, lambda x: x ** 2):
        np.testing.assert_allclose((last[0] ** 2 * f(theta[0] / scale)).sum(), (V[-1] ** 2 * f(w / scale)).sum(),
                                   rtol=1e-12)
    # the extreme pairs: |S[-1, i]| of the smallest and largest eigenvalue (simple ones here)
    if name.startswith("random"):
        i, j = np.argmin(theta[0]), np.argmax(theta[0])
        np.testing.assert_allclose(abs(last[0][i]), abs(V[-1, 0]), rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(abs(last[0][j]), abs(V[-1, -1]), rtol=1e-9, atol=1e-14)


def test_fallbacks_when_the_ql_sweep_does_not_converge(monkeypatch):
    """Were the QL sweep to give up (None), SLQ's Gauss rule and Lanczos's Ritz checks fall back to
    LAPACK and give the same results to rounding."""
    import sys

    import gcrflinalg
    import gcrflinalg.gaussian.lanczos
    from gaussian_cases import case_by_id
    from gcrflinalg.gaussian import _kernels
    from gcrflinalg.problems.spectrum import _ritz_extremes

    op, params = case_by_id("grid-n4-L3-3x5").make(np.random.default_rng(1))
    ref = gcrflinalg.logdet(op, method="slq", num_probes=8, degree=12, rng=2)
    rng = np.random.default_rng(5)
    a, b = rng.uniform(1, 3, 25), rng.uniform(-1, 1, 24)
    (lo, s_lo), (hi, s_hi) = _ritz_extremes(list(a), list(b))
    w, V = np.linalg.eigh(_dense(a, b))
    np.testing.assert_allclose([lo, hi], [w[0], w[-1]], rtol=1e-13)
    np.testing.assert_allclose([abs(s_lo), abs(s_hi)], [abs(V[-1, 0]), abs(V[-1, -1])], rtol=1e-7, atol=1e-14)
    monkeypatch.setattr(sys.modules["gcrflinalg.gaussian.lanczos"], "gauss_nodes", lambda *args, **kw: None)
    monkeypatch.setattr(_kernels, "gauss_nodes", lambda *args, **kw: None)
    fallback = gcrflinalg.logdet(op, method="slq", num_probes=8, degree=12, rng=2)
    np.testing.assert_allclose(fallback.value, ref.value, rtol=1e-12)
    np.testing.assert_allclose(fallback.stderr, ref.stderr, rtol=1e-8)
    (lo2, s_lo2), (hi2, s_hi2) = _ritz_extremes(list(a), list(b))
    np.testing.assert_allclose([lo2, hi2], [lo, hi], rtol=1e-13)
    np.testing.assert_allclose([abs(s_lo2), abs(s_hi2)], [abs(s_lo), abs(s_hi)], rtol=1e-7, atol=1e-14)
