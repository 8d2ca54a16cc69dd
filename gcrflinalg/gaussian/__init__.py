"""The G-CRF as a Gaussian ``x ~ N(M^{-1} b, M^{-1})``: log-determinant, marginal variances, samples
and the likelihood (docs/design.md section 9).

- :func:`logdet` — ``log det M``: exact (determinant lemma, capacitance or sparse LU) or stochastic
  Lanczos quadrature with a standard error;
- :func:`marginal_variances` — ``diag(M^{-1})``: exact (Woodbury, capacitance, sparse LU) or a
  stochastic diagonal estimator with error bars;
- :func:`sample` — samples of ``N(M^{-1} b, M^{-1})``: exact perturb-and-MAP / square root on the
  low-rank and video forms, a Lanczos approximation of ``M^{-1/2} z`` with a stopping rule
  elsewhere;
- :func:`gaussian_nll` — ``-log N(y; M^{-1} b, M^{-1})`` and its gradients (the torch and JAX
  layers wrap it).
"""
from __future__ import annotations

from .results import LogDetResult, SampleResult, VarianceResult
from .logdet import logdet
from .variances import marginal_variances
from .sampling import sample
from .likelihood import NLLResult, gaussian_nll, logdet_gradients

__all__ = ["logdet", "marginal_variances", "sample", "gaussian_nll", "logdet_gradients", "NLLResult",
           "LogDetResult", "VarianceResult",
           "SampleResult"]
