"""Ritz values from CG's step coefficients: the Lanczos tridiagonal CG builds implicitly.

CG's step sizes ``alpha_k`` and direction coefficients ``beta_k`` are the entries of the Lanczos
tridiagonal ``T_m`` of ``A`` (of ``P A`` for PCG with preconditioner ``P``) on the Krylov space CG
explores (Saad, *Iterative Methods for Sparse Linear Systems*, Sec. 6.7.3)::

    T[0, 0]     = 1 / alpha_0
    T[j, j]     = 1 / alpha_j + beta_{j-1} / alpha_{j-1}         (j >= 1)
    T[j, j + 1] = T[j + 1, j] = sqrt(beta_j) / alpha_j

The eigenvalues of ``T_m`` (the Ritz values) lie in ``[lambda_min, lambda_max]`` and the extreme
ones converge to the extreme eigenvalues of the operator first, so ``theta_max / theta_min`` is a
lower estimate of the condition number ``kappa`` that sharpens as CG iterates.  Recording the
coefficients costs no product; :class:`LanczosRecord` keeps them on the device (one ``batch``-shaped
array per iteration) and builds the small tridiagonals once, on the host, at the end.
"""
from __future__ import annotations

import numpy as np

from .backend import to_host

__all__ = ["LanczosRecord", "ritz_values_from_coefficients"]


def ritz_values_from_coefficients(alpha, beta):
    """The ascending eigenvalues of the Lanczos tridiagonal of one CG run.

    Parameters
    ----------
    alpha : array_like, shape ``(m,)``
        CG's step sizes ``alpha_0 .. alpha_{m-1}`` (all ``> 0``).
    beta : array_like, shape ``(m - 1,)`` (longer is allowed; the rest is ignored)
        CG's direction coefficients ``beta_0 .. beta_{m-2}`` (all ``>= 0``).

    Returns
    -------
    numpy.ndarray, shape ``(m,)``, float64, ascending.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    m = alpha.size
    if m == 0:
        return np.empty(0)
    beta = np.asarray(beta, dtype=np.float64)[: m - 1]
    d = 1.0 / alpha
    d[1:] += beta / alpha[:-1]
    e = np.sqrt(np.maximum(beta, 0.0)) / alpha[:-1]
    if m == 1:
        return d
    if m <= _DENSE_MAX:  # LAPACK on the small dense matrix: less call overhead than the banded path
        t = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
        return np.linalg.eigvalsh(t)
    from scipy.linalg import eigvalsh_tridiagonal

    return np.sort(eigvalsh_tridiagonal(d, e))


#: tridiagonals up to this order are diagonalised as dense matrices
_DENSE_MAX = 64


class LanczosRecord:
    """CG's coefficients, per iteration and system, on the device; Ritz values at the end.

    ``alpha(a, used)`` records a step (``used``: the systems that took it), ``beta(b)`` the
    following direction coefficient, ``stop(mask)`` ends the record of the systems of ``mask``.
    CG stops it where the Lanczos relation between its coefficients and ``A`` breaks: at a restart
    from the true residual (a new Krylov space), and at a residual replacement that moves ``r`` by
    more than ``sqrt(eps)`` relative (a smaller move, the usual case while the residual is well
    above rounding level, perturbs ``T`` at rounding level only; a larger one, near the attainable
    accuracy, would push Ritz values outside the spectrum).  The Ritz values are those of the
    uninterrupted run from the start: the extreme ones converge first, so that run holds the
    spectral information.
    """

    def __init__(self, xp, batch):
        self.xp = xp
        self.batch = tuple(batch)
        self.alphas, self.alpha_used, self.betas = [], [], []
        self.end = xp.full(self.batch, -1, dtype=np.int64)  # -1: still recording

    def alpha(self, a, used):
        # copies (``batch``-shaped, small): the solver may update its masks in place later
        self.alphas.append(self.xp.array(a, copy=True))
        self.alpha_used.append(self.xp.array(used, copy=True))

    def beta(self, b):
        self.betas.append(self.xp.array(b, copy=True))

    def stop(self, mask):
        """End the record of the systems of ``mask`` (a boolean array of the batch shape) here."""
        self.end = self.xp.where(mask & (self.end < 0), len(self.alphas), self.end)

    def ritz(self):
        """``(ritz_values, condition_estimate)`` on the host.

        ``ritz_values``: shape ``(m,)`` for one system; ``(*batch, m_max)`` for a batch, each row
        ascending and padded with NaN after its own ``m`` values.  ``condition_estimate``:
        ``theta_max / theta_min`` (float, or an array of shape ``batch``); NaN for a system without
        a step (or with a non-positive smallest Ritz value, which rounding can give when
        ``kappa`` is beyond the dtype's reach).
        """
        xp = self.xp
        nsys = int(np.prod(self.batch, dtype=np.int64))
        k = len(self.alphas)
        if k:
            a = to_host(xp.stack(self.alphas)).astype(np.float64).reshape(k, nsys)
            au = to_host(xp.stack(self.alpha_used)).astype(bool).reshape(k, nsys)
        else:
            a = np.zeros((0, nsys))
            au = np.zeros((0, nsys), dtype=bool)
        kb = len(self.betas)
        b = to_host(xp.stack(self.betas)).astype(np.float64).reshape(kb, nsys) if kb else np.zeros((0, nsys))
        end = to_host(self.end).reshape(nsys)
        values = []
        for s in range(nsys):
            idx = np.flatnonzero(au[: k if end[s] < 0 else int(end[s]), s])
            # beta_j pairs with alpha_j; the last step's beta (if any) closes no new row
            bet = b[idx[:-1], s] if idx.size > 1 else np.empty(0)
            values.append(ritz_values_from_coefficients(a[idx, s], bet))
        m = max((v.size for v in values), default=0)
        out = np.full((nsys, m), np.nan)
        cond = np.full(nsys, np.nan)
        for s, v in enumerate(values):
            out[s, : v.size] = v
            if v.size and v[0] > 0:
                cond[s] = v[-1] / v[0]
        if self.batch == ():
            return out[0], float(cond[0])
        return out.reshape(self.batch + (m,)), cond.reshape(self.batch)
