"""The JAX G-CRF function: ``check_grads`` (finite differences) for the forms, agreement with
``jnp.linalg.solve`` on a dense matrix built in JAX from docs/design.md, ``jit`` and ``vmap``."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX is not installed")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from gcrflinalg.interop import jax as gjax  # noqa: E402
from gcrflinalg.interop._forms import NotConvergedError  # noqa: E402

TIGHT = dict(method="cg", rtol=1e-13, maxiter=10000)


@pytest.fixture(autouse=True)
def float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def dense_lowrank_potts(psi, lam, num_labels):
    """3.5: ``M = lam I + (1 1^T - I_L) (x) psi^T psi`` (label-major)."""
    pf = psi.reshape(psi.shape[0], -1)
    return lam * jnp.eye(num_labels * pf.shape[1]) + jnp.kron(
        jnp.ones((num_labels, num_labels)) - jnp.eye(num_labels), pf.T @ pf)


def dense_grid_potts(weights, lam, num_labels):
    """3.2 with the 4-neighbourhood, assembled by explicit loops over edges and label pairs."""
    K, H, W = weights.shape
    P, N = H * W, num_labels * H * W
    rows, cols, ks, is_, js = [], [], [], [], []
    for k, (di, dj) in enumerate(((0, 1), (1, 0))):
        for i in range(H):
            for j in range(W):
                if i + di >= H or j + dj >= W:
                    continue
                for m in range(num_labels):
                    for n in range(num_labels):
                        if m != n:
                            rows.append(m * P + i * W + j)
                            cols.append(n * P + (i + di) * W + j + dj)
                            ks.append(k), is_.append(i), js.append(j)
    vals = weights[np.array(ks), np.array(is_), np.array(js)]
    A = jnp.zeros((N, N)).at[np.array(rows), np.array(cols)].add(vals)
    return lam * jnp.eye(N) + A + A.T


def _lowrank_potts_case(rng, batch=(2,), L=3, D=3, H=3, W=4):
    psi = 0.3 * rng.standard_normal(batch + (D, H, W))
    norm2 = max(np.linalg.norm(psi[idx].reshape(D, -1), 2) ** 2 for idx in np.ndindex(*batch))
    return jnp.asarray(rng.standard_normal(batch + (L, H, W))), jnp.asarray(psi), 1.5 * norm2 + 0.3


def _grid_potts_case(rng, batch=(2,), L=3, H=3, W=4):
    weights = 0.2 * rng.uniform(0, 1, batch + (2, H, W))
    return jnp.asarray(rng.standard_normal(batch + (L, H, W))), jnp.asarray(weights), 0.5 + 4 * (L - 1) * 0.2


def test_check_grads_lowrank_potts(rng):
    b, psi, lam = _lowrank_potts_case(rng)
    lam = jnp.asarray([lam, 1.3 * lam])
    f = lambda lm, bb, p: gjax.gcrf_solve("lowrank_potts", bb, p, lam=lm, **TIGHT)  # noqa: E731
    check_grads(f, (lam, b, psi), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-5)


def test_check_grads_lowrank_general_direct(rng):
    E = jnp.asarray(0.5 * rng.standard_normal((2, 3, 2, 3, 3)))
    b = jnp.asarray(rng.standard_normal((2, 2, 3, 3)))
    f = lambda lm, bb, e: gjax.gcrf_solve("lowrank", bb, e, lam=lm, method="direct")  # noqa: E731
    check_grads(f, (jnp.asarray(0.8), b, E), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-5)


def test_check_grads_grid_potts(rng):
    b, w, lam = _grid_potts_case(rng)
    f = lambda lm, bb, ww: gjax.gcrf_solve("grid_potts", bb, ww, lam=lm, neighbourhood=4, **TIGHT)  # noqa: E731
    check_grads(f, (jnp.asarray(lam), b, w), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("form", ["lowrank_potts", "grid_potts"])
def test_gradients_match_dense_jax_solve(form, rng):
    if form == "lowrank_potts":
        b, p, lam = _lowrank_potts_case(rng, batch=())
        dense = dense_lowrank_potts
    else:
        b, p, lam = _grid_potts_case(rng, batch=())
        dense = dense_grid_potts
    c = jnp.asarray(rng.standard_normal(b.shape))

    def ours(lm, bb, pp):
        return jnp.sum(c * gjax.gcrf_solve(form, bb, pp, lam=lm, **TIGHT) ** 2)

    def ref(lm, bb, pp):
        x = jnp.linalg.solve(dense(pp, lm, bb.shape[-3]), bb.reshape(-1)).reshape(bb.shape)
        return jnp.sum(c * x ** 2)

    args = (jnp.asarray(lam), b, p)
    got, want = jax.grad(ours, argnums=(0, 1, 2))(*args), jax.grad(ref, argnums=(0, 1, 2))(*args)
    np.testing.assert_allclose(ours(*args), ref(*args), rtol=1e-10)
    for g, r in zip(got, want):
        assert g.shape == r.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-8, atol=1e-10)


def test_jit_vmap_and_shared_parameters(rng):
    b, psi, lam = _lowrank_potts_case(rng, batch=(3,))
    shared = psi[0]

    @jax.jit
    def loss(p, bb):
        return jnp.sum(gjax.gcrf_solve("lowrank_potts", bb, p, lam=lam, **TIGHT) ** 2)

    grad_shared = jax.grad(loss)(shared, b)
    grad_loop = sum(jax.grad(loss)(shared, b[i]) for i in range(3))
    np.testing.assert_allclose(np.asarray(grad_shared), np.asarray(grad_loop), rtol=1e-9, atol=1e-12)
    mapped = jax.vmap(lambda bb, p: gjax.gcrf_solve("lowrank_potts", bb, p, lam=lam, **TIGHT))(b, psi)
    batched = gjax.gcrf_solve("lowrank_potts", b, psi, lam=lam, **TIGHT)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(batched), rtol=1e-10, atol=1e-12)


def test_float32_solve_and_nonconvergence_raises(rng):
    b, psi, lam = _lowrank_potts_case(rng, batch=())
    x32 = gjax.gcrf_solve("lowrank_potts", b.astype(jnp.float32), psi.astype(jnp.float32), lam=lam)
    assert x32.dtype == jnp.float32
    x64 = gjax.gcrf_solve("lowrank_potts", b, psi, lam=lam, **TIGHT)
    np.testing.assert_allclose(np.asarray(x32), np.asarray(x64), rtol=1e-3, atol=1e-4)
    with pytest.raises(Exception, match="did not converge") as info:
        gjax.gcrf_solve("lowrank_potts", b, psi, lam=lam, method="cg", rtol=1e-14, maxiter=1).block_until_ready()
    assert isinstance(info.value, (NotConvergedError, RuntimeError))
    with pytest.raises(ValueError, match="form must be one of"):
        gjax.gcrf_solve("dense", b, psi, lam=lam)


@pytest.mark.parametrize("level_forms", [("general", "potts"), ("potts", "general", "potts")],
                         ids=["two_levels", "three_levels"])
def test_check_grads_multires(level_forms, rng):
    L, sizes = 2, [(4, 4), (2, 2), (1, 1)][: len(level_forms)]
    levels = [jnp.asarray(0.2 * rng.standard_normal(((2, L, L) if f == "general" else (2,)) + hw))
              for f, hw in zip(level_forms, sizes)]
    cross = [jnp.asarray(0.2 * rng.standard_normal(((L, L) if f == "general" else ()) + sizes[s]))
             for s, f in enumerate(level_forms[:-1])]
    b = jnp.asarray(rng.standard_normal(L * sum(h * w for h, w in sizes)))
    opts = dict(level_forms=level_forms, num_labels=L, neighbourhood=4, **TIGHT)
    f = lambda lm, bb, *ps: gjax.gcrf_solve("multires", bb, *ps, lam=lm, **opts)  # noqa: E731
    check_grads(f, (jnp.asarray(4.5), b, *levels, *cross), order=1, modes=["rev"], eps=1e-6,
                atol=1e-6, rtol=1e-5)
