"""Restarted GMRES(m) with Givens rotations, batched (lock-step Arnoldi per system)."""
from __future__ import annotations

import warnings

import numpy as np

from .backend import to_host

from ._operator import finish, initial_guess, norms, prepare
from ._preconditioners import as_preconditioner

__all__ = ["gmres"]

CALLBACK_TYPES = ("x", "pr_norm", "legacy")

#: A rotated Hessenberg diagonal ``|R_jj| <= _SINGULAR eps ||A M v_j||`` is a zero up to rounding
_SINGULAR = 4.0


def gmres(A, b, x0=None, *, rtol=1e-5, atol=0.0, restart=20, maxiter=None, M=None, callback=None,
          callback_type=None):
    """Solve ``A x = b`` (any nonsingular ``A``) with restarted, right-preconditioned GMRES(m).

    Saad, *Iterative Methods for Sparse Linear Systems*, Alg. 6.9 (GMRES with Givens rotations)
    and Alg. 9.5 (right preconditioning).  One restart cycle, for every system of the batch::

        r_0 = b - A x_0,  beta = ||r_0||,  v_1 = r_0 / beta,  g = beta e_1
        for j = 1..m:  w = A M v_j;  h_{ij} = v_i^T w,  w -= sum_i h_{ij} v_i   (Gram-Schmidt, twice)
                       h_{j+1,j} = ||w||,  v_{j+1} = w / h_{j+1,j}
                       apply the previous rotations to column j, build the rotation G_j that
                       zeroes h_{j+1,j}, g <- G_j g;  |g_{j+1}| = ||b - A x_j||
        y = H_m^{-1} g  (upper triangular),  x = x_0 + M V_m y

    With right preconditioning the Arnoldi estimate ``|g_{j+1}|`` is the norm of the true,
    unpreconditioned residual (in exact arithmetic), so the stopping rule
    ``||b - A x||_2 <= max(rtol ||b||_2, atol)`` is the same as for the other solvers; it is checked
    on the estimate inside a cycle and on the true residual ``b - A x`` at every restart and at exit.
    Systems that stop inside a cycle are frozen (their Arnoldi columns are no longer updated).

    Parameters
    ----------
    A : dense array ``(n, n)``, sparse matrix, LinearOperator, or object with ``shape`` and a
        batched ``matvec``.
    b : array, shape ``(n,)`` or ``(*batch, n)``
    x0 : array, shape ``b.shape``, or ``"Mb"``, optional
        Initial guess (default zeros; ``"Mb"``: the preconditioner applied to ``b``).  Never modified.
    rtol, atol : float
        Stopping rule ``||b - A x||_2 <= max(rtol ||b||_2, atol)`` per system; any real ``>= 0``,
        ``inf`` included.
    restart : int, optional
        Krylov subspace size ``m`` per cycle (capped at ``n``); None means 20.
    maxiter : int, optional
        Maximum number of restart cycles (default ``10 n``), as in SciPy; with
        ``callback_type="legacy"`` the maximum number of inner iterations in total instead.
    M : matrix, LinearOperator, batched operator or callable, optional
        Preconditioner approximating ``A^{-1}``, applied on the right.
    callback : callable, optional
        Called as ``callback_type`` says.
    callback_type : {"x", "pr_norm", "legacy"}, optional
        SciPy's contract: ``"x"`` calls ``callback(x)`` after every restart cycle with the current
        iterate; ``"pr_norm"`` calls ``callback(||M r_j|| / ||b||)`` after every inner iteration
        (``r_j`` the residual of the iterate of step ``j``, a float or a ``batch``-shaped array;
        without ``M``, ``||r_j|| / ||b||`` from the Arnoldi estimate; with ``M``, one application
        of ``M`` per inner iteration to the residual rebuilt from the Krylov basis);
        ``"legacy"`` is ``"pr_norm"`` with ``maxiter`` counting inner iterations.  A callback
        without a ``callback_type`` is ``"legacy"`` and warns (``DeprecationWarning``) as SciPy does.

    Returns
    -------
    SolveResult
        ``residual_norms``: the Arnoldi residual estimate after each inner iteration, the true
        residual norm in the first and the last row.  ``iterations``: inner iterations (products
        with ``A M``) per system.  ``info``: 0 converged, ``> 0`` not converged within ``maxiter``
        (the value in ``maxiter``'s unit: restart cycles, or inner iterations under ``"legacy"``),
        ``-1`` breakdown (singular Hessenberg matrix: ``A M`` singular on the Krylov space).
    """
    if callback is not None and callback_type is None:
        warnings.warn(
            "solvers.gmres called without specifying `callback_type`: the callback receives the "
            "relative residual norm after every inner iteration and maxiter counts inner iterations "
            "('legacy', as in SciPy); pass callback_type='x', 'pr_norm' or 'legacy' explicitly",
            DeprecationWarning, stacklevel=2)
    if callback_type is None:
        callback_type = "legacy"
    if not isinstance(callback_type, str) or callback_type not in CALLBACK_TYPES:
        raise ValueError(f"gmres: callback_type must be one of {CALLBACK_TYPES}, got {callback_type!r}")
    legacy = callback is not None and callback_type == "legacy"
    pr_norm = callback is not None and callback_type in ("pr_norm", "legacy")
    pb = prepare(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, method="gmres", allow_Mb=True)
    xp, op, b, tol, dt = pb.xp, pb.op, pb.b, pb.tol, pb.dtype
    if restart is None:
        restart = 20
    if isinstance(restart, bool) or not isinstance(restart, (int, np.integer)) or restart < 1:
        raise ValueError(f"gmres: restart must be an integer >= 1, got {restart!r}")
    m = min(int(restart), pb.n)
    maxiter = 10 * pb.n if pb.maxiter is None else pb.maxiter
    # the budgets: inner iterations (legacy) or restart cycles
    max_inner = maxiter if legacy else None
    max_cycles = None if legacy else maxiter
    precond = as_preconditioner(M, xp, pb.n, dt)
    x = initial_guess(pb, precond)
    zero, one = dt.type(0), dt.type(1)
    eps = float(np.finfo(dt).eps)
    batch = pb.batch
    bnorm1 = xp.where(pb.bnorm > 0, pb.bnorm, 1.0)

    def psolve(R):
        return R if precond is None else precond(R)

    def within_budget():
        return (max_inner is None or total < max_inner) and (max_cycles is None or cycles < max_cycles)

    if x0 is None:
        r = b
        matvecs = 0
    else:
        r = b - op.apply(x)
        matvecs = 1
    beta = norms(xp, r)
    pb.history.append(beta)
    broken = xp.zeros(batch, dtype=bool)
    iterations = xp.zeros(batch, dtype=np.int64)
    active = beta > tol
    rn = beta
    total = 0  # inner iterations
    cycles = 0
    while bool(xp.any(active)) and within_budget():
        # --- one restart cycle ---
        V = xp.zeros(batch + (m + 1, pb.n), dtype=dt)
        H = xp.zeros(batch + (m + 1, m), dtype=dt)
        cs = xp.ones(batch + (m,), dtype=dt)
        sn = xp.zeros(batch + (m,), dtype=dt)
        g = xp.zeros(batch + (m + 1,), dtype=dt)
        V[..., 0, :] = r / xp.where(beta > 0, beta, one)[..., None]
        g[..., 0] = beta
        cyc = active.copy()  # systems still iterating in this cycle
        cyc_broken = xp.zeros(batch, dtype=bool)
        beta_start = beta
        steps = xp.zeros(batch, dtype=np.int64)  # inner steps taken per system in this cycle
        j = 0
        while j < m and (max_inner is None or total < max_inner):
            w = op.apply(psolve(V[..., j, :]))  # w = A M v_j
            matvecs += 1
            h0 = norms(xp, w)
            Vj = V[..., : j + 1, :]
            # classical Gram-Schmidt applied twice (CGS2), batched over the systems
            h = xp.einsum("...in,...n->...i", Vj, w)
            w = w - xp.einsum("...i,...in->...n", h, Vj)
            h2 = xp.einsum("...in,...n->...i", Vj, w)
            w = w - xp.einsum("...i,...in->...n", h2, Vj)
            h = h + h2
            hn = norms(xp, w)
            # happy breakdown (hn <= eps ||A M v_j||, rounding of zero): the Krylov space is
            # invariant, v_{j+1} is left at zero
            hn = xp.where(hn > eps * h0, hn, zero)
            V[..., j + 1, :] = xp.where(cyc[..., None], w / xp.where(hn > 0, hn, one)[..., None], zero)
            col = xp.concatenate([h, hn[..., None]], axis=-1)  # column j of H, rows 0..j+1
            # apply the previous Givens rotations G_0..G_{j-1} to the new column
            for i in range(j):
                a, c = col[..., i].copy(), col[..., i + 1].copy()
                col[..., i] = cs[..., i] * a + sn[..., i] * c
                col[..., i + 1] = -sn[..., i] * a + cs[..., i] * c
            a, c = col[..., j], col[..., j + 1]
            den = xp.sqrt(a * a + c * c)
            # breakdown: h_jj = h_{j+1,j} = 0 up to rounding (|R_jj| <= c eps ||A M v_j||), so H is
            # (numerically) singular: A M is singular on the Krylov space; the step is not taken
            bd = cyc & ~(den > _SINGULAR * eps * h0)
            ok = cyc & ~bd
            den_safe = xp.where(den > 0, den, one)
            c_j = xp.where(ok, a / den_safe, one)
            s_j = xp.where(ok, c / den_safe, zero)
            col[..., j] = den
            col[..., j + 1] = zero
            H[..., : j + 2, j] = xp.where(ok[..., None], col, zero)
            cs[..., j] = c_j
            sn[..., j] = s_j
            gj = g[..., j].copy()
            g[..., j] = xp.where(ok, c_j * gj, gj)
            g[..., j + 1] = xp.where(ok, -s_j * gj, zero)
            steps = steps + ok
            iterations = iterations + cyc
            cyc_broken = cyc_broken | bd
            rn = xp.where(ok, xp.abs(g[..., j + 1]), rn)
            pb.history.append(rn)
            cyc = ok & (rn > tol)
            total += 1
            j += 1
            if pr_norm:
                callback(_pr_norm(xp, psolve if precond is not None else None, V, cs, sn, g, j, rn, bnorm1))
            if not bool(xp.any(cyc)):  # every system of the cycle has stopped
                break
        # y = H^{-1} g on each system's own steps: unused columns become identity, unused g zero
        J = j
        used = xp.arange(J)[None, :] < steps.reshape(-1, 1)
        used = used.reshape(batch + (J,))
        Hk = H[..., :J, :J] + xp.where(used, zero, one)[..., None, :] * xp.eye(J, dtype=dt)
        gk = xp.where(used, g[..., :J], zero)
        y = xp.linalg.solve(Hk, gk[..., None])[..., 0]
        dx = psolve(xp.einsum("...i,...in->...n", y, V[..., :J, :]))  # x = x_0 + M V y
        x = xp.where((steps > 0)[..., None], x + dx, x)
        # true residual at every restart and at exit
        r = b - op.apply(x)
        matvecs += 1
        beta = norms(xp, r)
        rn = beta
        # a breakdown ends the system unless its cycle still reduced the true residual: then a
        # Krylov space built on the new residual may go further, and the next cycle tries it
        broken = broken | (cyc_broken & ~(beta < (1.0 - np.sqrt(eps)) * beta_start))
        active = (beta > tol) & ~broken
        cycles += 1
        if callback is not None and callback_type == "x":
            callback(x)
    final_norm = beta
    result = finish(pb, x, final_norm=final_norm, iterations=iterations, broken=broken, matvecs=matvecs)
    if not legacy:  # info > 0 counts restart cycles, maxiter's unit
        info = np.where(np.asarray(result.info) > 0, max(cycles, 1), result.info)
        result.info = int(info) if batch == () else info
    return result


def _pr_norm(xp, psolve, V, cs, sn, g, j, rn, bnorm):
    """``||M r_j|| / ||b||`` after inner step ``j`` (SciPy's ``pr_norm``; a float for one system).

    With right preconditioning the residual of step ``j`` is ``r_j = V_{j+1} Q_j^T (g_{j+1} e_{j+1})``
    (``Q_j`` the product of the Givens rotations), so ``||r_j|| = |g_{j+1}|`` needs no product; with
    ``M`` the vector is rebuilt from the basis and ``M`` applied to it once.
    """
    if psolve is None:
        value = rn / bnorm
    else:
        u = xp.zeros(g.shape[:-1] + (j + 1,), dtype=g.dtype)
        u[..., j] = g[..., j]  # g_{j+1} after step j is stored at index j (0-based)
        for i in range(j - 1, -1, -1):  # u <- G_i^T u, the rotations in reverse order
            a, c = u[..., i].copy(), u[..., i + 1].copy()
            u[..., i] = cs[..., i] * a - sn[..., i] * c
            u[..., i + 1] = sn[..., i] * a + cs[..., i] * c
        r = xp.einsum("...i,...in->...n", u, V[..., : j + 1, :])
        value = norms(xp, psolve(r)) / bnorm
    value = np.asarray(to_host(value), dtype=np.float64)
    return value[()]  # a NumPy scalar for one system (as SciPy passes), else an array
