"""Restarted GMRES(m) with Givens rotations, batched (lock-step Arnoldi per system)."""
from __future__ import annotations

import numpy as np

from ._operator import finish, norms, prepare
from ._preconditioners import as_preconditioner

__all__ = ["gmres"]


def gmres(A, b, x0=None, *, rtol=1e-5, atol=0.0, restart=20, maxiter=None, M=None, callback=None):
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
    x0 : array, shape ``b.shape``, optional (never modified)
    rtol, atol : float
        Stopping rule ``||b - A x||_2 <= max(rtol ||b||_2, atol)`` per system.
    restart : int
        Krylov subspace size ``m`` per cycle (capped at ``n``).
    maxiter : int, optional
        Maximum number of **inner iterations in total** (products with ``A``), over all cycles;
        default ``10 n``.  (SciPy counts restart cycles instead.)
    M : matrix, LinearOperator, batched operator or callable, optional
        Preconditioner approximating ``A^{-1}``, applied on the right.
    callback : callable, optional
        Called as ``callback(x)`` after every restart cycle with the current iterate.

    Returns
    -------
    SolveResult
        ``residual_norms``: the Arnoldi residual estimate after each inner iteration, the true
        residual norm in the first and the last row.  ``info``: 0 converged, ``> 0`` iteration
        limit, ``-1`` breakdown (singular Hessenberg matrix: ``A M`` singular on the Krylov space).
    """
    pb = prepare(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, method="gmres")
    xp, op, b, x, tol, dt = pb.xp, pb.op, pb.b, pb.x, pb.tol, pb.dtype
    if isinstance(restart, bool) or not isinstance(restart, (int, np.integer)) or restart < 1:
        raise ValueError(f"gmres: restart must be an integer >= 1, got {restart!r}")
    m = min(int(restart), pb.n)
    maxiter = 10 * pb.n if pb.maxiter is None else pb.maxiter
    precond = as_preconditioner(M, xp, pb.n, dt)
    zero, one = dt.type(0), dt.type(1)
    batch = pb.batch

    def psolve(R):
        return R if precond is None else precond(R)

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
    total = 0
    while bool(xp.any(active)) and total < maxiter:
        # --- one restart cycle ---
        V = xp.zeros(batch + (m + 1, pb.n), dtype=dt)
        H = xp.zeros(batch + (m + 1, m), dtype=dt)
        cs = xp.ones(batch + (m,), dtype=dt)
        sn = xp.zeros(batch + (m,), dtype=dt)
        g = xp.zeros(batch + (m + 1,), dtype=dt)
        V[..., 0, :] = r / xp.where(beta > 0, beta, one)[..., None]
        g[..., 0] = beta
        cyc = active.copy()  # systems still iterating in this cycle
        steps = xp.zeros(batch, dtype=np.int64)  # inner steps taken per system in this cycle
        j = 0
        while j < m and total < maxiter:
            w = op.apply(psolve(V[..., j, :]))  # w = A M v_j
            matvecs += 1
            Vj = V[..., : j + 1, :]
            # classical Gram-Schmidt applied twice (CGS2), batched over the systems
            h = xp.einsum("...in,...n->...i", Vj, w)
            w = w - xp.einsum("...i,...in->...n", h, Vj)
            h2 = xp.einsum("...in,...n->...i", Vj, w)
            w = w - xp.einsum("...i,...in->...n", h2, Vj)
            h = h + h2
            hn = norms(xp, w)
            # happy breakdown (hn = 0): the Krylov space is invariant, v_{j+1} is left at zero
            V[..., j + 1, :] = xp.where(cyc[..., None], w / xp.where(hn > 0, hn, one)[..., None], zero)
            col = xp.concatenate([h, hn[..., None]], axis=-1)  # column j of H, rows 0..j+1
            # apply the previous Givens rotations G_0..G_{j-1} to the new column
            for i in range(j):
                a, c = col[..., i].copy(), col[..., i + 1].copy()
                col[..., i] = cs[..., i] * a + sn[..., i] * c
                col[..., i + 1] = -sn[..., i] * a + cs[..., i] * c
            a, c = col[..., j], col[..., j + 1]
            den = xp.sqrt(a * a + c * c)
            # breakdown: h_jj = h_{j+1,j} = 0, H is singular
            bd = cyc & ~(den > 0)
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
            broken = broken | bd
            rn = xp.where(ok, xp.abs(g[..., j + 1]), rn)
            pb.history.append(rn)
            cyc = ok & (rn > tol)
            total += 1
            j += 1
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
        active = (beta > tol) & ~broken
        if callback is not None:
            callback(x)
    final_norm = beta
    return finish(pb, x, final_norm=final_norm, iterations=iterations, broken=broken, matvecs=matvecs)
