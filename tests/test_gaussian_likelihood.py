"""The Gaussian negative log-likelihood: values against scipy.stats, gradients by finite differences,
torch.autograd.gradcheck, the JAX layer, and the stochastic gradient's mean over seeds."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import gcrflinalg
from gaussian_cases import FAMILIES, case_by_id
from gcrflinalg.gaussian import logdet_gradients


def _dense_nll(M, y, b):
    cov = np.linalg.inv(M)
    return -stats.multivariate_normal(cov @ b, cov).logpdf(y)


@pytest.mark.parametrize("case", FAMILIES, ids=lambda c: c.id)
def test_value_and_gradients_against_dense(case):
    rng = np.random.default_rng(17)
    op, params = case.make(rng, batch_shape=(2,))
    M = case.dense(params)
    y = rng.standard_normal((2, op.size))
    b = rng.standard_normal((2, op.size))
    res = gcrflinalg.gaussian_nll(op, y, b)
    assert res.method == "exact" and res.value.shape == (2,)
    ref = [_dense_nll(M[i], y[i], b[i]) for i in range(2)]
    np.testing.assert_allclose(res.value, ref, rtol=1e-10)
    g = res.gradients
    np.testing.assert_allclose(g["b"], np.linalg.solve(M, b[..., None])[..., 0] - y, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(g["y"], np.einsum("bij,bj->bi", M, y) - b, rtol=1e-10, atol=1e-10)
    h = 1e-6
    for name in params:
        d = rng.standard_normal(np.shape(params[name]))
        plus = dict(params, **{name: params[name] + h * d})
        minus = dict(params, **{name: params[name] - h * d})
        fd = sum(_dense_nll(case.dense(plus)[i], y[i], b[i]) - _dense_nll(case.dense(minus)[i], y[i], b[i])
                 for i in range(2)) / (2 * h)
        np.testing.assert_allclose(np.sum(np.asarray(g[name]) * d), fd, rtol=1e-6, atol=1e-6)


def test_stochastic_gradient_is_unbiased():
    """Hutchinson's estimate of d log det M / d theta, averaged over seeds, matches the exact one
    within 5 standard errors of the mean, entry by entry."""
    case = case_by_id("grid-n4-L1-4x5")
    op, _ = case.make(np.random.default_rng(3))
    exact, method = logdet_gradients(op, method="exact")
    assert method == "exact"
    runs = [logdet_gradients(op, method="stochastic", num_probes=10, rng=s, solve_method="direct")[0]
            for s in range(60)]
    for name in exact:
        est = np.stack([np.asarray(r[name], dtype=float) for r in runs])
        se = est.std(axis=0, ddof=1) / np.sqrt(len(runs))
        assert np.all(np.abs(est.mean(axis=0) - exact[name]) <= 5 * se + 1e-12), name


def test_stochastic_nll_value_within_stderr():
    case = case_by_id("grid-n8-L3-4x4")
    rng = np.random.default_rng(1)
    op, params = case.make(rng)
    y, b = rng.standard_normal(op.size), rng.standard_normal(op.size)
    exact = gcrflinalg.gaussian_nll(op, y, b, method="exact").value
    res = gcrflinalg.gaussian_nll(op, y, b, method="stochastic", num_probes=30, rng=0)
    assert res.method == "stochastic" and res.stderr > 0
    assert abs(res.value - exact) <= 5 * res.stderr


def test_bad_input():
    op, _ = case_by_id("lowrank-D3-L2-3x5").make(np.random.default_rng(0))
    with pytest.raises(ValueError, match="method"):
        gcrflinalg.gaussian_nll(op, np.zeros(op.size), np.zeros(op.size), method="laplace")
    with pytest.raises(ValueError):
        gcrflinalg.gaussian_nll(op, np.zeros((3, op.size)), np.zeros(op.size))


# ----------------------------------------------------------------------------- torch
TORCH_CASES = [("lowrank-D2-L3-1x6", "lowrank", {}), ("lowrank_potts-D5-L2-1x5", "lowrank_potts", {}),
               ("video-12-V4-L2-2x2", "video", {"neighbourhood": {1, 2}}),
               ("grid-n4-L1-4x5", "grid", {"neighbourhood": 4}),
               ("grid_potts-n8-L2-1x6", "grid_potts", {"neighbourhood": 8})]


@pytest.mark.parametrize("case_id, form, options", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_torch_gradcheck(case_id, form, options):
    torch = pytest.importorskip("torch")
    from gcrflinalg.interop.torch import gaussian_nll

    case = case_by_id(case_id)
    rng = np.random.default_rng(2)
    op, params = case.make(rng, batch_shape=(2,))
    vec = (2,) + op.vector_shape
    y = torch.tensor(rng.standard_normal(vec), requires_grad=True)
    b = torch.tensor(rng.standard_normal(vec), requires_grad=True)
    ps = [torch.tensor(params[n], requires_grad=True) for n in case.names(params)]
    lam = torch.tensor(params["lam"], requires_grad=True)

    def f(y, b, lam, *ps):
        return gaussian_nll(form, y, b, *ps, lam=lam, method="exact", **options)

    value = f(y, b, lam, *ps)
    M = case.dense(params)
    ref = [_dense_nll(M[i], y[i].detach().numpy().ravel(), b[i].detach().numpy().ravel()) for i in range(2)]
    np.testing.assert_allclose(value.detach().numpy(), ref, rtol=1e-10)
    # the full Jacobian on the small grids; a random projection of it (fast mode) on the forms with
    # many parameter entries per system
    fast = form in ("lowrank", "video")
    assert torch.autograd.gradcheck(f, (y, b, lam, *ps), atol=1e-6, rtol=1e-5, fast_mode=fast)


def test_torch_compile_and_shared_lam():
    torch = pytest.importorskip("torch")
    from gcrflinalg.interop.torch import gaussian_nll

    rng = np.random.default_rng(4)
    E = torch.tensor(0.3 * rng.standard_normal((2, 3, 2, 3, 4)), requires_grad=True)
    y = torch.tensor(rng.standard_normal((2, 2, 3, 4)))
    b = torch.tensor(rng.standard_normal((2, 2, 3, 4)))
    lam = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)

    def loss(E, lam):
        return gaussian_nll("lowrank", y, b, E, lam=lam).sum()

    eager = loss(E, lam)
    gE, glam = torch.autograd.grad(eager, (E, lam))
    compiled = torch.compile(loss, backend="aot_eager")(E, lam)
    cE, clam = torch.autograd.grad(compiled, (E, lam))
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(cE, gE)
    torch.testing.assert_close(clam, glam)


def test_jax_matches_torch():
    jax = pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    jax.config.update("jax_enable_x64", True)
    from gcrflinalg.interop.jax import gaussian_nll as jnll
    from gcrflinalg.interop.torch import gaussian_nll as tnll

    case = case_by_id("video-fc-V3-L2-2x3")
    rng = np.random.default_rng(6)
    op, params = case.make(rng, batch_shape=(2,))
    y, b = (rng.standard_normal((2,) + op.vector_shape) for _ in range(2))
    args = (y, b, params["spatial"], params["temporal"], params["lam"])

    def f(y, b, S, T, lam):
        return jnll("video", y, b, S, T, lam=lam).sum()

    value = jax.jit(f)(*args)
    grads = jax.grad(f, argnums=(0, 1, 2, 3, 4))(*args)
    tt = [torch.tensor(a, requires_grad=True) for a in args]
    tv = tnll("video", tt[0], tt[1], tt[2], tt[3], lam=tt[4]).sum()
    tv.backward()
    np.testing.assert_allclose(float(value), tv.item(), rtol=1e-12)
    for g, t in zip(grads, tt):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_torch_multires_gradcheck():
    torch = pytest.importorskip("torch")
    from gcrflinalg.interop.torch import gaussian_nll

    rng = np.random.default_rng(8)
    L, sizes, level_forms = 2, [(3, 3), (2, 2)], ("general", "potts")
    levels = [torch.tensor(0.2 * rng.standard_normal(((2, L, L) if f == "general" else (2,)) + hw),
                           requires_grad=True) for f, hw in zip(level_forms, sizes)]
    cross = [torch.tensor(0.2 * rng.standard_normal((L, L) + sizes[0]), requires_grad=True)]
    n = L * sum(h * w for h, w in sizes)
    y = torch.tensor(rng.standard_normal(n), requires_grad=True)
    b = torch.tensor(rng.standard_normal(n), requires_grad=True)
    lam = torch.tensor(4.5, dtype=torch.float64, requires_grad=True)
    opts = dict(level_forms=level_forms, num_labels=L, neighbourhood=4)

    def f(y, b, lam, *ps):
        return gaussian_nll("multires", y, b, *ps, lam=lam, method="exact", **opts)

    assert torch.autograd.gradcheck(f, (y, b, lam, *levels, *cross), atol=1e-6, rtol=1e-5)
