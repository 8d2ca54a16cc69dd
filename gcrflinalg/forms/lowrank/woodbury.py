"""Exact solves with a shift plus a low-rank term: ``M = lam I_N + U^T C U`` (Woodbury identity).

``U`` has shape ``(R, N)`` with ``R`` small (the embedding dimension), ``C`` is a small symmetric
*core*: the identity, a scalar ``c`` (either sign), or an ``R x R`` matrix.  Everything is done in
the ``R``-dimensional space from the Gram matrix ``G = U U^T``: one ``R x R`` factorisation gives
the exact solve and a positive-definiteness certificate, and the eigenvalues of ``G`` give the
spectrum of ``M``.  Callers apply ``U`` and ``U^T`` themselves (a dense GEMM, a block-diagonal
product per frame, ...):

    factor = WoodburyFactor(gram, lam, core)          # once per operator, O(R^3)
    if not factor.is_positive_definite(): ...         # factor.lam_bound is the violated bound
    y = factor.coefficients(U @ b)                    # O(R^2) per right-hand side
    x = (b - U.T @ y) / lam                           # x = M^{-1} b
    u_x = factor.range_solve(U @ b)                   # U x, without touching N-sized data

Formulas (``G = Q diag(s) Q^T``, ``s >= 0``):

* scalar core ``c`` (``C = c I_R``; ``core=None`` is ``c = 1``): the eigenvalues of ``M`` are
  ``lam + c s_i`` and ``lam``;
  ``M^{-1} = (I - U^T K U) / lam`` with ``K = c (lam I_R + c G)^{-1} = Q diag(c / (lam + c s)) Q^T``,
  and ``U M^{-1} = F U`` with ``F = (lam I_R + c G)^{-1}``.  The capacitance matrix
  ``lam I_R + c G`` is factored by Cholesky (it is positive definite iff ``M`` is); an indefinite
  but invertible ``M`` falls back to the eigendecomposition.  No ``s^{-1}`` appears, so the formula
  is stable for rank-deficient ``U``.  ``K`` and ``F`` are symmetric, so row-major callers may
  multiply from the right (``(U b)^T K``).
* matrix core ``C``: with ``V = U^T Q S^{-1/2}`` (orthonormal columns on the numerical range of
  ``U^T``) ``M = lam I + V B V^T``, ``B = S^{1/2} Q^T C Q S^{1/2} = Z diag(mu) Z^T``; the eigenvalues
  of ``M`` are ``lam + mu_i`` and ``lam``; ``K = Q S^{-1/2} Z diag(mu / (lam + mu)) Z^T S^{-1/2} Q^T``
  and ``F = Q S^{1/2} Z diag(1 / (lam + mu)) Z^T S^{-1/2} Q^T``.  Directions with
  ``s_i <= R * eps * max(s)`` are numerically outside the range of ``U^T`` and are dropped.

Accuracy.  The ``R x R`` factorisations are computed in float64 whatever the operator's dtype.
The solve ``x = (b - U^T y) / lam`` is forward stable with relative error ``O(eps * cond(M))``,
``cond(M)`` the ratio of the extreme moduli of ``lam`` and ``lam + c s_i`` (or ``lam + mu_i``): it
loses accuracy where ``lam`` is small against ``c s`` (cancellation in ``b - U^T y``) and, for a
negative core, where ``lam`` is close to the bound ``-c max(s)`` (the factor ``1 / (lam + c s)``
blows up).  For a matrix core the kept directions with small ``s_i`` add a relative error of order
``eps * max(s) / s_i``.
"""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module

__all__ = ["WoodburyFactor", "gram_eigh"]


def gram_eigh(gram):
    """Eigendecomposition of the symmetric positive semi-definite Gram matrix ``G = U U^T``.

    Parameters
    ----------
    gram : array, shape ``(..., R, R)``

    Returns
    -------
    s : array, shape ``(..., R)``, float64
        Eigenvalues in ascending order, clipped at 0 (rounding can make them slightly negative).
    q : array, shape ``(..., R, R)``, float64
        Orthonormal eigenvectors in the columns.
    """
    xp = get_array_module(gram)
    g = gram.astype(np.float64, copy=False)
    g = 0.5 * (g + xp.swapaxes(g, -1, -2))
    s, q = xp.linalg.eigh(g)
    return xp.maximum(s, 0.0), q


class WoodburyFactor:
    """Factorisation of ``M = lam I_N + U^T C U`` held in the ``R``-dimensional space.

    Parameters
    ----------
    gram : array, shape ``(..., R, R)``, optional
        ``G = U U^T``.  Give ``gram``, ``eigh`` or both.
    lam : array or float, broadcastable to the batch shape ``...``
        The shift; the factor is valid for any ``lam`` with ``M`` invertible.
    core : None, float or array of shape ``(...)``, or array of shape ``(..., R, R)``
        ``None``: ``C = I``.  A scalar per system: ``C = c I`` (``c < 0`` allowed).  A symmetric
        matrix per system: the general core.
    eigh : tuple ``(s, q)``, optional
        A precomputed :func:`gram_eigh` of ``G``: the factor is then built from it.
    dtype : dtype, optional
        dtype of :attr:`capacitance_inverse` and :attr:`range_inverse` (default: ``gram``'s).

    Notes
    -----
    A scalar core given ``gram`` is factored through the ``R x R`` *capacitance matrix*
    ``lam I_R + c G``: its Cholesky factorisation succeeds iff ``M`` is positive definite (the
    certificate, to round-off), and then ``F = (lam I_R + c G)^{-1}``, ``K = c F``.  When it fails
    (``M`` indefinite) the eigendecomposition of ``G`` is used, which stays exact for any invertible
    ``M``.  Eigenvalues are computed on first access only.

    Attributes
    ----------
    capacitance_inverse : array, shape ``(..., R, R)``
        ``K`` with ``M^{-1} = (I_N - U^T K U) / lam``.
    range_inverse : array, shape ``(..., R, R)``
        ``F`` with ``U M^{-1} = F U``.
    """

    def __init__(self, gram=None, lam=1.0, core=None, *, eigh=None, dtype=None):
        if gram is None and eigh is None:
            raise TypeError("WoodburyFactor needs gram or eigh")
        xp = get_array_module(gram if gram is not None else eigh[0])
        self.xp = xp
        self.dtype = np.dtype(dtype if dtype is not None else (gram.dtype if gram is not None else np.float64))
        self._gram = gram
        self._eigh = eigh
        self._gram_eigenvalues = None
        self._lam = xp.asarray(lam, dtype=np.float64)
        core_arr = None if core is None else xp.asarray(core)
        self._scalar_core = core_arr is None or core_arr.ndim < 2
        self._mu = None
        self._cholesky_ok = False
        self._chol = None
        self._capacitance_logdet = None
        self._k = self._f = None
        if self._scalar_core:
            c = xp.asarray(1.0) if core_arr is None else core_arr.astype(np.float64)
            self._c = c[..., None]  # (..., 1)
            if not (gram is not None and eigh is None and self._from_cholesky()):
                self._set_inverses(*self._from_scalar_eigh())
        else:
            self._set_inverses(*self._from_matrix_core(core_arr))

    def _set_inverses(self, k, f):
        self._k = k.astype(self.dtype, copy=False)
        self._f = f.astype(self.dtype, copy=False)

    @property
    def capacitance_inverse(self):
        """``K`` with ``M^{-1} = (I_N - U^T K U) / lam``, shape ``(..., R, R)`` (formed from the
        Cholesky factor on first access)."""
        if self._k is None:
            self._inverses_from_cholesky()
        return self._k

    @property
    def range_inverse(self):
        """``F`` with ``U M^{-1} = F U``, shape ``(..., R, R)`` (formed from the Cholesky factor on
        first access)."""
        if self._f is None:
            self._inverses_from_cholesky()
        return self._f

    def _inverses_from_cholesky(self):
        xp = self.xp
        linv = xp.linalg.inv(self._chol)  # L^{-1}
        f = xp.swapaxes(linv, -1, -2) @ linv  # (L L^T)^{-1}
        self._set_inverses(self._c[..., None] * f, f)

    # ------------------------------------------------------------------ factorisations
    def _sym_gram(self):
        xp = self.xp
        g = self._gram.astype(np.float64, copy=False)
        return 0.5 * (g + xp.swapaxes(g, -1, -2))

    def _eigendecomposition(self):
        if self._eigh is None:
            self._eigh = gram_eigh(self._gram)
        return self._eigh

    def _from_cholesky(self):
        # F = (lam I + c G)^{-1}, K = c F; Cholesky success certifies M > 0.  False: not positive
        # definite (the caller falls back to the eigendecomposition).
        xp = self.xp
        g = self._sym_gram()
        r = g.shape[-1]
        cap = self._lam[..., None, None] * xp.eye(r) + self._c[..., None] * g
        try:
            chol = xp.linalg.cholesky(cap)
        except np.linalg.LinAlgError:
            return False
        if not bool(xp.isfinite(chol).all()):  # CuPy signals failure with NaN
            return False
        # F = (L L^T)^{-1} and K are formed when first needed (a log-determinant and a quadratic
        # form b^T M^{-1} b need the factor only)
        self._chol = chol
        self._cholesky_ok = True
        self._capacitance_logdet = 2.0 * xp.log(xp.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
        return True

    def _from_scalar_eigh(self):
        # K = Q diag(c / (lam + c s)) Q^T,  F = Q diag(1 / (lam + c s)) Q^T
        xp = self.xp
        s, q = self._eigendecomposition()
        ev = self._lam[..., None] + self._c * s
        qt = xp.swapaxes(q, -1, -2)
        k = (q * (self._c / ev)[..., None, :]) @ qt
        f = (q * (1.0 / ev)[..., None, :]) @ qt
        return k, f

    def _from_matrix_core(self, core_arr):
        # B = S^{1/2} Q^T C Q S^{1/2} = Z diag(mu) Z^T on the numerical range of U^T
        xp = self.xp
        s, q = self._eigendecomposition()
        r = s.shape[-1]
        keep = s > (r * np.finfo(np.float64).eps) * s.max(axis=-1, keepdims=True)
        root = xp.where(keep, xp.sqrt(s), 0.0)
        inv_root = xp.where(keep, 1.0 / xp.where(keep, root, 1.0), 0.0)
        qt = xp.swapaxes(q, -1, -2)
        cmat = core_arr.astype(np.float64)
        cmat = 0.5 * (cmat + xp.swapaxes(cmat, -1, -2))
        b = root[..., :, None] * (qt @ cmat @ q) * root[..., None, :]
        mu, z = xp.linalg.eigh(0.5 * (b + xp.swapaxes(b, -1, -2)))
        self._mu = mu
        ev = self._lam[..., None] + mu
        zt = xp.swapaxes(z, -1, -2)
        left = q * inv_root[..., None, :]  # Q S^{-1/2}
        right = xp.swapaxes(left, -1, -2)
        k = left @ ((z * (mu / ev)[..., None, :]) @ zt) @ right
        f = (q * root[..., None, :]) @ ((z * (1.0 / ev)[..., None, :]) @ zt) @ right
        return k, f

    # ------------------------------------------------------------------ spectrum
    @property
    def gram_eigenvalues(self):
        """``s``, the eigenvalues of ``G`` (ascending, float64, ``max(s) = ||U||_2^2``), shape
        ``(..., R)``; computed on first access when the factor came from a Cholesky factorisation."""
        if self._eigh is not None:
            return self._eigh[0]
        if self._gram_eigenvalues is None:
            self._gram_eigenvalues = self.xp.maximum(self.xp.linalg.eigvalsh(self._sym_gram()), 0.0)
        return self._gram_eigenvalues

    @property
    def capacitance_logdet(self):
        """``log det(lam I_R + c G)``, shape ``(...)``, float64: twice the sum of the logarithms of the
        Cholesky factor's diagonal when the factor came from a Cholesky factorisation (no
        eigenvalues needed), else ``sum_i log(lam + c s_i)`` (scalar core only)."""
        if self._capacitance_logdet is not None:
            return self._capacitance_logdet
        if not self._scalar_core:
            raise ValueError("capacitance_logdet is defined for a scalar core only")
        return self.xp.log(self.eigenvalues).sum(axis=-1)

    @property
    def eigenvalues(self):
        """``lam + c s_i`` (scalar core) or ``lam + mu_i`` (matrix core), shape ``(..., R)``, float64:
        the eigenvalues of ``M`` on the range of ``U^T``; every other eigenvalue of ``M`` is ``lam``."""
        if self._scalar_core:
            return self._lam[..., None] + self._c * self.gram_eigenvalues
        return self._lam[..., None] + self._mu

    @property
    def lam_bound(self):
        """``max(0, -min_i(c s_i))`` (or with ``mu``), shape ``(...)``: ``M`` is positive definite iff
        ``lam > lam_bound``."""
        shifted = self.eigenvalues - self._lam[..., None]
        return self.xp.maximum(-shifted.min(axis=-1), 0.0)

    def is_positive_definite(self):
        """True iff ``M`` is positive definite in every system (a successful Cholesky factorisation
        answers without computing eigenvalues)."""
        if self._cholesky_ok:
            return True
        return bool((self._lam > self.lam_bound).all())

    # ------------------------------------------------------------------ application
    def coefficients(self, ub):
        """``y = K (U b)``, so that ``M^{-1} b = (b - U^T y) / lam``.

        Parameters
        ----------
        ub : array, shape ``(..., R, k)``
            ``U b`` for ``k`` right-hand sides per system (leading axes broadcast with the batch).
        """
        return self.capacitance_inverse @ ub

    def range_quadratic(self, ub):
        """``(U b)^T F (U b)`` per column, float64, shape ``(..., k)``, for ``ub`` of shape
        ``(..., R, k)``: with the Cholesky factor ``L L^T = lam I_R + c G`` of one NumPy system
        ``||L^{-1} U b||^2`` (one triangular solve, ``F`` not formed), else from ``F``."""
        ub = ub.astype(np.float64, copy=False)
        if self._f is None and self._chol is not None and self.xp is np and self._chol.ndim == 2:
            from scipy.linalg import solve_triangular

            y = solve_triangular(self._chol, ub, lower=True, check_finite=False)
            return (y * y).sum(axis=-2)
        F = self.range_inverse.astype(np.float64, copy=False)
        return (ub * (F @ ub)).sum(axis=-2)

    def range_solve(self, ub):
        """``U M^{-1} b = F (U b)`` without touching ``N``-sized data; ``ub`` of shape ``(..., R, k)``."""
        return self.range_inverse @ ub
