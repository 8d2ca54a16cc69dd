"""Differentiable G-CRF layers for PyTorch.

:func:`gcrf_solve` solves ``(A + lam I) x = b`` for a batch of G-CRFs of one form and is
differentiable in the unaries ``b``, every parameter of ``A`` and ``lam``.  It is a
:class:`torch.autograd.Function`: the forward pass calls :func:`gcrflinalg.solve`, the backward pass
:func:`gcrflinalg.adjoint_solve` on the same operator (so a ``method="direct"`` factorisation is
computed once and reused) and ``parameter_gradients`` (DESIGN.md section 5)::

    x = M^{-1} b,   g = M^{-1} dL/dx,   dL/db = g,   dL/dtheta = -g^T (dM/dtheta) x.

Tensors cross into the core through DLPack without copying: CPU tensors become NumPy arrays, CUDA
tensors CuPy arrays (CuPy required), and results come back the same way.

The layer modules (:class:`GridGCRFLayer`, :class:`GridPottsGCRFLayer`, :class:`LowRankGCRFLayer`,
:class:`LowRankPottsGCRFLayer`, :class:`VideoGCRFLayer`) wrap :func:`gcrf_solve` for use inside a
network: the structural parameters arrive as ``forward`` inputs (typically produced by a head of the
network), ``lam`` is the module's own, optionally learnt, parameter.

PyTorch is imported on first use only; ``import gcrflinalg.interop.torch`` works without it.
"""
from __future__ import annotations

import importlib
import math

import numpy as np

from ..backend import from_dlpack
from ._forms import (FORMS, NotConvergedError, NotConvergedWarning, backward_solve,
                     broadcast_batch_shape, build_operator, forward_solve, get_form, make_config)

__all__ = [
    "gcrf_solve",
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


def _torch():
    try:
        return importlib.import_module("torch")
    except ImportError as err:
        raise ImportError("gcrflinalg.interop.torch needs PyTorch: pip install gcrflinalg[torch]") from err


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


# ---------------------------------------------------------------------------- autograd function
def _function_class():
    torch = _torch()
    from torch.autograd.function import once_differentiable

    class GCRFSolveFunction(torch.autograd.Function):
        """``x = (A(params) + lam I)^{-1} b`` with the adjoint-based backward pass."""

        @staticmethod
        def forward(ctx, config, lam_value, lam_tensor, b, *params):
            arrays = [to_array(p) for p in params]
            lam = to_array(lam_tensor) if lam_tensor is not None else lam_value
            op = build_operator(config, arrays, lam)
            x_array = forward_solve(config, op, to_array(b))
            x = to_tensor(x_array, like=b)
            ctx.config = config
            ctx.op = op  # holds a direct factorisation, if the solve made one, for backward
            ctx.n_params = len(params)
            ctx.has_lam = lam_tensor is not None
            # saving x and the inputs lets autograd catch in-place changes made before backward
            ctx.save_for_backward(x, *params, *([lam_tensor] if ctx.has_lam else []))
            return x

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_x):
            saved = ctx.saved_tensors  # checks the version counters
            x, params = saved[0], saved[1: 1 + ctx.n_params]
            need_lam, need_b = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
            need_params = ctx.needs_input_grad[4:]
            gx = to_array(grad_x.to(dtype=x.dtype).contiguous())
            g, grads = backward_solve(ctx.config, ctx.op, to_array(x), gx,
                                      need_parameters=need_lam or any(need_params))
            names = ctx.config.form.parameter_names
            grad_b = to_tensor(g, like=x) if need_b else None
            grad_params = [to_tensor(grads[n], like=p) if need else None
                           for n, p, need in zip(names, params, need_params)]
            grad_lam = to_tensor(grads["lam"], like=saved[-1]) if need_lam else None
            return (None, None, grad_lam, grad_b, *grad_params)

    return GCRFSolveFunction


_FUNCTION = None


def _solve_function():
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _function_class()
    return _FUNCTION


def gcrf_solve(form, b, *params, lam, method="auto", rtol=None, atol=0.0, maxiter=None,
               on_nonconvergence="raise", check_pd=True, solver_options=None, **form_options):
    """Differentiable G-CRF inference ``x = (A + lam I)^{-1} b`` on torch tensors.

    Parameters
    ----------
    form : {"grid", "grid_potts", "lowrank", "lowrank_potts", "video"}
        The precision-matrix form (DESIGN.md section 3).
    b : torch.Tensor, shape ``(*batch, L, H, W)`` (``(*batch, V, L, H, W)`` for ``"video"``)
        Unary scores, float32 or float64.
    *params : torch.Tensor
        The form's parameters, laid out as the operator constructors take them:

        - ``"grid"``: ``pairwise`` ``(*batch, K, L, L, H, W)``
        - ``"grid_potts"``: ``weights`` ``(*batch, K, H, W)``
        - ``"lowrank"``: ``embeddings`` ``(*batch, D, L, H, W)``
        - ``"lowrank_potts"``: ``embeddings`` ``(*batch, D, H, W)``
        - ``"video"``: ``spatial`` ``(*batch, V, Ds, L, H, W)``, ``temporal`` ``(*batch, V, Dt, L, H, W)``

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
    check_pd : bool
        Check the form's positive-definiteness bound in the forward pass.
    solver_options : dict, optional
        Further solver keywords (``restart`` for GMRES, ``omega`` for Jacobi/Gauss–Seidel,
        ``refine`` for the low-rank direct solve).
    **form_options
        The constructor keywords: ``neighbourhood`` (grid forms: 4, 8, 12; video: ``"fc"`` or a set
        of frame distances), ``num_labels`` (Potts forms; default ``b.shape[-3]``) and ``product``
        (video: ``"cached"`` or ``"pairwise"``).

    Returns
    -------
    torch.Tensor, shape ``(*batch, *vector_shape)``
        The solution ``x``, dtype and device of ``b``; differentiable.

    Raises
    ------
    NotPositiveDefiniteError
        A violated positive-definiteness bound (``check_pd``) or CG breakdown.
    NotConvergedError
        An iterative solve missed its tolerance (unless ``on_nonconvergence="warn"``).
    """
    torch = _torch()
    spec = get_form(form)
    tensors = [b, *params]
    for name, t in zip(("b",) + spec.parameter_names, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if len(params) != len(spec.parameter_names):
        raise TypeError(f"form {spec.name!r} takes {len(spec.parameter_names)} parameter tensor(s) "
                        f"{spec.parameter_names}; got {len(params)}")
    if b.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"b must be float32 or float64; got {b.dtype}")
    for name, p in zip(spec.parameter_names, params):
        if p.dtype != b.dtype:
            raise TypeError(f"{name} has dtype {p.dtype} but b has {b.dtype}; use one dtype")
        if p.device != b.device:
            raise TypeError(f"{name} is on {p.device} but b is on {b.device}")
    lam_tensor, lam_value = None, None
    if isinstance(lam, torch.Tensor):
        lam_tensor = lam if lam.device == b.device else lam.to(b.device)
        lam_shape = tuple(lam.shape)
    else:
        lam_value = float(lam)
        if not math.isfinite(lam_value) or lam_value <= 0:
            raise ValueError(f"lam must be > 0 (M = A + lam I); got {lam!r}")
        lam_shape = ()
    batch = broadcast_batch_shape(spec, tuple(b.shape), [tuple(p.shape) for p in params], lam_shape)
    vector_shape = tuple(b.shape[b.ndim - spec.vector_ndim:])
    config = make_config(spec.name, vector_shape, np.float64 if b.dtype == torch.float64 else np.float32,
                         method=method, rtol=rtol, atol=atol, maxiter=maxiter,
                         on_nonconvergence=on_nonconvergence, check_pd=check_pd,
                         form_options=form_options, extra_solver_options=solver_options)
    b = b.expand(batch + vector_shape)
    params = [p.expand(batch + tuple(p.shape[p.ndim - nd:])) for p, nd in zip(params, spec.parameter_ndims)]
    return _solve_function().apply(config, lam_value, lam_tensor, b, *params)


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
