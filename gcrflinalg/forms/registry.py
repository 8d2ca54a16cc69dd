"""The form registry: every precision-matrix form of gcrflinalg, listed once.

Each :class:`FormSpec` says what the rest of the package needs to know of a form: its operator class,
the names and trailing shapes of its parameters, the layout of its score vectors, the keywords of its
constructor, the name of its differentiable layer and the function that makes its built-in problem.
The package exports (``gcrflinalg.GridGCRF`` ...), the built-in problems
(:mod:`gcrflinalg.problems`), the torch and JAX layers (:mod:`gcrflinalg.interop`) and the studies
read this table; none of them lists the forms again.

Adding a form is one new module under :mod:`gcrflinalg.forms` (the operator, a subclass of
:class:`gcrflinalg.operator.GCRFOperator`) plus one :func:`register` call below; its built-in
problem is a function ``(form, index, rng, size, synthetic, **overrides) -> (params, b, meta)``
named by ``problem``.  Classes and functions are named by import path and loaded on first use, so
reading the registry imports no operator module and compiles no kernel.
"""
from __future__ import annotations

import dataclasses
import importlib

__all__ = ["FormSpec", "ParameterLayout", "FORMS", "register", "get_form", "form_names", "resolve"]


def resolve(path: str):
    """The object named ``"package.module:attribute"``."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _axes_ndim(axes: str) -> int:
    return len(axes.split(","))


class _Parameters:
    """``parameter_names`` and ``parameter_ndims`` of a ``parameters`` tuple of ``(name, axes)``."""

    @property
    def parameter_names(self) -> tuple:
        return tuple(name for name, _ in self.parameters)

    @property
    def parameter_ndims(self) -> tuple:
        """Number of trailing (non-batch) axes of each parameter."""
        return tuple(_axes_ndim(axes) for _, axes in self.parameters)


@dataclasses.dataclass(frozen=True)
class ParameterLayout(_Parameters):
    """The parameters of one call of a form's differentiable layer, and how they build the operator.

    For a form with plain parameters this is the form's own ``parameters``; for a structured form
    (multires) the number, names and trailing shapes of the parameters follow from the layer's
    options (number and kind of levels, ...).  Made by :meth:`FormSpec.parameter_layout`.

    Attributes
    ----------
    parameters : tuple of (str, str)
        ``(name, trailing axes)`` per parameter tensor, in the order the layer takes them; the names
        are the keys of the operator's ``parameter_gradients``.
    build : callable
        ``build(params, lam) -> operator`` from a sequence of (NumPy/CuPy) parameter arrays.
    """

    parameters: tuple
    build: object



@dataclasses.dataclass(frozen=True)
class FormSpec(_Parameters):
    """One precision-matrix form.

    Attributes
    ----------
    name : str
        The form's name everywhere (``"grid"``, ``"lowrank_potts"``, ...).
    title : str
        A readable name for tables (``"grid, general (3.1)"``).
    operator : str
        Import path ``"module:Class"`` of the operator class.
    parameters : tuple of (str, str)
        ``(name, trailing axes)`` per parameter, in the order the constructor and the layers take
        them, e.g. ``("pairwise", "K, L, L, H, W")``; the names are also the keys of
        ``parameter_gradients``.  Empty for forms whose parameters are structured (multires).
    vector_axes : str
        Trailing axes of a score vector: ``"L, H, W"`` or ``"V, L, H, W"``.
    constructor_options : tuple of str
        Keywords the constructor takes besides the parameters and ``lam``.
    layer : str
        Name of the ``torch.nn.Module`` of :mod:`gcrflinalg.interop.torch` for this form.
    problem : str
        Import path ``"module:function"`` of the maker of its built-in problems.
    exports : tuple of str
        Public names of the form's package exported by ``gcrflinalg`` (the operator class first).
    methods : tuple of str
        The form's own methods of :func:`gcrflinalg.solve` besides the generic iterative ones
        (``"direct"``, ``"reduced_cg"``).
    builder : str
        For forms with structured parameters (no ``parameters``): import path of
        ``builder(params, arr) -> operator``, building the operator from its problem's parameters
        (``arr`` casts each array to the wanted backend and dtype).  Empty otherwise: the operator
        is ``Class(*parameters, lam, **constructor_options)``.
    layer_options : tuple of str
        Keywords of the differentiable layer when they are not ``constructor_options`` (structured
        forms); empty otherwise.
    layout : str
        For forms with structured parameters: import path of ``layout(options) ->``
        :class:`ParameterLayout`, giving the layer's parameter tensors for the layer options
        ``options`` (a dict) and the way they build the operator.  Empty otherwise: the layout is
        ``parameters`` and ``Class(*params, lam, **options)``.
    """

    name: str
    title: str
    operator: str
    parameters: tuple
    vector_axes: str
    constructor_options: tuple
    layer: str
    problem: str
    exports: tuple = ()
    methods: tuple = ("direct",)
    builder: str = ""
    layer_options: tuple = ()
    layout: str = ""

    @property
    def module(self) -> str:
        """The module that defines the operator class and the form's exports."""
        return self.operator.partition(":")[0]

    @property
    def class_name(self) -> str:
        return self.operator.partition(":")[2]


    @property
    def vector_ndim(self) -> int:
        return _axes_ndim(self.vector_axes)

    @property
    def vector_axis_names(self) -> tuple:
        return tuple(axis.strip() for axis in self.vector_axes.split(","))

    @property
    def has_layer(self) -> bool:
        """Whether the form has a differentiable layer (plain parameters or a ``layout`` hook)."""
        return bool(self.parameters or self.layout)

    @property
    def layer_option_names(self) -> tuple:
        """The keywords the layer takes besides the parameters, ``lam`` and the solver options."""
        return self.layer_options or self.constructor_options

    def parameter_layout(self, options=None) -> ParameterLayout:
        """The :class:`ParameterLayout` of a layer call with the layer options ``options``."""
        options = dict(options or {})
        if self.layout:
            return resolve(self.layout)(options)
        cls_path = self.operator

        def build(params, lam):
            return resolve(cls_path)(*params, lam, **options)

        return ParameterLayout(self.parameters, build)

    @property
    def needs_num_labels(self) -> bool:
        return "num_labels" in self.constructor_options

    def operator_class(self):
        """The operator class (imports its module on first use)."""
        return resolve(self.operator)

    def problem_maker(self):
        """The function that makes this form's built-in problems (imported on first use)."""
        return resolve(self.problem)


#: name -> :class:`FormSpec`, in the order of the design document
FORMS: dict = {}


def register(spec: FormSpec) -> FormSpec:
    """Add ``spec`` to :data:`FORMS` (a name registers once)."""
    if spec.name in FORMS:
        raise ValueError(f"form {spec.name!r} is registered already")
    FORMS[spec.name] = spec
    return spec


def get_form(name) -> FormSpec:
    """The :class:`FormSpec` of ``name``; ``ValueError`` listing the registered names otherwise."""
    try:
        return FORMS[name]
    except (KeyError, TypeError):
        raise ValueError(f"form must be one of {tuple(FORMS)}; got {name!r}") from None


def form_names() -> tuple:
    """The registered form names, in registration order."""
    return tuple(FORMS)


_PARAMS = "gcrflinalg.problems.params"

register(FormSpec(
    name="grid", title="grid, general (3.1)", operator="gcrflinalg.forms.grid:GridGCRF",
    parameters=(("pairwise", "K, L, L, H, W"),), vector_axes="L, H, W",
    constructor_options=("neighbourhood",), layer="GridGCRFLayer", problem=f"{_PARAMS}:grid_params",
    exports=("GridGCRF",), methods=("direct", "reduced_cg")))
register(FormSpec(
    name="grid_potts", title="grid, Potts (3.2)", operator="gcrflinalg.forms.grid:GridPottsGCRF",
    parameters=(("weights", "K, H, W"),), vector_axes="L, H, W",
    constructor_options=("num_labels", "neighbourhood"), layer="GridPottsGCRFLayer",
    problem=f"{_PARAMS}:grid_params", exports=("GridPottsGCRF",), methods=("direct", "potts_split")))
register(FormSpec(
    name="multires", title="multi-resolution (3.3)", operator="gcrflinalg.forms.multires:MultiResGCRF",
    parameters=(), vector_axes="N", constructor_options=("num_labels", "cross_forms"),
    layer="MultiResGCRFLayer", problem=f"{_PARAMS}:multires_params",
    exports=("MultiResGCRF", "GeneralLevel", "PottsLevel"), builder=f"{_PARAMS}:build_multires",
    layer_options=("level_forms", "neighbourhood", "num_labels", "cross_forms"),
    layout="gcrflinalg.forms.multires:layer_layout"))
register(FormSpec(
    name="lowrank", title="low-rank, general (3.4)", operator="gcrflinalg.forms.lowrank:LowRankGCRF",
    parameters=(("embeddings", "D, L, H, W"),), vector_axes="L, H, W", constructor_options=(),
    layer="LowRankGCRFLayer", problem=f"{_PARAMS}:lowrank_params", exports=("LowRankGCRF",)))
register(FormSpec(
    name="lowrank_potts", title="low-rank, Potts (3.5)",
    operator="gcrflinalg.forms.lowrank:LowRankPottsGCRF", parameters=(("embeddings", "D, H, W"),),
    vector_axes="L, H, W", constructor_options=("num_labels",), layer="LowRankPottsGCRFLayer",
    problem=f"{_PARAMS}:lowrank_params", exports=("LowRankPottsGCRF",)))
register(FormSpec(
    name="video", title="video (3.6)", operator="gcrflinalg.forms.video:VideoGCRF",
    parameters=(("spatial", "V, Ds, L, H, W"), ("temporal", "V, Dt, L, H, W")),
    vector_axes="V, L, H, W", constructor_options=("neighbourhood", "product"), layer="VideoGCRFLayer",
    problem=f"{_PARAMS}:video_params",
    exports=("VideoGCRF", "solve_video_windows", "VideoWindowsSolution", "frame_coupling_matrix")))
