"""Bad input, empty axes, iteration budgets, breakdowns and parameter ownership (docs/guarantees.md).

Each test checks a promise against an independent reference (a dense solve, NumPy's own
arithmetic) or a plain property (a count, an exception type and the name in its message).
"""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import gcrflinalg as g
import solvers
from gcrflinalg import (GeneralLevel, GridGCRF, GridPottsGCRF, LowRankGCRF, LowRankPottsGCRF,
                        MultiResGCRF, PottsLevel, VideoGCRF)
from gcrflinalg.operator import DENSE_MAX_SIZE


def _grid(rng, batch=(), L=2, H=4, W=4, lam=2.0, nb=4):
    K = {4: 2, 8: 4, 12: 6}[nb]
    return GridGCRF(rng.uniform(-0.1, 0.1, batch + (K, L, L, H, W)), lam, nb)


# ---------------------------------------------------------------- 1. Potts split honours maxiter
def _hard_potts(rng):
    w = rng.uniform(0, 1, (2, 12, 12))
    dense = GridPottsGCRF(w, 1.0, 3).weight_matrix()
    ev = np.linalg.eigvalsh(np.asarray(dense.toarray() if sp.issparse(dense) else dense))
    lam = 1.02 * max(ev[-1], -2 * ev[0])  # just above the bound of section 6: slow CG
    return GridPottsGCRF(w, lam, 3)


@pytest.mark.parametrize("method", ["potts_split", "auto"])
@pytest.mark.parametrize("maxiter", [0, 1, 2, 7, 50])
def test_potts_split_honours_maxiter(method, maxiter):
    rng = np.random.default_rng(1)
    op = _hard_potts(rng)
    b = rng.standard_normal((3, 12, 12))
    res = g.solve(op, b, method, rtol=1e-14, maxiter=maxiter)
    assert res.iterations <= maxiter
    assert not res.converged and res.info == max(res.iterations, 1)
    assert res.residual_norms.shape[0] == res.iterations + 1
    # the reported residual is the true one of the returned x
    assert np.isclose(res.residual_norms[-1], np.linalg.norm(b - op.matvec(res.x)), rtol=1e-8)


# ---------------------------------------------------------------- 2. to_dense counts the batch
def test_to_dense_guard_counts_the_batch():
    # 4 systems of N = 8192 (4 x 512 MiB) must be refused; one system of that size is allowed
    w = np.zeros((4, 2, 64, 64))
    op = GridPottsGCRF(w, 1.0, 2)  # N = 2 * 64 * 64 = 8192
    assert op.size == DENSE_MAX_SIZE
    with pytest.raises(MemoryError, match=r"4 x 8192 x 8192"):
        op.to_dense()
    small = GridPottsGCRF(np.zeros((3, 2, 3, 3)), 1.5, 2)
    np.testing.assert_array_equal(small.to_dense(force=True), 1.5 * np.broadcast_to(np.eye(18), (3, 18, 18)))


# ---------------------------------------------------------------- 3. options checked for every path
BAD_OPTIONS = [
    (dict(rtol=-1.0), ValueError, "rtol"), (dict(rtol=np.nan), ValueError, "rtol"),
    (dict(atol=-1e-3), ValueError, "atol"), (dict(maxiter=-5), ValueError, "maxiter"),
    (dict(maxiter=2.7), TypeError, "maxiter"), (dict(maxiter=True), TypeError, "maxiter"),
    (dict(rtol="1e-5"), TypeError, "rtol"), (dict(atol=None), TypeError, "atol"),
    (dict(rtol=np.array([1e-5, 1e-5])), TypeError, "rtol"),
]


def _method_cases():
    rng = np.random.default_rng(0)
    grid = _grid(rng)
    potts = GridPottsGCRF(rng.uniform(0, 0.1, (2, 4, 4)), 1.0, 3)
    lowrank = LowRankGCRF(rng.standard_normal((2, 2, 3, 3)), 1.0)
    lrp = LowRankPottsGCRF(0.1 * rng.standard_normal((2, 3, 3)), 1.0, 3)
    video = VideoGCRF(rng.standard_normal((2, 2, 1, 2, 2)), 0.1 * rng.standard_normal((2, 1, 1, 2, 2)), 1.0)
    multi = MultiResGCRF([GeneralLevel(rng.uniform(-.1, .1, (2, 2, 2, 4, 4))),
                          GeneralLevel(rng.uniform(-.1, .1, (2, 2, 2, 2, 2)))],
                         [rng.uniform(-.1, .1, (2, 2, 4, 4))], 2.0)
    return [("grid", grid, m) for m in ("direct", "reduced_cg", "auto", "cg", "gmres", "jacobi")] + [
        ("grid_potts", potts, m) for m in ("cg", "potts_split", "auto", "direct")] + [
        ("lowrank", lowrank, m) for m in ("direct", "auto")] + [
        ("lowrank_potts", lrp, m) for m in ("direct", "auto")] + [
        ("video", video, m) for m in ("direct", "auto")] + [("multires", multi, "direct")]


@pytest.mark.parametrize("name,op,method", _method_cases(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("options,error,word", BAD_OPTIONS, ids=lambda v: repr(v)[:20])
def test_bad_solver_options_are_rejected_on_every_path(name, op, method, options, error, word):
    b = np.ones(op.batch_shape + (op.size,))
    with pytest.raises(error, match=word):
        g.solve(op, b, method, **options)
    with pytest.raises(error, match=word):
        g.adjoint_solve(op, b, method=method, **options)


@pytest.mark.parametrize("name,op,method", _method_cases(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("options", [dict(rtol=np.inf), dict(atol=np.inf), dict(rtol=np.inf, atol=np.inf)],
                         ids=lambda v: ",".join(v))
def test_infinite_tolerance_converges_at_once_on_every_path(name, op, method, options):
    """As in SciPy, an infinite tolerance is valid: every system has converged before any step."""
    rng = np.random.default_rng(1)
    b = rng.standard_normal(op.batch_shape + (op.size,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = g.solve(op, b, method, **options)
    assert np.all(res.converged) and np.all(np.isfinite(res.x)) and np.all(np.asarray(res.info) == 0)
    if method not in ("direct", "auto"):
        assert np.all(np.asarray(res.iterations) == 0), res.iterations


@pytest.mark.parametrize("solver", ["cg", "gmres", "jacobi", "gauss_seidel"])
def test_infinite_tolerance_with_a_zero_rhs(solver):
    # rtol = inf times ||b|| = 0 must not become NaN
    res = getattr(solvers, solver)(np.diag([2.0, 3.0]), np.zeros((2, 2)), rtol=np.inf)
    assert np.all(res.converged) and np.array_equal(res.x, np.zeros((2, 2)))


@pytest.mark.parametrize("atol", ["legacy", None, "1e-5", [1e-5]])
def test_invalid_tolerance_is_a_value_error_and_a_type_error(atol):
    """SciPy's contract (ValueError) and ours (TypeError for a wrong type) both hold."""
    for solver in (solvers.cg, solvers.gmres):
        with pytest.raises(ValueError, match="atol"):
            solver(np.eye(2), np.ones(2), atol=atol)
        with pytest.raises(TypeError, match="atol"):
            solver(np.eye(2), np.ones(2), atol=atol)
    assert issubclass(solvers.OptionTypeError, ValueError) and issubclass(solvers.OptionTypeError, TypeError)


def test_rtol_as_0d_array_like_scipy():
    rng = np.random.default_rng(0)
    op = _grid(rng)
    b = rng.standard_normal(op.size)
    for method in ("direct", "reduced_cg", "cg"):
        res = g.solve(op, b, method, rtol=np.array(1e-10), maxiter=np.int64(500))
        assert res.converged
        np.testing.assert_allclose(res.x, np.linalg.solve(op.to_dense(), b), rtol=1e-8, atol=1e-10)


def test_direct_exact_solve_converges_with_rtol_zero():
    op = LowRankGCRF(np.zeros((1, 1, 2, 2)), 2.0)  # M = 2 I, exact in floating point
    res = g.solve(op, np.ones(4), "direct", rtol=0.0)
    assert res.converged and np.array_equal(res.x, np.full(4, 0.5))


def test_solvers_check_options_is_public_and_shared():
    assert solvers.check_options(np.array(1e-3), 0, np.int64(3)) == (1e-3, 0.0, 3)
    with pytest.raises(TypeError, match="rtol"):
        solvers.cg(np.eye(2), np.ones(2), rtol="1e-5")
    with pytest.raises(TypeError, match="maxiter"):
        solvers.gmres(np.eye(2), np.ones(2), maxiter=2.0)


# ---------------------------------------------------------------- 4. lam types
@pytest.mark.parametrize("lam", [True, np.bool_(True), "2.0", None, np.array(["2"])])
def test_lam_of_wrong_type_is_a_type_error(lam):
    for build in (lambda lam: GridGCRF(np.zeros((2, 1, 1, 2, 2)), lam),
                  lambda lam: GridPottsGCRF(np.zeros((2, 2, 2)), lam, 2),
                  lambda lam: LowRankGCRF(np.zeros((1, 1, 2, 2)), lam),
                  lambda lam: LowRankPottsGCRF(np.zeros((1, 2, 2)), lam, 2),
                  lambda lam: VideoGCRF(np.zeros((2, 1, 1, 2, 2)), np.zeros((2, 1, 1, 2, 2)), lam)):
        with pytest.raises(TypeError, match="lam") as err:
            build(lam)
        assert type(lam).__name__ in str(err.value) or "dtype" in str(err.value)


def test_complex_lam_is_a_value_error_naming_lam():
    with pytest.raises(ValueError, match="lam.*complex"):
        GridGCRF(np.zeros((2, 1, 1, 2, 2)), 1 + 0j)


# ---------------------------------------------------------------- 5. neighbourhoods
@pytest.mark.parametrize("nb", [4.5, "4", 4.0, True, None, 6])
def test_neighbourhood_must_be_4_8_or_12(nb):
    with pytest.raises(ValueError, match="4, 8, 12"):
        GridGCRF(np.zeros((2, 1, 1, 3, 3)), 1.0, nb)
    with pytest.raises(ValueError, match="4, 8, 12"):
        GridPottsGCRF(np.zeros((2, 3, 3)), 1.0, 2, nb)
    with pytest.raises(ValueError, match="4, 8, 12"):
        MultiResGCRF([GeneralLevel(np.zeros((2, 1, 1, 2, 2)), nb), GeneralLevel(np.zeros((2, 1, 1, 1, 1)))],
                     [np.zeros((1, 1, 2, 2))], 1.0)
    with pytest.raises(ValueError, match="4, 8, 12"):
        MultiResGCRF([PottsLevel(np.zeros((2, 2, 2)), nb)], [], 1.0, num_labels=2)


# ---------------------------------------------------------------- 6. empty axes
@pytest.mark.parametrize("build,axis", [
    (lambda: GridGCRF(np.zeros((2, 1, 1, 0, 3)), 1.0), "H"),
    (lambda: GridGCRF(np.zeros((2, 1, 1, 3, 0)), 1.0), "W"),
    (lambda: GridGCRF(np.zeros((2, 0, 0, 3, 3)), 1.0), "L"),
    (lambda: GridPottsGCRF(np.zeros((2, 0, 3)), 1.0, 2), "H"),
    (lambda: LowRankGCRF(np.zeros((0, 1, 2, 2)), 1.0), "D"),
    (lambda: LowRankPottsGCRF(np.zeros((1, 2, 0)), 1.0, 2), "W"),
    (lambda: VideoGCRF(np.zeros((2, 0, 1, 2, 2)), np.zeros((2, 1, 1, 2, 2)), 1.0), "Ds"),
    (lambda: VideoGCRF(np.zeros((0, 1, 1, 2, 2)), np.zeros((0, 1, 1, 2, 2)), 1.0), "frame"),
    (lambda: MultiResGCRF([GeneralLevel(np.zeros((2, 1, 1, 0, 2)))], [], 1.0), "H"),
])
def test_empty_image_label_or_rank_axis_is_a_value_error(build, axis):
    with pytest.raises(ValueError, match=axis):
        build()


def _empty_batch_ops():
    z = np.zeros
    return [
        ("grid", GridGCRF(z((0, 2, 2, 2, 3, 3)), 1.0), ("direct", "reduced_cg", "auto", "cg", "pcg",
                                                         "gmres", "jacobi", "gauss_seidel")),
        ("grid_potts", GridPottsGCRF(z((0, 2, 3, 3)), 1.0, 2), ("direct", "auto", "cg", "gauss_seidel")),
        ("lowrank", LowRankGCRF(z((0, 2, 2, 3, 3)), 1.0), ("direct", "auto", "cg", "gauss_seidel")),
        ("lowrank_potts", LowRankPottsGCRF(z((0, 2, 3, 3)), 1.0, 2), ("direct", "auto", "cg", "jacobi")),
        ("video", VideoGCRF(z((0, 2, 1, 1, 2, 2)), z((0, 2, 1, 1, 2, 2)), 1.0), ("direct", "auto", "cg", "gmres")),
        ("multires", MultiResGCRF([GeneralLevel(z((0, 2, 1, 1, 2, 2)))], [], 1.0), ("direct", "cg", "jacobi")),
    ]


@pytest.mark.parametrize("name,op,methods", _empty_batch_ops(), ids=lambda v: v if isinstance(v, str) else "")
def test_empty_batch_gives_an_empty_result(name, op, methods):
    assert op.batch_shape[0] == 0
    for layout in (op.batch_shape + op.vector_shape, op.batch_shape + (op.size,)):
        b = np.zeros(layout)
        assert op.matvec(b).shape == layout
        for method in methods:
            res = g.solve(op, b, method)
            assert res.x.shape == layout and np.all(res.converged)
            assert np.asarray(res.converged).shape == op.batch_shape


@pytest.mark.parametrize("solver", ["cg", "gmres", "jacobi", "gauss_seidel"])
def test_solvers_on_an_empty_batch(solver):
    A = np.array([[2.0, -1.0], [-1.0, 2.0]])
    res = getattr(solvers, solver)(A, np.zeros((0, 2)))
    assert res.x.shape == (0, 2) and np.asarray(res.converged).shape == (0,)


def test_video_without_temporal_rank_is_block_diagonal():
    rng = np.random.default_rng(3)
    S = rng.standard_normal((3, 2, 1, 2, 2))
    op = VideoGCRF(S, np.zeros((3, 0, 1, 2, 2)), 1.5)
    blocks = [S[v].reshape(2, 4).T @ S[v].reshape(2, 4) + 1.5 * np.eye(4) for v in range(3)]
    dense = np.zeros((12, 12))
    for v in range(3):
        dense[4 * v:4 * v + 4, 4 * v:4 * v + 4] = blocks[v]
    b = rng.standard_normal(12)
    for method in ("direct", "cg", "auto"):
        np.testing.assert_allclose(g.solve(op, b, method, rtol=1e-12).x, np.linalg.solve(dense, b),
                                   rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------- 7. non-finite matrices in solvers
def _nan_matrix():
    A = np.array([[4.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 4.0]])
    A[0, 1] = np.nan
    return A


@pytest.mark.parametrize("solver", ["cg", "gmres", "jacobi", "gauss_seidel"])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_matrix_is_a_value_error(solver, kind, bad):
    A = _nan_matrix()
    A[0, 1] = bad
    A = A if kind == "dense" else sp.csr_matrix(A)
    with pytest.raises(ValueError, match="NaN or Inf"):
        getattr(solvers, solver)(A, np.ones(3))


class _Custom:
    """A matrix-free operator with a NaN entry: only its products show it."""

    def __init__(self, A):
        self.A, self.shape, self.dtype = A, A.shape, A.dtype

    def matvec(self, X):
        return X @ self.A.T

    def diagonal(self):
        return np.diag(self.A).copy()


@pytest.mark.parametrize("solver", ["cg", "gmres", "jacobi"])
@pytest.mark.parametrize("wrap", ["linop", "custom"])
def test_nonfinite_products_are_a_breakdown(solver, wrap):
    A = _nan_matrix()
    if wrap == "linop":
        if solver == "jacobi":
            pytest.skip("jacobi needs a diagonal, which a LinearOperator lacks")
        op = spla.aslinearoperator(A)
    else:
        op = _Custom(A)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN arithmetic inside the user's product
        res = getattr(solvers, solver)(op, np.ones(3))
    assert res.info < 0 and not res.converged


# ---------------------------------------------------------------- 8. low-rank Potts at the bound
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(20))
def test_lowrank_potts_at_the_bound_is_not_positive_definite(seed, dtype):
    psi = np.random.default_rng(seed).standard_normal((3, 4, 4)).astype(dtype)
    bound = np.linalg.norm(psi.astype(np.float64).reshape(3, -1), 2) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for lam in (bound, bound * (1 - 1e-12), np.nextafter(bound, 0)):
            op = LowRankPottsGCRF(psi, lam, 3)
            with pytest.raises(g.NotPositiveDefiniteError, match="lam"):
                op.check_positive_definite()
        LowRankPottsGCRF(psi, 1.01 * bound, 3).check_positive_definite()


# ---------------------------------------------------------------- 9. ownership of the parameters
def _builds(rng):
    pw = rng.uniform(-0.1, 0.1, (2, 2, 2, 3, 3))
    wt = rng.uniform(0, 0.1, (2, 3, 3))
    emb = 0.3 * rng.standard_normal((2, 2, 3, 3))
    psi = 0.1 * rng.standard_normal((2, 3, 3))
    S, T = rng.standard_normal((2, 1, 1, 2, 2)), 0.1 * rng.standard_normal((2, 1, 1, 2, 2))
    cross = rng.uniform(-0.1, 0.1, (2, 2, 3, 3))
    coarse = rng.uniform(-0.1, 0.1, (2, 2, 2, 2, 2))
    lam = np.array(2.0)
    return [
        ("grid", (pw, lam), lambda pw, lam: GridGCRF(pw, lam)),
        ("grid_potts", (wt, lam), lambda wt, lam: GridPottsGCRF(wt, lam, 3)),
        ("lowrank", (emb, lam), lambda e, lam: LowRankGCRF(e, lam)),
        ("lowrank_potts", (psi, lam), lambda p, lam: LowRankPottsGCRF(p, lam, 3)),
        ("video", (S, T, lam), lambda S, T, lam: VideoGCRF(S, T, lam)),
        ("multires", (pw, coarse, cross, lam),
         lambda a, c, x, lam: MultiResGCRF([GeneralLevel(a), GeneralLevel(c)], [x], lam)),
    ]


@pytest.mark.parametrize("method", ["direct", "auto", "cg"])
@pytest.mark.parametrize("index", range(6))
def test_results_describe_the_callers_arrays_as_they_are_at_the_call(index, method):
    """A writeable parameter array is viewed, not copied: after the caller writes it, products,
    certificates and solves (cached factors included) describe the new values."""
    rng = np.random.default_rng(index)
    name, params, build = _builds(rng)[index]
    flags = [p.flags.writeable for p in params]
    op = build(*params)
    assert op.watches_parameters
    b = rng.standard_normal(op.size)
    x1 = g.solve(op, b, method, rtol=1e-12).x  # caches the certificate and any factor
    np.testing.assert_allclose(x1, np.linalg.solve(op.to_dense(), b), rtol=1e-8, atol=1e-10)
    for p in params[:-1]:  # not lam: one value per system, always copied
        p *= 1.5  # the caller reuses its buffers
    originals = [p.copy() for p in params]
    assert [p.flags.writeable for p in params] == flags  # the caller's flags are untouched
    fresh = build(*[p.copy() for p in params])
    dense = fresh.to_dense()
    np.testing.assert_allclose(op.to_dense(), dense, rtol=1e-14, atol=0)  # products: the new values
    x2 = g.solve(op, b, method, rtol=1e-12).x  # the certificate and cached factors are redone
    np.testing.assert_allclose(x2, np.linalg.solve(dense, b), rtol=1e-8, atol=1e-10)
    assert not np.allclose(x2, x1, rtol=1e-6, atol=0)
    for p, o in zip(params, originals):
        np.testing.assert_array_equal(p, o)  # the operator never wrote them


def test_a_change_that_breaks_positive_definiteness_is_caught_at_the_next_solve():
    """The certificate is redone after the caller writes its array: lam no longer above the
    bound on the Potts low-rank form raises, as for a fresh operator."""
    rng = np.random.default_rng(3)
    psi = rng.standard_normal((4, 3, 3)) * 0.1
    op = g.LowRankPottsGCRF(psi, 1.0, 3)
    b = rng.standard_normal(op.size)
    g.solve(op, b)
    psi *= 10.0
    with pytest.raises(g.NotPositiveDefiniteError):
        g.solve(op, b)


@pytest.mark.parametrize("neighbourhood", [4, 8])
def test_column_products_describe_the_blocks_as_they_are_at_the_call(neighbourhood):
    # matvec_columns keeps a pixel-major copy of the blocks: a write to the viewed array must
    # reach it (and the SLQ log-determinant that multiplies through it)
    rng = np.random.default_rng(11)
    K = {4: 2, 8: 4}[neighbourhood]
    pw = rng.uniform(-0.1, 0.1, (K, 3, 3, 6, 7))
    op = g.GridGCRF(pw, 2.0, neighbourhood=neighbourhood)
    V = rng.standard_normal((op.size, 3))
    op.matvec_columns(V)
    first = g.logdet(op, method="slq", num_probes=4, degree=op.size, rng=0).value
    pw *= 1.5
    np.testing.assert_allclose(op.matvec_columns(V), op.to_dense() @ V, rtol=1e-12, atol=1e-12)
    fresh = g.GridGCRF(pw.copy(), 2.0, neighbourhood=neighbourhood)
    again = g.logdet(op, method="slq", num_probes=4, degree=op.size, rng=0).value
    np.testing.assert_allclose(again, g.logdet(fresh, method="slq", num_probes=4, degree=op.size, rng=0).value,
                               rtol=1e-10)
    assert abs(again - first) > 1e-6


def test_nan_written_after_construction_is_caught_at_the_next_solve():
    pw = np.random.default_rng(0).uniform(-0.1, 0.1, (2, 2, 2, 3, 3))
    op = GridGCRF(pw, 2.0)
    g.solve(op, np.ones(op.size))
    pw[0, 0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        g.solve(op, np.ones(op.size))


def test_read_only_input_is_viewed_and_public_parameters_are_read_only():
    pw = np.random.default_rng(0).uniform(-0.1, 0.1, (2, 2, 2, 3, 3))
    pw.flags.writeable = False
    op = GridGCRF(pw, 2.0)
    assert np.shares_memory(op.pairwise, pw)  # no copy of a frozen input
    assert not op.watches_parameters  # nobody can write it: nothing to re-check
    writeable = np.ones((2, 2, 2, 3, 3)) * 0.01
    op2 = GridGCRF(writeable, 2.0)
    assert np.shares_memory(op2.pairwise, writeable)  # a writeable C-contiguous input is viewed
    assert op2.watches_parameters
    assert writeable.flags.writeable
    strided = (np.ones((2, 2, 2, 3, 6)) * 0.01)[..., ::2]
    op3 = GridGCRF(strided, 2.0)
    assert not np.shares_memory(op3.pairwise, strided)  # not C-contiguous: copied, owned
    assert not op3.watches_parameters
    for arr in (op.pairwise, op2.pairwise, op3.pairwise):
        with pytest.raises(ValueError):
            arr[...] = 0.0


def test_video_gradients_of_an_empty_batch():
    """Found by the property tests: products and gradients of a video operator with an empty batch
    (and no temporal rank) return empty arrays of the right shapes."""
    S, T = np.zeros((0, 2, 3, 1, 2, 2)), np.zeros((0, 2, 0, 1, 2, 2))
    op = g.VideoGCRF(S, T, 1.0)
    x = np.zeros((0, 2, 1, 2, 2))
    grads = op.parameter_gradients(x, x)
    assert grads["spatial"].shape == S.shape and grads["temporal"].shape == T.shape
    assert op.matvec(x).shape == x.shape


@pytest.mark.parametrize("method", ["direct", "auto", "cg"])
@pytest.mark.parametrize("index", range(6))
def test_a_write_before_the_first_solve_is_seen_by_it(index, method):
    """Between construction and the first solve the caller writes its arrays: that solve (and the
    next) describes the new values, whether or not the operator had computed anything yet."""
    rng = np.random.default_rng(100 + index)
    name, params, build = _builds(rng)[index]
    op = build(*params)
    for p in params[:-1]:
        p *= 1.25
    dense = build(*[p.copy() for p in params]).to_dense()
    b = rng.standard_normal(op.size)
    for _ in range(2):
        x = g.solve(op, b, method, rtol=1e-12).x
        np.testing.assert_allclose(x, np.linalg.solve(dense, b), rtol=1e-8, atol=1e-10)
