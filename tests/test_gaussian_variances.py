"""gcrflinalg.marginal_variances: exact against diag(inv(M)), the stochastic estimator against its
error bars."""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from gaussian_cases import ALL, case_by_id, indefinite
from gcrflinalg import NotPositiveDefiniteError


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.id)
def test_exact_matches_inverse_diagonal(case):
    op, params = case.make(np.random.default_rng(8), batch_shape=(2,))
    ref = np.diagonal(np.linalg.inv(case.dense(params)), axis1=-2, axis2=-1)
    res = gcrflinalg.marginal_variances(op, method="exact")
    assert res.method == "exact"
    assert res.values.shape == (2,) + op.vector_shape
    np.testing.assert_allclose(res.values.reshape(ref.shape), ref, rtol=1e-11)
    assert np.all(res.stderr == 0)
    assert gcrflinalg.marginal_variances(op).method == "exact"


@pytest.mark.parametrize("lam", [0.01, 1.0, 100.0])
def test_lowrank_over_decades_of_lam(lam):
    rng = np.random.default_rng(12)
    op = gcrflinalg.LowRankGCRF(0.5 * rng.standard_normal((3, 2, 3, 4)), lam)
    ref = np.diag(np.linalg.inv(op.to_dense()))
    np.testing.assert_allclose(gcrflinalg.marginal_variances(op).values.ravel(), ref, rtol=1e-9)


def test_potts_one_label_is_lam_identity():
    op = gcrflinalg.LowRankPottsGCRF(np.ones((2, 3, 4)), 0.5, 1)
    np.testing.assert_allclose(gcrflinalg.marginal_variances(op).values, 2.0)


@pytest.mark.parametrize("case_id", ["grid-n8-L3-4x4", "grid_potts-n8-L3-3x5", "multires-3lvl",
                                     "lowrank-D4-L3-5x7", "video-fc-V3-L2-2x3"])
@pytest.mark.parametrize("probing", ["auto", "rademacher"])
def test_stochastic_within_error_bars(case_id, probing):
    """Per entry the true variance lies within 2 standard errors for most entries (about 95% for a
    normal estimate: at least 90% over 8 seeds, 75% in each) and within 6 for all; averaged over
    entries the estimate is unbiased (coloured probes on the grid forms, plain elsewhere)."""
    case = case_by_id(case_id)
    op, params = case.make(np.random.default_rng(9))
    ref = np.diag(np.linalg.inv(case.dense(params)))
    covered, worst, rel = [], 0.0, 0.0
    for seed in range(8):
        res = gcrflinalg.marginal_variances(op, method="stochastic", num_probes=100, rng=seed, probing=probing)
        assert res.method == "stochastic"
        assert res.info["probe_classes"] == (1 if probing == "rademacher" or not case_id.startswith("grid") else 4)
        values, stderr = res.values.ravel(), res.stderr.ravel()
        z = np.abs(values - ref) / stderr
        covered.append(np.mean(z <= 2.0))
        worst = max(worst, z.max())
        rel = max(rel, np.abs(values - ref).max() / ref.max())
    assert np.mean(covered) >= 0.9 and min(covered) >= 0.75, covered
    assert worst < 6.0
    # the relative error shrinks like 1/sqrt(K): the off-diagonal decay keeps it small
    assert rel < 0.2


def test_coloured_variances_beat_plain_at_the_same_solves():
    """Coloured probes leave out the neighbouring pixels' (M^{-1})_ij: at the same 48 probes (one
    batched solve) the median relative error over entries and seeds drops at least 2x."""
    case = case_by_id("grid-n4-L3-3x5")
    op, params = case.make(np.random.default_rng(9))
    ref = np.diag(np.linalg.inv(case.dense(params)))
    err = {}
    for probing in ("auto", "rademacher"):
        runs = [gcrflinalg.marginal_variances(op, method="stochastic", num_probes=48, rng=s, probing=probing)
                for s in range(10)]
        err[probing] = np.median([np.abs(r.values.ravel() - ref) / ref for r in runs])
    assert err["auto"] < 0.5 * err["rademacher"], err


def test_stochastic_seeds_unbiased():
    case = case_by_id("grid-n4-L1-4x5")
    op, params = case.make(np.random.default_rng(1))
    ref = np.diag(np.linalg.inv(case.dense(params)))
    runs = [gcrflinalg.marginal_variances(op, method="stochastic", num_probes=16, rng=s, solve_method="direct")
            for s in range(40)]
    mean = np.mean([r.values.ravel() for r in runs], axis=0)
    se = np.sqrt(np.mean([r.stderr.ravel() ** 2 for r in runs], axis=0) / len(runs))
    assert np.all(np.abs(mean - ref) <= 5 * se)


def test_size_limit_and_bad_input():
    op, _ = case_by_id("grid-n4-L1-4x5").make(np.random.default_rng(0))
    with pytest.raises(ValueError, match="limit 5"):
        gcrflinalg.marginal_variances(op, method="exact", max_size=5)
    with pytest.raises(ValueError, match="method"):
        gcrflinalg.marginal_variances(op, method="probing")
    with pytest.raises(ValueError, match="num_probes"):
        gcrflinalg.marginal_variances(op, method="stochastic", num_probes=0)


@pytest.mark.parametrize("case_id", ["grid-n4-L1-4x5", "video-fc-V3-L2-2x3", "lowrank_potts-D3-L3-3x4"])
def test_indefinite_raises(case_id):
    op, _ = indefinite(case_by_id(case_id), np.random.default_rng(2))
    with pytest.raises(NotPositiveDefiniteError):
        gcrflinalg.marginal_variances(op, method="exact")
