"""What a fresh operator adds to a default solve, counted in passes over the parameters.

The default path (construction, finiteness check, ``check_pd=True`` certificate, the set-up of the
method ``"auto"`` picks) may read the parameters at most once more than the same solve on a held
operator (docs/guarantees.md, "Cost of the default checks").  Counting the calls of every function
that reads a whole parameter array makes a regression that adds a pass (a second scan, a separate
Gershgorin pass, a defensive copy built by a product, a red-black layout built twice) fail here,
independently of timing noise.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

import gcrflinalg as g
from gcrflinalg import _fingerprint
from gcrflinalg.forms.grid import operators as grid_ops
from gcrflinalg.forms.lowrank import operators as lowrank_ops


def _count(monkeypatch, counts, owner, name):
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        counts[name] += 1
        return fn(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


@pytest.fixture
def passes(monkeypatch):
    """A Counter of the calls of every function that reads a whole parameter array."""
    counts = collections.Counter()
    _count(monkeypatch, counts, _fingerprint, "scan")  # finiteness + fingerprint (construction, sync)
    _count(monkeypatch, counts, _fingerprint, "all_finite")  # finiteness alone
    for name in ("scan_pairwise", "red_black_blocks", "pairwise_product", "weight_product", "assemble_csr"):
        _count(monkeypatch, counts, grid_ops, name)
    for cls in (grid_ops.GridGCRF, grid_ops.GridPottsGCRF):
        _count(monkeypatch, counts, cls, "_gershgorin_radii")
    _count(monkeypatch, counts, lowrank_ops, "_check_finite_by_product")  # finiteness by a product
    for cls in (lowrank_ops.LowRankGCRF, lowrank_ops.LowRankPottsGCRF):
        _count(monkeypatch, counts, cls, "_apply_flat")
        _count(monkeypatch, counts, cls, "_compute_factor")
    return counts


def _grid(rng, dtype, L=3, H=9, W=11):
    pw = rng.uniform(-0.05, 0.05, (2, L, L, H, W)).astype(dtype)
    return (lambda p: g.GridGCRF(p, 2.0)), pw, rng.standard_normal((L, H, W)).astype(dtype)


def _grid8(rng, dtype, L=3, H=9, W=11):
    pw = rng.uniform(-0.05, 0.05, (4, L, L, H, W)).astype(dtype)
    return (lambda p: g.GridGCRF(p, 2.0, neighbourhood=8)), pw, rng.standard_normal((L, H, W)).astype(dtype)


def _potts(rng, dtype, L=3, H=9, W=11):
    wt = rng.uniform(0, 0.1, (2, H, W)).astype(dtype)
    return (lambda w: g.GridPottsGCRF(w, 2.0, L)), wt, rng.standard_normal((L, H, W)).astype(dtype)


def _lowrank(rng, dtype, D=6, L=3, H=7, W=8):
    E = (rng.standard_normal((D, L, H, W)) / np.sqrt(D)).astype(dtype)
    return (lambda e: g.LowRankGCRF(e, 1.0)), E, rng.standard_normal((L, H, W)).astype(dtype)


def _lowrank_potts(rng, dtype, D=6, L=3, H=7, W=8):
    psi = (0.05 * rng.standard_normal((D, H, W))).astype(dtype)
    return (lambda p: g.LowRankPottsGCRF(p, 1.0, L)), psi, rng.standard_normal((L, H, W)).astype(dtype)


CASES = {"grid4": _grid, "grid8": _grid8, "grid_potts": _potts, "lowrank": _lowrank,
         "lowrank_potts": _lowrank_potts}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fresh_default_solve_reads_the_parameters_at_most_once_more_than_a_held_one(case, dtype, passes):
    rng = np.random.default_rng(7)
    build, param, b = CASES[case](rng, dtype)
    # low-rank "auto" on a held operator reuses its cached factorisation (a solve method's own
    # set-up, not a check): the check's cost is compared on CG there
    method = "cg" if case.startswith("lowrank") else "auto"
    held = build(param)
    g.solve(held, b, method=method)  # certificate and set-up done once
    passes.clear()
    held_result = g.solve(held, b, method=method)
    held_passes = dict(passes)
    passes.clear()
    fresh_result = g.solve(build(param), b, method=method)
    fresh_passes = dict(passes)
    assert fresh_result.method == held_result.method
    assert fresh_result.matvecs == held_result.matvecs
    np.testing.assert_array_equal(fresh_result.iterations, held_result.iterations)
    extra = sum(fresh_passes.values()) - sum(held_passes.values())
    # the Potts grid reads its K x H x W weights twice (scan, Gershgorin radius): each pass is
    # 1/L of the data of one product, which reads L label planes
    # the low-rank Potts certificate is the Cholesky factor of lam I - psi psi^T, whose Gram matrix
    # (one read of psi, cached for the direct solve) is the documented certificate work
    # the general low-rank form checks E through the products CG makes anyway: no pass of its own
    # the general grid defers its scan of a viewed array to the first solve, which then reads it
    # once (scan_pairwise: fingerprint, NaN/Inf, Gershgorin radii, red-black blocks) where a held
    # operator's solve reads it once for the fingerprint: no pass more
    allowed = {"grid_potts": 2, "lowrank_potts": 2, "lowrank": 0, "grid4": 0, "grid8": 0}.get(case, 1)
    assert extra <= allowed, (fresh_passes, held_passes)


def test_a_held_operator_on_read_only_parameters_rereads_nothing(passes):
    rng = np.random.default_rng(1)
    build, pw, b = _grid(rng, np.float64)
    pw.flags.writeable = False
    op = build(pw)
    g.solve(op, b, method="auto")
    passes.clear()
    g.solve(op, b, method="auto")
    assert passes["scan"] == 0 and passes["scan_pairwise"] == 0


def test_a_fresh_operator_on_writeable_parameters_reads_them_once_for_its_first_solve(passes):
    # the scan is deferred to the first read: construction reads nothing, the first solve reads the
    # blocks once (fingerprint, NaN/Inf, radii, red-black blocks), the second once (fingerprint)
    rng = np.random.default_rng(3)
    build, pw, b = _grid(rng, np.float64)
    op = build(pw)
    assert sum(passes.values()) == 0
    g.solve(op, b)
    assert passes["scan_pairwise"] == 1 and passes["scan"] == 0
    g.solve(op, b)
    assert passes["scan_pairwise"] == 1 and passes["scan"] == 1


def test_a_held_operator_on_writeable_parameters_rereads_them_once_per_solve(passes):
    rng = np.random.default_rng(2)
    build, pw, b = _grid(rng, np.float64)
    op = build(pw)
    g.solve(op, b, method="auto")
    passes.clear()
    g.solve(op, b, method="auto", check_pd="exact")  # the exact check reuses the synced state
    g.solve(op, b, method="direct")
    assert passes["scan"] == 2 and passes["scan_pairwise"] == 0 and passes["red_black_blocks"] == 0


def test_scan_pairwise_matches_its_separate_parts():
    from gcrflinalg.forms.grid.redblack import red_black_blocks
    from gcrflinalg.forms.grid.scan import scan_pairwise

    rng = np.random.default_rng(3)
    for K, nb in ((2, 4), (4, 8), (6, 12)):
        pw = rng.uniform(-1, 1, (2, K, 3, 3, 7, 9))
        op = g.GridGCRF(pw.copy(), 1.0, neighbourhood=nb)
        finite, h, bound, blocks, radii = scan_pairwise(op._params, op.offsets, build_blocks=K == 2)
        assert finite and h == _fingerprint.scan(pw)[1]
        np.testing.assert_allclose(radii, op._gershgorin_radii_xp(), rtol=1e-13)
        np.testing.assert_allclose(bound, op._gershgorin_radii().reshape(2, -1).max(axis=1), rtol=1e-13)
        dense = op.to_dense()
        off = np.abs(dense) * (1 - np.eye(dense.shape[-1]))
        np.testing.assert_allclose(bound, off.sum(axis=-1).max(axis=-1), rtol=1e-13)
        if K == 2:
            np.testing.assert_array_equal(blocks, red_black_blocks(op._params))
        pw[1, 0, 0, 0, 3, 3] = np.inf
        assert not scan_pairwise(pw, op.offsets)[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_scan_pairwise_on_the_parallel_path_matches_its_separate_parts(dtype, threads):
    # above the parallel threshold the scan splits the systems, directions and label ranges into
    # items, each with its own column sums: the result must not depend on the split
    from gcrflinalg.forms.grid.redblack import red_black_blocks
    from gcrflinalg.forms.grid.scan import scan_pairwise

    rng = np.random.default_rng(5)
    for B, K, nb, L, H, W in ((1, 2, 4, 21, 40, 63), (2, 4, 8, 9, 41, 41)):
        pw = rng.uniform(-1, 1, (B, K, L, L, H, W)).astype(dtype)
        assert pw.size >= 1 << 20
        op = g.GridGCRF(pw.copy(), 1.0, neighbourhood=nb)
        with g.num_threads(threads):
            finite, h, bound, blocks, radii = scan_pairwise(pw, op.offsets, build_blocks=K == 2)
        assert finite and h == _fingerprint.scan(pw)[1]
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(radii, op._gershgorin_radii_xp(), rtol=tol)
        np.testing.assert_allclose(bound, radii.reshape(B, -1).max(axis=1), rtol=0)
        if K == 2:
            np.testing.assert_array_equal(blocks, red_black_blocks(pw))
        with g.num_threads(threads):  # the same read without the fingerprint: the same sums
            finite2, h2, bound2, blocks2, radii2 = scan_pairwise(pw, op.offsets, build_blocks=K == 2,
                                                                 fingerprint=False)
        assert finite2 and h2 is None
        np.testing.assert_array_equal(radii2, radii)
        np.testing.assert_array_equal(bound2, bound)
        if K == 2:
            np.testing.assert_array_equal(blocks2, blocks)
        bad = pw.copy()
        bad[-1, -1, L // 2, -1, H - 1, W - 1] = np.nan
        with g.num_threads(threads):
            assert not scan_pairwise(bad, op.offsets)[0]
            assert not scan_pairwise(bad, op.offsets, fingerprint=False)[0]


def test_fingerprint_changes_with_any_single_entry_and_with_a_swap():
    rng = np.random.default_rng(4)
    for dtype in (np.float64, np.float32):
        x = rng.standard_normal(3 * _fingerprint._CHUNK + 5).astype(dtype)
        h0 = _fingerprint.scan(x)[1]
        for i in (0, 17, _fingerprint._CHUNK, x.size - 1):
            y = x.copy()
            y[i] = np.nextafter(y[i], np.inf)  # one ulp
            assert _fingerprint.scan(y)[1] != h0
        y = x.copy()
        y[[3, _fingerprint._CHUNK + 3]] = y[[_fingerprint._CHUNK + 3, 3]]
        assert _fingerprint.scan(y)[1] != h0
        assert _fingerprint.scan(x.copy())[1] == h0


def test_block_buffers_of_gone_operators_are_reused_only_when_nobody_holds_them():
    import gc

    from gcrflinalg.forms.grid import scan as grid_scan

    grid_scan._POOL.clear()
    pw = np.random.default_rng(5).uniform(-0.1, 0.1, (2, 3, 3, 9, 13))
    op = g.GridGCRF(pw, 2.0)
    held = op.red_black_layout()  # a caller keeps the layout: never handed to another operator
    del op
    gc.collect()
    assert not any(grid_scan._POOL.values())
    op = g.GridGCRF(pw, 2.0)
    first = id(op.red_black_layout())
    b = np.random.default_rng(6).standard_normal(op.vector_shape)
    x_ref = g.solve(op, b, rtol=1e-10).x
    del op
    gc.collect()
    op = g.GridGCRF(pw * 1.0, 2.0)  # same size: reuses the buffer, and solves the same
    assert id(op.red_black_layout()) == first
    np.testing.assert_array_equal(op.red_black_layout(), held)
    np.testing.assert_array_equal(g.solve(op, b, rtol=1e-10).x, x_ref)
    grid_scan._POOL.clear()


def test_multires_fresh_default_solve_reads_each_level_once_more(passes):
    rng = np.random.default_rng(8)
    L, H, W = 3, 8, 10
    fine = rng.uniform(-0.05, 0.05, (2, L, L, H, W))
    coarse = rng.uniform(-0.05, 0.05, (2, L, L, H // 2, W // 2))
    cross = rng.uniform(0, 0.02, (L, L, H, W))

    def build():
        return g.MultiResGCRF([g.GeneralLevel(fine), g.GeneralLevel(coarse)], [cross], 2.0)

    held = build()
    b = rng.standard_normal(held.size)
    g.solve(held, b, method="auto")
    passes.clear()
    g.solve(held, b, method="auto")
    held_passes = dict(passes)
    passes.clear()
    g.solve(build(), b, method="auto")
    fresh_passes = dict(passes)
    # one read per parameter array (two levels, one coupling) and no red-black layout for a level
    assert fresh_passes.get("red_black_blocks", 0) == 0
    assert sum(fresh_passes.values()) - sum(held_passes.values()) <= 3, (fresh_passes, held_passes)


def test_block_buffers_are_not_shared_between_image_sizes_of_equal_length():
    """H = 5, W = 7 and H = 6, W = 8 have colour classes of the same padded length: a buffer of the
    one must not serve the other (their pads differ)."""
    import gc

    from gcrflinalg.forms.grid import scan as grid_scan
    from gcrflinalg.forms.grid.redblack import red_black_blocks

    grid_scan._POOL.clear()
    rng = np.random.default_rng(9)
    op = g.GridGCRF(rng.uniform(-0.1, 0.1, (2, 2, 2, 5, 7)), 2.0)
    del op
    gc.collect()
    pw = rng.uniform(-0.1, 0.1, (2, 2, 2, 6, 8))
    op = g.GridGCRF(pw, 2.0)
    np.testing.assert_array_equal(op.red_black_layout(), red_black_blocks(op._params))
    grid_scan._POOL.clear()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lowrank_fingerprints_its_embeddings_only_once_it_caches_a_factor(dtype, passes):
    # M = lam I + E^T E is positive definite whatever E is: a CG-only operator never hashes E;
    # the fingerprint is taken when the first factor is stored and guards it from then on
    rng = np.random.default_rng(11)
    D, L, H, W = 6, 3, 64, 64  # large enough for the compiled scans
    E = (rng.standard_normal((D, L, H, W)) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal((L, H, W)).astype(dtype)
    tol = 1e-9 if dtype == np.float64 else 1e-3

    def dense_solution(emb):
        e = emb.reshape(D, -1).astype(np.float64)
        return np.linalg.solve(e.T @ e + np.eye(e.shape[1]), b.reshape(-1).astype(np.float64))

    op = g.LowRankGCRF(E, 1.0)
    assert op.watches_parameters
    assert passes["scan"] == 0 and passes["all_finite"] == 0  # finiteness by one product with ones
    for _ in range(2):
        g.solve(op, b, method="cg")
    assert passes["scan"] == 0 and passes["_compute_factor"] == 0
    E *= 1.5  # nothing cached from E yet: the next solve simply reads the new values
    x = g.solve(op, b, method="direct").x
    assert passes["_compute_factor"] == 1 and passes["scan"] == 1
    np.testing.assert_allclose(x.reshape(-1), dense_solution(E), rtol=tol, atol=tol)
    g.solve(op, b, method="direct")  # the factor is reused after one re-read
    assert passes["_compute_factor"] == 1 and passes["scan"] == 2
    E[0, 0, 0, 0] += 0.25  # one entry changes after the factor was stored: detected, refactored
    x = g.solve(op, b, method="direct").x
    assert passes["_compute_factor"] == 2
    np.testing.assert_allclose(x.reshape(-1), dense_solution(E), rtol=tol, atol=tol)


def test_lowrank_lazy_fingerprint_still_rejects_nan_at_first_use_and_after_caching():
    rng = np.random.default_rng(12)
    E = rng.standard_normal((4, 2, 64, 64))
    b = rng.standard_normal((2, 64, 64))
    bad = E.copy()
    bad[1, 1, 3, 5] = np.nan
    for method in ("cg", "direct", "auto"):
        with pytest.raises(ValueError, match="embeddings contains NaN or Inf"):
            g.solve(g.LowRankGCRF(bad, 1.0), b, method=method)
    op = g.LowRankGCRF(E, 1.0)
    g.solve(op, b, method="direct")
    E[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        g.solve(op, b, method="direct")
