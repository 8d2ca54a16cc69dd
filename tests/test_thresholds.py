"""The constants behind CG's decisions, pinned by what they decide: the curvature tolerance (which
side of ``-c eps ||A||`` a Rayleigh quotient falls), the residual replacement period (which
products are spent), the restart rule (restarts that pay, no endless ones) and the breakdowns of a
singular or indefinite matrix, with ``iterations``, ``matvecs`` and ``info`` that agree.

Each system is built so that the quantity in question is known in closed form (diagonal matrices
whose ``p^T A p`` is exact in floating point), so a constant moved by one or by 1000x changes the
outcome.
"""
from __future__ import annotations

import numpy as np
import pytest

import solvers
from solvers import NotPositiveDefiniteError

#: solvers.cg's documented curvature tolerance (docs/guarantees.md): ``c`` in ``-c eps ||A||_est``
C = 128.0
#: its documented residual replacement period
PERIOD = 50




def split_diagonal(k, dtype, scale=1.0):
    """``diag(1, -(1 + k eps))`` and ``b = scale (1, 1)`` (``scale`` a power of 2): ``p_0 = b`` has
    ``p^T A p / p^T p = -k eps / 2`` exactly and ``||A p|| / ||p|| = sqrt(1 + (1 + k eps)^2) / sqrt(2)``."""
    eps = np.finfo(dtype).eps
    d = np.array([1.0, -(1.0 + k * eps)], dtype=dtype)
    assert float(d[0]) + float(d[1]) == -k * float(eps)  # exact in the dtype
    b = np.full(2, scale, dtype=dtype)
    return np.diag(d), b, float(eps), float(np.hypot(d[0], d[1]) / np.sqrt(2.0))


@pytest.mark.parametrize("scale", [2.0**-10, 1.0, 2.0**10])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_curvature_beyond_rounding_names_the_threshold(dtype, scale, branch):
    # quotient -8 c eps: below -c eps ||A||_est, a proof whatever the residual (and whatever ||b||)
    A, b, eps, gain = split_diagonal(16 * C, dtype, scale)
    with pytest.raises(NotPositiveDefiniteError) as info:
        solvers.cg(A, b, rtol=1e-8)
    err = info.value
    assert err.value == pytest.approx(-8 * C * eps, rel=1e-6)
    assert err.bound == pytest.approx(-C * eps * gain, rel=1e-6)
    assert err.quantity == "p^T A p / p^T p" and err.system is None
    assert "beyond rounding" in str(err) and "for system" not in str(err)


@pytest.mark.parametrize("scale", [2.0**-10, 1.0, 2.0**10])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_curvature_within_rounding_but_residual_far_above_it_raises_with_bound_zero(dtype, scale, branch):
    # quotient -eps c / 4: within rounding of p^T A p, but ||r|| = ||b|| is far above rounding level
    A, b, eps, _ = split_diagonal(C / 2, dtype, scale)
    with pytest.raises(NotPositiveDefiniteError) as info:
        solvers.cg(A, b, rtol=1e-8)
    assert info.value.value == pytest.approx(-C * eps / 4, rel=1e-6)
    assert info.value.bound == 0.0
    assert "far above rounding" in str(info.value)


@pytest.mark.parametrize("k", [C / 2, 16 * C])
def test_breakdown_without_check_counts_the_direction(k, branch):
    # check_pd=False: the system stops with info -1, no step taken; the direction's product and the
    # closing true residual are the only products
    A, b, _, _ = split_diagonal(k, np.float64)
    res = solvers.cg(A, b, rtol=1e-8, check_pd=False)
    assert res.info == -1 and not res.converged and res.iterations == 0
    assert res.matvecs == 2
    assert np.all(res.x == 0)


def test_zero_curvature_on_the_first_direction_raises(branch):
    # p_0 = b with p^T A p = 0 exactly while ||r|| = ||b||: no SPD matrix does that
    A = np.diag(np.r_[np.ones(10), -np.ones(10)])
    with pytest.raises(NotPositiveDefiniteError) as info:
        solvers.cg(A, np.ones(20), rtol=1e-10, maxiter=100)
    assert info.value.value == 0.0 and info.value.bound == 0.0
    res = solvers.cg(A, np.ones(20), rtol=1e-10, maxiter=100, check_pd=False)
    assert res.info == -1 and res.iterations == 0 and res.matvecs == 2


def test_indefinite_found_late_reports_its_iteration_and_counts(branch):
    # diag(1, 2, 3, -1) with a small negative component: the first directions are positive
    d = np.array([1.0, 2.0, 3.0, -1.0])
    b = np.array([1.0, 1.0, 1.0, 1e-3])
    with pytest.raises(NotPositiveDefiniteError) as info:
        solvers.cg(np.diag(d), b, rtol=1e-12)
    assert info.value.value < 0 and "at iteration" in str(info.value)
    res = solvers.cg(np.diag(d), b, rtol=1e-12, check_pd=False)
    k = int(res.iterations)
    assert res.info == -1 and 1 <= k <= 4
    # every step's product, the failed direction's product, the closing true residual
    assert res.matvecs == k + 2


@pytest.mark.parametrize("maxiter", [PERIOD, 2 * PERIOD - 1, 3 * PERIOD])
def test_residual_replacement_period_is_paid_exactly(maxiter, branch):
    # an unreachable tolerance on a slow system: exactly maxiter steps, one replacement per PERIOD
    n = 300
    d = np.geomspace(1.0, 1e5, n)
    b = np.cos(np.arange(n))
    res = solvers.cg(np.diag(d), b, rtol=1e-14, maxiter=maxiter)
    assert res.iterations == maxiter and res.info == maxiter
    assert res.matvecs == maxiter + maxiter // PERIOD + 1
    # the replaced row holds the true residual of the iterate of that step
    seen = []
    solvers.cg(np.diag(d), b, rtol=1e-14, maxiter=PERIOD, callback=lambda x: seen.append(x.copy()))
    assert res.residual_norms[PERIOD] == pytest.approx(np.linalg.norm(b - d * seen[PERIOD - 1]), rel=1e-12)


def test_restarts_stop_when_they_no_longer_pay(branch):
    # float32 just beyond what it resolves: the recursive residual claims convergence, the true one
    # does not; restarts go on only while each halves the true residual, far short of maxiter
    n = 200
    rng = np.random.default_rng(7)
    d = np.geomspace(1.0, 1e3, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    x64 = b.astype(np.float64) / d.astype(np.float64)
    for rtol in (3e-7, 1e-7):
        res = solvers.cg(np.diag(d), b, rtol=rtol, maxiter=20 * n)
        k = int(res.iterations)
        # float64 textbook CG reaches 1e-6 in about as many steps: restarts add a few, not thousands
        assert k <= len(textbook_steps(d, b, 1e-6)) + 3 * PERIOD
        assert res.info == (0 if res.converged else k)
        # each restart costs one product, every step one, the replacements one each, the close one
        assert 1 <= res.matvecs - k - k // PERIOD <= 4
        assert np.linalg.norm(res.x - x64) <= 1e-4 * np.linalg.norm(x64)
        r64 = b.astype(np.float64) - d.astype(np.float64) * res.x.astype(np.float64)
        assert np.linalg.norm(r64) <= 1e-6 * np.linalg.norm(b)  # float32's reach


def textbook_steps(d, b, rtol):
    """Textbook CG steps on ``diag(d)`` (float64) until ``||r|| <= rtol ||b||``."""
    d, b = d.astype(np.float64), b.astype(np.float64)
    x, r = np.zeros_like(b), b.copy()
    p, rr, steps = r.copy(), r @ r, []
    while np.sqrt(rr) > rtol * np.linalg.norm(b):
        q = d * p
        alpha = rr / (p @ q)
        x, r = x + alpha * p, r - alpha * q
        rr, rr_old = r @ r, rr
        p = r + (rr / rr_old) * p
        steps.append(x)
    return steps


def test_singular_psd_matrix_stops_as_a_breakdown_without_overflow(branch):
    # b excites the null space of a PSD matrix: no solution; CG must stop, finite, counts agreeing
    d = np.array([1.0, 2.0, 3.0, 0.0])
    b = np.ones(4)
    res = solvers.cg(np.diag(d), b, rtol=1e-10, maxiter=1000, check_pd=False)
    assert not res.converged and res.info == -1
    assert np.all(np.isfinite(res.x)) and np.all(np.isfinite(res.residual_norms))
    k = int(res.iterations)
    assert 3 <= k <= 10
    assert k + 1 <= res.matvecs <= k + 2
    # before the breakdown it is an iteration limit like any other
    r3 = solvers.cg(np.diag(d), b, rtol=1e-10, maxiter=3, check_pd=False)
    assert r3.info == 3 and r3.iterations == 3 and r3.matvecs == 4


def test_negative_definite_at_every_lam_scale(branch):
    # -lam I for lam over four decades: quotient -lam, bound -c eps lam
    for lam in (0.01, 1.0, 100.0):
        with pytest.raises(NotPositiveDefiniteError) as info:
            solvers.cg(-lam * np.eye(5), np.arange(1.0, 6.0))
        assert info.value.value == pytest.approx(-lam, rel=1e-12)
        assert info.value.bound == pytest.approx(-C * np.finfo(float).eps * lam, rel=1e-9)


@pytest.mark.parametrize("scale", [1e-2, 1.0, 1e2])
def test_indefinite_preconditioner_is_a_breakdown_at_the_start(scale, branch):
    # r_0^T M r_0 < 0: no step, info -1, the closing true residual the only product
    A, b = np.diag([1.0, 2.0, 3.0]), scale * np.ones(3)
    res = solvers.cg(A, b, M=-np.eye(3))
    assert res.info == -1 and res.iterations == 0 and res.matvecs == 1 and np.all(res.x == 0)


def test_preconditioner_indefinite_later_is_a_breakdown_then(branch):
    # M = diag(1, 1, -1) with b exciting the third coordinate little: r_0^T M r_0 > 0, later < 0
    A, b = np.diag([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.1])
    res = solvers.cg(A, b, M=np.diag([1.0, 1.0, -1.0]), rtol=1e-12)
    k = int(res.iterations)
    assert res.info == -1 and 1 <= k <= 3 and not res.converged
    assert res.matvecs == k + 1


def test_singular_preconditioner_is_a_breakdown_when_r_falls_in_its_null_space(branch):
    # M = diag(1, 1, 0): p_0 = M b = (1, 0, 0), alpha = 1, r_1 = (0, 0, 1) and r_1^T M r_1 = 0
    A, b = np.diag([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 1.0])
    res = solvers.cg(A, b, M=np.diag([1.0, 1.0, 0.0]), rtol=1e-12)
    assert res.info == -1 and res.iterations == 1 and res.matvecs == 2
    np.testing.assert_array_equal(res.x, [1.0, 0.0, 0.0])


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_tolerance_zero_solves_at_any_scale_of_b(scale, branch):
    # rtol = atol = 0: iterate to the dtype's accuracy, whatever ||b|| (the recursive residual's
    # floor is relative to ||b||)
    d = np.array([1.0, 2.0, 4.0, 8.0, 1.0, 2.0])
    b = scale * np.array([1.0, -1.0, 2.0, 0.5, 3.0, 1.0])
    res = solvers.cg(np.diag(d), b, rtol=0.0, atol=0.0, maxiter=12)
    assert res.iterations >= 4 and res.info != -1
    np.testing.assert_allclose(res.x, b / d, rtol=1e-13)


@pytest.mark.filterwarnings("error")
def test_batch_with_zero_and_converged_systems_warns_nothing(branch):
    # a zero right-hand side (p = 0, rho = 0) next to systems still iterating: no 0/0 anywhere
    A = np.diag([1.0, 2.0, 3.0, 4.0])
    b = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])

    class Batched:
        shape = (4, 4)
        dtype = np.dtype(np.float64)

        def matvec(self, X):
            return X @ A

    for M in (None, np.eye(4)):
        res = solvers.cg(Batched(), b, rtol=1e-12, M=M)
        np.testing.assert_array_equal(res.iterations, [0, 4, 1])
        assert np.all(res.converged) and res.matvecs == 4 + 1
        np.testing.assert_allclose(res.x, b / np.diag(A), rtol=1e-12, atol=0)


class _Float32Products:
    """``diag(d)`` whose products are rounded to float32: a float64 CG whose recursive residual
    keeps falling below the true one, which stalls near ``1e-7`` (the products' accuracy)."""

    def __init__(self, d):
        self.d = d
        self.shape = (len(d), len(d))
        self.dtype = np.dtype(np.float64)

    def matvec(self, X):
        return (X.astype(np.float32) * self.d.astype(np.float32)).astype(np.float64)


def test_restart_pays_once_then_stops_short_of_maxiter(branch):
    n = 60
    d = np.geomspace(1.0, 1e2, n)
    b = np.cos(np.arange(n) + 0.5)
    op = _Float32Products(d)
    # 1e-8: the recursive residual claims it, the true one (~4e-8) does not: one restart (one
    # product), which does not halve it; no more restarts, and far fewer steps than maxiter
    res = solvers.cg(op, b, rtol=1e-8, maxiter=2000)
    k = int(res.iterations)
    assert not res.converged and res.info == k and k <= 150
    assert res.matvecs - k - k // PERIOD - 1 in (1, 2)  # the restart(s)
    assert np.linalg.norm(b - d * res.x) <= 1e-7 * np.linalg.norm(b)
    # 1e-10: it stalls at rounding level; a stall at rounding level is not restarted
    res = solvers.cg(op, b, rtol=1e-10, maxiter=2000)
    k = int(res.iterations)
    assert not res.converged and res.info == k and k <= 200
    assert res.matvecs == k + k // PERIOD + 1
    # 1e-6: reached without a restart
    res = solvers.cg(op, b, rtol=1e-6, maxiter=2000)
    k = int(res.iterations)
    assert res.converged and res.matvecs == k + k // PERIOD + 1


def test_monitor_stop_spends_no_closing_product(branch):
    A = np.diag(np.geomspace(1.0, 1e3, 40))
    b = np.ones(40)
    seen = []

    def monitor(k, rnorm):
        seen.append((k, float(rnorm)))
        return k == 3

    res = solvers.cg(A, b, rtol=1e-12, monitor=monitor)
    assert res.iterations == 3 and res.info == 3 and not res.converged
    assert res.matvecs == 3  # the steps' products only
    assert [k for k, _ in seen] == [1, 2, 3]
    assert res.residual_norms[-1] == pytest.approx(seen[-1][1], rel=1e-12)


def test_numpy_floats_take_the_compiled_updates(monkeypatch):
    # documented: on NumPy float32/float64 the vector updates run as compiled loops, one pass each
    import solvers._cg as cg_module

    calls = {"_step_nb": 0, "_direction_nb": 0, "_curvature_nb": 0}
    for name in calls:
        original = getattr(cg_module, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(cg_module, name, counted)
    A = np.diag([1.0, 2.0, 3.0, 4.0])
    for dtype in (np.float64, np.float32):
        for b in (np.ones(4), np.ones((2, 4))):
            for name in calls:
                calls[name] = 0
            res = solvers.cg(A.astype(dtype), b.astype(dtype), rtol=1e-6)
            assert np.max(res.iterations) == 4
            assert calls == {"_step_nb": 4, "_direction_nb": 4, "_curvature_nb": 4}


def test_preconditioner_with_b_in_its_null_space_is_a_breakdown_at_the_start(branch):
    # r_0^T M r_0 = 0 for r_0 = b != 0: M is not positive definite, no step is taken
    res = solvers.cg(np.diag([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 1.0]), M=np.diag([1.0, 1.0, 0.0]))
    assert res.info == -1 and res.iterations == 0 and res.matvecs == 1


def test_infinite_tolerance_converges_at_once_for_small_b(branch):
    for scale in (0.0, 1e-3, 1.0, 1e3):
        res = solvers.cg(np.diag([1.0, 2.0]), scale * np.ones(2), rtol=np.inf)
        assert res.converged and res.iterations == 0 and res.matvecs == 1 and res.info == 0


def test_x0_mb_with_a_zero_system_leaves_it_at_zero(branch):
    A = np.diag([1.0, 2.0, 4.0])

    class Batched:
        shape = (3, 3)
        dtype = np.dtype(np.float64)

        def matvec(self, X):
            return X @ A

    b = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    res = solvers.cg(Batched(), b, x0="Mb", M=np.diag([1.0, 0.5, 0.25]), rtol=1e-12)
    np.testing.assert_array_equal(res.iterations, [0, 0])  # M = A^{-1}: x0 = M b is the solution
    np.testing.assert_array_equal(res.x[0], 0.0)
    np.testing.assert_allclose(res.x[1], [1.0, 0.5, 0.25], rtol=1e-15)


def test_potts_kernel_reports_the_quotient_within_rounding():
    # lam I + W on a 1x2 image, W = [[0, w], [w, 0]], w = -(1.25 + 2^-50), rhs p = (2, 1):
    # p^T A p = 5 + 4 w = -2^-48 exactly, within rounding of p^T A p but with ||r|| = ||rhs||
    # far above rounding: a proof, reported with its Rayleigh quotient -2^-48 / 5
    from gcrflinalg.forms.grid import kernels

    wt = np.zeros((1, 2, 1, 2))
    wt[0, 0, 0, 0] = -(1.25 + 2.0**-50)
    rhs = np.array([2.0, 1.0]).reshape(1, 1, 1, 1, 2)
    its, failed, rayleigh = kernels.shifted_weight_cg(wt, np.array([1.0]), rhs, np.zeros_like(rhs),
                                                      ((0, 1), (1, 0)), 1e-10, 50)
    assert failed == 0 and rayleigh == -(2.0**-48) / 5


@pytest.mark.parametrize("n", [20, 40])
def test_default_maxiter_is_ten_n(n, branch):
    # SciPy's default: 10 n steps; rtol = 0 on a well-separated spectrum never stalls before it
    res = solvers.cg(np.diag(np.logspace(-3, 3, n)), np.ones(n), rtol=0.0)
    assert res.iterations == res.info == 10 * n
    assert res.matvecs == 10 * n + (10 * n) // PERIOD + 1


def test_error_names_the_first_failing_system_of_a_batch(branch):
    # systems 1 and 2 fail on the same step: the error names the first
    A = np.stack([np.eye(3), -np.eye(3), -2 * np.eye(3)])

    class Batched:
        shape = (3, 3)
        dtype = np.dtype(np.float64)

        def matvec(self, X):
            return np.einsum("sij,sj->si", A, X)

    with pytest.raises(NotPositiveDefiniteError) as info:
        solvers.cg(Batched(), np.ones((3, 3)))
    assert info.value.system == (1,) and info.value.value == pytest.approx(-1.0)
    assert "for system (1,)" in str(info.value)


class _RoundedProducts:
    """``A x`` rounded to float32 in a float64 solve: products with relative errors of ~1e-7, so
    CG's recursive residual runs below what the true residual of its iterate can reach."""

    def __init__(self, A):
        self.A, self.shape, self.dtype = A, A.shape, np.dtype(np.float64)

    def matvec(self, X):
        return (X @ self.A.T).astype(np.float32).astype(np.float64)


def test_no_restart_after_the_last_allowed_step():
    """A convergence claim that the true residual refutes restarts CG only while iterations remain:
    claimed on exactly the last allowed step, it costs the final true residual and nothing more."""
    A = np.diag(np.linspace(1.0, 10.0, 30))
    b = np.random.default_rng(3).standard_normal(30)
    op = _RoundedProducts(A)
    free = solvers.cg(op, b, rtol=1e-10, maxiter=200)
    tol = 1e-10 * np.linalg.norm(b)
    claims = np.flatnonzero(free.residual_norms[1:-1] <= tol) + 1
    assert claims.size and not free.converged  # the claim is refuted: a restart followed
    k1 = int(claims[0])
    assert free.matvecs > free.iterations + 1  # the restart's true residual
    res = solvers.cg(op, b, rtol=1e-10, maxiter=k1)
    assert res.iterations == k1 and not res.converged and res.info == k1
    assert res.matvecs == k1 + 1  # the steps and the final true residual: no restart


class _StaleProducts:
    """Products with ``B`` for the first ``stale`` calls, with ``A`` after them: CG's recursion
    converges for ``B`` and the true residual, taken with ``A``, refutes the claim."""

    def __init__(self, A, B, stale):
        self.A, self.B, self.stale = A, B, stale
        self.shape, self.dtype = A.shape, np.dtype(np.float64)
        self.calls = 0

    def matvec(self, X):
        self.calls += 1
        return X @ (self.B if self.calls <= self.stale else self.A).T


@pytest.mark.parametrize("seed", [5, 6])
def test_residual_replacement_period_restarts_with_the_restart(seed, branch):
    """After a restart the next residual replacement comes a full period later: the restart is a
    fresh start of the replacement schedule, seen in which step pays the extra product."""
    n = 120
    A = np.diag(np.geomspace(1.0, 1e3, n))
    B = np.diag(np.repeat([1.0, 10.0, 100.0, 1000.0], n // 4))  # 4 distinct eigenvalues: 4 steps
    b = np.random.default_rng(seed).standard_normal(n)
    op = _StaleProducts(A, B, stale=4)
    calls, iterates = [], []

    def callback(x):
        calls.append(op.calls)
        iterates.append(x.copy())

    res = solvers.cg(op, b, rtol=1e-8, callback=callback)
    tol = 1e-8 * np.linalg.norm(b)
    assert res.converged and np.linalg.norm(b - A @ res.x) <= tol
    k = int(res.iterations)
    claims = np.flatnonzero(res.residual_norms[1:-1] <= tol) + 1
    np.testing.assert_array_equal(claims, [4])  # CG on B ends after 4 steps; A refutes it
    assert k > 4 + 2 * PERIOD  # two full periods after the restart
    # the products each step paid: its own; the true residual that refuted the claim before step
    # 5; a replacement every PERIOD steps counted from the restart
    replaced = np.arange(4 + PERIOD, k + 1, PERIOD)
    expected = np.ones(k, dtype=int)
    expected[4] += 1
    expected[replaced - 1] += 1
    np.testing.assert_array_equal(np.diff(calls, prepend=0), expected)
    assert res.matvecs == op.calls == k + replaced.size + 2  # and the closing true residual
    for j in replaced:  # the replaced rows of the history are the true residual of that iterate
        assert res.residual_norms[j] == pytest.approx(np.linalg.norm(b - A @ iterates[j - 1]), rel=1e-12)


def _spd(rng, n, kappa, dtype):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.geomspace(1.0, kappa, n)
    return ((q * eig) @ q.T).astype(dtype), eig


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bound_skips_the_closing_product_only_where_the_drift_bound_proves_it(seed, branch):
    # true_residual="bound": the closing product is left out exactly when the recursive residual
    # is below tol by more than DRIFT_FACTOR (k + 1) n eps (||b|| + 2 ||A||_est ||x||), about
    # 3e-9 ||b|| here (n = 400, kappa = 100, ~100 steps): rtol 1e-6 skips (the factor moved 1000x
    # up would not), rtol 1e-10 verifies (moved 1000x down, it would skip)
    rng = np.random.default_rng(seed)
    A, _ = _spd(rng, 400, 100.0, np.float64)
    b = rng.standard_normal(400)
    for rtol, skipped in ((1e-6, True), (1e-10, False)):
        verified = solvers.cg(A, b, rtol=rtol)
        bound = solvers.cg(A, b, rtol=rtol, true_residual="bound")
        assert verified.converged and bound.converged
        assert bound.iterations == verified.iterations
        assert bound.matvecs == verified.matvecs - (1 if skipped else 0)
        true = np.linalg.norm(b - A @ bound.x)
        assert true <= rtol * np.linalg.norm(b)
        np.testing.assert_allclose(bound.residual_norms[-1], true if not skipped else bound.residual_norms[-1])
        if skipped:  # the last row is the recursive residual, within the bound of the true one
            assert abs(bound.residual_norms[-1] - true) <= 1e-3 * rtol * np.linalg.norm(b)


@pytest.mark.parametrize("lam", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bound_never_reports_convergence_the_true_residual_refutes(dtype, lam, branch):
    # over several decades of lam and tolerances down to the dtype's reach: converged means the
    # dense true residual is within tol, whether or not the closing product ran; float32 at its
    # default tolerance never skips it at this size (the bound is above tol)
    rng = np.random.default_rng(int(lam * 100))
    A, _ = _spd(rng, 300, 1e3, np.float64)
    A = (A + lam * np.eye(300)).astype(dtype)
    b = rng.standard_normal((3, 300)).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    for rtol in (1e-2, 1e-4, 1e-6, 1e-10, 1e-13):
        if rtol < 10 * eps:
            continue
        res = solvers.cg(A, b, rtol=rtol, true_residual="bound", maxiter=2000)
        ref = solvers.cg(A, b, rtol=rtol, maxiter=2000)
        true = np.linalg.norm(b.astype(np.float64) - res.x.astype(np.float64) @ A.astype(np.float64).T, axis=-1)
        tol = rtol * np.linalg.norm(b.astype(np.float64), axis=-1)
        # the dense check in float64 of a float32 iterate: allow the dtype's own rounding of A x
        slack = 0 if dtype == np.float64 else 300 * eps * np.abs(A).sum(axis=1).max() * np.abs(res.x).max()
        assert np.all(true[res.converged] <= tol[res.converged] + slack)
        np.testing.assert_array_equal(res.converged, ref.converged)
        assert res.matvecs in (ref.matvecs, ref.matvecs - 1)
        if dtype == np.float32 and rtol >= 1e-4:
            assert res.matvecs == ref.matvecs


def test_bound_verifies_when_x0_is_given(branch):
    rng = np.random.default_rng(5)
    A, _ = _spd(rng, 100, 10.0, np.float64)
    b = rng.standard_normal(100)
    x0 = rng.standard_normal(100)
    res = solvers.cg(A, b, x0, rtol=1e-6, true_residual="bound")
    ref = solvers.cg(A, b, x0, rtol=1e-6)
    assert res.matvecs == ref.matvecs and res.iterations == ref.iterations
