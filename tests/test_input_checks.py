"""The input checks one by one (``solvers.check_options`` and ``gcrflinalg._validation``), and the
paths behind them: every public path that takes solver options or parameters rejects bad ones
itself, so no path relies on a check that only another entry point makes.

Expected values come from the documented contract (docs/guarantees.md): the exception class, the
option named in the message, the normalised value, and whether an array is copied or viewed.
"""
from __future__ import annotations

import numpy as np
import pytest

import gcrflinalg
import solvers
from gcrflinalg import _validation as v
from gcrflinalg.forms.grid import GridGCRF, GridPottsGCRF
from solvers import OptionTypeError, check_options

# ------------------------------------------------------------------------- solvers.check_options


@pytest.mark.parametrize("value, expect", [
    (0, 0.0), (0.5, 0.5), (np.float32(0.25), 0.25), (np.array(1e-3), 1e-3), (np.int64(2), 2.0),
    (np.inf, np.inf), (-0.0, 0.0), (np.array(7, dtype=np.uint8), 7.0),
])
def test_tolerances_are_normalised_to_floats(value, expect):
    for name in ("rtol", "atol"):
        out = check_options(**{name: value})
        got = out[0] if name == "rtol" else out[1]
        assert type(got) is float and got == expect


def test_defaults_are_scipys():
    assert check_options() == (1e-5, 0.0, None)


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value", [None, "legacy", True, np.bool_(False), np.array(True), np.ones(2),
                                   np.ones((1,)), 1j, [1e-3]])
def test_tolerance_of_the_wrong_type(name, value):
    with pytest.raises(OptionTypeError, match=rf"cg: {name} must be a real number") as info:
        check_options(**{name: value}, method="cg")
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value", [-1e-300, -1.0, -np.inf, np.nan, np.array(-2.0)])
def test_tolerance_out_of_range(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a real number >= 0") as info:
        check_options(**{name: value})
    assert not isinstance(info.value, TypeError)


@pytest.mark.parametrize("value, expect", [(None, None), (0, 0), (1, 1), (np.int32(7), 7), (np.array(3), 3),
                                           (10**12, 10**12)])
def test_maxiter_is_normalised(value, expect):
    got = check_options(maxiter=value)[2]
    assert got == expect and (got is None or type(got) is int)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), np.array(False), 5.0, np.float64(3), "10", [3]])
def test_maxiter_of_the_wrong_type(value):
    with pytest.raises(OptionTypeError, match="gmres: maxiter must be an integer or None"):
        check_options(maxiter=value, method="gmres")


@pytest.mark.parametrize("value", [-1, np.int64(-5)])
def test_negative_maxiter(value):
    with pytest.raises(ValueError, match="maxiter must be an integer >= 0") as info:
        check_options(maxiter=value)
    assert not isinstance(info.value, TypeError)


def test_every_solver_checks_its_own_options():
    A, b = np.diag([1.0, 2.0, 3.0]), np.ones(3)
    for solver in (solvers.cg, solvers.gmres):
        with pytest.raises(ValueError, match="rtol"):
            solver(A, b, rtol=-1.0)
        with pytest.raises(OptionTypeError, match="atol"):
            solver(A, b, atol=None)
        with pytest.raises(OptionTypeError, match="maxiter"):
            solver(A, b, maxiter=2.5)
        assert solver(A, b, atol=np.inf).info == 0


# ------------------------------------------------------------------------ gcrflinalg._validation


@pytest.mark.parametrize("dtype, expect", [(np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float64),
                                           (np.int8, np.float64), (np.uint64, np.float64), (np.bool_, np.float64)])
def test_floating_dtype(dtype, expect):
    assert v.floating_dtype(dtype) == np.dtype(expect)


def test_floating_dtype_rejects_complex_and_non_numbers():
    with pytest.raises(ValueError, match="complex"):
        v.floating_dtype(np.complex128)
    for dt in (object, "U3", "M8[s]"):
        with pytest.raises(TypeError, match="real numeric"):
            v.floating_dtype(dt)


def test_check_finite():
    v.check_finite(np.zeros(0), "x")
    v.check_finite(np.ones(3), "x")
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="b contains NaN or Inf"):
            v.check_finite(np.array([1.0, bad]), "b")


def test_as_parameter_owns_what_it_keeps():
    x = np.arange(12.0).reshape(3, 4)
    kept = v.as_parameter(x, "w", min_ndim=2)
    assert not np.shares_memory(kept, x) and kept.dtype == np.float64 and kept.flags.c_contiguous
    x[0, 0] = 99.0
    assert kept[0, 0] == 0.0
    # a read-only array (down to its memory) is viewed, not copied
    ro = np.arange(12.0).reshape(3, 4).copy()
    ro.flags.writeable = False
    assert np.shares_memory(v.as_parameter(ro, "w", min_ndim=2), ro)
    # a read-only view of writeable memory is not frozen: copied
    view = x.view()
    view.flags.writeable = False
    assert not np.shares_memory(v.as_parameter(view, "w", min_ndim=2), x)
    # inside borrowed_parameters a writeable array is viewed; outside again copied
    with v.borrowed_parameters():
        assert np.shares_memory(v.as_parameter(x, "w", min_ndim=2), x)
    assert not np.shares_memory(v.as_parameter(x, "w", min_ndim=2), x)
    # a cast is the operator's own array already; lists are new arrays
    assert v.as_parameter(np.arange(4, dtype=np.int32), "w", min_ndim=1).dtype == np.float64
    assert v.as_parameter(x.astype(np.float32), "w", min_ndim=1, dtype=np.float64).dtype == np.float64
    assert v.as_parameter([[1, 2]], "w", min_ndim=2).dtype == np.float64
    assert x.flags.writeable and ro.flags.writeable is False


@pytest.mark.parametrize("bad, error, word", [
    (None, TypeError, "w must be a real numeric array; got NoneType"),
    ("abc", TypeError, "w must be a real numeric array; got str"),
    (np.ones((2, 2), dtype=complex), ValueError, "complex"), (np.array([["a"]]), TypeError, "dtype"),
    (np.ones(3), ValueError, "at least 2 axes"), (np.array([[1.0, np.nan]]), ValueError, "NaN"),
])
def test_as_parameter_rejects(bad, error, word):
    with pytest.raises(error, match=word):
        v.as_parameter(bad, "w", min_ndim=2)


class _DLPackOnly:
    """A writeable CPU array seen only through the DLPack protocol (as a framework tensor is)."""

    def __init__(self, arr):
        self.arr = arr

    def __dlpack__(self, **kwargs):
        return self.arr.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.arr.__dlpack_device__()


def test_as_parameter_copies_dlpack_views_of_writeable_memory():
    x = np.arange(6.0).reshape(2, 3)
    kept = v.as_parameter(_DLPackOnly(x), "w", min_ndim=2)
    x[0, 0] = 99.0  # the framework writes its tensor: the operator's parameter must not change
    assert kept[0, 0] == 0.0 and not np.shares_memory(kept, x)
    with v.borrowed_parameters():
        assert np.shares_memory(v.as_parameter(_DLPackOnly(x), "w", min_ndim=2), x)


def test_readonly_leaves_the_input_alone():
    x = np.ones(3)
    r = v.readonly(x)
    assert not r.flags.writeable and x.flags.writeable and np.shares_memory(r, x)
    assert v.readonly(r) is r


@pytest.mark.parametrize("lam, shape", [(2.0, (2, 3)), (np.float32(0.01), (2, 3)), (np.array([1.0, 100.0, 3.0]), (2, 3)),
                                        (np.full((2, 1), 0.5), (2, 3)), (7, ())])
def test_as_lam(lam, shape):
    full, lam_shape = v.as_lam(lam, shape, np.float64, np)
    assert full.shape == shape and lam_shape == np.shape(lam)
    np.testing.assert_array_equal(full, np.broadcast_to(np.asarray(lam, dtype=np.float64), shape))
    if isinstance(lam, np.ndarray):
        lam[...] = -1.0  # the operator's lam is its own
        assert np.all(full > 0)


@pytest.mark.parametrize("lam, error, word", [
    (None, TypeError, "lam must be a real number"), (True, TypeError, "lam must be a real number"),
    ("1", TypeError, "lam must be a real number"), (1 + 2j, ValueError, "lam must be real"),
    (np.array([1j]), ValueError, "lam must be real"), (np.array(["a"]), TypeError, "dtype"),
    (np.ones(4), ValueError, r"batch shape \(2, 3\)"), (0.0, ValueError, r"lam must be > 0"),
    (-1e-300, ValueError, "min"), (np.array([1.0, 0.0, 1.0]), ValueError, r"min\(lam\) = 0"),
    (np.nan, ValueError, "NaN"), (np.inf, ValueError, "NaN or Inf"),
])
def test_as_lam_rejects(lam, error, word):
    with pytest.raises(error, match=word):
        v.as_lam(lam, (2, 3), np.float64, np)


def test_check_shape_tail():
    assert v.check_shape_tail(np.zeros((5, 2, 3, 4)), (3, 4), "b") == (5, 2)
    assert v.check_shape_tail(np.zeros((3, 4)), (3, 4), "b") == ()
    for shape in ((4,), (3, 5), (4, 3)):
        with pytest.raises(ValueError, match=r"b must have shape \(\.\.\., 3, 4\) \(x\)"):
            v.check_shape_tail(np.zeros(shape), (3, 4), "b", "x")


@pytest.mark.parametrize("value, expect", [(True, True), (False, False), (1, True), (0, False),
                                           (np.bool_(True), True), (np.int64(0), False), ("exact", "exact")])
def test_check_pd_policy(value, expect):
    got = v.check_pd_policy(value)
    assert got == expect and type(got) is type(expect)


@pytest.mark.parametrize("value", ["yes", "", 2, -1, 0.5, None, 1.0])
def test_check_pd_policy_rejects(value):
    with pytest.raises(ValueError, match="check_pd must be True, False or 'exact'"):
        v.check_pd_policy(value)


def test_check_solver_options_normalises_only_what_is_given():
    assert v.check_solver_options({}) == {}
    out = v.check_solver_options({"rtol": np.float32(0.5), "maxiter": np.int64(3), "callback": print})
    assert out == {"rtol": 0.5, "maxiter": 3, "callback": print} and type(out["maxiter"]) is int
    out = v.check_solver_options({"atol": 1})
    assert out == {"atol": 1.0} and type(out["atol"]) is float
    given = {"rtol": -1.0}
    with pytest.raises(ValueError, match="rtol"):
        v.check_solver_options(given)
    with pytest.raises(OptionTypeError, match="maxiter"):
        v.check_solver_options({"maxiter": 1.5})
    assert given == {"rtol": -1.0}


# ------------------------------------------------------------- the paths behind the top-level check


def _ops(rng):
    pw = rng.standard_normal((2, 2, 2, 4, 4)) * 0.05
    wt = np.abs(rng.standard_normal((2, 4, 4))) * 0.05
    return [(GridGCRF(pw, 1.0), "reduced_cg"), (GridGCRF(pw, 1.0), "cg"), (GridPottsGCRF(wt, 1.0, 2, 4), "potts_split"),
            (GridGCRF(pw, 1.0), "auto"), (GridPottsGCRF(wt, 1.0, 2, 4), "auto")]


@pytest.mark.parametrize("options, error, word", [
    ({"rtol": -1e-3}, ValueError, "rtol"), ({"atol": -1.0}, ValueError, "atol"), ({"rtol": np.nan}, ValueError, "rtol"),
    ({"atol": None}, OptionTypeError, "atol"), ({"maxiter": -1}, ValueError, "maxiter"),
    ({"maxiter": 2.0}, OptionTypeError, "maxiter"), ({"rtol": "legacy"}, OptionTypeError, "rtol"),
])
def test_every_grid_path_rejects_bad_options(rng, options, error, word):
    for op, method in _ops(rng):
        b = np.ones(op.size)
        with pytest.raises(error, match=word):
            gcrflinalg.solve(op, b, method=method, **options)
        with pytest.raises(error, match=word):
            gcrflinalg.adjoint_solve(op, b, method=method, **options)


def test_every_grid_path_honours_infinite_tolerance_and_zero_maxiter(rng):
    for op, method in _ops(rng):
        b = rng.standard_normal(op.size)
        res = gcrflinalg.solve(op, b, method=method, rtol=np.inf)
        assert np.all(res.converged) and np.all(res.iterations == 0) and np.all(res.x == 0)
        res = gcrflinalg.solve(op, b, method=method, rtol=1e-10, maxiter=0)
        assert not np.any(res.converged) and np.all(res.iterations == 0)


def test_every_grid_path_rejects_bad_right_hand_sides(rng):
    for op, method in _ops(rng):
        for bad, error in ((np.full(op.size, np.nan), ValueError), (np.ones(op.size + 1), ValueError),
                           (np.ones(op.size, dtype=complex), ValueError)):
            with pytest.raises(error):
                gcrflinalg.solve(op, bad, method=method)
        with pytest.raises(ValueError):
            gcrflinalg.solve(op, np.ones(op.size), method=method, x0=np.full(op.size, np.inf))
        with pytest.raises(ValueError, match="check_pd"):
            gcrflinalg.solve(op, np.ones(op.size), method=method, check_pd="yes")
        b = np.ones(op.size)
        b.flags.writeable = False  # never written
        gcrflinalg.solve(op, b, method=method)
