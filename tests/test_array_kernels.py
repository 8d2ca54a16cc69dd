"""The array-expression branches (the code CuPy runs) against the compiled CPU branches (Numba,
host BLAS loops), on NumPy, through the private switch of ``solvers.backend``.

Every kernel that has both a compiled and an array branch is run both ways here, in the same
process, and the two are compared with each other to the tolerance of the dtype and with an
independent reference (the dense matrices of ``operator_cases``, ``numpy.linalg.solve``).  The
switch itself is tested: it must route (the compiled entry points are counted and must not run in
array mode, and must run in compiled mode, so that the comparisons compare two different codes).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import scipy.sparse as sp

import gcrflinalg
import solvers
from gcrflinalg.backend import to_host
from gcrflinalg.forms.grid import kernels
from gcrflinalg.forms.grid import redblack as rb
from operator_cases import CASES, OFFSETS, dense_grid_general, dense_grid_potts, instance
from solvers import backend as sb

CASE_PARAMS = [pytest.param(c, id=c.id) for c in CASES]
DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]
BATCHES = [pytest.param((), id="unbatched"), pytest.param((2,), id="batch2")]
MODES = (False, True)  # compiled, array


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def tol(dtype):
    """Relative agreement between two branches (and with a float64 reference)."""
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-11




def both(fn):
    """``fn()`` run with the compiled kernels and with the array kernels: ``(compiled, array)``.

    A fresh call each time (operators cache factors and layouts, so ``fn`` builds its own)."""
    out = []
    for array_mode in MODES:
        with sb.array_kernels(array_mode):
            out.append(fn())
    return tuple(out)


def assert_close(a, b, dtype, scale, what):
    a, b = np.asarray(to_host(a), dtype=np.float64), np.asarray(to_host(b), dtype=np.float64)
    assert a.shape == b.shape, what
    t = tol(dtype)
    np.testing.assert_allclose(a, b, rtol=t, atol=t * scale, err_msg=what)


# ============================================================================= the switch


def test_switch_reads_the_environment_at_call_time(monkeypatch):
    monkeypatch.setattr(sb, "_array_kernels_setting", None)
    monkeypatch.delenv(sb.ARRAY_KERNELS_ENV, raising=False)
    assert sb.array_kernels_on() is False
    monkeypatch.setenv(sb.ARRAY_KERNELS_ENV, "1")
    assert sb.array_kernels_on() is True
    assert kernels._use_numba(np.zeros(3)) is False
    monkeypatch.setenv(sb.ARRAY_KERNELS_ENV, "0")
    assert sb.array_kernels_on() is False
    assert kernels._use_numba(np.zeros(3)) is True
    monkeypatch.setenv(sb.ARRAY_KERNELS_ENV, "")
    assert sb.array_kernels_on() is False
    for bad in ("yes", "2", "true"):
        monkeypatch.setenv(sb.ARRAY_KERNELS_ENV, bad)
        with pytest.raises(ValueError, match=sb.ARRAY_KERNELS_ENV):
            sb.array_kernels_on()


def test_setting_overrides_the_environment_and_is_restored(monkeypatch):
    monkeypatch.setattr(sb, "_array_kernels_setting", None)
    monkeypatch.setenv(sb.ARRAY_KERNELS_ENV, "1")
    with sb.array_kernels(False):
        assert sb.array_kernels_on() is False
        with sb.array_kernels(True):
            assert sb.array_kernels_on() is True
        assert sb.array_kernels_on() is False
    assert sb._array_kernels_setting is None and sb.array_kernels_on() is True
    # restored after an exception too
    with pytest.raises(RuntimeError):
        with sb.array_kernels(False):
            raise RuntimeError
    assert sb._array_kernels_setting is None
    assert sb.set_array_kernels(False) is None
    assert sb.set_array_kernels(None) is False
    for bad in (1, "1", 0.0):
        with pytest.raises(TypeError, match="enabled"):
            sb.set_array_kernels(bad)
    # gcrflinalg.backend re-exports the same switch
    assert gcrflinalg.backend._array_kernels is sb.array_kernels
    assert gcrflinalg.backend._array_kernels_on is sb.array_kernels_on


# ============================================================================= routing

#: The compiled entry points called from Python: ``(module or class, attribute)``.
def _compiled_entry_points():
    from gcrflinalg.forms.grid import scan, solves
    from gcrflinalg.forms.video.operator import VideoGCRF
    import solvers._cg as cg_module
    import solvers._gauss_seidel as gs_module

    return [
        (kernels, "_pairwise_product_serial_nb"),
        (kernels, "_pairwise_product_parallel_nb"),
        (kernels, "_weight_product_nb"),
        (kernels, "_pairwise_colour_sweep_nb"),
        (kernels, "_potts_colour_sweep_nb"),
        (solves, "shifted_weight_cg"),
        (rb, "_red_black_blocks_nb"),
        (scan, "_scan_pairwise_nb"),
        (rb, "_black_product_nb"),
        (rb, "_red_product_nb"),
        (cg_module, "_step_nb"),
        (cg_module, "_direction_nb"),
        (cg_module, "_curvature_nb"),
        (gs_module, "_sor_sweep_csr"),
        (VideoGCRF, "_per_frame"),
        (VideoGCRF, "_cached_product_host"),
        (VideoGCRF, "_frame_grams_host"),
    ]


@pytest.fixture
def counted(monkeypatch):
    """Every compiled entry point wrapped to count its calls: ``{name: count}``."""
    counts = {}
    for owner, name in _compiled_entry_points():
        original = getattr(owner, name)
        key = f"{getattr(owner, '__name__', owner)}.{name}"
        counts[key] = 0

        def wrapper(*args, _original=original, _key=key, **kwargs):
            counts[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)
    return counts


def _exercise(case, params, rng, methods=None):
    """Products, diagonal, a sweep, every method's solve (or those of ``methods``) and its adjoint,
    gradients."""
    op = case.rebuild(params)
    batch = op.batch_shape
    b = rng.standard_normal(batch + (op.size,))
    op.matvec(b)
    op.diagonal()
    op.gauss_seidel_sweep(np.zeros_like(b), b, 1.0)
    for method in case.methods if methods is None else [m for m in methods if m in case.methods]:
        x = gcrflinalg.solve(op, b, method=method, rtol=1e-8, maxiter=5000).x
        g = gcrflinalg.adjoint_solve(op, b, method=method, rtol=1e-8, maxiter=5000).x
    op.parameter_gradients(x, g)
    if case.form == "video":
        op.positive_definite_threshold()


def _exercise_gauss_seidel_csr():
    A = sp.diags([-1.0, 4.0, -1.0], [-1, 0, 1], shape=(30, 30), format="csr")
    solvers.gauss_seidel(A, np.ones(30), rtol=1e-8)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_array_mode_never_calls_a_compiled_kernel(case, counted):
    params, _ = instance(case, np.float64, (2,))
    counted.update(dict.fromkeys(counted, 0))  # the dense reference may build an operator in compiled mode
    with sb.array_kernels(True):
        _exercise(case, params, _rng("route", case.id))
        _exercise_gauss_seidel_csr()
    used = {k: v for k, v in counted.items() if v}
    assert not used, f"compiled kernels ran in array mode: {used}"


def test_compiled_mode_calls_every_compiled_kernel(counted, monkeypatch):
    """The other side of the routing test: in compiled mode the counted entry points do run (so
    the comparisons below compare two codes, and the counters above would see a leak)."""
    # the larger cases take the parallel product, the smaller the serial one
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ENTRIES", 200)
    monkeypatch.setattr(kernels, "product_threads", lambda: 2)
    # one case of every form (two 4-neighbourhood grids: below and above that size), the methods
    # that reach every compiled kernel: CG (fused updates, the Potts split), the red-black
    # reduction, the direct solves (the video form's host Gram loop); the red-black blocks of a grid
    # are written by the construction's parameter scan, so their own builder is called directly
    first = {}
    for case in CASES:
        first.setdefault(case.form, case)
    cases = list(first.values()) + [next(c for c in CASES if c.id == "grid-n4-L3-3x5")]
    with sb.array_kernels(False):
        for case in cases:
            params, _ = instance(case, np.float64, (2,))
            _exercise(case, params, _rng("route", case.id), methods=("cg", "reduced_cg", "potts_split", "direct"))
        _exercise_gauss_seidel_csr()
        rb.red_black_blocks(np.ones((1, 2, 2, 2, 3, 4)))
    unused = sorted(k for k, v in counted.items() if not v)
    assert not unused, f"never called in compiled mode: {unused}"


# ============================================================================= every case, both ways


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_products_and_diagonal(case, dtype, batch):
    params, dense = instance(case, dtype, batch)
    N = dense.shape[-1]
    v = _rng("product", case.id, batch).standard_normal((3,) + batch + (N,)).astype(dtype)
    ref = np.einsum("...ij,k...j->k...i", dense, v.astype(np.float64))
    scale = np.abs(dense).max() * np.abs(v).max() * N ** 0.5

    def run():
        op = case.rebuild(params)
        out = op.matvec(v)
        assert out.dtype == dtype
        return out, op.diagonal(), op.matvec(v[0].reshape(batch + op.vector_shape))

    (out_c, diag_c, full_c), (out_a, diag_a, full_a) = both(run)
    assert_close(out_a, out_c, dtype, scale, "matvec: array vs compiled")
    assert_close(out_a, ref, dtype, scale, "matvec: array vs dense")
    assert_close(full_a.reshape(batch + (N,)), out_c[0], dtype, scale, "matvec (vector layout)")
    diag_ref = np.diagonal(dense, axis1=-2, axis2=-1)
    assert_close(diag_a, diag_c, dtype, np.abs(dense).max(), "diagonal: array vs compiled")
    assert_close(diag_a, diag_ref, dtype, np.abs(dense).max(), "diagonal: array vs dense")


def _dense_colour_sweep(dense, x, b, omega, nbhd, vector_shape):
    """One multicolour SOR sweep by the dense matrix: colour ``(a i + j) mod C`` of every pixel,
    the unknowns of one colour updated together from ``b - M x``."""
    a, C = kernels.pixel_colouring(nbhd)
    L, H, W = vector_shape
    colour = np.broadcast_to((a * np.arange(H)[:, None] + np.arange(W)[None, :]) % C, (L, H, W)).ravel()
    x = x.astype(np.float64).copy()
    for c in range(C):
        idx = colour == c
        r = b - np.einsum("...ij,...j->...i", dense, x)
        x[..., idx] += omega * r[..., idx] / np.diagonal(dense, axis1=-2, axis2=-1)[..., idx]
    return x


@pytest.mark.parametrize("omega", [1.0, 1.4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_gauss_seidel_sweep(case, dtype, omega):
    batch = (2,)
    params, dense = instance(case, dtype, batch)
    rng = _rng("sweep", case.id)
    x0 = rng.standard_normal(batch + (dense.shape[-1],)).astype(dtype)
    b = rng.standard_normal(x0.shape).astype(dtype)
    x0_copy = x0.copy()

    def run():
        return case.rebuild(params).gauss_seidel_sweep(x0.copy(), b, omega)

    swept_c, swept_a = both(run)
    np.testing.assert_array_equal(x0, x0_copy)
    scale = np.abs(dense).max() * (np.abs(x0).max() + np.abs(b).max())
    assert_close(swept_a, swept_c, dtype, scale, "sweep: array vs compiled")
    assert not np.allclose(to_host(swept_a), x0)  # the sweep moved x
    if case.form in ("grid", "grid_potts"):
        ref = _dense_colour_sweep(dense, x0, b.astype(np.float64), omega, case.info["neighbourhood"],
                                  case.info["vector_shape"])
        assert_close(swept_a, ref, dtype, scale, "sweep: array vs dense multicolour sweep")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_solves_and_adjoint_solves(case, dtype):
    """Every method of the case both ways: same answer (to the solve's tolerance), the dense
    answer, and the same cost (iterations and products)."""
    batch = (2,)
    params, dense = instance(case, dtype, batch)
    b = _rng("solve", case.id).standard_normal(batch + (dense.shape[-1],)).astype(dtype)
    x_ref = np.linalg.solve(dense, b[..., None].astype(np.float64))[..., 0]
    rtol = 1e-6 if dtype == np.float32 else 1e-11
    err_max = 1e-4 if dtype == np.float32 else 1e-9
    slack = 1 if dtype == np.float32 else 0
    for method in case.methods:
        def run():
            op = case.rebuild(params)
            return (gcrflinalg.solve(op, b, method=method, rtol=rtol, maxiter=5000),
                    gcrflinalg.adjoint_solve(op, b, method=method, rtol=rtol, maxiter=5000))

        (fwd_c, adj_c), (fwd_a, adj_a) = both(run)
        for res_c, res_a, what in ((fwd_c, fwd_a, "solve"), (adj_c, adj_a, "adjoint_solve")):
            label = f"{what}({method!r})"
            assert np.all(res_a.converged) and np.all(res_c.converged), label
            assert res_a.method == res_c.method, label
            for res in (res_a, res_c):
                err = np.linalg.norm(res.x - x_ref, axis=-1) / np.linalg.norm(x_ref, axis=-1)
                assert np.all(err < err_max), (label, err)
            # the same steps and products; in float32 the compiled CG updates accumulate r^T r in
            # float64, the array expressions in float32, which may move the last stopping test
            it_c, it_a = np.asarray(res_c.iterations), np.asarray(res_a.iterations)
            assert np.all(np.abs(it_a - it_c) <= slack), (label, it_c, it_a)
            assert abs(res_a.matvecs - res_c.matvecs) <= 2 * slack, (label, res_c.matvecs, res_a.matvecs)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_parameter_gradients(case, batch):
    params, dense = instance(case, np.float64, batch)
    rng = _rng("grad", case.id, batch)
    x = rng.standard_normal(batch + (dense.shape[-1],))
    g = rng.standard_normal(x.shape)

    def run():
        return case.rebuild(params).parameter_gradients(x, g)

    grads_c, grads_a = both(run)
    assert set(grads_a) == set(grads_c) == set(params)
    for name in grads_c:
        scale = np.abs(to_host(grads_c[name])).max() + 1.0
        assert_close(grads_a[name], grads_c[name], np.float64, scale, f"gradient {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in CASE_PARAMS if c.values[0].form == "video"])
def test_video_capacitance(case, dtype):
    """The capacitance matrices (host Gram loop or stacked products) and the exact threshold."""
    params, dense = instance(case, dtype, (2,))

    def run():
        op = case.rebuild(params)
        return op.positive_definite_threshold(), op._capacitance_matrices()["B"]

    (thr_c, B_c), (thr_a, B_a) = both(run)
    assert_close(B_a, B_c, dtype, np.abs(to_host(B_c)).max(), "capacitance B")
    assert_close(thr_a, thr_c, dtype, np.abs(dense).max(), "threshold")
    # the threshold is -lambda_min(M - lam I), clipped at 0
    lam = np.asarray(params["lam"], dtype=np.float64)
    A = dense - lam[:, None, None] * np.eye(dense.shape[-1])
    expected = np.maximum(0.0, -np.linalg.eigvalsh(A)[:, 0])
    assert_close(thr_a, expected, dtype, np.abs(dense).max() * 10, "threshold vs dense")


# ============================================================================= grid kernels directly

GRID_SHAPES = [(1, 1), (1, 6), (5, 1), (2, 3), (3, 3), (4, 5)]


def _dense_system(pw, lam, nbhd):
    return np.stack([dense_grid_general(pw[i].astype(np.float64), lam[i], nbhd) for i in range(pw.shape[0])])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nbhd", [4, 8, 12])
def test_pairwise_product_kernels(nbhd, dtype, monkeypatch):
    """``out += A v`` and ``out = lam v + A v``: serial, parallel and array kernels, on images down
    to one pixel (offsets that leave the image entirely)."""
    rng = _rng("pairwise", nbhd)
    K = len(OFFSETS[nbhd])
    for H, W in GRID_SHAPES:
        L = 3
        pw = (0.3 * rng.standard_normal((2, K, L, L, H, W))).astype(dtype)
        v = rng.standard_normal((2, 2, L, H, W)).astype(dtype)
        lam = np.array([1.5, 2.5], dtype=dtype)
        start = rng.standard_normal(v.shape).astype(dtype)
        dense = _dense_system(pw, np.zeros(2), nbhd)
        Av = np.einsum("bij,ebj->ebi", dense, v.reshape(2, 2, -1).astype(np.float64)).reshape(v.shape)
        scale = np.abs(dense).max() * L * H * W
        for parallel in (False, True):
            if parallel:
                monkeypatch.setattr(kernels, "PARALLEL_MIN_ENTRIES", 1)
                monkeypatch.setattr(kernels, "product_threads", lambda: 2)

            def run():
                acc = kernels.pairwise_product(pw, v, start.copy(), OFFSETS[nbhd])
                shifted = kernels.pairwise_product(pw, v, np.full_like(v, np.nan), OFFSETS[nbhd], lam=lam)
                return acc, shifted

            (acc_c, sh_c), (acc_a, sh_a) = both(run)
            what = f"{H}x{W} parallel={parallel}"
            assert_close(acc_a, acc_c, dtype, scale, what)
            assert_close(acc_a, start + Av, dtype, scale, what + " vs dense")
            assert_close(sh_a, sh_c, dtype, scale, what + " (lam)")
            assert_close(sh_a, lam[None, :, None, None, None] * v + Av, dtype, scale, what + " (lam) vs dense")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nbhd", [4, 8, 12])
def test_weight_product_kernels(nbhd, dtype):
    rng = _rng("weights", nbhd)
    K = len(OFFSETS[nbhd])
    for H, W in GRID_SHAPES:
        wt = (0.3 * rng.standard_normal((2, K, H, W))).astype(dtype)
        x = rng.standard_normal((2, 2, 3, H, W)).astype(dtype)
        start = rng.standard_normal(x.shape).astype(dtype)
        # W of one system: the Potts coupling of one label, dense_grid_potts with L = 2 holds it
        # as its off-diagonal label block
        P = H * W
        Wd = np.stack([dense_grid_potts(wt[i].astype(np.float64), 0.0, 2, nbhd)[:P, P:] for i in range(2)])
        ref = start + np.einsum("bpq,ebrq->ebrp", Wd, x.reshape(2, 2, 3, P).astype(np.float64)).reshape(x.shape)

        def run():
            return kernels.weight_product(wt, x, start.copy(), OFFSETS[nbhd])

        out_c, out_a = both(run)
        scale = np.abs(Wd).max() * P + 1.0
        assert_close(out_a, out_c, dtype, scale, f"{H}x{W}")
        assert_close(out_a, ref, dtype, scale, f"{H}x{W} vs dense")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nbhd", [4, 8, 12])
def test_colour_sweep_kernels(nbhd, dtype):
    """One SOR sweep of both forms against the dense multicolour sweep, images down to one pixel."""
    rng = _rng("sweeps", nbhd)
    K = len(OFFSETS[nbhd])
    for H, W in GRID_SHAPES:
        L = 3
        lam = np.array([3.0, 4.0], dtype=dtype)
        pw = (0.3 * rng.standard_normal((2, K, L, L, H, W))).astype(dtype)
        wt = (0.3 * rng.standard_normal((2, K, H, W))).astype(dtype)
        x0 = rng.standard_normal((2, L, H, W)).astype(dtype)
        b = rng.standard_normal(x0.shape).astype(dtype)
        dense_g = _dense_system(pw, lam.astype(np.float64), nbhd)
        dense_p = np.stack([dense_grid_potts(wt[i].astype(np.float64), float(lam[i]), L, nbhd) for i in range(2)])
        for sweep, params, dense in ((kernels.pairwise_colour_sweep, pw, dense_g),
                                     (kernels.potts_colour_sweep, wt, dense_p)):
            def run():
                return sweep(params, x0.copy(), b, lam, OFFSETS[nbhd], nbhd, 1.3)

            out_c, out_a = both(run)
            ref = _dense_colour_sweep(dense, x0.reshape(2, -1), b.reshape(2, -1).astype(np.float64), 1.3,
                                      nbhd, (L, H, W)).reshape(x0.shape)
            scale = np.abs(dense).max() * 10
            what = f"{sweep.__name__} {H}x{W}"
            assert_close(out_a, out_c, dtype, scale, what)
            assert_close(out_a, ref, dtype, scale, what + " vs dense")


RB_SHAPES = [(1, 1), (1, 2), (2, 1), (1, 7), (6, 1), (2, 3), (3, 3), (4, 5), (5, 4), (5, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 3])
def test_red_black_kernels(L, dtype):
    """Colour-ordered blocks and the products with ``C^T`` and ``C`` (with every coefficient),
    both ways, against the dense coupling ``A``: ``C^T x_r`` is ``A x`` on the black pixels for
    ``x`` zero on them."""
    rng = _rng("redblack", L)
    for H, W in RB_SHAPES:
        pw = (0.3 * rng.standard_normal((2, 2, L, L, H, W))).astype(dtype)
        A = _dense_system(pw, np.zeros(2), 4)
        _, wp, F = rb.colour_dims(H, W)
        cls, shift = rb.neighbour_table(wp)
        full_x = rng.standard_normal((3, 2, L, H, W)).astype(dtype)
        full_y = rng.standard_normal(full_x.shape).astype(dtype)
        base_r = rng.standard_normal(full_x.shape).astype(dtype)
        base_b = rng.standard_normal(full_x.shape).astype(dtype)
        zero = np.zeros_like(full_x)
        x_r, y_b = rb.to_red(full_x), rb.to_black(full_y)
        a1 = np.array([0.5, -2.0], dtype=dtype)
        a0 = np.array([1.5, 0.0], dtype=dtype)

        def run():
            G = rb.red_black_blocks(pw)
            y = rb.black_product(G, x_r, cls=cls, shift=shift, scale=a1, base=rb.to_black(base_b),
                                 base_scale=a0)
            out = rb.red_product(G, y_b, cls=cls, shift=shift, x=rb.to_red(full_x), x_scale=a0, scale=a1,
                                 base=rb.to_red(base_r), base_scale=-1.0)
            plain = rb.black_product(G, x_r, cls=cls, shift=shift)
            return G, y, out, plain

        (G_c, y_c, out_c, plain_c), (G_a, y_a, out_a, plain_a) = both(run)
        what = f"{H}x{W}"
        np.testing.assert_array_equal(G_a, G_c, err_msg="blocks " + what)  # copies of the same entries
        scale = np.abs(A).max() * 4 * L + 4.0
        for got_a, got_c, name in ((y_a, y_c, "C^T"), (out_a, out_c, "C"), (plain_a, plain_c, "C^T plain")):
            assert_close(got_a, got_c, dtype, scale, f"{name} {what}")
            pads = got_a.reshape(3, 2, 2, L, -1, wp)
            assert not np.any(pads[..., 0, :]) and not np.any(pads[..., -1, :]), f"{name} pads {what}"
            assert not np.any(pads[..., :, 0]) and not np.any(pads[..., :, -1]), f"{name} pads {what}"

        def A_times(v):
            return np.einsum("bij,ebj->ebi", A, v.reshape(3, 2, -1).astype(np.float64)).reshape(v.shape)

        red_mask = ((np.arange(H)[:, None] + np.arange(W)[None, :]) % 2 == 0)
        x_red_only = np.where(red_mask, full_x, 0)
        y_black_only = np.where(red_mask, 0, full_y)
        c1 = a1[None, :, None, None, None].astype(np.float64)
        c0 = a0[None, :, None, None, None].astype(np.float64)
        ref_y = np.where(red_mask, 0, c1 * A_times(x_red_only) + c0 * base_b)
        ref_out = np.where(red_mask, c0 * full_x + c1 * A_times(y_black_only) - base_r, 0)
        assert_close(rb.from_colours(rb.to_red(zero), y_a, H, W), ref_y, dtype, scale, "C^T vs dense " + what)
        assert_close(rb.from_colours(out_a, rb.to_black(zero), H, W), ref_out, dtype, scale, "C vs dense " + what)


def test_potts_split_systems_both_ways():
    """The Potts split's ``P x P`` solves: the compiled CG of the kernels against the batched
    ``solvers.cg`` on the split systems (the array branch), one label system that is only just
    positive definite included."""
    rng = _rng("split")
    H, W, L = 6, 7, 4
    weights = 0.3 * rng.standard_normal((2, 2, H, W))
    op0 = gcrflinalg.GridPottsGCRF(weights, 1.0, L, 4)
    lo, hi = op0.weight_extreme_eigenvalues((0,))
    lam = np.array([1.02 * max(hi, -(L - 1) * lo), 5.0])  # system 0 near its bound
    b = rng.standard_normal((2, L * H * W))
    dense = np.stack([dense_grid_potts(weights[i], lam[i], L, 4) for i in range(2)])
    x_ref = np.linalg.solve(dense, b[..., None])[..., 0]

    def run():
        return gcrflinalg.solve(gcrflinalg.GridPottsGCRF(weights, lam, L, 4), b, method="potts_split", rtol=1e-10)

    res_c, res_a = both(run)
    for res in (res_c, res_a):
        assert np.all(res.converged)
        np.testing.assert_allclose(res.x, x_ref, rtol=1e-8, atol=1e-9 * np.abs(x_ref).max())
    assert np.all(np.abs(np.asarray(res_a.iterations) - np.asarray(res_c.iterations)) <= 2)


# ============================================================================= solvers


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cg_array_updates_with_preconditioner_x0_and_frozen_systems(dtype):
    """CG's compiled updates and array expressions: preconditioned, from an ``x0``, with systems
    of very different scale (one finishes first and is frozen while the others go on)."""
    rng = _rng("cg", np.dtype(dtype).name)
    n = 60
    A = sp.diags([-1.0, 2.6, -1.0], [-1, 0, 1], shape=(n, n)).toarray()
    A += 0.1 * np.diag(rng.random(n))
    A = A.astype(dtype)
    b = rng.standard_normal((3, n)).astype(dtype)
    b[0] *= 1e-3
    b[2] = 0.0
    x0 = rng.standard_normal(b.shape).astype(dtype)
    x0[2] = 0.0
    M = sp.diags((1.0 / np.diag(A)).astype(dtype))
    rtol = 1e-5 if dtype == np.float32 else 1e-11
    results = both(lambda: solvers.cg(A, b, x0, rtol=rtol, M=M))
    x_ref = np.linalg.solve(A.astype(np.float64), b.T.astype(np.float64)).T
    for res in results:
        assert np.all(res.converged)
        np.testing.assert_allclose(res.x, x_ref, rtol=0, atol=10 * rtol * np.abs(x_ref).max() * 30)
    res_c, res_a = results
    # float64: the same steps; float32: the compiled updates accumulate r^T r in float64, the array
    # expressions in float32, which may move the last stopping test by one step
    slack = 1 if dtype == np.float32 else 0
    assert np.all(np.abs(np.asarray(res_a.iterations) - np.asarray(res_c.iterations)) <= slack)
    assert abs(res_a.matvecs - res_c.matvecs) <= slack
    rows = min(len(res_a.residual_norms), len(res_c.residual_norms)) - 1  # the common steps
    assert_close(res_a.residual_norms[:rows], res_c.residual_norms[:rows], dtype,
                 res_c.residual_norms.max() * 10, "history")


def test_gauss_seidel_auto_ordering_follows_the_switch():
    """``ordering="auto"``: natural on NumPy, multicolour in array mode (the GPU's choice); both
    reach the solution, and the multicolour result equals an explicit ``ordering="multicolor"``."""
    n = 40
    A = sp.diags([-1.0, 4.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr")
    b = _rng("gs").standard_normal((2, n))
    natural, array = both(lambda: solvers.gauss_seidel(A, b, rtol=1e-10))
    explicit = {o: solvers.gauss_seidel(A, b, rtol=1e-10, ordering=o) for o in ("natural", "multicolor")}
    np.testing.assert_array_equal(natural.x, explicit["natural"].x)
    np.testing.assert_allclose(array.x, explicit["multicolor"].x, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(array.iterations, explicit["multicolor"].iterations)
    x_ref = np.linalg.solve(A.toarray(), b.T).T
    for res in (natural, array):
        assert np.all(res.converged)
        np.testing.assert_allclose(res.x, x_ref, rtol=1e-8, atol=1e-9)
