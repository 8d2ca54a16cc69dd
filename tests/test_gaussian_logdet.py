"""gcrflinalg.logdet: exact against numpy.linalg.slogdet on every form, SLQ against its standard error."""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from gaussian_cases import ALL, FAMILIES, case_by_id, indefinite, reference_signs
from gcrflinalg import NotPositiveDefiniteError


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.id)
@pytest.mark.parametrize("batch", [(), (2,)], ids=["single", "batch2"])
def test_exact_matches_slogdet(case, batch):
    op, params = case.make(np.random.default_rng(7), batch_shape=batch)
    sign, ref = np.linalg.slogdet(case.dense(params))
    assert np.all(sign > 0)
    res = gcrflinalg.logdet(op, method="exact")
    assert res.method == "exact"
    assert res.value.shape == batch and res.stderr.shape == batch
    np.testing.assert_allclose(res.value, ref, rtol=1e-11, atol=1e-11)
    assert np.all(res.stderr == 0)
    assert gcrflinalg.logdet(op).method == "exact"  # auto on small systems


@pytest.mark.parametrize("case", FAMILIES, ids=lambda c: c.id)
def test_exact_float32(case):
    op, params = case.make(np.random.default_rng(3), dtype=np.float32)
    ref = np.linalg.slogdet(case.dense(params))[1]
    np.testing.assert_allclose(gcrflinalg.logdet(op, method="exact").value, ref, rtol=2e-5)


@pytest.mark.parametrize("lam", [0.01, 1.0, 100.0])
def test_exact_over_decades_of_lam(lam):
    rng = np.random.default_rng(11)
    emb = rng.standard_normal((4, 2, 3, 5))
    op = gcrflinalg.LowRankGCRF(emb, lam)
    ref = np.linalg.slogdet(op.to_dense())[1]
    np.testing.assert_allclose(gcrflinalg.logdet(op).value, ref, rtol=1e-12)


@pytest.mark.parametrize("case_id", ["grid-n8-L3-4x4", "lowrank-D4-L3-5x7", "video-12-V4-L2-2x2",
                                     "grid_potts-n4-L3-4x5"])
def test_slq_error_within_standard_error(case_id):
    """Over 20 seeded runs the true error lies within 2 standard errors in most runs (a normal
    estimate would do so in 95%), and never beyond 5."""
    case = case_by_id(case_id)
    op, params = case.make(np.random.default_rng(5))
    ref = np.linalg.slogdet(case.dense(params))[1]
    z = []
    for seed in range(20):
        res = gcrflinalg.logdet(op, method="slq", num_probes=20, degree=25, rng=seed)
        assert res.method == "slq" and res.stderr > 0
        assert res.info["matvecs"] <= 25  # all probes share each batched product
        z.append((res.value - ref) / res.stderr)
    z = np.abs(np.array(z))
    assert np.mean(z <= 2.0) >= 0.8, z
    assert z.max() < 5.0, z


def test_slq_batched_systems_and_reproducible():
    case = case_by_id("grid-n4-L3-3x5")
    op, params = case.make(np.random.default_rng(2), batch_shape=(3,))
    ref = np.linalg.slogdet(case.dense(params))[1]
    a = gcrflinalg.logdet(op, method="slq", num_probes=40, degree=20, rng=1)
    b = gcrflinalg.logdet(op, method="slq", num_probes=40, degree=20, rng=1)
    assert a.value.shape == (3,) and a.stderr.shape == (3,)
    np.testing.assert_array_equal(a.value, b.value)
    assert np.all(np.abs(a.value - ref) <= 5 * a.stderr)


@pytest.mark.parametrize("make, products", [
    (lambda: gcrflinalg.LowRankGCRF(np.zeros((2, 2, 3, 4)), 2.5), 1),
    # the general grid form runs each step's update in one pass with the next step's product, so
    # that product is done before the probes are seen to stop
    (lambda: gcrflinalg.GridGCRF(np.zeros((2, 2, 2, 3, 4)), 2.5), 2),
    (lambda: gcrflinalg.LowRankPottsGCRF(np.zeros((2, 3, 4)), 2.5, 2), 1),
], ids=["lowrank", "grid", "lowrank_potts"])
def test_slq_invariant_subspace_is_exact(make, products):
    """M = lam I: every probe's Krylov space is invariant after one step; the contribution is
    exact (no log 0, no NaN) and the standard error vanishes."""
    op = make()
    res = gcrflinalg.logdet(op, method="slq", num_probes=8, degree=30, rng=0)
    assert np.isfinite(res.value)
    np.testing.assert_allclose(res.value, 24 * np.log(2.5), rtol=1e-13)
    assert res.stderr <= 1e-12 * abs(res.value)
    from gcrflinalg.gaussian._common import block_lanczos_step

    assert res.info["matvecs"] == (products if block_lanczos_step(op) is not None else 1)


def test_slq_early_stop_with_two_eigenvalues():
    """A rank-one term: M has two distinct eigenvalues, Lanczos (reorthogonalised) stops after two
    steps, and each probe's quadrature is exact."""
    rng = np.random.default_rng(4)
    op = gcrflinalg.LowRankGCRF(rng.standard_normal((1, 2, 3, 4)), 0.7)
    M = op.to_dense()
    res = gcrflinalg.logdet(op, method="slq", num_probes=6, degree=30, rng=3, reorthogonalize=True)
    assert res.info["matvecs"] == 2 and np.isfinite(res.value)
    # per probe, z^T log(M) z exactly: compare with the dense quadratic forms of the same probes
    z = reference_signs(3, (6, 24))
    w, V = np.linalg.eigh(M)
    logm = (V * np.log(w)) @ V.T
    np.testing.assert_allclose(res.value, np.einsum("ki,ij,kj->k", z, logm, z).mean(), rtol=1e-10)


@pytest.mark.parametrize("case_id", ["grid-n4-L1-4x5", "multires-2lvl-general-potts", "video-fc-V3-L2-2x3",
                                     "lowrank_potts-D3-L3-3x4"])
def test_indefinite_raises(case_id):
    op, _ = indefinite(case_by_id(case_id), np.random.default_rng(1))
    with pytest.raises(NotPositiveDefiniteError):
        gcrflinalg.logdet(op, method="exact")
    if case_id.startswith(("grid", "multires")):
        with pytest.raises(NotPositiveDefiniteError):
            gcrflinalg.logdet(op, method="slq", num_probes=10, degree=30, rng=0)


def test_bad_input():
    op, _ = case_by_id("grid-n4-L1-4x5").make(np.random.default_rng(0))
    with pytest.raises(ValueError, match="limit 10"):
        gcrflinalg.logdet(op, method="exact", max_size=10)
    with pytest.raises(ValueError, match="method"):
        gcrflinalg.logdet(op, method="cholesky")
    with pytest.raises(ValueError, match="num_probes"):
        gcrflinalg.logdet(op, method="slq", num_probes=1)
    with pytest.raises(TypeError, match="num_probes"):
        gcrflinalg.logdet(op, method="slq", num_probes=2.5)
    with pytest.raises(TypeError, match="GCRFOperator"):
        gcrflinalg.logdet(np.eye(3))


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.id)
@pytest.mark.parametrize("batch", [(), (2,)], ids=["single", "batch2"])
def test_inv_quad_matches_dense_solve(case, batch):
    """``inv_quad_rhs=b``: ``b^T M^-1 b`` (Woodbury in D-space on the low-rank form, a solve on the
    others) against a dense solve, per system; the log-determinant is unchanged by asking for it."""
    rng = np.random.default_rng(13)
    op, params = case.make(rng, batch_shape=batch)
    dense = case.dense(params)
    b = rng.standard_normal(op.batch_shape + op.vector_shape)
    bflat = b.reshape(batch + (op.size,))
    keep = b.copy()
    ref = np.einsum("...i,...i->...", bflat, np.linalg.solve(dense, bflat[..., None])[..., 0])
    res = gcrflinalg.logdet(op, method="exact", inv_quad_rhs=b)
    np.testing.assert_array_equal(b, keep)  # the caller's array is not written
    assert res.inv_quad.shape == batch
    np.testing.assert_allclose(res.inv_quad, ref, rtol=1e-7)
    np.testing.assert_allclose(res.value, np.linalg.slogdet(dense)[1], rtol=1e-11, atol=1e-11)
    flat = gcrflinalg.logdet(op, method="exact", inv_quad_rhs=bflat)  # the flat layout too
    np.testing.assert_allclose(flat.inv_quad, res.inv_quad, rtol=1e-12)
    assert gcrflinalg.logdet(op, method="exact").inv_quad is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lam", [0.01, 1.0, 100.0])
def test_lowrank_inv_quad_and_cholesky_logdet_over_lam(lam, dtype):
    """The low-rank path (capacitance Cholesky for ``log det``, ``(b^T b - c^T F c) / lam`` for the
    quadratic term) over decades of ``lam``, batched, float32 and float64."""
    rng = np.random.default_rng(17)
    emb = rng.standard_normal((3, 6, 2, 3, 4)).astype(dtype)
    b = rng.standard_normal((3, 2, 3, 4)).astype(dtype)
    op = gcrflinalg.LowRankGCRF(emb, lam)
    dense = op.to_dense().astype(np.float64)
    bflat = b.reshape(3, -1).astype(np.float64)
    ref_q = np.einsum("ki,ki->k", bflat, np.linalg.solve(dense, bflat[..., None])[..., 0])
    res = gcrflinalg.logdet(op, inv_quad_rhs=b)
    tol = 1e-12 if dtype == np.float64 else 5e-5
    np.testing.assert_allclose(res.inv_quad, ref_q, rtol=tol * (1 + 1 / lam))
    np.testing.assert_allclose(res.value, np.linalg.slogdet(dense)[1], rtol=tol)


def test_inv_quad_bad_shape():
    op, _ = case_by_id("lowrank-D4-L3-5x7").make(np.random.default_rng(0))
    with pytest.raises(ValueError, match="inv_quad_rhs"):
        gcrflinalg.logdet(op, inv_quad_rhs=np.ones((2,) + op.vector_shape))
    with pytest.raises(ValueError, match="inv_quad_rhs"):
        gcrflinalg.logdet(op, inv_quad_rhs=np.ones(3))
