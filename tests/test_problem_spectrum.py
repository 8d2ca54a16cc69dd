"""The spectral facts that set a built-in problem's ``lam``, and the reuse of the photograph.

``rho(B)`` and the positive-definiteness bound from :func:`gcrflinalg.problems.spectrum.offdiag_spectrum`
(Lanczos on the operator's product, or on the Potts grid's ``P x P`` weight matrix) are checked
against dense eigenvalues of the matrix assembled by explicit loops from docs/design.md (3.1, 3.2),
on problems just above the size where the dense path takes over, so the Lanczos paths run.
"""
from __future__ import annotations

import numpy as np
import pytest

from gcrflinalg import problems
from gcrflinalg.problems import photo, spectrum
from operator_cases import dense_grid_coupling


def _dense_offdiag(form, params, L, h, w):
    """``B = A - diag(A)`` of a grid problem (``diag(A) = 0`` there, so ``B = A``)."""
    if form == "grid":
        pw = params["pairwise"]
        return dense_grid_coupling(lambda k, i, j: pw[k, :, :, i, j], L, h, w, params["neighbourhood"])
    wt = params["weights"]
    return dense_grid_coupling(lambda k, i, j: wt[k, i, j] * (1.0 - np.eye(L)), L, h, w, params["neighbourhood"])


class CountingOperator:
    """Delegates to an operator and counts its full products."""

    def __init__(self, op):
        self._op = op
        self.products = 0

    def matvec(self, v):
        self.products += 1 if np.ndim(v) == 1 else np.shape(v)[0]
        return self._op.matvec(v)

    def __getattr__(self, name):
        return getattr(self._op, name)


# the whole photograph at stride 16 (37 x 32 = 1184 pixels > DENSE_MAX), few labels: the Lanczos
# paths run (on B, or on the Potts grid's W), and the dense reference stays affordable
# (stride 24: 25 x 21 = 525 pixels, between the dense limits of W and of B)
CASES = [("grid", 0, 2, 0.05, 16), ("grid", 1, 2, 0.3, 16), ("grid_potts", 0, 2, 0.01, 16),
         ("grid_potts", 1, 3, 0.1, 16), ("grid_potts", 3, 2, 0.738, 16), ("grid_potts", 1, 2, 0.001, 24)]


@pytest.mark.parametrize("form,index,labels,margin,stride", CASES)
def test_rho_within_the_documented_tolerance_of_dense_eigenvalues(form, index, labels, margin, stride):
    params, _, meta = problems.make_params(form, index, size="large", stride=stride, num_labels=labels,
                                           margin=margin)
    h, w = meta["image_shape"]
    assert h * w > spectrum.DENSE_MAX_WEIGHTS and meta["N"] > spectrum.DENSE_MAX
    ev = np.linalg.eigvalsh(_dense_offdiag(form, params, labels, h, w))
    rho, pd = max(abs(ev[0]), abs(ev[-1])), max(-ev[0], 0.0)
    tol = spectrum.spectrum_tolerance(margin)
    assert tol == pytest.approx(min(1e-2, margin / 100))
    # to a hundredth of the margin, relative, and enclosing (never below the true radius)
    assert rho * (1 - 1e-12) <= meta["offdiag_radius"] <= rho * (1 + tol)
    assert abs(meta["pd_bound"] - pd) <= tol * rho
    assert params["lam"] == pytest.approx((1 + margin) * meta["offdiag_radius"], rel=1e-14)
    # so the Jacobi radius rho(B) / lam stays at most 1 / (1 + margin)
    assert rho / params["lam"] <= 1 / (1 + margin) + 1e-12


@pytest.mark.parametrize("index", [0, 1])
def test_potts_spectrum_comes_from_the_weight_matrix(index):
    # products of size P, not L P: the full operator is applied once (the structure check)
    params, _, meta = problems.make_params("grid_potts", index, size="large", stride=12, num_labels=6,
                                           margin=0.1)
    op = CountingOperator(problems.build_operator("grid_potts", dict(params, lam=1.0)))
    rho, pd = spectrum.offdiag_spectrum(op, np.random.default_rng(3), tol=spectrum.spectrum_tolerance(0.1))
    assert op.products <= 2
    # against the generic path (Lanczos on B itself, to full accuracy)
    n = op.size

    def b_matvec(v):
        return op._op.matvec(v) - v

    lo, hi, steps = spectrum.lanczos_extremes(b_matvec, n, np.random.default_rng(4), tol=1e-9)
    assert steps > 20
    assert rho == pytest.approx(max(abs(lo), abs(hi)), rel=1e-3)
    assert pd == pytest.approx(max(-lo, 0.0), abs=1e-3 * rho)
    assert rho == pytest.approx(meta["offdiag_radius"], rel=2e-3)  # another start vector


def test_general_grid_spectrum_costs_a_few_dozen_products():
    params, _, _ = problems.make_params("grid", 0, size="large", stride=12, num_labels=3, margin=0.738)
    op = CountingOperator(problems.build_operator("grid", dict(params, lam=1.0)))
    spectrum.offdiag_spectrum(op, np.random.default_rng(3), tol=spectrum.spectrum_tolerance(0.738))
    assert 5 <= op.products <= 80


def test_lanczos_inner_products_do_not_depend_on_memory_layout_or_blas():
    # the estimate is a deterministic function of the seed: the same on a repeat
    rng_op = np.random.default_rng(0)
    Q = np.linalg.qr(rng_op.standard_normal((900, 900)))[0]
    d = np.linspace(-2.0, 3.0, 900)
    A = (Q * d) @ Q.T
    runs = [spectrum.lanczos_extremes(lambda v: A @ v, 900, np.random.default_rng(7), tol=1e-4) for _ in range(2)]
    assert runs[0] == runs[1]
    lo, hi, _ = runs[0]
    assert lo == pytest.approx(-2.0, rel=1e-3) and hi == pytest.approx(3.0, rel=1e-3)
    assert lo <= -2.0 + 1e-12 and hi >= 3.0 - 1e-12


@pytest.mark.parametrize("form,index,size,kw", [("grid_potts", 1, "large", dict(stride=12, num_labels=4)),
                                                ("grid", 2, "medium", {}), ("multires", 1, "small", {}),
                                                ("lowrank", 0, "small", {}), ("video", 1, "tiny", {})])
def test_cached_photograph_gives_the_same_problem(form, index, size, kw):
    photo._photo_at_stride.cache_clear()
    fresh = problems.make_params(form, index, size=size, **kw)
    assert photo._photo_at_stride.cache_info().currsize >= 1
    cached = problems.make_params(form, index, size=size, **kw)
    assert photo._photo_at_stride.cache_info().hits >= 1
    for a, b in zip(fresh[:2], cached[:2]):
        for x, y in zip(_arrays(a), _arrays(b)):
            np.testing.assert_array_equal(x, y)
    assert fresh[2] == cached[2]


def test_cached_photograph_is_the_block_average():
    full = photo._photo_full()
    for stride in (6, 8, 16):
        photo._photo_at_stride.cache_clear()
        h, w = full.shape[0] // stride, full.shape[1] // stride
        expect = np.empty((h, w, 3))
        for i in range(h):
            for j in range(w):
                expect[i, j] = full[i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].mean(axis=(0, 1))
        first, again = problems.load_photo(stride), problems.load_photo(stride)
        np.testing.assert_allclose(first, expect, rtol=1e-13, atol=0)
        np.testing.assert_array_equal(first, again)
        assert first.flags.writeable and not np.shares_memory(first, again)
        crop = problems.load_photo(stride, crop=(0, 0, h, w))  # the whole image as a crop: still a copy
        crop[:] = -1.0
        assert problems.load_photo(stride).min() >= 0.0


def _arrays(x):
    if isinstance(x, dict):
        return [a for v in x.values() for a in _arrays(v)]
    if isinstance(x, (list, tuple)):
        return [a for v in x for a in _arrays(v)]
    return [np.asarray(x)]
