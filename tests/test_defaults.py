"""One default method, ``"auto"``, and results that name the path that ran.

``"auto"`` is the default of :func:`gcrflinalg.solve`, :func:`gcrflinalg.adjoint_solve`,
``Problem.solve``, the windowed video solve and the torch/JAX layers; on every form it reports
the method it ran (``result.method``) next to the one requested (``result.requested_method``), and
costs exactly what that method costs when asked for by name.  ``"cg"`` stays plain CG on ``M``
(on the Potts grid the documented ``L + 1`` split of CG solves).
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import gcrflinalg
import solvers
from gcrflinalg import problems
from gcrflinalg.forms.registry import FORMS
from gcrflinalg.forms.video import solve_video_windows
from gcrflinalg.interop._forms import make_config
from gcrflinalg.solve import DEFAULT_METHOD, METHODS
from operator_cases import CASES

CASE_PARAMS = [pytest.param(c, id=c.id) for c in CASES]
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]

#: what "auto" may report on the factorising forms (the break-even rule chooses per problem)
FACTORISING = {"lowrank", "lowrank_potts", "video"}


def _default(fn, name="method"):
    return inspect.signature(fn).parameters[name].default


def _instance(case, dtype, seed=0, batch=(2,)):
    rng = np.random.default_rng([seed, sum(map(ord, case.id))])
    op, params = case.make(rng, dtype, batch)
    b = rng.standard_normal(batch + op.vector_shape).astype(dtype)
    return op, params, b


def _expected_auto(case, op):
    """The path "auto" must take on a case of the operator suite (docs/design.md, "The default method")."""
    if case.form == "grid":
        return {"reduced_cg"} if op.neighbourhood == 4 else {"cg"}
    if case.form == "grid_potts":
        return {"potts_split"} if op.num_labels > 1 else {"cg"}
    if case.form == "multires":
        return {"cg"}
    return {"cg", "direct", "cg+direct"}


# ============================================================================= one default


def test_default_method_is_auto_in_solve_adjoint_solve_and_problem_solve():
    assert DEFAULT_METHOD == "auto" and DEFAULT_METHOD in METHODS
    assert _default(gcrflinalg.solve) == DEFAULT_METHOD
    assert _default(problems.Problem.solve) == DEFAULT_METHOD
    assert _default(solve_video_windows) == DEFAULT_METHOD
    assert make_config.__kwdefaults__["method"] == DEFAULT_METHOD
    # adjoint_solve forwards its options to solve: its default is solve's, seen on the result
    op, _, b = _instance(CASES[0], np.float64)
    assert gcrflinalg.adjoint_solve(op, b).requested_method == DEFAULT_METHOD
    assert gcrflinalg.solve(op, b).requested_method == DEFAULT_METHOD
    problem = problems.make_problem("grid", 0, size="tiny")
    res = problem.solve()
    assert res.requested_method == DEFAULT_METHOD and res.method == "reduced_cg"


def test_torch_layers_default_to_solve_default():
    pytest.importorskip("torch")
    from gcrflinalg.interop import torch as gtorch

    assert _default(gtorch.gcrf_solve) == _default(gcrflinalg.solve)
    assert _default(gtorch.GCRFLayer.__init__) == _default(gcrflinalg.solve)
    layers = [spec.layer for spec in FORMS.values()]  # one layer class per form
    assert len(layers) == 6 and all(layers), layers
    for name in layers:  # the per-form classes inherit the default: check what an instance holds
        layer = getattr(gtorch, name)(1.0)
        assert layer.options["method"] == _default(gcrflinalg.solve), name
    assert gtorch.GCRFLayer("grid", 1.0).options["method"] == _default(gcrflinalg.solve)


def test_jax_layer_defaults_to_solve_default():
    pytest.importorskip("jax")
    from gcrflinalg.interop import jax as gjax

    assert _default(gjax.gcrf_solve) == _default(gcrflinalg.solve)


# ============================================================================= auto names what ran


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_auto_reports_the_method_it_ran_and_matches_numpy(case, dtype):
    op, params, b = _instance(case, dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    res = gcrflinalg.solve(op, b, rtol=rtol)  # the default method
    assert res.requested_method == "auto"
    assert res.method in _expected_auto(case, op), (case.id, res.method)
    assert "auto" not in res.method
    assert f"method={res.method!r}, requested_method='auto'" in repr(res)
    dense = case.dense(params)
    x_ref = np.linalg.solve(dense, b.reshape(b.shape[:1] + (op.size, 1)).astype(np.float64))[..., 0]
    x = np.asarray(res.x, dtype=np.float64).reshape(x_ref.shape)
    err = np.linalg.norm(x - x_ref, axis=-1) / np.linalg.norm(x_ref, axis=-1)
    assert np.all(res.converged) and np.all(err < (1e-3 if dtype == np.float32 else 1e-8)), err


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_auto_costs_what_the_method_it_names_costs(case):
    """``auto`` runs its named method: the same products, iterations and answer as that method
    asked for by name on a fresh operator of the same parameters."""
    op, params, b = _instance(case, np.float64, seed=1)
    auto = gcrflinalg.solve(op, b, "auto", rtol=1e-9)
    named = auto.method
    if named == "cg+direct":
        pytest.skip("the switch runs only on problems where CG stalls (tests/test_float32.py)")
    again = gcrflinalg.solve(case.rebuild(params), b, named, rtol=1e-9)
    assert again.method == auto.method and again.requested_method == named
    assert again.matvecs == auto.matvecs
    np.testing.assert_array_equal(again.iterations, auto.iterations)
    np.testing.assert_allclose(again.x, auto.x, rtol=1e-12, atol=1e-14 * np.abs(auto.x).max())


def test_auto_on_a_factorising_form_names_cg_direct_and_the_switch():
    # low-rank general, tiny: the factorisation is cheaper than a CG probe, so "auto" factors at
    # once, and reuses the cached factor on the next call
    case = next(c for c in CASES if c.form == "lowrank")
    op, _, b = _instance(case, np.float64)
    first = gcrflinalg.solve(op, b)
    second = gcrflinalg.solve(op, b)
    assert first.method == "direct" and second.method == "direct"
    assert second.requested_method == "auto"


def test_empty_batch_reports_the_request():
    op, _, b = _instance(CASES[0], np.float64)
    res = gcrflinalg.solve(op, b[None][:0])  # no right-hand side
    assert res.method == res.requested_method == "auto" and res.matvecs == 0


def test_pcg_names_itself():
    case = next(c for c in CASES if c.form == "grid" and c.info["neighbourhood"] == 8)
    op, _, b = _instance(case, np.float64)
    res = gcrflinalg.solve(op, b, "pcg", rtol=1e-9)
    assert res.method == "pcg" and res.requested_method == "pcg" and np.all(res.converged)


# ============================================================================= "cg" is plain CG


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_cg_is_plain_cg(case):
    """``method="cg"`` spends exactly the iterations and products of :func:`solvers.cg` on the same
    operator, on every form (the Potts grid's ``L + 1`` split is ``"potts_split"``), with the
    closing true-residual product left out where the drift bound proves it
    (``true_residual="bound"``: the forms' products are computed in working precision)."""
    op, params, b = _instance(case, np.float64, seed=2)
    flat = b.reshape(b.shape[:1] + (op.size,))
    ref = solvers.cg(op, flat, rtol=1e-9, true_residual="bound")
    verified = solvers.cg(op, flat, rtol=1e-9)
    res = gcrflinalg.solve(op, flat, "cg", rtol=1e-9)
    assert res.method == "cg" and res.requested_method == "cg"
    np.testing.assert_array_equal(res.iterations, ref.iterations)
    np.testing.assert_array_equal(res.iterations, verified.iterations)
    assert res.matvecs == ref.matvecs
    assert res.matvecs == verified.matvecs - 1  # float64 at rtol 1e-9: the bound proves it here
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-12, atol=1e-14 * np.abs(ref.x).max())
    dense = op.to_dense()
    true = np.linalg.norm(flat - np.einsum("snm,sm->sn", dense, res.x), axis=-1)
    assert np.all(true <= 1e-9 * np.linalg.norm(flat, axis=-1))


def test_potts_split_is_named_and_refuses_per_iterate_options(rng=np.random.default_rng(7)):
    """``"potts_split"`` is the split by name; on other forms, or with a ``callback``/``M``, it is
    an error; with one label (``M = lam I``) it is plain CG; ``"auto"`` with a callback is CG."""
    weights = 0.1 * rng.random((2, 5, 6))
    op = gcrflinalg.GridPottsGCRF(weights, 2.0, 3)
    b = rng.standard_normal(op.size)
    x_ref = np.linalg.solve(op.to_dense(), b)
    split = gcrflinalg.solve(op, b, "potts_split", rtol=1e-10)
    assert split.method == "potts_split" and np.allclose(split.x, x_ref, rtol=1e-8, atol=1e-10)
    with pytest.raises(TypeError, match="callback"):
        gcrflinalg.solve(op, b, "potts_split", callback=lambda x: None)
    seen = []
    auto = gcrflinalg.solve(op, b, "auto", rtol=1e-10, callback=seen.append)
    assert auto.method == "cg" and seen and np.allclose(auto.x, x_ref, rtol=1e-8, atol=1e-10)
    one = gcrflinalg.GridPottsGCRF(weights, 2.0, 1)
    res = gcrflinalg.solve(one, b[:30], "potts_split", rtol=1e-12)
    assert res.method == "cg" and np.allclose(res.x, b[:30] / 2.0)
    grid = gcrflinalg.GridGCRF(np.zeros((2, 2, 2, 5, 6)), 2.0)
    with pytest.raises(ValueError, match="potts_split"):
        gcrflinalg.solve(grid, rng.standard_normal(grid.size), "potts_split")
