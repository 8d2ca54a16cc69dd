"""Checks every G-CRF operator must pass, shared by the per-form test modules.

Each check compares the operator against an independent reference supplied by the test (a dense
matrix assembled straight from docs/design.md) or against mathematics (symmetry, finite differences).
"""
from __future__ import annotations

import numpy as np

import gcrflinalg
from gcrflinalg.backend import to_host


def tol(dtype):
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-10


def assert_dense_matches(op, dense_ref, rng, dtype=np.float64):
    """``op.to_dense()`` and ``op.matvec`` agree with ``dense_ref`` (batch_shape + (N, N))."""
    dense_ref = np.asarray(dense_ref, dtype=np.float64)
    t = tol(dtype)
    scale = max(1.0, np.abs(dense_ref).max())
    np.testing.assert_allclose(to_host(op.to_dense()), dense_ref, rtol=t, atol=t * scale)
    v = rng.standard_normal(op.batch_shape + (op.size,)).astype(dtype)
    ref = np.einsum("...ij,...j->...i", dense_ref, v.astype(np.float64))
    out = to_host(op.matvec(op.xp.asarray(v)))
    assert out.shape == v.shape
    np.testing.assert_allclose(out, ref, rtol=t, atol=t * scale * op.size ** 0.5)
    out_full = to_host(op.matvec(op.xp.asarray(v.reshape(op.batch_shape + op.vector_shape))))
    assert out_full.shape == op.batch_shape + op.vector_shape
    np.testing.assert_allclose(out_full.reshape(v.shape), out, rtol=t, atol=t * scale)


def assert_symmetric(op, rng, dtype=np.float64):
    """The adjoint identity ``<M u, v> = <u, M v>`` per system."""
    u = rng.standard_normal(op.batch_shape + (op.size,)).astype(dtype)
    v = rng.standard_normal(op.batch_shape + (op.size,)).astype(dtype)
    lhs = np.sum(to_host(op.matvec(op.xp.asarray(u))) * v, axis=-1)
    rhs = np.sum(u * to_host(op.matvec(op.xp.asarray(v))), axis=-1)
    scale = np.abs(lhs).max() + 1.0
    np.testing.assert_allclose(lhs, rhs, rtol=tol(dtype) * 10, atol=tol(dtype) * 10 * scale)


def fd_check_gradients(make_op, params, lam, b, *, method="cg", eps=1e-6, rtol=1e-5, atol=1e-7,
                       n_probe=8, rng=None, solve_options=None):
    """Central finite differences of ``loss = <c, x(params, lam)>`` against
    ``parameter_gradients`` (float64).

    ``make_op(params, lam)`` builds the operator from a list of parameter arrays; the gradients
    dict must hold one entry per parameter, in order of ``param_names`` of the returned mapping's
    keys other than ``"lam"``.
    """
    rng = rng or np.random.default_rng(0)
    opts = dict(rtol=1e-13, maxiter=100000) if method != "direct" else {}
    opts.update(solve_options or {})
    op = make_op(params, lam)
    c = rng.standard_normal(b.shape)
    x = gcrflinalg.solve(op, b, method=method, **opts).x
    g = gcrflinalg.adjoint_solve(op, c, method=method, **opts).x
    grads = op.parameter_gradients(x, g)
    names = [k for k in grads if k != "lam"]
    assert len(names) == len(params), (names, len(params))

    def loss(ps, lm):
        o = make_op(ps, lm)
        return float(np.sum(c * to_host(gcrflinalg.solve(o, b, method=method, **opts).x)))

    for pi, name in enumerate(names):
        grad = to_host(grads[name])
        assert grad.shape == params[pi].shape, (name, grad.shape, params[pi].shape)
        flat_idx = rng.choice(params[pi].size, size=min(n_probe, params[pi].size), replace=False)
        for fi in flat_idx:
            idx = np.unravel_index(fi, params[pi].shape)
            plus = [p.copy() for p in params]
            minus = [p.copy() for p in params]
            plus[pi][idx] += eps
            minus[pi][idx] -= eps
            fd = (loss(plus, lam) - loss(minus, lam)) / (2 * eps)
            np.testing.assert_allclose(grad[idx], fd, rtol=rtol, atol=atol, err_msg=f"{name}{idx}")
    lam_arr = np.asarray(lam, dtype=np.float64)
    glam = to_host(grads["lam"])
    assert glam.shape == lam_arr.shape
    for idx in np.ndindex(*lam_arr.shape):
        lp, lmn = lam_arr.copy(), lam_arr.copy()
        lp[idx] += eps
        lmn[idx] -= eps
        fd = (loss(params, lp if lp.ndim else float(lp)) - loss(params, lmn if lmn.ndim else float(lmn))) / (2 * eps)
        np.testing.assert_allclose(glam[idx], fd, rtol=rtol, atol=atol, err_msg=f"lam{idx}")
    return grads


def assert_not_mutated(arrays_before, arrays_after):
    for a, b in zip(arrays_before, arrays_after):
        np.testing.assert_array_equal(a, b)
