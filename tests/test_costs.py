"""What solves cost, not only what they answer: exact ``iterations`` and ``matvecs`` of CG against
textbook CG written here, and of the red-black and Potts-split solves against CG run here on the
dense systems they reduce to; lam over 0.01..100 and margins 1e-3..1 to the positive-definiteness
bound.

The references share no code with the package: textbook CG (Saad, Alg. 6.18) on dense NumPy
matrices, and the dense grid matrices of ``operator_cases`` (plain loops over docs/design.md 3).
"""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
import solvers
from gcrflinalg.forms.grid import GridGCRF, GridPottsGCRF
from operator_cases import dense_grid_coupling, dense_grid_general, dense_grid_potts

#: solvers.cg's documented residual replacement period (its docstring: "every 50 iterations")
REPLACEMENT_PERIOD = 50




def textbook_cg(A, b, rtol, maxiter=1000):
    """Unpreconditioned CG from ``x = 0`` until ``||r_k|| <= rtol ||b||`` (recursive residual).

    Returns the iterates ``[x_1, x_2, ...]`` (the number of steps is their count)."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = r @ r
    tol = rtol * np.linalg.norm(b)
    iterates = []
    while np.sqrt(rr) > tol and len(iterates) < maxiter:
        q = A @ p
        alpha = rr / (p @ q)
        x = x + alpha * p
        r = r - alpha * q
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
        iterates.append(x.copy())
    return iterates


def distinct_diagonal(rng, values, n):
    """``diag(d)``, ``n`` entries drawn from ``values`` (each at least once), and a ``b`` exciting all."""
    d = np.concatenate([values, rng.choice(values, n - len(values))])
    rng.shuffle(d)
    b = rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n)
    return np.diag(d), b


# ------------------------------------------------------------------------------------------ cg


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("lam", [0.01, 1.0, 100.0])
def test_cg_takes_one_step_per_distinct_eigenvalue(rng, k, lam, branch):
    # exact arithmetic: CG ends after as many steps as A has distinct eigenvalues excited by b;
    # the products are one per step plus the closing true residual
    values = lam * np.geomspace(1.0, 4.0, k)
    A, b = distinct_diagonal(rng, values, 12)
    res = solvers.cg(A, b, rtol=1e-10)
    assert res.converged and res.info == 0
    assert res.iterations == k
    assert res.matvecs == k + 1
    np.testing.assert_allclose(res.x, b / np.diag(A), rtol=1e-9)


def test_cg_iterates_are_the_textbook_iterates(rng, branch):
    n = 30
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    for lam in (0.01, 1.0, 100.0):
        A = (Q * (lam * np.geomspace(1.0, 50.0, n))) @ Q.T
        b = rng.standard_normal(n)
        seen = []
        res = solvers.cg(A, b, rtol=1e-8, callback=lambda x: seen.append(np.array(x)))
        ref = textbook_cg(A, b, 1e-8)
        assert res.converged and res.iterations == len(seen)
        assert abs(len(ref) - res.iterations) <= 1  # the last step may fall either side of rtol
        assert res.matvecs == res.iterations + 1
        for got, want in zip(seen[:10], ref):  # later ones part by the rounding of either
            assert np.linalg.norm(got - want) <= 1e-7 * np.linalg.norm(want)
        ref_x = np.linalg.solve(A, b)
        assert np.linalg.norm(res.x - ref_x) <= 50 * 1e-8 * np.linalg.norm(ref_x)  # kappa * rtol
        # the history: ||b||, then the recursive residual norms, the last row the true residual
        assert len(res.residual_norms) == res.iterations + 1
        assert res.residual_norms[0] == pytest.approx(np.linalg.norm(b), rel=1e-14)
        assert res.residual_norms[-1] == pytest.approx(np.linalg.norm(b - A @ res.x), rel=1e-6)


def test_cg_default_tolerance_is_scipys(rng, branch):
    # rtol = 1e-5, atol = 0 (SciPy's defaults): the same steps as textbook CG to 1e-5
    n = 60
    A = np.diag(np.geomspace(1.0, 1e3, n))
    b = rng.standard_normal(n)
    res = solvers.cg(A, b)
    steps = len(textbook_cg(A, b, 1e-5))
    assert abs(res.iterations - steps) <= 1 and res.iterations != len(textbook_cg(A, b, 1e-2))
    assert res.iterations != len(textbook_cg(A, b, 1e-8))
    assert np.linalg.norm(b - A @ res.x) <= 1e-5 * np.linalg.norm(b)


def test_cg_with_x0_pays_one_product_for_the_initial_residual(rng, branch):
    A, b = distinct_diagonal(rng, np.array([2.0, 3.0, 5.0]), 9)
    x0 = rng.standard_normal(9)
    res = solvers.cg(A, b, x0=x0, rtol=1e-10)
    assert res.iterations == 3 and res.matvecs == 3 + 2
    # x0 = "Mb" without a preconditioner starts from b: no product for r_0 is saved or spent twice
    res = solvers.cg(A, b, x0="Mb", rtol=1e-10)
    assert res.iterations == 3 and res.matvecs == 3 + 2


def test_cg_batch_counts_each_system(rng, branch):
    # three systems with 1, 2 and 4 distinct eigenvalues: per-system steps, products for the slowest
    As, bs = zip(*[distinct_diagonal(rng, v, 10) for v in
                   (np.array([2.0]), np.array([1.0, 3.0]), np.array([0.5, 1.0, 2.0, 4.0]))])
    A = np.stack(As)

    class Batched:
        shape = (10, 10)
        dtype = np.dtype(np.float64)

        def matvec(self, X):
            return np.einsum("sij,sj->si", A, X)

    res = solvers.cg(Batched(), np.stack(bs), rtol=1e-10)
    np.testing.assert_array_equal(res.iterations, [1, 2, 4])
    assert res.matvecs == 4 + 1
    np.testing.assert_allclose(res.x, np.stack([b / np.diag(a) for a, b in zip(As, bs)]), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cg_replaces_the_residual_every_period(rng, dtype, branch):
    # a slow system: one product per step, one per residual replacement, one closing product
    n = 400
    d = np.geomspace(1.0, 1e4, n)
    b = rng.standard_normal(n)
    res = solvers.cg(np.diag(d).astype(dtype), b.astype(dtype), rtol=1e-6 if dtype == np.float64 else 1e-4)
    k = int(res.iterations)
    assert res.converged and k > 2 * REPLACEMENT_PERIOD
    assert res.matvecs == k + k // REPLACEMENT_PERIOD + 1
    if dtype == np.float64:
        ref = textbook_cg(np.diag(d), b, 1e-6)
        assert abs(k - len(ref)) <= max(2, len(ref) // 20)  # rounding only; never a different algorithm
    # the replaced rows of the history are the true residual of the iterate at that step
    assert np.linalg.norm(b - d * res.x) <= (1e-6 if dtype == np.float64 else 1e-4) * np.linalg.norm(b)


def test_cg_iteration_limit_is_counted(rng, branch):
    A, b = distinct_diagonal(rng, np.geomspace(1.0, 100.0, 8), 8)
    res = solvers.cg(A, b, rtol=1e-12, maxiter=3)
    assert not res.converged and res.info == 3 and res.iterations == 3
    assert res.matvecs == 3 + 1
    np.testing.assert_allclose(res.x, textbook_cg(A, b, 1e-12, maxiter=3)[-1], rtol=1e-10)
    res = solvers.cg(A, b, rtol=1e-12, maxiter=0)
    assert res.iterations == 0 and res.matvecs == 1 and np.all(res.x == 0)
    assert res.info == 1 and not res.converged  # unconverged: info is the iterations, at least 1
    assert 0 <= res.time_s < 60


def test_cg_zero_rhs_and_converged_x0_cost_nothing_more(rng, branch):
    A, b = distinct_diagonal(rng, np.array([1.0, 2.0]), 6)
    res = solvers.cg(A, np.zeros(6))
    assert res.converged and res.iterations == 0 and res.matvecs == 1 and np.all(res.x == 0)
    res = solvers.cg(A, b, x0=b / np.diag(A), rtol=1e-8)
    assert res.converged and res.iterations == 0 and res.matvecs == 2


def test_cg_stops_on_an_absolute_tolerance(rng, branch):
    A, b = distinct_diagonal(rng, np.geomspace(1.0, 100.0, 8), 8)
    ref = textbook_cg(A, b, 1e-3 / np.linalg.norm(b))
    res = solvers.cg(A, b, rtol=0.0, atol=1e-3)
    assert res.iterations == len(ref) and res.matvecs == len(ref) + 1
    # the larger of the two tolerances rules
    res = solvers.cg(A, b, rtol=1e-12, atol=1e-3)
    assert res.iterations == len(ref)


def test_cg_preconditioned_counts_match_textbook_on_the_scaled_system(rng, branch):
    # Jacobi on a diagonal-times-k-values matrix: the preconditioned system has k distinct values
    n = 12
    s = rng.uniform(0.01, 100.0, n)
    D, b = distinct_diagonal(rng, np.array([1.0, 2.0, 5.0]), n)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = np.sqrt(s)[:, None] * (Q @ D @ Q.T) * np.sqrt(s)[None, :]
    # M A = S^{-1/2} (Q D Q^T) S^{1/2}: three distinct eigenvalues
    res = solvers.cg(A, b, rtol=1e-10, M=np.diag(1.0 / s))
    assert res.converged and res.iterations == 3 and res.matvecs == 4
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-8)


# ---------------------------------------------------------------------------------- red-black


def _grid_problem(rng, L, H, W, margin, lam_scale, batch=()):
    """A 4-neighbourhood GridGCRF with ``lam = (1 + margin) * max(-lambda_min(A), 0) + ...``: its
    dense ``M`` and the margin to the bound ``lam > -lambda_min(A)``."""
    pw = rng.standard_normal((2, L, L, H, W)) * lam_scale
    A = dense_grid_general(pw, 0.0, 4)
    bound = -np.linalg.eigvalsh(A)[0]
    lam = (1.0 + margin) * bound
    return pw, lam, A + lam * np.eye(A.shape[0])


@pytest.mark.parametrize("lam_scale", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("margin", [1e-3, 0.1, 1.0])
def test_reduced_cg_near_the_bound_matches_dense(rng, lam_scale, margin):
    L, H, W = 2, 4, 5
    pw, lam, M = _grid_problem(rng, L, H, W, margin, lam_scale)
    op = GridGCRF(pw, lam)
    b = rng.standard_normal(M.shape[0])
    res = gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-9)
    assert res.converged and res.method == "reduced_cg"
    ref = np.linalg.solve(M, b)
    cond = np.linalg.cond(M)
    assert np.linalg.norm(res.x - ref) <= 1e-9 * cond * 10 * np.linalg.norm(ref)
    assert np.linalg.norm(b - M @ res.x) <= 1e-9 * np.linalg.norm(b)
    assert res.residual_norms[-1] == pytest.approx(np.linalg.norm(b - M @ res.x), rel=1e-3, abs=1e-14)
    # the Schur complement S = lam^2 I - C C^T (red half) has at most N/2 distinct eigenvalues:
    # CG on it ends (in exact arithmetic) within N/2 steps; rounds add three C-products each
    n_red = (M.shape[0] + L) // 2
    k = int(res.iterations)
    rounds, extra = divmod(res.matvecs - 2 * k, 3)
    assert extra == 0 and 1 <= rounds <= 3
    assert k <= 2 * n_red


@pytest.mark.parametrize("lam", [0.05, 1.0, 20.0])
def test_reduced_cg_costs_match_cg_on_the_schur_complement(rng, lam):
    # the reduced solve runs CG on S x_r = lam b_r - C b_b; textbook CG on the dense S (assembled
    # here from M's red-black blocks) to the same tolerance takes the same steps, +-1 for rounding
    L, H, W = 2, 5, 6
    pw = rng.standard_normal((2, L, L, H, W)) * (0.05 * lam)
    M = dense_grid_general(pw, lam, 4)
    P = H * W
    red = np.array([l * P + i * W + j for l in range(L) for i in range(H) for j in range(W) if (i + j) % 2 == 0])
    black = np.array([l * P + i * W + j for l in range(L) for i in range(H) for j in range(W) if (i + j) % 2 == 1])
    C = M[np.ix_(red, black)]
    S = lam * lam * np.eye(len(red)) - C @ C.T
    b = rng.standard_normal(M.shape[0])
    rtol = 1e-8
    res = gcrflinalg.solve(GridGCRF(pw, lam), b, method="reduced_cg", rtol=rtol)
    assert res.converged
    rhs = lam * b[red] - C @ b[black]
    # ||r_S|| / lam <= rtol ||b|| is the reduced stopping rule
    steps = len(textbook_cg(S, rhs, rtol * lam * np.linalg.norm(b) / np.linalg.norm(rhs)))
    assert abs(int(res.iterations) - steps) <= 1
    assert res.matvecs == 2 * int(res.iterations) + 3  # one round: C^T, C per step; three per round
    np.testing.assert_allclose(res.x, np.linalg.solve(M, b), rtol=1e-6, atol=1e-8 * np.abs(res.x).max())


def test_reduced_cg_with_x0_and_batched_lam(rng):
    L, H, W = 2, 4, 4
    lam = np.array([0.02, 3.0, 50.0])
    pw = rng.standard_normal((3, 2, L, L, H, W)) * (0.05 * lam)[:, None, None, None, None, None]
    op = GridGCRF(pw, lam)
    b = rng.standard_normal((3, L * H * W)) * np.array([[1e-3], [1.0], [1e3]])
    M = np.stack([dense_grid_general(pw[s], lam[s], 4) for s in range(3)])
    ref = np.linalg.solve(M, b[..., None])[..., 0]
    x0 = ref + 1e-3 * np.abs(ref).max(axis=1, keepdims=True) * rng.standard_normal(ref.shape)
    res = gcrflinalg.solve(op, b, method="reduced_cg", x0=x0, rtol=1e-10)
    assert np.all(res.converged)
    for s in range(3):
        assert np.linalg.norm(b[s] - M[s] @ res.x[s]) <= 1e-10 * np.linalg.norm(b[s])
    # x0 costs its residual (C^T x_r, C x_b); every round three more
    assert (res.matvecs - 2 - 2 * int(np.max(res.iterations))) % 3 == 0
    cold = gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-10)
    assert np.all(np.asarray(res.iterations) < np.asarray(cold.iterations))


def test_reduced_cg_iteration_budget(rng):
    pw, lam, M = _grid_problem(rng, 2, 6, 6, 0.01, 1.0)
    b = rng.standard_normal(M.shape[0])
    res = gcrflinalg.solve(GridGCRF(pw, lam), b, method="reduced_cg", rtol=1e-12, maxiter=4)
    assert not res.converged and res.iterations == 4 and res.info == 4
    assert res.matvecs == 2 * 4 + 3


# ------------------------------------------------------------------------------ Potts split


def _potts_parts(wt, lam, L):
    """``lam I + (L-1) W`` and ``lam I - W`` (``P x P``) for Potts weights ``wt`` ``(K, H, W)``."""
    K, H, W = wt.shape
    Wm = dense_grid_coupling(lambda k, i, j: np.array([[wt[k, i, j]]]), 1, H, W, 4 if K == 2 else 8 if K == 4 else 12)
    P = H * W
    return lam * np.eye(P) + (L - 1) * Wm, lam * np.eye(P) - Wm, Wm


@pytest.mark.parametrize("lam", [0.03, 1.0, 30.0])
def test_potts_split_costs_match_cg_on_its_two_systems(rng, lam):
    L, H, W, nbhd = 3, 5, 6, 8
    wt = np.abs(rng.standard_normal((4, H, W))) * (0.03 * lam)
    op = GridPottsGCRF(wt, lam, L, nbhd)
    M = dense_grid_potts(wt, lam, L, nbhd)
    b = rng.standard_normal(M.shape[0])
    rtol = 1e-6
    res = gcrflinalg.solve(op, b, method="potts_split", rtol=rtol)
    assert res.converged
    assert np.linalg.norm(b - M @ res.x) <= rtol * np.linalg.norm(b)
    # round one: CG on the label sum to 0.5 rtol / L, then on every label to 0.5 rtol (each relative
    # to its own right-hand side)
    Ssum, Slab, Wm = _potts_parts(wt, lam, L)
    bl = b.reshape(L, -1)
    s_it = textbook_cg(Ssum, bl.sum(axis=0), 0.5 * rtol / L)
    s = s_it[-1] if s_it else np.zeros(bl.shape[1])
    d_it = max(len(textbook_cg(Slab, bl[l] - Wm @ s, 0.5 * rtol)) for l in range(L))
    assert int(res.iterations) == len(s_it) + d_it
    # products: the initial residual, each phase's steps (each phase starts from zero without a
    # product), and two per round (the label sum's coupling and the true residual)
    assert res.matvecs == 1 + int(res.iterations) + 2


@pytest.mark.parametrize("margin", [1e-3, 0.1, 1.0])
def test_potts_split_near_the_bound_matches_dense(rng, margin):
    L, H, W, nbhd = 3, 4, 5, 4
    wt = rng.standard_normal((2, H, W))
    Ssum, Slab, _ = _potts_parts(wt, 0.0, L)
    bound = -min(np.linalg.eigvalsh(Ssum)[0], np.linalg.eigvalsh(Slab)[0])
    lam = (1.0 + margin) * bound
    M = dense_grid_potts(wt, lam, L, nbhd)
    assert np.linalg.eigvalsh(M)[0] > 0
    b = rng.standard_normal(M.shape[0])
    res = gcrflinalg.solve(GridPottsGCRF(wt, lam, L, nbhd), b, method="potts_split", rtol=1e-8)
    assert res.converged and res.info == 0
    assert np.linalg.norm(b - M @ res.x) <= 1e-8 * np.linalg.norm(b)
    assert res.residual_norms[-1] == pytest.approx(np.linalg.norm(b - M @ res.x), rel=1e-3, abs=1e-14)
    rounds = (res.matvecs - 1 - int(res.iterations)) / 2
    assert rounds == int(rounds) and 1 <= rounds <= 4
    # below the bound it is not positive definite, and the split says so
    with pytest.raises(solvers.NotPositiveDefiniteError):
        gcrflinalg.solve(GridPottsGCRF(wt, (1.0 - margin / 2) * bound, L, nbhd), b, method="potts_split", rtol=1e-8)


def test_potts_split_budget_and_batch(rng):
    L, H, W = 2, 4, 4
    lam = np.array([0.05, 2.0])
    wt = np.abs(rng.standard_normal((2, 2, H, W))) * (0.1 * lam)[:, None, None, None]
    op = GridPottsGCRF(wt, lam, L, 4)
    b = rng.standard_normal((2, L * H * W))
    res = gcrflinalg.solve(op, b, method="potts_split", rtol=1e-10)
    for s in range(2):
        M = dense_grid_potts(wt[s], lam[s], L, 4)
        assert np.linalg.norm(b[s] - M @ res.x[s]) <= 1e-10 * np.linalg.norm(b[s])
    res = gcrflinalg.solve(op, b, method="potts_split", rtol=1e-12, maxiter=3)
    assert np.all(np.asarray(res.iterations) <= 3) and not np.all(res.converged)


# ------------------------------------------------- grid solves: scales, batches, budgets, history


@pytest.fixture(params=["compiled", "array"])
def grid_branch(request, monkeypatch):
    """The grid kernels' two code paths on NumPy: Numba, and the array expressions CuPy runs."""
    if request.param == "array":
        monkeypatch.setattr("gcrflinalg.forms.grid.kernels._use_numba", lambda arr: False)
    return request.param


def _potts_system(rng, lam, L=2, H=4, W=5, strength=0.2):
    wt = np.abs(rng.standard_normal((2, H, W))) * (strength * lam / L)
    return wt, dense_grid_potts(wt, lam, L, 4)


def _general_system(rng, lam, L=2, H=4, W=5, strength=0.05):
    pw = rng.standard_normal((2, L, L, H, W)) * (strength * lam)
    return pw, dense_grid_general(pw, lam, 4)


@pytest.mark.parametrize("scale", [1e-3, 1e3])
@pytest.mark.parametrize("method", ["reduced_cg", "potts"])
def test_grid_reduced_and_potts_stop_relative_to_b(rng, method, scale, grid_branch):
    # the stopping rule is relative to ||b||: scaling b scales x and leaves the steps alone
    lam = 0.3
    if method == "potts":
        par, M = _potts_system(rng, lam)
        make, name = (lambda: GridPottsGCRF(par, lam, 2, 4)), "potts_split"
    else:
        par, M = _general_system(rng, lam)
        make, name = (lambda: GridGCRF(par, lam)), "reduced_cg"
    b = rng.standard_normal(M.shape[0])
    one = gcrflinalg.solve(make(), b, method=name, rtol=1e-6)
    scaled = gcrflinalg.solve(make(), scale * b, method=name, rtol=1e-6)
    assert one.converged and scaled.converged
    assert scaled.iterations == one.iterations and scaled.matvecs == one.matvecs
    np.testing.assert_allclose(scaled.x, scale * one.x, rtol=1e-9, atol=0)
    r = scale * b - M @ scaled.x
    assert np.linalg.norm(r) <= 1e-6 * scale * np.linalg.norm(b)
    assert scaled.relative_residual == pytest.approx(np.linalg.norm(r) / (scale * np.linalg.norm(b)), rel=1e-3)
    # the default tolerance is the table's (gcrflinalg.tolerances: 1e-8 in float64)
    default = gcrflinalg.solve(make(), b, method=name)
    explicit = gcrflinalg.solve(make(), b, method=name, rtol=1e-8)
    assert default.iterations == explicit.iterations and default.matvecs == explicit.matvecs


@pytest.mark.parametrize("method", ["reduced_cg", "potts"])
def test_grid_reduced_and_potts_several_right_hand_sides_and_mixed_batch(rng, method, grid_branch):
    # extra leading axes of b are further right-hand sides; a batch mixing an easy system, a hard
    # one (near its bound) and a zero one gives each the answer it gets alone, and no 0/0 warning
    L, H, W = 2, 4, 4
    lam = np.array([20.0, 1.0, 0.05])
    if method == "potts":
        wt = np.abs(rng.standard_normal((3, 2, H, W)))
        wt[1] *= 0.9 / np.linalg.eigvalsh(_potts_parts(wt[1], 0.0, L)[2])[-1]  # lam_max(W) = 0.9
        wt[0] *= 0.01
        wt[2] *= 0.001
        make = (lambda w, l: GridPottsGCRF(w, l, L, 4)) 
        mats = [dense_grid_potts(wt[s], lam[s], L, 4) for s in range(3)]
        par, name = wt, "potts_split"
    else:
        pw = rng.standard_normal((3, 2, L, L, H, W))
        for s, target in enumerate([0.1 * lam[0], 0.95, 0.2 * lam[2]]):
            bound = -np.linalg.eigvalsh(dense_grid_general(pw[s], 0.0, 4))[0]
            pw[s] *= target / bound
        make = (lambda p, l: GridGCRF(p, l))
        mats = [dense_grid_general(pw[s], lam[s], 4) for s in range(3)]
        par, name = pw, "reduced_cg"
    b = rng.standard_normal((2, 3, L * H * W))
    b[:, 2] *= 1e-3
    b[1, 0] = 0.0
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        res = gcrflinalg.solve(make(par, lam), b, method=name, rtol=1e-10)
    assert res.x.shape == b.shape and np.all(res.converged)
    for e in range(2):
        for s in range(3):
            r = b[e, s] - mats[s] @ res.x[e, s]
            assert np.linalg.norm(r) <= 1e-10 * np.linalg.norm(b[e, s])
            # the last history row is each system's own true residual
            assert res.residual_norms[-1][e, s] == pytest.approx(np.linalg.norm(r), rel=1e-3, abs=1e-300)
            alone = gcrflinalg.solve(make(par[s], lam[s]), b[e, s], method=name, rtol=1e-10)
            assert int(alone.iterations) == int(res.iterations[e, s])
            np.testing.assert_allclose(res.x[e, s], alone.x, rtol=1e-12, atol=1e-15 * np.abs(alone.x).max(initial=0))
    assert np.all(res.x[1, 0] == 0) and res.iterations[1, 0] == 0


def test_reduced_cg_history_and_callback_follow_the_full_residual(rng, grid_branch):
    # the reduced residual over lam is the full residual of the back-substituted iterate; the
    # history holds one row per reduced step plus the start
    lam = 0.2
    pw, M = _general_system(rng, lam, L=2, H=5, W=4)
    b = rng.standard_normal(M.shape[0])
    seen = []
    res = gcrflinalg.solve(GridGCRF(pw, lam), b, method="reduced_cg", rtol=1e-8, callback=lambda x: seen.append(x.copy()))
    k = int(res.iterations)
    assert len(seen) == k and len(res.residual_norms) == k + 1
    assert res.residual_norms[0] == pytest.approx(np.linalg.norm(b), rel=1e-12)
    for j, x in enumerate(seen[:-1], start=1):
        assert res.residual_norms[j] == pytest.approx(np.linalg.norm(b - M @ x), rel=1e-4)
    np.testing.assert_allclose(seen[-1], res.x, rtol=1e-6, atol=1e-9 * np.abs(res.x).max())


def test_reduced_cg_rtol_zero_iterates_to_the_dtype_accuracy(rng, grid_branch):
    pw, M = _general_system(rng, 1.0)
    b = 1e-3 * rng.standard_normal(M.shape[0])
    res = gcrflinalg.solve(GridGCRF(pw, 1.0), b, method="reduced_cg", rtol=0.0, maxiter=200)
    assert np.linalg.norm(b - M @ res.x) <= 1e-13 * np.linalg.norm(b)


def _scaled_general_system(rng, coupling, L=2, H=4, W=5):
    """A 4-neighbourhood system with ``lam = 1`` and ``-lambda_min(A) = coupling``: its pairwise
    parameters and dense ``M``."""
    pw = rng.standard_normal((2, L, L, H, W))
    pw *= coupling / -np.linalg.eigvalsh(dense_grid_general(pw, 0.0, 4))[0]
    return pw, dense_grid_general(pw, 1.0, 4)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-6), (np.float32, 1e-3)])
def test_reduced_cg_leaves_a_system_that_starts_converged_as_given(rng, dtype, rtol, grid_branch):
    # the first right-hand side starts within its tolerance, its residual 0.9 tol along M's softest
    # mode (lam - sigma_max(C) = 0.1): there lam r_r - C r_b is 1.9 / sqrt(2) times lam ||r||, so a
    # reduced step or a back-substitution would move it (and raise its residual past tol); a
    # finished system sits still while the other is solved as it is alone
    pw, M = _scaled_general_system(rng, 0.9)
    w = np.linalg.eigh(M)[1][:, 0]
    b = rng.standard_normal((2, M.shape[0])).astype(dtype)
    tol0 = rtol * np.linalg.norm(b[0].astype(np.float64))
    x0 = np.zeros_like(b)
    x0[0] = np.linalg.solve(M, b[0] - 0.9 * tol0 * w)
    r0 = np.linalg.norm(b[0] - M @ x0[0])
    assert 0.85 * tol0 < r0 < 0.95 * tol0
    op = lambda: GridGCRF(pw.astype(dtype), 1.0)  # noqa: E731
    seen = []
    res = gcrflinalg.solve(op(), b, method="reduced_cg", rtol=rtol, x0=x0, callback=lambda x: seen.append(x.copy()))
    assert np.all(res.converged) and res.iterations[0] == 0 and res.iterations[1] > 0
    np.testing.assert_array_equal(res.x[0], x0[0])
    assert all(np.array_equal(x[0], x0[0]) for x in seen) and len(seen) == res.iterations[1]
    hist = np.asarray(res.residual_norms)
    assert hist.shape == (res.iterations[1] + 1, 2)
    assert np.all(hist[:, 0] == hist[0, 0]) and hist[0, 0] == pytest.approx(r0, rel=1e-3)
    for e in range(2):
        assert hist[-1, e] == pytest.approx(np.linalg.norm(b[e] - M @ res.x[e]), rel=1e-3)
    alone = gcrflinalg.solve(op(), b[1], method="reduced_cg", rtol=rtol)
    assert int(alone.iterations) == res.iterations[1] and res.matvecs == alone.matvecs + 2
    np.testing.assert_array_equal(res.x[1], alone.x)
    np.testing.assert_array_equal(hist[:, 1], alone.residual_norms)


def test_reduced_cg_round_without_steps_still_adds_its_row(rng, grid_branch):
    # b on the black pixels only and ||C b_b|| / lam <= rtol ||b||: the reduced right-hand side
    # lam b_r - C b_b already meets its tolerance, no reduced step is taken, and the
    # back-substitution x_b = b_b / lam alone solves to the tolerance; the round still ends the
    # history with its true residual
    L, H, W = 2, 4, 5
    pw, M = _scaled_general_system(rng, 0.2, L, H, W)
    lab, i, j = np.meshgrid(np.arange(L), np.arange(H), np.arange(W), indexing="ij")
    b = rng.standard_normal(M.shape[0]) * ((i + j) % 2 == 1).ravel()
    r = b - M @ b  # the residual of x = b / lam, lam = 1
    assert np.linalg.norm(r) <= 0.5 * np.linalg.norm(b)
    res = gcrflinalg.solve(GridGCRF(pw, 1.0), b, method="reduced_cg", rtol=0.5)
    assert res.converged and res.iterations == 0
    assert res.matvecs == 3  # one round: C r_b for its right-hand side, C^T d_r, C x_b
    np.testing.assert_allclose(res.x, b, rtol=1e-15, atol=0)
    np.testing.assert_allclose(res.residual_norms, [np.linalg.norm(b), np.linalg.norm(r)], rtol=1e-12)


def test_reduced_cg_finished_system_history_holds_through_later_rounds(rng, grid_branch):
    # float32, one absolute tolerance: 1e-3 ||b|| for the first right-hand side (one round meets
    # it), 1e-12 ||b|| for the second (beyond float32: a second round follows the first); the
    # finished system's rows hold its true residual from the end of its own steps to the last row
    pw, M = _scaled_general_system(rng, 0.9)
    b = rng.standard_normal((2, M.shape[0]))
    atol = 1e-3
    b[0] *= atol / 1e-3 / np.linalg.norm(b[0])
    b[1] *= atol / 1e-12 / np.linalg.norm(b[1])
    b = b.astype(np.float32)
    res = gcrflinalg.solve(GridGCRF(pw.astype(np.float32), 1.0), b, method="reduced_cg", rtol=0.0, atol=atol)
    np.testing.assert_array_equal(res.converged, [True, False])
    k0, k1 = (int(k) for k in res.iterations)
    rounds, extra = divmod(res.matvecs - 2 * k1, 3)
    assert extra == 0 and rounds >= 2 and 0 < k0 < k1
    hist = np.asarray(res.residual_norms)
    assert hist.shape == (k1 + 1, 2)  # the start, then one row per step of the batch
    true0 = np.linalg.norm(b[0] - M @ res.x[0])
    assert true0 <= atol and hist[-1, 0] == pytest.approx(true0, rel=1e-3)
    np.testing.assert_allclose(hist[k0:, 0], hist[-1, 0], rtol=1e-3)
    assert hist[-1, 1] > atol and hist[0, 1] == pytest.approx(np.linalg.norm(b[1]), rel=1e-6)


@pytest.mark.parametrize("method", ["reduced_cg", "potts_split"])
def test_grid_budget_holds_over_refinement_rounds(rng, method, grid_branch):
    # float32 at a tolerance that needs refinement rounds: no maxiter is ever exceeded, and rounds
    # that no longer halve the residual stop
    L, H, W = 2, 4, 5
    if method == "potts_split":
        par, M = _potts_system(rng, 1.0, L, H, W)
        par *= 0.9 / np.linalg.eigvalsh(_potts_parts(par, 0.0, L)[2])[-1]  # lam_max(W) = 0.9: slow
        M = dense_grid_potts(par, 1.0, L, 4)
        make = lambda: GridPottsGCRF(par.astype(np.float32), 1.0, L, 4)  # noqa: E731
    else:
        par, M = _general_system(rng, 1.0, L, H, W, strength=0.15)
        make = lambda: GridGCRF(par.astype(np.float32), 1.0)  # noqa: E731
    b = rng.standard_normal(M.shape[0]).astype(np.float32)
    free = gcrflinalg.solve(make(), b, method=method, rtol=1e-12)
    assert not free.converged and int(free.iterations) <= 10 * len(textbook_cg(M, b.astype(np.float64), 1e-7))
    extra = free.matvecs - (int(free.iterations) + 1 if method == "potts_split" else 2 * int(free.iterations))
    per_round = 2 if method == "potts_split" else 3
    # a round that still halves the residual is followed by another; one that does not ends it
    assert extra % per_round == 0 and 2 <= extra // per_round <= 4
    assert 0 <= free.time_s < 60
    k_free = int(free.iterations)
    for maxiter in sorted({1, 2, 3, k_free // 2, k_free - 1, k_free, k_free + 1} - {0}):
        res = gcrflinalg.solve(make(), b, method=method, rtol=1e-12, maxiter=maxiter)
        assert int(res.iterations) <= maxiter
        # whatever the budget, the steps it allows make progress
        assert np.linalg.norm(b - M @ res.x) < 0.999 * np.linalg.norm(b)
        # every product counted: per round the steps (and one start product per split phase)
        k = int(res.iterations)
        extra = res.matvecs - (k + 1 if method == "potts_split" else 2 * k)
        assert extra > 0 and extra % per_round == 0


def test_reduced_cg_not_positive_definite_names_the_system_and_a_true_bound(rng):
    L, H, W = 2, 4, 4
    pw = rng.standard_normal((2, 2, L, L, H, W))
    bounds = np.array([-np.linalg.eigvalsh(dense_grid_general(pw[s], 0.0, 4))[0] for s in range(2)])
    for scale in (0.05, 20.0):
        lam = scale * np.array([2.0, 0.5]) * bounds  # the second system is below its bound
        with pytest.raises(solvers.NotPositiveDefiniteError) as info:
            gcrflinalg.solve(GridGCRF(pw * scale, lam), np.ones((2, L * H * W)), method="reduced_cg")
        err = info.value
        assert err.system == (1,) and err.value == pytest.approx(lam[1])
        # a proven lower bound of -lambda_min(A), above lam
        assert lam[1] < err.bound <= scale * bounds[1] * (1 + 1e-9)


@pytest.mark.parametrize("method", ["reduced_cg", "potts"])
def test_grid_curvature_test_stays_on_without_the_upfront_check(rng, method, grid_branch):
    # check_pd=False skips the operator's certificate only: CG's curvature test still raises
    L, H, W = 2, 4, 4
    if method == "potts":
        wt = np.abs(rng.standard_normal((2, H, W)))
        lam = 0.5 * np.linalg.eigvalsh(_potts_parts(wt, 0.0, L)[2])[-1]
        op, name = GridPottsGCRF(wt, lam, L, 4), "potts_split"
    else:
        pw = rng.standard_normal((2, L, L, H, W))
        lam = 0.5 * -np.linalg.eigvalsh(dense_grid_general(pw, 0.0, 4))[0]
        op, name = GridGCRF(pw, lam), "reduced_cg"
    b = rng.standard_normal(op.size)
    for check_pd in (True, False):
        with pytest.raises(solvers.NotPositiveDefiniteError) as info:
            gcrflinalg.solve(op, b, method=name, check_pd=check_pd)
        assert info.value.value == pytest.approx(lam) and info.value.bound > lam


def test_reduced_cg_absolute_tolerance_costs_what_the_relative_one_does(rng, grid_branch):
    # atol = rtol ||b|| is the same stopping rule: the same steps, the same products
    pw, M = _general_system(rng, 0.5)
    b = rng.standard_normal(M.shape[0])
    rel = gcrflinalg.solve(GridGCRF(pw, 0.5), b, method="reduced_cg", rtol=1e-6)
    ab = gcrflinalg.solve(GridGCRF(pw, 0.5), b, method="reduced_cg", rtol=0.0, atol=1e-6 * np.linalg.norm(b))
    assert ab.converged and ab.iterations == rel.iterations and ab.matvecs == rel.matvecs


def test_potts_split_rtol_zero_iterates_to_the_dtype_accuracy(rng, grid_branch):
    wt, M = _potts_system(rng, 0.5, L=3)
    b = 1e-3 * rng.standard_normal(M.shape[0])
    res = gcrflinalg.solve(GridPottsGCRF(wt, 0.5, 3, 4), b, method="potts_split", rtol=0.0, maxiter=300)
    assert np.linalg.norm(b - M @ res.x) <= 1e-13 * np.linalg.norm(b)
    assert int(res.iterations) <= 300


def test_potts_split_not_positive_definite_names_the_system(rng, grid_branch):
    L, H, W = 2, 4, 4
    wt = np.abs(rng.standard_normal((3, 2, H, W)))
    top = np.array([np.linalg.eigvalsh(_potts_parts(wt[s], 0.0, L)[2])[-1] for s in range(3)])
    lam = top * np.array([2.0, 2.0, 0.5])  # the last system is below its bound lam_max(W)
    with pytest.raises(solvers.NotPositiveDefiniteError) as info:
        gcrflinalg.solve(GridPottsGCRF(wt, lam, L, 4), np.ones((3, L * H * W)), method="potts_split")
    assert info.value.system == (2,) and info.value.value == pytest.approx(lam[2])
    # the bound lam - rho from a Rayleigh quotient rho < 0 of lam I - W: above lam, at most lam_max(W)
    assert lam[2] * (1 + 1e-6) < info.value.bound <= top[2] * (1 + 1e-9)
