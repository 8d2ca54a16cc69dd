"""``log det M`` of a G-CRF precision matrix: exact from the form's structure, or by stochastic
Lanczos quadrature (SLQ) with every probe in lock-step."""
from __future__ import annotations

import math
import time

import numpy as np

from ..backend import to_host
from ._common import (as_generator, block_lanczos_step, block_product, block_product_quadratic, check_operator, form_kind,
                      positive_int, random_bits, synced)
from .exact import LOGDET_EXACT_MAX_SIZE, lowrank_inv_quad, structured_logdet
from .lanczos import LanczosState, quadrature
from .probes import check_probing, class_estimate, class_signs, probe_classes, probe_columns
from .results import LogDetResult

__all__ = ["logdet", "slq_logdet", "AUTO_EXACT_MAX_SIZE"]

#: ``method="auto"`` factors a grid or multi-resolution system exactly up to this many unknowns
#: (a sparse LU of about a second on one core) and runs SLQ above it.
AUTO_EXACT_MAX_SIZE = 50_000


def logdet(op, *, method="auto", num_probes=30, degree=30, rng=None, max_size=LOGDET_EXACT_MAX_SIZE,
           reorthogonalize=False, inv_quad_rhs=None, probing="auto"):
    """The log-determinant ``log det M`` of every system of a G-CRF operator.

    Parameters
    ----------
    op : GCRFOperator
        ``M = lam I + A`` of any form, batched or not.
    method : {"auto", "exact", "slq"}
        ``"exact"``: the matrix determinant lemma on the low-rank forms
        (``N log lam + sum_i log(1 + s_i / lam)``, ``s`` the eigenvalues of the ``D x D`` Gram
        matrix; on 3.5 for the label-sum and per-label systems of the ``L + 1`` split), the cached
        capacitance factor on video, and a sparse LU (``L D L^T`` without pivoting) of the CSR matrix
        on the grid and multi-resolution forms, for at most ``max_size`` unknowns.
        ``"slq"``: stochastic Lanczos quadrature, ``num_probes`` random-sign probes ``z_k`` of
        ``degree`` Lanczos steps each, all run in lock-step as one batch, with
        ``z_k^T log(M) z_k ~ ||z_k||^2 sum_i S_k[0, i]^2 log(theta_ki)`` (``theta_k``, ``S_k`` the
        Ritz values and eigenvectors of probe ``k``'s tridiagonal).  Plain probes (signs on every
        unknown) give ``log det M ~ (1/K) sum_k z_k^T log(M) z_k``; coloured probes (``probing``)
        sum the class means of the probes of each class.
        ``"auto"``: exact on the low-rank and video forms and on sparse systems of at most
        :data:`AUTO_EXACT_MAX_SIZE` unknowns, SLQ otherwise.
    num_probes, degree : int
        SLQ's probe count ``K`` (>= 2, for the standard error) and Lanczos steps per probe.
    rng : None, int or numpy.random.Generator
        The probes' random source (SLQ).
    max_size : int
        Size limit of the sparse exact factorisation (:data:`LOGDET_EXACT_MAX_SIZE` by default);
        above it ``method="exact"`` raises ``ValueError``.
    reorthogonalize : bool
        Full reorthogonalisation in SLQ's Lanczos runs (memory ``K * degree * N`` per system).
    probing : {"auto", "rademacher", "coloured"}
        SLQ's probes.  ``"rademacher"``: signs on every unknown (Hutchinson).  ``"coloured"``: each
        probe carries signs on one class of a colouring of the pixel grid in which no two
        neighbouring pixels (on the form's stencil) share a class (red-black on the
        4-neighbourhood; :mod:`gcrflinalg.gaussian.probes`), the ``K`` probes spread round-robin
        over the ``C`` classes; still unbiased, with a variance that keeps only the entries of
        ``log M`` between pixels at least two steps apart (2-4x smaller errors on the built-in grid
        problems at the same ``K`` and ``degree``).  Grid forms with ``K >= 2 C`` only.
        ``"auto"``: coloured where it applies, plain otherwise.  ``info["probe_classes"]`` is ``C``.
    inv_quad_rhs : array, shape ``batch_shape + vector_shape`` or ``batch_shape + (N,)``, optional
        Also compute the quadratic term ``b^T M^{-1} b`` of the Gaussian likelihood for this ``b``
        (``result.inv_quad``, exact): on the low-rank form ``M = lam I + E^T E`` from the cached
        capacitance factor in ``D``-space, ``(b^T b - c^T F c) / lam`` with ``c = E b`` and
        ``F = (lam I_D + E E^T)^{-1}`` (one pass over ``E``); on the other forms ``b^T x`` with
        ``x`` from :func:`gcrflinalg.solve`.

    Returns
    -------
    LogDetResult
        ``value`` and ``stderr`` of shape ``batch_shape`` (float64 NumPy arrays; 0-d for one system),
        ``method``, and ``info``.  ``stderr`` is 0 when exact; for SLQ it is
        ``sqrt(sum_c s_c^2 / K_c)`` with ``s_c^2`` the sample variance of the ``K_c`` per-probe
        values of class ``c`` (plain probes: one class, the standard deviation of the ``K`` values
        over ``sqrt(K)``); the quadrature's own bias, which decays geometrically in ``degree`` for
        these well-conditioned systems, is not included.

    Raises
    ------
    NotPositiveDefiniteError
        ``M`` is not positive definite (a failed certificate or Cholesky factor, a non-positive LU
        pivot, or a Ritz value ``<= 0`` in SLQ).
    ValueError
        Unknown method, ``"exact"`` on a form without a factorisation or above ``max_size``.
    """
    check_operator(op)
    t0 = time.perf_counter()
    if method not in ("auto", "exact", "slq"):
        raise ValueError(f"method must be 'auto', 'exact' or 'slq'; got {method!r}")
    check_probing(probing)
    kind = form_kind(op)
    quad = None if inv_quad_rhs is None else _inv_quad(op, inv_quad_rhs, kind)
    if method == "auto":
        exact_ok = kind in ("lowrank", "lowrank_potts", "video") or (
            kind == "sparse" and op.size <= min(AUTO_EXACT_MAX_SIZE, max_size))
        method = "exact" if exact_ok else "slq"
    if method == "exact":
        value = np.asarray(to_host(structured_logdet(op, max_size)), dtype=np.float64)
        return LogDetResult(value=value, stderr=np.zeros_like(value), method="exact",
                            info={"time_s": time.perf_counter() - t0}, inv_quad=quad)
    value, stderr, info = slq_logdet(op, num_probes=num_probes, degree=degree, rng=rng,
                                     reorthogonalize=reorthogonalize, probing=probing)
    info["time_s"] = time.perf_counter() - t0
    return LogDetResult(value=value, stderr=stderr, method="slq", info=info, inv_quad=quad)


def _inv_quad(op, b, kind):
    """``b^T M^{-1} b`` per system, shape ``batch_shape`` (float64 NumPy)."""
    arr, _ = op.as_vectors(b, "inv_quad_rhs")
    if arr.shape != op.batch_shape + op.vector_shape:
        raise ValueError(f"inv_quad_rhs must hold one vector per system, shape {op.batch_shape + op.vector_shape} "
                         f"or {op.batch_shape + (op.size,)}; got {tuple(np.shape(b))}")
    bflat = arr.reshape(op.batch_shape + (op.size,))
    if kind == "lowrank":
        quad = lowrank_inv_quad(op, bflat)
    else:
        from ..solve import solve

        x = solve(op, bflat).x
        quad = (bflat.astype(np.float64) * x.astype(np.float64)).sum(axis=-1)
    return np.asarray(to_host(quad), dtype=np.float64)


def slq_logdet(op, *, num_probes=30, degree=30, rng=None, reorthogonalize=False, probing="auto"):
    """SLQ estimate of ``log det M``: ``(value, stderr, info)`` (see :func:`logdet`)."""
    num_probes = positive_int(num_probes, "num_probes")
    degree = positive_int(degree, "degree")
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 (the standard error needs two probes); got {num_probes}")
    entry_class, num_classes = probe_classes(op, num_probes, probing)
    probe_class = np.arange(num_probes) % num_classes
    gen = as_generator(rng)
    n = op.size
    if not op.batch_shape and op.xp is np:
        # probe-minor layout (Fortran-ordered (K, N)): the column products read it without a copy
        # (see block_product); the same signs as rademacher() draws, written in one pass
        bits = random_bits(gen, num_probes * n).reshape(num_probes, n)
        z = probe_columns(bits, entry_class, probe_class).T
    else:
        z = class_signs(gen, (num_probes,) + op.batch_shape + (n,), entry_class, probe_class, op.xp)
    # ||z_k||^2: N for plain probes, the size of the probe's class otherwise
    norms2 = (np.full(num_probes, float(n)) if entry_class is None
              else np.bincount(entry_class, minlength=num_classes)[probe_class].astype(np.float64))
    with synced(op):  # the parameters checked once for all the products
        state = LanczosState(block_product(op), z, reorthogonalize=reorthogonalize,
                             apply_quadratic=block_product_quadratic(op), fused_step=block_lanczos_step(op),
                             overwrite=True, breakdown=256 * np.finfo(op.dtype).eps)
        state.run(min(degree, n))
    per_probe = quadrature(state, op.xp.log, what=type(op).__name__)  # z^T log(M) z / ||z||^2
    per_probe = np.asarray(to_host(per_probe), dtype=np.float64)
    per_probe = per_probe * norms2.reshape((num_probes,) + (1,) * (per_probe.ndim - 1))
    value, stderr = class_estimate(per_probe, probe_class, num_classes)
    info = {"num_probes": num_probes, "degree": degree, "matvecs": state.matvecs,
            "probe_classes": num_classes,
            "steps": np.asarray(to_host(state.sizes)).max(axis=0) if state.sizes.size else 0}
    return value, stderr, info
