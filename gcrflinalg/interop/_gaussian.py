"""The Gaussian negative log-likelihood step shared by the torch and JAX layers.

:func:`host_nll` builds the operator of one call and returns ``-log N(y; M^{-1} b, M^{-1})`` per
system with the gradients of every input, per system (the parameters and ``lam`` are given with the
full batch shape, so each system's gradient is separate and the frameworks weight them by the
upstream gradient).
"""
from __future__ import annotations

import json

import numpy as np

from ..gaussian.likelihood import gaussian_nll
from ._forms import build_operator

__all__ = ["NLL_METHODS", "nll_options", "host_nll"]

NLL_METHODS = ("auto", "exact", "stochastic")


def nll_options(method="auto", num_probes=30, degree=30, seed=0) -> str:
    """The validated options of a likelihood call as a JSON string (a custom operator argument)."""
    if method not in NLL_METHODS:
        raise ValueError(f"method must be one of {NLL_METHODS}; got {method!r}")
    for name, value in (("num_probes", num_probes), ("degree", degree)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2; got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    return json.dumps({"method": method, "num_probes": int(num_probes), "degree": int(degree), "seed": int(seed)})


def host_nll(config, y, b, params, lam, options: str):
    """``(nll, dNLL/dy, dNLL/db, dNLL/dlam, [dNLL/dparam])`` per system (NumPy or CuPy arrays).

    ``lam`` and every parameter have the full batch shape; ``nll`` has the batch shape.
    """
    opts = json.loads(options)
    op = build_operator(config, params, lam)
    res = gaussian_nll(op, y, b, method=opts["method"], num_probes=opts["num_probes"],
                       degree=opts["degree"], rng=opts["seed"])
    g = res.gradients
    grads = [g[name].reshape(np.shape(p)) for name, p in zip(config.parameter_names, params)]
    return (res.value, g["y"].reshape(np.shape(y)), g["b"].reshape(np.shape(b)),
            g["lam"].reshape(np.shape(lam)), grads)
