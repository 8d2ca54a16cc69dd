"""The spectral facts that set a built-in problem's ``lam``, and the reuse of the photograph.

``rho(B)`` and the positive-definiteness bound from :func:`gcrflinalg.problems.spectrum.offdiag_spectrum`
(Lanczos on the operator's product, or on the Potts grid's ``P x P`` weight matrix) and from
:func:`~gcrflinalg.problems.spectrum.structured_spectrum` (products of the grid problems' factors,
:class:`~gcrflinalg.problems.coupling.GridCoupling`) are checked against dense eigenvalues of the
matrix assembled by explicit loops from docs/design.md (3.1, 3.2), on problems just above the size
where the dense path takes over, so the Lanczos paths run.  The factors' product is checked against
the operators' own, the compiled k-means against the plain NumPy one.
"""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from gcrflinalg import problems
from gcrflinalg.problems import _kernels, photo, spectrum
from gcrflinalg.problems.coupling import CHECKED_CONFIGURATIONS, GridCoupling
from operator_cases import OFFSETS, dense_grid_coupling


@pytest.fixture(autouse=True)
def _check_every_configuration_again():
    # the factors' check runs once per configuration and process: each test starts afresh
    CHECKED_CONFIGURATIONS.clear()
    yield
    CHECKED_CONFIGURATIONS.clear()


def _dense_offdiag(form, params, L, h, w):
    """``B = A - diag(A)`` of a grid problem (``diag(A) = 0`` there, so ``B = A``)."""
    if form == "grid":
        pw = params["pairwise"]
        return dense_grid_coupling(lambda k, i, j: pw[k, :, :, i, j], L, h, w, params["neighbourhood"])
    wt = params["weights"]
    return dense_grid_coupling(lambda k, i, j: wt[k, i, j] * (1.0 - np.eye(L)), L, h, w, params["neighbourhood"])


class CountingOperator:
    """Delegates to an operator and counts its full products."""

    def __init__(self, op):
        self._op = op
        self.products = 0

    def matvec(self, v):
        self.products += 1 if np.ndim(v) == 1 else np.shape(v)[0]
        return self._op.matvec(v)

    def __getattr__(self, name):
        return getattr(self._op, name)


# the whole photograph at stride 16 (37 x 32 = 1184 pixels > DENSE_MAX), few labels: the Lanczos
# paths run (on B, or on the Potts grid's W), and the dense reference stays affordable
# (stride 24: 25 x 21 = 525 pixels, between the dense limits of W and of B)
CASES = [("grid", 0, 2, 0.05, 16), ("grid", 1, 2, 0.3, 16), ("grid_potts", 0, 2, 0.01, 16),
         ("grid_potts", 1, 3, 0.1, 16), ("grid_potts", 3, 2, 0.738, 16), ("grid_potts", 1, 2, 0.001, 24)]


@pytest.mark.parametrize("form,index,labels,margin,stride", CASES)
def test_rho_within_the_documented_tolerance_of_dense_eigenvalues(form, index, labels, margin, stride):
    params, _, meta = problems.make_params(form, index, size="large", stride=stride, num_labels=labels,
                                           margin=margin)
    h, w = meta["image_shape"]
    assert h * w > spectrum.DENSE_MAX_WEIGHTS and meta["N"] > spectrum.DENSE_MAX
    ev = np.linalg.eigvalsh(_dense_offdiag(form, params, labels, h, w))
    rho, pd = max(abs(ev[0]), abs(ev[-1])), max(-ev[0], 0.0)
    tol = spectrum.spectrum_tolerance(margin)
    assert tol == pytest.approx(min(1e-2, margin / 100))
    # to a hundredth of the margin, relative, and enclosing (never below the true radius)
    assert rho * (1 - 1e-12) <= meta["offdiag_radius"] <= rho * (1 + tol)
    assert abs(meta["pd_bound"] - pd) <= tol * rho
    assert params["lam"] == pytest.approx((1 + margin) * meta["offdiag_radius"], rel=1e-14)
    # so the Jacobi radius rho(B) / lam stays at most 1 / (1 + margin)
    assert rho / params["lam"] <= 1 / (1 + margin) + 1e-12


@pytest.mark.parametrize("index", [0, 1])
def test_potts_spectrum_comes_from_the_weight_matrix(index):
    # products of size P, not L P: the full operator is applied once (the structure check)
    params, _, meta = problems.make_params("grid_potts", index, size="large", stride=12, num_labels=6,
                                           margin=0.1)
    op = CountingOperator(problems.build_operator("grid_potts", dict(params, lam=1.0)))
    rho, pd = spectrum.offdiag_spectrum(op, np.random.default_rng(3), tol=spectrum.spectrum_tolerance(0.1))
    assert op.products <= 2
    # against the generic path (Lanczos on B itself, to full accuracy)
    n = op.size

    def b_matvec(v):
        return op._op.matvec(v) - v

    lo, hi, steps = spectrum.lanczos_extremes(b_matvec, n, np.random.default_rng(4), tol=1e-9)
    assert steps > 20
    assert rho == pytest.approx(max(abs(lo), abs(hi)), rel=1e-3)
    assert pd == pytest.approx(max(-lo, 0.0), abs=1e-3 * rho)
    assert rho == pytest.approx(meta["offdiag_radius"], rel=2e-3)  # another start vector


def test_general_grid_spectrum_costs_a_few_dozen_products():
    params, _, _ = problems.make_params("grid", 0, size="large", stride=12, num_labels=3, margin=0.738)
    op = CountingOperator(problems.build_operator("grid", dict(params, lam=1.0)))
    spectrum.offdiag_spectrum(op, np.random.default_rng(3), tol=spectrum.spectrum_tolerance(0.738))
    assert 5 <= op.products <= 80


def test_lanczos_inner_products_do_not_depend_on_memory_layout_or_blas():
    # the estimate is a deterministic function of the seed: the same on a repeat
    rng_op = np.random.default_rng(0)
    Q = np.linalg.qr(rng_op.standard_normal((900, 900)))[0]
    d = np.linspace(-2.0, 3.0, 900)
    A = (Q * d) @ Q.T
    runs = [spectrum.lanczos_extremes(lambda v: A @ v, 900, np.random.default_rng(7), tol=1e-4) for _ in range(2)]
    assert runs[0] == runs[1]
    lo, hi, _ = runs[0]
    assert lo == pytest.approx(-2.0, rel=1e-3) and hi == pytest.approx(3.0, rel=1e-3)
    assert lo <= -2.0 + 1e-12 and hi >= 3.0 - 1e-12


@pytest.mark.parametrize("form,index,size,kw", [("grid_potts", 1, "large", dict(stride=12, num_labels=4)),
                                                ("grid", 2, "medium", {}), ("multires", 1, "small", {}),
                                                ("lowrank", 0, "small", {}), ("video", 1, "tiny", {})])
def test_cached_photograph_gives_the_same_problem(form, index, size, kw):
    photo._photo_at_stride.cache_clear()
    fresh = problems.make_params(form, index, size=size, **kw)
    assert photo._photo_at_stride.cache_info().currsize >= 1
    cached = problems.make_params(form, index, size=size, **kw)
    assert photo._photo_at_stride.cache_info().hits >= 1
    for a, b in zip(fresh[:2], cached[:2]):
        for x, y in zip(_arrays(a), _arrays(b)):
            np.testing.assert_array_equal(x, y)
    assert fresh[2] == cached[2]


def test_cached_photograph_is_the_block_average():
    full = photo._photo_full()
    for stride in (6, 8, 16):
        photo._photo_at_stride.cache_clear()
        h, w = full.shape[0] // stride, full.shape[1] // stride
        expect = np.empty((h, w, 3))
        for i in range(h):
            for j in range(w):
                expect[i, j] = full[i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].mean(axis=(0, 1))
        first, again = problems.load_photo(stride), problems.load_photo(stride)
        np.testing.assert_allclose(first, expect, rtol=1e-13, atol=0)
        np.testing.assert_array_equal(first, again)
        assert first.flags.writeable and not np.shares_memory(first, again)
        crop = problems.load_photo(stride, crop=(0, 0, h, w))  # the whole image as a crop: still a copy
        crop[:] = -1.0
        assert problems.load_photo(stride).min() >= 0.0


# --------------------------------------------------------------------------- the factors' product
@pytest.mark.parametrize("nbhd", [4, 8, 12])
@pytest.mark.parametrize("L,H,W", [(3, 5, 7), (1, 4, 4), (2, 1, 9), (4, 9, 1), (5, 2, 2), (2, 11, 6)])
def test_factor_product_is_the_operators_product(nbhd, L, H, W):
    rng = np.random.default_rng([nbhd, L, H, W])
    K = len(OFFSETS[nbhd])
    weights = rng.standard_normal((K, H, W))
    compat = rng.standard_normal((K, L, L))  # not symmetric: C_k and C_k^T both appear
    pairwise = compat[:, :, :, None, None] * weights[:, None, None]
    # entries of edges leaving the image are ignored by the operators, whatever they hold
    off = ~problems.params.edge_mask(nbhd, H, W)
    weights[off] = 1e3
    pairwise[np.broadcast_to(off[:, None, None], pairwise.shape)] = -1e3
    lam = 1.7
    general, potts = GridCoupling(weights, nbhd, compat=compat), GridCoupling(weights, nbhd, num_labels=L)
    ops = {general: gcrflinalg.GridGCRF(pairwise, lam, neighbourhood=nbhd),
           potts: gcrflinalg.GridPottsGCRF(weights, lam, L, neighbourhood=nbhd)}
    n = L * H * W
    for coupling, op in ops.items():
        assert coupling.size == n
        v, V = rng.standard_normal(n), rng.standard_normal((n, 3))
        np.testing.assert_allclose(coupling.matvec(v), op.matvec(v) - lam * v, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(coupling.matvec(V), (op.matvec(V.T) - lam * V.T).T, rtol=1e-12, atol=1e-12)
        out = np.empty(n)
        assert coupling.matvec(v, out=out) is out
        np.testing.assert_array_equal(out, coupling.matvec(v))
        assert coupling.matches(op, v)
    # against the dense matrices of docs/design.md by explicit loops
    dense = dense_grid_coupling(lambda k, i, j: pairwise[k, :, :, i, j], L, H, W, nbhd)
    np.testing.assert_allclose(general.matvec(np.eye(n)), dense, atol=1e-12)
    dense_w = dense_grid_coupling(lambda k, i, j: weights[k, i, j] * np.ones((1, 1)), 1, H, W, nbhd)
    np.testing.assert_allclose(potts.weight_matvec(np.eye(H * W)), dense_w, atol=1e-12)
    # a check that can fail: the factors of another problem
    if L > 1:
        v = rng.standard_normal(n)
        assert not general.matches(ops[potts], v) and not potts.matches(ops[general], v)
        other = GridCoupling(weights, nbhd, compat=compat.transpose(0, 2, 1))
        assert not other.matches(ops[general], v)


# the whole photograph at stride 24 (25 x 21 = 525 pixels) or 16 (1184 pixels): N above DENSE_MAX,
# so the Lanczos paths run, on B or on the Potts grid's W (above DENSE_MAX_WEIGHTS)
STRUCTURED = [("grid", 0, 2, 0.05, 24), ("grid", 1, 2, 0.3, 24), ("grid", 3, 2, 0.1, 24),
              ("grid", 2, 3, 0.2, 24), ("grid", 0, 2, 0.738, 16), ("grid_potts", 0, 2, 0.01, 24),
              ("grid_potts", 3, 3, 0.1, 24), ("grid_potts", 1, 2, 0.001, 24)]


@pytest.mark.parametrize("form,index,labels,margin,stride", STRUCTURED)
def test_structured_spectrum_against_dense_eigenvalues_and_the_operators_products(form, index, labels, margin,
                                                                                 stride):
    params, _, meta = problems.make_params(form, index, size="large", stride=stride, num_labels=labels,
                                           margin=margin)
    assert "_coupling" not in params and meta["N"] > spectrum.DENSE_MAX
    h, w = meta["image_shape"]
    L = meta["num_labels"]
    ev = np.linalg.eigvalsh(_dense_offdiag(form, params, L, h, w))
    rho, pd = max(abs(ev[0]), abs(ev[-1])), max(-ev[0], 0.0)
    tol = spectrum.spectrum_tolerance(margin)
    assert rho * (1 - 1e-12) <= meta["offdiag_radius"] <= rho * (1 + tol)
    assert abs(meta["pd_bound"] - pd) <= tol * rho
    # the operator's own products (the path of every other form) from the same start vector
    op = problems.build_operator(form, params)
    seed_rng = problems._rng(0, form, index, False, stream=1)
    rho_op, pd_op = spectrum.offdiag_spectrum(op, seed_rng, tol=tol)
    assert meta["offdiag_radius"] == pytest.approx(rho_op, rel=tol)
    assert meta["pd_bound"] == pytest.approx(pd_op, abs=tol * rho)
    # and the factors themselves, rebuilt from the maker
    maker = problems._REGISTRY[form].problem_maker()
    raw, _, _ = maker(form, index, problems._rng(0, form, index, False), "large", False, stride=stride,
                      num_labels=labels)
    coupling = raw.pop("_coupling")
    r, p, probe = spectrum.structured_spectrum(coupling, problems._rng(0, form, index, False, stream=1), tol)
    assert (r, p) == (meta["offdiag_radius"], meta["pd_bound"])
    assert probe.shape == (meta["N"],) and coupling.matches(op, probe)


@pytest.mark.parametrize("form,index,size,kw", [
    ("grid", 0, "large", dict(stride=16, num_labels=3, margin=0.738)),  # 4-neighbourhood, Lanczos on B
    ("grid", 1, "large", dict(stride=16, num_labels=2, margin=0.05)),  # 8-neighbourhood, both ends
    ("grid", 3, "large", dict(stride=12, num_labels=4, margin=0.02)),  # 12-neighbourhood
    ("grid_potts", 0, "large", dict(stride=12, num_labels=5, margin=0.1)),  # Lanczos on W, symmetric
    ("grid_potts", 1, "large", dict(stride=16, num_labels=3, margin=0.3)),  # W both ends
    ("grid", 2, "small", {}), ("grid_potts", 1, "tiny", {}),  # dense
    ("grid", 1, "large", dict(stride=16, num_labels=2, margin=0.05, lam_rule="pd")),
    ("grid", 0, "large", dict(stride=16, num_labels=3, margin=0.1, synthetic=True)),
])
def test_built_in_problems_keep_their_lam(form, index, size, kw):
    """make_params gives what the operator-product path (the one before the factors) gives: the same
    ``lam`` and facts to the spectral tolerance (the same Lanczos start, so in practice to rounding)."""
    kw = dict(kw)
    synthetic = kw.pop("synthetic", False)
    params, b, meta = problems.make_params(form, index, size=size, synthetic=synthetic, **kw)
    probe = problems.build_operator(form, dict(params, lam=1.0))
    margin = meta["margin"]
    tol = spectrum.spectrum_tolerance(margin)
    rho, pd = spectrum.offdiag_spectrum(probe, problems._rng(0, form, index, synthetic, stream=1), tol=tol)
    assert meta["offdiag_radius"] == pytest.approx(rho, rel=tol)
    assert meta["pd_bound"] == pytest.approx(pd, abs=tol * rho)
    base = rho if meta["lam_rule"] == "jacobi" else pd
    assert meta["lam"] == pytest.approx((1 + margin) * base, rel=tol) and params["lam"] == meta["lam"]
    assert meta["jacobi_radius_bound"] == pytest.approx(meta["offdiag_radius"] / meta["lam"], rel=1e-14)


def test_make_problem_builds_the_operator_once_and_checks_the_factors(monkeypatch):
    built, products = [], []
    build = problems.build_operator

    def counting_build(form, params, **kw):
        op = build(form, params, **kw)
        built.append(kw.get("dtype", np.float64))
        matvec = op.matvec

        def counting_matvec(v):
            products.append(np.shape(v))
            return matvec(v)

        op.matvec = counting_matvec
        return op

    monkeypatch.setattr(problems, "build_operator", counting_build)
    for form, index in (("grid", 0), ("grid", 1), ("grid_potts", 0)):
        built.clear(), products.clear()
        p = problems.make_problem(form, index, size="large", stride=16, num_labels=3, margin=0.1)
        assert built == [np.float64] and products == [(p.size,)]  # one operator, one product: the check
        assert p.operator.lam == p.params["lam"]
        built.clear(), products.clear()
        p32 = problems.make_problem(form, index, size="large", stride=16, num_labels=3, margin=0.1,
                                    dtype=np.float32)
        assert built == [np.float64, np.float32] and p32.operator.dtype == np.float32
        assert p32.meta["lam"] == p.meta["lam"]
        assert products == []  # the configuration was checked by the first build


def test_the_factors_are_checked_once_per_configuration(monkeypatch):
    checks = []
    matches = GridCoupling.matches
    monkeypatch.setattr(GridCoupling, "matches", lambda self, op, v: checks.append(self.configuration)
                        or matches(self, op, v))
    kw = dict(size="large", stride=16, num_labels=3, margin=0.1)
    # grid 0 and 2 share the 4-neighbourhood and the shape, grid 1 has the 8-neighbourhood
    for form, index in (("grid", 0), ("grid", 2), ("grid", 1), ("grid_potts", 0), ("grid_potts", 2)):
        problems.make_problem(form, index, **kw)
    assert checks == [(False, 4, 3, 37, 32), (False, 8, 3, 37, 32), (True, 4, 3, 37, 32)]
    problems.make_problem("grid", 0, **dict(kw, num_labels=4))  # another label count: checked
    assert checks[-1] == (False, 4, 4, 37, 32) and len(checks) == 4
    # the problems built without the check are the ones built with it
    CHECKED_CONFIGURATIONS.clear()
    checked = problems.make_problem("grid", 2, **kw)
    assert len(checks) == 5
    for name in ("lam", "pairwise"):
        np.testing.assert_array_equal(checked.params[name], problems.make_problem("grid", 2, **kw).params[name])
    assert len(checks) == 5


def test_factors_that_disagree_with_the_operator_leave_lam_to_its_products(monkeypatch):
    # (and are checked again by the next problem: a disagreement is not remembered as agreement)
    # factors off by 10%: the check rejects them and the operator's own products set lam
    matvec = GridCoupling.matvec
    monkeypatch.setattr(GridCoupling, "matvec", lambda self, v, out=None: 1.1 * matvec(self, v))
    monkeypatch.setattr(GridCoupling, "weight_matvec", lambda self, v: 1.1 * np.asarray(v))
    for form in ("grid", "grid_potts"):
        p = problems.make_problem(form, 1, size="large", stride=24, num_labels=2, margin=0.05)
        h, w = p.meta["image_shape"]
        ev = np.linalg.eigvalsh(_dense_offdiag(form, p.params, 2, h, w))
        rho = max(abs(ev[0]), abs(ev[-1]))
        assert rho <= p.meta["offdiag_radius"] <= rho * (1 + spectrum.spectrum_tolerance(0.05))
        assert p.operator.lam == p.params["lam"] == pytest.approx(1.05 * p.meta["offdiag_radius"], rel=1e-14)
    assert not CHECKED_CONFIGURATIONS


def test_lanczos_updates_are_the_numpy_updates_on_any_thread_count():
    rng = np.random.default_rng(5)
    for n in (1, 7, 8, 13, 1000, _kernels.LANCZOS_CHUNK + 3, _kernels.PARALLEL_MIN_LENGTH + 11):
        w, v, vp = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
        ref = w - 0.7 * vp
        a_ref = float(v @ ref)
        ref = ref - a_ref * v
        results = []
        for threads in (1, 2):
            out = w.copy()
            with gcrflinalg.num_threads(threads):
                a, b2 = _kernels.lanczos_orthogonalise(out, v, vp, 0.7)
                scaled = np.empty(n)
                _kernels.scaled_copy(scaled, out, 3.0)
            np.testing.assert_array_equal(out, w - 0.7 * vp - a * v)  # the same rounding as NumPy's updates
            assert a == pytest.approx(a_ref, rel=1e-12, abs=1e-12) and b2 == pytest.approx(ref @ ref, rel=1e-12)
            np.testing.assert_array_equal(scaled, out / 3.0)
            results.append((a, b2))
        assert results[0] == results[1]  # fixed-order sums: the same bits on one thread or two


@pytest.mark.parametrize("D,L,P", [(1, 1, 5), (3, 1, 70), (2, 3, 64), (3, 5, 130), (5, 6, 65), (4, 9, 200),
                                   (6, 7, 1), (8, 21, 129)])
def test_factor_product_against_its_definition(D, L, P):
    # out[:, p] = sum_d M_d (u[d, p] v[:, index[d, p]]), M_d = stacked[:, d L:(d + 1) L]: every grouping
    # of the tile's rows (fours, then singles) and of the sums over j = d L + n (fours, then the rest)
    rng = np.random.default_rng([D, L, P])
    stacked = rng.standard_normal((L, D * L))
    weights = rng.standard_normal((D, P))
    index = rng.integers(0, P, size=(D, P))
    v = rng.standard_normal((L, P))
    expect = np.zeros((L, P))
    for d in range(D):
        expect += stacked[:, d * L:(d + 1) * L] @ (weights[d] * v[:, index[d]])
    for threads in (1, 2):
        with gcrflinalg.num_threads(threads):
            got = _kernels.factor_product(stacked, weights, index, v, np.empty((L, P)))
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nbhd", [4, 8, 12])
def test_factor_product_does_not_depend_on_the_thread_count(nbhd):
    rng = np.random.default_rng(nbhd)
    K, L, H, W = len(OFFSETS[nbhd]), 5, 90, 80  # above the parallel size
    coupling = GridCoupling(rng.random((K, H, W)), nbhd, compat=rng.standard_normal((K, L, L)))
    assert coupling.size >= _kernels.PARALLEL_MIN_OUTPUTS
    v = rng.standard_normal(coupling.size)
    with gcrflinalg.num_threads(1):
        one = coupling.matvec(v)
    with gcrflinalg.num_threads(2):
        two = coupling.matvec(v)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("H,W,L", [(5, 7, 3), (1, 6, 2), (6, 1, 4), (4, 4, 1), (9, 4, 5), (40, 31, 2)])
def test_red_square_product_is_b_squared_on_the_red_pixels(H, W, L):
    rng = np.random.default_rng([H, W, L])
    coupling = GridCoupling(rng.standard_normal((2, H, W)), 4, compat=rng.standard_normal((2, L, L)))
    red = np.tile(((np.arange(H)[:, None] + np.arange(W)[None, :]) % 2 == 0).reshape(-1), L)
    assert coupling.red_size == int(red.sum())
    x = rng.standard_normal(coupling.red_size)
    full = np.zeros(coupling.size)
    full[red] = x
    once = coupling.matvec(full)
    assert np.all(once[red] == 0.0)  # B maps red values to black pixels only
    np.testing.assert_allclose(coupling.red_square_matvec(x), coupling.matvec(once)[red], rtol=1e-13, atol=1e-13)
    # its top eigenvalue is rho(B)^2
    if coupling.size <= 200:
        B = coupling.matvec(np.eye(coupling.size))
        sq = np.stack([coupling.red_square_matvec(e) for e in np.eye(coupling.red_size)], axis=1)
        rho = np.abs(np.linalg.eigvalsh(B)).max()
        assert np.linalg.eigvalsh((sq + sq.T) / 2).max() == pytest.approx(rho ** 2, rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError):
        GridCoupling(rng.standard_normal((4, H, W)), 8, compat=rng.standard_normal((4, L, L))).red_square_matvec(x)


@pytest.mark.parametrize("nbhd", [4, 8])
def test_likely_extreme_vectors_are_eigenvectors_of_a_separable_coupling(nbhd):
    # one symmetric C for every offset: B = C (x) W, and the products of the extreme eigenvectors of
    # C and of W (the power steps converge slowly on a bipartite W: many of them) are eigenvectors of B
    rng = np.random.default_rng(nbhd)
    K, L, H, W = len(OFFSETS[nbhd]), 4, 7, 6
    C = rng.standard_normal((L, L))
    C = C + C.T
    weights = np.ones((K, H, W))
    coupling = GridCoupling(weights, nbhd, compat=np.broadcast_to(C, (K, L, L)).copy())
    vectors = coupling.likely_extreme_vectors(iterations=3000)
    assert vectors.shape == (4, coupling.size)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-12)
    B = coupling.matvec(np.eye(coupling.size))
    ev = np.linalg.eigvalsh(B)
    for x in vectors:
        theta = x @ B @ x
        assert np.linalg.norm(B @ x - theta * x) < 1e-5 * np.abs(ev).max()
    thetas = [x @ B @ x for x in vectors]
    assert max(thetas) == pytest.approx(ev[-1], rel=1e-8) and min(thetas) == pytest.approx(ev[0], rel=1e-8)
    with pytest.raises(ValueError):
        GridCoupling(weights, nbhd, num_labels=L).likely_extreme_vectors()


def test_pairwise_blocks_are_the_broadcast_products():
    rng = np.random.default_rng(2)
    compat, weights = rng.standard_normal((4, 6, 6)), rng.random((4, 13, 11))
    np.testing.assert_array_equal(_kernels.pairwise_blocks(compat, weights),
                                  compat[:, :, :, None, None] * weights[:, None, None, :, :])


# --------------------------------------------------------------------------- colour clusters
def _reference_colour_clusters(image, num_labels, seed=0, iterations=25):
    """The plain NumPy k-means (k-means++ seeding, Lloyd iterations, centres sorted by brightness)."""
    pix = np.asarray(image, dtype=np.float64).reshape(-1, 3)

    def nearest(centres):
        d2 = (pix ** 2).sum(1)[:, None] - 2.0 * pix @ centres.T + (centres ** 2).sum(1)[None, :]
        return np.argmin(d2, axis=1)

    rng = np.random.default_rng(seed)
    centres = np.empty((num_labels, 3))
    centres[0] = pix[rng.integers(pix.shape[0])]
    d2 = np.sum((pix - centres[0]) ** 2, axis=1)
    for k in range(1, num_labels):
        total = d2.sum()
        idx = rng.choice(pix.shape[0], p=d2 / total) if total > 0 else rng.integers(pix.shape[0])
        centres[k] = pix[idx]
        d2 = np.minimum(d2, np.sum((pix - centres[k]) ** 2, axis=1))
    for _ in range(iterations):
        labels = nearest(centres)
        counts = np.bincount(labels, minlength=num_labels)
        sums = np.stack([np.bincount(labels, weights=pix[:, c], minlength=num_labels) for c in range(3)], 1)
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        done = np.allclose(new, centres, atol=1e-10, rtol=0)
        centres = new
        if done:
            break
    centres = centres[np.argsort(centres.sum(axis=1), kind="stable")]
    return nearest(centres).reshape(np.shape(image)[:2]), centres


@pytest.mark.parametrize("stride,crop,labels,seed", [(6, None, 21, 0), (6, None, 21, 7), (8, None, 5, 1),
                                                     (16, None, 2, 3), (12, (2, 3, 20, 17), 9, 4),
                                                     (24, None, 40, 5), (8, (0, 0, 3, 2), 6, 2),
                                                     (3, None, 12, 11)])
def test_colour_clusters_are_the_plain_numpy_kmeans(stride, crop, labels, seed):
    img = problems.load_photo(stride, crop)
    got_labels, got_centres = problems.colour_clusters(img, labels, seed=seed)
    ref_labels, ref_centres = _reference_colour_clusters(img, labels, seed=seed)
    np.testing.assert_array_equal(got_labels, ref_labels)
    np.testing.assert_allclose(got_centres, ref_centres, rtol=0, atol=1e-12)
    # every iteration count, converged or not
    for iterations in (0, 1, 3):
        a = problems.colour_clusters(img, labels, seed=seed, iterations=iterations)
        b = _reference_colour_clusters(img, labels, seed=seed, iterations=iterations)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=0, atol=1e-12)


def test_colour_clusters_of_a_flat_or_strided_image():
    flat = np.full((6, 5, 3), 0.25)  # every distance zero: uniform draws, one centre for all
    labels, centres = problems.colour_clusters(flat, 3, seed=1)
    ref_labels, ref_centres = _reference_colour_clusters(flat, 3, seed=1)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(centres, ref_centres)
    strided = problems.load_photo(4)[::3, ::2]  # not C-contiguous
    for a, b in zip(problems.colour_clusters(strided, 7, seed=2), _reference_colour_clusters(strided, 7, seed=2)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def _arrays(x):
    if isinstance(x, dict):
        return [a for v in x.values() for a in _arrays(v)]
    if isinstance(x, (list, tuple)):
        return [a for v in x for a in _arrays(v)]
    return [np.asarray(x)]


@pytest.mark.parametrize("stride", [4, 6, 8])
def test_compiled_distances_and_unaries_equal_the_numpy_expressions(stride):
    """The compiled squared distances and unaries give the bits of the NumPy expressions they
    replace (einsum over the colour axis; 1 - d / scale + noise z), so the problems do not change."""
    from gcrflinalg.problems import load_photo
    from gcrflinalg.problems.photo import colour_clusters, squared_distances, unaries_from_clusters

    img = np.asarray(load_photo(stride), dtype=np.float64)
    rng = np.random.default_rng(stride)
    for centres in (rng.random((21, 3)), rng.random((5, 3)) * 2 - 0.5):
        diff = img[None] - centres[:, None, None, :]
        np.testing.assert_array_equal(squared_distances(img, centres), np.einsum("lhwc,lhwc->lhw", diff, diff))
    _, centres = colour_clusters(img, 7, 3)
    diff = img[None] - centres[:, None, None, :]
    d = np.einsum("lhwc,lhwc->lhw", diff, diff)
    ref = 1.0 - d / float(np.median(d)) + 0.5 * np.random.default_rng([3, 1]).standard_normal(d.shape)
    np.testing.assert_array_equal(unaries_from_clusters(img, 7, seed=3, noise=0.5), ref)


def test_likely_extreme_vectors_on_the_red_pixels():
    """``red_only``: the full vectors' entries on the red pixels, each scaled to unit length."""
    from gcrflinalg.problems.coupling import GridCoupling

    rng = np.random.default_rng(8)
    H, W, L = 7, 6, 3
    coupling = GridCoupling(rng.random((2, H, W)), 4, compat=rng.standard_normal((2, L, L)))
    full = coupling.likely_extreme_vectors()
    red = coupling.likely_extreme_vectors(red_only=True)
    assert red.shape == (4, coupling.red_size)
    for x, y in zip(full, red):
        xr = x[coupling.red_pixels]
        np.testing.assert_allclose(y, xr / np.linalg.norm(xr), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(np.linalg.norm(y), 1.0, rtol=1e-14)
