"""The red-black reduction of the 4-neighbourhood grid (``method="reduced_cg"``): colour storage,
the products with ``C`` and ``C^T`` against the blocks of a dense assembly, solves against
numpy.linalg.solve, gradients against finite differences, bad input."""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from gcrflinalg.forms.grid import redblack as rb
from gcrflinalg.backend import to_host
from gcrflinalg.forms.grid import GridGCRF, GridPottsGCRF
from operator_checks import fd_check_gradients
from solvers import NotPositiveDefiniteError
from test_grid import dense_batched, dense_general, random_pairwise, random_weights

SIZES = [(5, 7), (4, 6), (1, 5), (6, 1), (3, 3), (2, 2)]


def colour_indices(H, W, L):
    """Flat indices (label-major, docs/design.md) of the red and of the black unknowns."""
    lab, i, j = np.meshgrid(np.arange(L), np.arange(H), np.arange(W), indexing="ij")
    flat = (lab * H * W + i * W + j).ravel()
    red = ((i + j) % 2 == 0).ravel()
    return flat[red], flat[~red]


def colour_vector(rng, shape, H, W, red):
    """A random colour-storage vector: a full image through to_red/to_black (pads zero)."""
    v = rng.standard_normal(shape + (H, W))
    return v, (rb.to_red(v) if red else rb.to_black(v))


def test_colour_storage_round_trip(rng):
    for H, W in SIZES:
        v = rng.standard_normal((2, 3, 4, H, W))
        red, black = rb.to_red(v), rb.to_black(v)
        ha, wp, F = rb.colour_dims(H, W)
        assert red.shape == black.shape == (2, 3, 2, 4, F)
        np.testing.assert_array_equal(rb.from_colours(red, black, H, W), v)
        # every pixel lands in exactly one colour; the pads hold zeros
        assert np.count_nonzero(red[0, 0]) + np.count_nonzero(black[0, 0]) == 4 * H * W


@pytest.mark.parametrize("L", [1, 2, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_products_match_dense_blocks(rng, L, dtype):
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for H, W in SIZES:
        pw = random_pairwise(rng, (2,), 4, L, H, W).astype(dtype)
        G = rb.red_black_blocks(pw)
        _, wp, F = rb.colour_dims(H, W)
        cls, shift = rb.neighbour_table(wp)
        ri, bi = colour_indices(H, W, L)
        C = [dense_general(pw[k].astype(np.float64), 0.0, 4)[np.ix_(ri, bi)] for k in range(2)]
        xf, xr = colour_vector(rng, (3, 2, L), H, W, red=True)
        yf, yb = colour_vector(rng, (3, 2, L), H, W, red=False)
        xr, yb = xr.astype(dtype), yb.astype(dtype)
        base = rb.to_black(rng.standard_normal((3, 2, L, H, W))).astype(dtype)
        # y = a C^T x_r + c base, per system coefficients
        a, c = np.array([1.5, -0.5], dtype), np.array([0.0, 2.0], dtype)
        out = rb.black_product(G, xr, scale=a, base=base, base_scale=c, cls=cls, shift=shift)
        got = rb.from_colours(np.zeros_like(out), out, H, W).reshape(3, 2, -1)[..., bi]
        for e in range(3):
            for k in range(2):
                ref = a[k] * C[k].T @ xf[e, k].reshape(-1)[ri] + c[k] * rb.from_colours(
                    np.zeros_like(base[e, k]), base[e, k], H, W).reshape(-1)[bi]
                np.testing.assert_allclose(got[e, k], ref, rtol=tol, atol=tol)
        assert np.all(rb.to_black(rb.from_colours(np.zeros_like(out), out, H, W)) == out)  # pads zero
        # out = s x_r + t C y_b + u base
        s, t, u = np.array([2.0, 0.5], dtype), np.array([-1.0, 1.0], dtype), np.array([0.5, 0.0], dtype)
        out = rb.red_product(G, yb, x=xr, x_scale=s, scale=t, base=xr, base_scale=u, cls=cls, shift=shift)
        got = rb.from_colours(out, np.zeros_like(out), H, W).reshape(3, 2, -1)[..., ri]
        for e in range(3):
            for k in range(2):
                xk = xf[e, k].reshape(-1)[ri]
                ref = s[k] * xk + t[k] * C[k] @ yf[e, k].reshape(-1)[bi] + u[k] * xk
                np.testing.assert_allclose(got[e, k], ref, rtol=tol, atol=tol)
        assert np.all(rb.to_red(rb.from_colours(out, np.zeros_like(out), H, W)) == out)


def test_array_code_matches_kernels(rng, monkeypatch):
    """The array-module code that serves CuPy, run on NumPy, equals the Numba kernels."""
    import gcrflinalg.forms.grid.kernels as kernels

    for H, W in SIZES:
        pw = random_pairwise(rng, (2,), 4, 3, H, W)
        G = rb.red_black_blocks(pw)
        _, wp, F = rb.colour_dims(H, W)
        cls, shift = rb.neighbour_table(wp)
        x = rb.to_red(rng.standard_normal((2, 2, 3, H, W)))
        y = rb.to_black(rng.standard_normal((2, 2, 3, H, W)))
        expect = (rb.black_product(G, x, scale=0.5, base=y, base_scale=2.0, cls=cls, shift=shift),
                  rb.red_product(G, y, x=x, x_scale=3.0, scale=-1.0, base=x, base_scale=0.5, cls=cls,
                                 shift=shift))
        b = rng.standard_normal((2, 3, H, W))
        op = GridGCRF(pw, np.array([2.0, 3.0]))
        x_sol = gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-12).x
        monkeypatch.setattr(kernels, "_use_numba", lambda arr: False)
        np.testing.assert_array_equal(rb.red_black_blocks(pw), G)
        got = (rb.black_product(G, x, scale=0.5, base=y, base_scale=2.0, cls=cls, shift=shift),
               rb.red_product(G, y, x=x, x_scale=3.0, scale=-1.0, base=x, base_scale=0.5, cls=cls,
                              shift=shift))
        for g, e in zip(got, expect):
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
        op = GridGCRF(pw, np.array([2.0, 3.0]))
        np.testing.assert_allclose(gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-12).x, x_sol,
                                   rtol=1e-9, atol=1e-9)
        monkeypatch.undo()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reduced_cg_matches_dense(xp, rng, dtype):
    tol = 1e-8 if dtype == np.float64 else 1e-4
    for (H, W), L in zip(SIZES, [3, 2, 5, 1, 4, 2]):
        pw = random_pairwise(rng, (2,), 4, L, H, W, scale=0.3 / L).astype(dtype)
        lam = np.array([1.5, 3.0])
        b = rng.standard_normal((3, 2, L, H, W)).astype(dtype)  # 3 right-hand sides per system
        op = GridGCRF(xp.asarray(pw), xp.asarray(lam))
        res = gcrflinalg.solve(op, xp.asarray(b), method="reduced_cg", rtol=1e-10 if dtype == np.float64 else 1e-5)
        assert res.method == "reduced_cg" and res.x.shape == b.shape and res.x.dtype == dtype
        assert np.all(res.converged) and np.all(res.info == 0)
        M = dense_batched(dense_general, pw, lam, 4)
        ref = np.linalg.solve(M[None], b.reshape(3, 2, -1, 1).astype(np.float64))[..., 0]
        np.testing.assert_allclose(to_host(res.x).reshape(ref.shape), ref, rtol=tol, atol=tol)
        # the last history row is the true residual of the returned x
        true = np.linalg.norm(b.reshape(3, 2, -1) - np.einsum("kij,ekj->eki", M, to_host(res.x).reshape(ref.shape)),
                              axis=-1)
        np.testing.assert_allclose(res.residual_norms[-1], true, rtol=1e-3, atol=1e-6)


def test_reduced_cg_takes_about_half_the_iterations(rng):
    H, W, L = 12, 13, 3
    pw = random_pairwise(rng, (), 4, L, H, W, scale=0.1)  # eigenvalues of M in about [0.3, 1.7]
    op = GridGCRF(pw, 1.0)
    b = rng.standard_normal((L, H, W))
    full = gcrflinalg.solve(op, b, method="cg", rtol=1e-8)
    red = gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-8)
    assert full.converged and red.converged
    assert red.iterations <= full.iterations // 2 + 2, (red.iterations, full.iterations)
    np.testing.assert_allclose(red.x, full.x, rtol=1e-6, atol=1e-7)


def test_float32_meets_the_tolerance_on_the_true_residual(rng):
    from studies.timing_grid import make_problem

    weights, pairwise, b = make_problem(30, 40, 5)
    A = GridGCRF(pairwise, 10.0).to_sparse()
    op = GridGCRF(pairwise.astype(np.float32), 10.0)
    res = gcrflinalg.solve(op, b.astype(np.float32), method="reduced_cg", rtol=1e-6)
    rel = np.linalg.norm(b.ravel() - A @ res.x.ravel().astype(np.float64)) / np.linalg.norm(b)
    assert res.converged and rel <= 1.05e-6, rel


def test_x0_callback_auto_and_adjoint(rng):
    H, W, L = 5, 6, 2
    pw = random_pairwise(rng, (), 4, L, H, W)
    op = GridGCRF(pw, 1.2)
    b = rng.standard_normal((L, H, W))
    M = dense_general(pw, 1.2, 4)
    x_ref = np.linalg.solve(M, b.ravel())
    x0 = x_ref.reshape(b.shape) + 1e-3 * rng.standard_normal(b.shape)
    x0_copy, b_copy, pw_copy = x0.copy(), b.copy(), pw.copy()
    seen = []
    res = gcrflinalg.solve(op, b, method="reduced_cg", x0=x0, rtol=1e-12, callback=lambda x: seen.append(x.copy()))
    np.testing.assert_allclose(res.x.ravel(), x_ref, atol=1e-10)
    assert seen and all(s.shape == (op.size,) for s in seen)  # flat iterates, as the other methods give
    # iterates converge to the solution
    assert np.linalg.norm(seen[-1].ravel() - x_ref) < np.linalg.norm(seen[0].ravel() - x_ref)
    np.testing.assert_array_equal(x0, x0_copy)
    np.testing.assert_array_equal(b, b_copy)
    np.testing.assert_array_equal(pw, pw_copy)
    # a warm start needs fewer steps than a cold one
    cold = gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-12)
    assert res.iterations < cold.iterations
    # "auto" picks the reduction for the 4-neighbourhood general form
    assert gcrflinalg.solve(op, b, method="auto").method == "reduced_cg"
    assert gcrflinalg.solve(GridGCRF(random_pairwise(rng, (), 8, L, H, W), 1.2, 8), b, method="auto").method == "cg"
    g = gcrflinalg.adjoint_solve(op, b, method="reduced_cg", rtol=1e-12)
    np.testing.assert_allclose(g.x.ravel(), np.linalg.solve(M.T, b.ravel()), atol=1e-10)


def test_gradients_match_finite_differences(rng):
    H, W, L = 4, 5, 3
    pw = random_pairwise(rng, (2,), 4, L, H, W)
    lam = np.array([2.0, 2.5])
    b = rng.standard_normal((2, L, H, W))

    def make(params, lm):
        return GridGCRF(params[0], lm)

    grads = fd_check_gradients(make, [pw], lam, b, method="reduced_cg", rng=rng, n_probe=6)
    assert grads["pairwise"].shape == pw.shape


def test_iteration_limit_is_reported(rng):
    pw = random_pairwise(rng, (), 4, 3, 8, 9, scale=0.1)
    op = GridGCRF(pw, 1.0)
    b = rng.standard_normal((3, 8, 9))
    res = gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-12, maxiter=2)
    assert not res.converged and res.info > 0 and res.iterations == 2
    assert res.residual_norms[-1] > 1e-12 * np.linalg.norm(b)


def test_bad_input(rng):
    H, W, L = 4, 5, 2
    b = rng.standard_normal((L, H, W))
    with pytest.raises(ValueError, match="neighbourhood=4"):
        gcrflinalg.solve(GridGCRF(random_pairwise(rng, (), 8, L, H, W), 1.0, 8), b, method="reduced_cg")
    with pytest.raises(ValueError, match="reduced_cg"):
        gcrflinalg.solve(GridPottsGCRF(random_weights(rng, (), 4, H, W), 1.0, L), b, method="reduced_cg")
    op = GridGCRF(random_pairwise(rng, (), 4, L, H, W), 1.0)
    with pytest.raises(TypeError, match="unexpected options"):
        gcrflinalg.solve(op, b, method="reduced_cg", restart=5)
    with pytest.raises(ValueError):
        gcrflinalg.solve(op, np.where(b > 1, np.nan, b), method="reduced_cg")
    with pytest.raises(ValueError):
        gcrflinalg.solve(op, b, method="reduced_cg", rtol=-1.0)
    # an indefinite system: the Lanczos check (check_pd) or CG on S (p^T S p <= 0) names lam
    big = 2.0 * np.ones((2, L, L, H, W))
    bad = GridGCRF(big, 1.0)
    with pytest.raises(NotPositiveDefiniteError, match="lam"):
        gcrflinalg.solve(bad, b, method="reduced_cg")
    with pytest.raises(NotPositiveDefiniteError, match="lam"):
        gcrflinalg.solve(GridGCRF(big, 1.0), b, method="reduced_cg", check_pd=False)


def test_zero_right_hand_side_and_mixed_batch(rng):
    H, W, L = 3, 4, 2
    pw = random_pairwise(rng, (2,), 4, L, H, W)
    op = GridGCRF(pw, np.array([1.0, 2.0]))
    b = rng.standard_normal((2, L, H, W))
    b[1] = 0.0
    res = gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-10)
    assert np.all(res.converged) and np.all(res.x[1] == 0)
    x_ref = np.linalg.solve(dense_general(pw[0], 1.0, 4), b[0].ravel())
    np.testing.assert_allclose(res.x[0].ravel(), x_ref, atol=1e-9)


def test_red_black_kernels_run_serially_below_the_parallel_threshold(monkeypatch, rng):
    """Like the general product, the red-black kernels of a small grid run on one thread (a parallel
    region on a busy machine waits for every thread to be scheduled); large ones use the automatic
    count."""
    from gcrflinalg.forms.grid import kernels
    from solvers.backend import array_kernels_on

    if array_kernels_on():
        pytest.skip("threads of the compiled kernels: the array code (GCRFLINALG_ARRAY_KERNELS=1) opens no "
                    "parallel region")
    seen = []
    real = rb.threads_policy.parallel_kernel

    def spy(threads=None):
        seen.append(threads)
        return real(threads)

    monkeypatch.setattr(rb.threads_policy, "parallel_kernel", spy)
    H, W, L = 6, 7, 3
    b = rng.standard_normal((L, H, W))
    op = GridGCRF(random_pairwise(rng, (), 4, L, H, W), 2.0, 4)
    small = gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-10)
    assert seen and all(t == 1 for t in seen), seen
    seen.clear()
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ENTRIES", 0)
    frozen = op.pairwise.copy()
    frozen.flags.writeable = False  # not watched: no fingerprint scan at the solve
    op = GridGCRF(frozen, 2.0, 4)
    seen.clear()  # the construction's scan of the parameters chooses its own threads
    large = gcrflinalg.solve(op, b, method="reduced_cg", rtol=1e-10)
    assert seen and all(t is None for t in seen), seen
    np.testing.assert_allclose(large.x, small.x, rtol=1e-9, atol=1e-12)
