"""gcrflinalg: numerical linear algebra for Gaussian CRF (G-CRF) inference.

Inference in a G-CRF is the solution of one symmetric positive-definite system
``(A + lam I) x = b``; training needs the adjoint solve and the gradients of the pairwise
parameters.  This package builds structured, batched operators for every precision-matrix form
(sparse grid general/Potts, multi-resolution, low-rank general/Potts, video), solves them with the
:mod:`solvers` package or exact direct methods, and hands gradients to any framework through DLPack.

Submodules are loaded on first use, so ``import gcrflinalg`` is cheap and never compiles kernels.
"""
from __future__ import annotations

import importlib

from .forms.registry import FORMS as _FORMS

__version__ = "0.1.0"

# public name -> module that defines it (relative to the package, or "solvers")
_EXPORTS = {
    # backends
    "get_array_module": "backend",
    "from_dlpack": "backend",
    "asarray": "backend",
    "to_host": "backend",
    "to_device": "backend",
    "cupy_available": "backend",
    "available_backends": "backend",
    # operators: the base class, then every registered form's exports
    "GCRFOperator": "operator",
    "neighbourhood_offsets": "neighbourhoods",
    # threads of the compiled CPU kernels
    "get_num_threads": "threads",
    "set_num_threads": "threads",
    "num_threads": "threads",
    # problems, mean-field, layers
    "forms": None,
    "problems": None,
    "meanfield": None,
    "MeanFieldResult": "meanfield",
    "parallel_meanfield": "meanfield",
    "sequential_meanfield": "meanfield",
    "interop": None,
    # the G-CRF as a Gaussian: log-determinant, variances, samples, likelihood
    "gaussian": None,
    "logdet": "gaussian",
    "marginal_variances": "gaussian",
    "sample": "gaussian",
    "gaussian_nll": "gaussian",
    "LogDetResult": "gaussian",
    "VarianceResult": "gaussian",
    "SampleResult": "gaussian",
    "NotConvergedError": "interop",
    "NotConvergedWarning": "interop",
    # errors and results (defined in the solvers package)
    "NotPositiveDefiniteError": "solvers",
    "SolveResult": "solvers",
}
for _spec in _FORMS.values():
    for _name in _spec.exports:
        _EXPORTS[_name] = _spec.module.removeprefix("gcrflinalg.")
del _spec, _name

__all__ = sorted(set(_EXPORTS) | {"solve", "adjoint_solve"})

# Bound eagerly: the submodule ``gcrflinalg.solve`` shares its name with the function, and a lazy
# import of the submodule would otherwise rebind ``gcrflinalg.solve`` to the module.
from .solve import adjoint_solve, solve  # noqa: E402


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'gcrflinalg' has no attribute {name!r}") from None
    if module is None:
        value = importlib.import_module(f"gcrflinalg.{name}")
    elif module == "solvers":
        value = getattr(importlib.import_module("solvers"), name)
    else:
        value = getattr(importlib.import_module(f"gcrflinalg.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
