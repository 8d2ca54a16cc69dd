"""The compiled Lanczos update (probe-major and probe-minor layouts) against the array code, and SLQ
through the CSR block product in both layouts and under the array-kernel switch."""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from gaussian_cases import case_by_id
from gcrflinalg.gaussian._common import block_product
from gcrflinalg.gaussian._kernels import fused_lanczos_available, lanczos_update
from gcrflinalg.gaussian.lanczos import LanczosState
from solvers.backend import array_kernels


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("k, n", [(1, 7), (5, 33), (30, 200)])
def test_lanczos_update_matches_formula(order, k, n):
    rng = np.random.default_rng(k * n)
    w, q, qp = (np.array(rng.standard_normal((k, n)), order=order) for _ in range(3))
    beta_prev = rng.random(k)
    alpha_ref = (q * w).sum(axis=1)
    w_ref = w - alpha_ref[:, None] * q - beta_prev[:, None] * qp
    q0, qp0 = q.copy(), qp.copy()
    with array_kernels(False):  # also when the whole run sets the switch
        assert fused_lanczos_available(w, q, qp)
    alpha, beta2 = lanczos_update(w, q, qp, beta_prev)
    np.testing.assert_allclose(alpha, alpha_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(beta2, (w_ref * w_ref).sum(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(q, q0)  # only w is written
    np.testing.assert_array_equal(qp, qp0)


def test_fused_availability():
    c = np.zeros((3, 4))
    f = np.asfortranarray(c)
    with array_kernels(False):
        assert fused_lanczos_available(c, c) and fused_lanczos_available(f, f)
        assert not fused_lanczos_available(c, f)  # mixed layouts: array code
        assert not fused_lanczos_available(c.astype(np.float32))
        assert not fused_lanczos_available(np.zeros((2, 3, 4), order="F"))
    with array_kernels(True):
        assert not fused_lanczos_available(c, c)


@pytest.mark.parametrize("case_id", ["grid-n8-L3-4x4", "lowrank-D4-L3-5x7"])
def test_lanczos_layouts_and_switch_agree(case_id):
    """The same Lanczos tridiagonals from probe-major and probe-minor starting blocks, compiled or
    array code, and their Ritz values inside the dense spectrum."""
    op, params = case_by_id(case_id).make(np.random.default_rng(2))
    dense = case_by_id(case_id).dense(params)
    ev = np.linalg.eigvalsh(dense)
    z = np.random.default_rng(3).standard_normal((6, op.size))
    runs = []
    for layout in (np.ascontiguousarray, np.asfortranarray):
        for switch in (False, True):
            with array_kernels(switch):
                st = LanczosState(block_product(op), layout(z)).run(4)  # before any invariant subspace
            runs.append((np.array(st.alpha), np.array(st.beta)))
    for a, b in runs[1:]:
        np.testing.assert_allclose(a, runs[0][0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b, runs[0][1], rtol=1e-10, atol=1e-12)
    theta = np.linalg.eigvalsh(st.tridiagonal())
    assert theta.min() >= ev.min() * (1 - 1e-10) and theta.max() <= ev.max() * (1 + 1e-10)


def test_slq_same_estimate_compiled_and_array_code():
    op, params = case_by_id("grid-n4-L1-4x5").make(np.random.default_rng(4))
    a = gcrflinalg.logdet(op, method="slq", num_probes=12, degree=10, rng=5)
    with array_kernels(True):
        b = gcrflinalg.logdet(op, method="slq", num_probes=12, degree=10, rng=5)
    np.testing.assert_allclose(a.value, b.value, rtol=1e-12)
    np.testing.assert_allclose(a.stderr, b.stderr, rtol=1e-9)
    ref = np.linalg.slogdet(case_by_id("grid-n4-L1-4x5").dense(params))[1]
    assert abs(a.value - ref) <= 5 * a.stderr + 1e-8 * abs(ref)


@pytest.mark.parametrize("order", ["C", "F"])
def test_lanczos_update_with_scales(order):
    """Unnormalised vectors with their scales give the update of the normalised ones."""
    rng = np.random.default_rng(21)
    k, n = 4, 50
    w, q, qp = (np.array(rng.standard_normal((k, n)), order=order) for _ in range(3))
    sq, sp, beta_prev = rng.random(k) + 0.5, rng.random(k) + 0.5, rng.random(k)
    # the true vectors are sq q and sp qp, and M (sq q) = sq w
    wt, qt, pt = sq[:, None] * w, sq[:, None] * q, sp[:, None] * qp
    alpha_ref = (qt * wt).sum(axis=1)
    w_ref = wt - alpha_ref[:, None] * qt - beta_prev[:, None] * pt
    alpha, beta2 = lanczos_update(w, q, qp, beta_prev, sq, sp)
    np.testing.assert_allclose(alpha, alpha_ref, rtol=1e-12)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(beta2, (w_ref * w_ref).sum(axis=1), rtol=1e-12)


def test_slq_early_stop_exact_on_compiled_path():
    """M = lam I in the probe-minor compiled path: every probe stops after one step with the exact
    value N log lam (no log 0, no division by a vanishing beta)."""
    op = gcrflinalg.GridGCRF(np.zeros((2, 2, 2, 6, 7)), 3.0)
    res = gcrflinalg.logdet(op, method="slq", num_probes=8, degree=20, rng=0)
    assert np.isfinite(res.value)
    np.testing.assert_allclose(res.value, op.size * np.log(3.0), rtol=1e-13)
    assert res.info["steps"] == 1


def test_lanczos_with_product_quadratic_forms():
    """The quadratic forms delivered by the product replace the update's own pass: same
    tridiagonals as the plain product, probe-minor and probe-major."""
    from gcrflinalg.gaussian._common import block_product_quadratic

    op, _ = case_by_id("grid-n8-L3-4x4").make(np.random.default_rng(6))
    quad = block_product_quadratic(op)
    assert quad is not None
    z = np.random.default_rng(7).standard_normal((5, op.size))
    ref = LanczosState(block_product(op), np.ascontiguousarray(z)).run(6)
    for layout in (np.ascontiguousarray, np.asfortranarray):
        st = LanczosState(block_product(op), layout(z), apply_quadratic=quad).run(6)
        np.testing.assert_allclose(np.array(st.alpha), np.array(ref.alpha), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(np.array(st.beta), np.array(ref.beta), rtol=1e-11, atol=1e-12)
    batched, _ = case_by_id("grid-n8-L3-4x4").make(np.random.default_rng(6), batch_shape=(2,))
    assert block_product_quadratic(batched) is None
