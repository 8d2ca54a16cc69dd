"""Tests of the ``solvers`` package against independent references (NumPy, SciPy, hand loops).

A registry of named cases is crossed with every solver; ``SKIP`` lists the pairs where a method
does not apply (too slow or not convergent for that matrix class).
"""
from __future__ import annotations

import json

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import solvers
from gcrflinalg.backend import cupy_available, to_host
from solvers import NotPositiveDefiniteError, SolveResult

METHODS = {
    "cg": solvers.cg,
    "gmres": solvers.gmres,
    "jacobi": solvers.jacobi,
    "gauss_seidel": solvers.gauss_seidel,
}


# --------------------------------------------------------------------------------------------- cases
def poisson1d(n=40, dtype=np.float64):
    return sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr", dtype=dtype)


def poisson2d(m=8, dtype=np.float64):
    T = poisson1d(m)
    I = sp.eye(m, format="csr")
    return (sp.kron(T, I) + sp.kron(I, T)).tocsr().astype(dtype)


def spd_dense(n=30, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((n, n))
    return (Q @ Q.T / n + np.eye(n)).astype(dtype)


def sparse_dd(n=60, dtype=np.float64, seed=2):
    """Random sparse symmetric, strictly diagonally dominant with positive diagonal (SPD)."""
    rng = np.random.default_rng(seed)
    R = sp.random(n, n, density=0.08, random_state=rng, data_rvs=lambda k: rng.uniform(-1, 1, k))
    S = (R + R.T).tocsr()
    S.setdiag(0.0)
    d = np.asarray(abs(S).sum(axis=1)).ravel() + 1.0
    return (S + sp.diags(d)).tocsr().astype(dtype)


CASES = {
    "poisson1d": lambda: poisson1d(),
    "poisson2d": lambda: poisson2d(),
    "spd_dense": lambda: spd_dense(),
    "sparse_dd": lambda: sparse_dd(),
    "spd_dense_f32": lambda: spd_dense(dtype=np.float32),
    "sparse_dd_f32": lambda: sparse_dd(dtype=np.float32),
}

# (case, method) pairs that do not apply, with the reason
SKIP = {
    ("poisson1d", "jacobi"): "Jacobi on 1-D Poisson needs O(n^2) iterations",
    ("poisson1d", "gauss_seidel"): "Gauss-Seidel on 1-D Poisson needs O(n^2) iterations",
    ("spd_dense", "jacobi"): "Jacobi need not converge on a dense SPD matrix that is not diagonally dominant",
    ("spd_dense_f32", "jacobi"): "Jacobi need not converge on a dense SPD matrix that is not diagonally dominant",
}


def dense(A):
    return A.toarray() if sp.issparse(A) else np.asarray(A)


def rtol_for(dtype):
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-9


def to_backend(xp, A):
    """A (dense or SciPy sparse) on the backend ``xp``."""
    if xp is np:
        return A
    import cupyx.scipy.sparse as csp

    return csp.csr_matrix(A) if sp.issparse(A) else xp.asarray(A)


def rhs(n, seed=0, batch=()):
    return np.random.default_rng(seed).standard_normal(batch + (n,))


def maybe_skip(case, method):
    if (case, method) in SKIP:
        pytest.skip(SKIP[(case, method)])


# ------------------------------------------------------------------------- solutions vs numpy.linalg
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("case", list(CASES))
def test_solution_matches_dense_solve(case, method, xp):
    maybe_skip(case, method)
    A = CASES[case]()
    Ad = dense(A).astype(np.float64)
    n = Ad.shape[0]
    b = rhs(n).astype(A.dtype)
    rtol = rtol_for(A.dtype)
    res = METHODS[method](to_backend(xp, A), xp.asarray(b), rtol=rtol, maxiter=5000)
    assert isinstance(res, SolveResult)
    assert res.converged and res.info == 0, res
    assert res.x.dtype == A.dtype
    assert res.x.shape == b.shape
    x = to_host(res.x).astype(np.float64)
    x_ref = np.linalg.solve(Ad, b.astype(np.float64))
    cond = np.linalg.cond(Ad)
    eps = np.finfo(A.dtype).eps
    err = np.linalg.norm(x - x_ref) / np.linalg.norm(x_ref)
    assert err <= 10 * cond * (rtol + 10 * eps), (err, cond)
    # the reported final residual is the true one and meets the stopping rule
    true_res = np.linalg.norm(b - Ad @ x)
    assert res.residual_norms[-1] == pytest.approx(true_res, rel=1e-2, abs=float(10 * eps * np.linalg.norm(b)))
    assert res.relative_residual <= rtol
    assert res.residual_norms.shape == (res.iterations + 1,)
    assert res.residual_norms[0] == pytest.approx(np.linalg.norm(b), rel=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if not c.endswith("f32")])
def test_cg_iterations_match_scipy(case):
    A = CASES[case]()
    b = rhs(A.shape[0], seed=3)
    count = [0]

    def cb(xk):
        count[0] += 1

    _, info = spla.cg(A, b, rtol=1e-6, callback=cb)
    assert info == 0
    res = solvers.cg(A, b, rtol=1e-6)
    assert res.converged
    assert abs(res.iterations - count[0]) <= 1, (res.iterations, count[0])


# ------------------------------------------------------------------------------------------ batching
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("batch", [(3,), (2, 2)])
def test_batched_equals_loop(method, batch, xp):
    A = sparse_dd()
    n = A.shape[0]
    B = rhs(n, seed=5, batch=batch)
    B[(0,) * len(batch)] *= 100.0  # different scales: per-system step sizes and tolerances
    res = METHODS[method](to_backend(xp, A), xp.asarray(B), rtol=1e-8)
    assert res.x.shape == B.shape
    assert np.shape(res.info) == batch and np.shape(res.iterations) == batch
    assert res.residual_norms.shape == (int(np.max(res.iterations)) + 1,) + batch
    assert np.all(res.converged)
    X = to_host(res.x)
    for idx in np.ndindex(*batch):
        single = METHODS[method](to_backend(xp, A), xp.asarray(B[idx]), rtol=1e-8)
        np.testing.assert_allclose(X[idx], to_host(single.x), rtol=1e-9, atol=1e-12 * np.abs(X[idx]).max())
        assert res.iterations[idx] == single.iterations
        k = single.iterations
        np.testing.assert_allclose(res.residual_norms[: k + 1][(slice(None),) + idx][:-1],
                                   single.residual_norms[:-1], rtol=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_batch_member_converging_early_is_frozen(method):
    A = sparse_dd()
    n = A.shape[0]
    B = rhs(n, seed=6, batch=(2,))
    x_star = np.linalg.solve(A.toarray(), B[1])
    X0 = np.zeros_like(B)
    X0[1] = x_star + 1e-7 * rhs(n, seed=7)  # system 1 starts almost converged
    res = METHODS[method](A, B, X0, rtol=1e-8)
    single = METHODS[method](A, B[1], X0[1], rtol=1e-8)
    assert np.all(res.converged)
    assert res.iterations[1] < res.iterations[0]
    assert res.iterations[1] == single.iterations
    np.testing.assert_allclose(res.x[1], single.x, rtol=1e-12, atol=1e-14)
    # after it stopped its history repeats its last value
    k = single.iterations
    hist = res.residual_norms[:, 1]
    assert np.all(hist[k:-1] == hist[k])


# ----------------------------------------------------------------------------------- inputs & limits
@pytest.mark.parametrize("method", list(METHODS))
def test_inputs_not_mutated(method):
    A = sparse_dd()
    b = rhs(A.shape[0], batch=(2,))
    x0 = rhs(A.shape[0], seed=9, batch=(2,))
    b_copy, x0_copy, A_copy = b.copy(), x0.copy(), A.copy()
    res = METHODS[method](A, b, x0, rtol=1e-8)
    assert res.converged.all()
    np.testing.assert_array_equal(b, b_copy)
    np.testing.assert_array_equal(x0, x0_copy)
    assert (A != A_copy).nnz == 0
    assert not np.shares_memory(res.x, x0)


@pytest.mark.parametrize("method", list(METHODS))
def test_maxiter_reached(method):
    A = poisson2d()
    b = rhs(A.shape[0])
    res = METHODS[method](A, b, rtol=1e-12, maxiter=3)
    if method == "gmres":  # maxiter counts restart cycles (as SciPy's): 3 cycles of 5 steps
        res = METHODS[method](A, b, rtol=1e-12, maxiter=3, restart=5)
        assert not res.converged and res.info == 3
        assert res.iterations == 15 and res.residual_norms.shape == (16,)
        # under callback_type="legacy" it counts inner iterations
        res = METHODS[method](A, b, rtol=1e-12, maxiter=3, callback=lambda r: None, callback_type="legacy")
    assert not res.converged
    assert res.info == 3
    assert res.iterations == 3
    assert res.residual_norms.shape == (4,)


@pytest.mark.parametrize("method", list(METHODS))
def test_zero_rhs_gives_zero_solution(method):
    A = sparse_dd()
    n = A.shape[0]
    x0 = rhs(n, seed=1)
    res = METHODS[method](A, np.zeros(n), x0)
    assert res.converged and res.info == 0 and res.iterations == 0
    np.testing.assert_array_equal(res.x, np.zeros(n))
    # one zero system inside a batch
    B = np.stack([rhs(n), np.zeros(n)])
    res = METHODS[method](A, B, np.stack([x0, x0]), rtol=1e-8)
    assert res.iterations[1] == 0 and res.iterations[0] > 0
    np.testing.assert_array_equal(res.x[1], np.zeros(n))
    assert np.all(res.converged)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("where", ["b", "x0"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_rejected(method, where, bad):
    A = sparse_dd(20)
    b, x0 = rhs(20), np.zeros(20)
    {"b": b, "x0": x0}[where][3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        METHODS[method](A, b, x0)


@pytest.mark.parametrize("method", list(METHODS))
def test_shape_mismatch_names_both_shapes(method):
    A = sparse_dd(20)
    with pytest.raises(ValueError) as exc:
        METHODS[method](A, np.ones(21))
    assert "(21,)" in str(exc.value) and "(20, 20)" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        METHODS[method](A, np.ones((2, 20)), np.zeros((3, 20)))
    assert "(3, 20)" in str(exc.value) and "(2, 20)" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        METHODS[method](np.ones((20, 21)), np.ones(20))
    assert "(20, 21)" in str(exc.value)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kwargs", [{"rtol": -1.0}, {"atol": -1e-3}, {"maxiter": -1}])
def test_bad_parameters_rejected(method, kwargs):
    with pytest.raises(ValueError):
        METHODS[method](sparse_dd(20), np.ones(20), **kwargs)


def test_bad_omega_and_ordering_rejected():
    A, b = sparse_dd(20), np.ones(20)
    for omega in (0.0, 2.0, -0.5, 2.5):
        with pytest.raises(ValueError, match="omega"):
            solvers.gauss_seidel(A, b, omega=omega)
    for omega in (0.0, -1.0):
        with pytest.raises(ValueError, match="omega"):
            solvers.jacobi(A, b, omega=omega)
    with pytest.raises(ValueError, match="ordering"):
        solvers.gauss_seidel(A, b, ordering="random")
    with pytest.raises(ValueError, match="restart"):
        solvers.gmres(A, b, restart=0)


@pytest.mark.parametrize("method", list(METHODS))
def test_complex_rejected(method):
    A = sparse_dd(20)
    with pytest.raises(ValueError, match="complex"):
        METHODS[method](A, np.ones(20) + 1j)
    with pytest.raises(ValueError, match="complex"):
        METHODS[method](A.toarray() * (1 + 0j), np.ones(20))


@pytest.mark.parametrize("method", list(METHODS))
def test_dtypes(method):
    A = sparse_dd(20)
    r32 = METHODS[method](A.astype(np.float32), np.ones(20, dtype=np.float32), rtol=1e-4)
    assert r32.x.dtype == np.float32 and r32.converged
    r64 = METHODS[method](A.astype(np.float32), np.ones(20, dtype=np.float64), rtol=1e-8)
    assert r64.x.dtype == np.float64
    rint = METHODS[method](np.rint(A.toarray() * 4).astype(np.int64) + 4 * np.eye(20, dtype=np.int64),
                           np.arange(20), rtol=1e-8)
    assert rint.x.dtype == np.float64 and rint.converged


def test_zero_or_negative_diagonal_rejected():
    A = sparse_dd(20).toarray()
    A[4, 4] = 0.0
    for f in (solvers.jacobi, solvers.gauss_seidel):
        with pytest.raises(ValueError, match="diagonal"):
            f(A, np.ones(20))
    A[4, 4] = -1.0
    with pytest.raises(ValueError, match="diagonal"):
        solvers.jacobi(A, np.ones(20))


def test_result_unpacks_like_scipy():
    A = poisson2d()
    b = rhs(A.shape[0])
    x, info = solvers.cg(A, b)
    assert info == 0 and x.shape == b.shape
    res = solvers.cg(A, b)
    assert "cg" in repr(res) and "converged=True" in repr(res)
    assert isinstance(res.iterations, int) and isinstance(res.converged, bool)
    assert isinstance(res.residual_norms, np.ndarray) and res.time_s >= 0 and res.matvecs >= res.iterations


def test_exact_x0_takes_no_iteration():
    A = sparse_dd(30)
    b = rhs(30)
    x_star = np.linalg.solve(A.toarray(), b)
    for f in METHODS.values():
        res = f(A, b, x_star, rtol=1e-6)
        assert res.iterations == 0 and res.converged


# ------------------------------------------------------------------------------ positive definiteness
def test_indefinite_matrix_raises_not_positive_definite():
    A = np.diag([1.0, -2.0, 3.0, 4.0])
    b = np.ones(4)
    with pytest.raises(NotPositiveDefiniteError) as exc:
        solvers.cg(A, b)
    err = exc.value
    # the Rayleigh quotient of the direction proves it: lambda_min(A) = -2 <= value <= bound < 0
    assert err.quantity == "p^T A p / p^T p" and -2.0 <= err.value <= err.bound <= 0
    assert err.bound > -1e-10 and "p^T A p" in str(err)
    assert isinstance(err, np.linalg.LinAlgError)
    # batched: the message names the offending system
    B = np.stack([np.array([1.0, 0.0, 1.0, 1.0]), b])
    with pytest.raises(NotPositiveDefiniteError) as exc:
        solvers.cg(A, B)
    assert exc.value.system == (1,) and "(1,)" in str(exc.value)
    # without the check the system is reported as a breakdown, the other one converges
    res = solvers.cg(A, B, check_pd=False)
    assert res.info[1] < 0 and res.info[0] == 0 and res.converged[0] and not res.converged[1]


def test_gmres_solves_nonsymmetric_and_indefinite():
    rng = np.random.default_rng(4)
    A = np.diag(np.linspace(-3, 5, 25)) + 0.1 * rng.standard_normal((25, 25))
    b = rhs(25)
    res = solvers.gmres(A, b, rtol=1e-10, restart=25)
    assert res.converged
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- hand-computed iterates
def test_jacobi_first_iterate_by_hand():
    A = spd_dense(8) + 8 * np.eye(8)
    b = rhs(8)
    x0 = rhs(8, seed=11)
    for omega in (1.0, 0.7):
        x1 = np.empty(8)
        for i in range(8):
            s = sum(A[i, j] * x0[j] for j in range(8) if j != i)
            x_gs = (b[i] - s) / A[i, i]
            x1[i] = (1 - omega) * x0[i] + omega * x_gs
        res = solvers.jacobi(A, b, x0, maxiter=1, omega=omega)
        np.testing.assert_allclose(res.x, x1, rtol=1e-13)


def _hand_sor_sweep(A, b, x0, omega, order):
    x = x0.copy()
    for i in order:
        s = sum(A[i, j] * x[j] for j in range(len(b)) if j != i)
        x[i] = (1 - omega) * x[i] + omega * (b[i] - s) / A[i, i]
    return x


@pytest.mark.parametrize("omega", [1.0, 1.3, 0.6])
def test_gauss_seidel_first_iterate_by_hand(omega):
    A = spd_dense(8) + 2 * np.eye(8)
    b = rhs(8)
    x0 = rhs(8, seed=11)
    x1 = _hand_sor_sweep(A, b, x0, omega, range(8))
    for a in (A, sp.csr_matrix(A)):
        res = solvers.gauss_seidel(a, b, x0, maxiter=1, omega=omega, ordering="natural")
        np.testing.assert_allclose(res.x, x1, rtol=1e-13)


def test_multicolor_sweep_equals_sweep_in_colour_order():
    from solvers._gauss_seidel import greedy_coloring

    A = poisson2d(5)
    Ad = A.toarray()
    n = A.shape[0]
    colors = greedy_coloring(A)
    # no two rows of one colour are coupled
    rows, cols = A.nonzero()
    off = rows != cols
    assert np.all(colors[rows[off]] != colors[cols[off]])
    assert colors.max() == 1  # the 5-point stencil is 2-colourable (red-black)
    b, x0 = rhs(n), rhs(n, seed=2)
    order = np.argsort(colors, kind="stable")
    for omega in (1.0, 1.4):
        x1 = _hand_sor_sweep(Ad, b, x0, omega, order)
        res = solvers.gauss_seidel(A, b, x0, maxiter=1, omega=omega, ordering="multicolor")
        np.testing.assert_allclose(res.x, x1, rtol=1e-12)
    res = solvers.gauss_seidel(A, np.stack([b, 2 * b]), ordering="multicolor", rtol=1e-9)
    np.testing.assert_allclose(res.x[1], 2 * np.linalg.solve(Ad, b), rtol=1e-6)


# ---------------------------------------------------------------------------------- preconditioning
def block_structured_spd(nb=12, bs=4, seed=3):
    """Strong, badly conditioned SPD diagonal blocks with a weak symmetric coupling."""
    rng = np.random.default_rng(seed)
    n = nb * bs
    A = np.zeros((n, n))
    for k in range(nb):
        Q, _ = np.linalg.qr(rng.standard_normal((bs, bs)))
        lam = np.geomspace(1.0, 10.0 ** rng.uniform(1, 3), bs)
        A[k * bs:(k + 1) * bs, k * bs:(k + 1) * bs] = (Q * lam) @ Q.T
    C = 0.05 * rng.standard_normal((n, n))
    A += C + C.T
    A += (abs(np.linalg.eigvalsh(A).min()) + 0.5) * np.eye(n)
    return A


@pytest.mark.parametrize("as_sparse", [False, True])
def test_block_jacobi_preconditioned_cg(as_sparse, xp):
    A = block_structured_spd()
    n = A.shape[0]
    b = rhs(n)
    Ab = to_backend(xp, sp.csr_matrix(A) if as_sparse else A)
    P = solvers.block_jacobi_preconditioner(Ab, 4)
    assert P.shape == (n, n)
    # it applies the inverse of the block diagonal
    Bd = np.zeros_like(A)
    for k in range(n // 4):
        s = slice(4 * k, 4 * k + 4)
        Bd[s, s] = A[s, s]
    np.testing.assert_allclose(to_host(P(xp.asarray(b))), np.linalg.solve(Bd, b), rtol=1e-10)
    plain = solvers.cg(Ab, xp.asarray(b), rtol=1e-8)
    pre = solvers.cg(Ab, xp.asarray(b), rtol=1e-8, M=P)
    assert pre.converged and plain.converged
    assert pre.iterations < plain.iterations
    x_ref = np.linalg.solve(A, b)
    np.testing.assert_allclose(to_host(pre.x), x_ref, rtol=1e-6, atol=1e-9)
    g = solvers.gmres(Ab, xp.asarray(b), rtol=1e-8, M=P)
    assert g.converged
    np.testing.assert_allclose(to_host(g.x), x_ref, rtol=1e-6, atol=1e-9)


def test_preconditioner_kinds_agree():
    A = block_structured_spd()
    b = rhs(A.shape[0])
    P = solvers.block_jacobi_preconditioner(A, 4)
    Pd = P(np.eye(A.shape[0])).T  # dense matrix of the preconditioner
    ref = solvers.cg(A, b, M=P, rtol=1e-8)
    for M in (Pd, sp.csr_matrix(Pd), spla.aslinearoperator(Pd), lambda R: R @ Pd.T):
        res = solvers.cg(A, b, M=M, rtol=1e-8)
        assert abs(res.iterations - ref.iterations) <= 1
        np.testing.assert_allclose(res.x, ref.x, rtol=1e-7)


def test_not_pd_preconditioner_is_a_breakdown():
    A = sparse_dd(20)
    res = solvers.cg(A, rhs(20), M=-np.eye(20))
    assert res.info < 0 and not res.converged


# ------------------------------------------------------------------------------- operator protocol
class DenseOperator:
    """A tiny custom operator: shape, batched matvec, diagonal, optionally per-batch matrices."""

    def __init__(self, mats):
        self.mats = np.asarray(mats)  # (n, n) or (*batch, n, n)
        self.shape = self.mats.shape[-2:]
        self.dtype = self.mats.dtype
        self.calls = 0

    def matvec(self, X):
        self.calls += 1
        return np.einsum("...ij,...j->...i", self.mats, X)

    def diagonal(self):
        return np.diagonal(self.mats, axis1=-2, axis2=-1)


class SweepingOperator(DenseOperator):
    def gauss_seidel_sweep(self, x, b, omega):
        out = x.copy()
        for idx in np.ndindex(*x.shape[:-1]):
            M = self.mats if self.mats.ndim == 2 else self.mats[idx]
            out[idx] = _hand_sor_sweep(M, b[idx], x[idx], omega, range(x.shape[-1]))
        return out


@pytest.mark.parametrize("method", list(METHODS))
def test_custom_operator_object(method):
    A = sparse_dd(20).toarray()
    b = rhs(20, batch=(2,))
    op = SweepingOperator(A)
    res = METHODS[method](op, b, rtol=1e-9)
    assert np.all(res.converged) and op.calls >= 1
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b.T).T, rtol=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_custom_operator_with_one_matrix_per_batch_item(method):
    mats = np.stack([sparse_dd(20, seed=s).toarray() for s in range(3)])
    b = rhs(20, batch=(3,))
    res = METHODS[method](SweepingOperator(mats), b, rtol=1e-9)
    assert np.all(res.converged)
    for i in range(3):
        np.testing.assert_allclose(res.x[i], np.linalg.solve(mats[i], b[i]), rtol=1e-6)


def test_linear_operator_input():
    A = poisson2d()
    b = rhs(A.shape[0])
    L = spla.aslinearoperator(A)
    x_ref = spla.spsolve(A.tocsc(), b)
    for f in (solvers.cg, solvers.gmres):
        res = f(L, b, rtol=1e-9)
        assert res.converged
        np.testing.assert_allclose(res.x, x_ref, rtol=1e-6)
    res = solvers.cg(L, np.stack([b, -b]), rtol=1e-9)
    np.testing.assert_allclose(res.x[1], -x_ref, rtol=1e-6)
    with pytest.raises(TypeError, match="diagonal"):
        solvers.jacobi(L, b)
    with pytest.raises(TypeError, match="gauss_seidel"):
        solvers.gauss_seidel(L, b)
    # a custom object without diagonal() cannot run Jacobi
    with pytest.raises(TypeError, match="diagonal"):
        solvers.jacobi(type("Op", (), {"shape": A.shape, "matvec": lambda self, X: X})(), b)


# ------------------------------------------------------------------------------------------ compare
def test_compare_table_records_and_plot(tmp_path):
    A = sparse_dd(40)
    b = rhs(40)
    table = solvers.compare(
        A, b, methods=("jacobi", "gauss_seidel", "gmres", "cg", ("sor", {"method": "gauss_seidel", "omega": 1.2})),
        rtol=1e-8, options={"gmres": {"restart": 10}},
    )
    assert isinstance(table, solvers.Comparison)
    assert len(table) == 5 and all(row.converged for row in table)
    text = str(table)
    for name in ("jacobi", "gauss_seidel", "gmres", "cg", "sor"):
        assert name in text
    assert table["cg"].iterations == solvers.cg(A, b, rtol=1e-8).iterations
    records = table.to_records()
    json.dumps(records)
    assert records[0]["history"][0] == pytest.approx(1.0)
    assert all(r["relative_residual"] <= 1e-8 for r in records)
    path = tmp_path / "convergence.png"
    fig = table.plot(path)
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig is not None


def test_compare_batched_and_callable_method():
    A = sparse_dd(30)
    B = rhs(30, batch=(2,))
    table = solvers.compare(A, B, methods=("cg", ("my-cg", lambda A, b, **kw: solvers.cg(A, b, **kw))), rtol=1e-8)
    assert table[0].iterations == table[1].iterations and table[1].converged
    assert table[0].history.ndim == 1


# -------------------------------------------------------------------------------------------- cupy
@pytest.mark.skipif(not cupy_available(), reason="CuPy with a CUDA GPU is not available")
def test_cupy_gauss_seidel_auto_is_multicolor():
    import cupy

    A = poisson2d()
    b = rhs(A.shape[0])
    res = solvers.gauss_seidel(to_backend(cupy, A), cupy.asarray(b), rtol=1e-8)
    assert isinstance(res.x, cupy.ndarray) and res.converged
    ref = solvers.gauss_seidel(A, b, rtol=1e-8, ordering="multicolor")
    assert res.iterations == ref.iterations


class _DLPackOnly:
    """An array from 'another framework': it only exports DLPack."""

    def __init__(self, arr):
        self._arr = arr

    def __dlpack__(self, **kwargs):
        return self._arr.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._arr.__dlpack_device__()


def test_dlpack_inputs():
    A = sparse_dd(20)
    b = rhs(20)
    res = solvers.cg(_DLPackOnly(A.toarray()), _DLPackOnly(b), _DLPackOnly(np.zeros(20)), rtol=1e-9)
    assert isinstance(res.x, np.ndarray) and res.converged
    np.testing.assert_allclose(res.x, np.linalg.solve(A.toarray(), b), rtol=1e-7)


def test_gauss_seidel_batched_operator_without_sweep_is_rejected():
    mats = np.stack([sparse_dd(10, seed=s).toarray() for s in range(2)])

    class BatchedWithCSR(DenseOperator):
        def tocsr(self):
            return sp.csr_matrix(self.mats[0])

    with pytest.raises(TypeError, match="gauss_seidel_sweep"):
        solvers.gauss_seidel(BatchedWithCSR(mats), rhs(10, batch=(2,)))
    # an unbatched operator with tocsr() is fine
    A = sparse_dd(10).toarray()

    class WithCSR(DenseOperator):
        def tocsr(self):
            return sp.csr_matrix(self.mats)

    res = solvers.gauss_seidel(WithCSR(A), rhs(10), rtol=1e-9)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, rhs(10)), rtol=1e-6)


@pytest.mark.parametrize("method", ["jacobi", "gauss_seidel"])
def test_divergence_is_a_breakdown(method):
    # spectral radius of the iteration matrix is 2 (Jacobi) / 4 (Gauss-Seidel): overflows to Inf
    A = np.array([[1.0, 2.0], [2.0, 1.0]])
    with np.errstate(all="ignore"):
        res = METHODS[method](A, np.ones(2), maxiter=5000)
    assert res.info < 0 and not res.converged and res.iterations < 5000


# ------------------------------------------------------------------ compiled (fused) CG updates
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_cg_fused_updates_match_array_code(dtype, batch):
    """The compiled in-place updates (NumPy) and the array-expression path (CuPy's) agree."""
    from solvers.backend import array_kernels

    A = sparse_dd().astype(dtype)
    b = rhs(A.shape[0], seed=11, batch=batch).astype(dtype)
    if batch:
        b[1] *= 100.0
    b_copy = b.copy()
    seen = []
    with array_kernels(False):  # the compiled updates, whatever GCRFLINALG_ARRAY_KERNELS says
        fused = solvers.cg(A, b, rtol=rtol_for(dtype), callback=seen.append)
    np.testing.assert_array_equal(b, b_copy)  # r starts as a copy of b: b is never written
    # every callback gets its own snapshot of the iterate
    assert len({id(x) for x in seen}) == len(seen) and not any(np.shares_memory(x, fused.x) for x in seen)
    with array_kernels(True):
        plain = solvers.cg(A, b, rtol=rtol_for(dtype))
    np.testing.assert_array_equal(fused.iterations, plain.iterations)
    np.testing.assert_array_equal(fused.converged, plain.converged)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(fused.x, plain.x, rtol=tol, atol=tol * np.abs(plain.x).max())
    np.testing.assert_allclose(fused.residual_norms, plain.residual_norms, rtol=10 * tol,
                               atol=10 * tol * plain.residual_norms.max())


def test_cg_fused_updates_with_preconditioner_and_restart():
    """Preconditioned CG and an x0 (r = b - A x0) through the fused path match SciPy's counts."""
    A = poisson2d(10)
    n = A.shape[0]
    b = rhs(n, seed=12)
    x0 = rhs(n, seed=13)
    M = sp.diags(1.0 / A.diagonal())
    count = [0]

    def cb(_):
        count[0] += 1

    spla.cg(A, b, x0=x0, rtol=1e-8, M=M, callback=cb)
    res = solvers.cg(A, b, x0, rtol=1e-8, M=M)
    assert res.converged and abs(res.iterations - count[0]) <= 1
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)


def test_cg_without_the_final_true_residual(rng):
    """``true_residual=False`` skips the closing product b - A x: one product fewer, the recursive
    residual in the last history row and in ``converged``; the iterates are the same."""
    A = poisson2d(10)
    b = rng.standard_normal((3, A.shape[0]))
    full = solvers.cg(A, b, rtol=1e-8)
    lean = solvers.cg(A, b, rtol=1e-8, true_residual=False)
    np.testing.assert_array_equal(lean.x, full.x)
    np.testing.assert_array_equal(lean.iterations, full.iterations)
    assert lean.matvecs == full.matvecs - 1
    np.testing.assert_array_equal(lean.residual_norms[:-1], full.residual_norms[:-1])
    true = np.linalg.norm(b - lean.x @ A.T, axis=-1)
    np.testing.assert_allclose(full.residual_norms[-1], true, rtol=1e-6)
    np.testing.assert_allclose(lean.residual_norms[-1], true, rtol=1e-3)  # recursive, close here
    assert np.all(lean.converged)


def test_zero_curvature_far_from_rounding_raises():
    """``p^T A p = 0`` exactly on the first direction (``b`` splits evenly between +1 and -1)."""
    A = np.diag(np.r_[np.ones(10), -np.ones(10)])
    with pytest.raises(NotPositiveDefiniteError, match="Rayleigh quotient") as exc:
        solvers.cg(A, np.ones(20), rtol=1e-10, maxiter=100)
    assert exc.value.quantity == "p^T A p / p^T p" and exc.value.value == 0.0 and exc.value.bound == 0.0
    assert "rounding" in str(exc.value)
    # without the check: a breakdown after one product (and the final true residual), no iteration
    res = solvers.cg(A, np.ones(20), rtol=1e-10, maxiter=100, check_pd=False)
    assert res.info == -1 and res.iterations == 0 and res.matvecs == 2 and not res.converged


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("check_pd", [True, False])
def test_singular_matrix_is_a_breakdown_for_cg(dtype, check_pd):
    """A PSD matrix whose null space ``b`` excites: ``p^T A p`` stays positive, the residual grows;
    CG stops it as a breakdown before it overflows, without a warning."""
    A = np.diag(np.r_[np.linspace(1.0, 3.0, 8), np.zeros(4)]).astype(dtype)
    b = np.ones(12, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solvers.cg(A, b, rtol=1e-6, maxiter=200, check_pd=check_pd)
    assert not res.converged and res.info == -1
    assert np.all(np.isfinite(res.x)) and np.isfinite(res.final_residual_norm)
    # the residual grew (no SPD matrix of condition below 1/eps lets it pass ||r_0|| / sqrt(eps));
    # the returned iterate is the last one before that
    assert np.linalg.norm(b) < res.final_residual_norm <= np.linalg.norm(b) / np.sqrt(np.finfo(dtype).eps)
    assert res.iterations < 60 and res.matvecs <= res.iterations + 2
    # the returned iterate is the one before the diverging step: no entry past ||b|| / (eps lambda_min)
    assert np.abs(res.x).max() < np.linalg.norm(b) / np.sqrt(np.finfo(dtype).eps) * 1e3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tolerance_beyond_the_dtype_is_quiet_and_counted(dtype):
    """At ``rtol = 0`` (a tolerance no dtype reaches) on an SPD matrix of condition 1e6, CG neither
    raises nor breaks down; it runs to ``maxiter`` and its products are the iterations' plus one
    true-residual replacement per 50 iterations and the final true residual."""
    d = np.logspace(-3, 3, 200)
    A = np.diag(d).astype(dtype)
    b = np.ones(200, dtype)
    res = solvers.cg(A, b, rtol=0.0, maxiter=400)
    assert res.info == res.iterations == 400 and not res.converged
    assert res.matvecs == 400 + 400 // 50 + 1
    assert np.all(np.isfinite(res.x)) and res.info > 0


def test_x0_strings_and_scalar_b():
    """``x0="Mb"`` is the preconditioner applied to ``b`` for CG and GMRES; any other string, or
    ``"Mb"`` for a solver without a preconditioner, is a ValueError; a 0-d ``b`` too."""
    A = np.diag([2.0, 3.0, 4.0])
    b = np.array([1.0, 2.0, 3.0])
    P = np.diag([0.5, 1.0 / 3.0, 0.25])  # M = A^{-1}: M b is the solution
    for solver in (solvers.cg, solvers.gmres):
        res = solver(A, b, x0="Mb", M=P, rtol=1e-12)
        assert res.converged and res.iterations == 0 and np.allclose(res.x, b / np.diag(A))
        plain = solver(A, b, x0="Mb", rtol=1e-12)  # no M: x0 = b
        ref = solver(A, b, x0=b.copy(), rtol=1e-12)
        assert plain.iterations == ref.iterations and np.allclose(plain.x, ref.x)
        with pytest.raises(ValueError, match="x0"):
            solver(A, b, x0="zeros")
        with pytest.raises(ValueError, match="scalar"):
            solver(A, np.float64(1.0))
    for solver in (solvers.jacobi, solvers.gauss_seidel):
        with pytest.raises(ValueError, match="x0"):
            solver(A, b, x0="Mb")
