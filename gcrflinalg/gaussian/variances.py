"""Marginal variances ``diag(M^{-1})`` of a G-CRF: exact from the form's structure, or by a
stochastic diagonal estimator with error bars."""
from __future__ import annotations

import math
import time

import numpy as np

from ..backend import to_host
from ..solve import solve
from ..tolerances import default_rtol
from ._common import as_generator, check_operator, form_kind, positive_int
from .exact import VARIANCES_EXACT_MAX_SIZE, structured_variances
from .probes import check_probing, class_signs, probe_classes
from .results import VarianceResult

__all__ = ["marginal_variances", "AUTO_EXACT_MAX_SIZE"]

#: ``method="auto"`` computes exact variances of a grid or multi-resolution system up to this many
#: unknowns (``N`` sparse LU solves) and the stochastic estimate above it.
AUTO_EXACT_MAX_SIZE = 4_000


def marginal_variances(op, *, method="auto", num_probes=64, rng=None, max_size=VARIANCES_EXACT_MAX_SIZE,
                       rtol=None, solve_method="auto", probing="auto"):
    """The marginal variances ``Var[x_i] = (M^{-1})_ii`` of ``x ~ N(M^{-1} b, M^{-1})``.

    Parameters
    ----------
    op : GCRFOperator
    method : {"auto", "exact", "stochastic"}
        ``"exact"``: Woodbury on the low-rank forms (``O(N D^2)``), the capacitance factor on video
        (``O(V D^2 n)``), sparse LU solves of the unit vectors on grid and multi-resolution forms
        (at most ``max_size`` unknowns).  ``"stochastic"``: the diagonal estimator of Bekas, Kokiopoulou
        and Saad with ``K`` Rademacher probes ``z_k``, their solves batched into one call of
        :func:`gcrflinalg.solve`::

            d_i ~ (1/K) sum_k z_ki (M^{-1} z_k)_i = (M^{-1})_ii + (1/K) sum_k sum_{j != i} z_ki z_kj (M^{-1})_ij

        unbiased, with the standard error of the ``K`` per-probe values.  Since ``M^{-1}`` decays
        away from the diagonal on these shifted systems the error is small relative to the
        diagonal.  With coloured probes (``probing``) entry ``i`` averages the ``K_c`` probes of its
        class only, and the error keeps only the ``(M^{-1})_ij`` of pixels in the same class.  ``"auto"``: exact on the low-rank and video forms and on sparse systems of at most
        :data:`AUTO_EXACT_MAX_SIZE` unknowns, stochastic otherwise.
    num_probes : int
        ``K`` (>= 2).
    rng : None, int or numpy.random.Generator
    max_size : int
        Size limit of the sparse exact method; above it ``"exact"`` raises ``ValueError``.
    probing : {"auto", "rademacher", "coloured"}
        The probes, as in :func:`gcrflinalg.logdet`: coloured by a stencil-separating colouring
        of the pixels on the grid forms (``"auto"`` when ``K >= 2 C``), plain Rademacher otherwise.
        ``info["probe_classes"]`` is ``C``.
    rtol, solve_method
        Tolerance (default ``1e-10`` in float64, the default of :func:`gcrflinalg.solve` in
        float32) and method of the probes' solves (stochastic).

    Returns
    -------
    VarianceResult
        ``values`` and ``stderr`` of shape ``batch_shape + vector_shape`` (on the operator's backend,
        float64), ``method``, ``info``.
    """
    check_operator(op)
    t0 = time.perf_counter()
    if method not in ("auto", "exact", "stochastic"):
        raise ValueError(f"method must be 'auto', 'exact' or 'stochastic'; got {method!r}")
    check_probing(probing)
    kind = form_kind(op)
    if method == "auto":
        exact_ok = kind in ("lowrank", "lowrank_potts", "video") or (
            kind == "sparse" and op.size <= min(AUTO_EXACT_MAX_SIZE, max_size))
        method = "exact" if exact_ok else "stochastic"
    xp = op.xp
    if method == "exact":
        values = structured_variances(op, max_size)
        return VarianceResult(values=values, stderr=xp.zeros_like(values), method="exact",
                              info={"time_s": time.perf_counter() - t0})
    num_probes = positive_int(num_probes, "num_probes")
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 (the standard error needs two probes); got {num_probes}")
    entry_class, num_classes = probe_classes(op, num_probes, probing)
    probe_class = np.arange(num_probes) % num_classes
    gen = as_generator(rng)
    z = class_signs(gen, (num_probes,) + op.batch_shape + (op.size,), entry_class, probe_class, xp)
    if rtol is None:
        rtol = 1e-10 if op.dtype == np.float64 else default_rtol(op.dtype)
    result = solve(op, z.astype(op.dtype), method=solve_method, rtol=rtol)
    per_probe = z * result.x.astype(np.float64)  # (K, *batch, N)
    if entry_class is None:
        values = per_probe.mean(axis=0)
        stderr = per_probe.std(axis=0, ddof=1) / math.sqrt(num_probes)
    else:
        # entry i: the mean and standard error over the K_c probes of its class
        values = xp.zeros(per_probe.shape[1:])
        stderr = xp.zeros(per_probe.shape[1:])
        for c in range(num_classes):
            cols = xp.asarray(np.flatnonzero(entry_class == c))
            vals = per_probe[xp.asarray(np.flatnonzero(probe_class == c))][..., cols]
            values[..., cols] = vals.mean(axis=0)
            stderr[..., cols] = vals.std(axis=0, ddof=1) / math.sqrt(vals.shape[0])
    shape = op.batch_shape + op.vector_shape
    return VarianceResult(values=values.reshape(shape), stderr=stderr.reshape(shape), method="stochastic",
                          info={"num_probes": num_probes, "solve_method": result.method,
                                "converged": to_host(result.converged), "probe_classes": num_classes,
                                "time_s": time.perf_counter() - t0})
