"""One-pass Lanczos steps on the general grid form: the fused update-and-product kernel against the
dense formula, and SLQ through it against the two-pass recurrence and dense quadratic forms."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import gcrflinalg
from gaussian_cases import case_by_id, reference_signs
from gcrflinalg.gaussian._common import block_lanczos_step, block_product, block_product_quadratic
from gcrflinalg.gaussian.lanczos import LanczosState
from solvers.backend import array_kernels

GRID_IDS = ["grid-n4-L1-4x5", "grid-n4-L3-3x5", "grid-n4-L2-1x7", "grid-n8-L3-4x4", "grid-n12-L3-3x5"]
_logdet_module = sys.modules["gcrflinalg.gaussian.logdet"]


def _grid(case_id, seed, lam=None):
    case = case_by_id(case_id)
    op, params = case.make(np.random.default_rng(seed))
    if lam is not None:
        params = dict(params, lam=np.full_like(params["lam"], lam))
        op = case.rebuild(params)
    assert op.dtype == np.float64 and not op.batch_shape
    return op, case.dense(params)


@pytest.mark.parametrize("case_id", GRID_IDS)
@pytest.mark.parametrize("k", [1, 7, 30])
def test_fused_kernel_matches_formula(case_id, k):
    op, M = _grid(case_id, 3)
    rng = np.random.default_rng(k)
    n = op.size
    W, Q, Qp = (rng.standard_normal((n, k)) for _ in range(3))
    sq, cq, cp = rng.random(k) + 0.5, rng.standard_normal(k), rng.random(k)
    x_ref = sq * W - cq * Q - cp * Qp
    q0 = Q.copy()
    with array_kernels(False):
        step = block_lanczos_step(op)
        assert step is not None
        dots, beta2 = step(W, Q, Qp, sq, cq, cp)
    np.testing.assert_allclose(Qp, x_ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(W, M @ x_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dots, np.einsum("nk,nk->k", x_ref, M @ x_ref), rtol=1e-12)
    np.testing.assert_allclose(beta2, (x_ref * x_ref).sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(Q, q0)  # only W and Qp are written


def test_fused_step_only_where_it_applies():
    op, _ = _grid("grid-n4-L3-3x5", 1)
    with array_kernels(False):
        assert block_lanczos_step(op) is not None
        assert block_lanczos_step(case_by_id("grid_potts-n8-L3-3x5").make(np.random.default_rng(0))[0]) is None
        op32 = case_by_id("grid-n4-L3-3x5").make(np.random.default_rng(0), dtype=np.float32)[0]
        assert block_lanczos_step(op32) is None
        batched = case_by_id("grid-n4-L3-3x5").make(np.random.default_rng(0), batch_shape=(2,))[0]
        assert block_lanczos_step(batched) is None
    with array_kernels(True):
        assert block_lanczos_step(op) is None


@pytest.mark.parametrize("case_id", GRID_IDS)
@pytest.mark.parametrize("lam", [0.01, 1.0, 100.0])
def test_slq_one_pass_equals_two_pass(case_id, lam, monkeypatch):
    """The same probes through the one-pass steps and through the two-pass recurrence: the same
    tridiagonals, so the same estimate to round-off, at the same number of products."""
    op, M = _grid(case_id, 5)
    # lam above the smallest eigenvalue of the pairwise part, so that M stays positive definite
    shift = max(0.0, -np.linalg.eigvalsh(M - float(op.lam) * np.eye(op.size))[0])
    op, M = _grid(case_id, 5, lam=lam + shift)
    with array_kernels(False):
        one = gcrflinalg.logdet(op, method="slq", num_probes=12, degree=8, rng=4)
        monkeypatch.setattr(_logdet_module, "block_lanczos_step", lambda op: None)
        two = gcrflinalg.logdet(op, method="slq", num_probes=12, degree=8, rng=4)
    np.testing.assert_allclose(one.value, two.value, rtol=1e-12)
    np.testing.assert_allclose(one.stderr, two.stderr, rtol=1e-9, atol=1e-12 * abs(two.value))
    assert one.info["matvecs"] == two.info["matvecs"] == 8


@pytest.mark.parametrize("case_id", ["grid-n4-L3-3x5", "grid-n8-L3-4x4", "grid-n12-L1-5x4"])
@pytest.mark.parametrize("degree", [1, 2, 25])
def test_slq_one_pass_against_dense_quadratic_forms(case_id, degree):
    """With enough steps each probe's quadrature equals ``z^T log(M) z`` of the dense matrix (the
    probes are the signs rademacher draws from the seed); with 1 or 2 steps it equals the Gauss
    rule computed from the dense Krylov basis of each probe."""
    op, M = _grid(case_id, 2)
    n, k = op.size, 6
    with array_kernels(False):
        res = gcrflinalg.logdet(op, method="slq", num_probes=k, degree=degree, rng=9, probing="rademacher")
    z = reference_signs(9, (k, n))
    if degree >= 25:
        w, V = np.linalg.eigh(M)
        ref = np.einsum("ki,ij,kj->k", z, (V * np.log(w)) @ V.T, z).mean()
        np.testing.assert_allclose(res.value, ref, rtol=1e-9)
        return
    per_probe = []
    for zk in z:
        # the k-step Gauss rule from an orthonormal basis of the Krylov space (dense, reference)
        basis = [zk]
        for _ in range(degree - 1):
            basis.append(M @ basis[-1])
        Qk, _ = np.linalg.qr(np.stack(basis, axis=1))
        Qk *= np.sign(Qk[:, :1].T @ zk)  # first column along z
        theta, S = np.linalg.eigh(Qk.T @ M @ Qk)
        per_probe.append(n * (S[0] ** 2 * np.log(theta)).sum())
    np.testing.assert_allclose(res.value, np.mean(per_probe), rtol=1e-10)


def test_lanczos_state_keeps_v0_unless_overwrite():
    op, M = _grid("grid-n4-L3-3x5", 7)
    rng = np.random.default_rng(0)
    v0 = np.asfortranarray(rng.standard_normal((5, op.size)))
    keep = v0.copy()
    with array_kernels(False):
        plain = LanczosState(block_product(op), v0.copy(order="F")).run(6)
        fused = LanczosState(block_product(op), v0, apply_quadratic=block_product_quadratic(op),
                             fused_step=block_lanczos_step(op)).run(6)
        np.testing.assert_array_equal(v0, keep)
        over = LanczosState(block_product(op), v0.copy(order="F"), apply_quadratic=block_product_quadratic(op),
                            fused_step=block_lanczos_step(op), overwrite=True).run(6)
    for st in (fused, over):
        np.testing.assert_allclose(np.stack(st.alpha), np.stack(plain.alpha), rtol=1e-11)
        np.testing.assert_allclose(np.stack(st.beta), np.stack(plain.beta), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(st.norms, plain.norms, rtol=1e-14)
        assert st.matvecs == plain.matvecs == 6


def _large_grid(neighbourhood, shape, seed):
    """A general grid operator with enough rows for several pixel ranges of the one-pass step."""
    K = {4: 2, 8: 4, 12: 6}[neighbourhood]
    L, H, W = shape
    rng = np.random.default_rng(seed)
    pairwise = 0.2 * rng.standard_normal((K, L, L, H, W))
    return gcrflinalg.GridGCRF(pairwise, 4.0, neighbourhood=neighbourhood)


@pytest.mark.parametrize("neighbourhood,shape", [(4, (3, 37, 6)), (8, (2, 41, 5)), (12, (2, 60, 4)),
                                                 (4, (1, 9, 13))])
def test_fused_kernel_split_into_ranges(neighbourhood, shape, monkeypatch):
    """The one-pass step split into pixel ranges (edges crossing a boundary and ``x . M x`` near it
    done after the ranges): the formula against the CSR matrix, and the same bits on one thread
    and on two."""
    from gcrflinalg.forms.grid import kernels

    monkeypatch.setattr(kernels, "LANCZOS_PARALLEL_MIN_ENTRIES", 0)  # threads even on a small grid
    op = _large_grid(neighbourhood, shape, 1)
    L, H, W = shape
    reach = max(di * W + dj for di, dj in op.offsets)
    starts = kernels.lanczos_ranges(H * W, reach)
    assert starts[0] == 0 and starts[-1] == H * W and np.all(np.diff(starts) >= 4 * reach)
    if H * W >= 8 * reach:
        assert starts.size > 2  # several ranges
    M = op.to_sparse().tocsr()
    rng = np.random.default_rng(2)
    k = 7
    W0, Q, Qp0 = (rng.standard_normal((op.size, k)) for _ in range(3))
    sq, cq, cp = rng.random(k) + 0.5, rng.standard_normal(k), rng.random(k)
    x_ref = sq * W0 - cq * Q - cp * Qp0
    Mx = M @ x_ref
    results = []
    for threads in (1, 2):
        Wt, Qpt = W0.copy(), Qp0.copy()
        with array_kernels(False):
            dots, beta2 = op._lanczos_columns(Wt, Q, Qpt, sq, cq, cp, threads=threads)
        np.testing.assert_allclose(Qpt, x_ref, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(Wt, Mx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dots, np.einsum("nk,nk->k", x_ref, Mx), rtol=1e-12)
        np.testing.assert_allclose(beta2, (x_ref * x_ref).sum(axis=0), rtol=1e-12)
        results.append((Wt, Qpt, dots, beta2))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_slq_same_bits_on_any_thread_count(monkeypatch):
    """SLQ through the split one-pass steps gives the same bits whatever the thread count (and
    whatever count each step's timing picks)."""
    from gcrflinalg.forms.grid import kernels

    monkeypatch.setattr(kernels, "LANCZOS_PARALLEL_MIN_ENTRIES", 0)
    op = _large_grid(4, (3, 40, 8), 3)
    with array_kernels(False):
        with gcrflinalg.num_threads(1):
            one = gcrflinalg.logdet(op, method="slq", num_probes=9, degree=12, rng=5)
        with gcrflinalg.num_threads(2):
            two = gcrflinalg.logdet(op, method="slq", num_probes=9, degree=12, rng=5)
        monkeypatch.setattr(_logdet_module, "block_lanczos_step", lambda op: None)
        ref = gcrflinalg.logdet(op, method="slq", num_probes=9, degree=12, rng=5)
    assert one.value == two.value and one.stderr == two.stderr
    np.testing.assert_allclose(one.value, ref.value, rtol=1e-12)


def test_step_threads_keeps_the_faster_count():
    from gcrflinalg.threads import StepThreads

    chooser = StepThreads(period=3, threads=2)
    seen = []
    walls = [1.0, 0.5,  # trial: one thread faster
             9, 9, 9,  # one thread for `period` calls, then a trial
             0.2, 0.5,  # two threads faster
             0.25, 0.3, 0.35,  # kept while within twice the fastest two-thread call
             0.6,  # more than twice: a trial follows
             0.3, 0.9, 0.2]  # two threads faster again
    for wall in walls:
        seen.append(chooser.count())
        chooser.record(wall)
    assert seen == [2, 1, 1, 1, 1, 2, 1, 2, 2, 2, 2, 2, 1, 2]
    serial = StepThreads(threads=1)
    for _ in range(5):
        assert serial.count() == 1
        serial.record(1.0)
    with gcrflinalg.num_threads(1):
        assert StepThreads().count() == 1


def test_shared_step_threads_persist_per_key_thread_and_count():
    """A shared chooser carries what it learnt into the next run (no new trial), is distinct per
    key, per calling thread and per thread setting, and the registry stays bounded."""
    import threading

    from gcrflinalg import threads as policy
    from gcrflinalg.threads import StepThreads

    policy._shared_choosers.clear()
    with gcrflinalg.num_threads(2):
        a = StepThreads.shared(("k", 1))
        for wall in (0.5, 1.0):  # the trial: two threads faster
            a.count()
            a.record(wall)
        b = StepThreads.shared(("k", 1))
        assert b is a and [b.count() for _ in range(3)] == [2, 2, 2]  # no trial in the next run
        assert StepThreads.shared(("k", 2)) is not a
        other = []
        t = threading.Thread(target=lambda: other.append(StepThreads.shared(("k", 1))))
        t.start()
        t.join()
        assert other[0] is not a
    with gcrflinalg.num_threads(1):
        assert StepThreads.shared(("k", 1)) is not a
    for i in range(policy.SHARED_CHOOSERS + 5):
        StepThreads.shared(("many", i))
    assert len(policy._shared_choosers) == policy.SHARED_CHOOSERS
    policy._shared_choosers.clear()


def test_slq_runs_share_the_thread_choice(monkeypatch):
    """Two SLQ runs on fresh operators of one shape use one chooser: the second starts from the
    first's choice, not from a new trial."""
    from gcrflinalg import threads as policy

    policy._shared_choosers.clear()
    counts = []
    op, _ = _grid("grid-n4-L3-3x5", 3)
    real = type(op)._lanczos_columns

    def spy(self, *args, threads=None):
        counts.append(threads)
        return real(self, *args, threads=threads)

    monkeypatch.setattr(type(op), "_lanczos_columns", spy)
    with gcrflinalg.num_threads(2):
        fresh, _ = _grid("grid-n4-L3-3x5", 3)
        gcrflinalg.logdet(fresh, method="slq", num_probes=8, degree=6, rng=1)
        (key, chooser), = [(k, c) for k, c in policy._shared_choosers.items() if "lanczos_columns" in k[2]]
        assert counts[:2] == [2, 1]  # the first run starts with a trial: two threads, then one
        state = (chooser._trial, chooser.choice)
        counts.clear()
        fresh, _ = _grid("grid-n4-L3-3x5", 3)
        gcrflinalg.logdet(fresh, method="slq", num_probes=8, degree=6, rng=2)
        assert policy._shared_choosers[key] is chooser
        if state[0] is None:  # no trial pending: the second run goes on with the choice
            assert counts[0] == state[1]
    policy._shared_choosers.clear()
