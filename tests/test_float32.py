"""Float32 at default settings: every positive-definite system meets its default tolerance.

For every form, 50 random positive-definite float32 problems go through the torch layer
(``gcrf_solve`` with its defaults; multires, which has no layer, through ``gcrflinalg.solve``): no
solve raises, and each answer meets ``max(rtol ||b||, atol)`` on the float64 residual
``||b - M x||`` recomputed from a float64 copy of the operator.  Also: the tolerance table is the
one source of the defaults, the direct solves refine automatically, and ``method="auto"`` on the
factorising forms keeps CG on a clustered spectrum and switches to the factorisation on a spread
one.
"""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from gcrflinalg import LowRankGCRF, LowRankPottsGCRF, VideoGCRF
from gcrflinalg.forms.registry import FORMS
from gcrflinalg.tolerances import default_rtol

torch = pytest.importorskip("torch")
from gcrflinalg.interop.torch import gcrf_solve  # noqa: E402

COUNT = 50
RTOL32 = default_rtol(np.float32)


def _decaying(rng, rows, cols, top):
    """``rows x cols`` with singular values ``sqrt(top) / k`` (a spread spectrum)."""
    k = np.arange(1, rows + 1)
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v = rng.standard_normal((rows, cols))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return (u * (np.sqrt(top) / k)) @ v


def _embeddings(rng, rows, cols, scale, batch=()):
    """Flat (Gaussian) or decaying embeddings, ``batch + (rows, cols)``, ``||.||_2^2 ~ scale``."""
    out = np.empty(batch + (rows, cols))
    for idx in np.ndindex(*batch):
        if rng.random() < 0.5:
            out[idx] = rng.standard_normal((rows, cols)) * np.sqrt(scale / cols)
        else:
            out[idx] = _decaying(rng, rows, cols, scale)
    return out


def _lam32(value):
    """``lam`` rounded to float32, so that the float64 copy is the very same matrix."""
    return float(np.float32(value))


def make_problem(form, index, rng):
    """``(b, params, lam, options)`` as float32 arrays: a random positive-definite problem."""
    batch = (2,) if rng.random() < 0.5 else ()
    H, W = (int(v) for v in rng.integers(3, 11, size=2))
    L = int(rng.integers(2, 5))
    options = {}
    if form == "lowrank" and index == 0:  # the seed size: 41 x 41, L = 21, D = 128, batch 2
        D, L, H, W, batch = 128, 21, 41, 41, (2,)
        E = rng.standard_normal(batch + (D, L * H * W)) / np.sqrt(L * H * W)
        params = [E.reshape(batch + (D, L, H, W))]
        lam = 1e-3
    elif form == "grid":
        nb = int(rng.choice([4, 8]))
        K = nb // 2
        pairwise = rng.standard_normal(batch + (K, L, L, H, W)) * rng.uniform(0.1, 1.0)
        op = gcrflinalg.GridGCRF(pairwise, 1.0, neighbourhood=nb)
        bound = float(np.max(op.gershgorin_bound()))
        lam = bound * (1 + 10 ** rng.uniform(-1.5, 0))
        params, options = [pairwise], {"neighbourhood": nb}
    elif form == "grid_potts":
        nb = int(rng.choice([4, 8]))
        K = nb // 2
        weights = rng.uniform(0, 1, batch + (K, H, W)) * rng.uniform(0.1, 1.0)
        op = gcrflinalg.GridPottsGCRF(weights, 1.0, L, neighbourhood=nb)
        bound = float(np.max(op.gershgorin_bound()))
        lam = bound * (1 + 10 ** rng.uniform(-2, 0))
        params, options = [weights], {"neighbourhood": nb}
    elif form == "lowrank":
        D = int(rng.integers(2, 40))
        scale = 10 ** rng.uniform(-1, 2)
        E = _embeddings(rng, D, L * H * W, scale, batch)
        params = [E.reshape(batch + (D, L, H, W))]
        lam = scale * 10 ** rng.uniform(-3, 0)  # cond(M) up to ~1e3 (see gcrflinalg.tolerances)
    elif form == "lowrank_potts":
        D = int(rng.integers(2, 40))
        psi = _embeddings(rng, D, H * W, 10 ** rng.uniform(-1, 1), batch)
        norm2 = max(np.linalg.norm(psi[idx], 2) ** 2 for idx in np.ndindex(*batch))
        params = [psi.reshape(batch + (D, H, W))]
        lam = norm2 * (1 + 10 ** rng.uniform(-2, 0))
    elif form == "video":
        V, Ds, Dt = int(rng.integers(2, 5)), int(rng.integers(2, 20)), int(rng.integers(2, 20))
        n = L * H * W
        S = _embeddings(rng, Ds, n, 10 ** rng.uniform(-1, 1), batch + (V,))
        T = _embeddings(rng, Dt, n, 10 ** rng.uniform(-1, 1), batch + (V,))
        tmax = max(np.linalg.norm(T[idx], 2) ** 2 for idx in np.ndindex(*(batch + (V,))))
        params = [S.reshape(batch + (V, Ds, L, H, W)), T.reshape(batch + (V, Dt, L, H, W))]
        lam = (V - 1) * tmax * (1 + 10 ** rng.uniform(-2, 0))  # above -lambda_min(K x J_T)-type bounds
        b = rng.standard_normal(batch + (V, L, H, W))
        return b.astype(np.float32), [p.astype(np.float32) for p in params], _lam32(lam), options
    b = rng.standard_normal(batch + (L, H, W))
    return b.astype(np.float32), [p.astype(np.float32) for p in params], _lam32(lam), options


def _relative_residual64(form, b, x, params, lam, options):
    spec = FORMS[form]
    ctor = dict(options)
    if spec.needs_num_labels:
        ctor["num_labels"] = b.shape[-3]
    op64 = spec.operator_class()(*[p.astype(np.float64) for p in params], lam, **ctor)
    b64 = b.astype(np.float64)
    r = b64 - op64.matvec(x.astype(np.float64))
    axes = tuple(range(r.ndim - len(op64.vector_shape), r.ndim))
    return np.sqrt((r ** 2).sum(axis=axes)) / np.sqrt((b64 ** 2).sum(axis=axes))


@pytest.mark.parametrize("form", ["grid", "grid_potts", "lowrank", "lowrank_potts", "video"])
def test_float32_layer_defaults_meet_the_tolerance(form):
    rng = np.random.default_rng(2024)
    worst = 0.0
    for index in range(COUNT):
        b, params, lam, options = make_problem(form, index, rng)
        x = gcrf_solve(form, torch.from_numpy(b), *[torch.from_numpy(p) for p in params], lam=lam,
                       **options)
        assert x.dtype == torch.float32
        rel = _relative_residual64(form, b, x.numpy(), params, lam, options)
        worst = max(worst, float(rel.max()))
        assert np.all(rel <= RTOL32), (form, index, rel)
    assert worst <= RTOL32


def test_float32_multires_solve_defaults_meet_the_tolerance():
    from gcrflinalg.problems import make_problem as builtin

    for index in range(COUNT):
        prob = builtin("multires", index % 10, seed=index // 10, dtype=np.float32,
                       margin=float(10 ** np.random.default_rng(index).uniform(-2, 0)))
        res = gcrflinalg.solve(prob.operator, prob.b)
        assert np.all(res.converged)
        op, b = prob.operator, np.asarray(prob.b)
        A = op.to_sparse().astype(np.float64)
        r = b.astype(np.float64).reshape(-1) - A @ np.asarray(res.x, dtype=np.float64).reshape(-1)
        assert np.linalg.norm(r) <= RTOL32 * np.linalg.norm(b.astype(np.float64))


# ---------------------------------------------------------------------------- tolerances
def test_one_table_of_default_tolerances():
    from gcrflinalg.interop import _forms

    assert default_rtol(np.float64) == 1e-8 and default_rtol(np.float32) == 1e-4
    assert _forms.default_rtol is default_rtol
    for dtype in (np.float32, np.float64):
        config = _forms.make_config("lowrank", (2, 3, 3), dtype)
        assert config.solver_options["rtol"] == default_rtol(dtype)
        rng = np.random.default_rng(0)
        op = LowRankGCRF(rng.standard_normal((3, 2, 3, 3)).astype(dtype), 0.5)
        res = gcrflinalg.solve(op, rng.standard_normal((2, 3, 3)).astype(dtype), method="gmres")
        assert res.residual_norms[-1] <= default_rtol(dtype) * res.b_norm


# ---------------------------------------------------------------------------- direct refinement
def _hard_lowrank(dtype, seed=0):
    rng = np.random.default_rng(seed)
    D, L, H, W = 16, 3, 12, 12
    E = _decaying(rng, D, L * H * W, 1e2).reshape(D, L, H, W)
    return LowRankGCRF(E.astype(dtype), 1e-2), rng.standard_normal((L, H, W)).astype(dtype)


def test_direct_refines_automatically_in_float32():
    op, b = _hard_lowrank(np.float32)
    once = gcrflinalg.solve(op, b, method="direct", rtol=1e-5, refine=0)
    assert not once.converged  # cond(M) ~ 1e4: one float32 Woodbury solve misses 1e-5
    auto = gcrflinalg.solve(LowRankGCRF(op.embeddings, op.lam), b, method="direct", rtol=1e-5)
    assert auto.matvecs >= 2  # refinement rounds are counted as products
    assert auto.matvecs <= 1 + 5
    assert auto.residual_norms[-1] < once.residual_norms[-1]
    assert auto.converged
    explicit = gcrflinalg.solve(op, b, method="direct", refine=2)
    assert explicit.matvecs == 3


@pytest.mark.parametrize("make", ["video", "lowrank_potts", "grid"])
def test_other_direct_solves_refine_in_float32(make):
    rng = np.random.default_rng(1)
    if make == "video":
        S = rng.standard_normal((3, 6, 2, 6, 6)).astype(np.float32)
        T = 0.3 * rng.standard_normal((3, 6, 2, 6, 6)).astype(np.float32)
        op = VideoGCRF(S, T, 30.0)
        b = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    elif make == "lowrank_potts":
        psi = rng.standard_normal((8, 8, 8)).astype(np.float32)
        op = LowRankPottsGCRF(psi, 1.01 * np.linalg.norm(psi.reshape(8, -1).astype(np.float64), 2) ** 2, 4)
        b = rng.standard_normal((4, 8, 8)).astype(np.float32)
    else:
        pw = rng.standard_normal((2, 3, 3, 8, 8)).astype(np.float32)
        op = gcrflinalg.GridGCRF(pw, 1.0)
        op = gcrflinalg.GridGCRF(pw, 1.01 * float(np.max(op.gershgorin_bound())))
        b = rng.standard_normal((3, 8, 8)).astype(np.float32)
    res = gcrflinalg.solve(op, b, method="direct", rtol=1e-6)
    assert res.converged
    dense = op.to_dense().astype(np.float64)
    r = b.astype(np.float64).reshape(-1) - dense @ np.asarray(res.x, np.float64).reshape(-1)
    assert np.linalg.norm(r) <= 1e-6 * np.linalg.norm(b.astype(np.float64))


# ---------------------------------------------------------------------------- auto
def _auto_case(form, regime, dtype):
    rng = np.random.default_rng(7)
    if form == "lowrank":
        D, L, H, W, n = 128, 8, 30, 30, 8 * 900
        E = np.stack([rng.standard_normal((D, n)) * np.sqrt(10.0 / n) if regime == "flat"
                      else _decaying(rng, D, n, 10.0 * D) for _ in range(2)])
        return LowRankGCRF(E.reshape(2, D, L, H, W).astype(dtype), 1.0), \
            rng.standard_normal((2, L, H, W)).astype(dtype)
    V, D, L, H, W = 3, 32, 4, 12, 12
    n = L * H * W
    S = np.stack([[rng.standard_normal((D, n)) * np.sqrt(10.0 / n) if regime == "flat"
                   else _decaying(rng, D, n, 10.0 * D) for _ in range(V)] for _ in range(2)])
    T = np.stack([[rng.standard_normal((D, n)) * np.sqrt(0.03 / n) for _ in range(V)] for _ in range(2)])
    return (VideoGCRF(S.reshape(2, V, D, L, H, W).astype(dtype), T.reshape(2, V, D, L, H, W).astype(dtype),
                      1.0 + 1.5 * 0.03 * D),  # above the cheap bound ||T_v||_F^2: nothing factored yet
            rng.standard_normal((2, V, L, H, W)).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("form", ["lowrank", "video"])
def test_auto_keeps_cg_on_a_flat_spectrum_and_switches_on_a_decaying_one(form, dtype):
    op, b = _auto_case(form, "flat", dtype)
    cg = gcrflinalg.solve(op, b, method="cg")
    op, b = _auto_case(form, "flat", dtype)
    break_even = op._break_even(1)
    auto = gcrflinalg.solve(op, b, method="auto")
    assert np.all(auto.converged)
    if cg.matvecs + 1 < break_even:  # CG is the cheaper method: auto keeps it, at CG's own cost
        assert auto.method == "cg" and auto.requested_method == "auto"
        assert auto.matvecs == cg.matvecs  # one CG run watched by its monitor: no restart
        np.testing.assert_array_equal(auto.x, cg.x)
    else:
        assert auto.matvecs <= cg.matvecs
    op, b = _auto_case(form, "decaying", dtype)
    auto = gcrflinalg.solve(op, b, method="auto")
    assert np.all(auto.converged)
    assert auto.method == "cg+direct"
    # the switch comes after the probe, or at the latest once the probe plus the factorisation's
    # cost in products is spent; then the direct solve's products (at most 1 + 5 refinement rounds)
    assert auto.matvecs <= 3 + int(np.ceil(op._break_even(1))) + 1 + 5
    # a cached factor is used at once
    again = gcrflinalg.solve(op, b, method="auto")
    assert again.method == "direct" and np.all(again.converged)
