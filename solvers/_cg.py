"""Preconditioned conjugate gradients, batched (lock-step systems with per-system steps)."""
from __future__ import annotations

import numpy as np

from .backend import array_kernels_on, to_host

from ._errors import NotPositiveDefiniteError
from ._lanczos import LanczosRecord
from ._operator import dots, finish, initial_guess, norms, prepare
from ._preconditioners import as_preconditioner

__all__ = ["cg", "CURVATURE_TOLERANCE"]

#: every this many iterations the recursively updated residual is replaced by ``b - A x``
TRUE_RESIDUAL_EVERY = 50

#: The curvature test: a direction ``p`` proves ``A`` not positive definite when its Rayleigh
#: quotient ``p^T A p / p^T p <= -CURVATURE_TOLERANCE * eps * ||A||_est``, with ``eps`` the machine
#: epsilon of the computational dtype and ``||A||_est = max_k ||A p_k|| / ||p_k||`` over the
#: directions met so far (a lower bound of ``||A||_2``, free from the product CG makes anyway).
#: The rounding error of a computed ``p^T A p`` is of order ``eps |p|^T |A| |p|``; a smaller
#: non-positive quotient is rounding, not a proof, and stops that system without raising.
CURVATURE_TOLERANCE = 128.0
#: safety factor of :func:`drift_bound` (``true_residual="bound"``)
DRIFT_FACTOR = 4.0

try:  # fused vector updates on the CPU; the array-module code below is the fallback (and CuPy's path)
    import numba as _numba
except ImportError:  # pragma: no cover - numba is a core dependency
    _numba = None

if _numba is not None:
    @_numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _step_nb(x, r, p, q, alpha, rr):  # pragma: no cover - compiled
        # Per system s: x += alpha p, r -= alpha q and rr = r^T r (accumulated in float64), one pass.
        for s in range(x.shape[0]):
            a = alpha[s]
            acc = 0.0
            if a != 0:
                xs, rs, ps, qs = x[s], r[s], p[s], q[s]
                for i in range(x.shape[1]):
                    xs[i] += a * ps[i]
                    t = rs[i] - a * qs[i]
                    rs[i] = t
                    acc += float(t) * float(t)
            else:  # a frozen system: x and r stay as they are
                rs = r[s]
                for i in range(x.shape[1]):
                    acc += float(rs[i]) * float(rs[i])
            rr[s] = acc

    @_numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _direction_nb(p, z, beta, active):  # pragma: no cover - compiled
        # p = z + beta p for the active systems; the others keep their p.
        for s in range(p.shape[0]):
            if active[s]:
                b = beta[s]
                ps, zs = p[s], z[s]
                for i in range(p.shape[1]):
                    ps[i] = zs[i] + b * ps[i]

    @_numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _curvature_nb(p, q, pq, pp, qq):  # pragma: no cover - compiled
        # Per system s: p^T q, p^T p and q^T q (accumulated in float64), one pass.
        for s in range(p.shape[0]):
            ps, qs = p[s], q[s]
            a = 0.0
            b = 0.0
            c = 0.0
            for i in range(p.shape[1]):
                pi = float(ps[i])
                qi = float(qs[i])
                a += pi * qi
                b += pi * pi
                c += qi * qi
            pq[s] = a
            pp[s] = b
            qq[s] = c


def _fusable(xp, dtype, *arrays) -> bool:
    """The compiled updates apply: NumPy, float32/float64, C-contiguous arrays of ``dtype``."""
    if _numba is None or xp is not np or dtype not in (np.float32, np.float64) or array_kernels_on():
        return False
    return _contiguous(dtype, *arrays)


def _contiguous(dtype, *arrays) -> bool:
    """C-contiguous NumPy arrays of ``dtype`` (the per-iteration part of :func:`_fusable`)."""
    return all(isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous for a in arrays)


def cg(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None, check_pd=True,
       true_residual=True, monitor=None):
    """Solve ``A x = b`` for symmetric positive definite ``A`` with (preconditioned) CG.

    Textbook preconditioned conjugate gradients (Saad, *Iterative Methods for Sparse Linear
    Systems*, Alg. 9.1), run on every system of a batch in lock-step with per-system step sizes::

        r_0 = b - A x_0,  z_0 = M r_0,  p_0 = z_0
        alpha_k = (r_k^T z_k) / (p_k^T A p_k)
        x_{k+1} = x_k + alpha_k p_k,   r_{k+1} = r_k - alpha_k A p_k
        z_{k+1} = M r_{k+1},  beta_k = (r_{k+1}^T z_{k+1}) / (r_k^T z_k)
        p_{k+1} = z_{k+1} + beta_k p_k

    A system stops (its ``x`` is frozen) when ``||r||_2 <= max(rtol ||b||_2, atol)``.  The
    recursively updated ``r`` is replaced by the true residual ``b - A x`` every
    50 iterations, and the final test uses the true residual: a system whose recursive residual
    claims convergence but whose true residual does not is restarted from the true residual
    (while iterations remain, and while restarts pay: each must at least halve the true residual
    of the previous one), so float32 results are honest and a tolerance beyond the dtype's reach
    costs no endless restarts.

    On NumPy float32/float64 arrays the vector updates run as compiled in-place loops (Numba), one
    memory pass for ``x += alpha p, r -= alpha q, r^T r`` and one for ``p = z + beta p``, with inner
    products accumulated in float64; other arrays (CuPy) take the same steps as array expressions.
    Without a preconditioner ``r^T z`` is ``r^T r``, computed once per iteration.

    Parameters
    ----------
    A : dense array ``(n, n)``, sparse matrix, LinearOperator, or object with ``shape`` and a
        batched ``matvec`` (see :mod:`solvers`).  Must be symmetric positive definite.
    b : array, shape ``(n,)`` or ``(*batch, n)``
        Right-hand side(s); leading axes are independent systems.
    x0 : array, shape ``b.shape``, or ``"Mb"``, optional
        Initial guess (default zeros); ``"Mb"`` starts from the preconditioner applied to ``b``
        (``b`` without one), as in SciPy.  Never modified.
    rtol, atol : float
        Stopping rule ``||b - A x||_2 <= max(rtol ||b||_2, atol)`` per system; any real ``>= 0``,
        ``inf`` included (every system counts as converged at once).
    maxiter : int, optional
        Maximum number of iterations (default ``10 n``).
    M : matrix, LinearOperator, batched operator or callable, optional
        Preconditioner approximating ``A^{-1}`` (must be SPD), e.g.
        :func:`block_jacobi_preconditioner`.
    callback : callable, optional
        Called as ``callback(x)`` after every iteration with the current ``(*batch, n)`` iterate.
    check_pd : bool
        If True (default) raise :class:`NotPositiveDefiniteError` when a direction proves ``A``
        not positive definite (the curvature test below); if False that system stops with
        ``info = -1``.
    true_residual : bool or "bound"
        If True (default) the final test uses the true residual ``b - A x`` (one more product) and
        restarts the systems it fails.  False skips that product: ``converged`` and the last
        history row then use the recursively updated residual.  For callers that check the true
        residual of a larger system themselves (e.g. a reduced system whose solution is
        back-substituted).  ``"bound"``: as True, except that the product is skipped when every
        system stopped with its recursive residual below the tolerance by more than the bound
        on its drift from the true residual (:func:`drift_bound`, valid when ``A``'s products
        are computed in working precision, as gcrflinalg's operators compute them; ``x0`` not
        given); the last history row is then the recursive residual.
    monitor : callable, optional
        Called as ``monitor(k, residual_norms)`` after every iteration with the iteration count and
        the recursively updated residual norms (a host array of the batch shape).  Returning True
        stops CG there: the result reports the iteration limit (``info = k`` for unconverged
        systems) and its last history row is the recursive residual (no closing product).  For
        callers that switch methods by the convergence rate.

    Notes
    -----
    The curvature test.  Every iteration computes ``rho = p^T A p / p^T p``, the Rayleigh quotient
    of the direction (``lambda_min(A) <= rho``), and ``||A p|| / ||p|| <= ||A||_2``; the running
    maximum of the latter is ``||A||_est``.  ``rho <= -c eps ||A||_est`` (``c =``
    :data:`CURVATURE_TOLERANCE`, ``eps`` of the dtype) proves ``A`` not positive definite up to
    rounding.  A non-positive ``rho`` above that threshold proves it as well while the residual is
    far above rounding level, ``||r|| > c eps (||b|| + ||A||_est ||x||)`` (no SPD matrix whose
    condition number the dtype resolves gives ``p^T A p <= 0`` for such a direction): it raises
    too, with ``bound = 0``.  Only at rounding level (e.g. at tolerances the dtype cannot resolve)
    is it rounding: the system stops there, and the final true-residual test decides; it is
    restarted only if its true residual is above rounding level, so a stall spends no products
    beyond its own.  The recursively updated residual of a system is never driven below
    ``eps^2 ||b||`` (far below what the dtype resolves; this keeps the directions out of the
    subnormal range, where the test would judge noise).  On an SPD matrix
    ``||r_k|| <= sqrt(kappa) ||r_0||``: a residual that grows past ``||r_0|| / sqrt(eps)`` shows
    ``A`` singular to working precision (``kappa > 1 / eps``, e.g. a positive semi-definite ``A``
    whose null space ``b`` excites) or not SPD, and stops that system as a breakdown
    (``info = -1``) before it overflows, returning its iterate from before that step.  CG sees ``A`` only along its Krylov
    directions: an indefinite ``A`` whose negative eigenvectors ``b`` barely excites may converge
    without meeting a negative curvature.

    Returns
    -------
    SolveResult
        ``residual_norms`` holds the recursively updated residual norms (true residual norms at
        every 50th iteration and in the last row).  ``info``: 0 converged, ``> 0`` not converged
        (the iteration limit, or a stall at rounding level; the value is ``iterations``, at least
        1), ``-1`` breakdown (``r^T z <= 0``: preconditioner not positive definite, or a failed
        curvature test with ``check_pd=False``).  ``matvecs`` is the iterations' products plus
        the documented extras: one for ``r_0`` when ``x0`` is given, one per true-residual
        replacement (every 50 iterations), one for the final true residual and one per restart,
        and one per system that stops on a non-positive ``p^T A p`` (its direction's product).
        ``ritz_values`` and ``condition_estimate``: the spectrum CG saw, from the Lanczos
        tridiagonal of its coefficients ``alpha_k``, ``beta_k`` (no extra product; see
        :mod:`solvers._lanczos`), of ``A``, or of ``M A`` with a preconditioner: those of the
        uninterrupted run from the start, up to a restart or to a residual replacement that moved
        ``r`` by more than ``sqrt(eps)`` relative (near the attainable accuracy), where the Lanczos
        relation breaks.

    Raises
    ------
    NotPositiveDefiniteError
        When the curvature test fails for a system still iterating and ``check_pd`` is True:
        ``quantity = "p^T A p / p^T p"``, ``value`` the Rayleigh quotient, ``bound`` the threshold
        it did not exceed (``-c eps ||A||_est``, or 0 when the residual was far above rounding).
    ValueError
        Invalid shapes, NaN/Inf in ``b`` or ``x0``, negative or NaN tolerances, complex input, an
        ``x0`` string other than ``"Mb"`` (an option of the wrong type raises
        :class:`solvers.OptionTypeError`, both a ``TypeError`` and a ``ValueError``).
    """
    pb = prepare(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, method="cg", allow_Mb=True)
    xp, op, b, tol, dt = pb.xp, pb.op, pb.b, pb.tol, pb.dtype
    maxiter = 10 * pb.n if pb.maxiter is None else pb.maxiter
    precond = as_preconditioner(M, xp, pb.n, dt)
    x = initial_guess(pb, precond)
    zero = dt.type(0)
    one = dt.type(1)
    # On NumPy (float32/float64) the vector updates run in place as compiled loops, one pass each
    # (x += alpha p, r -= alpha q with r^T r; p = z + beta p); x, r and p are then arrays this
    # function owns.  Elsewhere (CuPy, other arrays) the same steps run as array expressions.
    n_sys = int(np.prod(pb.batch, dtype=np.int64))
    fused = _fusable(xp, dt, x) and n_sys > 0 and pb.n > 0

    def psolve(R):
        return R if precond is None else precond(R)

    # Step 1: r_0 = b - A x_0 (no product when x_0 = 0)
    if x0 is None:
        r = b.copy() if fused else b
        matvecs = 0
    else:
        r = b - op.apply(x)
        matvecs = 1
    rr = dots(xp, r, r)
    rnorm = xp.sqrt(rr)
    pb.history.append(rnorm)
    broken = xp.zeros(pb.batch, dtype=bool)
    iterations = xp.zeros(pb.batch, dtype=np.int64)
    eps = float(np.finfo(dt).eps)
    # the recursive residual is not driven below eps^2 ||b|| (see Notes): the working tolerance
    floor = xp.maximum(tol, (eps * eps) * norms(xp, b)) if pb.n > 0 else tol
    growth_limit = rnorm / np.sqrt(eps)
    norm_est = xp.zeros(pb.batch, dtype=np.float64)  # max_k ||A p_k|| / ||p_k||
    stalled = xp.zeros(pb.batch, dtype=bool)  # stopped by a non-positive p^T A p at rounding level
    restarted_at = xp.full(pb.batch, np.inf)  # true residual norm at each system's last restart
    active = rnorm > tol
    z = psolve(r)
    rho = rr if precond is None else dots(xp, r, z)
    # rho breakdown at the start: r^T M r <= 0, the preconditioner is not positive definite
    bad_rho = active & ~(rho > 0)
    broken |= bad_rho
    active &= ~bad_rho
    p = z.copy() if fused else z
    since_true = 0
    lanczos = LanczosRecord(xp, pb.batch)  # alpha_k, beta_k per system: the Ritz values at the end
    k = 0
    any_active = bool(xp.any(active))
    stopped = False  # by the monitor
    while True:
        if not any_active or k >= maxiter:
            if not true_residual or stopped:
                final_norm = rnorm
                break
            if true_residual == "bound" and x0 is None and _converged_by_bound(xp, active, broken, stalled, rnorm, tol, b, x,
                                                                norm_est, eps, k, pb.n):
                final_norm = rnorm  # proven within tol: no closing product
                break
            # final check on the true residual b - A x
            r_true = b - op.apply(x)
            matvecs += 1
            tnorm = norms(xp, r_true)
            claimed = ~active & ~broken
            fail = claimed & (tnorm > tol)
            # restart a system only while restarts pay: its true residual at most half of what it
            # was at its last restart, and (for one stalled at rounding level) above rounding level
            fail &= tnorm < 0.5 * restarted_at
            fail &= ~stalled | (tnorm > _rounding_level(xp, b, x, norm_est, eps))
            stalled &= ~fail
            restarted_at = xp.where(fail, tnorm, restarted_at)
            if k < maxiter and bool(xp.any(fail)):
                # recursive residual converged but the true one did not: restart those systems
                r = xp.where(fail[..., None], r_true, r)
                rnorm = xp.where(fail, tnorm, rnorm)
                z_new = psolve(r)
                rho = xp.where(fail, dots(xp, r, z_new), rho)
                p = xp.where(fail[..., None], z_new, p)
                active = active | fail
                lanczos.stop(fail)
                since_true = 0
                any_active = True
                continue
            final_norm = tnorm
            break

        # Step 2: q = A p, alpha = rho / p^T A p
        q = op.apply(p)
        matvecs += 1
        step_fused = fused and isinstance(q, np.ndarray) and _contiguous(dt, x, r, p)
        if step_fused:
            q = np.ascontiguousarray(q, dtype=dt)
            acc, pp, qq = np.empty(n_sys), np.empty(n_sys), np.empty(n_sys)
            _curvature_nb(p.reshape(n_sys, -1), q.reshape(n_sys, -1), acc, pp, qq)
            pAp = acc.astype(dt).reshape(pb.batch)
            rq = (acc / np.where(pp > 0, pp, 1.0)).reshape(pb.batch)
            gain = np.sqrt(qq / np.where(pp > 0, pp, 1.0)).reshape(pb.batch)
            pp = pp.reshape(pb.batch)
        else:
            pAp = dots(xp, p, q)
            pp = dots(xp, p, p).astype(np.float64)
            pp1 = xp.where(pp > 0, pp, 1.0)
            rq = pAp.astype(np.float64) / pp1
            gain = xp.sqrt(dots(xp, q, q).astype(np.float64) / pp1)
        # a product that returned NaN or Inf is a breakdown (info = -1), not indefiniteness
        nonfinite = active & ~xp.isfinite(pAp)
        broken |= nonfinite
        active &= ~nonfinite
        # the curvature test (Notes): rq <= -c eps ||A||_est proves A not positive definite; a
        # non-positive rq above it (or p = 0) stops the system, and the residual decides below
        norm_est = xp.where(active, xp.maximum(norm_est, gain), norm_est)
        threshold = -CURVATURE_TOLERANCE * eps * norm_est
        nonpos = active & ~(pAp > 0)
        bad = nonpos & ~(rq > threshold) & ~(pp == 0)  # p = 0 is no direction
        stall = nonpos & ~bad
        active &= ~stall
        stalled |= stall
        if not check_pd:
            broken |= bad
            active &= ~bad
        alpha = xp.where(active, rho / xp.where(nonpos | (pAp == 0), one, pAp), zero)
        lanczos.alpha(alpha, active)
        # Step 3: x += alpha p, r -= alpha A p (alpha = 0 freezes stopped systems)
        if step_fused:
            acc = np.empty(n_sys)
            _step_nb(x.reshape(n_sys, -1), r.reshape(n_sys, -1), p.reshape(n_sys, -1),
                     q.reshape(n_sys, -1), np.ascontiguousarray(alpha, dtype=dt).reshape(n_sys), acc)
            rr = acc.astype(dt).reshape(pb.batch)
        else:
            x = x + alpha[..., None] * p
            r = r - alpha[..., None] * q
            rr = None
        iterations = iterations + active
        since_true += 1
        if since_true >= TRUE_RESIDUAL_EVERY:
            # residual replacement: r = b - A x, keeps float32 honest
            r_rec = r
            r = xp.where(active[..., None], b - op.apply(x), r)
            # a replacement that moves r by more than sqrt(eps) relative ends the Lanczos record
            moved = norms(xp, r - r_rec) > np.sqrt(eps) * norms(xp, r_rec)
            lanczos.stop(active & moved)
            matvecs += 1
            since_true = 0
            rr = None
        if rr is None:
            rr = dots(xp, r, r)
        rnorm = xp.where(active, xp.sqrt(rr), rnorm)
        pb.history.append(rnorm)
        active = active & (rnorm > floor)
        # ||r_k|| <= sqrt(kappa) ||r_0|| on an SPD matrix: growth past ||r_0|| / sqrt(eps) means
        # kappa > 1 / eps (singular to working precision) or no SPD matrix; a breakdown (Notes)
        diverged = active & (rnorm > growth_limit)
        broken |= diverged
        active &= ~diverged
        # Step 4: z = M r, beta = rho_new / rho, p = z + beta p
        z = psolve(r)
        rho_new = rr if precond is None else dots(xp, r, z)
        bad_rho = active & ~(rho_new > 0)  # rho breakdown: preconditioner not positive definite
        broken |= bad_rho
        active &= ~bad_rho
        beta = xp.where(active, rho_new / xp.where(rho == 0, one, rho), zero)
        lanczos.beta(beta)
        if fused and p is not z and _contiguous(dt, p, z):
            _direction_nb(p.reshape(n_sys, -1), z.reshape(n_sys, -1),
                          np.ascontiguousarray(beta, dtype=dt).reshape(n_sys),
                          np.ascontiguousarray(active).reshape(n_sys))
        else:
            p = xp.where(active[..., None], z + beta[..., None] * p, p)
        rho = xp.where(active, rho_new, rho)
        k += 1
        # one small device-to-host transfer per iteration:
        # [any proof of indefiniteness, any still active, any non-positive p^T A p above it]
        if xp is np:
            flags = (bad.any(), active.any(), stall.any(), diverged.any())
        else:
            flags = to_host(xp.stack([xp.any(bad), xp.any(active), xp.any(stall), xp.any(diverged)]))
        if flags[3]:  # return the iterate before the step that diverged, not the diverging one
            x = xp.where(diverged[..., None], x - alpha[..., None] * p, x)
        if flags[2]:
            # p^T A p <= 0 with the residual far above rounding level: no SPD matrix does that
            level = _rounding_level(xp, b, x, norm_est, eps)
            loud = stall & (rnorm > level)
            stalled &= ~loud
            if check_pd and bool(xp.any(loud)):
                _raise_not_pd(xp, loud, rq, xp.zeros_like(threshold), pb.batch, k, rnorm=rnorm, level=level)
            broken |= loud
        if check_pd and flags[0]:
            _raise_not_pd(xp, bad, rq, threshold, pb.batch, k)
        if callback is not None:
            callback(x.copy() if fused else x)
        any_active = bool(flags[1])
        if monitor is not None and any_active and monitor(k, to_host(rnorm)):
            stopped, maxiter = True, k
    ritz, kappa = lanczos.ritz()
    result = finish(pb, x, final_norm=final_norm, iterations=iterations, broken=broken, matvecs=matvecs)
    result.ritz_values, result.condition_estimate = ritz, kappa
    return result


def drift_bound(xp, b, x, norm_est, eps, k, n):
    """Bound on ``||(b - A x_k) - r_k||``, the drift of CG's recursively updated residual from the
    true one after ``k`` steps when every product is computed in working precision:
    ``DRIFT_FACTOR (k + 1) n eps (||b|| + 2 ||A||_est ||x||)``.

    Each step adds the rounding of one product (at most ``gamma_n || |A| || ||p||``, sums of at
    most ``n`` terms) and of two vector updates; ``||x_k||`` grows monotonically from ``x_0 = 0``
    (Hestenes and Stiefel), so the final ``||x||`` bounds every iterate's.  ``2 ||A||_est`` stands
    for ``||A||``, of which ``||A||_est`` (the largest ``||A p|| / ||p||`` seen) is a lower bound
    that the Lanczos process brings close after a few steps."""
    scale = norms(xp, b).astype(np.float64) + 2.0 * norm_est * norms(xp, x).astype(np.float64)
    return DRIFT_FACTOR * (k + 1) * max(n, 1) * eps * scale


def _converged_by_bound(xp, active, broken, stalled, rnorm, tol, b, x, norm_est, eps, k, n):
    """True when every system stopped, none at a stall, and each one's recursive residual is below
    ``tol`` by more than :func:`drift_bound`: its true residual is then below ``tol`` too."""
    claimed = ~active & ~broken
    if bool(xp.any(active | stalled)):
        return False
    proven = rnorm.astype(np.float64) + drift_bound(xp, b, x, norm_est, eps, k, n) <= tol
    return bool(xp.all(proven | ~claimed))


def _rounding_level(xp, b, x, norm_est, eps):
    """``c eps (||b|| + ||A||_est ||x||)``: a residual norm this small is rounding (Notes)."""
    return CURVATURE_TOLERANCE * eps * (norms(xp, b).astype(np.float64)
                                        + norm_est * norms(xp, x).astype(np.float64))


def _raise_not_pd(xp, bad, rq, threshold, batch, k, *, rnorm=None, level=None):
    bad_h = np.atleast_1d(to_host(bad))
    vals = np.atleast_1d(to_host(rq))
    limits = np.atleast_1d(to_host(threshold))
    flat = int(np.flatnonzero(bad_h.ravel())[0])
    value = float(vals.ravel()[flat])
    bound = float(limits.ravel()[flat])
    if batch == ():
        system = None
        where = ""
    else:
        system = tuple(int(i) for i in np.unravel_index(flat, batch))
        where = f" for system {system}"
    if rnorm is None:
        why = f"{value:.6g} <= {bound:.3g} (beyond rounding)"
    else:
        res = float(np.atleast_1d(to_host(rnorm)).ravel()[flat])
        lev = float(np.atleast_1d(to_host(level)).ravel()[flat])
        why = (f"{value:.6g} <= {bound:.3g} while the residual norm {res:.3g} is far above rounding "
               f"level ({lev:.3g})")
    raise NotPositiveDefiniteError(
        f"cg: the Rayleigh quotient p^T A p / p^T p = {why}{where} at iteration {k} proves "
        f"lambda_min(A) <= {value:.6g}; A is not symmetric positive definite (use gmres, or check the "
        "matrix)",
        quantity="p^T A p / p^T p", value=value, bound=bound, system=system,
    )
