"""The G-CRF forms the framework wrappers know, and the solve/adjoint/gradient steps they share.

The forms, their operator constructors, the names and layouts of their parameters and their
constructor keywords come from the form registry (:mod:`gcrflinalg.forms.registry`);
:mod:`gcrflinalg.interop.torch` and
:mod:`gcrflinalg.interop.jax` only move arrays between their framework and these functions.  Nothing
here imports a deep-learning framework.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from ..backend import to_host
from ..forms.registry import FORMS as REGISTRY
from ..forms.registry import FormSpec, ParameterLayout
from .._validation import borrowed_parameters, check_pd_policy
from ..solve import adjoint_solve, solve
from ..tolerances import default_rtol

__all__ = [
    "FORMS",
    "FormSpec",
    "NotConvergedError",
    "NotConvergedWarning",
    "SolveConfig",
    "get_form",
    "make_config",
    "broadcast_batch_shape",
    "build_operator",
    "with_labels",
    "forward_solve",
    "backward_solve",
]

#: keywords of :func:`gcrflinalg.solve` the wrappers pass through
SOLVER_OPTIONS = ("method", "rtol", "atol", "maxiter", "restart", "omega", "refine", "check_pd")

#: what a failed convergence test does: raise :class:`NotConvergedError` or warn
NONCONVERGENCE_POLICIES = ("raise", "warn")


class NotConvergedError(RuntimeError):
    """An iterative G-CRF solve of a differentiable layer stopped before meeting its tolerance."""


class NotConvergedWarning(RuntimeWarning):
    """Issued instead of :class:`NotConvergedError` when ``on_nonconvergence="warn"``."""


#: the forms that have a differentiable layer, name -> :class:`~gcrflinalg.forms.registry.FormSpec`
#: (read from the form registry: every form with plain parameters or a parameter-layout hook)
FORMS = {name: spec for name, spec in REGISTRY.items() if spec.has_layer}


def get_form(name) -> FormSpec:
    """The :class:`FormSpec` of a form with a layer; ``ValueError`` listing the known names otherwise."""
    if name in REGISTRY and name not in FORMS:
        raise ValueError(f"form {name!r} has no differentiable layer; layers exist for {tuple(FORMS)}")
    try:
        return FORMS[name]
    except (KeyError, TypeError):
        raise ValueError(f"form must be one of {tuple(FORMS)}; got {name!r}") from None


@dataclasses.dataclass(frozen=True)
class SolveConfig:
    """Everything a differentiable solve needs besides its arrays.

    Attributes
    ----------
    form : FormSpec
    constructor_options : dict
        The layer's form keywords (``neighbourhood``, ``num_labels``; ``level_forms`` ... for
        multires).
    solver_options : dict
        Keywords for :func:`gcrflinalg.solve` / :func:`gcrflinalg.adjoint_solve` (``method``,
        ``rtol``, ``atol``, ``maxiter``, ...).
    on_nonconvergence : {"raise", "warn"}
    layout : ParameterLayout
        The parameter tensors of this call and the operator builder (from the form registry).
    """

    form: FormSpec
    constructor_options: dict
    solver_options: dict
    on_nonconvergence: str = "raise"
    layout: ParameterLayout = None

    def __post_init__(self):
        if self.layout is None:
            object.__setattr__(self, "layout", self.form.parameter_layout(self.constructor_options))

    @property
    def parameter_names(self) -> tuple:
        return self.layout.parameter_names

    @property
    def parameter_ndims(self) -> tuple:
        return self.layout.parameter_ndims


def make_config(form, vector_shape, dtype, *, method="auto", rtol=None, atol=0.0, maxiter=None,
                on_nonconvergence="raise", check_pd=True, form_options=None, extra_solver_options=None
                ) -> SolveConfig:
    """Validate the options of a differentiable solve and split them by destination.

    Parameters
    ----------
    form : str
        One of :data:`FORMS`.
    vector_shape : tuple of int
        Trailing shape of the unaries ``b``: ``(L, H, W)`` (``(V, L, H, W)`` for video, ``(N,)`` for
        multires); gives the default ``num_labels`` of the Potts forms (``None`` sizes: unknown
        yet, see :func:`with_labels`).
    dtype : dtype
        The computational dtype (sets the default ``rtol``).
    method, rtol, atol, maxiter, check_pd
        As in :func:`gcrflinalg.solve`; ``rtol=None`` means :func:`default_rtol`, except with
        ``method="direct"``, where the solve is exact and a given ``rtol`` only sets the residual
        test of its ``converged`` flag (the form's own default otherwise).
    on_nonconvergence : {"raise", "warn"}
        A forward or adjoint solve that misses its tolerance raises :class:`NotConvergedError`, or
        issues :class:`NotConvergedWarning` and goes on.
    form_options : dict
        The form's constructor keywords (``neighbourhood``, ``num_labels``).
    extra_solver_options : dict
        Further solver keywords (``restart`` for GMRES, ``omega`` for Jacobi/Gauss–Seidel, ``refine``
        for the low-rank direct solve).
    """
    spec = get_form(form)
    form_options = dict(form_options or {})
    unknown = set(form_options) - set(spec.layer_option_names)
    if unknown:
        allowed = spec.layer_option_names + SOLVER_OPTIONS
        raise TypeError(f"unknown option(s) {sorted(unknown)} for form {spec.name!r}; "
                        f"it takes {allowed}")
    if on_nonconvergence not in NONCONVERGENCE_POLICIES:
        raise ValueError(f"on_nonconvergence must be one of {NONCONVERGENCE_POLICIES}; got {on_nonconvergence!r}")
    vector_shape = tuple(vector_shape)
    if len(vector_shape) != spec.vector_ndim:
        raise ValueError(f"unaries of form {spec.name!r} need {spec.vector_ndim} trailing axes; "
                         f"got vector shape {vector_shape}")
    if spec.needs_num_labels and "L" in spec.vector_axis_names:
        num_labels = vector_shape[spec.vector_axis_names.index("L") - spec.vector_ndim]
    else:
        num_labels = None  # not in the vector shape, or not known yet (None): left to the operator
    if num_labels is not None:
        given = form_options.setdefault("num_labels", num_labels)
        if int(given) != num_labels:
            raise ValueError(f"num_labels={given} but the unaries have {num_labels} labels "
                             f"(shape (..., L, H, W) = {vector_shape})")
    solver_options = {"method": method, "check_pd": check_pd_policy(check_pd)}
    if method != "direct" or rtol is not None:
        solver_options["rtol"] = default_rtol(dtype) if rtol is None else float(rtol)
    if atol:
        solver_options["atol"] = float(atol)
    if maxiter is not None:
        solver_options["maxiter"] = int(maxiter)
    for key, value in (extra_solver_options or {}).items():
        if key not in SOLVER_OPTIONS or key in ("method", "rtol", "atol", "maxiter", "check_pd"):
            raise TypeError(f"unknown solver option {key!r}; expected one of {SOLVER_OPTIONS}")
        solver_options[key] = value
    return SolveConfig(spec, form_options, solver_options, on_nonconvergence,
                       spec.parameter_layout(form_options))


def with_labels(config: SolveConfig, vector_shape) -> SolveConfig:
    """``config`` with the default ``num_labels`` of a Potts form read from the unaries' vector
    shape (``config`` itself when it has it, or the form does not take it from there); a
    ``num_labels`` that disagrees with the shape raises ``ValueError``."""
    spec = config.form
    if not (spec.needs_num_labels and "L" in spec.vector_axis_names):
        return config
    num_labels = int(tuple(vector_shape)[spec.vector_axis_names.index("L") - spec.vector_ndim])
    given = config.constructor_options.get("num_labels")
    if given is not None:
        if int(given) != num_labels:
            raise ValueError(f"num_labels={given} but the unaries have {num_labels} labels "
                             f"(shape (..., L, H, W) = {tuple(vector_shape)})")
        return config
    options = dict(config.constructor_options, num_labels=num_labels)
    return dataclasses.replace(config, constructor_options=options,
                               layout=spec.parameter_layout(options))


def broadcast_batch_shape(config, b_shape, param_shapes, lam_shape=()) -> tuple:
    """The common batch shape of the unaries, the parameters and ``lam``.

    Parameters
    ----------
    config : SolveConfig or FormSpec
        The call's configuration (its parameter layout); a form with plain parameters may be
        given by its :class:`FormSpec`.
    b_shape : tuple
        ``(*batch_b, *vector_shape)``.
    param_shapes : sequence of tuple
        ``(*batch_i, *core_i)`` per parameter, ``core_i`` having ``spec.parameter_ndims[i]`` axes.
    lam_shape : tuple
        ``()`` or a batch shape.

    Returns
    -------
    tuple
        The broadcast of all batch shapes; a parameter without batch axes is shared by every system.
    """
    if isinstance(config, FormSpec):
        spec, layout = config, config.parameter_layout()
    else:
        spec, layout = config.form, config.layout
    if len(param_shapes) != len(layout.parameter_names):
        raise TypeError(f"form {spec.name!r} takes {len(layout.parameter_names)} parameter(s) "
                        f"{layout.parameter_names}; got {len(param_shapes)}")
    b_shape = tuple(b_shape)
    if len(b_shape) < spec.vector_ndim:
        raise ValueError(f"b must have at least {spec.vector_ndim} axes for form {spec.name!r}; got shape {b_shape}")
    batches = [b_shape[: len(b_shape) - spec.vector_ndim]]
    for name, nd, shape in zip(layout.parameter_names, layout.parameter_ndims, param_shapes):
        shape = tuple(shape)
        if len(shape) < nd:
            raise ValueError(f"{name} must have at least {nd} axes for form {spec.name!r}; got shape {shape}")
        batches.append(shape[: len(shape) - nd])
    batches.append(tuple(lam_shape))
    try:
        return tuple(np.broadcast_shapes(*batches))
    except ValueError:
        raise ValueError(
            f"batch shapes do not broadcast: b {batches[0]}, "
            + ", ".join(f"{n} {s}" for n, s in zip(layout.parameter_names, batches[1:-1]))
            + f", lam {batches[-1]}"
        ) from None


def build_operator(config: SolveConfig, params, lam):
    """The operator ``M = lam I + A`` of the configured form from (NumPy/CuPy/DLPack) parameters.

    The operator views the parameters without copying them (:func:`borrowed_parameters`): it lives for
    one forward and backward pass, during which the framework keeps its inputs unchanged.
    """
    with borrowed_parameters():
        return config.layout.build(list(params), lam)


def forward_solve(config: SolveConfig, op, b):
    """``x = M^{-1} b`` (shape of ``b``), with the configured convergence policy applied."""
    result = solve(op, b, **config.solver_options)
    check_converged(result, config, "forward")
    return result.x


def backward_solve(config: SolveConfig, op, x, grad_x, *, need_parameters=True):
    """The backward pass: ``g = M^{-1} dL/dx`` and the gradients of the parameters.

    Parameters
    ----------
    op : GCRFOperator
        The forward pass's operator (its cached factorisation, if any, is reused).
    x : array, shape ``batch_shape + vector_shape``
        The forward solution.
    grad_x : array, shape of ``x``
        ``dL/dx``.
    need_parameters : bool
        When False only ``g`` is computed.

    Returns
    -------
    g : array, shape of ``x``
        ``dL/db``.
    grads : dict
        ``parameter_gradients(x, g)``: one entry per parameter name and ``"lam"`` (empty when
        ``need_parameters`` is False).
    """
    options = dict(config.solver_options)
    options["check_pd"] = False  # checked by the forward pass on this very operator
    result = adjoint_solve(op, grad_x, **options)
    check_converged(result, config, "adjoint")
    g = result.x
    grads = op.parameter_gradients(x, g) if need_parameters else {}
    return g, grads


def check_converged(result, config: SolveConfig, what: str) -> None:
    """Apply the non-convergence policy to a :class:`SolveResult`: raise or warn, never ignore."""
    converged = getattr(result, "converged", True)
    if converged is None:
        return
    flags = np.asarray(to_host(converged), dtype=bool)
    if flags.all():
        return
    n_bad, n_all = int((~flags).sum()), max(int(flags.size), 1)
    detail = ""
    norms = getattr(result, "residual_norms", None)
    b_norm = getattr(result, "b_norm", None)
    if norms is not None and b_norm is not None and len(norms):
        final = np.asarray(norms[-1], dtype=float)
        rel = final / np.maximum(np.asarray(b_norm, dtype=float), np.finfo(float).tiny)
        detail = f"; largest final relative residual {float(np.max(rel)):.3g}"
    iterations = getattr(result, "iterations", None)
    if iterations is not None:
        detail += f"; {int(np.max(to_host(iterations)))} iterations"
    options = {k: v for k, v in config.solver_options.items() if k in ("rtol", "atol", "maxiter")}
    message = (f"the {what} G-CRF solve ({config.form.name}, method={getattr(result, 'method', None) or config.solver_options['method']!r}, "
               f"{options}) did not converge for {n_bad} of {n_all} system(s){detail}; raise maxiter, "
               "loosen rtol, use method='direct' where the form has it, or pass "
               "on_nonconvergence='warn' to continue")
    if config.on_nonconvergence == "raise":
        raise NotConvergedError(message)
    warnings.warn(message, NotConvergedWarning, stacklevel=4)
