"""Ritz values and condition estimates from CG's coefficients, against ``numpy.linalg.eigvalsh``."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

import solvers
from solvers._lanczos import LanczosRecord, ritz_values_from_coefficients


def spd_with_spectrum(eigenvalues, seed=0):
    rng = np.random.default_rng(seed)
    n = len(eigenvalues)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.asarray(eigenvalues)) @ Q.T
    return (A + A.T) / 2


def _slack(A, dtype):
    # rounding of a Ritz value: a few eps ||A|| (the computed T is exact for a nearby matrix)
    return 64 * np.finfo(dtype).eps * np.linalg.norm(A, 2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,kappa", [(20, 10.0), (50, 300.0), (120, 1e3)])
def test_ritz_values_lie_in_the_spectrum_and_the_extremes_converge(n, kappa, dtype):
    rng = np.random.default_rng(n)
    ev = np.sort(np.concatenate([[1.0, kappa], rng.uniform(1.0, kappa, n - 2)]))
    A = spd_with_spectrum(ev, seed=n)
    b = rng.standard_normal(n)
    lam = np.linalg.eigvalsh(A)
    res = solvers.cg(A.astype(dtype), b.astype(dtype), rtol=1e-10 if dtype == np.float64 else 1e-5,
                     maxiter=5 * n)
    theta = res.ritz_values
    assert theta.ndim == 1 and theta.size >= 1
    assert np.all(np.diff(theta) >= 0), "ascending"
    slack = _slack(A, dtype)
    assert theta[0] >= lam[0] - slack and theta[-1] <= lam[-1] + slack
    # one Ritz value per step of the run up to the first replacement near the attainable accuracy
    assert min(res.iterations, solvers._cg.TRUE_RESIDUAL_EVERY) <= theta.size <= res.iterations
    if dtype == np.float64:  # converged to 1e-10: the extreme Ritz values are the extreme eigenvalues
        assert theta[-1] == pytest.approx(lam[-1], rel=1e-6)
        assert theta[0] == pytest.approx(lam[0], rel=1e-4)
        assert res.condition_estimate == pytest.approx(lam[-1] / lam[0], rel=1e-4)
    else:
        assert theta[-1] == pytest.approx(lam[-1], rel=1e-3)
        assert 0.5 * lam[-1] / lam[0] <= res.condition_estimate <= 1.01 * lam[-1] / lam[0]


def test_extreme_ritz_values_improve_with_the_iterations():
    n = 200
    ev = np.linspace(1.0, 100.0, n)
    A = spd_with_spectrum(ev, seed=3)
    b = np.random.default_rng(3).standard_normal(n)
    errs = []
    for maxiter in (3, 8, 20, 60):
        theta = solvers.cg(A, b, rtol=0.0, maxiter=maxiter).ritz_values
        assert theta.size == maxiter
        errs.append((ev[-1] - theta[-1], theta[0] - ev[0]))
    errs = np.array(errs)
    assert np.all(errs > -1e-9)
    assert np.all(np.diff(errs[:, 0]) < 0) and np.all(np.diff(errs[:, 1]) < 0)
    assert errs[-1, 0] < 1e-6 * ev[-1]


def test_ritz_values_through_residual_replacements_match_the_spectrum():
    # > 50 iterations: the recursive residual is replaced by the true one along the way
    n = 150
    ev = np.geomspace(1.0, 1e4, n)
    A = spd_with_spectrum(ev, seed=5)
    b = np.random.default_rng(5).standard_normal(n)
    res = solvers.cg(A, b, rtol=1e-10, maxiter=2000)
    assert res.converged and res.iterations > 2 * solvers._cg.TRUE_RESIDUAL_EVERY
    theta = res.ritz_values
    # the record runs through the replacements far above rounding level and stops at the first
    # one near the attainable accuracy (which would perturb T beyond rounding)
    assert 2 * solvers._cg.TRUE_RESIDUAL_EVERY < theta.size < res.iterations
    assert theta[0] >= ev[0] * (1 - 1e-10) and theta[-1] <= ev[-1] * (1 + 1e-10)
    assert theta[0] == pytest.approx(ev[0], rel=1e-2) and theta[-1] == pytest.approx(ev[-1], rel=1e-10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batched_ritz_values_are_those_of_each_system_alone(dtype):
    rng = np.random.default_rng(7)
    n = 40
    A = spd_with_spectrum(np.geomspace(0.5, 50.0, n), seed=7).astype(dtype)
    B = rng.standard_normal((2, 3, n)).astype(dtype)
    B[1, 2] = 0.0  # a zero right-hand side takes no step
    res = solvers.cg(A, B, rtol=1e-4)
    assert res.ritz_values.shape[:2] == (2, 3) and res.condition_estimate.shape == (2, 3)
    for i, j in np.ndindex(2, 3):
        one = solvers.cg(A, B[i, j], rtol=1e-4)
        row = res.ritz_values[i, j]
        m = int(np.sum(~np.isnan(row)))
        assert m == res.iterations[i, j] and one.ritz_values.size == one.iterations
        assert np.all(np.isnan(row[m:])) and np.all(np.diff(row[:m]) >= 0)
        if m:  # the batch's rounding differs from one system's (an iteration more or less)
            assert row[m - 1] == pytest.approx(one.ritz_values[-1], rel=1e-3)
            assert row[0] == pytest.approx(one.ritz_values[0], rel=2e-2)
            assert res.condition_estimate[i, j] == pytest.approx(row[m - 1] / row[0])
    assert np.isnan(res.condition_estimate[1, 2]) and res.ritz_values[1, 2].size and np.all(
        np.isnan(res.ritz_values[1, 2]))


def test_pcg_ritz_values_are_those_of_the_preconditioned_operator():
    rng = np.random.default_rng(11)
    n, bs = 48, 4
    A = spd_with_spectrum(np.geomspace(1.0, 20.0, n), seed=11)
    s = np.repeat(np.geomspace(1.0, 30.0, n // bs), bs)  # badly scaled blocks: what the preconditioner fixes
    A = s[:, None] * A * s[None, :]
    P = solvers.block_jacobi_preconditioner(A, bs)
    Pd = sla.block_diag(*P.inverse_blocks)
    # eigenvalues of P A = those of the pencil (A, P^{-1})
    lam = sla.eigh(A, np.linalg.inv(Pd), eigvals_only=True)
    res = solvers.cg(A, rng.standard_normal(n), rtol=1e-12, M=P, maxiter=500)
    theta = res.ritz_values
    assert theta[0] >= lam[0] * (1 - 1e-8) and theta[-1] <= lam[-1] * (1 + 1e-8)
    assert theta[0] == pytest.approx(lam[0], rel=1e-5) and theta[-1] == pytest.approx(lam[-1], rel=1e-8)
    assert res.condition_estimate == pytest.approx(lam[-1] / lam[0], rel=1e-5)
    # the spectrum of A itself is elsewhere: the estimate is of P A, not of A
    assert res.condition_estimate < 0.1 * np.linalg.cond(A)


def test_ritz_values_cost_no_products():
    A = spd_with_spectrum(np.linspace(1, 30, 30), seed=2)
    b = np.ones(30)
    res = solvers.cg(A, b, rtol=1e-8)
    # the iterations' products and the final true residual, nothing more
    assert res.matvecs == res.iterations + 1


def test_ritz_from_coefficients_matches_the_lanczos_tridiagonal_of_the_matrix():
    # CG on A from b gives the same T as Lanczos on A from b / ||b||: compare with explicit Lanczos
    n, m = 30, 12
    A = spd_with_spectrum(np.linspace(1.0, 9.0, n), seed=4)
    b = np.random.default_rng(4).standard_normal(n)
    V = np.zeros((n, m))
    V[:, 0] = b / np.linalg.norm(b)
    a, e = np.zeros(m), np.zeros(m - 1)
    for j in range(m):
        w = A @ V[:, j]
        a[j] = V[:, j] @ w
        w -= V[:, : j + 1] @ (V[:, : j + 1].T @ w)  # full reorthogonalisation
        w -= V[:, : j + 1] @ (V[:, : j + 1].T @ w)
        if j < m - 1:
            e[j] = np.linalg.norm(w)
            V[:, j + 1] = w / e[j]
    expected = sla.eigvalsh_tridiagonal(a, e)
    res = solvers.cg(A, b, rtol=0.0, maxiter=m)
    np.testing.assert_allclose(res.ritz_values, expected, rtol=1e-9)


def test_a_stopped_record_keeps_the_ritz_values_of_the_run_before():
    rec = LanczosRecord(np, (2,))
    alphas = [np.array([0.5, 0.5]), np.array([0.25, 0.4]), np.array([0.2, 0.0])]
    betas = [np.array([0.1, 0.3]), np.array([0.2, 0.0]), np.array([0.0, 0.0])]
    used = [np.array([True, True]), np.array([True, True]), np.array([True, False])]
    for j in range(3):
        if j == 2:
            rec.stop(np.array([False, True]))  # system 1 restarts before the third step
        rec.alpha(alphas[j], used[j])
        rec.beta(betas[j])
    theta, kappa = rec.ritz()
    np.testing.assert_allclose(theta[0], ritz_values_from_coefficients([0.5, 0.25, 0.2], [0.1, 0.2]))
    np.testing.assert_allclose(theta[1][:2], ritz_values_from_coefficients([0.5, 0.4], [0.3]))
    assert np.isnan(theta[1][2])
    assert kappa[0] == pytest.approx(theta[0][-1] / theta[0][0])
    assert kappa[1] == pytest.approx(theta[1][1] / theta[1][0])
    rec = LanczosRecord(np, ())
    theta, kappa = rec.ritz()
    assert theta.shape == (0,) and np.isnan(kappa)


def test_ritz_values_on_a_gcrf_operator():
    from tests.operator_cases import case_by_id

    case = case_by_id("grid-n4-L3-3x5")
    rng = np.random.default_rng(0)
    op, params = case.make(rng)
    M = case.dense(params)
    lam = np.linalg.eigvalsh(M)
    res = solvers.cg(op, rng.standard_normal(op.shape[0]).reshape(op.vector_shape).reshape(-1), rtol=1e-12)
    theta = res.ritz_values
    assert theta[0] >= lam[0] - 1e-10 and theta[-1] <= lam[-1] + 1e-10
    assert theta[-1] == pytest.approx(lam[-1], rel=1e-3) and theta[0] == pytest.approx(lam[0], rel=1e-3)
