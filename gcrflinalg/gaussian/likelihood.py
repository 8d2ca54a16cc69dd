"""The Gaussian negative log-likelihood of a G-CRF and its gradients.

For a target ``y`` and ``x ~ N(mu, M^{-1})``, ``mu = M^{-1} b``, per system::

    NLL = -log N(y; mu, M^{-1})
        = 1/2 y^T M y - b^T y + 1/2 b^T M^{-1} b - 1/2 log det M + N/2 log(2 pi)

and with ``x = M^{-1} b`` and the bilinear contraction ``pg(u, v) = -v^T (dM/dtheta) u`` of
``GCRFOperator.parameter_gradients`` (docs/design.md section 5)::

    dNLL/db     = x - y
    dNLL/dy     = M y - b
    dNLL/dtheta = -1/2 pg(y, y) + 1/2 pg(x, x) - 1/2 tr(M^{-1} dM/dtheta)

``tr(M^{-1} dM/dtheta) = d log det M / dtheta`` is computed

* exactly on the low-rank forms (closed forms from the Woodbury factor: ``2 F E`` on 3.4,
  ``2 (L-1) (F_{L-1} - F_{-1}) psi`` on 3.5), on video (from the capacitance factor) and, on grid
  and multi-resolution systems of at most :data:`GRADIENT_EXACT_MAX_SIZE` unknowns, from the
  columns of ``M^{-1}`` (sparse LU);
* otherwise by Hutchinson's unbiased estimator with ``K`` random-sign probes ``z_k`` (coloured on the
  grid forms, :mod:`gcrflinalg.gaussian.probes`), whose solves ``w_k = M^{-1} z_k`` are one batched
  call of :func:`gcrflinalg.solve`: ``tr(M^{-1} dM) ~ -sum_k pg(z_k, w_k) / K_{c_k}`` (``K_c = K``
  for plain probes) (an unbiased estimate of the gradient; the NLL
  value then uses the SLQ estimate of ``log det M``).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..backend import to_host
from ..solve import solve
from ..tolerances import default_rtol
from ._common import as_generator, check_operator, form_kind, positive_int
from .exact import (GRADIENT_EXACT_MAX_SIZE, inverse_columns_logdet_gradients, lowrank_logdet_gradients,
                    video_logdet_gradients)
from .logdet import logdet
from .probes import class_signs, probe_classes

__all__ = ["gaussian_nll", "NLLResult", "logdet_gradients"]


@dataclasses.dataclass
class NLLResult:
    """The negative log-likelihood of every system and its gradients.

    Attributes
    ----------
    value : numpy.ndarray, shape ``batch_shape``
    gradients : dict
        ``"b"`` and ``"y"`` (shape ``batch_shape + (N,)``... as given), every parameter of the form
        and ``"lam"``: the gradients of ``value.sum()``.
    method : str
        ``"exact"`` or ``"stochastic"`` (how ``log det M`` and its gradient were computed).
    stderr : numpy.ndarray
        Standard error of ``value`` (from SLQ; 0 when exact).
    """

    value: object
    gradients: dict
    method: str
    stderr: object = 0.0


def logdet_gradients(op, *, method="auto", num_probes=30, rng=None, solve_method="auto"):
    """``d log det M / d theta`` for every parameter and ``lam``: ``(dict, method)``.

    ``method``: ``"exact"`` (closed forms on 3.4–3.6, ``M^{-1}`` columns on sparse forms of at most
    :data:`GRADIENT_EXACT_MAX_SIZE` unknowns), ``"stochastic"`` (Hutchinson, ``num_probes``
    random-sign probes, coloured on the grid forms as in :func:`gcrflinalg.logdet`, unbiased) or
    ``"auto"`` (exact where it applies).
    """
    check_operator(op)
    kind = form_kind(op)
    if method not in ("auto", "exact", "stochastic"):
        raise ValueError(f"method must be 'auto', 'exact' or 'stochastic'; got {method!r}")
    if method == "auto":
        method = "exact" if kind in ("lowrank", "lowrank_potts", "video") or (
            kind == "sparse" and op.size <= GRADIENT_EXACT_MAX_SIZE) else "stochastic"
    if method == "exact":
        if kind in ("lowrank", "lowrank_potts"):
            return lowrank_logdet_gradients(op), "exact"
        if kind == "video":
            return video_logdet_gradients(op), "exact"
        if kind == "sparse":
            return inverse_columns_logdet_gradients(op), "exact"
        raise ValueError(f"no exact log-determinant gradient for {type(op).__name__}; use 'stochastic'")
    num_probes = positive_int(num_probes, "num_probes")
    gen = as_generator(rng)
    xp = op.xp
    # coloured probes (see gcrflinalg.gaussian.probes): probe k carries signs on its class c_k and
    # weighs 1 / K_c, so that sum_k z_k z_k^T / K_{c_k} has expectation I as with plain probes
    entry_class, num_classes = probe_classes(op, num_probes)
    probe_class = np.arange(num_probes) % num_classes
    weight = 1.0 / np.bincount(probe_class, minlength=num_classes)[probe_class]
    z = class_signs(gen, (num_probes,) + op.batch_shape + (op.size,), entry_class, probe_class, xp)
    z = z.astype(op.dtype)
    w = solve(op, z, method=solve_method, rtol=default_rtol(op.dtype) * 1e-2).x
    total = None
    for k in range(num_probes):
        g = op.parameter_gradients(z[k], w[k])
        if total is None:
            total = {key: -xp.asarray(v, dtype=np.float64) * weight[k] for key, v in g.items()}
        else:
            for key, v in g.items():
                total[key] = total[key] - v * weight[k]
    return total, "stochastic"


def gaussian_nll(op, y, b, *, method="auto", num_probes=30, degree=30, rng=None, gradients=True,
                 solve_method=None):
    """``-log N(y; M^{-1} b, M^{-1})`` of every system, with its gradients.

    Parameters
    ----------
    op : GCRFOperator
    y, b : array, shape ``(*batch_shape, *vector_shape)`` or ``(*batch_shape, N)``
        The target and the unaries.
    method : {"auto", "exact", "stochastic"}
        How ``log det M`` and its gradient are computed (module notes): ``"exact"`` where the form
        allows, ``"stochastic"`` (SLQ value, Hutchinson gradient; both unbiased up to SLQ's
        quadrature error); ``"auto"`` exact where it applies.
    num_probes, degree, rng
        Probes (both estimators) and SLQ's Lanczos steps; the random source.
    gradients : bool
        Compute the gradients (else ``gradients`` is empty).
    solve_method : str, optional
        Method of the solve ``x = M^{-1} b`` (default: ``"direct"`` on the low-rank and video forms
        and on sparse systems of at most :data:`GRADIENT_EXACT_MAX_SIZE` unknowns, ``"auto"``
        otherwise, at ``rtol = 1e-2 * default_rtol``).

    Returns
    -------
    NLLResult
    """
    check_operator(op)
    gen = as_generator(rng)
    kind = form_kind(op)
    xp = op.xp
    ya, yflat = op.as_vectors(y, "y")
    ba, _ = op.as_vectors(b, "b")
    nd = len(op.batch_shape) + len(op.vector_shape)
    if ya.ndim != nd or ba.ndim != nd:
        raise ValueError(f"y and b must have shape {op.batch_shape + op.vector_shape} (or flat); got "
                         f"{tuple(np.shape(y))} and {tuple(np.shape(b))}")
    if method not in ("auto", "exact", "stochastic"):
        raise ValueError(f"method must be 'auto', 'exact' or 'stochastic'; got {method!r}")
    if solve_method is None:  # the direct solve where the exact path factors anyway
        solve_method = "direct" if kind in ("lowrank", "lowrank_potts", "video") or (
            kind == "sparse" and op.size <= GRADIENT_EXACT_MAX_SIZE) else "auto"
    rtol = default_rtol(op.dtype) * (1e-2 if op.dtype == np.float64 else 1.0)
    x = solve(op, ba, method=solve_method, rtol=rtol).x
    my = op.matvec(ya)
    axes = tuple(range(len(op.batch_shape), ya.ndim))
    y64, b64, x64, my64 = (a.astype(np.float64) for a in (ya, ba, x, my))
    quad = 0.5 * (y64 * my64).sum(axis=axes) - (b64 * y64).sum(axis=axes) + 0.5 * (b64 * x64).sum(axis=axes)
    ld_method = method if method != "stochastic" else "slq"
    if method == "auto":
        ld_method = "exact" if kind in ("lowrank", "lowrank_potts", "video") or (
            kind == "sparse" and op.size <= GRADIENT_EXACT_MAX_SIZE) else "slq"
    ld = logdet(op, method=ld_method, num_probes=num_probes, degree=degree, rng=gen)
    value = np.asarray(to_host(quad), dtype=np.float64) - 0.5 * ld.value + 0.5 * op.size * math.log(2 * math.pi)
    used = "exact" if ld.method == "exact" else "stochastic"
    grads = {}
    if gradients:
        dld, used_grad = logdet_gradients(op, method="exact" if used == "exact" else "stochastic",
                                          num_probes=num_probes, rng=gen)
        pyy = op.parameter_gradients(ya, ya)
        pxx = op.parameter_gradients(x, x)
        for key in pyy:
            grads[key] = (-0.5 * xp.asarray(pyy[key], dtype=np.float64) + 0.5 * xp.asarray(pxx[key], dtype=np.float64)
                          - 0.5 * dld[key])
        grads["b"] = op._restore(x64 - y64, yflat)
        grads["y"] = op._restore(my64 - b64, yflat)
    return NLLResult(value=value, gradients=grads, method=used, stderr=0.5 * ld.stderr)
