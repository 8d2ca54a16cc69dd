"""Low-rank G-CRFs (docs/design.md 3.4, 3.5): operators, exact direct solves, gradients, PD certificate.

References are independent: dense matrices assembled below with explicit loops straight from the
docs/design.md formulas, ``numpy.linalg.solve``, and central finite differences.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import gcrflinalg
from gcrflinalg.forms.lowrank.woodbury import WoodburyFactor
from gcrflinalg.backend import to_host
from gcrflinalg.forms.lowrank import LowRankGCRF, LowRankPottsGCRF, direct_is_cheaper
from operator_cases import dense_lowrank_general as dense_general
from operator_cases import dense_lowrank_potts as dense_potts
from operator_checks import assert_not_mutated, fd_check_gradients
from solvers import NotPositiveDefiniteError

# ---------------------------------------------------------------------------------------------
# dense references (operator_cases: written from docs/design.md, index n = l*P + i*W + j) and helpers


def psi_norm2(psi):
    """``||psi||_2^2`` from the SVD of the ``D x P`` matrix (independent of the operator's eigh)."""
    psi = np.asarray(psi, dtype=np.float64)
    return np.linalg.norm(psi.reshape(psi.shape[:-2] + (-1,)), 2, axis=(-2, -1)) ** 2


def potts_lam(psi, margin=0.5):
    """A valid ``lam`` per system: ``||psi||_2^2 + margin``."""
    return psi_norm2(psi) + margin


# cases: (batch_shape, D, L, H, W)
CASES = [((), 3, 2, 2, 3), ((), 4, 3, 5, 7), ((2,), 2, 3, 3, 4), ((2, 1), 5, 2, 1, 5)]
CASE_IDS = ["2x3", "5x7", "batch2", "batch2x1"]


def make_general(rng, batch, d, n_labels, h, w):
    emb = rng.standard_normal(batch + (d, n_labels, h, w))
    lam = rng.uniform(0.5, 2.0, size=batch) if batch else 0.8
    return emb, lam


def make_potts(rng, batch, d, n_labels, h, w):
    psi = rng.standard_normal(batch + (d, h, w)) * 0.4
    lam = potts_lam(psi)
    return psi, (lam if batch else float(lam))


def _solve_dense(dense, b):
    return np.linalg.solve(dense, b[..., None])[..., 0]


# ---------------------------------------------------------------------------------------------
# dense agreement, symmetry, diagonal, dtypes and batching of the products:
# tests/test_operator_suite.py (cases of operator_cases.CASES)


def test_extra_rhs_axes_and_linear_operator(rng):
    emb, lam = make_general(rng, (2,), 3, 2, 3, 4)
    psi, lam_p = make_potts(rng, (2,), 3, 3, 3, 4)
    for op, dense in ((LowRankGCRF(emb, lam), dense_general(emb, lam)),
                      (LowRankPottsGCRF(psi, lam_p, 3), dense_potts(psi, lam_p, 3))):
        v = rng.standard_normal((4, 5) + op.batch_shape + (op.size,))
        ref = np.einsum("bij,...bj->...bi", dense, v)
        np.testing.assert_allclose(op.matvec(v), ref, rtol=1e-12, atol=1e-12)
        x = gcrflinalg.solve(op, v, method="direct").x
        np.testing.assert_allclose(x, _solve_dense(dense, v), rtol=1e-10, atol=1e-12)
        lin = op.aslinearoperator((1,))
        np.testing.assert_allclose(lin.matvec(v[0, 0, 1]), dense[1] @ v[0, 0, 1], rtol=1e-12)
        np.testing.assert_allclose(lin @ v[0, :, 1].T, dense[1] @ v[0, :, 1].T, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# solves


@pytest.mark.parametrize("method", ["direct", "cg", "auto", "pcg"])
@pytest.mark.parametrize("case", CASES[1:3], ids=CASE_IDS[1:3])
def test_solves_match_numpy(case, method, rng, xp):
    batch, d, n_labels, h, w = case
    emb, lam = make_general(rng, batch, d, n_labels, h, w)
    psi, lam_p = make_potts(rng, batch, d, n_labels, h, w)
    opts = {} if method == "direct" else dict(rtol=1e-12, maxiter=10000)
    for op, dense in ((LowRankGCRF(xp.asarray(emb), lam), dense_general(emb, lam)),
                      (LowRankPottsGCRF(xp.asarray(psi), lam_p, n_labels), dense_potts(psi, lam_p, n_labels))):
        b = rng.standard_normal(batch + op.vector_shape)
        res = gcrflinalg.solve(op, xp.asarray(b), method=method, **opts)
        ref = _solve_dense(dense, b.reshape(batch + (op.size,))).reshape(b.shape)
        assert res.x.shape == b.shape
        np.testing.assert_allclose(to_host(res.x), ref, rtol=1e-9, atol=1e-10)
        assert np.all(res.converged) and np.all(res.info == 0)
        assert np.max(res.relative_residual) < 1e-10
        if method in ("direct", "auto"):  # tiny problems: auto factors at once
            assert res.method == "direct" and res.requested_method == method
            assert res.residual_norms.shape == (2,) + batch


@pytest.mark.parametrize("method", ["jacobi", "gauss_seidel"])
def test_stationary_solves(method, rng):
    # strongly diagonal systems, so that Jacobi converges too
    emb = rng.standard_normal((2, 2, 3, 3)) * 0.3
    psi = rng.standard_normal((2, 3, 3)) * 0.2
    lam = 3.0
    for op, dense in ((LowRankGCRF(emb, lam), dense_general(emb, lam)),
                      (LowRankPottsGCRF(psi, lam, 3), dense_potts(psi, lam, 3))):
        b = rng.standard_normal(op.size)
        res = gcrflinalg.solve(op, b, method=method, rtol=1e-11, maxiter=5000)
        np.testing.assert_allclose(res.x, np.linalg.solve(dense, b), rtol=1e-8, atol=1e-9)


def test_float32_direct_solve(rng):
    emb, lam = make_general(rng, (2,), 4, 3, 5, 7)
    psi, lam_p = make_potts(rng, (2,), 4, 3, 5, 7)
    for op, dense in ((LowRankGCRF(emb.astype(np.float32), lam), dense_general(emb.astype(np.float32), lam)),
                      (LowRankPottsGCRF(psi.astype(np.float32), lam_p, 3),
                       dense_potts(psi.astype(np.float32), lam_p, 3))):
        b = rng.standard_normal((2, op.size)).astype(np.float32)
        res = gcrflinalg.solve(op, b, method="direct")
        assert res.x.dtype == np.float32
        ref = _solve_dense(dense, b.astype(np.float64))
        err = np.linalg.norm(res.x - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert np.all(err < 1e-4), err


def test_factor_reused_by_adjoint_solve(rng):
    emb, lam = make_general(rng, (), 4, 3, 5, 7)
    psi, lam_p = make_potts(rng, (), 4, 3, 5, 7)
    for op in (LowRankGCRF(emb, lam), LowRankPottsGCRF(psi, lam_p, 3)):
        calls = []
        compute = op._compute_factor

        def counting():
            calls.append(1)
            return compute()

        op._compute_factor = counting
        b = rng.standard_normal(op.size)
        gcrflinalg.solve(op, b, method="direct")
        gcrflinalg.adjoint_solve(op, b, method="direct")
        gcrflinalg.solve(op, np.stack([b, b]), method="direct")
        assert len(calls) == 1


def test_refinement_and_options(rng):
    emb = rng.standard_normal((6, 2, 4, 4)) * 10.0
    op = LowRankGCRF(emb, 1e-3)  # cond(M) ~ 4e6
    b = rng.standard_normal(op.size)
    dense = dense_general(emb, 1e-3)
    lu_residual = np.linalg.norm(dense @ np.linalg.solve(dense, b) - b) / np.linalg.norm(b)
    plain = gcrflinalg.solve(op, b, method="direct")
    refined = gcrflinalg.solve(op, b, method="direct", refine=1)
    # one refinement step brings the residual to the level of a backward-stable dense LU solve
    assert refined.relative_residual <= 3 * lu_residual and refined.matvecs == 2
    assert plain.relative_residual < 1e-8
    unchecked = gcrflinalg.solve(op, b, method="direct", check_residual=False)
    np.testing.assert_array_equal(unchecked.x, plain.x)
    assert np.isnan(unchecked.final_residual_norm) and unchecked.converged and unchecked.matvecs == 0
    # iterative options are accepted and ignored by the exact solve; others are rejected
    gcrflinalg.solve(op, b, method="direct", rtol=1e-6, maxiter=10, x0=np.ones(op.size))
    with pytest.raises(TypeError, match="unexpected options"):
        gcrflinalg.solve(op, b, method="direct", tolerance=1e-3)


def test_auto_cost_model():
    common = dict(matvec_flops=4.0e6, max_cg_iterations=1000, n_rhs=1)
    assert direct_is_cheaper(factor_flops=1e8, factored=False, **common)
    assert not direct_is_cheaper(factor_flops=1e11, factored=False, **common)
    assert direct_is_cheaper(factor_flops=1e11, factored=True, **common)
    # CG cannot need more iterations than M has distinct eigenvalues
    assert not direct_is_cheaper(factor_flops=1e8, factored=False, matvec_flops=4.0e6,
                                 max_cg_iterations=3, n_rhs=1)


# ---------------------------------------------------------------------------------------------
# solver hooks


def _sor_sweep_dense(dense, x, b, omega):
    diag = np.diag(np.diag(dense))
    lower = np.tril(dense, -1)
    upper = np.triu(dense, 1)
    return scipy.linalg.solve_triangular(diag + omega * lower,
                                         omega * b - (omega * upper + (omega - 1.0) * diag) @ x, lower=True)


@pytest.mark.parametrize("omega", [1.0, 1.3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gauss_seidel_sweep_matches_dense(omega, dtype, rng):
    emb, lam = make_general(rng, (2,), 3, 2, 3, 4)
    psi, lam_p = make_potts(rng, (2,), 3, 3, 3, 4)
    for op, dense in ((LowRankGCRF(emb.astype(dtype), lam), dense_general(emb.astype(dtype), lam)),
                      (LowRankPottsGCRF(psi.astype(dtype), lam_p, 3), dense_potts(psi.astype(dtype), lam_p, 3))):
        x = rng.standard_normal((2, op.size)).astype(dtype)
        b = rng.standard_normal((2, op.size)).astype(dtype)
        out = op.gauss_seidel_sweep(x.copy(), b, omega)
        for i in range(2):
            ref = _sor_sweep_dense(dense[i], x[i].astype(np.float64), b[i].astype(np.float64), omega)
            t = 1e-4 if dtype == np.float32 else 1e-11
            np.testing.assert_allclose(out[i], ref, rtol=t, atol=t)


def test_block_jacobi_preconditioner(rng):
    emb, lam = make_general(rng, (2,), 3, 3, 2, 3)
    psi, lam_p = make_potts(rng, (2,), 3, 3, 2, 3)
    for op, dense in ((LowRankGCRF(emb, lam), dense_general(emb, lam)),
                      (LowRankPottsGCRF(psi, lam_p, 3), dense_potts(psi, lam_p, 3))):
        n_labels, p_count = 3, 6
        r = rng.standard_normal((4, 2, op.size))
        out = op.block_jacobi_preconditioner()(r)
        ref = np.empty_like(r)
        for s in range(2):
            for p in range(p_count):
                idx = np.arange(n_labels) * p_count + p
                block_inv = np.linalg.inv(dense[s][np.ix_(idx, idx)])
                ref[:, s, idx] = r[:, s, idx] @ block_inv.T
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# gradients


def test_general_gradients_fd(rng):
    emb = rng.standard_normal((2, 3, 2, 3, 4))
    lam = np.array([0.7, 1.3])
    b = rng.standard_normal((2, 2 * 3 * 4))
    fd_check_gradients(lambda ps, lm: LowRankGCRF(ps[0], lm), [emb], lam, b, method="direct", rng=rng)
    emb1 = rng.standard_normal((2, 3, 3, 2))
    b1 = rng.standard_normal((3, 3, 2))
    fd_check_gradients(lambda ps, lm: LowRankGCRF(ps[0], lm), [emb1], 0.9, b1, method="direct", rng=rng)


def test_potts_gradients_fd(rng):
    psi = rng.standard_normal((2, 3, 3, 4)) * 0.3
    lam = potts_lam(psi)
    b = rng.standard_normal((2, 3 * 12))
    fd_check_gradients(lambda ps, lm: LowRankPottsGCRF(ps[0], lm, 3), [psi], lam, b, method="direct", rng=rng)
    psi1 = rng.standard_normal((2, 2, 3)) * 0.3
    b1 = rng.standard_normal((4, 2, 3))
    fd_check_gradients(lambda ps, lm: LowRankPottsGCRF(ps[0], lm, 4), [psi1], float(potts_lam(psi1)), b1,
                       method="direct", rng=rng)


def test_gradients_with_cg_equal_direct(rng):
    psi = rng.standard_normal((2, 3, 3)) * 0.3
    op = LowRankPottsGCRF(psi, float(potts_lam(psi)), 3)
    b, c = rng.standard_normal((2, op.size))
    grads = []
    for method, opts in (("direct", {}), ("cg", dict(rtol=1e-13, maxiter=1000))):
        x = gcrflinalg.solve(op, b, method=method, **opts).x
        g = gcrflinalg.adjoint_solve(op, c, method=method, **opts).x
        grads.append(op.parameter_gradients(x, g))
    for key in ("embeddings", "lam"):
        np.testing.assert_allclose(grads[0][key], grads[1][key], rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# positive definiteness (docs/design.md section 6)


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_potts_pd_certificate(method, rng):
    psi = rng.standard_normal((3, 4, 5))
    bound = float(psi_norm2(psi))
    b = rng.standard_normal(3 * 20)
    lam_hi, lam_lo = bound * (1 + 1e-6), bound * (1 - 1e-6)
    dense_hi, dense_lo = dense_potts(psi, lam_hi, 3), dense_potts(psi, lam_lo, 3)
    assert np.linalg.eigvalsh(dense_hi).min() > 0 > np.linalg.eigvalsh(dense_lo).min()

    op = LowRankPottsGCRF(psi, lam_hi, 3)
    np.testing.assert_allclose(float(op.squared_spectral_norm()), bound, rtol=1e-12)
    opts = {} if method == "direct" else dict(rtol=1e-10, maxiter=100000)
    x = gcrflinalg.solve(op, b, method=method, **opts).x
    ref = np.linalg.solve(dense_hi, b)
    assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-6

    with pytest.raises(NotPositiveDefiniteError, match=r"lam = .* must exceed \|\|psi\|\|_2\^2") as err:
        gcrflinalg.solve(LowRankPottsGCRF(psi, lam_lo, 3), b, method=method, **opts)
    assert err.value.quantity == "lam" and err.value.value == pytest.approx(lam_lo, rel=1e-15)
    assert err.value.bound == pytest.approx(bound, rel=1e-12) and err.value.system is None


def test_potts_pd_certificate_batched_and_indefinite_direct(rng):
    psi = rng.standard_normal((2, 2, 3, 3))
    bounds = psi_norm2(psi)
    lam = np.array([bounds[0] * 1.5, bounds[1] * 0.9])
    op = LowRankPottsGCRF(psi, lam, 2)
    with pytest.raises(NotPositiveDefiniteError) as err:
        op.check_positive_definite()
    assert err.value.system == (1,) and err.value.bound == pytest.approx(bounds[1], rel=1e-12)
    # a pixel block lam I + |psi_p|^2 (11^T - I) that is not PD (lam <= |psi_p|^2) is caught too
    pixel_max = (psi ** 2).sum(axis=1).reshape(2, -1).max(axis=1)
    with pytest.raises(NotPositiveDefiniteError, match="max_p"):
        LowRankPottsGCRF(psi, 0.5 * pixel_max, 2).block_jacobi_preconditioner()
    # below the bound M is indefinite but (here) invertible: the direct solve is still exact
    b = rng.standard_normal((2, op.size))
    x = gcrflinalg.solve(op, b, method="direct", check_pd=False).x
    np.testing.assert_allclose(x, _solve_dense(dense_potts(psi, lam, 2), b), rtol=1e-9, atol=1e-10)
    # one label: M = lam I whatever psi is
    single = LowRankPottsGCRF(psi, 1e-3, 1)
    single.check_positive_definite()
    np.testing.assert_allclose(gcrflinalg.solve(single, b[:, :9], method="direct").x, b[:, :9] / 1e-3)
    # the general form is PD for every lam > 0
    LowRankGCRF(rng.standard_normal((2, 2, 3, 3)), 1e-9).check_positive_definite()


# ---------------------------------------------------------------------------------------------
# the Woodbury factor on its own


@pytest.mark.parametrize("core", ["identity", "positive", "negative", "indefinite", "matrix",
                                  "matrix-rank-deficient"])
def test_woodbury_factor(core, rng):
    r, n, lam = 5, 11, 0.7
    u = rng.standard_normal((2, r, n))
    if core == "identity":
        c, cmat = None, np.eye(r)
    elif core in ("positive", "negative", "indefinite"):
        c = {"positive": np.array([2.5, 0.3]), "negative": np.array([-0.01, -0.02]),
             "indefinite": np.array([-1.0, -2.0])}[core]
        cmat = c[:, None, None] * np.eye(r)
    else:
        c = rng.standard_normal((2, r, r))
        c = c + np.swapaxes(c, -1, -2)
        cmat = c
        if core == "matrix-rank-deficient":
            u = rng.standard_normal((2, r, 3)) @ rng.standard_normal((2, 3, n))
    dense = lam * np.eye(n) + np.swapaxes(u, -1, -2) @ cmat @ u
    f = WoodburyFactor(u @ np.swapaxes(u, -1, -2), np.array([lam, lam]), c)
    b = rng.standard_normal((2, n, 3))
    x = (b - np.swapaxes(u, -1, -2) @ f.coefficients(u @ b)) / lam
    np.testing.assert_allclose(x, np.linalg.solve(dense, b), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(f.range_solve(u @ b), u @ np.linalg.solve(dense, b), rtol=1e-8, atol=1e-9)
    eig = np.linalg.eigvalsh(dense)
    assert f.is_positive_definite() == bool(np.all(eig.min(axis=-1) > 0))
    for s in range(2):
        # every eigenvalue the factor reports is an eigenvalue of M, and the smallest one matches
        assert np.all(np.min(np.abs(f.eigenvalues[s][:, None] - eig[s][None, :]), axis=1) < 1e-8)
        np.testing.assert_allclose(min(f.eigenvalues[s].min(), lam), eig[s].min(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(f.lam_bound[s], max(0.0, lam - eig[s].min()), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("batched", [False, True])
def test_woodbury_range_quadratic(batched, rng):
    """``(U b)^T F (U b)`` from the Cholesky factor (one system: a triangular solve, ``F`` never
    formed) and from ``F`` (batched) against the dense ``F``; ``F`` and ``K`` formed on first
    access equal the dense inverses."""
    shape = (2,) if batched else ()
    r, n, lam = 4, 9, 0.7
    u = rng.standard_normal(shape + (r, n))
    gram = u @ np.swapaxes(u, -1, -2)
    f = WoodburyFactor(gram, np.full(shape, lam))
    ub = u @ rng.standard_normal(shape + (n, 3))
    F = np.linalg.inv(lam * np.eye(r) + gram)
    ref = np.einsum("...dk,...de,...ek->...k", ub, F, ub)
    got = f.range_quadratic(ub)
    assert got.shape == shape + (3,) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert (f._f is None) == (not batched)  # one NumPy system: F not formed by the quadratic form
    np.testing.assert_allclose(f.range_inverse, F, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(f.capacitance_inverse, F, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(f.range_quadratic(ub), ref, rtol=1e-12)  # through F now


# ---------------------------------------------------------------------------------------------
# bad input, no mutation


BAD_INPUTS = [
    (lambda: LowRankGCRF(np.ones((3, 4, 5)), 1.0), ValueError, "at least 4 axes"),
    (lambda: LowRankGCRF(np.ones((0, 2, 3, 3)), 1.0), ValueError, "D >= 1"),
    (lambda: LowRankGCRF(np.ones((2, 0, 3, 3)), 1.0), ValueError, "L >= 1"),
    (lambda: LowRankGCRF(np.ones((2, 2, 3, 3)), 0.0), ValueError, "lam must be > 0"),
    (lambda: LowRankGCRF(np.ones((2, 2, 3, 3)), -1.0), ValueError, "lam must be > 0"),
    (lambda: LowRankGCRF(np.ones((2, 2, 2, 3, 3)), np.ones(3)), ValueError, "batch shape"),
    (lambda: LowRankGCRF(np.full((2, 2, 3, 3), np.nan), 1.0).matvec(np.ones(18)), ValueError, "NaN or Inf"),
    (lambda: LowRankGCRF(np.ones((2, 2, 3, 3)), np.inf), ValueError, "NaN or Inf"),
    (lambda: LowRankGCRF(np.ones((2, 2, 3, 3)) * 1j, 1.0), ValueError, "complex"),
    (lambda: LowRankPottsGCRF(np.ones((4, 5)), 1.0, 2), ValueError, "at least 3 axes"),
    (lambda: LowRankPottsGCRF(np.ones((0, 4, 5)), 1.0, 2), ValueError, "D >= 1"),
    (lambda: LowRankPottsGCRF(np.ones((2, 4, 5)), 1.0, 0), ValueError, "num_labels must be >= 1"),
    (lambda: LowRankPottsGCRF(np.ones((2, 4, 5)), 1.0, 2.5), TypeError, "num_labels"),
    (lambda: LowRankPottsGCRF(np.ones((2, 4, 5)), 1.0, True), TypeError, "num_labels"),
    (lambda: LowRankPottsGCRF(np.full((2, 4, 5), np.inf), 1.0, 2), ValueError, "NaN or Inf"),
    (lambda: LowRankPottsGCRF(np.ones((2, 4, 5)), -2.0, 2), ValueError, "lam must be > 0"),
    (lambda: gcrflinalg.solve(LowRankGCRF(np.ones((2, 2, 3, 3)), 1.0), np.ones(17), method="direct"),
     ValueError, "must have shape"),
    (lambda: gcrflinalg.solve(LowRankGCRF(np.ones((2, 2, 3, 3)), 1.0), np.full(18, np.nan), method="direct"),
     ValueError, "NaN or Inf"),
    (lambda: LowRankGCRF(np.ones((2, 2, 3, 3)), 1.0).matvec(np.ones(18) * 1j), ValueError, "complex"),
    (lambda: LowRankPottsGCRF(np.ones((2, 2, 3, 3)), 1.0, 2).parameter_gradients(np.ones(18), np.ones((2, 18))),
     ValueError, "must have shape"),
]


@pytest.mark.parametrize("call, exc, match", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _nonfinite_embeddings(rng, value, batch=()):
    emb = rng.standard_normal(batch + (3, 2, 4, 5))
    emb[(Ellipsis, 2, 1, 3, 4)] = value  # one entry, the last row's last column
    return emb


# every read of E that computes something from its values: each must raise on its own (the
# finiteness of E on NumPy is checked where E is first read, not at construction)
_READS_OF_E = {
    "matvec": lambda op, b: op.matvec(b),
    "matvec, extra axis": lambda op, b: op.matvec(np.stack([b, b])),
    "solve auto": lambda op, b: gcrflinalg.solve(op, b),
    "solve cg": lambda op, b: gcrflinalg.solve(op, b, method="cg"),
    "solve direct": lambda op, b: gcrflinalg.solve(op, b, method="direct"),
    "solve gauss_seidel": lambda op, b: gcrflinalg.solve(op, b, method="gauss_seidel", maxiter=3),
    "solve jacobi": lambda op, b: gcrflinalg.solve(op, b, method="jacobi", maxiter=3),
    "adjoint solve": lambda op, b: gcrflinalg.adjoint_solve(op, b),
    "diagonal": lambda op, b: op.diagonal(),
    "to_dense": lambda op, b: op.to_dense(),
    "factorize": lambda op, b: op.factorize(),
    "block_jacobi": lambda op, b: op.block_jacobi_preconditioner(),
    "parameter_gradients": lambda op, b: op.parameter_gradients(b, b),
    "logdet": lambda op, b: gcrflinalg.logdet(op),
    "sample": lambda op, b: gcrflinalg.sample(op, b, 2, rng=0),
    "marginal_variances": lambda op, b: gcrflinalg.marginal_variances(op),
}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("read", sorted(_READS_OF_E))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nonfinite_embeddings_raise_at_every_first_read(rng, read, value, dtype):
    emb = _nonfinite_embeddings(rng, value).astype(dtype)
    op = LowRankGCRF(emb, 1.0)  # construction does not read E's values on NumPy
    b = rng.standard_normal(op.size).astype(dtype)
    with pytest.raises(ValueError, match="NaN or Inf"):
        _READS_OF_E[read](op, b)
    with pytest.raises(ValueError, match="NaN or Inf"):  # and again: nothing was cached
        _READS_OF_E[read](op, b)


def test_nonfinite_embeddings_written_after_a_product_raise_at_the_next(rng):
    emb = rng.standard_normal((3, 2, 4, 5))
    op = LowRankGCRF(emb, 1.0)
    b = rng.standard_normal(op.size)
    np.testing.assert_allclose(op.matvec(b), dense_general(emb, 1.0) @ b, rtol=1e-12)
    emb[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        op.matvec(b)
    with pytest.raises(ValueError, match="NaN or Inf"):
        gcrflinalg.solve(op, b, method="cg")


def test_batched_nonfinite_embeddings_raise(rng):
    emb = _nonfinite_embeddings(rng, np.nan, batch=(2,))
    op = LowRankGCRF(emb, np.array([1.0, 2.0]))
    b = rng.standard_normal((2, op.size))
    for call in (lambda: op.matvec(b), lambda: gcrflinalg.solve(op, b), lambda: op.factorize()):
        with pytest.raises(ValueError, match="NaN or Inf"):
            call()


def test_finite_embeddings_whose_products_overflow_do_not_raise():
    # the exact test settles a non-finite E v from finite E: an overflow, not bad input
    big = np.finfo(np.float64).max / 4
    emb = np.zeros((2, 1, 2, 2))
    emb[0, 0, 0, :] = big
    op = LowRankGCRF(emb, 1.0)
    v = np.zeros(op.size)
    v[:2] = [4.0, 4.0]
    out = op.matvec(v)
    assert not np.isfinite(out).all()


def test_inputs_not_mutated(rng):
    emb = rng.standard_normal((2, 3, 2, 3, 4))
    psi = rng.standard_normal((2, 3, 3, 4)) * 0.3
    lam = np.array([0.9, 1.1])
    lam_p = potts_lam(psi)
    for make in (lambda: LowRankGCRF(emb, lam), lambda: LowRankPottsGCRF(psi, lam_p, 2)):
        op = make()
        b = rng.standard_normal((2, op.size))
        before = [emb.copy(), psi.copy(), lam.copy(), lam_p.copy(), b.copy()]
        x = gcrflinalg.solve(op, b, method="direct").x
        g = gcrflinalg.adjoint_solve(op, b, method="direct").x
        op.parameter_gradients(x, g)
        op.matvec(b)
        op.to_dense()
        op.diagonal()
        op.block_jacobi_preconditioner()(b)
        op.gauss_seidel_sweep(x.copy(), b)
        gcrflinalg.solve(op, b, method="cg", rtol=1e-8)
        assert_not_mutated(before, [emb, psi, lam, lam_p, b])


def test_dense_view_refuses_large():
    op = LowRankPottsGCRF(np.ones((1, 100, 100)), 2e4, 2)
    with pytest.raises(MemoryError, match="force=True"):
        op.to_dense()


def test_timing_entry_quick():
    from studies.timing_lowrank import run

    rows = run(quick=True)
    assert rows
    keys = {"entry", "case", "what", "time_s", "peer", "ratio", "target", "met"}
    for row in rows:
        assert keys <= set(row)
        assert row["time_s"] > 0
    assert all(row["rel_residual"] < 1e-10 for row in rows if row["what"].startswith("direct"))


def test_auto_keeps_cg_on_a_flat_spectrum():
    """E with orthogonal rows of equal norm: M has two distinct eigenvalues and CG converges in two
    steps.  The factorisation costs more than the probe, so auto probes CG first and keeps it, at
    CG's own cost (no factorisation)."""
    from gcrflinalg.forms.lowrank.operators import AUTO_PROBE_ITERATIONS

    rng = np.random.default_rng(11)
    D, L, H, W = 96, 4, 32, 32
    q, _ = np.linalg.qr(rng.standard_normal((L * H * W, D)))
    emb = (3.0 * q.T).reshape(D, L, H, W)
    op = LowRankGCRF(emb, 1.0)
    # the probe can pay off here: a factorisation of between one and two probes' cost
    assert AUTO_PROBE_ITERATIONS + 2 < op._break_even(1) <= 2 * AUTO_PROBE_ITERATIONS + 2
    b = rng.standard_normal(op.vector_shape)
    cg = gcrflinalg.solve(op, b, method="cg", rtol=1e-8)
    auto = gcrflinalg.solve(op, b, method="auto", rtol=1e-8)
    assert auto.method == "cg" and np.all(auto.converged)
    assert auto.matvecs <= cg.matvecs
    assert op._factor_cache is None  # nothing factored
    np.testing.assert_allclose(auto.x, cg.x, rtol=1e-6, atol=1e-9)


def test_factor_and_products_check_finiteness_without_a_pass_of_their_own(rng, monkeypatch):
    # the checks of E ride on what the factor (diag of E E^T) and the products (E v) compute anyway
    from gcrflinalg.forms.lowrank import operators as lowrank_ops

    calls = []
    original = lowrank_ops._check_finite_by_product
    monkeypatch.setattr(lowrank_ops, "_check_finite_by_product", lambda *a: calls.append(1) or original(*a))
    emb = rng.standard_normal((3, 2, 4, 5))
    b = rng.standard_normal(40)
    gcrflinalg.logdet(LowRankGCRF(emb, 1.0), inv_quad_rhs=b)
    gcrflinalg.solve(LowRankGCRF(emb, 1.0), b, method="direct")
    gcrflinalg.solve(LowRankGCRF(emb, 1.0), b, method="cg")
    assert calls == []
    LowRankGCRF(emb, 1.0).diagonal()  # a read without a by-product to test: one pass
    assert calls == [1]
