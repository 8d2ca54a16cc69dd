"""Multi-resolution grid G-CRFs against a dense matrix assembled here straight from docs/design.md 3.3."""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from gcrflinalg.backend import to_host
from gcrflinalg.forms.multires import GeneralLevel, MultiResGCRF, PottsLevel
from operator_checks import (
    assert_dense_matches,
    assert_not_mutated,
    assert_symmetric,
    fd_check_gradients,
)
from solvers import NotPositiveDefiniteError
from operator_cases import OFFSETS, dense_multires
from operator_cases import dense_grid_general as dense_general

# levels: (form, neighbourhood, H, W); couplings take the forms given per case
CASES = {
    "general-general": ([("general", 4, 5, 7), ("general", 8, 3, 4)], ["general"]),
    "potts-potts-potts": ([("potts", 4, 6, 5), ("potts", 12, 3, 3), ("potts", 4, 2, 2)], ["potts", "potts"]),
    "mixed": ([("general", 12, 5, 7), ("potts", 4, 3, 4), ("general", 8, 2, 3)], ["potts", "general"]),
}


def make_params(rng, levels, cross_forms, L, batch=(), scale=0.1):
    params = []
    for form, nbhd, H, W in levels:
        K = len(OFFSETS[nbhd])
        shape = (K, L, L, H, W) if form == "general" else (K, H, W)
        params.append(scale * rng.standard_normal(batch + shape))
    for s, form in enumerate(cross_forms):
        _, _, H, W = levels[s]
        shape = (L, L, H, W) if form == "general" else (H, W)
        params.append(scale * rng.standard_normal(batch + shape))
    return params


def build(params, lam, levels, cross_forms, L):
    S = len(levels)
    lv = [GeneralLevel(p, nbhd) if form == "general" else PottsLevel(p, nbhd)
          for p, (form, nbhd, _, _) in zip(params[:S], levels)]
    return MultiResGCRF(lv, params[S:], lam, num_labels=L, cross_forms=cross_forms)


def dense_batched(params, lam, levels, cross_forms, L, batch):
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), batch)
    out = [dense_multires([p[idx] for p in params], float(lam[idx]), levels, cross_forms, L)
           for idx in np.ndindex(*batch)]
    return np.stack(out).reshape(batch + out[0].shape)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_dense(xp, rng, case, L, dtype):
    levels, forms = CASES[case]
    for batch in [(), (2,)]:
        params = [p.astype(dtype) for p in make_params(rng, levels, forms, L, batch)]
        lam = 2.0 if not batch else np.array([2.0, 3.0])
        op = build([xp.asarray(p) for p in params], lam if np.isscalar(lam) else xp.asarray(lam), levels, forms, L)
        ref = dense_batched(params, lam, levels, forms, L, batch)
        N = sum(L * H * W for _, _, H, W in levels)
        assert op.shape == (N, N) and op.vector_shape == (N,) and op.batch_shape == batch
        assert op.level_shapes == [(L, H, W) for _, _, H, W in levels]
        assert_dense_matches(op, ref, rng, dtype)
        assert_symmetric(op, rng, dtype)
        for idx in np.ndindex(*batch):
            np.testing.assert_allclose(to_host(op.to_sparse(idx).toarray()), ref[idx], rtol=1e-6, atol=1e-6)
        v = rng.standard_normal(batch + (N,)).astype(dtype)
        parts = op.split_levels(xp.asarray(v))
        assert [tuple(p.shape) for p in parts] == [batch + s for s in op.level_shapes]
        np.testing.assert_array_equal(to_host(op.join_levels(parts)), v)


def test_parent_map_odd_sizes():
    levels, forms = [("general", 4, 7, 5), ("general", 4, 3, 2)], ["general"]
    op = build(make_params(np.random.default_rng(0), levels, forms, 1), 1.0, levels, forms, 1)
    rows, cols = op.parents[0]
    np.testing.assert_array_equal(rows, [0, 0, 0, 1, 1, 2, 2])  # floor(i * 3 / 7)
    np.testing.assert_array_equal(cols, [0, 0, 0, 1, 1])  # floor(j * 2 / 5)


@pytest.mark.parametrize("method", ["cg", "pcg", "gmres", "jacobi", "gauss_seidel", "direct"])
def test_solves_match_dense(xp, rng, method):
    levels, forms = CASES["mixed"]
    L = 3
    params = make_params(rng, levels, forms, L, (2,), scale=0.05)
    lam = np.array([2.0, 3.0])
    op = build([xp.asarray(p) for p in params], xp.asarray(lam), levels, forms, L)
    ref = dense_batched(params, lam, levels, forms, L, (2,))
    b = rng.standard_normal((2, op.size))
    res = gcrflinalg.solve(op, xp.asarray(b), method=method, rtol=1e-10, maxiter=5000)
    assert res.x.shape == b.shape and np.all(res.converged)
    np.testing.assert_allclose(to_host(res.x), np.linalg.solve(ref, b[..., None])[..., 0], rtol=1e-8, atol=1e-8)


def test_gauss_seidel_sweep_is_block_gauss_seidel(rng):
    """One sweep: levels in order, colours in order within a level, exact pixel updates."""
    from gcrflinalg.forms.grid.kernels import colour_masks

    levels, forms = CASES["mixed"]
    L, lam, omega = 2, 1.8, 0.9
    params = make_params(rng, levels, forms, L)
    op = build(params, lam, levels, forms, L)
    M = dense_multires(params, lam, levels, forms, L)
    x, b = rng.standard_normal(op.size), rng.standard_normal(op.size)
    out = op.gauss_seidel_sweep(x, b, omega)
    expect = x.copy()
    start = 0
    for form, nbhd, H, W in levels:
        masks = colour_masks(nbhd, H, W)
        for c in range(masks.shape[0]):
            for (i, j) in zip(*np.nonzero(masks[c])):
                for m in range(L):
                    r = start + m * H * W + i * W + j
                    s = b[r] - M[r] @ expect + M[r, r] * expect[r]
                    expect[r] = (1 - omega) * expect[r] + omega * s / M[r, r]
        start += L * H * W
    np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["general-general", "mixed"])
def test_gradients_match_finite_differences(rng, case):
    levels, forms = CASES[case]
    L = 2
    params = make_params(rng, levels, forms, L, (2,))
    lam = np.array([2.0, 2.5])

    def make(ps, lm):
        return build(ps, lm, levels, forms, L)

    op = make(params, lam)
    b = rng.standard_normal((2, op.size))
    grads = fd_check_gradients(make, params, lam, b, method="direct", rng=rng, n_probe=4)
    S = len(levels)
    assert list(grads)[:S] == [f"levels[{s}].{'pairwise' if f == 'general' else 'weights'}"
                               for s, (f, _, _, _) in enumerate(levels)]
    assert list(grads)[S:S + len(forms)] == [f"cross[{s}]" for s in range(len(forms))]
    # out-of-image level edges get zero gradient
    for s, (form, nbhd, H, W) in enumerate(levels):
        mask = gcrflinalg.neighbourhoods.edge_mask(nbhd, H, W)
        g = grads[list(grads)[s]]
        if form == "general":
            g = np.moveaxis(g, 1, 3)
        assert np.all(g[..., ~mask] == 0)


def test_gradients_through_cg(rng):
    levels, forms = CASES["potts-potts-potts"]
    L = 3
    params = [np.abs(p) for p in make_params(rng, levels, forms, L, (), scale=0.05)]

    def make(ps, lm):
        return build(ps, lm, levels, forms, L)

    b = rng.standard_normal(make(params, 1.5).size)
    fd_check_gradients(make, params, 1.5, b, method="cg", rng=rng, n_probe=3)


def test_defaults_and_bad_input(rng):
    L = 2
    pw0 = 0.1 * rng.standard_normal((2, L, L, 5, 7))
    w1 = 0.1 * rng.standard_normal((2, 3, 4))
    c_gen = 0.1 * rng.standard_normal((L, L, 5, 7))
    c_potts = 0.1 * rng.standard_normal((5, 7))
    before = [a.copy() for a in (pw0, w1, c_gen, c_potts)]
    # default coupling form follows the finer level; L comes from the general level
    op = MultiResGCRF([GeneralLevel(pw0), PottsLevel(w1)], [c_gen], 2.0)
    assert op.cross_forms == ["general"] and op.num_labels == L and op.num_levels == 2
    # a single level is a grid operator in flat layout
    single = MultiResGCRF([GeneralLevel(pw0)], [], 2.0)
    v = rng.standard_normal(single.size)
    np.testing.assert_allclose(single.matvec(v), dense_general(pw0, 2.0, 4) @ v, atol=1e-12)
    with pytest.raises(ValueError, match="num_labels"):
        MultiResGCRF([PottsLevel(w1)], [], 1.0)
    with pytest.raises(ValueError, match="cross"):
        MultiResGCRF([GeneralLevel(pw0), PottsLevel(w1)], [], 2.0)
    with pytest.raises(ValueError, match=r"cross\[0\]"):
        MultiResGCRF([GeneralLevel(pw0), PottsLevel(w1)], [c_potts], 2.0)  # general coupling expected
    with pytest.raises(ValueError, match=r"cross\[0\]"):
        MultiResGCRF([GeneralLevel(pw0), PottsLevel(w1)], [c_gen], 2.0, cross_forms="potts")
    with pytest.raises(ValueError, match="cross_forms"):
        MultiResGCRF([GeneralLevel(pw0), PottsLevel(w1)], [c_gen], 2.0, cross_forms="dense")
    with pytest.raises(ValueError, match=r"levels\[1\]"):
        MultiResGCRF([GeneralLevel(pw0), PottsLevel(w1[:1])], [c_gen], 2.0)
    with pytest.raises(ValueError, match="num_labels"):
        MultiResGCRF([GeneralLevel(pw0), PottsLevel(w1)], [c_gen], 2.0, num_labels=3)
    with pytest.raises(TypeError, match="GeneralLevel"):
        MultiResGCRF([pw0], [], 2.0)
    with pytest.raises(ValueError, match="batch shape"):
        MultiResGCRF([GeneralLevel(pw0), PottsLevel(np.stack([w1, w1]))], [c_gen], 2.0)
    for bad_lam in (0.0, -2.0, np.nan):
        with pytest.raises(ValueError, match="lam"):
            MultiResGCRF([GeneralLevel(pw0), PottsLevel(w1)], [c_gen], bad_lam)
    bad = c_gen.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"cross\[0\]"):
        MultiResGCRF([GeneralLevel(pw0), PottsLevel(w1)], [bad], 2.0)
    x = gcrflinalg.solve(op, rng.standard_normal(op.size)).x
    op.parameter_gradients(x, x)
    op.gauss_seidel_sweep(x, x)
    assert_not_mutated(before, [pw0, w1, c_gen, c_potts])


def test_positive_definiteness(rng):
    levels, forms = CASES["general-general"]
    L = 2
    params = make_params(rng, levels, forms, L, scale=0.2)
    M0 = dense_multires(params, 0.0, levels, forms, L)
    ev = np.linalg.eigvalsh(M0)
    op = build(params, 1.0, levels, forms, L)
    bound = float(op.gershgorin_bound())
    assert bound >= np.abs(ev).max() - 1e-12
    assert build(params, bound + 0.1, levels, forms, L).check_positive_definite() is True
    # PD below Gershgorin: inconclusive by default, no error from the exact check, and it solves
    ok = build(params, -ev[0] + 0.05, levels, forms, L)
    assert ok.check_positive_definite() is False
    ok.check_positive_definite(exact=True)
    b = rng.standard_normal(M0.shape[0])
    x = gcrflinalg.solve(ok, b, rtol=1e-10).x
    np.testing.assert_allclose(x, np.linalg.solve(M0 + (-ev[0] + 0.05) * np.eye(len(b)), b), rtol=1e-6, atol=1e-8)
    # indefinite: CG raises by default with a proven lower bound of -lambda_min(A) ...
    lam_bad = -ev[0] - 0.05
    with pytest.raises(NotPositiveDefiniteError, match="lam") as err:
        gcrflinalg.solve(build(params, lam_bad, levels, forms, L), b)
    assert np.isclose(err.value.value, lam_bad) and lam_bad < err.value.bound <= -ev[0] + 1e-9
    # ... and the exact check (matrix-free Lanczos) estimates it
    with pytest.raises(NotPositiveDefiniteError, match="lam") as err:
        gcrflinalg.solve(build(params, lam_bad, levels, forms, L), np.ones(M0.shape[0]), check_pd="exact")
    assert np.isclose(err.value.bound, -ev[0], rtol=1e-4)
