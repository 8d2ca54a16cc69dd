"""GridGCRF.matvec_columns (vectors as the last axis) against the dense matrix, on both kernel
branches (compiled and the array code CuPy runs)."""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
from solvers.backend import array_kernels

K_OF = {4: 2, 8: 4, 12: 6}


@pytest.mark.parametrize("switch", [False, True], ids=["compiled", "array-code"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [(), (2,)], ids=["single", "batch2"])
@pytest.mark.parametrize("neighbourhood", [4, 8, 12])
def test_matvec_columns_matches_dense(neighbourhood, batch, dtype, switch):
    rng = np.random.default_rng(neighbourhood + len(batch))
    L, H, W = 3, 5, 6
    pw = (0.2 * rng.standard_normal(batch + (K_OF[neighbourhood], L, L, H, W))).astype(dtype)
    lam = 1.5 if not batch else np.array([0.01, 100.0])
    op = gcrflinalg.GridGCRF(pw, lam, neighbourhood=neighbourhood)
    dense = op.to_dense().astype(np.float64)
    for E in (1, 7):
        V = rng.standard_normal(batch + (op.size, E)).astype(dtype)
        keep = V.copy()
        with array_kernels(switch):
            out = op.matvec_columns(V)
        np.testing.assert_array_equal(V, keep)  # the input is not written
        assert out.shape == V.shape and out.dtype == op.dtype
        ref = dense @ V.astype(np.float64)
        tol = 1e-12 if dtype == np.float64 else 2e-5
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())
        # the same as the leading-axis product
        lead = op.matvec(np.moveaxis(V, -1, 0))
        np.testing.assert_allclose(np.moveaxis(out, -1, 0), lead, rtol=tol, atol=tol * np.abs(ref).max())


def test_matvec_columns_fortran_input_and_bad_shape():
    rng = np.random.default_rng(3)
    op = gcrflinalg.GridGCRF(0.1 * rng.standard_normal((2, 2, 2, 4, 5)), 1.0)
    Vt = np.asfortranarray(rng.standard_normal((op.size, 6)))  # the transpose of a C (6, N) block
    np.testing.assert_allclose(op.matvec_columns(Vt), op.to_dense() @ Vt, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        op.matvec_columns(np.ones((op.size,)))
    with pytest.raises(ValueError, match="shape"):
        op.matvec_columns(np.ones((op.size + 1, 2)))


@pytest.mark.parametrize("shape", [(1, 6), (6, 1), (2, 2)])
@pytest.mark.parametrize("neighbourhood", [8, 12])
def test_matvec_columns_thin_images(shape, neighbourhood):
    """Images of one row or one column (most edges leave the image) on both branches."""
    rng = np.random.default_rng(9)
    H, W = shape
    op = gcrflinalg.GridGCRF(0.3 * rng.standard_normal((K_OF[neighbourhood], 2, 2, H, W)), 0.5,
                             neighbourhood=neighbourhood)
    V = rng.standard_normal((op.size, 5))
    for switch in (False, True):
        with array_kernels(switch):
            np.testing.assert_allclose(op.matvec_columns(V), op.to_dense() @ V, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("switch", [False, True], ids=["compiled", "array-code"])
@pytest.mark.parametrize("batch", [(), (2,)], ids=["single", "batch2"])
@pytest.mark.parametrize("neighbourhood", [4, 8, 12])
def test_matvec_columns_quadratic_forms(neighbourhood, batch, switch):
    """``quadratic=True``: the product and ``v_e^T M v_e`` of every column against the dense matrix."""
    rng = np.random.default_rng(31 + neighbourhood)
    pw = 0.2 * rng.standard_normal(batch + (K_OF[neighbourhood], 2, 2, 4, 5))
    op = gcrflinalg.GridGCRF(pw, 1.0 if not batch else np.array([0.5, 10.0]), neighbourhood=neighbourhood)
    dense = op.to_dense()
    V = rng.standard_normal(batch + (op.size, 6))
    with array_kernels(switch):
        out, quad = op.matvec_columns(V, quadratic=True)
    ref = dense @ V
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert quad.shape == batch + (6,)
    np.testing.assert_allclose(quad, np.einsum("...ne,...ne->...e", V, ref), rtol=1e-12)
