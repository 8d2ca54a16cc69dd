"""gcrflinalg.sample: 20,000 samples of every form family against the dense Gaussian."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import gcrflinalg
from gaussian_cases import FAMILIES, case_by_id, indefinite
from gcrflinalg import NotPositiveDefiniteError

S = 20_000


SPLITTING = [case_by_id("grid-n8-L3-4x4"), case_by_id("grid_potts-n4-L3-4x5"),
             case_by_id("multires-2lvl-general-potts")]
LAW_CASES = [pytest.param(c, "auto", id=c.id) for c in FAMILIES] + \
    [pytest.param(c, "perturb_and_map", id=f"{c.id}-splitting") for c in SPLITTING]


@pytest.mark.parametrize("case, method", LAW_CASES)
def test_samples_have_the_gaussian_law(case, method):
    """Whitened samples ``w = L^T (x - mu)`` (``M = L L^T``) are standard normal: a KS test on
    all entries, the mean within ``5/sqrt(S)``, the covariance within ``6 sqrt(2/S)`` of ``I``."""
    rng = np.random.default_rng(13)
    op, params = case.make(rng)  # lam = 1 + the Gershgorin radius: the splitting exists
    M = case.dense(params)
    b = rng.standard_normal(op.vector_shape)
    res = gcrflinalg.sample(op, b, S, rng=21, method=method)
    expected = {"lowrank": "perturb_and_map", "lowrank_potts": "perturb_and_map", "video": "exact"}
    assert res.method == (expected.get(case.form, "lanczos") if method == "auto" else method)
    assert res.samples.shape == (S,) + b.shape and res.samples.dtype == np.float64
    mu = np.linalg.solve(M, b.ravel())
    np.testing.assert_allclose(res.mean.ravel(), mu, rtol=1e-8, atol=1e-10)
    if res.method == "lanczos" or case.form in ("grid", "grid_potts", "multires"):
        assert 0 <= res.error <= 1e-7
    else:
        assert res.error == 0.0
    L = np.linalg.cholesky(M)
    w = (res.samples.reshape(S, -1) - mu) @ L  # rows (L^T (x - mu))^T
    assert stats.kstest(w.ravel(), "norm").pvalue > 1e-3
    assert np.abs(w.mean(axis=0)).max() < 5 / np.sqrt(S)
    cov = w.T @ w / S
    assert np.abs(cov - np.eye(len(mu))).max() < 6 * np.sqrt(2 / S)


@pytest.mark.parametrize("case_id", ["grid-n4-L2-1x7", "lowrank-D2-L3-1x6", "lowrank_potts-D5-L2-1x5",
                                     "video-12-V4-L2-2x2"])
def test_batched_flat_layout_and_seed(case_id):
    case = case_by_id(case_id)
    rng = np.random.default_rng(5)
    op, params = case.make(rng, batch_shape=(2,))
    b = rng.standard_normal((2, op.size))
    res = gcrflinalg.sample(op, b, 4000, rng=3)
    assert res.samples.shape == (4000, 2, op.size)
    again = gcrflinalg.sample(op, b, 4000, rng=3)
    np.testing.assert_array_equal(res.samples, again.samples)
    M = case.dense(params)
    for i in range(2):
        x = res.samples[:, i]
        mu = np.linalg.solve(M[i], b[i])
        assert np.abs(x.mean(axis=0) - mu).max() < 5 * np.sqrt(np.diag(np.linalg.inv(M[i])).max() / 4000)
        assert np.abs(np.cov(x.T) - np.linalg.inv(M[i])).max() < 0.15 * np.abs(np.linalg.inv(M[i])).max()


def test_float32_operator():
    case = case_by_id("lowrank-D3-L2-3x5")
    op, params = case.make(np.random.default_rng(4), dtype=np.float32)
    res = gcrflinalg.sample(op, np.ones(op.vector_shape, np.float32), 10, rng=0)
    assert res.samples.dtype == np.float32 and np.all(np.isfinite(res.samples))


def test_lam_identity():
    op = gcrflinalg.GridGCRF(np.zeros((2, 1, 1, 3, 4)), 4.0)
    res = gcrflinalg.sample(op, np.zeros((1, 3, 4)), 5000, rng=1)
    assert res.info["iterations"] == 1
    np.testing.assert_allclose(res.samples.std(), 0.5, rtol=0.03)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("3", TypeError),
                                        (True, TypeError), (None, TypeError)])
def test_bad_num_samples(bad, error):
    op, _ = case_by_id("lowrank-D3-L2-3x5").make(np.random.default_rng(0))
    with pytest.raises(error, match="num_samples"):
        gcrflinalg.sample(op, np.zeros(op.vector_shape), bad)


def test_splitting_needs_the_gershgorin_certificate():
    case = case_by_id("grid-n4-L1-4x5")
    op, params = case.make(np.random.default_rng(0))
    weak = case.rebuild(dict(params, lam=0.5 * params["lam"]))  # below the Gershgorin radius
    b = np.zeros(op.vector_shape)
    with pytest.raises(ValueError, match="Gershgorin"):
        gcrflinalg.sample(weak, b, 2, method="perturb_and_map")


def test_bad_method_and_shape():
    op, _ = case_by_id("grid-n4-L1-4x5").make(np.random.default_rng(0))
    b = np.zeros(op.vector_shape)
    with pytest.raises(ValueError, match="perturb_and_map"):
        gcrflinalg.sample(gcrflinalg.VideoGCRF(np.ones((2, 1, 1, 2, 2)), np.zeros((2, 1, 1, 2, 2)), 9.0),
                          np.zeros((2, 1, 2, 2)), 2, method="perturb_and_map")
    with pytest.raises(ValueError, match="method"):
        gcrflinalg.sample(op, b, 2, method="gibbs")
    with pytest.raises(ValueError):
        gcrflinalg.sample(op, np.zeros((3,) + op.vector_shape), 2)
    b_in = np.ones(op.vector_shape)
    gcrflinalg.sample(op, b_in, 2, rng=0)
    assert np.all(b_in == 1)  # the caller's array is never modified


@pytest.mark.parametrize("case_id", ["grid-n4-L1-4x5", "multires-2lvl-general-potts", "video-fc-V3-L2-2x3",
                                     "lowrank_potts-D3-L3-3x4"])
def test_indefinite_raises(case_id):
    op, _ = indefinite(case_by_id(case_id), np.random.default_rng(1))
    with pytest.raises(NotPositiveDefiniteError):
        gcrflinalg.sample(op, np.zeros(op.vector_shape), 200, rng=0)
