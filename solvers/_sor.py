"""SOR with Young's optimal relaxation from an estimated Jacobi radius."""
from __future__ import annotations

import math
import time

from ._gauss_seidel import gauss_seidel
from ._spectral import estimate_jacobi_radius

__all__ = ["sor", "young_omega"]


def young_omega(rho_jacobi: float) -> float:
    """Young's optimal SOR relaxation ``omega* = 2 / (1 + sqrt(1 - rho_J^2))``.

    Optimal for consistently ordered matrices (e.g. a red-black ordered 4-neighbourhood grid),
    where ``rho(SOR(omega*)) = omega* - 1``; a good choice elsewhere.  ``rho_J`` must lie in
    ``[0, 1)``.
    """
    rho = float(rho_jacobi)
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"young_omega: the Jacobi radius must lie in [0, 1), got {rho!r}; Jacobi (and "
                         "Young's theory) needs rho_J < 1")
    return 2.0 / (1.0 + math.sqrt(1.0 - rho * rho))


def sor(A, b, x0=None, *, omega=None, rtol=1e-5, atol=0.0, maxiter=None, ordering="auto", callback=None,
        estimate_steps=None):
    """Solve ``A x = b`` by successive over-relaxation, with Young's optimal ``omega`` by default.

    The sweeps are those of :func:`gauss_seidel` (same orderings, the G-CRF operators' multicolour
    sweeps included)::

        x_i <- (1 - omega) x_i + omega / a_ii * (b_i - sum_{j != i} a_ij x_j)

    With ``omega=None`` the relaxation is Young's optimum ``omega* = 2 / (1 + sqrt(1 - rho_J^2))``
    (:func:`young_omega`), with the Jacobi radius ``rho_J = rho(I - D^{-1} A)`` estimated from the
    Ritz values of ``estimate_steps`` steps of Jacobi-preconditioned CG on a random start
    (:func:`solvers._spectral.estimate_jacobi_radius`; a slight under-estimate, which errs on the
    safe side of ``omega*``).  ``omega*`` is optimal for consistently ordered matrices (red-black
    on 4-neighbourhood grids), where the SOR radius is ``omega* - 1``.

    Parameters
    ----------
    A : dense array ``(n, n)``, sparse matrix, or operator with ``gauss_seidel_sweep``/``tocsr`` and
        ``diagonal()`` (as :func:`gauss_seidel`); symmetric positive definite.
    b : array, shape ``(n,)`` or ``(*batch, n)``
    x0 : array, shape ``b.shape``, optional (never modified)
    omega : float in ``(0, 2)``, optional
        The relaxation; None (default) for Young's optimum (one value for the whole batch, from the
        largest ``rho_J`` of its systems).
    rtol, atol, maxiter, ordering, callback
        As for :func:`gauss_seidel`.
    estimate_steps : int, optional
        CG steps of the Jacobi-radius estimate (default
        :data:`solvers._spectral.ESTIMATE_STEPS`).

    Returns
    -------
    SolveResult
        As :func:`gauss_seidel`'s, with ``method = "sor"``, ``omega`` the relaxation used and
        ``jacobi_radius`` the estimate (None when ``omega`` was given).  ``matvecs`` and ``time_s``
        include the estimate's products and time.
    """
    t0 = time.perf_counter()
    rho = None
    products = 0
    if omega is None:
        rho, products = estimate_jacobi_radius(A, b, steps=estimate_steps)
        if not rho < 1.0:
            raise ValueError(
                f"sor: the estimated Jacobi radius is {rho:.6g} >= 1, so Young's omega is undefined "
                "(Jacobi diverges); pass omega explicitly")
        omega = young_omega(rho)
    setup = time.perf_counter() - t0
    res = gauss_seidel(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, omega=float(omega),
                       ordering=ordering, callback=callback)
    res.method = "sor"
    res.omega = float(omega)
    res.jacobi_radius = rho
    res.matvecs += products
    res.time_s += setup
    return res
