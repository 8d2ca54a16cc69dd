"""The positive-definiteness policy (docs/design.md section 6).

By default only cheap certificates run (about one product); where they are inconclusive the solve
goes ahead and CG's curvature test, judged relative to ``||p||^2`` and ``||M||``, is the guard.
The Lanczos estimate runs only with ``check_pd="exact"``, matrix-free.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg

import gcrflinalg
from gcrflinalg import GridGCRF, GridPottsGCRF
from gcrflinalg.forms.grid import kernels, solves
from gcrflinalg.tolerances import default_rtol
from solvers import NotPositiveDefiniteError


def _no_eigensolver(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an eigensolver ran by default")

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", fail)
    monkeypatch.setattr(solves, "lanczos_lambda_min", fail)
    monkeypatch.setattr(GridPottsGCRF, "weight_extreme_eigenvalues", fail)


def _no_csr(monkeypatch):
    def fail(self, *args, **kwargs):
        raise AssertionError("CSR assembly (to_sparse) was called")

    monkeypatch.setattr(GridGCRF, "to_sparse", fail)


def _general(rng, H, W, L, *, lam_fraction, dtype=np.float64):
    """A general grid with random blocks and lam = lam_fraction x its Gershgorin bound."""
    pw = (0.01 * rng.standard_normal((2, L, L, H, W))).astype(dtype)
    bound = float(GridGCRF(pw, 1.0).gershgorin_bound())
    return pw, lam_fraction * bound


def test_default_solve_runs_no_lanczos_and_costs_about_the_cg_products(rng, monkeypatch):
    H, W, L = 85, 109, 21
    # random blocks: the spectrum of A lies well inside the Gershgorin disc (about a third of its
    # radius), so lam = half the bound is inconclusive for Gershgorin and positive definite
    pw, lam = _general(rng, H, W, L, lam_fraction=0.5, dtype=np.float32)
    op = GridGCRF(pw, lam)
    assert lam < float(op.gershgorin_bound())
    _no_eigensolver(monkeypatch)
    _no_csr(monkeypatch)
    calls = []
    matvec = op.matvec
    monkeypatch.setattr(op, "matvec", lambda v: (calls.append(1), matvec(v))[1])
    b = rng.standard_normal(op.size).astype(np.float32)
    res = gcrflinalg.solve(op, b)
    assert res.converged and res.info == 0
    assert op.check_positive_definite() is False  # inconclusive, left to CG
    # the products are the solve's own: those of the same method (the default, "auto", runs the
    # red-black reduced CG here) with no upfront check, on a fresh operator
    ref = gcrflinalg.solve(GridGCRF(pw, lam), b, check_pd=False)
    assert res.method == ref.method == "reduced_cg"
    assert res.matvecs == ref.matvecs and res.iterations == ref.iterations
    assert res.matvecs <= 2 * res.iterations + 3  # b's reduction, 2 per step, back-substitution, residual
    assert len(calls) <= res.matvecs + 1
    r = b.astype(np.float64) - matvec(res.x).astype(np.float64)
    # the default tolerance of the dtype (one table, gcrflinalg.tolerances), on the float64 residual
    assert np.linalg.norm(r) <= default_rtol(np.float32) * np.linalg.norm(b) * 1.01


@pytest.mark.parametrize("method", ["cg", "pcg", "reduced_cg", "auto"])
def test_indefinite_general_grid_raises_from_cg_by_default(rng, method, monkeypatch):
    H, W, L = 7, 8, 3
    pw = 0.3 * rng.standard_normal((2, L, L, H, W))
    A = GridGCRF(pw, 1.0).to_dense() - np.eye(L * H * W)
    ev = np.linalg.eigvalsh(A)
    lam = -ev[0] - 0.1 * (ev[-1] - ev[0]) / 2  # well inside the spectrum: clearly indefinite
    op = GridGCRF(pw, lam)
    assert lam > 0 and lam < float(op.gershgorin_bound())  # Gershgorin inconclusive
    _no_eigensolver(monkeypatch)
    with pytest.raises(NotPositiveDefiniteError, match="Rayleigh quotient") as err:
        gcrflinalg.solve(op, rng.standard_normal(op.size), method=method, rtol=1e-10)
    e = err.value
    assert e.quantity == "lam" and e.value == pytest.approx(lam) and e.system is None
    # lam - rho is a proven lower bound of the threshold -lambda_min(A) that lam must exceed
    assert lam < e.bound <= -ev[0] + 1e-9
    assert f"lam = {lam:.6g}" in str(e)


def test_indefinite_batch_item_is_named_by_cg(rng):
    H, W, L = 6, 5, 2
    pw = 0.3 * rng.standard_normal((2, L, L, H, W))
    ev = np.linalg.eigvalsh(GridGCRF(pw, 1.0).to_dense() - np.eye(L * H * W))
    lam = np.array([-ev[0] + 1.0, 0.5 * -ev[0]])
    op = GridGCRF(np.stack([pw, pw]), lam)
    with pytest.raises(NotPositiveDefiniteError) as err:
        gcrflinalg.solve(op, rng.standard_normal((2, op.size)), rtol=1e-10)
    assert err.value.system == (1,) and err.value.value == pytest.approx(lam[1])
    assert lam[1] < err.value.bound <= -ev[0] + 1e-9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [(5, 6), (32, 32)])
def test_positive_definite_potts_never_raises_at_rtol_zero(size, dtype):
    H, W = size
    L = 3
    for seed in range(20):
        rng = np.random.default_rng(seed)
        wt = (0.1 * rng.standard_normal((2, H, W))).astype(dtype)
        Wm = GridPottsGCRF(wt.astype(np.float64), 1.0, L).weight_matrix()
        lo, hi = (scipy.sparse.linalg.eigsh(Wm, k=1, which=w, tol=1e-10, return_eigenvectors=False)[0]
                  for w in ("SA", "LA"))
        lam = 1.05 * max(hi, -(L - 1) * lo)  # positive definite, 5% above the exact bound
        op = GridPottsGCRF(wt, lam, L)
        b = rng.standard_normal(op.size).astype(dtype)
        res = gcrflinalg.solve(op, b, rtol=0, maxiter=200)  # must not raise
        r = b.astype(np.float64) - op.matvec(res.x).astype(np.float64)
        assert np.linalg.norm(r) <= 1e-3 * np.linalg.norm(b), seed


def test_compiled_potts_cg_curvature_test(rng):
    H, W = 16, 16
    wt = 0.1 * rng.standard_normal((1, 2, H, W))
    op = GridPottsGCRF(wt[0], 1.0, 3)
    lo, hi = op.weight_extreme_eigenvalues()
    offsets = op.offsets
    rhs = rng.standard_normal((1, 1, 1, H, W))
    for dtype in (np.float32, np.float64):
        # positive definite lam I + W, iterated far past convergence: no failure
        x = np.zeros_like(rhs, dtype=dtype)
        iters, failed, rq = kernels.shifted_weight_cg(wt.astype(dtype), np.array([1.02 * -lo], dtype),
                                                      rhs.astype(dtype), x, offsets, 0.0, 500)
        assert failed == -1 and np.isnan(rq)
        # indefinite lam I + W: the Rayleigh quotient is returned, and bounds lambda_min from above
        lam = 0.5 * -lo
        x = np.zeros_like(rhs, dtype=dtype)
        iters, failed, rq = kernels.shifted_weight_cg(wt.astype(dtype), np.array([lam], dtype),
                                                      rhs.astype(dtype), x, offsets, 1e-12, 500)
        assert failed == 0 and lam + lo - 1e-5 <= rq <= 0


def test_exact_check_runs_matrix_free_lanczos_with_the_right_verdict(rng, monkeypatch):
    H, W, L = 6, 7, 3
    pw = 0.3 * rng.standard_normal((2, L, L, H, W))
    A = GridGCRF(pw, 1.0).to_dense() - np.eye(L * H * W)
    ev, vecs = np.linalg.eigh(A)
    _no_csr(monkeypatch)
    products = []
    original = solves.lanczos_lambda_min

    def counted(op, index):
        value, n = original(op, index)
        products.append(n)
        return value, n

    monkeypatch.setattr(solves, "lanczos_lambda_min", counted)
    # positive definite below the Gershgorin bound: the exact check passes, the solve is right
    lam_ok = -ev[0] + 0.05
    op = GridGCRF(pw, lam_ok)
    assert lam_ok < float(op.gershgorin_bound())
    b = rng.standard_normal(op.size)
    x = gcrflinalg.solve(op, b, check_pd="exact", rtol=1e-10).x
    np.testing.assert_allclose(x, np.linalg.solve(A + lam_ok * np.eye(op.size), b), rtol=1e-6, atol=1e-8)
    assert len(products) == 1 and 0 < products[0] <= 20 * 100
    # indefinite, with b free of the negative eigenvectors: CG need not notice, the exact check does
    lam_bad = -ev[0] - 0.05
    assert ev[1] + lam_bad > 0  # one negative eigenvalue
    b_hidden = vecs[:, 1:] @ rng.standard_normal(op.size - 1)
    with pytest.raises(NotPositiveDefiniteError, match="Lanczos") as err:
        gcrflinalg.solve(GridGCRF(pw, lam_bad), b_hidden, check_pd="exact")
    assert err.value.value == pytest.approx(lam_bad)
    assert err.value.bound == pytest.approx(-ev[0], rel=1e-4)  # -lambda_min(A), from Lanczos
    assert len(products) == 2 and products[1] <= 20 * 100
    # the same through the operator's method; a certified operator runs no Lanczos
    with pytest.raises(NotPositiveDefiniteError):
        GridGCRF(pw, lam_bad).check_positive_definite(exact=True)
    big = GridGCRF(pw, 2 * float(op.gershgorin_bound()))
    assert big.check_positive_definite(exact=True) is True and len(products) == 3


def test_check_pd_levels_run_once_per_operator(rng, monkeypatch):
    H, W, L = 5, 6, 2
    pw = 0.3 * rng.standard_normal((2, L, L, H, W))
    ev = np.linalg.eigvalsh(GridGCRF(pw, 1.0).to_dense() - np.eye(L * H * W))
    op = GridGCRF(pw, -ev[0] + 0.1)
    assert -ev[0] + 0.1 < float(op.gershgorin_bound())
    calls = []
    original = solves.lanczos_lambda_min
    monkeypatch.setattr(solves, "lanczos_lambda_min", lambda o, i: (calls.append(i), original(o, i))[1])
    b = rng.standard_normal(op.size)
    gcrflinalg.solve(op, b)
    gcrflinalg.solve(op, b, check_pd=False)
    assert calls == []
    gcrflinalg.solve(op, b, check_pd="exact")
    gcrflinalg.solve(op, b, check_pd="exact")  # already checked exactly
    gcrflinalg.solve(op, b)
    assert calls == [()]
    with pytest.raises(ValueError, match="check_pd"):
        gcrflinalg.solve(op, b, check_pd="always")


def test_potts_default_check_is_gershgorin_only(rng, monkeypatch):
    H, W, L = 40, 40, 4  # more pixels than the dense eigensolver takes
    wt = np.full((2, H, W), 0.5)
    _no_eigensolver(monkeypatch)
    op = GridPottsGCRF(wt, 2.0, L)  # indefinite: -(L-1) lambda_min(W) is about 6
    assert op.check_positive_definite() is False
    with pytest.raises(NotPositiveDefiniteError, match="split") as err:
        gcrflinalg.solve(op, rng.standard_normal(op.size))
    assert err.value.value == 2.0 and err.value.bound > 2.0
    ok = GridPottsGCRF(wt, 6.5, L)  # -(L-1) lambda_min(W) < 6: PD, Gershgorin (3 x 2 = 6.0) no
    assert ok.check_positive_definite() is (6.5 > 6.0)
    assert gcrflinalg.solve(ok, rng.standard_normal(ok.size)).converged


def test_cg_relative_curvature_test_in_solvers():
    import solvers

    # a diagonal SPD matrix spanning 1e-3..1e3: at rtol=0 CG iterates past the accuracy of the
    # dtype without a false alarm
    d = np.logspace(-3, 3, 200)
    for dtype in (np.float32, np.float64):
        A = np.diag(d).astype(dtype)
        b = np.ones(200, dtype)
        res = solvers.cg(A, b, rtol=0.0, maxiter=400)
        assert res.info != -1
    # a clearly negative eigenvalue still raises, with the Rayleigh quotient
    A = np.diag(np.r_[-1e-2, d])
    with pytest.raises(NotPositiveDefiniteError) as err:
        solvers.cg(A, np.ones(201), rtol=1e-12, maxiter=1000)
    assert err.value.quantity == "p^T A p / p^T p" and -1e-2 <= err.value.value <= err.value.bound < 0


def test_potts_with_one_label_is_lam_times_identity(rng):
    """With L = 1 there are no label pairs: M = lam I whatever W is, so no method may raise, even
    when lam I - W (a system of the L + 1 split) is indefinite."""
    weights = rng.uniform(-0.5, 0.5, size=(2, 2, 4))
    op = gcrflinalg.GridPottsGCRF(weights, 0.1, num_labels=1)
    b = rng.standard_normal(op.vector_shape)
    for method in ("cg", "auto", "pcg", "gmres", "direct"):
        res = gcrflinalg.solve(op, b, method=method, rtol=1e-12)
        np.testing.assert_allclose(res.x, b / 0.1, rtol=1e-10)


def test_potts_split_cg_zero_curvature_far_from_rounding_is_a_proof():
    """The compiled CG of the Potts split applies solvers.cg's rule: ``p^T A p = 0`` exactly on the
    first direction while the residual is ``||rhs||`` proves ``lam I + W`` not positive definite."""
    from gcrflinalg.forms.grid import kernels

    # W = [[0, w], [w, 0]] on a 1x2 image, w = -1.25: A = I + W has eigenvalues 2.25 and -0.25,
    # and p = rhs = (2, 1) has p^T A p = 5 - 5 = 0
    wt = np.zeros((1, 2, 1, 2))
    wt[0, 0, 0, 0] = -1.25
    rhs = np.array([2.0, 1.0]).reshape(1, 1, 1, 1, 2)
    its, failed, rayleigh = kernels.shifted_weight_cg(wt, np.array([1.0]), rhs, np.zeros_like(rhs),
                                                      ((0, 1), (1, 0)), 1e-10, 50)
    assert failed == 0 and rayleigh == 0.0
    # the same system positive definite (w = -0.5): solved, against numpy
    wt[0, 0, 0, 0] = -0.5
    x = np.zeros_like(rhs)
    its, failed, _ = kernels.shifted_weight_cg(wt, np.array([1.0]), rhs, x, ((0, 1), (1, 0)), 1e-12, 50)
    assert failed == -1 and its[0, 0, 0] == 2
    np.testing.assert_allclose(x.ravel(), np.linalg.solve([[1.0, -0.5], [-0.5, 1.0]], [2.0, 1.0]), rtol=1e-12)


@pytest.mark.parametrize("w,rhs_ok,rhs_bad", [
    (-2.0, (1.0, -1.0), (1.0, 1.0)),    # p^T A p = -2: clearly negative
    (-1.25, (1.0, -1.0), (2.0, 1.0)),   # p^T A p = 0 while the residual is ||rhs||
])
def test_potts_split_cg_names_the_failing_system(w, rhs_ok, rhs_bad):
    """The compiled split CG returns the flat index ``(e B + b) R + r`` of the first system that
    fails, wherever it sits in the stack (not only at index 0)."""
    from gcrflinalg.forms.grid import kernels

    offsets = ((0, 1), (1, 0))
    # one weight matrix, two right-hand sides: r = 0 an eigenvector of eigenvalue 1 - w > 0
    wt = np.zeros((1, 2, 1, 2))
    wt[0, 0, 0, 0] = w
    rhs = np.array([rhs_ok, rhs_bad]).reshape(1, 1, 2, 1, 2)
    its, failed, rayleigh = kernels.shifted_weight_cg(wt, np.array([1.0]), rhs, np.zeros_like(rhs), offsets,
                                                      1e-12, 50)
    assert failed == 1 and rayleigh <= 0.0
    # two weight matrices, the second indefinite, over two stacked right-hand-side groups:
    # the first failure is e = 0, b = 1, r = 0 -> flat index 1
    wt2 = np.zeros((2, 2, 1, 2))
    wt2[0, 0, 0, 0], wt2[1, 0, 0, 0] = -0.5, w
    rhs2 = np.broadcast_to(np.array(rhs_bad).reshape(1, 1, 1, 1, 2), (2, 2, 1, 1, 2)).copy()
    its, failed, _ = kernels.shifted_weight_cg(wt2, np.array([1.0, 1.0]), rhs2, np.zeros_like(rhs2), offsets,
                                               1e-12, 50)
    assert failed == 1
