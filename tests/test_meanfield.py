"""Gaussian mean-field (gcrflinalg.meanfield) against textbook loops, numpy.linalg.solve, and the
Jacobi / Gauss–Seidel solvers; the teaching study end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from gcrflinalg.meanfield import MeanFieldResult, meanfield, parallel_meanfield, sequential_meanfield
from gcrflinalg.operator import GCRFOperator

SIZES = [1, 7, 30]


# ------------------------------------------------------------------------------------- references
def spd_matrix(rng, n, *, dominance=1.2):
    """A symmetric matrix with a positive diagonal that dominates each row (Jacobi converges)."""
    B = rng.standard_normal((n, n))
    B = (B + B.T) / 2
    np.fill_diagonal(B, 0.0)
    diag = dominance * np.abs(B).sum(axis=1) + rng.uniform(0.5, 1.5, n)
    return B + np.diag(diag)


def textbook_parallel(J, h, mu0, iterations, damping=0.0):
    """mu_i <- gamma mu_i + (1 - gamma) (h_i - sum_{j != i} J_ij mu_j) / J_ii, all i from the old mu."""
    n = len(h)
    mus = [list(mu0)]
    for _ in range(iterations):
        old = mus[-1]
        new = []
        for i in range(n):
            field = h[i]
            for j in range(n):
                if j != i:
                    field -= J[i][j] * old[j]
            new.append(damping * old[i] + (1 - damping) * field / J[i][i])
        mus.append(new)
    return np.array(mus)


def textbook_sequential(J, h, mu0, iterations, damping=0.0):
    """The same update applied to i = 0, 1, ..., n-1 in turn, each with the newest means."""
    n = len(h)
    mu = list(mu0)
    mus = [list(mu)]
    for _ in range(iterations):
        for i in range(n):
            field = h[i]
            for j in range(n):
                if j != i:
                    field -= J[i][j] * mu[j]
            mu[i] = damping * mu[i] + (1 - damping) * field / J[i][i]
        mus.append(list(mu))
    return np.array(mus)


class DenseOperator(GCRFOperator):
    """A minimal G-CRF operator around an explicit symmetric ``A`` (tests only): ``M = lam I + A``."""

    def __init__(self, A, lam, vector_shape, csr=False):
        A = np.asarray(A, dtype=np.float64)
        batch = A.shape[:-2]
        super().__init__(xp=np, dtype=A.dtype, batch_shape=batch, vector_shape=vector_shape,
                         lam=np.broadcast_to(np.asarray(lam, dtype=A.dtype), batch))
        self.A = A
        self._csr = csr

    def _matvec(self, v):
        flat = v.reshape(self.batch_shape + (self.size,))
        out = np.einsum("...ij,...j->...i", self.A, flat)
        return out.reshape(v.shape) + self._lam_times(v)

    def _parameter_gradients(self, x, g):
        return {}

    def to_sparse(self):
        if not self._csr:
            raise NotImplementedError
        return sp.csr_matrix(self.A + self.lam * np.eye(self.size))


# ------------------------------------------------------------------------------- textbook loops
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("damping", [0.0, 0.3])
@pytest.mark.parametrize("kind", ["dense", "csr", "coo", "csr_array"])
def test_schedules_equal_textbook_loops(rng, n, damping, kind):
    J = spd_matrix(rng, n)
    h = rng.standard_normal(n)
    mu0 = rng.standard_normal(n)
    Jin = {"dense": J, "csr": sp.csr_matrix(J), "coo": sp.coo_matrix(J), "csr_array": sp.csr_array(J)}[kind]
    par = parallel_meanfield(Jin, h, mu0, iterations=4, damping=damping)
    seq = sequential_meanfield(Jin, h, mu0, iterations=4, damping=damping)
    assert isinstance(par, MeanFieldResult) and par.schedule == "parallel" and seq.schedule == "sequential"
    assert par.means.shape == (5, n) and seq.means.shape == (5, n) and par.iterations == 4
    np.testing.assert_allclose(par.means, textbook_parallel(J, h, mu0, 4, damping), rtol=0, atol=1e-12)
    np.testing.assert_allclose(seq.means, textbook_sequential(J, h, mu0, 4, damping), rtol=0, atol=1e-12)


def test_sequential_differs_from_parallel(rng):
    """The schedules are really different (the sequential one uses the newest means)."""
    J, h = spd_matrix(rng, 6), rng.standard_normal(6)
    par = parallel_meanfield(J, h, iterations=2)
    seq = sequential_meanfield(J, h, iterations=2)
    np.testing.assert_allclose(par.means[1][0], seq.means[1][0], rtol=0, atol=1e-15)  # first update equal
    assert np.abs(par.means[1] - seq.means[1]).max() > 1e-3


# ------------------------------------------------------------------------- against the solvers
def _solver_iterates(solver, J, h, iterations, **options):
    xs = [np.zeros_like(h)]
    solver(J, h, rtol=0.0, atol=0.0, maxiter=iterations, callback=lambda x: xs.append(np.array(x)), **options)
    return np.stack(xs)


def _grid_potts_system(rng, L=3, H=5, W=7):
    """A grid Potts precision (4-neighbourhood) assembled with loops from docs/design.md 3.2, as CSR."""
    P = H * W
    weights = -rng.uniform(0.0, 0.3, size=(2, H, W))
    A = np.zeros((L * P, L * P))
    for k, (di, dj) in enumerate(((0, 1), (1, 0))):
        for i in range(H):
            for j in range(W):
                if i + di < H and j + dj < W:
                    p, q = i * W + j, (i + di) * W + (j + dj)
                    for m in range(L):
                        for n in range(L):
                            if m != n:
                                A[m * P + p, n * P + q] = A[n * P + q, m * P + p] = weights[k, i, j]
    lam = 1.1 * np.abs(A).sum(axis=1).max() + 0.1  # diagonally dominant: Jacobi converges
    return sp.csr_matrix(A + lam * np.eye(L * P)), rng.standard_normal(L * P)


@pytest.mark.parametrize("system", ["dense", "grid_potts"])
def test_parallel_equals_jacobi_and_sequential_equals_gauss_seidel(rng, system):
    solvers = pytest.importorskip("solvers")
    if system == "dense":
        J = spd_matrix(rng, 40)
        h = rng.standard_normal(40)
    else:
        J, h = _grid_potts_system(rng)
    iterations = 40
    par = parallel_meanfield(J, h, iterations=iterations)
    seq = sequential_meanfield(J, h, iterations=iterations)
    jac = _solver_iterates(solvers.jacobi, J, h, iterations)
    gs = _solver_iterates(solvers.gauss_seidel, J if sp.issparse(J) else sp.csr_matrix(J), h, iterations,
                          ordering="natural")
    assert jac.shape == par.means.shape and gs.shape == seq.means.shape
    assert np.abs(par.means - jac).max() <= 1e-12
    assert np.abs(seq.means - gs).max() <= 1e-12
    # and both make progress: the last iterate is close to the solution
    x = np.linalg.solve(J.toarray() if sp.issparse(J) else J, h)
    assert np.abs(seq.mean - x).max() < 1e-6


@pytest.mark.parametrize("damping", [0.25, 0.6])
def test_damping_equals_weighted_jacobi_and_sor(rng, damping):
    solvers = pytest.importorskip("solvers")
    J, h = spd_matrix(rng, 25, dominance=1.0), rng.standard_normal(25)
    par = parallel_meanfield(J, h, iterations=15, damping=damping)
    seq = sequential_meanfield(J, h, iterations=15, damping=damping)
    jac = _solver_iterates(solvers.jacobi, J, h, 15, omega=1 - damping)
    sor = _solver_iterates(solvers.gauss_seidel, sp.csr_matrix(J), h, 15, omega=1 - damping, ordering="natural")
    assert np.abs(par.means - jac).max() <= 1e-12
    assert np.abs(seq.means - sor).max() <= 1e-12


@pytest.mark.parametrize("form", ["grid", "grid_potts", "multires", "lowrank", "lowrank_potts", "video"])
def test_problem_library_equals_solvers(form):
    """On the built-in photograph-derived problems of every form (the operator passed directly)."""
    solvers = pytest.importorskip("solvers")
    problems = pytest.importorskip("gcrflinalg.problems")
    try:
        prob = problems.make_problem(form, 0)
    except ImportError as exc:
        pytest.skip(f"{form} operator not available: {exc}")
    op = prob.operator
    h = np.asarray(prob.b).reshape(-1)
    par = parallel_meanfield(op, prob.b, iterations=20)  # h in the operator's vector layout
    seq = sequential_meanfield(op, h, iterations=20)
    J = op.to_sparse() if callable(getattr(op, "to_sparse", None)) else op.to_dense()
    jac = _solver_iterates(solvers.jacobi, J, h, 20)
    gs = _solver_iterates(solvers.gauss_seidel, sp.csr_matrix(J), h, 20, ordering="natural")
    scale = max(1.0, float(np.abs(jac).max()))
    assert np.abs(par.means - jac).max() <= 1e-12 * scale
    assert np.abs(seq.means - gs).max() <= 1e-12 * scale
    np.testing.assert_allclose(par.variances, 1.0 / np.asarray(op.diagonal()).reshape(-1), rtol=1e-14)


# ------------------------------------------------------------------------------ the model facts
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 5, 33])
def test_means_converge_to_the_exact_mean(rng, dtype, n):
    J = spd_matrix(rng, n).astype(dtype)
    h = rng.standard_normal(n).astype(dtype)
    exact = np.linalg.solve(J.astype(np.float64), h.astype(np.float64))
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for schedule in ("parallel", "sequential"):
        res = meanfield(J, h, schedule=schedule, iterations=400)
        assert res.means.dtype == dtype
        np.testing.assert_allclose(res.mean, exact, rtol=tol, atol=tol)
        assert res.relative_residuals[-1] < 10 * tol
        assert res.residual_norms.shape == (401,)


def test_sequential_converges_where_parallel_diverges(rng):
    """SPD but not diagonally dominant: Jacobi (parallel MF) diverges, Gauss–Seidel does not;
    damping repairs the parallel schedule."""
    n = 12
    J = 0.9 * np.ones((n, n)) + 0.1 * np.eye(n)  # SPD, 2D - J is indefinite
    h = rng.standard_normal(n)
    exact = np.linalg.solve(J, h)
    par = parallel_meanfield(J, h, iterations=60)
    seq = sequential_meanfield(J, h, iterations=3000)
    damped = parallel_meanfield(J, h, iterations=3000, damping=0.93)
    assert par.relative_residuals[-1] > 1e3
    np.testing.assert_allclose(seq.mean, exact, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(damped.mean, exact, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_variances_are_inverse_precisions_and_underestimate(rng, kind):
    J = spd_matrix(rng, 9)
    res = parallel_meanfield(J if kind == "dense" else sp.csr_matrix(J), rng.standard_normal(9), iterations=1)
    np.testing.assert_allclose(res.variances, 1.0 / np.diag(J), rtol=1e-15)
    assert np.all(res.variances <= np.diag(np.linalg.inv(J)) + 1e-15)  # mean-field is overconfident


def test_batched_potentials_equal_the_loop(rng):
    J = sp.csr_matrix(spd_matrix(rng, 11))
    H = rng.standard_normal((2, 3, 11))
    for fn in (parallel_meanfield, sequential_meanfield):
        res = fn(J, H, iterations=6)
        assert res.means.shape == (7, 2, 3, 11) and res.residual_norms.shape == (7, 2, 3)
        for idx in np.ndindex(2, 3):
            single = fn(J, H[idx], iterations=6)
            np.testing.assert_allclose(res.means[(slice(None),) + idx], single.means, rtol=0, atol=1e-15)


@pytest.mark.parametrize("csr", [False, True])
def test_gcrf_operator_input(rng, csr):
    L, H, W = 2, 3, 5
    n = L * H * W
    B = rng.standard_normal((n, n)) * 0.1
    A = (B + B.T) / 2
    np.fill_diagonal(A, 0)
    lam = np.abs(A).sum(axis=1).max() + 0.5
    op = DenseOperator(A, lam, (L, H, W), csr=csr)
    b = rng.standard_normal((L, H, W))
    J = A + lam * np.eye(n)
    for fn, ref in ((parallel_meanfield, textbook_parallel), (sequential_meanfield, textbook_sequential)):
        res = fn(op, b, iterations=3)  # vector layout (L, H, W) accepted
        assert res.means.shape == (4, n)
        np.testing.assert_allclose(res.means, ref(J, b.ravel(), np.zeros(n), 3), rtol=0, atol=1e-12)
        np.testing.assert_allclose(fn(op, b.ravel(), np.zeros((L, H, W)), iterations=3).means, res.means)
    batched = DenseOperator(np.stack([A, A]), lam, (L, H, W))
    with pytest.raises(ValueError, match="batch_shape"):
        parallel_meanfield(batched, np.stack([b, b]))


def test_inputs_not_mutated(rng):
    J = spd_matrix(rng, 8)
    Jcsr = sp.coo_matrix(J).tocsr()
    h, mu0 = rng.standard_normal(8), rng.standard_normal(8)
    before = [J.copy(), Jcsr.toarray(), Jcsr.data.copy(), h.copy(), mu0.copy()]
    for fn in (parallel_meanfield, sequential_meanfield):
        fn(J, h, mu0, iterations=5)
        fn(Jcsr, h, mu0, iterations=5, damping=0.5)
    for a, b in zip(before, [J, Jcsr.toarray(), Jcsr.data, h, mu0]):
        np.testing.assert_array_equal(a, b)


def test_zero_iterations_and_integer_inputs(rng):
    J = np.array([[2, -1], [-1, 2]])
    res = sequential_meanfield(J, [1, 0], iterations=0)
    assert res.means.shape == (1, 2) and res.means.dtype == np.float64
    np.testing.assert_array_equal(res.mean, [0.0, 0.0])
    assert "sequential" in repr(res)


# --------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("fn", [parallel_meanfield, sequential_meanfield])
def test_bad_inputs(rng, fn):
    J = spd_matrix(rng, 4)
    h = rng.standard_normal(4)
    with pytest.raises(ValueError, match="square"):
        fn(np.ones((3, 4)), h)
    with pytest.raises(ValueError, match="square"):
        fn(np.ones(4), h)
    with pytest.raises(ValueError, match="h must have shape"):
        fn(J, np.ones(5))
    with pytest.raises(ValueError, match="h must have shape"):
        fn(J, 1.0)
    with pytest.raises(ValueError, match="mu0"):
        fn(J, h, np.ones(3))
    bad = J.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(bad, h)
    with pytest.raises(ValueError, match="NaN"):
        fn(sp.csr_matrix(bad), h)
    with pytest.raises(ValueError, match="NaN"):
        fn(J, np.array([1.0, np.inf, 0.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        fn(J, h, np.array([np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match="complex"):
        fn(J.astype(complex), h)
    with pytest.raises(ValueError, match="complex"):
        fn(J, h.astype(complex))
    with pytest.raises(ValueError, match="complex"):
        fn(J, h, h.astype(complex))
    asym = J.copy()
    asym[0, 1] += 0.5
    with pytest.raises(ValueError, match="symmetric"):
        fn(asym, h)
    with pytest.raises(ValueError, match="symmetric"):
        fn(sp.csr_matrix(asym), h)
    neg = J.copy()
    neg[2, 2] = -1.0
    with pytest.raises(ValueError, match=r"J\[2, 2\]"):
        fn(neg, h)
    zero_diag = sp.csr_matrix(J - np.diag(np.diag(J)))
    with pytest.raises(ValueError, match="must be > 0"):
        fn(zero_diag, h)
    for iterations in (-1, 2.5, True):
        with pytest.raises(ValueError, match="iterations"):
            fn(J, h, iterations=iterations)
    for damping in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="damping"):
            fn(J, h, damping=damping)
    with pytest.raises(TypeError):
        fn("not a matrix", h)


def test_unknown_schedule(rng):
    with pytest.raises(ValueError, match="schedule"):
        meanfield(np.eye(2), np.ones(2), schedule="random")


def test_independent_of_the_solvers():
    """The mean-field module never imports a solver (the comparison is independent); it shares only
    the array-backend helpers of ``solvers.backend``."""
    code = ("import sys, gcrflinalg.meanfield; "
            "print(any(m.startswith('solvers.') and m != 'solvers.backend' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------- the study
def test_study_quick_end_to_end(tmp_path, capsys):
    pytest.importorskip("solvers")
    pytest.importorskip("matplotlib")
    from studies import meanfield as study

    assert study.main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "|MF par - Jacobi|" in printed and "iterations to" in printed
    record = json.loads((tmp_path / "meanfield.json").read_text())
    png = tmp_path / "meanfield.png"
    assert png.exists() and png.stat().st_size > 10_000
    assert record["all_equal"] is True and record["problems"]
    assert {p["lam_rule"] for p in record["problems"]} == {"jacobi", "pd"}
    assert (tmp_path / "meanfield_pd.png").exists()
    for prob in record["problems"]:
        assert prob["equal"]
        # float64 iterates equal to 1e-12 (relative to max(1, max |mu|), as the study checks)
        assert prob["max_rel_diff_parallel_vs_jacobi"] <= 1e-12
        assert prob["max_rel_diff_sequential_vs_gauss_seidel"] <= 1e-12
        assert len(prob["rel_diff_sequential_vs_gauss_seidel"]) == prob["iterations"] + 1
        if not prob["parallel_diverged"]:
            assert len(prob["rel_diff_parallel_vs_jacobi"]) == prob["iterations"] + 1
        its = prob["iterations_to_rtol"]
        assert its["cg"] is not None and its["mf_sequential"] is not None
        assert its["mf_sequential"] >= its["cg"]  # mean-field trails CG


def test_study_help(capsys):
    from studies import meanfield as study

    with pytest.raises(SystemExit) as exc:
        study.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--out", "--quick", "--forms", "--problems", "--iterations", "--rtol", "--seed"):
        assert option in out


@pytest.mark.parametrize("argv", [["--forms", "nonsense"], ["--iterations", "0"], ["--problems", "-1"]])
def test_study_rejects_bad_options(argv, tmp_path, capsys):
    from studies import meanfield as study

    with pytest.raises(SystemExit) as exc:
        study.main(argv + ["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
