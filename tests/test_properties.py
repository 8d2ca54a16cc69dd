"""Property-based tests of the public API over every registered form (docs/guarantees.md).

Operators are drawn over batch shapes (empty and single included), images down to 1x1 and 1xN,
L down to 1, ranks, neighbourhoods, float32/float64, C/Fortran/strided/read-only layouts and
scalar or per-system ``lam``.  ``lam`` is 1 plus the Gershgorin bound of a small dense build, so
every system is positive definite and strictly diagonally dominant (Jacobi and Gauss-Seidel
converge too).  Every check compares with dense NumPy linear algebra or a plain identity.
Profiles: ``HYPOTHESIS_PROFILE=ci`` (default, few examples) or ``long`` (tests/conftest.py).
"""
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import gcrflinalg as g  # noqa: E402
import solvers  # noqa: E402
from gcrflinalg import (GeneralLevel, GridGCRF, GridPottsGCRF, LowRankGCRF, LowRankPottsGCRF,  # noqa: E402
                        MultiResGCRF, PottsLevel, VideoGCRF)
from gcrflinalg.forms.registry import FORMS  # noqa: E402

K = {4: 2, 8: 4, 12: 6}
ERRORS = (ValueError, TypeError, g.NotPositiveDefiniteError)


# ------------------------------------------------------------------ strategies
def _layout(arr, layout):
    if layout == "F":
        return np.asfortranarray(arr)
    if layout == "strided":
        big = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), dtype=arr.dtype)
        big[..., ::2] = arr
        return big[..., ::2]
    if layout == "readonly":
        arr = arr.copy()
        arr.flags.writeable = False
    return arr


def _params(form, rng, batch, dtype, layout, sizes):
    """The parameter arrays and a builder ``lam -> operator`` of ``form``."""
    L, H, W, D, nb, V, Dt = sizes

    def arr(*shape, scale=0.5):
        return _layout((scale * rng.uniform(-1, 1, batch + shape)).astype(dtype), layout)

    if form == "grid":
        p = (arr(K[nb], L, L, H, W),)
        return p, lambda lam: GridGCRF(p[0], lam, nb)
    if form == "grid_potts":
        p = (arr(K[nb], H, W),)
        return p, lambda lam: GridPottsGCRF(p[0], lam, L, nb)
    if form == "multires":
        Hc, Wc = max(1, H // 2), max(1, W // 2)
        p = (arr(K[4], L, L, H, W), arr(K[4], Hc, Wc), arr(H, W))
        return p, lambda lam: MultiResGCRF([GeneralLevel(p[0]), PottsLevel(p[1])], [p[2]], lam,
                                           cross_forms="potts")
    if form == "lowrank":
        p = (arr(D, L, H, W),)
        return p, lambda lam: LowRankGCRF(p[0], lam)
    if form == "lowrank_potts":
        p = (arr(D, H, W),)
        return p, lambda lam: LowRankPottsGCRF(p[0], lam, L)
    if form == "video":
        p = (arr(V, D, L, H, W), arr(V, Dt, L, H, W, scale=0.3))
        return p, lambda lam: VideoGCRF(p[0], p[1], lam, "fc" if nb == 4 else {1})
    raise AssertionError(f"no strategy for the form {form!r}: add one")


def _gershgorin_lam(build, batch, per_system):
    """1 + the Gershgorin bound of A (from a dense build with lam = 1)."""
    op = build(1.0)
    dense = op.to_dense().astype(np.float64).reshape((-1,) + op.shape)
    A = dense - np.eye(op.size)
    bound = (np.abs(A).sum(axis=-1) - np.abs(np.diagonal(A, axis1=-2, axis2=-1))
             - np.diagonal(A, axis1=-2, axis2=-1)).max(axis=-1, initial=0.0)
    bound = np.maximum(bound, 0.0).reshape(batch)
    if per_system and batch:
        return 1.0 + bound
    return 1.0 + float(bound.max(initial=0.0))


@st.composite
def cases(draw, forms=tuple(FORMS), batches=((), (0,), (1,), (2,))):
    form = draw(st.sampled_from(forms))
    batch = draw(st.sampled_from(batches))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    layout = draw(st.sampled_from(["C", "F", "strided", "readonly"]))
    H = draw(st.integers(1, 4))
    W = draw(st.integers(1, 4))
    sizes = (draw(st.integers(1, 3)), H, W, draw(st.integers(1, 3)), draw(st.sampled_from([4, 8, 12])),
             draw(st.integers(1, 3)), draw(st.integers(0, 2)))
    if form == "multires":
        sizes = (sizes[0], H, W, sizes[3], 4, sizes[5], sizes[6])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params, build = _params(form, rng, batch, dtype, layout, sizes)
    lam = _gershgorin_lam(build, batch, draw(st.booleans()))
    return form, params, lam, build(lam)


def _methods(form, op):
    methods = ["cg", "pcg", "gmres", "jacobi", "gauss_seidel", "direct", "auto"]
    if form == "grid" and op.neighbourhood == 4:
        methods.append("reduced_cg")
    return methods


def _rtol(dtype):
    return 1e-10 if dtype == np.float64 else 1e-4


# ------------------------------------------------------------------ properties
@given(cases(), st.data())
def test_solve_recovers_x_for_every_method(case, data):
    form, params, lam, op = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(op.batch_shape + op.vector_shape).astype(op.dtype)
    b = op.matvec(x)
    dense = op.to_dense().astype(np.float64).reshape((-1,) + op.shape)
    cond = max((np.linalg.cond(m) for m in dense), default=1.0)
    rtol = _rtol(op.dtype)
    eps = float(np.finfo(op.dtype).eps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in _methods(form, op):
            res = g.solve(op, b, method, rtol=rtol, maxiter=5000)
            assert res.x.shape == b.shape
            assert np.all(res.converged), (method, res.info)
            err = np.abs(res.x.astype(np.float64) - x).max(initial=0.0)
            assert err <= 20 * cond * (rtol + 10 * op.size * eps) * max(1.0, np.abs(x).max(initial=0.0)), method


@given(cases(), st.data())
def test_operator_is_symmetric(case, data):
    _, _, _, op = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    u = rng.standard_normal(op.batch_shape + (op.size,)).astype(op.dtype)
    v = rng.standard_normal(op.batch_shape + (op.size,)).astype(op.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lhs = np.sum(op.matvec(u).astype(np.float64) * v, axis=-1)
        rhs = np.sum(u.astype(np.float64) * op.matvec(v), axis=-1)
    scale = np.linalg.norm(op.matvec(u), axis=-1) * np.linalg.norm(v, axis=-1) + 1.0
    assert np.all(np.abs(lhs - rhs) <= 100 * np.finfo(op.dtype).eps * op.size * scale)


@given(cases())
def test_diagonal_equals_the_dense_diagonal(case):
    _, _, _, op = case
    dense = op.to_dense()
    np.testing.assert_allclose(op.diagonal(), np.diagonal(dense, axis1=-2, axis2=-1),
                               rtol=10 * np.finfo(op.dtype).eps, atol=10 * np.finfo(op.dtype).eps)
    assert op.diagonal().shape == op.batch_shape + (op.size,)


@given(cases(batches=((), (2,))), st.sampled_from(["cg", "direct", "auto", "gmres"]), st.data())
def test_adjoint_solve_equals_the_forward_solve(case, method, data):
    _, _, _, op = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    b = rng.standard_normal(op.batch_shape + (op.size,)).astype(op.dtype)
    fwd = g.solve(op, b, method, rtol=_rtol(op.dtype))
    adj = g.adjoint_solve(op, b, method=method, rtol=_rtol(op.dtype))
    np.testing.assert_allclose(adj.x, fwd.x, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(fwd.x).max(initial=0)))


@given(cases(), st.sampled_from(["cg", "direct", "auto", "jacobi"]), st.data())
def test_no_input_is_mutated(case, method, data):
    form, params, lam, op = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    b = rng.standard_normal(op.batch_shape + op.vector_shape).astype(op.dtype)
    x0 = rng.standard_normal(b.shape).astype(op.dtype)
    inputs = list(params) + [b, x0] + ([lam] if isinstance(lam, np.ndarray) else [])
    before = [(a.copy(), a.flags.writeable) for a in inputs]
    res = g.solve(op, b, method, x0=x0 if method != "direct" else None, rtol=_rtol(op.dtype), maxiter=5000)
    g.adjoint_solve(op, b, method=method)
    op.parameter_gradients(res.x, res.x)
    op.diagonal()
    op.to_dense()
    for a, (copy, writeable) in zip(inputs, before):
        np.testing.assert_array_equal(a, copy)
        assert a.flags.writeable == writeable


# ------------------------------------------------------------------ invalid input
BAD_OPTIONS = st.sampled_from([
    ("rtol", -1e-3), ("rtol", np.nan), ("rtol", -np.inf), ("rtol", "1e-5"), ("rtol", None), ("rtol", [1e-5]),
    ("rtol", True), ("atol", -1.0), ("atol", np.nan), ("atol", "0"), ("atol", "legacy"), ("atol", None),
    ("maxiter", -1), ("maxiter", 2.5),
    ("maxiter", True), ("maxiter", "3"), ("maxiter", np.float64(3.0)),
])


@given(cases(batches=((), (1,), (0,))), st.sampled_from(["cg", "pcg", "gmres", "jacobi", "gauss_seidel",
                                                        "direct", "auto", "reduced_cg"]), BAD_OPTIONS)
def test_invalid_solver_options_name_the_option(case, method, bad):
    _, _, _, op = case
    name, value = bad
    b = np.ones(op.batch_shape + (op.size,), dtype=op.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ERRORS) as err:
            g.solve(op, b, method, **{name: value})
    assert name in str(err.value)


@given(cases(forms=("grid", "grid_potts", "lowrank", "lowrank_potts", "video"), batches=((), (2,))),
       st.sampled_from([0.0, -1.0, np.nan, np.inf, True, "2.0", None, 1 + 1j, np.ones(3), np.array([[1.0]] * 3)]))
def test_invalid_lam_names_lam(case, lam):
    form, params, _, _ = case
    build = {"grid": lambda: GridGCRF(params[0], lam, {2: 4, 4: 8, 6: 12}[params[0].shape[-5]]),
             "grid_potts": lambda: GridPottsGCRF(params[0], lam, 2, {2: 4, 4: 8, 6: 12}[params[0].shape[-3]]),
             "lowrank": lambda: LowRankGCRF(params[0], lam),
             "lowrank_potts": lambda: LowRankPottsGCRF(params[0], lam, 2),
             "video": lambda: VideoGCRF(params[0], params[1], lam)}[form]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises((ValueError, TypeError)) as err:
            build()
    assert "lam" in str(err.value)


@given(st.sampled_from([0, 3, 5, 4.5, 4.0, "4", "8", True, None, (4,)]), st.integers(1, 3))
def test_invalid_neighbourhood_lists_the_choices(nb, L):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="4, 8, 12"):
            GridGCRF(np.zeros((2, L, L, 2, 2)), 1.0, nb)
        with pytest.raises(ValueError, match="4, 8, 12"):
            GridPottsGCRF(np.zeros((2, 2, 2)), 1.0, L, nb)


@given(cases(batches=((), (2,))), st.sampled_from(["nan_b", "inf_x0", "wrong_b", "wrong_x0", "complex_b",
                                                    "str_b", "bad_method"]))
def test_invalid_vectors_name_the_argument(case, kind):
    _, _, _, op = case
    b = np.ones(op.batch_shape + (op.size,), dtype=op.dtype)
    x0 = None
    method, name = "cg", "b"
    if kind == "nan_b":
        b[..., 0] = np.nan
    elif kind == "inf_x0":
        x0, name = np.full(b.shape, np.inf), "x0"
    elif kind == "wrong_b":
        b = np.ones(op.batch_shape + (op.size + 1,))
    elif kind == "wrong_x0":
        x0, name = np.ones(op.batch_shape + (op.size + 1,)), "x0"
    elif kind == "complex_b":
        b = b * 1j
        name = "complex"
    elif kind == "str_b":
        b = np.array(["a"] * op.size)
        name = "dtype"
    else:
        method, name = "newton", "method"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ERRORS) as err:
            g.solve(op, b, method, x0=x0)
    assert name in str(err.value)


@given(cases(forms=("lowrank_potts",), batches=((), (2,))), st.floats(0.01, 1.0))
def test_lowrank_potts_below_the_bound_is_not_positive_definite(case, fraction):
    _, params, _, op = case
    if op.num_labels < 2:
        return
    psi = params[0].astype(np.float64).reshape(op.batch_shape + (params[0].shape[-3], -1))
    bound = max(np.linalg.norm(m, 2) ** 2 for m in psi.reshape((-1,) + psi.shape[-2:]))
    if bound == 0:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(g.NotPositiveDefiniteError, match="lam"):
            LowRankPottsGCRF(params[0], fraction * bound, op.num_labels).check_positive_definite()


# ------------------------------------------------------------------ solvers alone
@given(st.integers(1, 6), st.sampled_from([(), (0,), (1,), (3,)]),
       st.sampled_from(["cg", "gmres", "jacobi", "gauss_seidel"]), st.integers(0, 2**32 - 1),
       st.sampled_from([1e-8, np.array(1e-8), np.float32(1e-6)]), st.sampled_from([None, 5000, np.int64(5000)]))
def test_solvers_solve_diagonally_dominant_systems(n, batch, solver, seed, rtol, maxiter):
    rng = np.random.default_rng(seed)
    A = rng.uniform(-1, 1, (n, n))
    A = A + A.T
    A += (np.abs(A).sum(axis=1).max() + 1) * np.eye(n)
    b = rng.standard_normal(batch + (n,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = getattr(solvers, solver)(A, b, rtol=rtol, maxiter=maxiter)
    assert res.x.shape == b.shape and np.all(res.converged)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b[..., None])[..., 0] if b.size else b,
                               rtol=1e-5, atol=1e-6)


@given(BAD_OPTIONS, st.sampled_from(["cg", "gmres", "jacobi", "gauss_seidel"]))
def test_solvers_reject_invalid_options_by_name(bad, solver):
    name, value = bad
    with pytest.raises((ValueError, TypeError)) as err:
        getattr(solvers, solver)(2 * np.eye(3), np.ones(3), **{name: value})
    assert name in str(err.value)


# ------------------------------------------------------------------ CG's counts and breakdowns
def _spectrum_matrix(seed, n, kind, dtype):
    """``Q diag(d) Q^T`` with ``d`` positive (spd), of both signs (indefinite) or with zeros (singular)."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.1, 10.0, n)
    if kind == "indefinite":
        d[: max(1, n // 3)] *= -1
    elif kind == "singular":
        d[: max(1, n // 3)] = 0.0
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return ((Q * d) @ Q.T).astype(dtype), rng


@given(st.integers(0, 2**31 - 1), st.integers(2, 12), st.sampled_from(["spd", "indefinite", "singular"]),
       st.sampled_from([np.float32, np.float64]), st.sampled_from([1e-12, 1e-6, 1e-2]),
       st.integers(1, 40), st.booleans(), st.sampled_from([(), (3,)]), st.booleans())
def test_cg_counts_agree(seed, n, kind, dtype, rtol, maxiter, with_x0, batch, check_pd):
    """Wherever CG stops, ``converged``, ``info``, ``iterations`` and ``matvecs`` tell one story.

    ``info`` is 0 exactly when converged, -1 for a breakdown, else ``max(iterations, 1)``;
    ``iterations <= maxiter``; and ``matvecs`` is at most the iterations' products plus the
    documented extras (``r_0``, the final true residual, one per restart, one per stalled
    direction, one per 50 iterations): never products without iterations.  On an SPD matrix
    nothing raises; elsewhere a :class:`NotPositiveDefiniteError` names the Rayleigh quotient.
    """
    A, rng = _spectrum_matrix(seed, n, kind, dtype)
    b = rng.standard_normal(batch + (n,)).astype(dtype)
    x0 = rng.standard_normal(b.shape).astype(dtype) if with_x0 else None
    try:
        res = solvers.cg(A, b, x0, rtol=rtol, maxiter=maxiter, check_pd=check_pd)
    except solvers.NotPositiveDefiniteError as err:
        assert kind != "spd" and check_pd
        assert err.quantity == "p^T A p / p^T p" and err.value <= err.bound <= 0
        assert err.value >= np.linalg.eigvalsh(A.astype(np.float64))[0] - 1e-3 * np.abs(A).max()
        return
    info, conv, its = (np.atleast_1d(np.asarray(v)) for v in (res.info, res.converged, res.iterations))
    assert np.all((info == 0) == conv)
    assert np.all(info >= -1)
    assert np.all((info <= 0) | (info == np.maximum(its, 1)))
    assert np.all(its <= maxiter)
    systems = info.size
    extras = 2 + (1 if with_x0 else 0) + 2 * systems  # r_0, final check; a restart and a stall each
    assert res.matvecs <= int(its.max()) * (1 + 1 / 50) + extras, (res.matvecs, its, info)
    if kind == "spd" and dtype == np.float64:
        assert np.all(info != -1)
