"""The shared operator machinery (shapes, flat views, dense and LinearOperator views, lam gradient),
exercised through a minimal dense G-CRF defined here: ``M = lam I + A`` with ``A`` given densely."""
import numpy as np
import pytest
import scipy.sparse.linalg as spla

import gcrflinalg
from gcrflinalg._validation import as_lam, as_parameter, check_shape_tail
from gcrflinalg.operator import DENSE_MAX_SIZE, GCRFOperator
from operator_checks import assert_symmetric


class DenseGCRF(GCRFOperator):
    """``A`` of shape (..., N, N) with vector shape (L, H, W)."""

    def __init__(self, A, lam, vector_shape):
        A = as_parameter(A, "A", min_ndim=2)
        n = int(np.prod(vector_shape))
        batch = check_shape_tail(A, (n, n), "A")
        lam_arr, lam_shape = as_lam(lam, batch, A.dtype, np)
        super().__init__(xp=np, dtype=A.dtype, batch_shape=batch, vector_shape=vector_shape,
                         lam=lam_arr, lam_shape=lam_shape)
        self.A = A

    def _matvec(self, v):
        flat = v.reshape(self.batch_shape + (self.size,))
        out = np.einsum("...ij,...j->...i", self.A, flat).reshape(v.shape)
        return out + self._lam_times(v)

    def _diagonal(self):
        d = np.diagonal(self.A, axis1=-2, axis2=-1) + self.lam[..., None]
        return d.reshape(self.batch_shape + self.vector_shape)

    def _parameter_gradients(self, x, g):
        xf = x.reshape(self.batch_shape + (self.size,))
        gf = g.reshape(self.batch_shape + (self.size,))
        return {"A": -np.einsum("...i,...j->...ij", gf, xf)}


def make(rng, batch=(), shape=(2, 3, 2), dtype=np.float64):
    n = int(np.prod(shape))
    B = rng.standard_normal(batch + (n, n))
    A = (B + np.swapaxes(B, -1, -2)) / (2 * n)
    lam = 2.0 + rng.random(batch) if batch else 2.5
    return DenseGCRF(A.astype(dtype), lam, shape), A, lam


@pytest.mark.parametrize("batch", [(), (3,), (2, 2)])
def test_shapes_and_layouts(rng, batch):
    op, A, lam = make(rng, batch)
    n = op.size
    assert op.shape == (n, n) and op.batch_shape == batch and op.vector_shape == (2, 3, 2)
    v = rng.standard_normal(batch + (n,))
    ref = np.einsum("...ij,...j->...i", A, v) + np.asarray(lam)[..., None] * v
    np.testing.assert_allclose(op.matvec(v), ref, rtol=1e-12)
    np.testing.assert_allclose(op.matvec(v.reshape(batch + (2, 3, 2))).reshape(v.shape), ref, rtol=1e-12)
    # extra leading axes: many right-hand sides per system
    V = rng.standard_normal((4,) + batch + (n,))
    out = op.matvec(V)
    for k in range(4):
        np.testing.assert_allclose(out[k], op.matvec(V[k]), rtol=1e-12)
    dense = op.to_dense()
    np.testing.assert_allclose(dense, A + np.asarray(lam)[..., None, None] * np.eye(n), rtol=1e-12)
    np.testing.assert_allclose(op.diagonal(), np.diagonal(dense, axis1=-2, axis2=-1))
    assert_symmetric(op, rng)


def test_wrong_shapes_and_dtypes(rng):
    op, _, _ = make(rng, (3,))
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        op.matvec(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="complex"):
        op.matvec(np.zeros((3, op.size), dtype=complex))
    out = op.matvec(np.ones((3, op.size), dtype=np.int64))
    assert out.dtype == np.float64


def test_float32_stays_float32(rng):
    op, _, _ = make(rng, (), dtype=np.float32)
    assert op.dtype == np.float32
    assert op.matvec(np.ones(op.size)).dtype == np.float32


def test_lam_validation(rng):
    n = 12
    A = np.zeros((n, n))
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="lam"):
            DenseGCRF(A, bad, (3, 2, 2))
    with pytest.raises(ValueError, match="batch shape"):
        DenseGCRF(np.zeros((2, n, n)), np.ones(3), (3, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        DenseGCRF(np.full((n, n), np.nan), 1.0, (3, 2, 2))


def test_to_dense_refuses_large_systems():
    op = DenseGCRF(np.zeros((1, 1)), 1.0, (1, 1, 1))
    op.vector_shape = (1, DENSE_MAX_SIZE + 1, 1)  # pretend: only the size check runs
    with pytest.raises(MemoryError, match="force=True"):
        op.to_dense()


def test_aslinearoperator_per_batch_item(rng):
    op, A, lam = make(rng, (2,))
    lin = op.aslinearoperator(1)
    assert isinstance(lin, spla.LinearOperator)
    v = rng.standard_normal(op.size)
    np.testing.assert_allclose(lin @ v, A[1] @ v + lam[1] * v, rtol=1e-12)
    np.testing.assert_allclose(lin.matmat(np.eye(op.size)), A[1] + lam[1] * np.eye(op.size), rtol=1e-12)
    x, info = spla.cg(lin, v, rtol=1e-12)
    assert info == 0
    np.testing.assert_allclose(x, np.linalg.solve(A[1] + lam[1] * np.eye(op.size), v), rtol=1e-8)
    with pytest.raises(ValueError, match="index"):
        op.aslinearoperator()


def test_lam_gradient_shared_and_per_item(rng):
    op, _, _ = make(rng, (3,))
    x = rng.standard_normal((3, op.size))
    g = rng.standard_normal((3, op.size))
    grads = op.parameter_gradients(x, g)
    np.testing.assert_allclose(grads["lam"], -np.sum(g * x, axis=-1))
    n = op.size
    shared = DenseGCRF(np.zeros((3, n, n)), 2.0, (2, 3, 2))
    np.testing.assert_allclose(shared.parameter_gradients(x, g)["lam"], -np.sum(g * x))
    assert shared.parameter_gradients(x, g)["lam"].shape == ()


def test_solve_against_numpy_and_no_mutation(rng):
    pytest.importorskip("solvers")
    op, A, lam = make(rng, (3,))
    n = op.size
    b = rng.standard_normal((3,) + op.vector_shape)
    b_copy = b.copy()
    for method in ("cg", "pcg", "gmres", "jacobi"):
        res = gcrflinalg.solve(op, b, method=method, rtol=1e-10, maxiter=5000)
        assert res.x.shape == b.shape
        ref = np.linalg.solve(A + lam[:, None, None] * np.eye(n), b.reshape(3, n)[..., None])[..., 0]
        np.testing.assert_allclose(res.x.reshape(3, n), ref, rtol=1e-7, atol=1e-9, err_msg=method)
    np.testing.assert_array_equal(b, b_copy)
    adj = gcrflinalg.adjoint_solve(op, b, rtol=1e-10)
    np.testing.assert_allclose(adj.x.reshape(3, n), ref, rtol=1e-7, atol=1e-9)


def test_solve_rejects_bad_input(rng):
    op, _, _ = make(rng, ())
    b = rng.standard_normal(op.size)
    with pytest.raises(ValueError, match="method"):
        gcrflinalg.solve(op, b, method="magic")
    bad = b.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gcrflinalg.solve(op, bad)
    with pytest.raises(ValueError, match="x0"):
        gcrflinalg.solve(op, b, x0=np.zeros(op.size + 1))
    with pytest.raises(ValueError, match="direct"):
        gcrflinalg.solve(op, b, method="direct")
