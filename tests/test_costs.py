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



@pytest.fixture(params=["compiled", "array"])
def branch(request, monkeypatch):
    """CG's two code paths on NumPy: the fused compiled updates, and the array expressions that
    CuPy (or a machine without Numba) runs."""
    if request.param == "array":
        monkeypatch.setattr("solvers._cg._numba", None)

        def compiled(*args):
            raise AssertionError("the array branch ran a compiled update")

        for name in ("_step_nb", "_direction_nb", "_curvature_nb"):
            monkeypatch.setattr(f"solvers._cg.{name}", compiled)
    return request.param

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
    res = gcrflinalg.solve(op, b, method="cg", rtol=rtol)
    assert res.converged
    assert np.linalg.norm(b - M @ res.x) <= rtol * np.linalg.norm(b)
    # round one: CG on the label sum to 0.5 rtol / L, then on every label to 0.5 rtol (relative to
    # the residual at the round's start, here b)
    Ssum, Slab, Wm = _potts_parts(wt, lam, L)
    bl = b.reshape(L, -1)
    s_it = textbook_cg(Ssum, bl.sum(axis=0), 0.5 * rtol / L)
    s = s_it[-1] if s_it else np.zeros(bl.shape[1])
    d_it = max(len(textbook_cg(Slab, bl[l] - Wm @ s, 0.5 * rtol * np.linalg.norm(b) / np.linalg.norm(bl[l] - Wm @ s)))
               for l in range(L))
    assert abs(int(res.iterations) - (len(s_it) + d_it)) <= 1
    # products: the initial residual, each phase's steps + 1, and two per round (sum and residual)
    assert res.matvecs == 1 + int(res.iterations) + 4


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
    res = gcrflinalg.solve(GridPottsGCRF(wt, lam, L, nbhd), b, method="cg", rtol=1e-8)
    assert res.converged and res.info == 0
    assert np.linalg.norm(b - M @ res.x) <= 1e-8 * np.linalg.norm(b)
    assert res.residual_norms[-1] == pytest.approx(np.linalg.norm(b - M @ res.x), rel=1e-3, abs=1e-14)
    rounds = (res.matvecs - 1 - int(res.iterations)) / 4
    assert rounds == int(rounds) and 1 <= rounds <= 4
    # below the bound it is not positive definite, and the split says so
    with pytest.raises(solvers.NotPositiveDefiniteError):
        gcrflinalg.solve(GridPottsGCRF(wt, (1.0 - margin / 2) * bound, L, nbhd), b, method="cg", rtol=1e-8)


def test_potts_split_budget_and_batch(rng):
    L, H, W = 2, 4, 4
    lam = np.array([0.05, 2.0])
    wt = np.abs(rng.standard_normal((2, 2, H, W))) * (0.1 * lam)[:, None, None, None]
    op = GridPottsGCRF(wt, lam, L, 4)
    b = rng.standard_normal((2, L * H * W))
    res = gcrflinalg.solve(op, b, method="cg", rtol=1e-10)
    for s in range(2):
        M = dense_grid_potts(wt[s], lam[s], L, 4)
        assert np.linalg.norm(b[s] - M @ res.x[s]) <= 1e-10 * np.linalg.norm(b[s])
    res = gcrflinalg.solve(op, b, method="cg", rtol=1e-12, maxiter=3)
    assert np.all(np.asarray(res.iterations) <= 3) and not np.all(res.converged)
