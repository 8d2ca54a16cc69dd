"""Differentiable G-CRF inference for JAX.

:func:`gcrf_solve` solves ``(A + lam I) x = b`` for a batch of G-CRFs of one form and is a
``jax.custom_vjp`` function, differentiable in the unaries ``b``, every parameter of ``A`` and ``lam``
(docs/design.md section 5)::

    x = M^{-1} b,   g = M^{-1} dL/dx,   dL/db = g,   dL/dtheta = -g^T (dM/dtheta) x.

**The solves run on the CPU through** ``jax.pure_callback``: JAX hands the callback host NumPy arrays
(device arrays are copied to the host by JAX), the core solves with NumPy, and the results return as
JAX arrays.  The function works under ``jax.jit``, ``jax.grad`` and ``jax.vmap`` (mapped items are
solved one after another).  The forward and the backward callback are separate host calls, so a
``method="direct"`` factorisation is computed in each (the PyTorch layer reuses it).

Enable 64-bit floats (``jax.config.update("jax_enable_x64", True)``) for float64 solves; otherwise
JAX arrays are float32 and the solves run in float32.

JAX is imported on first use only; ``import gcrflinalg.interop.jax`` works without it.
"""
from __future__ import annotations

import importlib

import numpy as np

from ._forms import (NotConvergedError, NotConvergedWarning, backward_solve, broadcast_batch_shape,
                     build_operator, forward_solve, get_form, make_config)

__all__ = ["gcrf_solve", "gaussian_nll", "NotConvergedError", "NotConvergedWarning"]


def _jax():
    try:
        return importlib.import_module("jax"), importlib.import_module("jax.numpy")
    except ImportError as err:
        raise ImportError("gcrflinalg.interop.jax needs JAX: pip install -e '.[jax]' in a gcrflinalg checkout") from err


def gcrf_solve(form, b, *params, lam, method="auto", rtol=None, atol=0.0, maxiter=None,
               on_nonconvergence="raise", check_pd=True, solver_options=None, **form_options):
    """Differentiable G-CRF inference ``x = (A + lam I)^{-1} b`` on JAX arrays (CPU callbacks).

    Parameters
    ----------
    form : {"grid", "grid_potts", "multires", "lowrank", "lowrank_potts", "video"}
        The precision-matrix form (docs/design.md section 3).
    b : jax.Array, shape ``(*batch, L, H, W)`` (``(*batch, V, L, H, W)`` for ``"video"``,
        ``(*batch, N)`` for ``"multires"``)
        Unary scores.
    *params : jax.Array
        The form's parameters, laid out as the operator constructors take them: ``pairwise``
        ``(*batch, K, L, L, H, W)`` (grid), ``weights`` ``(*batch, K, H, W)`` (grid_potts),
        ``embeddings`` ``(*batch, D, L, H, W)`` (lowrank) or ``(*batch, D, H, W)``
        (lowrank_potts), ``spatial, temporal`` ``(*batch, V, D, L, H, W)`` (video); for multires the
        ``S`` level tensors then the ``S - 1`` couplings, ``S = len(level_forms)`` (see
        :func:`gcrflinalg.interop.torch.gcrf_solve`).  Batch shapes
        broadcast; a parameter without batch axes is shared by all systems.
    lam : float or jax.Array
        ``lam > 0``, scalar or one value per system; differentiable.
    method, rtol, atol, maxiter, on_nonconvergence, check_pd, solver_options, **form_options
        As in :func:`gcrflinalg.interop.torch.gcrf_solve`.  An error raised on the host (a violated
        positive-definiteness bound, :class:`NotConvergedError`) surfaces from JAX as a runtime
        error carrying the original message; ``on_nonconvergence="warn"`` warns from the callback.

    Returns
    -------
    jax.Array, shape ``(*batch, *vector_shape)``
        The solution ``x`` in the dtype of ``b`` and the parameters.
    """
    jax, jnp = _jax()
    spec = get_form(form)
    b = jnp.asarray(b)
    if not jnp.issubdtype(b.dtype, jnp.floating):
        raise TypeError(f"b must be a floating array; got {b.dtype}")
    if b.ndim < spec.vector_ndim:
        raise ValueError(f"b must have at least {spec.vector_ndim} axes for form {spec.name!r}; got shape {b.shape}")
    vector_shape = tuple(b.shape[b.ndim - spec.vector_ndim:])
    config = make_config(spec.name, vector_shape, np.dtype(b.dtype), method=method, rtol=rtol, atol=atol,
                         maxiter=maxiter, on_nonconvergence=on_nonconvergence, check_pd=check_pd,
                         form_options=form_options, extra_solver_options=solver_options)
    names = config.parameter_names
    if len(params) != len(names):
        raise TypeError(f"form {spec.name!r} takes {len(names)} parameter array(s) {names}; got {len(params)}")
    params = [jnp.asarray(p) for p in params]
    for name, p in zip(names, params):
        if p.dtype != b.dtype:
            raise TypeError(f"{name} has dtype {p.dtype} but b has {b.dtype}; use one dtype")
    if isinstance(lam, (int, float)) and not isinstance(lam, bool) and not lam > 0:
        raise ValueError(f"lam must be > 0 (M = A + lam I); got {lam!r}")
    lam = jnp.asarray(lam, dtype=b.dtype)
    batch = broadcast_batch_shape(config, b.shape, [p.shape for p in params], lam.shape)
    b = jnp.broadcast_to(b, batch + vector_shape)
    params = [jnp.broadcast_to(p, batch + tuple(p.shape[p.ndim - nd:]))
              for p, nd in zip(params, config.parameter_ndims)]
    return _custom_vjp_solve(config)(lam, b, *params)


def _custom_vjp_solve(config):
    """The ``custom_vjp`` function ``(lam, b, *params) -> x`` of one configuration."""
    jax, _ = _jax()

    def host_forward(lam, b, *params):
        op = build_operator(config, [np.asarray(p) for p in params], np.asarray(lam))
        return np.asarray(forward_solve(config, op, np.asarray(b)), dtype=b.dtype)

    def host_backward(lam, x, grad_x, *params):
        op = build_operator(config, [np.asarray(p) for p in params], np.asarray(lam))
        g, grads = backward_solve(config, op, np.asarray(x), np.asarray(grad_x))
        out = [np.asarray(grads["lam"], dtype=lam.dtype).reshape(lam.shape), np.asarray(g, dtype=x.dtype)]
        out += [np.asarray(grads[name], dtype=p.dtype).reshape(p.shape)
                for name, p in zip(config.parameter_names, params)]
        return tuple(out)

    def shape_of(a):
        return jax.ShapeDtypeStruct(a.shape, a.dtype)

    def forward(lam, b, *params):
        return jax.pure_callback(host_forward, shape_of(b), lam, b, *params, vmap_method="sequential")

    @jax.custom_vjp
    def solve(lam, b, *params):
        return forward(lam, b, *params)

    def solve_fwd(lam, b, *params):
        x = forward(lam, b, *params)
        return x, (lam, x, params)

    def solve_bwd(residuals, grad_x):
        lam, x, params = residuals
        shapes = (shape_of(lam), shape_of(x)) + tuple(shape_of(p) for p in params)
        return tuple(jax.pure_callback(host_backward, shapes, lam, x, grad_x, *params,
                                       vmap_method="sequential"))

    solve.defvjp(solve_fwd, solve_bwd)
    return solve


def gaussian_nll(form, y, b, *params, lam, method="auto", num_probes=30, degree=30, seed=0, **form_options):
    """The Gaussian negative log-likelihood ``-log N(y; M^{-1} b, M^{-1})`` per system, on JAX arrays.

    A ``jax.custom_vjp`` function: one host callback (``jax.pure_callback``) computes the value
    and the gradients of ``y``, ``b``, every parameter and ``lam`` (exact where ``log det M`` is
    exact, Hutchinson's unbiased estimator with ``method="stochastic"``; see
    :func:`gcrflinalg.interop.torch.gaussian_nll`), and the backward pass scales them by the
    upstream gradient.  Works under ``jax.jit`` and ``jax.grad``.

    Returns
    -------
    jax.Array, shape ``batch`` (0-d for one system)
    """
    from ._gaussian import host_nll, nll_options

    jax, jnp = _jax()
    options = nll_options(method, num_probes, degree, seed)
    spec = get_form(form)
    b, y = jnp.asarray(b), jnp.asarray(y)
    if b.ndim < spec.vector_ndim or y.shape[y.ndim - spec.vector_ndim:] != b.shape[b.ndim - spec.vector_ndim:]:
        raise ValueError(f"y {y.shape} and b {b.shape} must share the vector shape of form {spec.name!r}")
    vector_shape = tuple(b.shape[b.ndim - spec.vector_ndim:])
    config = make_config(spec.name, vector_shape, np.dtype(b.dtype), form_options=form_options)
    names = config.parameter_names
    if len(params) != len(names):
        raise TypeError(f"form {spec.name!r} takes {len(names)} parameter array(s) {names}; got {len(params)}")
    params = [jnp.asarray(p) for p in params]
    if isinstance(lam, (int, float)) and not isinstance(lam, bool) and not lam > 0:
        raise ValueError(f"lam must be > 0 (M = A + lam I); got {lam!r}")
    lam = jnp.asarray(lam, dtype=b.dtype)
    batch = broadcast_batch_shape(config, b.shape, [p.shape for p in params], lam.shape)
    batch = tuple(np.broadcast_shapes(batch, tuple(y.shape[: y.ndim - spec.vector_ndim])))
    b = jnp.broadcast_to(b, batch + vector_shape)
    y = jnp.broadcast_to(y, batch + vector_shape)
    params = [jnp.broadcast_to(p, batch + tuple(p.shape[p.ndim - nd:]))
              for p, nd in zip(params, config.parameter_ndims)]
    lam = jnp.broadcast_to(lam, batch)

    def host(y, b, lam, *params):
        value, gy, gb, glam, gp = host_nll(config, np.asarray(y), np.asarray(b), [np.asarray(p) for p in params],
                                           np.asarray(lam), options)
        out = [np.asarray(value, dtype=b.dtype).reshape(lam.shape), np.asarray(gy, dtype=y.dtype),
               np.asarray(gb, dtype=b.dtype), np.asarray(glam, dtype=lam.dtype).reshape(lam.shape)]
        return tuple(out + [np.asarray(g, dtype=p.dtype).reshape(p.shape) for g, p in zip(gp, params)])

    def shape_of(a):
        return jax.ShapeDtypeStruct(a.shape, a.dtype)

    def call(y, b, lam, *params):
        shapes = (shape_of(lam), shape_of(y), shape_of(b), shape_of(lam)) + tuple(shape_of(p) for p in params)
        return jax.pure_callback(host, shapes, y, b, lam, *params, vmap_method="sequential")

    @jax.custom_vjp
    def nll(y, b, lam, *params):
        return call(y, b, lam, *params)[0]

    def nll_fwd(y, b, lam, *params):
        out = call(y, b, lam, *params)
        return out[0], out[1:]

    def nll_bwd(saved, g):
        gy, gb, glam, *gp = saved

        def scale(t):
            return g.reshape(g.shape + (1,) * (t.ndim - g.ndim)) * t

        return (scale(gy), scale(gb), scale(glam)) + tuple(scale(t) for t in gp)

    nll.defvjp(nll_fwd, nll_bwd)
    return nll(y, b, lam, *params)
