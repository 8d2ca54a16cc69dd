"""Built-in problems: deterministic, positive definite (and Jacobi-convergent), every form covered.

The dense matrices are assembled here straight from docs/design.md section 3 with explicit loops, so the
checks do not rely on the problem module's own spectral computations or on the operators.
"""
from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest

from gcrflinalg import problems
from gcrflinalg.backend import to_host
from operator_cases import dense_grid_coupling

OPERATOR_MODULES = {
    "grid": "gcrflinalg.forms.grid",
    "grid_potts": "gcrflinalg.forms.grid",
    "multires": "gcrflinalg.forms.multires",
    "lowrank": "gcrflinalg.forms.lowrank",
    "lowrank_potts": "gcrflinalg.forms.lowrank",
    "video": "gcrflinalg.forms.video",
}


def _needs_operator(form):
    try:
        importlib.import_module(OPERATOR_MODULES[form])
    except ImportError as exc:
        pytest.skip(f"operator module of {form} not available: {exc}")


# --------------------------------------------------------------------------- dense references
def dense_reference(form, params, meta):
    """``M = lam I + A`` of a problem, from docs/design.md 3.1-3.6 (N x N, float64)."""
    L = meta["num_labels"]
    if form == "grid":
        h, w = meta["image_shape"]
        pw = params["pairwise"]
        A = dense_grid_coupling(lambda k, i, j: pw[k, :, :, i, j], L, h, w, params["neighbourhood"])
    elif form == "grid_potts":
        h, w = meta["image_shape"]
        wt = params["weights"]
        potts = 1.0 - np.eye(L)
        A = dense_grid_coupling(lambda k, i, j: wt[k, i, j] * potts, L, h, w, params["neighbourhood"])
    elif form == "multires":
        sizes = [tuple(s) for s in meta["level_shapes"]]
        potts = params["potts"]
        blocks = []
        for s, (hs, ws) in enumerate(sizes):
            lv = params["levels"][s]
            if potts:
                blocks.append(dense_grid_coupling(lambda k, i, j, lv=lv: lv[k, i, j] * (1.0 - np.eye(L)), L, hs, ws,
                                            params["neighbourhood"]))
            else:
                blocks.append(dense_grid_coupling(lambda k, i, j, lv=lv: lv[k, :, :, i, j], L, hs, ws,
                                            params["neighbourhood"]))
        starts = np.cumsum([0] + [L * hs * ws for hs, ws in sizes])
        A = np.zeros((starts[-1], starts[-1]))
        for s, blk in enumerate(blocks):
            A[starts[s]:starts[s + 1], starts[s]:starts[s + 1]] = blk
        for s in range(len(sizes) - 1):
            (hf, wf), (hc, wc) = sizes[s], sizes[s + 1]
            c = params["cross"][s]
            for i, j in itertools.product(range(hf), range(wf)):
                pi, pj = (i * hc) // hf, (j * wc) // wf
                for m, n in itertools.product(range(L), range(L)):
                    if potts and m == n:
                        continue
                    val = c[i, j] if potts else c[m, n, i, j]
                    r = starts[s] + m * hf * wf + i * wf + j
                    col = starts[s + 1] + n * hc * wc + pi * wc + pj
                    A[r, col] += val
                    A[col, r] += val
    elif form == "lowrank":
        E = params["embeddings"].reshape(params["embeddings"].shape[0], -1)
        A = E.T @ E
    elif form == "lowrank_potts":
        psi = params["embeddings"].reshape(params["embeddings"].shape[0], -1)
        A = np.kron(np.ones((L, L)) - np.eye(L), psi.T @ psi)
    elif form == "video":
        S, T = params["spatial"], params["temporal"]
        V = S.shape[0]
        n = int(np.prod(S.shape[2:]))
        Sf, Tf = S.reshape(V, S.shape[1], n), T.reshape(V, T.shape[1], n)
        nb = params["neighbourhood"]
        A = np.zeros((V * n, V * n))
        for u in range(V):
            A[u * n:(u + 1) * n, u * n:(u + 1) * n] = Sf[u].T @ Sf[u]
            for v in range(V):
                if u != v and (nb == "fc" or abs(u - v) in set(nb)):
                    A[u * n:(u + 1) * n, v * n:(v + 1) * n] = Tf[u].T @ Tf[v]
    else:
        raise AssertionError(form)
    return A + params["lam"] * np.eye(A.shape[0])


def _tiny(form, index, **kw):
    """A problem small enough for dense eigenvalues (N of a few hundred)."""
    return problems.make_params(form, index, size="tiny", **kw)


# --------------------------------------------------------------------------- photograph, clusters
def test_load_photo_shapes_range_and_no_aliasing():
    img = problems.load_photo()
    assert img.shape == (75, 64, 3) and img.dtype == np.float64
    assert 0.0 <= img.min() and img.max() <= 1.0
    full = problems.load_photo(1)
    assert full.shape == (600, 512, 3)
    # block averaging at stride 8 is the mean of each 8 x 8 block
    np.testing.assert_allclose(img[3, 5], full[24:32, 40:48].mean(axis=(0, 1)), rtol=1e-12)
    crop = problems.load_photo(8, crop=(10, 20, 5, 7))
    np.testing.assert_array_equal(crop, img[10:15, 20:27])
    img[:] = 0.0  # the cache must not be exposed
    assert problems.load_photo().max() > 0.0


@pytest.mark.parametrize("bad", [dict(stride=0), dict(stride=1000), dict(crop=(70, 0, 10, 10)),
                                 dict(crop=(0, 0, 0, 4))])
def test_load_photo_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        problems.load_photo(**bad)


def test_colour_clusters_deterministic_and_consistent():
    img = problems.load_photo(16)
    labels, centres = problems.colour_clusters(img, 4, seed=3)
    labels2, centres2 = problems.colour_clusters(img, 4, seed=3)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(centres, centres2)
    assert labels.shape == img.shape[:2] and centres.shape == (4, 3)
    # every pixel is assigned to its nearest centre
    d = ((img[:, :, None, :] - centres[None, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d.argmin(-1))
    assert np.all(np.diff(centres.sum(1)) >= 0)  # sorted by brightness
    with pytest.raises(ValueError):
        problems.colour_clusters(img[..., :2], 3)


def test_unaries_prefer_the_nearest_cluster_without_noise():
    img = problems.load_photo(16)
    b = problems.unaries_from_clusters(img, 5, seed=1, noise=0.0)
    labels, _ = problems.colour_clusters(img, 5, seed=1)
    assert b.shape == (5,) + img.shape[:2]
    np.testing.assert_array_equal(b.argmax(0), labels)


def test_random_fourier_features_approximate_the_gaussian_kernel():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((30, 5)) * 0.5
    phi = problems.random_fourier_features(f, 20000, np.random.default_rng(1))
    exact = np.exp(-0.5 * ((f[:, None] - f[None]) ** 2).sum(-1))
    assert np.abs(phi.T @ phi - exact).max() < 0.05


# --------------------------------------------------------------------------- problems
def test_forms_cover_design():
    assert problems.FORMS == ("grid", "grid_potts", "multires", "lowrank", "lowrank_potts", "video")


@pytest.mark.parametrize("form", problems.FORMS)
@pytest.mark.parametrize("synthetic", [False, True])
def test_params_are_deterministic(form, synthetic):
    for index in (0, 1):
        p1, b1, m1 = problems.make_params(form, index, seed=5, synthetic=synthetic, size="tiny")
        p2, b2, m2 = problems.make_params(form, index, seed=5, synthetic=synthetic, size="tiny")
        assert m1 == m2
        assert set(p1) == set(p2)
        for key in p1:
            a1, a2 = p1[key], p2[key]
            if isinstance(a1, list):
                for x, y in zip(a1, a2):
                    np.testing.assert_array_equal(x, y)
            else:
                np.testing.assert_array_equal(np.asarray(a1, dtype=object), np.asarray(a2, dtype=object))
        for x, y in zip(b1 if isinstance(b1, list) else [b1], b2 if isinstance(b2, list) else [b2]):
            np.testing.assert_array_equal(x, y)
    _, b_other, _ = problems.make_params(form, 0, seed=6, synthetic=synthetic, size="tiny")
    first = b_other[0] if isinstance(b_other, list) else b_other
    _, b_same, _ = problems.make_params(form, 0, seed=5, synthetic=synthetic, size="tiny")
    first_same = b_same[0] if isinstance(b_same, list) else b_same
    assert first.shape != first_same.shape or not np.array_equal(first, first_same)


@pytest.mark.parametrize("form", ["grid_potts", "lowrank_potts", "video"])
def test_twenty_five_distinct_problems(form):
    seen = set()
    for index in range(25):
        _, b, meta = problems.make_params(form, index, size="tiny")
        key = (meta["stride"], tuple(meta["crop"]), meta["num_labels"], meta["lam"])
        assert key not in seen
        seen.add(key)
        assert meta["source"] == "photo" and meta["N"] == np.size(b)


@pytest.mark.parametrize("form", problems.FORMS)
@pytest.mark.parametrize("index,synthetic", [(0, False), (1, False), (3, False), (2, True)])
def test_systems_are_positive_definite_and_jacobi_converges(form, index, synthetic):
    params, b, meta = _tiny(form, index, synthetic=synthetic)
    M = dense_reference(form, params, meta)
    assert M.shape == (meta["N"], meta["N"])
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    ev = np.linalg.eigvalsh(M)
    assert ev[0] > 1e-3 * params["lam"], (ev[0], params["lam"])
    # Jacobi iteration matrix I - D^{-1} M, similar to the symmetric I - D^{-1/2} M D^{-1/2}:
    # spectral radius at most 1/(1 + margin) < 1
    s = 1.0 / np.sqrt(np.diag(M))
    radius = np.abs(np.linalg.eigvalsh(np.eye(len(M)) - s[:, None] * M * s[None, :])).max()
    assert radius <= 1.0 / (1.0 + meta["margin"]) + 1e-8
    assert meta["jacobi_radius_bound"] == pytest.approx(1.0 / (1.0 + meta["margin"]))
    # lam sits above the positive-definiteness bound, and that bound is the tight one
    assert params["lam"] > meta["pd_bound"]
    assert ev[0] == pytest.approx(params["lam"] - meta["pd_bound"], rel=1e-6, abs=1e-8 * params["lam"])


@pytest.mark.parametrize("form", ["grid_potts", "lowrank_potts", "video", "grid"])
def test_pd_rule_puts_lam_just_above_the_bound(form):
    params, _, meta = _tiny(form, 1, lam_rule="pd", margin=0.01)
    ev = np.linalg.eigvalsh(dense_reference(form, params, meta))
    assert 0.0 < ev[0] <= 0.011 * params["lam"] + 1e-9


@pytest.mark.parametrize("form", problems.FORMS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_make_problem_builds_the_operator(form, dtype, rng):
    _needs_operator(form)
    prob = problems.make_problem(form, 1, size="tiny", dtype=dtype, xp=np)
    op = prob.operator
    assert op.dtype == np.dtype(dtype) and prob.b.dtype == np.dtype(dtype)
    assert tuple(prob.b.shape) == op.vector_shape and op.size == prob.size
    assert prob.name == f"{form}-01" and prob.form == form
    if dtype == np.float64:
        M = dense_reference(form, prob.params, prob.meta)
        np.testing.assert_allclose(to_host(op.to_dense()), M, rtol=1e-10, atol=1e-10 * np.abs(M).max())
        v = rng.standard_normal(op.size)
        np.testing.assert_allclose(to_host(op.matvec(v)), M @ v, rtol=1e-10, atol=1e-9 * np.abs(M).max())


def test_problem_set_and_quick():
    probs = problems.problem_set("lowrank_potts", 4)
    assert [p.name for p in probs] == [f"lowrank_potts-{i:02d}" for i in range(4)]
    quick = problems.problem_set("lowrank_potts", 25, quick=True, size="medium")
    assert len(quick) == 3 and all(p.meta["size"] == "small" for p in quick)


def test_sizes_grow():
    _, _, small = problems.make_params("grid_potts", 2, size="small")
    _, _, medium = problems.make_params("grid_potts", 2, size="medium")
    assert medium["N"] > small["N"]
    _, b, large = problems.make_params("lowrank_potts", 0, size="large", num_labels=4, num_features=8)
    assert b.shape == (4, 75, 64) and large["crop"] == [0, 0, 75, 64]


@pytest.mark.parametrize("kwargs", [dict(form="nope"), dict(form="grid", index=-1),
                                    dict(form="grid", size="huge"), dict(form="grid", margin=0.0),
                                    dict(form="grid", lam_rule="other")])
def test_bad_arguments_raise(kwargs):
    form = kwargs.pop("form")
    with pytest.raises(ValueError):
        problems.make_params(form, **kwargs)
    with pytest.raises(ValueError):
        problems.problem_set("grid", 0)
