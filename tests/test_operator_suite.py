"""Every operator check crossed with every registered case (``operator_cases.CASES``).

The references are independent of the package: dense matrices assembled in ``operator_cases`` straight
from docs/design.md section 3, ``numpy.linalg.solve``, and central finite differences.  A new form gets
every check here by registering a case.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import gcrflinalg
from operator_cases import CASES, FORMS, instance

CASE_PARAMS = [pytest.param(c, id=c.id) for c in CASES]
DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]
BATCHES = [pytest.param((), id="unbatched"), pytest.param((2,), id="batch2")]
SOLVE_PARAMS = [pytest.param(c, m, id=f"{c.id}-{m}") for c in CASES for m in c.methods]

DENSE_LIMIT = 8192  # README / docs/design.md: to_dense() refuses above this many unknowns


def _host(a):
    return gcrflinalg.to_host(a)


def _rng(*key):
    """A seeded generator per test (stable across runs and test orderings)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))




def tol(dtype):
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-11


def copies(*arrays):
    return [np.array(a, copy=True) for a in arrays]


def assert_unchanged(before, after, what):
    for i, (a, b) in enumerate(zip(before, after)):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        # bit-for-bit (NaN-safe, -0.0 distinguished)
        assert a.tobytes() == np.asarray(b).tobytes(), f"argument {i} mutated by {what}"


# ============================================================================= registry


def test_every_form_has_a_case():
    """Every form of the package has at least one registered case (a new form fails here until it
    registers one)."""
    try:
        from gcrflinalg.forms import registry
    except ImportError:
        expected = set(FORMS)
    else:
        expected = set(registry.FORMS)
    missing = expected - {c.form for c in CASES}
    assert not missing, f"forms without a case in tests/operator_cases.py: {sorted(missing)}"
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# ============================================================================= products vs dense


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_matvec_matches_dense(case, dtype, batch, xp):
    params, dense = instance(case, dtype, batch)
    op = case.rebuild(params, xp)
    N = dense.shape[-1]
    assert op.shape == (N, N) and op.size == N and op.batch_shape == batch and op.dtype == dtype
    assert op.vector_shape == case.info["vector_shape"] and int(np.prod(op.vector_shape)) == N
    rng = _rng("matvec", case.id, batch)
    t = tol(dtype)
    # flat layout, with one extra leading axis of right-hand sides
    v = rng.standard_normal((3,) + batch + (N,)).astype(dtype)
    ref = np.einsum("...ij,k...j->k...i", dense, v.astype(np.float64))
    scale = np.abs(dense).max() * np.abs(v).max() * N ** 0.5
    out = _host(op.matvec(xp.asarray(v)))
    assert out.shape == v.shape and out.dtype == dtype
    np.testing.assert_allclose(out, ref, rtol=t, atol=t * scale)
    # vector layout, one right-hand side per system
    vfull = v[0].reshape(batch + op.vector_shape)
    out_full = _host(op.matvec(xp.asarray(vfull)))
    assert out_full.shape == batch + op.vector_shape and out_full.dtype == dtype
    np.testing.assert_allclose(out_full.reshape(batch + (N,)), ref[0], rtol=t, atol=t * scale)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_to_dense_matches_reference(case, dtype, batch, xp):
    params, dense = instance(case, dtype, batch)
    op = case.rebuild(params, xp)
    got = _host(op.to_dense())
    assert got.shape == batch + dense.shape[-2:] and got.dtype == dtype
    t = tol(dtype)
    np.testing.assert_allclose(got, dense, rtol=t, atol=t * np.abs(dense).max())


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_symmetric_dot_test(case, dtype, batch, xp):
    params, dense = instance(case, dtype, batch)
    op = case.rebuild(params, xp)
    rng = _rng("dot", case.id, batch)
    u = rng.standard_normal(batch + (op.size,)).astype(dtype)
    v = rng.standard_normal(batch + (op.size,)).astype(dtype)
    Mu = _host(op.matvec(xp.asarray(u))).astype(np.float64)
    Mv = _host(op.matvec(xp.asarray(v))).astype(np.float64)
    lhs = np.sum(Mu * v, axis=-1)
    rhs = np.sum(u * Mv, axis=-1)
    ref = np.einsum("...i,...ij,...j->...", v.astype(np.float64), dense, u.astype(np.float64))
    scale = np.abs(dense).max() * op.size
    t = tol(dtype) * 10
    np.testing.assert_allclose(lhs, rhs, rtol=t, atol=t * scale)
    np.testing.assert_allclose(lhs, ref, rtol=t, atol=t * scale)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_diagonal_matches_dense(case, dtype, batch, xp):
    params, dense = instance(case, dtype, batch)
    op = case.rebuild(params, xp)
    d = _host(op.diagonal())
    assert d.shape == batch + (op.size,) and d.dtype == dtype
    t = tol(dtype)
    np.testing.assert_allclose(d, np.diagonal(dense, axis1=-2, axis2=-1), rtol=t, atol=t * np.abs(dense).max())


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_to_dense_guard(case):
    op = case.large(_rng("large", case.id))
    assert op.size > DENSE_LIMIT
    with pytest.raises(MemoryError, match="force=True"):
        op.to_dense()
    # the small operator of the case needs no force, and force=True changes nothing there
    params, dense = instance(case)
    small = case.rebuild(params)
    np.testing.assert_array_equal(_host(small.to_dense(force=True)), _host(small.to_dense()))


# ============================================================================= solves


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, method", SOLVE_PARAMS)
def test_solve_matches_numpy(case, method, dtype, xp):
    batch = (2,)
    params, dense = instance(case, dtype, batch)
    op = case.rebuild(params, xp)
    rng = _rng("solve", case.id, method)
    b = rng.standard_normal(batch + op.vector_shape).astype(dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-11
    res = gcrflinalg.solve(op, xp.asarray(b), method=method, rtol=rtol, maxiter=5000)
    x = _host(res.x)
    assert x.shape == b.shape and x.dtype == dtype
    assert np.all(_host(res.converged)), (method, res.info)
    x_ref = np.linalg.solve(dense, b.reshape(batch + (op.size, 1)).astype(np.float64))[..., 0]
    err = np.linalg.norm(x.reshape(x_ref.shape) - x_ref, axis=-1) / np.linalg.norm(x_ref, axis=-1)
    assert np.all(err < (1e-4 if dtype == np.float32 else 1e-9)), err


@pytest.mark.parametrize("method", ["cg", "direct"])
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_adjoint_solve_equals_forward_solve(case, method):
    params, dense = instance(case, np.float64, (2,))
    op = case.rebuild(params)
    c = _rng("adjoint", case.id).standard_normal((2, op.size))
    fwd = gcrflinalg.solve(op, c, method=method, rtol=1e-12).x
    adj = gcrflinalg.adjoint_solve(op, c, method=method, rtol=1e-12).x
    np.testing.assert_allclose(adj, fwd, rtol=1e-12, atol=1e-12 * np.abs(fwd).max())
    np.testing.assert_allclose(adj, np.linalg.solve(dense, c[..., None])[..., 0], rtol=1e-9, atol=1e-10)


# ============================================================================= gradients


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_parameter_gradients_finite_differences(case, batch):
    """``loss = sum(c * x)``, ``x = M(params)^{-1} b``: ``parameter_gradients(x, g)`` with
    ``g = M^{-1} c`` against central differences, on a few random entries of every parameter and on
    every ``lam``."""
    params, dense = instance(case, np.float64, batch)
    op = case.rebuild(params)
    rng = _rng("fd", case.id, batch)
    b = rng.standard_normal(batch + op.vector_shape)
    c = rng.standard_normal(batch + op.vector_shape)
    x = gcrflinalg.solve(op, b, method="direct").x
    g = gcrflinalg.adjoint_solve(op, c, method="direct").x
    # the solves themselves against the dense reference
    np.testing.assert_allclose(x.reshape(batch + (-1,)),
                               np.linalg.solve(dense, b.reshape(batch + (-1, 1)))[..., 0], rtol=1e-9, atol=1e-10)
    grads = op.parameter_gradients(x, g)
    assert set(grads) == set(params), (sorted(grads), sorted(params))

    def loss(ps):
        xx = gcrflinalg.solve(case.rebuild(ps), b, method="direct").x
        return float(np.sum(c * xx))

    eps = 1e-6
    for name, value in params.items():
        grad = _host(grads[name])
        assert grad.shape == value.shape, name
        n_probe = value.size if name == "lam" else min(3, value.size)
        picks = rng.choice(value.size, size=n_probe, replace=False)
        for flat in picks:
            idx = np.unravel_index(flat, value.shape)
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-7, err_msg=f"{name}{idx}")


# ============================================================================= batches


@pytest.mark.parametrize("batch", [pytest.param((2,), id="batch2"), pytest.param((2, 3), id="batch2x3")])
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_batched_equals_loop(case, batch):
    params, dense = instance(case, np.float64, batch)
    op = case.rebuild(params)
    assert op.batch_shape == batch
    rng = _rng("loop", case.id, batch)
    v = rng.standard_normal(batch + (op.size,))
    b = rng.standard_normal(batch + (op.size,))
    out = op.matvec(v)
    diag = op.diagonal()
    res = gcrflinalg.solve(op, b, method="cg", rtol=1e-12)
    grads = op.parameter_gradients(res.x, b)
    for idx in np.ndindex(*batch):
        item = {k: val[idx].copy() for k, val in params.items()}
        single = case.rebuild(item)
        assert single.batch_shape == ()
        one = single.matvec(v[idx])
        np.testing.assert_allclose(one, dense[idx] @ v[idx], rtol=1e-11, atol=1e-11)  # anchored
        np.testing.assert_allclose(out[idx], one, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(diag[idx], single.diagonal(), rtol=1e-14, atol=0)
        r1 = gcrflinalg.solve(single, b[idx], method="cg", rtol=1e-12)
        np.testing.assert_allclose(res.x[idx], r1.x, rtol=1e-9, atol=1e-10)
        g1 = single.parameter_gradients(r1.x, b[idx])
        assert set(g1) == set(grads)
        for key in g1:
            np.testing.assert_allclose(grads[key][idx], g1[key], rtol=1e-8, atol=1e-9, err_msg=key)


# ============================================================================= dtypes, inputs


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_dtype_policy(case):
    # float32 parameters: the operator computes in float32, whatever the right-hand side's dtype
    params32, dense32 = instance(case, np.float32, (2,))
    op32 = case.rebuild(params32)
    assert op32.dtype == np.float32
    rng = _rng("dtype", case.id)
    for vdtype in (np.float32, np.float64, np.int64):
        v = (rng.standard_normal((2, op32.size)) * 3).astype(vdtype)
        out = op32.matvec(v)
        assert out.dtype == np.float32, vdtype
        np.testing.assert_allclose(out, np.einsum("bij,bj->bi", dense32, v.astype(np.float64)),
                                   rtol=1e-4, atol=1e-4 * np.abs(dense32).max() * np.abs(v).max())
    assert op32.diagonal().dtype == np.float32 and op32.to_dense().dtype == np.float32
    x32 = gcrflinalg.solve(op32, rng.standard_normal((2, op32.size)), method="cg", rtol=1e-5).x
    assert x32.dtype == np.float32
    # float64 parameters, integer right-hand sides: cast like SciPy
    params, dense = instance(case, np.float64, (2,))
    op = case.rebuild(params)
    bi = rng.integers(-3, 4, size=(2, op.size)).astype(np.int64)
    out = op.matvec(bi)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, np.einsum("bij,bj->bi", dense, bi.astype(np.float64)), rtol=1e-12, atol=1e-12)
    for method in ("cg", "direct"):
        x = gcrflinalg.solve(op, bi, method=method, rtol=1e-12).x
        assert x.dtype == np.float64
        np.testing.assert_allclose(x, np.linalg.solve(dense, bi[..., None].astype(np.float64))[..., 0],
                                   rtol=1e-9, atol=1e-10)
    # complex right-hand sides are rejected
    bc = bi.astype(np.complex128) * (1 + 1j)
    for o in (op, op32):
        with pytest.raises(ValueError):
            o.matvec(bc)
        with pytest.raises(ValueError):
            gcrflinalg.solve(o, bc, method="cg")
        with pytest.raises(ValueError):
            gcrflinalg.solve(o, bc, method="direct")
        with pytest.raises(ValueError):
            gcrflinalg.adjoint_solve(o, bc)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_inputs_not_mutated(case, batch):
    params, dense = instance(case, np.float64, batch)
    names = list(params)
    arrays = [params[k] for k in names]
    rng = _rng("mutation", case.id, batch)
    b = rng.standard_normal(batch + (dense.shape[-1],))
    x0 = rng.standard_normal(b.shape)
    before = copies(*arrays, b, x0)

    def check(what):
        assert_unchanged(before, [params[k] for k in names] + [b, x0], what)

    op = case.rebuild(params)
    check("construction")
    op.matvec(b)
    check("matvec")
    op.matvec(b.reshape(batch + op.vector_shape))
    check("matvec (vector layout)")
    op.diagonal()
    check("diagonal")
    op.to_dense()
    check("to_dense")
    for method in case.methods:
        gcrflinalg.solve(op, b, method=method, x0=x0, rtol=1e-8, maxiter=5000)
        check(f"solve({method!r})")
        gcrflinalg.adjoint_solve(op, b, method=method, x0=x0, rtol=1e-8, maxiter=5000)
        check(f"adjoint_solve({method!r})")
    x = gcrflinalg.solve(op, b, method="direct").x
    g = gcrflinalg.adjoint_solve(op, x0, method="direct").x
    xg = copies(x, g)
    op.parameter_gradients(x, g)
    check("parameter_gradients")
    assert_unchanged(xg, [x, g], "parameter_gradients")
