"""Result records of the Gaussian computations (log-determinant, marginal variances, samples)."""
from __future__ import annotations

import dataclasses

__all__ = ["LogDetResult", "VarianceResult", "SampleResult"]


@dataclasses.dataclass
class LogDetResult:
    """``log det M`` of every system of a batch.

    Attributes
    ----------
    value : numpy.ndarray, shape ``batch_shape`` (0-d for one system), float64
        The log-determinant (the estimate, for ``method="slq"``).
    stderr : numpy.ndarray, shape ``batch_shape``
        Standard error of ``value``: 0 when exact; for SLQ the sample standard deviation of the
        probes' estimates divided by ``sqrt(num_probes)``.
    method : str
        ``"exact"`` or ``"slq"``.
    info : dict
        Method details (``num_probes``, ``degree``, ``matvecs``, ``time_s`` ...).
    inv_quad : numpy.ndarray or None, shape ``batch_shape``, float64
        ``b^T M^{-1} b`` for the ``inv_quad_rhs`` given to :func:`gcrflinalg.logdet` (always exact),
        else None.
    """

    value: object
    stderr: object
    method: str
    info: dict = dataclasses.field(default_factory=dict)
    inv_quad: object = None


@dataclasses.dataclass
class VarianceResult:
    """The marginal variances ``diag(M^{-1})`` of every system.

    Attributes
    ----------
    values : array, shape ``batch_shape + vector_shape``
        ``Var[x_i] = (M^{-1})_ii`` (estimates for ``method="stochastic"``).
    stderr : array, shape of ``values``
        Standard error per entry (0 when exact).
    method : str
        ``"exact"`` or ``"stochastic"``.
    info : dict
    """

    values: object
    stderr: object
    method: str
    info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class SampleResult:
    """Samples of ``N(M^{-1} b, M^{-1})``.

    Attributes
    ----------
    samples : array, shape ``(num_samples, *b.shape)``
    method : str
        ``"perturb_and_map"`` or ``"exact"`` (exact in exact arithmetic; the error is the rounding
        of a direct solve) or ``"lanczos"`` (Krylov approximation of ``M^{-1/2} z``).
    error : float
        A bound or estimate of the relative error ``||x_k - M^{-1/2} z|| / ||M^{-1/2} z||`` of the
        worst sample: 0 for the exact methods, the Lanczos stopping estimate otherwise.
    info : dict
        ``iterations``, ``matvecs``, ``time_s`` ...
    mean : array, shape of ``b``
        ``M^{-1} b``.
    """

    samples: object
    method: str
    error: float
    info: dict = dataclasses.field(default_factory=dict)
    mean: object = None
