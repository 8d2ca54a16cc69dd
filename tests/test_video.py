"""The spatio-temporal (video) G-CRF against independent references (docs/design.md sections 3.6, 5, 6).

References: dense matrices assembled entry by entry from the definition, ``numpy.linalg`` solves
and eigenvalues, central finite differences.
"""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from gcrflinalg.backend import to_host
from gcrflinalg.forms.video import (VideoGCRF, frame_coupling_matrix, solve_video_windows,
                              window_starts)
from solvers import NotPositiveDefiniteError

from operator_cases import dense_video as dense_reference
from operator_cases import dense_video_batch as dense_reference_batch
from operator_checks import (assert_dense_matches, assert_not_mutated, assert_symmetric,
                             fd_check_gradients, tol)

NEIGHBOURHOODS = ["fc", {1}, {1, 2}, {1, 2, 4}]


def embeddings(rng, batch, V, Ds, Dt, L, H, W, t_scale=0.3, dtype=np.float64):
    S = rng.standard_normal(batch + (V, Ds, L, H, W)).astype(dtype)
    T = (t_scale * rng.standard_normal(batch + (V, Dt, L, H, W))).astype(dtype)
    return S, T


def safe_lam(S, T, neighbourhood, margin=1.0):
    """A ``lam`` above the exact positive-definiteness threshold (per batch item)."""
    thr = VideoGCRF(S.astype(np.float64), T.astype(np.float64), 1.0,
                    neighbourhood).positive_definite_threshold()
    return thr + margin


# ---------------------------------------------------------------------------- construction
def test_frame_coupling_matrix():
    K = frame_coupling_matrix({1, 2, 4}, 6)
    for u in range(6):
        for v in range(6):
            assert K[u, v] == (1.0 if u != v and abs(u - v) in (1, 2, 4) else 0.0)
    np.testing.assert_array_equal(frame_coupling_matrix("fc", 3), np.ones((3, 3)) - np.eye(3))
    np.testing.assert_array_equal(frame_coupling_matrix({1}, 1), np.zeros((1, 1)))


@pytest.mark.parametrize("V", [1, 2, 3, 5])
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOODS, ids=["fc", "2", "4", "6ms"])
def test_dense_matches_definition(V, neighbourhood, rng):
    S, T = embeddings(rng, (), V, 3, 2, 2, 1, 2)
    lam = 2.5
    op = VideoGCRF(S, T, lam, neighbourhood)
    ref = dense_reference(S, T, lam, neighbourhood)
    assert op.vector_shape == (V, 2, 1, 2)
    assert_dense_matches(op, ref, rng)
    assert_symmetric(op, rng)
    np.testing.assert_allclose(to_host(op.diagonal()), np.diag(ref), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOODS, ids=["fc", "2", "4", "6ms"])
def test_batched_odd_sizes_cached_equals_pairwise(neighbourhood, dtype, rng):
    S, T = embeddings(rng, (2,), 5, 3, 2, 2, 5, 7, dtype=dtype)
    lam = np.array([1.5, 3.0])
    ref = dense_reference_batch(S, T, lam, neighbourhood)
    cached = VideoGCRF(S, T, lam, neighbourhood)
    pairwise = VideoGCRF(S, T, lam, neighbourhood, product="pairwise")
    assert cached.dtype == dtype
    assert_dense_matches(cached, ref, rng, dtype=dtype)
    assert_dense_matches(pairwise, ref, rng, dtype=dtype)
    v = rng.standard_normal((3,) + cached.batch_shape + cached.vector_shape).astype(dtype)
    np.testing.assert_allclose(to_host(cached.matvec(v)), to_host(pairwise.matvec(v)),
                               rtol=tol(dtype) * 10, atol=tol(dtype) * 100)


def test_linear_operator_view(rng):
    S, T = embeddings(rng, (2,), 3, 2, 2, 2, 2, 3)
    op = VideoGCRF(S, T, 2.0)
    ref = dense_reference(S[1], T[1], 2.0, "fc")
    A = op.aslinearoperator((1,))
    v = rng.standard_normal((op.size, 2))
    np.testing.assert_allclose(A @ v, ref @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(A.matvec(v[:, 0]), ref @ v[:, 0], rtol=1e-12, atol=1e-12)


def test_block_jacobi_preconditioner_inverts_pixel_blocks(rng):
    S, T = embeddings(rng, (), 2, 3, 2, 3, 2, 2)
    op = VideoGCRF(S, T, 1.7)
    ref = dense_reference(S, T, 1.7, "fc")
    P = op.block_jacobi_preconditioner()
    # the L x L block of frame v at pixel p joins indices v*n + l*P + p for every label l
    n, npix = 3 * 2 * 2, 2 * 2
    r = rng.standard_normal(op.size)
    expected = np.zeros_like(r)
    for v in range(2):
        for p in range(npix):
            idx = [v * n + l * npix + p for l in range(3)]
            expected[idx] = np.linalg.solve(ref[np.ix_(idx, idx)], r[idx])
    np.testing.assert_allclose(P(r), expected, rtol=1e-10)


# ---------------------------------------------------------------------------- solves
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOODS, ids=["fc", "2", "4", "6ms"])
def test_cg_direct_dense_agree(neighbourhood, dtype, rng):
    S, T = embeddings(rng, (2,), 5, 3, 2, 2, 3, 5, t_scale=0.5)
    lam = safe_lam(S, T, neighbourhood)
    op = VideoGCRF(S.astype(dtype), T.astype(dtype), lam.astype(dtype), neighbourhood)
    ref = dense_reference_batch(S.astype(dtype), T.astype(dtype), lam.astype(dtype), neighbourhood)
    b = rng.standard_normal(op.batch_shape + op.vector_shape).astype(dtype)
    x_ref = np.linalg.solve(ref, b.reshape(2, -1, 1).astype(np.float64))[..., 0].reshape(b.shape)
    t = 2e-4 if dtype == np.float32 else 1e-9
    scale = np.abs(x_ref).max()
    rtol_cg = 1e-6 if dtype == np.float32 else 1e-12
    for method in ("direct", "cg", "pcg"):
        res = gcrflinalg.solve(op, b, method=method, rtol=rtol_cg, maxiter=2000)
        assert res.x.shape == b.shape and res.x.dtype == dtype
        assert np.all(res.converged), method
        np.testing.assert_allclose(to_host(res.x), x_ref, rtol=0, atol=t * scale, err_msg=method)


def test_direct_rank_deficient_and_many_right_hand_sides(rng):
    # D = Ds + Dt exceeds the unknowns per frame: Gram matrices are singular
    S, T = embeddings(rng, (), 3, 7, 6, 1, 2, 2, t_scale=1.0)
    lam = float(safe_lam(S, T, "fc", margin=0.5))
    op = VideoGCRF(S, T, lam)
    ref = dense_reference(S, T, lam, "fc")
    B = rng.standard_normal((4, op.size))
    res = gcrflinalg.solve(op, B, method="direct")
    np.testing.assert_allclose(res.x, np.linalg.solve(ref, B.T).T, rtol=1e-9, atol=1e-11)
    x_vec = op.solve_direct(B.reshape((4,) + op.vector_shape))
    assert x_vec.shape == (4,) + op.vector_shape
    np.testing.assert_allclose(x_vec.reshape(4, -1), res.x, rtol=1e-12, atol=1e-13)
    # the factorisation is cached and reused by the adjoint solve
    chol = op._capacitance()["chol"]
    g = gcrflinalg.adjoint_solve(op, B[0], method="direct").x
    assert op._capacitance()["chol"] is chol
    np.testing.assert_allclose(g, np.linalg.solve(ref, B[0]), rtol=1e-9, atol=1e-11)


def test_single_frame_ignores_temporal(rng):
    S, T = embeddings(rng, (), 1, 3, 4, 2, 3, 3, t_scale=10.0)
    op = VideoGCRF(S, T, 0.1)
    op.check_positive_definite()  # lam I + S^T S: positive definite for any lam > 0
    ref = dense_reference(S, T, 0.1, "fc")
    b = rng.standard_normal(op.size)
    np.testing.assert_allclose(gcrflinalg.solve(op, b, method="direct").x,
                               np.linalg.solve(ref, b), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------- positive definiteness
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOODS, ids=["fc", "2", "4", "6ms"])
def test_indefinite_example_raises_and_large_lam_solves(neighbourhood, rng):
    S, T = embeddings(rng, (), 5, 2, 3, 2, 2, 3, t_scale=3.0)
    ref0 = dense_reference(S, T, 0.0, neighbourhood)
    eig_min = np.linalg.eigvalsh(ref0)[0]
    assert eig_min < -1.0  # the pairwise term is indefinite
    small = 0.5
    op = VideoGCRF(S, T, small, neighbourhood)
    np.testing.assert_allclose(op.positive_definite_threshold(), -eig_min, rtol=1e-9)
    b = rng.standard_normal(op.size)
    # the direct solve's capacitance factorisation and the exact check name the exact threshold;
    # CG's curvature test (the default guard of the iterative methods) a proven lower bound of it
    for method, check_pd in (("cg", True), ("direct", True), ("cg", "exact")):
        fresh = VideoGCRF(S, T, small, neighbourhood)
        with pytest.raises(NotPositiveDefiniteError) as err:
            gcrflinalg.solve(fresh, b, method=method, check_pd=check_pd)
        assert err.value.quantity == "lam"
        assert err.value.value == pytest.approx(small)
        if method == "cg" and check_pd is True:
            assert fresh._capacitance_cache is None  # no factorisation for an iterative solve
            assert small < err.value.bound <= -eig_min * (1 + 1e-9)
        else:
            assert err.value.bound == pytest.approx(-eig_min, rel=1e-9)
        assert "lam" in str(err.value)
    # the sufficient condition dominates the exact threshold
    assert op.sufficient_lam() >= -eig_min
    big = -eig_min + 1.0
    op = VideoGCRF(S, T, big, neighbourhood)
    x_ref = np.linalg.solve(ref0 + big * np.eye(op.size), b)
    for method in ("cg", "direct"):
        x = gcrflinalg.solve(op, b, method=method, rtol=1e-12, maxiter=5000).x
        np.testing.assert_allclose(x, x_ref, rtol=1e-7, atol=1e-9)


def test_indefinite_system_of_batch_is_named(rng):
    S, T = embeddings(rng, (3,), 3, 2, 2, 1, 2, 2, t_scale=2.0)
    thr = VideoGCRF(S, T, 1.0).positive_definite_threshold()
    lam = thr + 1.0
    lam[2] = 0.5 * thr[2]
    assert VideoGCRF(S, T, lam).check_positive_definite() is False  # sufficient bound inconclusive
    with pytest.raises(NotPositiveDefiniteError) as err:
        VideoGCRF(S, T, lam).check_positive_definite(exact=True)
    assert err.value.system == (2,)
    assert err.value.bound == pytest.approx(thr[2], rel=1e-9)


def test_sufficient_lam_certifies_without_factorising(rng):
    S, T = embeddings(rng, (), 4, 2, 2, 1, 2, 2, t_scale=0.1)
    bound = float(VideoGCRF(S, T, 1.0).sufficient_lam())
    assert bound > 0
    op = VideoGCRF(S, T, bound + 0.1)
    op.check_positive_definite()
    assert op._capacitance_cache is None


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("neighbourhood", ["fc", {1, 2}], ids=["fc", "4"])
@pytest.mark.parametrize("method", ["direct", "cg"])
def test_gradients_match_finite_differences(neighbourhood, method, rng):
    S, T = embeddings(rng, (), 3, 2, 2, 2, 2, 3, t_scale=0.5)
    lam = float(safe_lam(S, T, neighbourhood))
    b = rng.standard_normal((3, 2, 2, 3))

    def make(params, lam_):
        return VideoGCRF(params[0], params[1], lam_, neighbourhood)

    fd_check_gradients(make, [S, T], lam, b, method=method, rng=rng, n_probe=6)


def test_gradients_batched_match_dense(rng):
    # dL/dM = -g x^T contracted with dM/dtheta, with dM/dtheta from the dense reference
    S, T = embeddings(rng, (2,), 3, 2, 2, 1, 2, 2, t_scale=0.4)
    lam = safe_lam(S, T, {1})
    op = VideoGCRF(S, T, lam, {1})
    x = rng.standard_normal(op.batch_shape + (op.size,))
    g = rng.standard_normal(op.batch_shape + (op.size,))
    grads = op.parameter_gradients(x, g)
    eps = 1e-6
    for name, P in (("spatial", S), ("temporal", T)):
        assert grads[name].shape == P.shape
        for flat in rng.choice(P.size, size=6, replace=False):
            idx = np.unravel_index(flat, P.shape)
            plus, minus = P.copy(), P.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args_p = (plus, T) if name == "spatial" else (S, plus)
            args_m = (minus, T) if name == "spatial" else (S, minus)
            dM = (dense_reference(args_p[0][idx[0]], args_p[1][idx[0]], 0.0, {1})
                  - dense_reference(args_m[0][idx[0]], args_m[1][idx[0]], 0.0, {1})) / (2 * eps)
            expected = -g[idx[0]] @ dM @ x[idx[0]]
            np.testing.assert_allclose(grads[name][idx], expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grads["lam"], -np.sum(g * x, axis=-1), rtol=1e-12)


# ---------------------------------------------------------------------------- windows
def test_window_starts():
    assert window_starts(7, 3, 1) == [0, 1, 2, 3, 4]
    assert window_starts(7, 3, 2) == [0, 2, 4]
    assert window_starts(7, 3, 3) == [0, 3, 4]
    assert window_starts(3, 3, 1) == [0]


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_windowed_solve_equals_average_of_window_dense_solves(stride, rng):
    F, window = 7, 3
    S, T = embeddings(rng, (), F, 2, 2, 2, 2, 3, t_scale=0.4)
    lam = float(safe_lam(S, T, "fc"))
    b = rng.standard_normal((F, 2, 2, 3))
    S0, T0, b0 = S.copy(), T.copy(), b.copy()
    sol = solve_video_windows(S, T, b, lam, window=window, stride=stride)
    assert_not_mutated([S0, T0, b0], [S, T, b])
    total = np.zeros_like(b)
    count = np.zeros(F)
    for s in window_starts(F, window, stride):
        ref = dense_reference(S[s:s + window], T[s:s + window], lam, "fc")
        total[s:s + window] += np.linalg.solve(ref, b[s:s + window].ravel()).reshape(b[s:s + window].shape)
        count[s:s + window] += 1
    np.testing.assert_allclose(sol.x, total / count[:, None, None, None], rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(sol.counts, count)
    x_cg = solve_video_windows(S, T, b, lam, window=window, stride=stride, method="cg",
                               rtol=1e-12).x
    np.testing.assert_allclose(x_cg, sol.x, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_windowed_backward_matches_finite_differences(method, rng):
    F, window = 5, 3
    S, T = embeddings(rng, (2,), F, 2, 2, 1, 2, 3, t_scale=0.4)
    lam = np.array([float(safe_lam(S[0], T[0], {1})), float(safe_lam(S[1], T[1], {1}))])
    b = rng.standard_normal((2, F, 1, 2, 3))
    c = rng.standard_normal(b.shape)
    opts = {} if method == "direct" else {"rtol": 1e-13, "maxiter": 10000}

    def loss(S_, T_, b_, lam_):
        x = solve_video_windows(S_, T_, b_, lam_, window=window, stride=1, neighbourhood={1},
                                method=method, **opts).x
        return float(np.sum(c * x))

    sol = solve_video_windows(S, T, b, lam, window=window, neighbourhood={1}, method=method, **opts)
    grads = sol.backward(c)
    eps = 1e-6
    params = {"spatial": S, "temporal": T, "b": b, "lam": lam}
    for name, P in params.items():
        assert grads[name].shape == P.shape, name
        picks = rng.choice(P.size, size=min(5, P.size), replace=False)
        for flat in picks:
            idx = np.unravel_index(flat, P.shape)
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (loss(plus["spatial"], plus["temporal"], plus["b"], plus["lam"])
                  - loss(minus["spatial"], minus["temporal"], minus["b"], minus["lam"])) / (2 * eps)
            np.testing.assert_allclose(grads[name][idx], fd, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{name}{idx}")


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors(rng):
    S, T = embeddings(rng, (), 3, 2, 2, 2, 2, 3)
    b = rng.standard_normal((3, 2, 2, 3))
    with pytest.raises(ValueError, match="temporal"):
        VideoGCRF(S, T[:2], 1.0)  # mismatched V
    with pytest.raises(ValueError, match="temporal"):
        VideoGCRF(S, T[..., :2], 1.0)  # mismatched W
    with pytest.raises(ValueError, match="spatial"):
        VideoGCRF(S[0, 0], T, 1.0)  # too few axes
    bad = S.copy()
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        VideoGCRF(bad, T, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        solve_video_windows(S, T, np.full_like(b, np.inf), 1.0, window=2)
    for lam in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="lam"):
            VideoGCRF(S, T, lam)
        with pytest.raises(ValueError, match="lam"):
            solve_video_windows(S, T, b, lam, window=2)
    with pytest.raises(ValueError, match="complex"):
        VideoGCRF(S.astype(complex), T, 1.0)
    with pytest.raises(ValueError, match="neighbourhood"):
        VideoGCRF(S, T, 1.0, neighbourhood="full")
    with pytest.raises(ValueError, match="neighbourhood"):
        VideoGCRF(S, T, 1.0, neighbourhood={0, 1})
    with pytest.raises(ValueError, match="product"):
        VideoGCRF(S, T, 1.0, product="fast")
    op = VideoGCRF(S, T, 5.0)
    with pytest.raises(ValueError, match="shape"):
        op.matvec(b[:2])
    with pytest.raises(ValueError, match="b must have shape"):
        solve_video_windows(S, T, b[:2], 5.0, window=2)  # b has fewer frames
    with pytest.raises(ValueError, match="temporal"):
        solve_video_windows(S, T[:2], b, 5.0, window=2)
    with pytest.raises(ValueError, match="window"):
        solve_video_windows(S, T, b, 5.0, window=4)
    with pytest.raises(ValueError, match="stride"):
        solve_video_windows(S, T, b, 5.0, window=2, stride=3)
    with pytest.raises(TypeError, match="window"):
        solve_video_windows(S, T, b, 5.0, window=2.0)
    sol = solve_video_windows(S, T, b, 5.0, window=2)
    with pytest.raises(ValueError, match="grad_x"):
        sol.backward(b[:2])


def test_parameters_not_mutated(rng):
    S, T = embeddings(rng, (2,), 3, 2, 2, 2, 2, 3)
    lam = np.array([4.0, 5.0])
    before = [S.copy(), T.copy(), lam.copy()]
    op = VideoGCRF(S, T, lam)
    b = rng.standard_normal(op.batch_shape + op.vector_shape)
    b0 = b.copy()
    x = gcrflinalg.solve(op, b, method="direct").x
    gcrflinalg.solve(op, b, method="cg")
    op.parameter_gradients(x, b)
    op.to_dense()
    op.diagonal()
    assert_not_mutated(before + [b0], [S, T, lam, b])


def test_timing_entry_quick():
    from studies import timing_video

    rows = timing_video.run(quick=True)
    assert rows
    for row in rows:
        for key in ("entry", "case", "what", "time_s", "peer", "ratio", "target", "met"):
            assert key in row
        assert row["time_s"] > 0


# ---------------------------------------------------------------------------- Gauss-Seidel
def dense_sor_sweep(M, x, b, omega):
    x = x.copy()
    for i in range(len(x)):
        x[i] += omega * (b[i] - M[i] @ x) / M[i, i]
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("neighbourhood", ["fc", {1, 2, 4}, {1}], ids=["fc", "6ms", "2"])
def test_gauss_seidel_sweep_matches_dense_sweep(neighbourhood, dtype, rng):
    S, T = embeddings(rng, (2,), 5, 3, 2, 2, 1, 3, t_scale=0.5, dtype=dtype)
    lam = np.array([2.0, 3.0])
    op = VideoGCRF(S, T, lam, neighbourhood)
    ref = dense_reference_batch(S, T, lam, neighbourhood)
    x = rng.standard_normal(op.batch_shape + (op.size,)).astype(dtype)
    b = rng.standard_normal(op.batch_shape + (op.size,)).astype(dtype)
    for omega in (1.0, 1.3):
        out = to_host(op.gauss_seidel_sweep(x.copy(), b, omega))
        for k in range(2):
            np.testing.assert_allclose(out[k], dense_sor_sweep(ref[k], x[k].astype(np.float64),
                                                               b[k].astype(np.float64), omega),
                                       rtol=tol(dtype) * 10, atol=tol(dtype) * 10)


def test_gauss_seidel_solve_converges(rng):
    S, T = embeddings(rng, (), 3, 2, 2, 2, 2, 3, t_scale=0.3)
    op = VideoGCRF(S, T, 3.0, {1})
    b = rng.standard_normal(op.size)
    res = gcrflinalg.solve(op, b, method="gauss_seidel", rtol=1e-10, maxiter=2000)
    assert res.converged
    np.testing.assert_allclose(res.x, np.linalg.solve(dense_reference(S, T, 3.0, {1}), b),
                               rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------------------- backends
@pytest.mark.parametrize("neighbourhood", ["fc", {1, 2}], ids=["fc", "4"])
def test_backend_products_solves_gradients(xp, neighbourhood, rng):
    """Every path on the array backend under test (CuPy runs it on the GPU when present)."""
    S, T = embeddings(rng, (2,), 3, 3, 2, 2, 3, 2, t_scale=0.5)
    lam = safe_lam(S, T, neighbourhood)
    ref = dense_reference_batch(S, T, lam, neighbourhood)
    op = VideoGCRF(xp.asarray(S), xp.asarray(T), xp.asarray(lam), neighbourhood)
    assert op.xp is xp
    assert_dense_matches(op, ref, rng)
    b = rng.standard_normal((2, op.size))
    x_ref = np.linalg.solve(ref, b[..., None])[..., 0]
    for method in ("direct", "cg", "pcg", "gauss_seidel"):
        x = gcrflinalg.solve(op, xp.asarray(b), method=method, rtol=1e-11, maxiter=5000).x
        np.testing.assert_allclose(to_host(x), x_ref, rtol=1e-8, atol=1e-9, err_msg=method)
    g = rng.standard_normal((2, op.size))
    grads = op.parameter_gradients(xp.asarray(x_ref), xp.asarray(g))
    ref_grads = VideoGCRF(S, T, lam, neighbourhood).parameter_gradients(x_ref, g)
    for key in ("spatial", "temporal", "lam"):
        np.testing.assert_allclose(to_host(grads[key]), ref_grads[key], rtol=1e-10, atol=1e-12)
    sol = solve_video_windows(xp.asarray(S), xp.asarray(T), xp.asarray(b.reshape(2, 3, 2, 3, 2)),
                              xp.asarray(lam), window=2, neighbourhood=neighbourhood)
    ref_sol = solve_video_windows(S, T, b.reshape(2, 3, 2, 3, 2), lam, window=2,
                                  neighbourhood=neighbourhood)
    np.testing.assert_allclose(to_host(sol.x), ref_sol.x, rtol=1e-10, atol=1e-12)


def test_auto_method_solves(rng):
    S, T = embeddings(rng, (), 3, 2, 2, 2, 2, 3, t_scale=0.3)
    op = VideoGCRF(S, T, 3.0)
    b = rng.standard_normal(op.size)
    res = gcrflinalg.solve(op, b, method="auto", rtol=1e-10)
    np.testing.assert_allclose(res.x, np.linalg.solve(dense_reference(S, T, 3.0, "fc"), b),
                               rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------------------- CPU fast paths
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOODS, ids=["fc", "2", "4", "6ms"])
def test_cache_ordered_product_matches_dense_with_extra_axes(neighbourhood, dtype, rng):
    # the host product (spatial round trip per frame, temporal back-projection in reverse frame
    # order) against the entry-by-entry dense matrix, with batch axes and extra right-hand sides
    S, T = embeddings(rng, (2,), 4, 3, 2, 2, 3, 2, dtype=dtype)
    lam = np.array([1.5, 2.5])
    op = VideoGCRF(S, T, lam, neighbourhood)
    ref = dense_reference_batch(S, T, lam, neighbourhood)
    v = rng.standard_normal((3, 2) + op.vector_shape).astype(dtype)
    got = op.matvec(v)
    assert got.shape == v.shape and got.dtype == dtype
    want = np.einsum("bij,kbj->kbi", ref, v.reshape(3, 2, -1).astype(np.float64))
    np.testing.assert_allclose(got.reshape(3, 2, -1), want, rtol=tol(dtype) * 10,
                               atol=tol(dtype) * 100)
    # one frame: no temporal term at all
    one = VideoGCRF(S[:, :1], T[:, :1], lam, neighbourhood)
    v1 = v[:, :, :1]
    ref1 = dense_reference_batch(S[:, :1], T[:, :1], lam, neighbourhood)
    np.testing.assert_allclose(one.matvec(v1).reshape(3, 2, -1),
                               np.einsum("bij,kbj->kbi", ref1, v1.reshape(3, 2, -1)),
                               rtol=tol(dtype) * 10, atol=tol(dtype) * 100)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("neighbourhood", ["fc", {1}], ids=["fc", "2"])
def test_frame_grams_host_match_reference(neighbourhood, dtype, rng):
    S, T = embeddings(rng, (2,), 3, 4, 3, 2, 3, 2, dtype=dtype)
    op = VideoGCRF(S, T, 2.0, neighbourhood)
    E = np.concatenate([S, T], axis=-4).reshape(2, 3, 7, -1).astype(np.float64)
    G = op._frame_grams_host()
    assert G.shape == (2, 3, 7, 7) and G.dtype == np.float64
    np.testing.assert_allclose(G, E @ np.swapaxes(E, -1, -2), rtol=tol(dtype) * 10,
                               atol=tol(dtype) * 10)
    np.testing.assert_array_equal(G, np.swapaxes(G, -1, -2))  # exactly symmetric
    # no coupled frames: the Gram matrices of S alone
    single = VideoGCRF(S[:, :1], T[:, :1], 2.0, neighbourhood)
    Es = S[:, :1].reshape(2, 1, 4, -1).astype(np.float64)
    np.testing.assert_allclose(single._frame_grams_host(), Es @ np.swapaxes(Es, -1, -2),
                               rtol=tol(dtype) * 10, atol=tol(dtype) * 10)


def test_gram_square_root_cholesky_and_rank_deficient_fallback(rng):
    S, T = embeddings(rng, (), 2, 3, 2, 2, 3, 3)
    op = VideoGCRF(S, T, 2.0)
    G = op._frame_grams_host()
    R = op._gram_square_root(G)  # full rank: the Cholesky factor
    np.testing.assert_allclose(R, np.linalg.cholesky(G), rtol=1e-12, atol=1e-12)
    # a frame with an all-zero embedding row: singular Gram (a zero pivot), the eigendecomposition
    # fallback
    S2 = S.copy()
    S2[1, 2] = 0.0
    op2 = VideoGCRF(S2, T, 2.0)
    G2 = op2._frame_grams_host()
    R2 = op2._gram_square_root(G2)
    np.testing.assert_allclose(R2 @ np.swapaxes(R2, -1, -2), G2, rtol=0,
                               atol=1e-12 * np.abs(G2).max())
    assert not np.allclose(np.triu(R2[1], 1), 0.0)  # not a triangular (Cholesky) factor


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_ill_conditioned_gram_matches_dense(dtype, rng):
    # nearly dependent embedding rows: the Gram matrices are positive definite but ill-conditioned,
    # so the Cholesky square root is taken; the solve must still match the dense one
    S, T = embeddings(rng, (), 3, 3, 2, 2, 3, 3, t_scale=0.5)
    S[:, 2] = S[:, 0] + 1e-4 * S[:, 2]
    S, T = S.astype(dtype), T.astype(dtype)
    lam = float(safe_lam(S, T, "fc", margin=0.5))
    op = VideoGCRF(S, T, lam)
    ref = dense_reference(S, T, lam, "fc")
    b = rng.standard_normal(op.size).astype(dtype)
    res = gcrflinalg.solve(op, b, method="direct", rtol=tol(dtype))
    assert res.converged
    x_ref = np.linalg.solve(ref, b.astype(np.float64))
    np.testing.assert_allclose(res.x, x_ref, rtol=0, atol=tol(dtype) * 100 * np.abs(x_ref).max())
