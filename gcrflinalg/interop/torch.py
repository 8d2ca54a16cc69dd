"""Differentiable G-CRF layers for PyTorch.

:func:`gcrf_solve` solves ``(A + lam I) x = b`` for a batch of G-CRFs of one form and is
differentiable in the unaries ``b``, every parameter of ``A`` and ``lam``.  It calls the PyTorch
custom operator ``torch.ops.gcrflinalg.solve`` (``torch.library.custom_op`` with a fake
implementation, an autograd formula and a vmap rule): the forward pass calls
:func:`gcrflinalg.solve`, the backward pass (``torch.ops.gcrflinalg.solve_backward`` when traced)
:func:`gcrflinalg.adjoint_solve` on the same operator (in eager mode a ``method="direct"``
factorisation is computed once and reused) and ``parameter_gradients`` (docs/design.md section 5)::

    x = M^{-1} b,   g = M^{-1} dL/dx,   dL/db = g,   dL/dtheta = -g^T (dM/dtheta) x.

Tensors cross into the core through DLPack without copying: CPU tensors become NumPy arrays, CUDA
tensors CuPy arrays (CuPy required, its work queued on PyTorch's current stream), and results come
back the same way.

``torch.compile``: the options are validated in Python (one graph break before the solve); the
solve and its backward are single opaque nodes whose output shapes come from the fake
implementation, so tracing, including with dynamic shapes, runs no solve.  ``torch.func``: the
autograd kernel PyTorch generates for a custom operator is an ``autograd.Function`` without
``setup_context``, which ``torch.func.grad`` / ``vjp`` / ``jacrev`` refuse; so while a
``torch.func`` transform is active :func:`gcrf_solve` applies an ``autograd.Function`` of its own
(``setup_context`` and a vmap rule) around the same two operators.  ``torch.func.grad``, ``vjp``,
``jacrev`` and ``vmap``, also nested (per-sample gradients ``vmap(grad(f))``), give the gradients of
``torch.autograd.grad``; ``jvp`` / ``jacfwd`` (forward mode) are not supported.  Second-order
gradients are not supported: differentiating a gradient that went through the solve
(``create_graph=True``, nested ``torch.func.grad``) raises ``RuntimeError`` instead of returning
zero.

The layer modules (:class:`GridGCRFLayer`, :class:`GridPottsGCRFLayer`, :class:`LowRankGCRFLayer`,
:class:`LowRankPottsGCRFLayer`, :class:`VideoGCRFLayer`, :class:`MultiResGCRFLayer`) wrap :func:`gcrf_solve` for use inside a
network: the structural parameters arrive as ``forward`` inputs (typically produced by a head of the
network), ``lam`` is the module's own, optionally learnt, parameter.

PyTorch is imported on first use only; ``import gcrflinalg.interop.torch`` works without it.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import sys
import threading

import numpy as np

from .. import threads as _threads
from ..backend import from_dlpack
from ._forms import (FORMS, NotConvergedError, NotConvergedWarning, backward_solve,
                     build_operator, forward_solve, get_form, make_config,
                     with_labels)

__all__ = [
    "gcrf_solve",
    "gaussian_nll",
    "to_array",
    "to_tensor",
    "GCRFLayer",
    "GridGCRFLayer",
    "GridPottsGCRFLayer",
    "LowRankGCRFLayer",
    "LowRankPottsGCRFLayer",
    "VideoGCRFLayer",
    "NotConvergedError",
    "NotConvergedWarning",
]


_TORCH = None


def _torch():
    global _TORCH
    if _TORCH is None:
        try:
            _TORCH = importlib.import_module("torch")
        except ImportError as err:
            raise ImportError("gcrflinalg.interop.torch needs PyTorch: pip install -e '.[torch]' in a gcrflinalg checkout") from err
    return _TORCH


# ---------------------------------------------------------------------------- DLPack in and out
def to_array(tensor):
    """Zero-copy NumPy (CPU) or CuPy (CUDA) view of a tensor, detached from autograd.

    CUDA work queued on the tensor's stream is waited for, so the core reads finished data.
    """
    torch = _torch()
    tensor = tensor.detach()
    if tensor.is_cuda:
        torch.cuda.current_stream(tensor.device).synchronize()
    return from_dlpack(tensor)


def to_tensor(array, like=None):
    """A tensor viewing a NumPy/CuPy array through DLPack (zero copy when the array allows it).

    Parameters
    ----------
    array : numpy.ndarray or cupy.ndarray
    like : torch.Tensor, optional
        Cast to its dtype (a copy only when the dtype differs).
    """
    torch = _torch()
    if isinstance(array, (np.generic, float, int)):
        array = np.asarray(array)  # 0-d results of reductions
    if isinstance(array, np.ndarray) and (not array.flags.writeable or any(s < 0 for s in array.strides)):
        array = np.array(array)  # DLPack cannot signal read-only or negative strides everywhere
    try:
        tensor = torch.from_dlpack(array)
    except (BufferError, RuntimeError, TypeError):
        tensor = torch.from_dlpack(array.copy())
    if like is not None and tensor.dtype != like.dtype:
        tensor = tensor.to(like.dtype)
    return tensor


# ---------------------------------------------------------------------------- custom operators
#: name of the torch.library namespace of the operators
NAMESPACE = "gcrflinalg"

#: config key -> SolveConfig of every configuration seen in this process (the custom operators take
#: the key, a string, since their schema holds tensors and simple scalars only)
_CONFIGS: dict = {}

#: thread id -> (data pointer of x, operator) of the last forward solve with an input that requires
#: grad: handed from the operator's kernel to its autograd ``setup_context`` (which runs right after
#: it, on the same thread) so that the backward pass reuses the forward operator and its
#: factorisation.  At most one entry per thread, replaced by the next solve (a solve under
#: ``torch.no_grad()`` keeps its operator here until then).
_PENDING: dict = {}

_OPS = None

SECOND_ORDER_MESSAGE = (
    "second-order gradients through the G-CRF solve are not supported: the backward pass of "
    "gcrflinalg.interop.torch.gcrf_solve is not itself differentiable.  First-order gradients "
    "(loss.backward(), torch.autograd.grad, torch.func.grad, torch.compile) are; differentiate a "
    "gradient that went through the solve by finite differences instead")


def config_key(config) -> str:
    """The string that names a :class:`~gcrflinalg.interop._forms.SolveConfig` in the operators'
    calls (registered in :data:`_CONFIGS`)."""
    key = repr((config.form.name,
                tuple(sorted(config.constructor_options.items(), key=lambda kv: kv[0])),
                tuple(sorted(config.solver_options.items(), key=lambda kv: kv[0])),
                config.on_nonconvergence))
    _CONFIGS.setdefault(key, config)
    return key


def _config(key):
    try:
        return _CONFIGS[key]
    except KeyError:
        raise RuntimeError(f"unknown G-CRF solve configuration {key!r}: the operator was called "
                           "outside gcrf_solve (or in a process where gcrf_solve never ran with it)") from None


def _stream(device):
    """Context of a solve: compiled CPU kernels use at most PyTorch's thread count
    (:func:`gcrflinalg.threads.follow`), and CuPy work is queued on PyTorch's current stream of
    ``device``, so inputs written by PyTorch are ready for it and its outputs are ready for
    PyTorch's later work on that stream, without a device-wide synchronisation."""
    torch = _torch()
    stack = contextlib.ExitStack()
    stack.enter_context(_threads.follow(torch.get_num_threads()))
    if device.type != "cuda":
        return stack
    cupy = importlib.import_module("cupy")
    stream = torch.cuda.current_stream(device)
    stack.enter_context(cupy.cuda.Device(device.index))
    stack.enter_context(cupy.cuda.ExternalStream(stream.cuda_stream, device.index))
    return stack


def _view(tensor):
    """Zero-copy NumPy/CuPy view of a tensor (inside :func:`_stream`: no synchronisation needed)."""
    return from_dlpack(tensor.detach())


def _fresh(out, inputs):
    """``out`` contiguous and sharing no memory with ``inputs`` (custom operators must not alias)."""
    out = out.contiguous()
    ptr = out.untyped_storage().data_ptr()
    if any(t.untyped_storage().data_ptr() == ptr for t in inputs):
        out = out.clone()
    return out


def _solve_kernel(b, params, lam, config):
    cfg = with_labels(_config(config), b.shape)
    # (autograd runs the kernel with grad mode off, so requires_grad alone says it may record it)
    record = any(t.requires_grad for t in (b, lam, *params))
    _PENDING.pop(threading.get_ident(), None)
    with _stream(b.device):
        op = build_operator(cfg, [_view(p) for p in params], _view(lam))
        x = to_tensor(forward_solve(cfg, op, _view(b)), like=b)
    x = _fresh(x, (b, lam, *params))
    if record:  # autograd's setup_context runs next: hand it the operator
        _PENDING[threading.get_ident()] = (x.data_ptr(), op)
    return x


def _solve_backward_kernel(grad_x, x, params, lam, config, need_parameters):
    cfg = with_labels(_config(config), x.shape)
    with _stream(x.device):
        op = build_operator(cfg, [_view(p) for p in params], _view(lam))
        g, grads = backward_solve(cfg, op, _view(x), _view(grad_x.to(dtype=x.dtype)),
                                  need_parameters=need_parameters)
        return _gradient_tensors(cfg, g, grads, x, params, lam, need_parameters)


def _gradient_tensors(cfg, g, grads, x, params, lam, need_parameters):
    torch = _torch()
    inputs = (x, lam, *params)
    grad_b = _fresh(to_tensor(g, like=x), inputs)
    if not need_parameters:
        return grad_b, [], torch.zeros_like(lam)
    grad_params = [_fresh(to_tensor(grads[n], like=p).reshape(p.shape), inputs)
                   for n, p in zip(cfg.parameter_names, params)]
    grad_lam = _fresh(to_tensor(grads["lam"], like=lam).reshape(lam.shape), inputs)
    return grad_b, grad_params, grad_lam


def _take_pending(output):
    pending = _PENDING.pop(threading.get_ident(), None)
    if pending is None:
        return None
    try:
        same = output.data_ptr() == pending[0]
    except Exception:  # fake / functional tensors while tracing: no storage
        return None
    return pending[1] if same else None


def _backward(ctx, grad_x, x, params, lam, need_params, need_lam, traced):
    """``(dL/db, [dL/dparam or None], dL/dlam)`` of a solve's autograd backward.

    Eager and first order (grad mode off, the forward operator handed over by :func:`_take_pending`):
    reuses the forward operator and its factorisation.  Otherwise (traced, ``create_graph=True``,
    functorch transforms) calls ``traced(grad_x, x, params, lam, config, need_parameters)``, the
    opaque ``solve_backward`` operator, whose own backward raises (second-order gradients are
    never silently zero).
    """
    torch = _torch()
    need_parameters = bool(need_lam or any(need_params))
    op = getattr(ctx, "gcrf_operator", None)
    if op is not None and not torch.is_grad_enabled():
        cfg = with_labels(_config(ctx.config), x.shape)
        gx = grad_x.to(dtype=x.dtype).contiguous()
        with _stream(x.device):
            g, grads = backward_solve(cfg, op, _view(x), _view(gx), need_parameters=need_parameters)
            grad_b, grad_params, grad_lam = _gradient_tensors(cfg, g, grads, x, params, lam, need_parameters)
    else:
        grad_b, grad_params, grad_lam = traced(grad_x.contiguous(), x, list(params), lam, ctx.config,
                                               need_parameters)
    grad_params = [gp if need else None for gp, need in zip(grad_params, need_params)] \
        if need_parameters else [None] * len(params)
    return grad_b, grad_params, grad_lam


def _batch_front(size, vectors, vector_dims, params, param_dims, lam, lam_dim, config, batch_lam=False):
    """A vmap rule's inputs with every mapped axis moved to the front as a leading batch axis
    (unmapped vectors and parameters expanded to it; ``lam`` aligned with the batch axes, and
    expanded to the leading axis when unmapped if ``batch_lam``, so that a backward pass returns
    one ``dL/dlam`` per mapped system instead of their sum)."""
    vectors = [v.movedim(d, 0) if d is not None else v.expand(size, *v.shape)
               for v, d in zip(vectors, vector_dims)]
    params = [p.movedim(d, 0) if d is not None else p.expand(size, *p.shape)
              for p, d in zip(params, param_dims)]
    n_batch = vectors[0].ndim - 1 - _config(config).form.vector_ndim
    if lam_dim is not None:
        lam = lam.movedim(lam_dim, 0)
    elif batch_lam:
        lam = lam.expand(size, *lam.shape)
    else:
        return vectors, list(params), lam
    lam = lam.reshape((size,) + (1,) * (n_batch - (lam.ndim - 1)) + tuple(lam.shape[1:]))
    return vectors, list(params), lam


def _make_functorch_function():
    """The ``torch.autograd.Function`` that :func:`gcrf_solve` applies while a ``torch.func``
    transform is active.

    The autograd kernel PyTorch generates for a custom operator with ``register_autograd`` is an
    ``autograd.Function`` whose ``forward`` takes ``ctx`` (no ``setup_context``), which functorch's
    ``grad``/``vjp``/``jacrev`` refuse, whatever the operator's schema.  This function has a
    ``setup_context`` and a ``vmap`` rule and calls the same two custom operators: its forward
    ``torch.ops.gcrflinalg.solve``, its backward ``torch.ops.gcrflinalg.solve_backward`` (through a
    second function whose backward raises, so second-order gradients are refused here as well).
    Parameters travel as separate positional tensors: ``apply(b, lam, config, *params)``.
    """
    torch = _torch()

    class SolveBackward(torch.autograd.Function):
        @staticmethod
        def forward(grad_x, x, lam, config, need_parameters, *params):
            grad_b, grad_params, grad_lam = torch.ops.gcrflinalg.solve_backward(
                grad_x, x, list(params), lam, config, need_parameters)
            return (grad_b, grad_lam, *grad_params)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, *grads):
            raise RuntimeError(SECOND_ORDER_MESSAGE)

        @staticmethod
        def vmap(info, in_dims, grad_x, x, lam, config, need_parameters, *params):
            (grad_x, x), params, lam = _batch_front(info.batch_size, (grad_x, x), in_dims[:2], params,
                                                    in_dims[5:], lam, in_dims[2], config, batch_lam=True)
            out = SolveBackward.apply(grad_x.contiguous(), x, lam, config, need_parameters, *params)
            return out, (0,) * len(out)

    def traced(grad_x, x, params, lam, config, need_parameters):
        grad_b, grad_lam, *grad_params = SolveBackward.apply(grad_x, x, lam, config, need_parameters,
                                                              *params)
        return grad_b, grad_params, grad_lam

    class Solve(torch.autograd.Function):
        @staticmethod
        def forward(b, lam, config, *params):
            return torch.ops.gcrflinalg.solve(b, list(params), lam, config)

        @staticmethod
        def setup_context(ctx, inputs, output):
            b, lam, config, *params = inputs
            ctx.config = config
            ctx.save_for_backward(output, lam, *params)
            ctx.gcrf_operator = _take_pending(output)  # plain tensors (a vmap rule's apply): reuse

        @staticmethod
        def backward(ctx, grad_x):
            x, lam, *params = ctx.saved_tensors
            need_b, need_lam, _, *need_params = ctx.needs_input_grad
            grad_b, grad_params, grad_lam = _backward(ctx, grad_x, x, params, lam, need_params,
                                                      need_lam, traced)
            return (grad_b if need_b else None, grad_lam if need_lam else None, None, *grad_params)

        @staticmethod
        def vmap(info, in_dims, b, lam, config, *params):
            (b,), params, lam = _batch_front(info.batch_size, (b,), in_dims[:1], params, in_dims[3:],
                                             lam, in_dims[1], config)
            return Solve.apply(b, lam, config, *params), 0

    return Solve


def _register_operators():
    """Register ``gcrflinalg::solve`` and ``gcrflinalg::solve_backward`` with torch.library."""
    torch = _torch()
    @torch.library.custom_op(f"{NAMESPACE}::solve", mutates_args=(),
                             schema="(Tensor b, Tensor[] params, Tensor lam, str config) -> Tensor")
    def solve_op(b, params, lam, config):
        """``x = (A(params) + lam I)^{-1} b`` of the configuration named ``config``."""
        return _solve_kernel(b, params, lam, config)

    @solve_op.register_fake
    def _(b, params, lam, config):
        return b.new_empty(b.shape)

    @torch.library.custom_op(f"{NAMESPACE}::solve_backward", mutates_args=(),
                             schema="(Tensor grad_x, Tensor x, Tensor[] params, Tensor lam, str config, "
                                    "bool need_parameters) -> (Tensor, Tensor[], Tensor)")
    def solve_backward_op(grad_x, x, params, lam, config, need_parameters):
        """``(dL/db, dL/dparams, dL/dlam)`` from ``dL/dx`` and the solution ``x`` (one adjoint
        solve and the form's parameter gradients); the parameter list is empty and ``dL/dlam``
        zero when ``need_parameters`` is False."""
        return _solve_backward_kernel(grad_x, x, params, lam, config, need_parameters)

    @solve_backward_op.register_fake
    def _(grad_x, x, params, lam, config, need_parameters):
        grad_params = [p.new_empty(p.shape) for p in params] if need_parameters else []
        return x.new_empty(x.shape), grad_params, lam.new_empty(lam.shape)

    def setup_solve(ctx, inputs, output):
        b, params, lam, config = inputs
        ctx.config = config
        ctx.n_params = len(params)
        # saving x and the inputs lets autograd catch in-place changes made before backward
        ctx.save_for_backward(output, lam, *params)
        ctx.gcrf_operator = _take_pending(output)  # eager: the forward operator, else None

    def backward_solve_op(ctx, grad_x):
        saved = ctx.saved_tensors  # checks the version counters
        x, lam, params = saved[0], saved[1], list(saved[2:])
        need_b, need_params, need_lam = ctx.needs_input_grad[:3]
        need_params = list(need_params) if isinstance(need_params, (list, tuple)) else [need_params] * len(params)
        grad_b, grad_params, grad_lam = _backward(ctx, grad_x, x, params, lam, need_params, need_lam,
                                                  torch.ops.gcrflinalg.solve_backward)
        return (grad_b if need_b else None, grad_params, grad_lam if need_lam else None, None)

    solve_op.register_autograd(backward_solve_op, setup_context=setup_solve)

    def setup_backward(ctx, inputs, output):
        pass

    def no_second_order(ctx, *grads):
        raise RuntimeError(SECOND_ORDER_MESSAGE)

    solve_backward_op.register_autograd(no_second_order, setup_context=setup_backward)

    def solve_vmap(info, in_dims, b, params, lam, config):
        # the operator is batched already: move every mapped axis to the front as a batch axis
        (b,), params, lam = _batch_front(info.batch_size, (b,), in_dims[:1], params, in_dims[1],
                                         lam, in_dims[2], config)
        return solve_op(b, params, lam, config), 0

    torch.library.register_vmap(solve_op, solve_vmap)
    # torch.compile: validated in Python (a graph break); the solve operator itself is in the graph
    return (solve_op, solve_backward_op,
            torch.compiler.disable(_prepare, reason="G-CRF options are validated in Python"),
            _make_functorch_function())


def _operators():
    global _OPS
    if _OPS is None:
        _OPS = _register_operators()
    return _OPS


def gcrf_solve(form, b, *params, lam, method="auto", rtol=None, atol=0.0, maxiter=None,
               on_nonconvergence="raise", check_pd=True, solver_options=None, **form_options):
    """Differentiable G-CRF inference ``x = (A + lam I)^{-1} b`` on torch tensors.

    Parameters
    ----------
    form : {"grid", "grid_potts", "multires", "lowrank", "lowrank_potts", "video"}
        The precision-matrix form (docs/design.md section 3).
    b : torch.Tensor, shape ``(*batch, L, H, W)`` (``(*batch, V, L, H, W)`` for ``"video"``,
        ``(*batch, N)`` for ``"multires"``, the levels' flat ``(L, H_s, W_s)`` vectors, finest first)
        Unary scores, float32 or float64.
    *params : torch.Tensor
        The form's parameters, laid out as the operator constructors take them:

        - ``"grid"``: ``pairwise`` ``(*batch, K, L, L, H, W)``
        - ``"grid_potts"``: ``weights`` ``(*batch, K, H, W)``
        - ``"lowrank"``: ``embeddings`` ``(*batch, D, L, H, W)``
        - ``"lowrank_potts"``: ``embeddings`` ``(*batch, D, H, W)``
        - ``"video"``: ``spatial`` ``(*batch, V, Ds, L, H, W)``, ``temporal`` ``(*batch, V, Dt, L, H, W)``
        - ``"multires"`` with ``level_forms`` of length ``S``: ``S`` level tensors (``"general"``:
          ``(*batch, K, L, L, H_s, W_s)``, ``"potts"``: ``(*batch, K, H_s, W_s)``), then ``S - 1``
          couplings ``cross[s]`` (general ``(*batch, L, L, H_s, W_s)``, Potts ``(*batch, H_s, W_s)``)

        Batch shapes broadcast against each other and ``b``'s: a parameter without batch axes is
        shared by all systems (its gradient is summed over them).  Same dtype and device as ``b``.
    lam : float or torch.Tensor
        ``lam > 0``, a scalar or one value per system; a tensor that requires grad is learnt
        (``dL/dlam = -g . x``).
    method : {"auto", "direct", "cg", "pcg", "gmres", "jacobi", "gauss_seidel"}
        The solver of the forward and the adjoint solve.  ``"direct"`` (low-rank and video forms)
        factors once in the forward pass and reuses the factor in the backward pass.
    rtol, atol, maxiter
        Stopping rule of the iterative methods, ``||b - M x|| <= max(rtol ||b||, atol)``; default
        ``rtol`` is :func:`gcrflinalg.tolerances.default_rtol` (``1e-8`` in float64, ``1e-4`` in
        float32).
    on_nonconvergence : {"raise", "warn"}
        A forward or adjoint solve that misses its tolerance raises :class:`NotConvergedError`
        (default) or warns with :class:`NotConvergedWarning`.
    check_pd : bool or "exact"
        Positive-definiteness policy of the forward solve, as in :func:`gcrflinalg.solve`: cheap
        certificates and CG's curvature guard (True), nothing upfront (False), or the costlier exact
        test where the cheap certificate is inconclusive ("exact").
    solver_options : dict, optional
        Further solver keywords (``restart`` for GMRES, ``omega`` for Jacobi/Gauss–Seidel,
        ``refine`` for the low-rank direct solve).
    **form_options
        The constructor keywords: ``neighbourhood`` (grid forms: 4, 8, 12; video: ``"fc"`` or a set
        of frame distances), ``num_labels`` (Potts forms; default ``b.shape[-3]``) and ``product``
        (video: ``"cached"`` or ``"pairwise"``); multires: ``level_forms`` (required),
        ``neighbourhood`` (one or one per level), ``cross_forms`` and ``num_labels`` (required when
        every level is Potts).

    Returns
    -------
    torch.Tensor, shape ``(*batch, *vector_shape)``
        The solution ``x``, dtype and device of ``b``; differentiable (first order) by
        ``backward`` / ``torch.autograd.grad``, under ``torch.compile``, and by ``torch.func.grad``,
        ``vjp``, ``jacrev`` and ``vmap`` (composable, e.g. ``vmap(grad(loss))``).

    Raises
    ------
    NotPositiveDefiniteError
        A violated positive-definiteness bound (``check_pd``) or CG breakdown.
    NotConvergedError
        An iterative solve missed its tolerance (unless ``on_nonconvergence="warn"``).
    """
    torch = _torch()
    _, _, prepare, functorch_solve = _operators()
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch.Tensor; got {type(b).__name__}")
    if b.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"b must be float32 or float64; got {b.dtype}")
    # the options, validated once per configuration (a constant for torch.compile)
    spec = get_form(form)
    if b.ndim < spec.vector_ndim:
        raise ValueError(f"b must have at least {spec.vector_ndim} axes for form {spec.name!r}; "
                         f"got shape {tuple(b.shape)}")
    key, names, ndims, vector_ndim = prepare(
        spec.name, b.dtype == torch.float64, method, rtol, atol, maxiter, on_nonconvergence,
        check_pd, solver_options, form_options)
    for name, t in zip(names, params):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if len(params) != len(names):
        raise TypeError(f"form {form!r} takes {len(names)} parameter tensor(s) {names}; got {len(params)}")
    for name, p, nd in zip(names, params, ndims):
        if p.dtype != b.dtype:
            raise TypeError(f"{name} has dtype {p.dtype} but b has {b.dtype}; use one dtype")
        if p.device != b.device:
            raise TypeError(f"{name} is on {p.device} but b is on {b.device}")
        if p.ndim < nd:
            raise ValueError(f"{name} must have at least {nd} axes for form {form!r}; got shape {tuple(p.shape)}")
    if isinstance(lam, torch.Tensor):
        lam = lam if lam.device == b.device else lam.to(b.device)
    else:
        lam_value = float(lam)
        if not math.isfinite(lam_value) or lam_value <= 0:
            raise ValueError(f"lam must be > 0 (M = A + lam I); got {lam!r}")
        lam = torch.tensor(lam_value, dtype=b.dtype, device=b.device)
    batches = [b.shape[: b.ndim - vector_ndim]] + [p.shape[: p.ndim - nd] for p, nd in zip(params, ndims)]
    try:
        batch = tuple(torch.broadcast_shapes(*batches, lam.shape))
    except RuntimeError:
        raise ValueError("batch shapes do not broadcast: b " + str(tuple(batches[0])) + ", "
                         + ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, batches[1:]))
                         + f", lam {tuple(lam.shape)}") from None
    b = b.expand(batch + tuple(b.shape[b.ndim - vector_ndim:]))
    params = [p.expand(batch + tuple(p.shape[p.ndim - nd:])) for p, nd in zip(params, ndims)]
    if torch._C._are_functorch_transforms_active():
        # torch.func.grad / vjp / jacrev refuse the custom operator's generated autograd function
        return functorch_solve.apply(b, lam, key, *params)
    return torch.ops.gcrflinalg.solve(b, params, lam, key)


def _prepare(form, float64, method, rtol, atol, maxiter, on_nonconvergence, check_pd,
             solver_options, form_options):
    """Validate the options of a solve: ``(config key, parameter names, their trailing ndims,
    vector ndim)``.  Depends on the options only, not on shapes; ``torch.compile`` runs it outside
    the graph (a graph break before the solve: the options are Python values); the default ``num_labels`` of a Potts form is
    read from ``b``'s shape by the operator's kernel (:func:`~gcrflinalg.interop._forms.with_labels`)."""
    spec = get_form(form)
    vector_shape = (None,) * spec.vector_ndim  # sizes unknown here
    config = make_config(spec.name, vector_shape, np.float64 if float64 else np.float32,
                         method=method, rtol=rtol, atol=atol, maxiter=maxiter,
                         on_nonconvergence=on_nonconvergence, check_pd=check_pd,
                         form_options=form_options, extra_solver_options=solver_options)
    return config_key(config), config.parameter_names, config.parameter_ndims, spec.vector_ndim


# ---------------------------------------------------------------------------- nn.Module layers
#: layer class name -> form name, from the form registry
_LAYERS = {spec.layer: name for name, spec in FORMS.items()}
_layer_cache: dict = {}


def _make_layer_classes():
    torch = _torch()

    class GCRFLayer(torch.nn.Module):
        """A G-CRF inference layer ``x = (A + lam I)^{-1} b`` of one form, for use inside networks.

        ``forward(b, *params)`` takes the unaries and the form's parameters (see
        :func:`gcrf_solve` for their shapes); ``lam`` belongs to the module.

        Parameters
        ----------
        form : str
            One of ``"grid"``, ``"grid_potts"``, ``"lowrank"``, ``"lowrank_potts"``, ``"video"``
            (the per-form subclasses fix it and take ``lam`` first).
        lam : float
            Initial ``lam > 0``.
        learn_lam : bool
            Learn ``lam`` as ``exp(log_lam)`` (kept positive); otherwise it is a fixed buffer.
        method, rtol, atol, maxiter, on_nonconvergence, check_pd, solver_options, **form_options
            As in :func:`gcrf_solve`.
        """

        def __init__(self, form, lam=1.0, *, learn_lam=False, method="auto", rtol=None, atol=0.0,
                     maxiter=None, on_nonconvergence="raise", check_pd=True, solver_options=None,
                     **form_options):
            super().__init__()
            _operators()  # registered before any torch.compile traces forward
            self.spec = get_form(form)
            if not (float(lam) > 0):
                raise ValueError(f"lam must be > 0; got {lam!r}")
            # float64 so that exp(log(lam)) returns lam to round-off; the solve casts it
            log_lam = torch.tensor(math.log(float(lam)), dtype=torch.float64)
            if learn_lam:
                self.log_lam = torch.nn.Parameter(log_lam)
            else:
                self.register_buffer("log_lam", log_lam)
            self.learn_lam = bool(learn_lam)
            self.options = dict(method=method, rtol=rtol, atol=atol, maxiter=maxiter,
                                on_nonconvergence=on_nonconvergence, check_pd=check_pd,
                                solver_options=solver_options, **form_options)

        @property
        def lam(self):
            """``lam = exp(log_lam)``, a 0-d tensor."""
            return self.log_lam.exp()

        def forward(self, b, *params):
            lam = self.lam if self.learn_lam else float(self.lam.detach())
            return gcrf_solve(self.spec.name, b, *params, lam=lam, **self.options)

        def extra_repr(self) -> str:
            return f"form={self.spec.name!r}, lam={float(self.lam.detach()):.4g}, learn_lam={self.learn_lam}"

    classes = {"GCRFLayer": GCRFLayer}
    for cls_name, form_name in _LAYERS.items():
        spec = FORMS[form_name]
        doc = (f"G-CRF layer of form ``{form_name!r}``: ``forward(b, {', '.join(spec.parameter_names)})``; "
               "see :class:`GCRFLayer` and :func:`gcrf_solve`.")
        classes[cls_name] = type(cls_name, (GCRFLayer,), {"__init__": _fixed_form_init(GCRFLayer, form_name),
                                                          "__doc__": doc, "__module__": __name__})
    GCRFLayer.__module__, GCRFLayer.__qualname__ = __name__, "GCRFLayer"  # picklable by name
    return classes


def _fixed_form_init(base, form_name):
    def __init__(self, lam=1.0, **options):
        base.__init__(self, form_name, lam, **options)

    return __init__


def __getattr__(name):
    # The layer classes subclass torch.nn.Module, so they are created when first asked for.
    if name == "GCRFLayer" or name in _LAYERS:
        if not _layer_cache:
            _layer_cache.update(_make_layer_classes())
        return _layer_cache[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if sys.modules.get("torch") is not None:
    # register the operators now, so that torch.compile never traces their registration (which
    # imports); otherwise the first call of gcrf_solve or a layer's construction registers them
    _operators()


# ---------------------------------------------------------------------------- Gaussian likelihood
_NLL_OP = None


def _nll_operator():
    """Register (once) ``torch.ops.gcrflinalg.gaussian_nll``: ``(y, b, params, lam, config, options)
    -> [nll, dnll/dy, dnll/db, dnll/dlam, *dnll/dparams]``, the per-system value and gradients from
    one host call; its autograd formula scales the gradients by the upstream gradient of ``nll``."""
    global _NLL_OP
    if _NLL_OP is not None:
        return _NLL_OP
    torch = _torch()
    from ._gaussian import host_nll

    @torch.library.custom_op(f"{NAMESPACE}::gaussian_nll", mutates_args=(),
                             schema="(Tensor y, Tensor b, Tensor[] params, Tensor lam, str config, "
                                    "str options) -> Tensor[]")
    def nll_op(y, b, params, lam, config, options):
        cfg = with_labels(_config(config), b.shape)
        with _stream(b.device):
            value, gy, gb, glam, gp = host_nll(cfg, _view(y), _view(b), [_view(p) for p in params],
                                               _view(lam), options)
            out = [to_tensor(value, like=b), to_tensor(gy, like=y), to_tensor(gb, like=b),
                   to_tensor(glam, like=lam)] + [to_tensor(g, like=p) for g, p in zip(gp, params)]
        return [_fresh(t.reshape(shape), (y, b, lam, *params))
                for t, shape in zip(out, [lam.shape, y.shape, b.shape, lam.shape] + [p.shape for p in params])]

    @nll_op.register_fake
    def _(y, b, params, lam, config, options):
        return [lam.new_empty(lam.shape), y.new_empty(y.shape), b.new_empty(b.shape),
                lam.new_empty(lam.shape)] + [p.new_empty(p.shape) for p in params]

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*output[1:])
        ctx.n_params = len(inputs[2])

    def backward(ctx, grads):
        g = grads[0]
        gy, gb, glam, *gp = ctx.saved_tensors
        if g is None:
            return None, None, [None] * ctx.n_params, None, None, None

        def scale(t):
            return g.reshape(tuple(g.shape) + (1,) * (t.ndim - g.ndim)) * t

        return scale(gy), scale(gb), [scale(t) for t in gp], scale(glam), None, None

    nll_op.register_autograd(backward, setup_context=setup)
    _NLL_OP = nll_op
    return nll_op


def gaussian_nll(form, y, b, *params, lam, method="auto", num_probes=30, degree=30, seed=0,
                 **form_options):
    """The Gaussian negative log-likelihood ``-log N(y; M^{-1} b, M^{-1})`` of a G-CRF, per system.

    ``NLL = 1/2 y^T M y - b^T y + 1/2 b^T M^{-1} b - 1/2 log det M + N/2 log(2 pi)``, differentiable
    (first order) in ``y``, ``b``, every parameter and ``lam`` through the custom operator
    ``torch.ops.gcrflinalg.gaussian_nll`` (one opaque node under ``torch.compile``).  The gradients
    (:func:`gcrflinalg.gaussian.gaussian_nll`) are exact where ``log det M`` is exact: the
    closed forms of the low-rank and video forms, and ``M^{-1}``'s columns on grid and
    multi-resolution systems of at most ``GRADIENT_EXACT_MAX_SIZE`` unknowns; with
    ``method="stochastic"`` (or ``"auto"`` above that size) the value uses SLQ and the gradient of
    ``log det M`` Hutchinson's unbiased estimator with ``num_probes`` random-sign probes (coloured on the grid
    forms, as in :func:`gcrflinalg.logdet`) drawn from
    ``seed`` (pass a new seed each step for independent estimates).

    Parameters
    ----------
    form, b, *params, lam, **form_options
        As in :func:`gcrf_solve`.
    y : torch.Tensor, shape of ``b``
        The target.
    method : {"auto", "exact", "stochastic"}
    num_probes, degree, seed : int
        Probes (SLQ and Hutchinson), SLQ's Lanczos steps, the probes' seed.

    Returns
    -------
    torch.Tensor, shape ``batch`` (the broadcast batch shape; 0-d for one system)
    """
    torch = _torch()
    from ._gaussian import nll_options

    options = nll_options(method, num_probes, degree, seed)
    for name, t in (("y", y), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be a float32 or float64 torch.Tensor")
    spec = get_form(form)
    key, names, ndims, vector_ndim = _prepare(spec.name, b.dtype == torch.float64, "auto", None, 0.0, None,
                                              "raise", True, None, form_options)
    if len(params) != len(names):
        raise TypeError(f"form {form!r} takes {len(names)} parameter tensor(s) {names}; got {len(params)}")
    if not isinstance(lam, torch.Tensor):
        lam_value = float(lam)
        if not math.isfinite(lam_value) or lam_value <= 0:
            raise ValueError(f"lam must be > 0 (M = A + lam I); got {lam!r}")
        lam = torch.tensor(lam_value, dtype=b.dtype, device=b.device)
    batches = [b.shape[: b.ndim - vector_ndim], y.shape[: y.ndim - vector_ndim]]
    batches += [p.shape[: p.ndim - nd] for p, nd in zip(params, ndims)]
    batch = tuple(torch.broadcast_shapes(*batches, lam.shape))
    vec = tuple(b.shape[b.ndim - vector_ndim:])
    if tuple(y.shape[y.ndim - vector_ndim:]) != vec:
        raise ValueError(f"y has vector shape {tuple(y.shape[y.ndim - vector_ndim:])}, b {vec}")
    y, b = y.expand(batch + vec), b.expand(batch + vec)
    params = [p.expand(batch + tuple(p.shape[p.ndim - nd:])) for p, nd in zip(params, ndims)]
    lam = lam.expand(batch)
    return _nll_operator()(y, b, params, lam, key, options)[0]
