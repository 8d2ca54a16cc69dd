"""Grid G-CRFs (general blocks and Potts): operators against a dense matrix assembled here straight
from docs/design.md 3.1/3.2, solves against numpy.linalg.solve, gradients against finite differences."""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from gcrflinalg.forms.grid.csr import csr_pattern
from gcrflinalg.forms.grid.kernels import colour_masks, pixel_colouring
from gcrflinalg.backend import to_host
from gcrflinalg.forms.grid import GridGCRF, GridPottsGCRF
# the dense references of docs/design.md 3.1/3.2 (no code shared with the package)
from operator_cases import OFFSETS
from operator_cases import dense_grid_general as dense_general
from operator_cases import dense_grid_potts as dense_potts
from operator_checks import (
    assert_dense_matches,
    assert_not_mutated,
    assert_symmetric,
    fd_check_gradients,
)
from solvers import NotPositiveDefiniteError


def dense_batched(fn, params, lam, *args):
    batch = params.shape[: params.ndim - (5 if fn is dense_general else 3)]
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), batch)
    out = [fn(params[idx].astype(np.float64), float(lam[idx]), *args) for idx in np.ndindex(*batch)]
    return np.stack(out).reshape(batch + out[0].shape)


def random_pairwise(rng, batch, nbhd, L, H, W, scale=0.1):
    K = len(OFFSETS[nbhd])
    return scale * rng.standard_normal(batch + (K, L, L, H, W))


def random_weights(rng, batch, nbhd, H, W, scale=0.1):
    K = len(OFFSETS[nbhd])
    return scale * rng.standard_normal(batch + (K, H, W))


# ----------------------------------------------------------------------------- operators vs dense


@pytest.mark.parametrize("nbhd", [4, 8, 12])
@pytest.mark.parametrize("L", [1, 2, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_general_matches_dense(xp, rng, nbhd, L, dtype):
    for (H, W), batch in [((5, 7), ()), ((3, 4), (2,))]:
        pw = random_pairwise(rng, batch, nbhd, L, H, W).astype(dtype)
        lam = 2.0 if not batch else np.array([2.0, 3.5])
        op = GridGCRF(xp.asarray(pw), lam if np.isscalar(lam) else xp.asarray(lam), nbhd)
        assert op.shape == (L * H * W,) * 2 and op.vector_shape == (L, H, W)
        assert op.batch_shape == batch and op.dtype == dtype
        ref = dense_batched(dense_general, pw, lam, nbhd)
        assert_dense_matches(op, ref, rng, dtype)
        assert_symmetric(op, rng, dtype)
        for idx in np.ndindex(*batch):
            csr = op.to_sparse(idx)
            assert csr.format == "csr" and csr.dtype == dtype
            np.testing.assert_allclose(to_host(csr.toarray()), ref[idx], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(to_host(op.diagonal()), np.diagonal(ref, axis1=-2, axis2=-1))


@pytest.mark.parametrize("nbhd", [4, 8, 12])
@pytest.mark.parametrize("L", [1, 2, 5])
def test_potts_matches_dense_and_general(xp, rng, nbhd, L):
    for dtype in (np.float64, np.float32):
        for (H, W), batch in [((5, 7), ()), ((4, 3), (2,))]:
            wt = random_weights(rng, batch, nbhd, H, W).astype(dtype)
            lam = 2.5 if not batch else np.array([2.5, 4.0])
            op = GridPottsGCRF(xp.asarray(wt), lam if np.isscalar(lam) else xp.asarray(lam), L, nbhd)
            ref = dense_batched(dense_potts, wt, lam, L, nbhd)
            assert_dense_matches(op, ref, rng, dtype)
            assert_symmetric(op, rng, dtype)
            for idx in np.ndindex(*batch):
                np.testing.assert_allclose(to_host(op.to_sparse(idx).toarray()), ref[idx], rtol=1e-6, atol=1e-6)
            # the general form with the Potts block pattern is the same operator
            pattern = (1.0 - np.eye(L))[:, :, None, None]
            pw = wt[..., :, None, None, :, :] * pattern
            gen = GridGCRF(xp.asarray(pw.astype(dtype)), lam if np.isscalar(lam) else xp.asarray(lam), nbhd)
            v = rng.standard_normal(batch + (L, H, W)).astype(dtype)
            t = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(to_host(op.matvec(xp.asarray(v))), to_host(gen.matvec(xp.asarray(v))),
                                       rtol=t, atol=t)


def test_out_of_image_entries_are_ignored(rng):
    H, W, L = 4, 5, 2
    pw = random_pairwise(rng, (), 12, L, H, W)
    wt = random_weights(rng, (), 12, H, W)
    ref_g, ref_p = GridGCRF(pw, 2.0, 12).to_dense(), GridPottsGCRF(wt, 2.0, L, 12).to_dense()
    mask = gcrflinalg.neighbourhoods.edge_mask(12, H, W)
    pw2 = np.where(mask[:, None, None], pw, 1e3)
    wt2 = np.where(mask, wt, -1e3)
    np.testing.assert_array_equal(GridGCRF(pw2, 2.0, 12).to_dense(), ref_g)
    np.testing.assert_array_equal(GridPottsGCRF(wt2, 2.0, L, 12).to_dense(), ref_p)
    v = rng.standard_normal((L, H, W))
    np.testing.assert_allclose(GridGCRF(pw2, 2.0, 12).matvec(v), (ref_g @ v.ravel()).reshape(L, H, W),
                               atol=1e-12)


def test_extra_rhs_axes_and_linear_operator(rng):
    H, W, L = 3, 5, 2
    pw = random_pairwise(rng, (2,), 8, L, H, W)
    op = GridGCRF(pw, np.array([1.5, 2.0]), 8)
    ref = dense_batched(dense_general, pw, np.array([1.5, 2.0]), 8)
    v = rng.standard_normal((3, 2, L, H, W))
    out = op.matvec(v)
    assert out.shape == v.shape
    np.testing.assert_allclose(out.reshape(3, 2, -1), np.einsum("bij,ebj->ebi", ref, v.reshape(3, 2, -1)),
                               atol=1e-12)
    lin = op.aslinearoperator((1,))
    u = rng.standard_normal(L * H * W)
    np.testing.assert_allclose(lin @ u, ref[1] @ u, atol=1e-12)
    # integer right-hand sides are cast, complex ones rejected
    np.testing.assert_allclose(op.matvec(np.ones((2, L * H * W), dtype=np.int64)),
                               np.einsum("bij,j->bi", ref, np.ones(L * H * W)), atol=1e-12)
    with pytest.raises(ValueError):
        op.matvec(np.ones((2, L * H * W), dtype=complex))


def test_csr_pattern_is_cached(rng):
    H, W, L = 6, 5, 3
    csr_pattern.cache_clear()
    GridGCRF(random_pairwise(rng, (), 4, L, H, W), 1.0).to_sparse()
    GridGCRF(random_pairwise(rng, (), 4, L, H, W), 2.0).to_sparse()
    info = csr_pattern.cache_info()
    assert info.misses == 1 and info.hits == 1


# ----------------------------------------------------------------------------- solves


@pytest.mark.parametrize("method", ["cg", "pcg", "gmres", "jacobi", "gauss_seidel", "direct"])
def test_solves_match_dense(xp, rng, method):
    H, W, L = 5, 7, 3
    for nbhd in (4, 12):
        pw = random_pairwise(rng, (2,), nbhd, L, H, W, scale=0.05)
        wt = np.abs(random_weights(rng, (2,), nbhd, H, W, scale=0.05))
        lam = np.array([2.0, 3.0])
        b = rng.standard_normal((2, L, H, W))
        for op, ref in ((GridGCRF(xp.asarray(pw), xp.asarray(lam), nbhd), dense_batched(dense_general, pw, lam, nbhd)),
                        (GridPottsGCRF(xp.asarray(wt), xp.asarray(lam), L, nbhd),
                         dense_batched(dense_potts, wt, lam, L, nbhd))):
            res = gcrflinalg.solve(op, xp.asarray(b), method=method, rtol=1e-10, maxiter=5000)
            assert res.x.shape == b.shape
            assert np.all(res.converged)
            x_ref = np.linalg.solve(ref, b.reshape(2, -1, 1))[..., 0]
            np.testing.assert_allclose(to_host(res.x).reshape(2, -1), x_ref, rtol=1e-8, atol=1e-8)


def test_potts_split_solve(rng):
    H, W, L = 5, 7, 4
    wt = np.abs(random_weights(rng, (2,), 8, H, W, scale=0.1))
    lam = np.array([1.5, 2.5])
    op = GridPottsGCRF(wt, lam, L, 8)
    ref = dense_batched(dense_potts, wt, lam, L, 8)
    b = rng.standard_normal((3, 2, L * H * W))  # three right-hand sides per system, flat layout
    x0 = rng.standard_normal(b.shape)
    x0_copy = x0.copy()
    res = gcrflinalg.solve(op, b, method="potts_split", x0=x0, rtol=1e-12)
    assert_not_mutated([x0_copy], [x0])
    assert res.x.shape == b.shape and res.method == "potts_split" and res.requested_method == "potts_split"
    x_ref = np.linalg.solve(ref[None], b[..., None])[..., 0]
    np.testing.assert_allclose(res.x, x_ref, rtol=1e-9, atol=1e-9)
    assert res.residual_norms.shape == (int(np.max(res.iterations)) + 1, 3, 2)
    true = np.linalg.norm(b - np.einsum("bij,ebj->ebi", ref, res.x), axis=-1)
    np.testing.assert_allclose(res.residual_norms[-1], true, rtol=1e-6, atol=1e-12)
    assert np.all(true <= 1e-12 * np.linalg.norm(b, axis=-1) * 1.0001)
    # the form's own L + 1 split answered, not the generic solver
    assert op._solve(b.reshape(3, 2, -1), "potts_split", None, {"rtol": 1e-8}) is not NotImplemented
    # float32
    op32 = GridPottsGCRF(wt.astype(np.float32), lam, L, 8)
    res32 = gcrflinalg.solve(op32, b[0].astype(np.float32), method="cg", rtol=1e-5)
    assert res32.x.dtype == np.float32 and np.all(res32.converged)
    np.testing.assert_allclose(res32.x, x_ref[0], rtol=1e-4, atol=1e-4)


def test_gauss_seidel_sweep_is_multicolour_gauss_seidel(rng):
    """One sweep equals Gauss-Seidel in the colour ordering, written here on the dense matrix."""
    H, W, L, omega = 5, 7, 2, 1.3
    for nbhd in (4, 8, 12):
        a, C = pixel_colouring(nbhd)
        masks = colour_masks(nbhd, H, W)
        # no two pixels of one colour are neighbours
        for (di, dj) in OFFSETS[nbhd]:
            assert (a * di + dj) % C != 0
        for c in range(C):
            ii, jj = np.nonzero(masks[c])
            for (di, dj) in OFFSETS[nbhd]:
                nb = set(zip(ii + di, jj + dj))
                assert not nb & set(zip(ii, jj))
        for op, ref in ((lambda pw: (GridGCRF(pw, 1.7, nbhd), dense_general(pw, 1.7, nbhd)))(
                            random_pairwise(rng, (), nbhd, L, H, W)),
                        (lambda wt: (GridPottsGCRF(wt, 1.7, L, nbhd), dense_potts(wt, 1.7, L, nbhd)))(
                            random_weights(rng, (), nbhd, H, W))):
            x = rng.standard_normal(op.size)
            b = rng.standard_normal(op.size)
            x_copy = x.copy()
            out = op.gauss_seidel_sweep(x, b, omega)
            assert_not_mutated([x_copy], [x])
            expect = x.copy()
            P = H * W
            for c in range(C):
                for (i, j) in zip(*np.nonzero(masks[c])):
                    for m in range(L):
                        r = m * P + i * W + j
                        s = b[r] - ref[r] @ expect + ref[r, r] * expect[r]
                        expect[r] = (1 - omega) * expect[r] + omega * s / ref[r, r]
            np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- gradients


def _grid_maker(cls, nbhd, *extra):
    def make(params, lam):
        return cls(params[0], lam, *extra, nbhd) if extra else cls(params[0], lam, nbhd)
    return make


@pytest.mark.parametrize("method", ["cg", "direct"])
@pytest.mark.parametrize("nbhd", [4, 12])
def test_gradients_match_finite_differences(rng, method, nbhd):
    H, W, L = 4, 5, 3
    pw = random_pairwise(rng, (2,), nbhd, L, H, W)
    lam = np.array([2.0, 2.5])
    b = rng.standard_normal((2, L, H, W))
    grads = fd_check_gradients(_grid_maker(GridGCRF, nbhd), [pw], lam, b, method=method, rng=rng, n_probe=6)
    wt = np.abs(random_weights(rng, (2,), nbhd, H, W))
    grads_p = fd_check_gradients(_grid_maker(GridPottsGCRF, nbhd, L), [wt], lam, b, method=method, rng=rng,
                                 n_probe=6)
    # entries of edges leaving the image get zero gradient
    mask = gcrflinalg.neighbourhoods.edge_mask(nbhd, H, W)
    gpw = np.moveaxis(grads["pairwise"], 1, 3)  # (batch, L, L, K, H, W)
    assert np.all(gpw[..., ~mask] == 0) and np.any(gpw[..., mask] != 0)
    assert np.all(grads_p["weights"][:, ~mask] == 0) and np.any(grads_p["weights"][:, mask] != 0)


def test_gradients_scalar_lam_and_dense_reference(rng):
    H, W, L = 3, 4, 2
    pw = random_pairwise(rng, (), 8, L, H, W)
    op = GridGCRF(pw, 1.5, 8)
    M = dense_general(pw, 1.5, 8)
    b, c = rng.standard_normal(op.size), rng.standard_normal(op.size)
    x, g = np.linalg.solve(M, b), np.linalg.solve(M, c)
    grads = op.parameter_gradients(x, g)
    assert grads["lam"].shape == () and np.isclose(grads["lam"], -g @ x)
    # dL/dpairwise = <-g x^T, dM/dpairwise>, with dM/dpairwise read off the dense assembly
    for idx in [(0, 1, 0, 1, 2), (3, 0, 1, 1, 1), (2, 1, 1, 0, 0)]:
        e = np.zeros_like(pw)
        e[idx] = 1.0
        dM = dense_general(e, 0.0, 8)
        np.testing.assert_allclose(grads["pairwise"][idx], -(g @ dM @ x), atol=1e-12)


# ----------------------------------------------------------------------------- batches


def test_batched_equals_loop(rng):
    # products of batched operators against the loop: tests/test_operator_suite.py
    H, W, L = 4, 5, 3
    lam = np.array([[1.5, 2.0, 2.5], [3.0, 3.5, 4.0]])
    wt = random_weights(rng, (2, 3), 12, H, W)
    # solves and gradients of the Potts split
    op = GridPottsGCRF(np.abs(wt) * 0.2, lam, L, 12)
    b = rng.standard_normal((2, 3, L, H, W))
    res = gcrflinalg.solve(op, b, rtol=1e-12)
    grads = op.parameter_gradients(res.x, b)
    for idx in np.ndindex(2, 3):
        single = GridPottsGCRF(np.abs(wt[idx]) * 0.2, float(lam[idx]), L, 12)
        r1 = gcrflinalg.solve(single, b[idx], rtol=1e-12)
        np.testing.assert_allclose(res.x[idx], r1.x, atol=1e-10)
        g1 = single.parameter_gradients(r1.x, b[idx])
        np.testing.assert_allclose(grads["weights"][idx], g1["weights"], atol=1e-9)
        np.testing.assert_allclose(grads["lam"][idx], g1["lam"], atol=1e-9)


# ----------------------------------------------------------------------------- bad input, PD


def test_bad_input(rng):
    H, W, L = 3, 4, 2
    pw = random_pairwise(rng, (), 4, L, H, W)
    wt = random_weights(rng, (), 4, H, W)
    before = [pw.copy(), wt.copy()]
    with pytest.raises(ValueError, match="pairwise"):
        GridGCRF(pw, 1.0, 8)  # K = 2 given, 4 expected
    with pytest.raises(ValueError, match="pairwise"):
        GridGCRF(pw[:, :, :1], 1.0)  # L x 1 blocks
    with pytest.raises(ValueError, match="pairwise"):
        GridGCRF(pw[0, 0], 1.0)
    with pytest.raises(ValueError, match="neighbourhood"):
        GridGCRF(pw, 1.0, 6)
    with pytest.raises(ValueError, match="weights"):
        GridPottsGCRF(wt, 1.0, L, 12)
    with pytest.raises(ValueError, match="num_labels"):
        GridPottsGCRF(wt, 1.0, 0)
    for bad_lam in (0.0, -1.0, np.nan, np.array([1.0, 2.0])):
        with pytest.raises(ValueError, match="lam"):
            GridGCRF(pw, bad_lam)
        with pytest.raises(ValueError, match="lam"):
            GridPottsGCRF(wt, bad_lam, L)
    nan_pw, nan_wt = pw.copy(), wt.copy()
    nan_pw[0, 0, 1, 1, 1] = np.nan
    nan_wt[1, 0, 2] = np.inf
    # a copied or read-only array is checked at construction; a viewed writeable one at its first
    # read, whichever it is (docs/guarantees.md, "Parameters"), and again at every later one
    ro_pw = nan_pw.copy()
    ro_pw.flags.writeable = False
    for arr in (nan_pw.tolist(), ro_pw, nan_pw[..., ::-1]):
        with pytest.raises(ValueError, match="pairwise"):
            GridGCRF(arr, 1.0)
    first_reads = (lambda o: o.matvec(np.ones(o.size)), lambda o: gcrflinalg.solve(o, np.ones(o.size)),
                   lambda o: gcrflinalg.solve(o, np.ones(o.size), method="direct"), lambda o: o.to_dense(),
                   lambda o: o.gershgorin_bound(), lambda o: o.check_positive_definite(),
                   lambda o: o.red_black_layout(), lambda o: o.matvec_columns(np.ones((o.size, 2))),
                   lambda o: o.to_sparse())
    from gcrflinalg.forms.grid import kernels

    if not kernels._use_numba(nan_pw):  # the array branch (CuPy's) checks at construction
        with pytest.raises(ValueError, match="pairwise"):
            GridGCRF(nan_pw, 1.0)
        first_reads = ()
    for read in first_reads:
        op = GridGCRF(nan_pw, 1.0)
        for _ in range(2):
            with pytest.raises(ValueError, match="pairwise"):
                read(op)
    with pytest.raises(ValueError, match="weights"):
        GridPottsGCRF(nan_wt, 1.0, L)
    with pytest.raises(ValueError):
        GridGCRF(pw.astype(complex), 1.0)
    op = GridGCRF(pw, 1.0)
    with pytest.raises(ValueError, match="shape"):
        op.matvec(np.ones(5))
    b = rng.standard_normal(op.size)
    b[3] = np.nan
    with pytest.raises(ValueError, match="b"):
        gcrflinalg.solve(op, b)
    # nothing was mutated by construction, products, solves or gradients
    op = GridGCRF(pw, 1.0)
    x = gcrflinalg.solve(op, rng.standard_normal(op.size)).x
    op.parameter_gradients(x, x)
    GridPottsGCRF(wt, 1.0, L).matvec(x)
    assert_not_mutated(before, [pw, wt])


def test_indefinite_potts_raises(rng):
    H, W, L = 6, 7, 4
    wt = np.full((2, H, W), 0.5)
    op = GridPottsGCRF(wt, 1.0, L)
    lo, hi = op.weight_extreme_eigenvalues()
    Wd = dense_potts(wt, 0.0, 2, 4)[: H * W, H * W:]  # the off-diagonal block of L = 2 is W
    ev = np.linalg.eigvalsh(Wd)
    np.testing.assert_allclose([lo, hi], [ev[0], ev[-1]], atol=1e-10)
    # lam between lambda_max(W) (< 2) and -(L-1) lambda_min(W) (> 3): indefinite
    assert hi < 2.0 < -(L - 1) * lo
    bad = GridPottsGCRF(wt, 2.0, L)
    # by default (Gershgorin inconclusive) the split's CG raises, naming lam and a proven lower
    # bound lam - rho of the threshold
    with pytest.raises(NotPositiveDefiniteError, match="lam") as err:
        gcrflinalg.solve(bad, np.ones(bad.size))
    assert err.value.quantity == "lam" and err.value.value == 2.0
    assert 2.0 < err.value.bound <= -(L - 1) * lo + 1e-9 and "Rayleigh quotient" in str(err.value)
    # the exact check names the exact bound
    with pytest.raises(NotPositiveDefiniteError, match="lam") as err:
        gcrflinalg.solve(GridPottsGCRF(wt, 2.0, L), np.ones(bad.size), check_pd="exact")
    assert err.value.quantity == "lam" and np.isclose(err.value.bound, -(L - 1) * lo)
    assert np.linalg.eigvalsh(dense_potts(wt, 2.0, L, 4))[0] < 0  # the check was right
    # lam just above the exact bound is accepted although Gershgorin (L-1) * 2 = 6 fails
    good = GridPottsGCRF(wt, -(L - 1) * lo * 1.01, L)
    assert good.check_positive_definite() is False  # inconclusive: left to CG
    assert good.check_positive_definite(exact=True) is True
    assert np.linalg.eigvalsh(dense_potts(wt, -(L - 1) * lo * 1.01, L, 4))[0] > 0
    # the Lanczos path on a larger image agrees with the dense one
    # (W = 0.5 x the grid's adjacency matrix, whose extreme eigenvalues are
    # +-(2 cos(pi / (H + 1)) + 2 cos(pi / (W + 1))))
    big = GridPottsGCRF(np.full((2, 40, 30), 0.5), 1.0, L)
    lo_b, hi_b = big.weight_extreme_eigenvalues()
    exact = np.cos(np.pi / 41) + np.cos(np.pi / 31)
    np.testing.assert_allclose([lo_b, hi_b], [-exact, exact], rtol=1e-6)
    # batched: the offending item is named
    lam = np.array([10.0, 2.0])
    with pytest.raises(NotPositiveDefiniteError, match=r"batch item \(1,\)"):
        GridPottsGCRF(np.stack([wt, wt]), lam, L).check_positive_definite(exact=True)
    with pytest.raises(NotPositiveDefiniteError, match=r"batch item \(1,\)"):
        gcrflinalg.solve(GridPottsGCRF(np.stack([wt, wt]), lam, L), np.ones((2, bad.size)))
    # opting out skips the check (CG then detects the indefinite system itself), in the generic
    # solver and in the Potts split
    for method in ("pcg", "cg", "potts_split"):
        with pytest.raises(NotPositiveDefiniteError):
            gcrflinalg.solve(bad, rng.standard_normal(bad.size), check_pd=False, method=method, rtol=1e-12,
                             maxiter=5000)
    # ... or, told not to raise, the split stops unconverged
    res = bad._solve(rng.standard_normal(bad.size), "potts_split", None, {"rtol": 1e-12, "check_pd": False})
    assert not res.converged and res.info > 0


def test_general_positive_definiteness_check(rng):
    H, W, L = 4, 5, 2
    pw = random_pairwise(rng, (), 4, L, H, W, scale=0.1)
    op = GridGCRF(pw, 5.0)
    bound = float(op.gershgorin_bound())
    M0 = dense_general(pw, 0.0, 4)
    assert bound >= np.abs(np.linalg.eigvalsh(M0)).max() - 1e-12
    assert op.check_positive_definite() is True  # Gershgorin proves it
    ev = np.linalg.eigvalsh(M0)
    # below the Gershgorin bound but PD: no error
    lam_ok = -ev[0] + 0.05
    assert lam_ok < bound
    assert GridGCRF(pw, lam_ok).check_positive_definite() is False  # inconclusive, left to CG
    GridGCRF(pw, lam_ok).check_positive_definite(exact=True)
    x = gcrflinalg.solve(GridGCRF(pw, lam_ok), np.ones(L * H * W), rtol=1e-10).x
    np.testing.assert_allclose(x, np.linalg.solve(M0 + lam_ok * np.eye(L * H * W), np.ones(L * H * W)),
                               rtol=1e-6, atol=1e-8)
    # indefinite: the exact check raises naming lam and -lambda_min(A) (Lanczos, tolerance 1e-6)
    lam_bad = -ev[0] - 0.05
    with pytest.raises(NotPositiveDefiniteError, match="lam") as err:
        gcrflinalg.solve(GridGCRF(pw, lam_bad), np.ones(L * H * W), check_pd="exact")
    assert np.isclose(err.value.bound, -ev[0], rtol=1e-4) and np.isclose(err.value.value, lam_bad)
    # by default CG raises on it (random b excites the negative eigenvector)
    with pytest.raises(NotPositiveDefiniteError, match="lam") as err:
        gcrflinalg.solve(GridGCRF(pw, lam_bad), rng.standard_normal(L * H * W), rtol=1e-10)
    assert lam_bad < err.value.bound <= -ev[0] + 1e-9 and np.isclose(err.value.value, lam_bad)


def test_timing_entry_quick():
    from studies import timing_grid

    rows = timing_grid.run(quick=True)
    assert rows and all({"entry", "case", "what", "time_s", "peer", "ratio", "target", "met"} <= set(r) for r in rows)
    assert all(r["time_s"] > 0 for r in rows)


def test_array_code_path_matches_kernels(rng, monkeypatch):
    """The sliced array code that serves CuPy, run on NumPy, equals the Numba kernels."""
    import gcrflinalg.forms.grid.kernels as kernels

    H, W, L = 5, 7, 3
    for nbhd in (4, 8, 12):
        pw = random_pairwise(rng, (2,), nbhd, L, H, W)
        wt = random_weights(rng, (2,), nbhd, H, W)
        lam = np.array([2.0, 3.0])
        v = rng.standard_normal((3, 2, L, H, W))
        b = rng.standard_normal((2, L, H, W))
        ops = [GridGCRF(pw, lam, nbhd), GridPottsGCRF(wt, lam, L, nbhd)]
        expect = [(op.matvec(v), op.gauss_seidel_sweep(v[0], b, 1.2)) for op in ops]
        split = gcrflinalg.solve(ops[1], b, method="cg", rtol=1e-10).x
        monkeypatch.setattr(kernels, "_use_numba", lambda arr: False)
        for op, (mv, sweep) in zip(ops, expect):
            np.testing.assert_allclose(op.matvec(v), mv, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(op.gauss_seidel_sweep(v[0], b, 1.2), sweep, rtol=1e-12, atol=1e-12)
        # the Potts split through the batched solvers.cg
        np.testing.assert_allclose(gcrflinalg.solve(ops[1], b, method="cg", rtol=1e-10).x, split,
                                   rtol=1e-8, atol=1e-8)
        monkeypatch.undo()


def test_parallel_product_matches_serial(rng, monkeypatch):
    import gcrflinalg.forms.grid.kernels as kernels

    pw = random_pairwise(rng, (2,), 8, 3, 6, 5)
    v = rng.standard_normal((2, 2, 3, 6, 5))
    op = GridGCRF(pw, 1.0, 8)
    serial = op.matvec(v)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ENTRIES", 0)
    np.testing.assert_allclose(op.matvec(v), serial, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L", [6, 9])
def test_many_labels_matvec(rng, L):
    """Label counts whose off-diagonal columns split into several groups of four plus a rest."""
    for nbhd in (4, 12):
        pw = random_pairwise(rng, (2,), nbhd, L, 3, 4)
        op = GridGCRF(pw, np.array([1.0, 2.0]), nbhd)
        ref = dense_batched(dense_general, pw, np.array([1.0, 2.0]), nbhd)
        v = rng.standard_normal((3, 2, op.size))
        np.testing.assert_allclose(op.matvec(v), np.einsum("bij,ebj->ebi", ref, v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parallel", [False, True])
def test_shifted_product_kernel_matches_reference(rng, monkeypatch, parallel):
    """``pairwise_product(..., lam=)`` (lam v written by the kernel, threads zeroing and summing
    their own copies) equals lam v + the array-code product, with garbage in the entries of edges
    leaving the image."""
    import gcrflinalg.forms.grid.kernels as kernels
    from gcrflinalg.neighbourhoods import neighbourhood_offsets

    if parallel:
        monkeypatch.setattr(kernels, "PARALLEL_MIN_ENTRIES", 0)
    for nbhd in (4, 8, 12):
        for (H, W, L) in [(6, 5, 3), (4, 7, 6), (1, 3, 2)]:
            offs = neighbourhood_offsets(nbhd)
            pw = random_pairwise(rng, (2,), nbhd, L, H, W).astype(np.float64)
            for k, (di, dj) in enumerate(offs):  # entries of edges leaving the image: ignored
                pi, pj, _, _ = kernels.edge_ranges(di, dj, H, W)
                keep = np.zeros((H, W), bool)
                keep[pi, pj] = True
                pw[:, k][..., ~keep] = np.nan
            pw = np.ascontiguousarray(pw)
            v = rng.standard_normal((3, 2, L, H, W))
            lam = np.array([2.0, 3.0])
            expect = lam[None, :, None, None, None] * v
            kernels._pairwise_product_xp(np, np.nan_to_num(pw), v, expect, offs)
            got = kernels.pairwise_product(pw, v, np.full_like(v, np.nan), offs, lam=lam)
            np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)
            acc = kernels.pairwise_product(pw, v, np.ones_like(v), offs)  # accumulating form
            np.testing.assert_allclose(acc, expect - lam[None, :, None, None, None] * v + 1, rtol=1e-12,
                                       atol=1e-12)
            for dtype in (np.float32,):
                got32 = kernels.pairwise_product(pw.astype(dtype), v.astype(dtype), np.empty(v.shape, dtype),
                                                 offs, lam=lam.astype(dtype))
                np.testing.assert_allclose(got32, expect, rtol=1e-4, atol=1e-4)
