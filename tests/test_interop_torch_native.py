"""The PyTorch layer as a PyTorch 2 custom operator: ``torch.compile``, ``torch.library.opcheck``,
``torch.func`` transforms, second-order gradients (refused, never silently wrong), the multires
layer, and CUDA stream ordering (only with a GPU and CuPy)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from gcrflinalg.interop import torch as gtorch  # noqa: E402
from gcrflinalg.interop._forms import FORMS  # noqa: E402

from test_interop_torch import make_case  # noqa: E402

TIGHT = dict(method="cg", rtol=1e-13, maxiter=10000)
# torch.compile's default inductor backend needs a C++ compiler; aot_eager runs the same Dynamo
# capture, fake-tensor propagation and AOTAutograd joint graph without generating code
BACKEND = "aot_eager"


# ---------------------------------------------------------------------------- multires cases
def multires_case(level_forms, seed=0, L=2, H=4, W=4, batch=(), cross_forms=None, dtype=torch.float64):
    """``(b, params, lam, options)`` of a small positive-definite pyramid (halving sizes)."""
    rng = np.random.default_rng(seed)
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    sizes = [(H, W)]
    for _ in level_forms[1:]:
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    cross_forms = tuple(cross_forms or level_forms[:-1])
    levels = []
    for f, (h, w) in zip(level_forms, sizes):
        shape = (2, L, L, h, w) if f == "general" else (2, h, w)
        levels.append(t(0.2 * rng.standard_normal(batch + shape)))
    cross = [t(0.2 * rng.standard_normal(batch + ((L, L) if f == "general" else ()) + sizes[s]))
             for s, f in enumerate(cross_forms)]
    N = L * sum(h * w for h, w in sizes)
    b = t(rng.standard_normal(batch + (N,)))
    options = dict(level_forms=tuple(level_forms), cross_forms=cross_forms, num_labels=L, neighbourhood=4)
    return b, levels + cross, 2.0 + 0.6 * 2 * 2 * L, options


def dense_multires(b, params, lam, options):
    """``x`` by a dense solve of the core operator's matrix (reference, no autograd)."""
    spec = FORMS["multires"]
    op = spec.parameter_layout(options).build([p.detach().numpy() for p in params], float(lam))
    return torch.tensor(np.linalg.solve(op.to_dense(), b.detach().numpy()))


@pytest.mark.parametrize("level_forms", [("general", "potts"), ("potts", "general", "potts")],
                         ids=["two_levels", "three_levels"])
def test_multires_gradcheck(level_forms):
    b, params, lam, options = multires_case(level_forms)
    lam_t = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    inputs = [b.requires_grad_(), *[p.requires_grad_() for p in params], lam_t]

    def f(b_, *rest):
        *ps, lm = rest
        return gtorch.gcrf_solve("multires", b_, *ps, lam=lm, **TIGHT, **options)

    x = f(*inputs)
    torch.testing.assert_close(x.detach(), dense_multires(b, params, lam, options), rtol=1e-9, atol=1e-10)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_multires_layer_batched_and_errors():
    b, params, lam, options = multires_case(("general", "potts"), batch=(2,), seed=3)
    layer = gtorch.MultiResGCRFLayer(lam=lam, **options, **TIGHT)
    assert isinstance(layer, gtorch.GCRFLayer) and layer.spec.name == "multires"
    pp = [p.clone().requires_grad_() for p in params]
    x = layer(b, *pp)
    assert x.shape == b.shape
    x.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in pp)
    with pytest.raises(ValueError, match="level_forms"):
        gtorch.gcrf_solve("multires", b, *params, lam=lam)
    with pytest.raises(TypeError, match="takes 3 parameter"):
        gtorch.gcrf_solve("multires", b, *params[:2], lam=lam, level_forms=("general", "potts"))


# ---------------------------------------------------------------------------- torch.compile
class PottsNet(torch.nn.Module):
    """Two convolutions produce unaries and pairwise parameters, then a G-CRF layer."""

    def __init__(self, form, labels=3, channels=2):
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.unary = torch.nn.Conv2d(3, labels, 3, padding=1, dtype=torch.float64)
        self.pairwise = torch.nn.Conv2d(3, channels, 3, padding=1, dtype=torch.float64)
        if form == "grid_potts":
            self.crf = gtorch.GridPottsGCRFLayer(lam=2.5, neighbourhood=4, learn_lam=True, **TIGHT)
        else:
            self.crf = gtorch.LowRankPottsGCRFLayer(lam=1.0, learn_lam=True, **TIGHT)

    def forward(self, image):
        b = self.unary(image)
        p = self.pairwise(image)
        p = 0.2 * torch.sigmoid(p) if self.form == "grid_potts" else 0.1 * torch.tanh(p)
        return self.crf(b, p)


@pytest.mark.parametrize("form", ["grid_potts", "lowrank_potts"])
def test_compiled_model_matches_eager(form):
    model = PottsNet(form)
    image = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def run(fn):
        model.zero_grad()
        x = fn(image)
        (x * torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)).sum().backward()
        return x.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    eager = run(model)
    compiled = run(torch.compile(model, backend=BACKEND))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-10, atol=1e-12)
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, rtol=1e-9, atol=1e-11)


def test_dynamic_shape_compile_traces_without_solving(monkeypatch):
    calls = []
    real = gtorch._solve_kernel
    monkeypatch.setattr(gtorch, "_solve_kernel", lambda *a: calls.append(1) or real(*a))
    b, params, lam, options = make_case("grid_potts", (2,), L=2, H=3, W=4)
    f = torch.compile(lambda bb, w: gtorch.gcrf_solve("grid_potts", bb, w, lam=lam, **TIGHT, **options),
                      backend=BACKEND, dynamic=True)
    for n in (2, 3, 4):
        bb, ww = b[:1].expand(n, -1, -1, -1).contiguous(), params[0][:1].expand(n, -1, -1, -1).contiguous()
        torch.testing.assert_close(f(bb, ww), gtorch.gcrf_solve("grid_potts", bb, ww, lam=lam, **TIGHT, **options))
    assert len(calls) == 6  # one real solve per call and per eager reference: tracing ran none


# ---------------------------------------------------------------------------- opcheck
def _opcheck_case(form):
    if form == "multires":
        b, params, lam, options = multires_case(("general", "potts"), batch=(2,), H=3, W=3)
    else:
        b, params, lam, options = make_case(form, (2,), L=2, H=2, W=3)
    config = gtorch.make_config(form, tuple(b.shape[b.ndim - FORMS[form].vector_ndim:]), np.float64,
                                form_options=options, **TIGHT)
    lam_t = torch.tensor(lam, dtype=torch.float64)
    return b, params, lam_t, gtorch.config_key(config)


@pytest.mark.parametrize("form", list(FORMS))
def test_opcheck_every_form(form):
    solve_op, backward_op, *_ = gtorch._operators()
    b, params, lam, key = _opcheck_case(form)
    inputs = (b.requires_grad_(), [p.requires_grad_() for p in params], lam.requires_grad_(), key)
    torch.library.opcheck(solve_op, inputs)
    x = solve_op(b.detach(), [p.detach() for p in params], lam.detach(), key)
    grad_x = torch.randn_like(x)
    torch.library.opcheck(backward_op, (grad_x, x, [p.detach() for p in params], lam.detach(), key, True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


# ---------------------------------------------------------------------------- torch.func
def test_func_vmap_matches_batch():
    b, params, lam, options = make_case("lowrank_potts", (3,), seed=4, L=3)
    psi = params[0]
    solve = lambda bb, p: gtorch.gcrf_solve("lowrank_potts", bb, p, lam=lam, **TIGHT)  # noqa: E731
    torch.testing.assert_close(torch.func.vmap(solve)(b, psi), solve(b, psi), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.func.vmap(solve, in_dims=(0, None))(b, psi[0]), solve(b, psi[0]),
                               rtol=1e-10, atol=1e-12)
    # eager autograd through a vmapped solve
    pp = psi.clone().requires_grad_()
    (g,) = torch.autograd.grad(torch.func.vmap(solve)(b, pp).pow(2).sum(), pp)
    pp2 = psi.clone().requires_grad_()
    (g2,) = torch.autograd.grad(solve(b, pp2).pow(2).sum(), pp2)
    torch.testing.assert_close(g, g2, rtol=1e-10, atol=1e-12)


def _func_case(form):
    if form == "multires":
        b, params, lam, options = multires_case(("general", "potts"), batch=(2,), H=4, W=4, seed=5)
    else:
        b, params, lam, options = make_case(form, (2,), seed=5)
    return b, params, torch.tensor(lam, dtype=torch.float64), options


@pytest.mark.parametrize("form", ["grid_potts", "lowrank_potts", "grid", "lowrank", "video", "multires"])
def test_func_grad_matches_autograd(form):
    b, params, lam, options = _func_case(form)
    weights = torch.linspace(-1, 1, b.numel(), dtype=torch.float64).reshape(b.shape)

    def loss(bb, lm, *ps):
        x = gtorch.gcrf_solve(form, bb, *ps, lam=lm, **TIGHT, **options)
        return (weights * x).sum() + x.pow(2).sum()

    argnums = tuple(range(2 + len(params)))  # b, lam and every parameter
    got = torch.func.grad(loss, argnums=argnums)(b, lam, *params)
    inputs = [t.clone().requires_grad_() for t in (b, lam, *params)]
    want = torch.autograd.grad(loss(*inputs), inputs)
    assert len(got) == len(want) == 2 + len(params)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    # one argument at a time (the other inputs need no gradient)
    (g_b,) = torch.func.grad(lambda bb: loss(bb, lam, *params), argnums=(0,))(b)
    torch.testing.assert_close(g_b, want[0], rtol=1e-9, atol=1e-11)
    g_last = torch.func.grad(lambda p: loss(b, lam, *params[:-1], p))(params[-1])
    torch.testing.assert_close(g_last, want[-1], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("form", ["grid_potts", "lowrank_potts"])
def test_func_per_sample_gradients_and_jacrev(form):
    b, params, lam, options = _func_case(form)
    (p,) = params
    solve = lambda bb, pp, lm: gtorch.gcrf_solve(form, bb, pp, lam=lm, **TIGHT, **options)  # noqa: E731
    inputs = [b.clone().requires_grad_(), p.clone().requires_grad_(), lam.expand(2).clone().requires_grad_()]
    want = torch.autograd.grad(solve(*inputs).pow(2).sum(), inputs)
    # per-sample gradients: vmap(grad), lam shared by the samples (one dL/dlam per sample)
    per_sample = torch.func.vmap(torch.func.grad(lambda bb, pp, lm: solve(bb, pp, lm).pow(2).sum(),
                                                 argnums=(0, 1, 2)), in_dims=(0, 0, None))(b, p, lam)
    for g, w in zip(per_sample, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    # grad of a vmapped solve
    g = torch.func.grad(lambda pp: torch.func.vmap(solve, in_dims=(0, 0, None))(b, pp, lam).pow(2).sum())(p)
    torch.testing.assert_close(g, want[1], rtol=1e-9, atol=1e-11)
    # jacrev of one system's solution w.r.t. its unaries: the inverse of M (symmetric)
    jac = torch.func.jacrev(lambda bb: solve(bb, p[0], lam))(b[0])
    n = b[0].numel()
    m_inv = jac.reshape(n, n)
    torch.testing.assert_close(m_inv, m_inv.T, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(m_inv @ b[0].reshape(n), solve(b[0], p[0], lam).reshape(n), rtol=1e-9, atol=1e-11)


def test_func_second_order_raises():
    b, params, lam, options = make_case("grid_potts", (), seed=2, L=2, H=3, W=3)
    solve = lambda w: gtorch.gcrf_solve("grid_potts", b, w, lam=lam, **TIGHT, **options)  # noqa: E731
    inner = torch.func.grad(lambda w: solve(w).pow(2).sum())
    with pytest.raises(RuntimeError, match="second-order gradients through the G-CRF solve are not supported"):
        torch.func.grad(lambda w: inner(w).pow(2).sum())(params[0])


# ---------------------------------------------------------------------------- second order
def test_double_backward_raises_instead_of_returning_zero():
    b, params, lam, options = make_case("grid_potts", (), seed=2, L=2, H=3, W=3)
    w = params[0].clone().requires_grad_()
    x = gtorch.gcrf_solve("grid_potts", b, w, lam=lam, **TIGHT, **options)
    (gw,) = torch.autograd.grad(x.pow(2).sum(), w, create_graph=True)
    assert gw.requires_grad  # the gradient is tied to the graph ...
    with pytest.raises(RuntimeError, match="second-order gradients through the G-CRF solve are not supported"):
        gw.pow(2).sum().backward()  # ... and differentiating it refuses instead of giving zero
    # first-order results are unaffected by create_graph
    w2 = params[0].clone().requires_grad_()
    x2 = gtorch.gcrf_solve("grid_potts", b, w2, lam=lam, **TIGHT, **options)
    (g2,) = torch.autograd.grad(x2.pow(2).sum(), w2)
    torch.testing.assert_close(gw.detach(), g2, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- CUDA streams
def test_cuda_solve_runs_on_torchs_current_stream():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("cupy", reason="CuPy is not installed")
    b, params, lam, options = make_case("lowrank_potts", (2,), seed=1, L=3)
    ref = gtorch.gcrf_solve("lowrank_potts", b, *params, lam=lam, **TIGHT)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        # queued on a side stream: the solve must read b only after this long kernel chain ...
        bc = b.cuda()
        for _ in range(50):
            bc = bc * 1.0
        x = gtorch.gcrf_solve("lowrank_potts", bc, *[p.cuda() for p in params], lam=lam, **TIGHT)
        y = x * 1.0  # ... and PyTorch may use x on the same stream without synchronising
    stream.synchronize()
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-9, atol=1e-11)
