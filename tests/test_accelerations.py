"""SOR (Young's omega), Chebyshev, SSOR- and AMG-preconditioned CG against direct solves; Young's theory."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import solvers
from tests.operator_cases import CASES, case_by_id

NEW = ("sor", "chebyshev", "ssor_cg", "amg_cg")
#: the solvers that need A's entries (or, for SSOR, a colouring); a LinearOperator has neither
NEEDS_ENTRIES = ("sor", "ssor_cg", "amg_cg")


def _tol(dtype):
    return (1e-4, 2e-3) if dtype == np.float32 else (1e-10, 1e-7)


def poisson2d(m, shift=0.2, dtype=np.float64):
    T = sp.diags([-1.0, 2.0 + shift / 2, -1.0], [-1, 0, 1], shape=(m, m))
    I = sp.eye(m)
    return (sp.kron(T, I) + sp.kron(I, T)).tocsr().astype(dtype)


def _solve(name, A, b, rtol, **kw):
    if name == "amg_cg":
        pytest.importorskip("pyamg")
    return getattr(solvers, name)(A, b, rtol=rtol, maxiter=20000, **kw)


# ------------------------------------------------------------------------------ SciPy matrices
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["dense", "sparse", "linop"])
@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("batch", [(), (3,)])
def test_new_solvers_match_a_direct_solve_on_scipy_matrices(name, kind, dtype, batch):
    A = poisson2d(7, dtype=dtype)
    Ad = A.toarray()
    rng = np.random.default_rng(hash((name, kind, batch)) % 2**32)
    b = rng.standard_normal(batch + (A.shape[0],)).astype(dtype)
    rtol, atol = _tol(dtype)
    mat = {"dense": Ad, "sparse": A, "linop": spla.aslinearoperator(A)}[kind]
    if kind == "linop" and name in NEEDS_ENTRIES:
        with pytest.raises(TypeError, match="entries|diagonal"):
            _solve(name, mat, b, rtol)
        return
    res = _solve(name, mat, b, rtol)
    assert np.all(res.converged), res
    assert res.x.dtype == dtype and res.x.shape == b.shape
    ref = np.linalg.solve(Ad.astype(np.float64), b.astype(np.float64).reshape(-1, A.shape[0]).T).T.reshape(b.shape)
    err = np.linalg.norm(res.x - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert np.all(err < 50 * max(rtol, 1e-6 if dtype == np.float32 else 1e-12) * np.linalg.cond(Ad)), err
    # the true residual is within the tolerance, as the result says
    true = np.linalg.norm(b.astype(np.float64) - res.x.astype(np.float64) @ Ad.T, axis=-1)
    assert np.all(true <= rtol * np.linalg.norm(b, axis=-1) * (1.001 if dtype == np.float64 else 1.1))


# ------------------------------------------------------------------------------ the operator suite
def _cases():
    return [pytest.param(c, id=c.id) for c in CASES]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("case", _cases())
def test_new_solvers_match_a_direct_solve_on_the_operator_suite(case, name, dtype):
    rng = np.random.default_rng(abs(hash((case.id, name))) % 2**32)
    batch = (2,)
    op, params = case.make(rng, dtype=dtype, batch_shape=batch)
    M = case.dense(params)
    b = rng.standard_normal(batch + (op.size,)).astype(dtype)
    rtol, _ = _tol(dtype)
    has_csr = hasattr(op, "tocsr")
    if name == "amg_cg":
        pytest.importorskip("pyamg")
        # AMG assembles one matrix: an unbatched system of each form that has entries
        if not has_csr:
            with pytest.raises(TypeError, match="tocsr"):
                solvers.amg_cg(op, b, rtol=rtol)
            return
        op, params = case.make(rng, dtype=dtype)
        M = case.dense(params)[None]
        b = b[:1].reshape(op.size)
    if name == "ssor_cg" and not (hasattr(op, "colour_classes") or has_csr):
        with pytest.raises(TypeError, match="colour_classes|tocsr"):
            solvers.ssor_cg(op, b, rtol=rtol)
        return
    if name == "ssor_cg" and not hasattr(op, "colour_classes") and batch and np.ndim(b) > 1:
        # one CSR matrix cannot stand for a matrix per batch item: a clear error, then one system
        with pytest.raises(TypeError, match="batch item|one matrix"):
            solvers.ssor_cg(op, b, rtol=rtol)
        op, params = case.make(rng, dtype=dtype)
        M = case.dense(params)[None]
        b = b[:1].reshape(op.size)
    res = _solve(name, op, b, rtol)
    assert np.all(res.converged), (case.id, res)
    B = np.asarray(b, dtype=np.float64).reshape(-1, op.size)
    for i in range(B.shape[0]):
        ref = np.linalg.solve(M[i], B[i])
        x = np.asarray(res.x, dtype=np.float64).reshape(-1, op.size)[i]
        assert np.linalg.norm(x - ref) <= 20 * rtol * np.linalg.cond(M[i]) * np.linalg.norm(ref), case.id
        assert np.linalg.norm(B[i] - M[i] @ x) <= rtol * np.linalg.norm(B[i]) * (1.01 if dtype == np.float64 else 1.2)


# ------------------------------------------------------------------------------ theory
def _jacobi_matrix(M):
    d = np.diag(M)
    return np.eye(len(d)) - M / d[:, None]


def _sweep_matrix(op, omega):
    """The SOR iteration matrix of an operator's own sweep: columns sweep(e_j, b = 0)."""
    n = op.size
    E = np.eye(n)
    return np.stack([np.asarray(op.gauss_seidel_sweep(E[j].copy(), np.zeros(n), omega)).reshape(n)
                     for j in range(n)], axis=1)


def _radius(G):
    return float(np.max(np.abs(np.linalg.eigvals(G))))


def test_young_relation_on_a_red_black_four_neighbourhood_grid():
    case = case_by_id("grid-n4-L3-3x5")
    op, params = case.make(np.random.default_rng(3))
    M = case.dense(params)
    rho_j = _radius(_jacobi_matrix(M))
    rho_gs = _radius(_sweep_matrix(op, 1.0))
    # consistently ordered (red-black): rho_GS = rho_J^2 (Young)
    assert rho_gs == pytest.approx(rho_j ** 2, rel=1e-8)
    # and SOR with Young's omega has radius omega* - 1
    w = solvers.young_omega(rho_j)
    assert _radius(_sweep_matrix(op, w)) == pytest.approx(w - 1.0, rel=1e-3)
    assert w - 1.0 < rho_gs


def test_young_relation_fails_without_consistent_ordering():
    # an 8-neighbourhood grid needs four colours: not consistently ordered, rho_GS != rho_J^2
    case = case_by_id("grid-n8-L1-3x5")
    op, params = case.make(np.random.default_rng(4))
    M = case.dense(params)
    rho_j = _radius(_jacobi_matrix(M))
    rho_gs = _radius(_sweep_matrix(op, 1.0))
    assert abs(rho_gs - rho_j ** 2) > 1e-3 * rho_j ** 2


def test_estimated_jacobi_radius_and_young_omega():
    A = poisson2d(12)
    Ad = A.toarray()
    rho = _radius(_jacobi_matrix(Ad))
    est, products = solvers.estimate_jacobi_radius(A, np.ones(A.shape[0]))
    assert products == 40 and est <= rho * (1 + 1e-10) and est == pytest.approx(rho, rel=1e-4)
    res = solvers.sor(A, np.ones(A.shape[0]), rtol=1e-8)
    assert res.omega == pytest.approx(solvers.young_omega(est)) and res.jacobi_radius == est
    assert res.method == "sor" and res.matvecs == res.iterations + 1 + products
    gs = solvers.gauss_seidel(A, np.ones(A.shape[0]), rtol=1e-8)
    assert res.iterations < 0.5 * gs.iterations  # over-relaxation pays
    fixed = solvers.sor(A, np.ones(A.shape[0]), rtol=1e-8, omega=1.3)
    assert fixed.omega == 1.3 and fixed.jacobi_radius is None
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        solvers.young_omega(1.0)
    with pytest.raises(ValueError, match="omega"):
        solvers.sor(A, np.ones(A.shape[0]), omega=2.0)


def test_chebyshev_bounds_given_and_estimated():
    A = poisson2d(10)
    ev = np.linalg.eigvalsh(A.toarray())
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    given = solvers.chebyshev(A, b, eig_bounds=(ev[0], ev[-1]), rtol=1e-8)
    assert given.converged and given.eig_bounds == (ev[0], ev[-1]) and given.matvecs == given.iterations + 1
    kappa = ev[-1] / ev[0]
    bound = np.log(2 / 1e-8) / np.log((np.sqrt(kappa) + 1) / (np.sqrt(kappa) - 1))
    assert given.iterations <= bound + 1
    est = solvers.chebyshev(A, b, rtol=1e-8)
    lo, hi = est.eig_bounds
    assert ev[0] <= lo * (1 + 1e-9) and hi >= ev[-1] and est.converged
    with pytest.raises(ValueError, match="0 < lower < upper"):
        solvers.chebyshev(A, b, eig_bounds=(1.0, 0.5))
    with pytest.raises(TypeError, match="pair"):
        solvers.chebyshev(A, b, eig_bounds=3.0)


@pytest.mark.parametrize("omega", [1.0, 1.4])
@pytest.mark.parametrize("source", ["csr", "matrix_free"])
def test_ssor_preconditioner_is_the_symmetric_sweep_and_spd(source, omega):
    if source == "csr":
        A = poisson2d(5)
        Ad = A.toarray()
    else:
        case = case_by_id("grid-n4-L3-3x5")
        A, params = case.make(np.random.default_rng(5))
        Ad = case.dense(params)
    P = solvers.ssor_preconditioner(A, omega)
    assert P.matrix_free == (source == "matrix_free")
    n = Ad.shape[0]
    Z = P.matvec(np.eye(n))  # rows: M^{-1} e_j
    np.testing.assert_allclose(Z, Z.T, atol=1e-12)
    assert np.linalg.eigvalsh((Z + Z.T) / 2)[0] > 0
    # M_SSOR^{-1} of the same colour ordering, from the splitting A = L + D + U (colour-permuted)
    order = np.concatenate([np.flatnonzero(np.asarray(c)) for c in _colour_rows(P)])
    Ap = Ad[np.ix_(order, order)]
    D = np.diag(np.diag(Ap))
    L = np.tril(Ap, -1)
    Mss = (D / omega + L) @ np.linalg.inv(D / omega) @ (D / omega + L.T) / (2 - omega)
    ref = np.linalg.inv(Mss)
    np.testing.assert_allclose(Z[np.ix_(order, order)], ref, atol=1e-10)


def _colour_rows(P):
    n = P.shape[0]
    if P.matrix_free:
        return [np.asarray(c) for c in P._classes]
    out = []
    for rows, _, _ in P._groups:
        m = np.zeros(n, dtype=bool)
        m[np.asarray(rows)] = True
        out.append(m)
    return out


def test_ssor_and_amg_setup_is_reported_apart():
    pytest.importorskip("pyamg")
    A = poisson2d(16, shift=0.01)
    b = np.ones(A.shape[0])
    plain = solvers.cg(A, b, rtol=1e-8)
    for name in ("ssor_cg", "amg_cg"):
        res = getattr(solvers, name)(A, b, rtol=1e-8)
        assert res.method == name and res.converged
        assert 0 < res.setup_time_s <= res.time_s
        assert res.iterations < plain.iterations
        # the stopping rule is the project's: the true residual relative to ||b||
        assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
    P = solvers.amg_preconditioner(A)
    assert P.setup_time_s > 0 and P.kind == "ruge_stuben"
    sa = solvers.amg_preconditioner(A, kind="smoothed_aggregation")
    assert solvers.cg(A, b, M=sa, rtol=1e-8).converged
    with pytest.raises(ValueError, match="kind"):
        solvers.amg_preconditioner(A, kind="bogus")


def test_amg_without_pyamg_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyamg", None)
    with pytest.raises(ImportError, match=r"extra 'amg'.*gcrflinalg\[amg\]"):
        solvers.amg_preconditioner(poisson2d(4))


def test_compare_runs_the_new_solvers():
    pytest.importorskip("pyamg")
    A = poisson2d(8)
    table = solvers.compare(A, np.ones(A.shape[0]), methods=("sor", "chebyshev", "cg", "ssor_cg", "amg_cg"),
                            rtol=1e-8, verbose=False)
    assert [r.method for r in table] == ["sor", "chebyshev", "cg", "ssor_cg", "amg_cg"]
    assert all(r.converged for r in table)
    assert table["ssor_cg"].iterations < table["cg"].iterations
