"""The PyTorch G-CRF layer: gradcheck per form, agreement with ``torch.linalg.solve`` on a dense
matrix assembled in torch from docs/design.md section 3, broadcasting, the convergence policy, factor
reuse, and the layer modules."""
from __future__ import annotations

import importlib
import pickle
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from gcrflinalg.interop import torch as gtorch  # noqa: E402
from gcrflinalg.interop._forms import NotConvergedError, NotConvergedWarning  # noqa: E402

OFFSETS = {4: ((0, 1), (1, 0)), 8: ((0, 1), (1, 0), (1, 1), (1, -1))}


# ---------------------------------------------------------------------------- dense references
# One system (no batch axes) each, assembled in torch so that autograd differentiates it: an
# independent path to the same x and gradients.
def _edge_index_lists(offsets, n_labels, height, width, potts):
    """Explicit loops over edges and label pairs: (k, m, n, i, j) of every stored entry, and its
    row/column in the label-major ordering ``idx = l*P + i*W + j``."""
    P = height * width
    entries, rows, cols = [], [], []
    for k, (di, dj) in enumerate(offsets):
        for i in range(height):
            for j in range(width):
                qi, qj = i + di, j + dj
                if not (0 <= qi < height and 0 <= qj < width):
                    continue
                for m in range(n_labels):
                    for n in range(n_labels):
                        if potts and m == n:
                            continue
                        entries.append((k, m, n, i, j))
                        rows.append(m * P + i * width + j)
                        cols.append(n * P + qi * width + qj)
    return entries, rows, cols


def dense_grid(pairwise, lam, neighbourhood):
    """3.1: ``A[(m,p),(n,q)] = pairwise[k,m,n,i,j]`` and its transpose; ``M = A + lam I``."""
    K, L, _, H, W = pairwise.shape
    entries, rows, cols = _edge_index_lists(OFFSETS[neighbourhood], L, H, W, potts=False)
    k, m, n, i, j = (torch.tensor(c) for c in zip(*entries))
    vals = pairwise[k, m, n, i, j]
    N = L * H * W
    r, c = torch.tensor(rows), torch.tensor(cols)
    A = torch.zeros(N, N, dtype=pairwise.dtype)
    A = A.index_put((r, c), vals, accumulate=True).index_put((c, r), vals, accumulate=True)
    return A + lam * torch.eye(N, dtype=pairwise.dtype)


def dense_grid_potts(weights, lam, num_labels, neighbourhood):
    """3.2: ``A[(m,p),(n,q)] = weights[k,i,j]`` for ``m != n``, symmetric."""
    K, H, W = weights.shape
    entries, rows, cols = _edge_index_lists(OFFSETS[neighbourhood], num_labels, H, W, potts=True)
    k, _, _, i, j = (torch.tensor(c) for c in zip(*entries))
    vals = weights[k, i, j]
    N = num_labels * H * W
    r, c = torch.tensor(rows), torch.tensor(cols)
    A = torch.zeros(N, N, dtype=weights.dtype)
    A = A.index_put((r, c), vals, accumulate=True).index_put((c, r), vals, accumulate=True)
    return A + lam * torch.eye(N, dtype=weights.dtype)


def dense_lowrank(embeddings, lam):
    """3.4: ``M = lam I + E^T E`` with ``E`` read as ``D x N``."""
    E = embeddings.reshape(embeddings.shape[0], -1)
    return lam * torch.eye(E.shape[1], dtype=E.dtype) + E.T @ E


def dense_lowrank_potts(psi, lam, num_labels):
    """3.5: ``A = (1 1^T - I_L) (x) psi^T psi`` (label-major), ``M = lam I + A``."""
    pf = psi.reshape(psi.shape[0], -1)
    labels = torch.ones(num_labels, num_labels, dtype=psi.dtype) - torch.eye(num_labels, dtype=psi.dtype)
    A = torch.kron(labels, pf.T @ pf)
    return lam * torch.eye(A.shape[0], dtype=psi.dtype) + A


def dense_video(spatial, temporal, lam, distances):
    """3.6: blocks ``S_v^T S_v`` on the diagonal, ``T_u^T T_v`` for coupled ``u != v``."""
    V = spatial.shape[0]
    S = spatial.reshape(V, spatial.shape[1], -1)
    T = temporal.reshape(V, temporal.shape[1], -1)
    rows = []
    for u in range(V):
        row = []
        for v in range(V):
            if u == v:
                row.append(S[u].T @ S[u])
            elif distances == "fc" or abs(u - v) in distances:
                row.append(T[u].T @ T[v])
            else:
                row.append(torch.zeros(S.shape[2], S.shape[2], dtype=S.dtype))
        rows.append(torch.cat(row, dim=1))
    M = torch.cat(rows, dim=0)
    return M + lam * torch.eye(M.shape[0], dtype=M.dtype)


def dense_solve_reference(form, b, params, lam, options):
    """``x`` by ``torch.linalg.solve`` on the dense ``M`` of every batch item (differentiable)."""
    vector_ndim = 4 if form == "video" else 3
    batch = b.shape[: b.ndim - vector_ndim]
    lam_full = lam.expand(batch) if isinstance(lam, torch.Tensor) else torch.full(batch, float(lam), dtype=b.dtype)
    xs = []
    for idx in np.ndindex(*batch):
        item = [p[idx] for p in params]
        lm = lam_full[idx]
        if form == "grid":
            M = dense_grid(item[0], lm, options.get("neighbourhood", 4))
        elif form == "grid_potts":
            M = dense_grid_potts(item[0], lm, b.shape[-3], options.get("neighbourhood", 4))
        elif form == "lowrank":
            M = dense_lowrank(item[0], lm)
        elif form == "lowrank_potts":
            M = dense_lowrank_potts(item[0], lm, b.shape[-3])
        else:
            M = dense_video(item[0], item[1], lm, options.get("neighbourhood", "fc"))
        xs.append(torch.linalg.solve(M, b[idx].reshape(-1)).reshape(b.shape[len(batch):]))
    return torch.stack(xs).reshape(b.shape)


# ---------------------------------------------------------------------------- problems
def make_case(form, batch, dtype=torch.float64, seed=0, L=2, H=3, W=4, neighbourhood=None):
    """Small positive-definite problems: ``(b, params, lam, options)`` as numpy-seeded tensors.

    ``lam`` is chosen above a bound that guarantees positive definiteness with margin.
    """
    rng = np.random.default_rng(seed)
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    options = {}
    if form == "grid":
        nb = neighbourhood or 4
        options["neighbourhood"] = nb
        K = len(OFFSETS[nb])
        params = [t(0.3 * rng.standard_normal(batch + (K, L, L, H, W)))]
        lam = 0.5 + 2 * K * L * 0.3 * 3  # Gershgorin with |entries| <~ 0.9
    elif form == "grid_potts":
        nb = neighbourhood or 4
        options["neighbourhood"] = nb
        K = len(OFFSETS[nb])
        params = [t(0.2 * rng.uniform(0, 1, batch + (K, H, W)))]
        lam = 0.5 + 2 * K * (L - 1) * 0.2  # Gershgorin: row sums of |A| <= 2 K (L-1) max w
    elif form == "lowrank":
        params = [t(0.5 * rng.standard_normal(batch + (3, L, H, W)))]
        lam = 0.7
    elif form == "lowrank_potts":
        psi = 0.3 * rng.standard_normal(batch + (3, H, W))
        params = [t(psi)]
        norm2 = max(np.linalg.norm(psi[idx].reshape(3, -1), 2) ** 2 for idx in np.ndindex(*batch)) if batch \
            else np.linalg.norm(psi.reshape(3, -1), 2) ** 2
        lam = 1.5 * norm2 + 0.3
    elif form == "video":
        V = 3
        options["neighbourhood"] = neighbourhood or "fc"
        params = [t(0.4 * rng.standard_normal(batch + (V, 2, L, H, W))),
                  t(0.2 * rng.standard_normal(batch + (V, 2, L, H, W)))]
        lam = 1.0 + (V - 1) * float(np.max(np.sum(params[1].numpy() ** 2, axis=(-4, -3, -2, -1))))
    else:
        raise ValueError(form)
    vshape = ((3,) if form == "video" else ()) + (L, H, W)
    b = t(rng.standard_normal(batch + vshape))
    return b, params, lam, options


FORMS = ["grid", "grid_potts", "lowrank", "lowrank_potts", "video"]
TIGHT = dict(method="cg", rtol=1e-13, maxiter=10000)


# ---------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_every_form_batched(form):
    b, params, lam, options = make_case(form, (2,), H=2, W=3)
    lam_t = torch.tensor([lam, 1.2 * lam], dtype=torch.float64, requires_grad=True)
    inputs = [b.requires_grad_(), *[p.requires_grad_() for p in params], lam_t]

    def f(b_, *rest):
        *ps, lm = rest
        return gtorch.gcrf_solve(form, b_, *ps, lam=lm, **TIGHT, **options)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("form", ["grid", "grid_potts"])
def test_gradcheck_grid_eight_neighbourhood_unbatched(form):
    b, params, lam, options = make_case(form, (), H=3, W=3, neighbourhood=8)
    inputs = [b.requires_grad_(), params[0].requires_grad_()]
    f = lambda b_, p: gtorch.gcrf_solve(form, b_, p, lam=lam, **TIGHT, **options)  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------- dense agreement
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("batch", [(), (2,)], ids=["unbatched", "batched"])
@pytest.mark.parametrize("form", FORMS)
def test_output_and_gradients_match_dense_torch_solve(form, batch, dtype):
    b, params, lam, options = make_case(form, batch, dtype=dtype, seed=3, L=3, H=3, W=5)
    lam_t = torch.tensor(lam, dtype=dtype)
    method = dict(method="cg", rtol=1e-12 if dtype == torch.float64 else 1e-6, maxiter=5000)

    def run(solver):
        bb = b.clone().requires_grad_()
        pp = [p.clone().requires_grad_() for p in params]
        lm = lam_t.clone().requires_grad_()
        x = solver(bb, pp, lm)
        weights = torch.linspace(-1, 1, x.numel(), dtype=dtype).reshape(x.shape)
        loss = (weights * x).sum() + 0.5 * (x ** 2).sum()
        loss.backward()
        return x.detach(), bb.grad, [p.grad for p in pp], lm.grad

    ours = run(lambda bb, pp, lm: gtorch.gcrf_solve(form, bb, *pp, lam=lm, **method, **options))
    ref = run(lambda bb, pp, lm: dense_solve_reference(form, bb, pp, lm, options))
    tol = dict(rtol=1e-8, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-4)
    assert ours[0].dtype == dtype
    torch.testing.assert_close(ours[0], ref[0], **tol)
    torch.testing.assert_close(ours[1], ref[1], **tol)
    for g_ours, g_ref in zip(ours[2], ref[2]):
        assert g_ours.shape == g_ref.shape
        torch.testing.assert_close(g_ours, g_ref, **tol)
    torch.testing.assert_close(ours[3], ref[3], **tol)


@pytest.mark.parametrize("form", ["lowrank", "lowrank_potts", "video"])
def test_direct_method_matches_dense_and_reuses_the_forward_operator(form, monkeypatch):
    forms_module = importlib.import_module("gcrflinalg.interop._forms")

    seen = []

    def spy(real):
        def wrapped(op, b, method="cg", **kw):
            seen.append((id(op), method))
            return real(op, b, method=method, **kw)
        return wrapped

    monkeypatch.setattr(forms_module, "solve", spy(forms_module.solve))
    monkeypatch.setattr(forms_module, "adjoint_solve", spy(forms_module.adjoint_solve))
    b, params, lam, options = make_case(form, (2,), seed=5, L=3, H=3, W=4)
    pp = [p.clone().requires_grad_() for p in params]
    x = gtorch.gcrf_solve(form, b, *pp, lam=lam, method="direct", **options)
    x.pow(2).sum().backward()
    # forward and adjoint solves ran on the same operator object: its cached factor is reused
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0][1] == "direct"
    pr = [p.clone().requires_grad_() for p in params]
    xr = dense_solve_reference(form, b, pr, lam, options)
    xr.pow(2).sum().backward()
    torch.testing.assert_close(x.detach(), xr.detach(), rtol=1e-9, atol=1e-10)
    for p, q in zip(pp, pr):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------------------- broadcasting
@pytest.mark.parametrize("form", ["grid_potts", "lowrank_potts"])
def test_shared_parameters_broadcast_over_batch_of_unaries(form):
    b, params, lam, options = make_case(form, (), seed=7, L=3)
    rng = np.random.default_rng(1)
    bb = torch.tensor(rng.standard_normal((3,) + tuple(b.shape)), requires_grad=True)
    p = params[0].clone().requires_grad_()
    x = gtorch.gcrf_solve(form, bb, p, lam=lam, **TIGHT, **options)
    assert x.shape == bb.shape
    x.sum().backward()
    loop_grad = torch.zeros_like(p)
    for item in range(3):
        q = params[0].clone().requires_grad_()
        gtorch.gcrf_solve(form, bb[item].detach(), q, lam=lam, **TIGHT, **options).sum().backward()
        loop_grad += q.grad
    torch.testing.assert_close(p.grad, loop_grad, rtol=1e-9, atol=1e-10)


def test_lam_tensor_per_batch_item_gets_per_item_gradient():
    b, params, lam, options = make_case("lowrank", (3,), seed=2)
    lam_t = torch.tensor([lam, 2 * lam, 3 * lam], dtype=torch.float64, requires_grad=True)
    x = gtorch.gcrf_solve("lowrank", b, *params, lam=lam_t, **TIGHT)
    x.sum().backward()
    ref_lam = lam_t.detach().clone().requires_grad_()
    dense_solve_reference("lowrank", b, params, ref_lam, options).sum().backward()
    assert lam_t.grad.shape == (3,)
    torch.testing.assert_close(lam_t.grad, ref_lam.grad, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------- convergence policy
def _eigen_rhs_case():
    """A low-rank system whose right-hand side is an eigenvector of M (orthogonal to the rows of
    E): CG converges in one iteration forward; a generic adjoint right-hand side does not."""
    rng = np.random.default_rng(11)
    E = rng.standard_normal((3, 2, 4, 5))
    Ef = E.reshape(3, -1)
    v = rng.standard_normal(Ef.shape[1])
    v -= Ef.T @ np.linalg.lstsq(Ef.T, v, rcond=None)[0]  # project out the row space of E
    return torch.tensor(v.reshape(2, 4, 5)), torch.tensor(E)


def test_forward_nonconvergence_raises_or_warns():
    b, params, lam, _ = make_case("lowrank", (), seed=4, L=3, H=4, W=5)
    with pytest.raises(NotConvergedError, match="forward"):
        gtorch.gcrf_solve("lowrank", b, *params, lam=lam, method="cg", rtol=1e-12, maxiter=2)
    with pytest.warns(NotConvergedWarning, match="did not converge"):
        gtorch.gcrf_solve("lowrank", b, *params, lam=lam, method="cg", rtol=1e-12, maxiter=2,
                          on_nonconvergence="warn")


def test_backward_nonconvergence_raises_or_warns():
    b, E = _eigen_rhs_case()
    p = E.clone().requires_grad_()
    opts = dict(method="cg", rtol=1e-10, maxiter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = gtorch.gcrf_solve("lowrank", b, p, lam=0.5, **opts)  # forward converges in 1 step
    weights = torch.tensor(np.random.default_rng(0).standard_normal(x.shape))
    with pytest.raises(NotConvergedError, match="adjoint"):
        (weights * x).sum().backward()
    x = gtorch.gcrf_solve("lowrank", b, p, lam=0.5, on_nonconvergence="warn", **opts)
    with pytest.warns(NotConvergedWarning, match="adjoint"):
        (weights * x).sum().backward()
    assert p.grad is not None


# ---------------------------------------------------------------------------- errors
def test_bad_input_gives_clear_errors():
    b, params, lam, _ = make_case("lowrank", ())
    with pytest.raises(ValueError, match="form must be one of"):
        gtorch.gcrf_solve("dense", b, *params, lam=lam)
    with pytest.raises(TypeError, match="takes 1 parameter"):
        gtorch.gcrf_solve("lowrank", b, params[0], params[0], lam=lam)
    with pytest.raises(TypeError, match="dtype"):
        gtorch.gcrf_solve("lowrank", b.float(), *params, lam=lam)
    with pytest.raises(TypeError, match="unknown option"):
        gtorch.gcrf_solve("lowrank", b, *params, lam=lam, neighbourhood=4)
    with pytest.raises(ValueError, match="lam must be > 0"):
        gtorch.gcrf_solve("lowrank", b, *params, lam=-1.0)
    with pytest.raises(ValueError, match="on_nonconvergence"):
        gtorch.gcrf_solve("lowrank", b, *params, lam=lam, on_nonconvergence="ignore")
    with pytest.raises(ValueError, match="num_labels"):
        gtorch.gcrf_solve("lowrank_potts", b, torch.ones(2, 3, 4, dtype=b.dtype), lam=10.0, num_labels=5)
    with pytest.raises(ValueError, match="batch shapes do not broadcast"):
        gtorch.gcrf_solve("lowrank", b.expand(2, *b.shape), params[0].expand(3, *params[0].shape), lam=lam)


def test_parameters_not_mutated_and_in_place_change_before_backward_is_caught():
    b, params, lam, _ = make_case("lowrank_potts", (2,), seed=9)
    p = params[0].clone().requires_grad_()
    before = p.detach().clone(), b.clone()
    x = gtorch.gcrf_solve("lowrank_potts", b, p, lam=lam, **TIGHT)
    x.sum().backward()
    torch.testing.assert_close(p.detach(), before[0], rtol=0, atol=0)
    torch.testing.assert_close(b, before[1], rtol=0, atol=0)
    q = params[0].clone().requires_grad_()
    leaf = q * 1.0
    x = gtorch.gcrf_solve("lowrank_potts", b, leaf, lam=lam, **TIGHT)
    with torch.no_grad():
        leaf.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        x.sum().backward()


# ---------------------------------------------------------------------------- layer modules
def test_layer_modules_learn_lam_and_pass_gradients_to_heads():
    torch.manual_seed(0)
    b, params, lam, _ = make_case("lowrank_potts", (2,), seed=1, L=3)
    layer = gtorch.LowRankPottsGCRFLayer(lam=lam, learn_lam=True, method="direct")
    assert isinstance(layer, gtorch.GCRFLayer) and isinstance(layer, torch.nn.Module)
    assert "lowrank_potts" in repr(layer)
    psi = params[0].clone().requires_grad_()
    x = layer(b, psi)
    x.pow(2).sum().backward()
    assert layer.log_lam.grad is not None and psi.grad is not None
    ref_lam = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    ref_psi = params[0].clone().requires_grad_()
    dense_solve_reference("lowrank_potts", b, [ref_psi], ref_lam, {}).pow(2).sum().backward()
    torch.testing.assert_close(psi.grad, ref_psi.grad, rtol=1e-8, atol=1e-10)
    # d/dlog_lam = lam * d/dlam
    torch.testing.assert_close(layer.log_lam.grad.double(), lam * ref_lam.grad, rtol=1e-5, atol=1e-8)
    fixed = gtorch.GridPottsGCRFLayer(lam=2.0, neighbourhood=4)
    assert not any(True for _ in fixed.parameters())
    bg, pg, lg, _ = make_case("grid_potts", (), seed=2)
    assert fixed(bg, pg[0]).shape == bg.shape
    for cls, form in [(gtorch.GridGCRFLayer, "grid"), (gtorch.LowRankGCRFLayer, "lowrank"),
                      (gtorch.VideoGCRFLayer, "video")]:
        assert cls().spec.name == form
    clone = pickle.loads(pickle.dumps(layer))
    assert type(clone) is gtorch.LowRankPottsGCRFLayer
    torch.testing.assert_close(clone.lam, layer.lam)


def test_layers_borrow_parameters_and_autograd_guards_them():
    """The layers' operators view the framework's parameter memory (no per-step copy); a change of
    a parameter in place between the forward and the backward pass is refused by autograd."""
    import numpy as np

    import gcrflinalg
    from gcrflinalg._validation import borrowed_parameters

    rng = np.random.default_rng(3)
    pw = 0.05 * rng.standard_normal((2, 2, 2, 4, 5))
    core = gcrflinalg.GridGCRF(pw, 1.0)  # the core API views and watches (re-checked per solve)
    assert np.shares_memory(core.pairwise, pw) and core.watches_parameters
    with borrowed_parameters():  # the layers' operators view without watching
        op = gcrflinalg.GridGCRF(pw, 1.0)
        assert np.shares_memory(op.pairwise, pw) and not op.watches_parameters
    assert gcrflinalg.GridGCRF(pw, 1.0).watches_parameters  # and the block ends

    weights = (0.1 * torch.rand(2, 4, 5, dtype=torch.float64)).requires_grad_()
    b = torch.randn(3, 4, 5, dtype=torch.float64)
    x = gtorch.gcrf_solve("grid_potts", b, weights, lam=2.0)
    with torch.no_grad():
        weights.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        x.sum().backward()
