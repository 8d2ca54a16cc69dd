r"""Gaussian mean-field inference from the canonical (information) form.

A G-CRF with energy ``E(x) = 1/2 x^T M x - b^T x`` is the Gaussian

.. math::  p(x) \propto \exp(-\tfrac12 x^T J x + h^T x), \qquad J = M,\; h = b,

with precision matrix ``J`` (symmetric positive definite) and potential vector ``h``.  Its mean is
``mu = J^{-1} h``, the G-CRF solution.

**Mean-field.**  Approximate ``p`` by a fully factorised ``q(x) = prod_i q_i(x_i)``.  Minimising
``KL(q || p)`` over one factor with the others held fixed gives ``log q_i(x_i) = E_{q_{-i}}[log p(x)]
+ const``.  Only the terms of ``log p`` that contain ``x_i`` matter:

.. math::
    \log q_i(x_i) = -\tfrac12 J_{ii} x_i^2
                    + x_i \Bigl(h_i - \sum_{j \ne i} J_{ij} \mu_j\Bigr) + \text{const},

so ``q_i`` is Gaussian with

* **precision** ``J_ii`` (variance ``1 / J_ii``, fixed: it never depends on the other factors), and
* **mean** ``mu_i = (h_i - sum_{j != i} J_ij mu_j) / J_ii``.

Read ``-J_ij mu_j`` as the *message* that neighbour ``j`` sends to ``i``: the update adds the
messages to the local potential ``h_i`` and divides by the local precision.  Only the variables
coupled to ``i`` (``J_ij != 0``: the pixel's labels and its neighbours in a grid G-CRF) send
non-zero messages.

**Schedules.**  The *parallel* schedule updates every mean at once from the previous means,

.. math::  \mu^{(k+1)} = D^{-1} \bigl(h - (J - D)\, \mu^{(k)}\bigr), \qquad D = \operatorname{diag}(J),

which is, line for line, the Jacobi iteration for ``J mu = h``.  The *sequential* schedule visits
the variables in index order ``i = 0, 1, ..., N-1``, each update using the newest means,

.. math::  \mu_i \leftarrow \Bigl(h_i - \sum_{j < i} J_{ij} \mu^{(k+1)}_j
                               - \sum_{j > i} J_{ij} \mu^{(k)}_j\Bigr) / J_{ii},

which is the Gauss–Seidel sweep in natural ordering.  Sequential mean-field is coordinate ascent
on the variational objective and converges for every SPD ``J``; parallel mean-field converges only
when the Jacobi iteration does (``2 D - J`` positive definite), and damping repairs it otherwise.

**Damping** ``gamma`` in ``[0, 1)`` keeps a fraction of the old mean:
``mu_i <- gamma mu_i + (1 - gamma) mu_i^new``: weighted Jacobi (parallel) or SOR (sequential) with
relaxation ``omega = 1 - gamma``.

**What mean-field gets right.**  At a fixed point ``J mu = h``: the means are exact.  The variances
``1 / J_ii`` are not: they never exceed the true marginal variances ``(J^{-1})_{ii}``.

The code here follows these formulas directly and shares nothing with the :mod:`solvers` package,
so comparing the two (``python -m studies.meanfield``) is an independent check of both.
"""
from __future__ import annotations

import dataclasses
import numbers
import time
from typing import Any

import numba
import numpy as np
from scipy.sparse import csr_matrix

from .backend import asarray, get_array_module, sparse_module, to_host
from ._validation import check_finite, floating_dtype

__all__ = ["MeanFieldResult", "parallel_meanfield", "sequential_meanfield", "meanfield"]

SCHEDULES = ("parallel", "sequential")


@dataclasses.dataclass(repr=False)
class MeanFieldResult:
    """The means of every iteration of Gaussian mean-field, and the factors' variances.

    Attributes
    ----------
    means : array, shape ``(iterations + 1, *batch, N)``
        ``means[k]`` holds the factor means ``mu^(k)`` after ``k`` iterations (``means[0]`` is the
        initial guess); ``batch`` are the leading axes of ``h`` (several potentials, one ``J``).
        NumPy or CuPy, like the inputs.
    variances : array, shape ``(N,)``
        The variances ``1 / J_ii`` of the factors ``q_i`` (the same at every iteration).
    residual_norms : numpy.ndarray, shape ``(iterations + 1, *batch)``
        ``||h - J mu^(k)||_2`` for every iteration, on the host.
    schedule : str
        ``"parallel"`` or ``"sequential"``.
    damping : float
        The damping ``gamma`` that was used.
    time_s : float
        Wall-clock time of the call in seconds.
    h_norm : float or numpy.ndarray of shape ``batch``
        ``||h||_2``, for :attr:`relative_residuals`.
    """

    means: Any
    variances: Any
    residual_norms: np.ndarray
    schedule: str
    damping: float
    time_s: float
    h_norm: Any = None

    @property
    def mean(self):
        """The final means ``mu^(iterations)``, shape ``(*batch, N)``."""
        return self.means[-1]

    @property
    def iterations(self) -> int:
        """The number of mean-field iterations (sweeps) that were run."""
        return int(self.means.shape[0]) - 1

    @property
    def relative_residuals(self) -> np.ndarray:
        """``||h - J mu^(k)|| / ||h||`` per iteration, shape ``(iterations + 1, *batch)``."""
        hn = np.asarray(self.h_norm, dtype=np.float64)
        return self.residual_norms / np.where(hn > 0, hn, 1.0)

    def __repr__(self):
        rel = self.relative_residuals[-1]
        return (f"MeanFieldResult(schedule={self.schedule!r}, iterations={self.iterations}, "
                f"N={self.means.shape[-1]}, damping={self.damping}, "
                f"relative_residual={float(np.max(rel)):.3e}, time_s={self.time_s:.4g})")


# ---------------------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class _CanonicalForm:
    """``J`` split into the local precisions ``diag(J)`` and the couplings ``J - diag(J)``."""

    xp: Any
    dtype: np.dtype
    n: int
    precisions: Any  # (N,) J_ii
    couplings: Any  # (N, N) dense or CSR: J with its diagonal removed
    sparse: bool
    h: Any  # (*batch, N)
    mu0: Any  # (*batch, N), a fresh array


def _is_sparse(J) -> bool:
    mod = type(J).__module__.split(".")[0]
    if mod not in ("scipy", "cupyx"):
        return False
    return bool(sparse_module(get_array_module(J)).issparse(J))


def _is_gcrf_operator(J) -> bool:
    return hasattr(J, "vector_shape") and hasattr(J, "to_dense") and hasattr(J, "batch_shape")


def _operator_matrix(op):
    """One system's ``M`` from a G-CRF operator: its CSR matrix when the form has one, else dense."""
    if op.batch_shape != ():
        raise ValueError(f"J: mean-field takes one system; the operator has batch_shape {op.batch_shape} "
                         "(build one operator per batch item)")
    for name in ("to_sparse", "tocsr", "to_csr"):
        method = getattr(op, name, None)
        if callable(method):
            try:
                M = method()
            except (TypeError, NotImplementedError):
                continue
            if _is_sparse(M) and tuple(M.shape) == (op.size, op.size):
                return M
    return op.to_dense()


def _flatten_vector(arr, vector_shape, n):
    """``arr`` of shape ``(..., *vector_shape)`` (an operator's layout) viewed as ``(..., N)``."""
    if vector_shape is not None and arr.ndim >= len(vector_shape) and \
            tuple(arr.shape[arr.ndim - len(vector_shape):]) == vector_shape:
        return arr.reshape(arr.shape[: arr.ndim - len(vector_shape)] + (n,))
    return arr


def _canonical_form(J, h, mu0) -> _CanonicalForm:
    """Validate ``J``, ``h``, ``mu0`` and split ``J`` into precisions and couplings (no mutation)."""
    vector_shape = None
    if _is_gcrf_operator(J):
        vector_shape = tuple(J.vector_shape)
        J = _operator_matrix(J)
    sparse = _is_sparse(J)
    if not sparse:
        J = asarray(J)
        floating_dtype(J.dtype)  # rejects complex and non-numeric J
        if J.ndim != 2:
            raise ValueError(f"J must be a square matrix of shape (N, N); got shape {tuple(J.shape)}")
    if J.shape[0] != J.shape[1]:
        raise ValueError(f"J must be square; got shape {tuple(J.shape)}")
    n = int(J.shape[0])
    xp = get_array_module(J)
    h = asarray(h)
    if get_array_module(h) is not xp:
        raise TypeError("J and h live on different devices (NumPy and CuPy mixed)")
    if h.dtype.kind == "c":
        raise ValueError("h: G-CRF systems are real; complex input is not supported")
    h = _flatten_vector(h, vector_shape, n)
    if h.ndim == 0 or h.shape[-1] != n:
        raise ValueError(f"h must have shape (..., {n}) to match J of shape ({n}, {n}); got {tuple(h.shape)}")
    dtype = floating_dtype(np.result_type(floating_dtype(J.dtype), floating_dtype(h.dtype)))

    if sparse:
        J = J.tocsr().copy().astype(dtype)  # a private copy: sum_duplicates works in place
        J.sum_duplicates()
        check_finite(J.data, "J")
        precisions = xp.asarray(J.diagonal())
        skew = (J - J.T).data
        asym = float(xp.abs(skew).max()) if skew.size else 0.0
        scale = float(xp.abs(J.data).max()) if J.data.size else 0.0
        couplings = J - sparse_module(xp).diags(precisions, format="csr")
        couplings.eliminate_zeros()
        couplings.sort_indices()
    else:
        J = J.astype(dtype, copy=False)
        check_finite(J, "J")
        precisions = xp.diagonal(J).copy()
        asym = float(xp.abs(J - J.T).max()) if n else 0.0
        scale = float(xp.abs(J).max()) if n else 0.0
        couplings = J.copy()
        xp.fill_diagonal(couplings, 0)
    if asym > 1e3 * np.finfo(dtype).eps * max(scale, 1e-300):
        raise ValueError(f"J must be symmetric (a precision matrix); max |J - J^T| = {asym:.3g}")
    if n and not bool((precisions > 0).all()):
        i = int(to_host(xp.argmin(precisions)))
        raise ValueError(f"J's diagonal holds the precisions of the mean-field factors and must be > 0; "
                         f"J[{i}, {i}] = {float(precisions[i]):.6g}")

    check_finite(h, "h")
    h = h.astype(dtype, copy=False)
    if mu0 is None:
        mu = xp.zeros(h.shape, dtype=dtype)
    else:
        mu0 = asarray(mu0)
        if get_array_module(mu0) is not xp:
            raise TypeError("mu0 and J live on different devices (NumPy and CuPy mixed)")
        mu0 = _flatten_vector(mu0, vector_shape, n)
        if tuple(mu0.shape) != tuple(h.shape):
            raise ValueError(f"mu0 must have the shape of h {tuple(h.shape)}; got {tuple(mu0.shape)}")
        if mu0.dtype.kind == "c":
            raise ValueError("mu0: G-CRF systems are real; complex input is not supported")
        check_finite(mu0, "mu0")
        mu = mu0.astype(dtype, copy=True)
    return _CanonicalForm(xp=xp, dtype=np.dtype(dtype), n=n, precisions=precisions, couplings=couplings,
                          sparse=sparse, h=h, mu0=mu)


def _check_schedule_options(iterations, damping) -> tuple[int, float]:
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0; got {iterations!r}")
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real) or not 0.0 <= damping < 1.0:
        raise ValueError(f"damping must be a real number in [0, 1); got {damping!r}")
    return int(iterations), float(damping)


def _messages(cf: _CanonicalForm, mu):
    """``sum_{j != i} J_ij mu_j`` for every ``i``: ``(J - D) mu`` for ``mu`` of shape ``(..., N)``."""
    if cf.sparse:
        flat = mu.reshape(-1, cf.n)
        return cf.xp.asarray(cf.couplings @ flat.T).T.reshape(mu.shape)
    return mu @ cf.couplings.T


def _residual_norms(cf: _CanonicalForm, means) -> np.ndarray:
    """``||h - J mu||_2`` for every row of ``means`` (shape ``(K, *batch, N)``), on the host."""
    xp = cf.xp
    r = cf.h - _messages(cf, means) - cf.precisions * means
    return to_host(xp.sqrt(xp.sum(r * r, axis=-1))).astype(np.float64)


def _result(cf, means, schedule, damping, t0) -> MeanFieldResult:
    xp = cf.xp
    hn = to_host(xp.sqrt(xp.sum(cf.h * cf.h, axis=-1))).astype(np.float64)
    return MeanFieldResult(
        means=means, variances=1.0 / cf.precisions, residual_norms=_residual_norms(cf, means),
        schedule=schedule, damping=damping, time_s=time.perf_counter() - t0,
        h_norm=float(hn) if hn.ndim == 0 else hn,
    )


# ------------------------------------------------------------------------------------ schedules
def parallel_meanfield(J, h, mu0=None, *, iterations: int = 50, damping: float = 0.0) -> MeanFieldResult:
    r"""Parallel (synchronous) Gaussian mean-field: every factor updated from the previous means.

    .. math::
        \mu^{(k+1)}_i = \gamma\, \mu^{(k)}_i + (1 - \gamma)\,
                        \frac{h_i - \sum_{j \ne i} J_{ij}\, \mu^{(k)}_j}{J_{ii}}

    for all ``i`` at once; ``gamma`` is the damping.  See the module docstring for the derivation.

    Parameters
    ----------
    J : array ``(N, N)``, SciPy/CuPy sparse matrix ``(N, N)``, or an unbatched G-CRF operator
        The precision matrix, symmetric with a positive diagonal.  An operator gives its CSR matrix
        when its form has one, else its dense matrix (``to_dense()``: small systems only).
    h : array, shape ``(..., N)`` (or ``(..., *vector_shape)`` with an operator)
        The potential vector (the G-CRF unaries ``b``); leading axes are independent potentials.
    mu0 : array, shape of ``h``, optional
        The initial means ``mu^(0)``; zeros by default.
    iterations : int
        Number of updates.
    damping : float in ``[0, 1)``
        ``gamma``; ``0`` is plain mean-field.

    Returns
    -------
    MeanFieldResult
        ``means`` of shape ``(iterations + 1, ..., N)`` in the computational dtype (float32 if both
        ``J`` and ``h`` are float32, else float64): the whole history is kept, so memory grows
        as ``(iterations + 1) N``.  ``variances = 1 / diag(J)``.

    Raises
    ------
    ValueError
        Shapes that do not match, NaN/Inf, complex input, a non-symmetric ``J``, a diagonal entry
        ``J_ii <= 0``, ``iterations < 0`` or ``damping`` outside ``[0, 1)``.
    """
    t0 = time.perf_counter()
    iterations, damping = _check_schedule_options(iterations, damping)
    cf = _canonical_form(J, h, mu0)
    xp = cf.xp
    means = xp.empty((iterations + 1,) + tuple(cf.h.shape), dtype=cf.dtype)
    means[0] = cf.mu0
    mu = cf.mu0
    for k in range(iterations):
        new = (cf.h - _messages(cf, mu)) / cf.precisions
        mu = new if damping == 0.0 else damping * mu + (1.0 - damping) * new
        means[k + 1] = mu
    return _result(cf, means, "parallel", damping, t0)


@numba.njit(cache=True)
def _sequential_sweeps(indptr, indices, data, precisions, h, mu, damping, means):  # pragma: no cover - compiled
    """``means.shape[0] - 1`` sequential sweeps over the CSR rows of the couplings ``J - D``.

    ``h``, ``mu``: ``(R, N)`` (``mu`` updated in place); ``means``: ``(sweeps + 1, R, N)``.
    """
    n_rows = h.shape[0]
    n = h.shape[1]
    means[0] = mu
    for sweep in range(1, means.shape[0]):
        for r in range(n_rows):
            for i in range(n):
                # local potential plus the messages -J_ij mu_j of i's neighbours (newest means)
                field = h[r, i]
                for k in range(indptr[i], indptr[i + 1]):
                    field -= data[k] * mu[r, indices[k]]
                if damping == 0.0:
                    mu[r, i] = field / precisions[i]
                else:
                    mu[r, i] = damping * mu[r, i] + (1.0 - damping) * (field / precisions[i])
        means[sweep] = mu


def sequential_meanfield(J, h, mu0=None, *, iterations: int = 50, damping: float = 0.0) -> MeanFieldResult:
    r"""Sequential (asynchronous) Gaussian mean-field: factors updated one after another.

    One iteration visits ``i = 0, 1, ..., N - 1`` in index order and sets

    .. math::
        \mu_i \leftarrow \gamma\, \mu_i + (1 - \gamma)\,
                         \frac{h_i - \sum_{j \ne i} J_{ij}\, \mu_j}{J_{ii}}

    with the newest means ``mu_j`` (already updated in this sweep for ``j < i``).  This is
    coordinate ascent on the mean-field objective; it converges for every SPD ``J`` when
    ``gamma = 0``.  The sweep runs in a compiled loop over the rows of ``J``'s couplings in CSR
    form, on the host (CuPy inputs are copied there and the means copied back).

    Parameters and returns as :func:`parallel_meanfield`; ``means[k]`` holds the means after ``k``
    full sweeps.
    """
    t0 = time.perf_counter()
    iterations, damping = _check_schedule_options(iterations, damping)
    cf = _canonical_form(J, h, mu0)
    xp = cf.xp
    # the couplings J - D as a host CSR matrix (rows = the neighbours sending messages to i)
    couplings = cf.couplings
    if cf.sparse and xp is not np:
        couplings = couplings.get()
    couplings = csr_matrix(couplings if cf.sparse else to_host(couplings))
    couplings.sort_indices()
    batch = tuple(cf.h.shape[:-1])
    h_rows = np.ascontiguousarray(to_host(cf.h).reshape(-1, cf.n))
    mu_rows = np.ascontiguousarray(to_host(cf.mu0).reshape(-1, cf.n))
    means = np.empty((iterations + 1,) + h_rows.shape, dtype=cf.dtype)
    _sequential_sweeps(couplings.indptr.astype(np.int64), couplings.indices.astype(np.int64),
                       np.ascontiguousarray(couplings.data, dtype=cf.dtype),
                       np.ascontiguousarray(to_host(cf.precisions), dtype=cf.dtype),
                       h_rows, mu_rows, damping, means)
    means = xp.asarray(means.reshape((iterations + 1,) + batch + (cf.n,)))
    return _result(cf, means, "sequential", damping, t0)


def meanfield(J, h, mu0=None, *, schedule: str = "sequential", iterations: int = 50,
              damping: float = 0.0) -> MeanFieldResult:
    """Gaussian mean-field with the given ``schedule`` (``"parallel"`` or ``"sequential"``).

    See :func:`parallel_meanfield` and :func:`sequential_meanfield`.
    """
    if schedule == "parallel":
        return parallel_meanfield(J, h, mu0, iterations=iterations, damping=damping)
    if schedule == "sequential":
        return sequential_meanfield(J, h, mu0, iterations=iterations, damping=damping)
    raise ValueError(f"schedule must be one of {SCHEDULES}; got {schedule!r}")
