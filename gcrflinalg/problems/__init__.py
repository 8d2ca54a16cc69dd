"""Built-in G-CRF problems: systems of every form derived from a photograph, and random ones.

Every problem comes from the photograph that ships with Matplotlib
(``matplotlib.cbook.get_sample_data("grace_hopper.jpg")``, 600 x 512 pixels), so nothing is
downloaded:

- the photograph is block-averaged at a *stride* (8 by default: 75 x 64 pixels) and cropped;
- unary scores ``b`` come from colour clusters of the crop (a small deterministic k-means);
- grid forms take pairwise terms from colour contrast, ``w_pq = alpha exp(-|c_p - c_q|^2 / (2 sigma^2))``;
- low-rank and video forms take embeddings from colour + position features: random Fourier features
  of ``f_p = (y/theta_pos, x/theta_pos, r/theta_col, g/theta_col, b/theta_col)`` approximate the
  bilateral kernel ``exp(-|f_p - f_q|^2 / 2)``, so the low-rank Potts form is a low-rank version of
  the fully-connected bilateral-kernel CRF.

``synthetic=True`` draws every parameter at random instead.  Everything is deterministic given
``(form, index, seed)``.

The shift ``lam`` is chosen with a margin above the spectral radius ``rho(B)`` of the off-diagonal
part ``B = A - diag(A)`` of the pairwise matrix: ``lam = (1 + margin) rho(B)``.  As ``diag(A) >= 0``
in every form, this makes ``M`` positive definite *and* makes Jacobi converge, with an iteration
matrix of spectral radius at most ``1 / (1 + margin)``, so all the classical solvers can be
compared on the same systems.  ``lam_rule="pd"`` instead puts ``lam`` just above the
positive-definiteness bound of docs/design.md ("Positive definiteness") (Jacobi may then diverge).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..forms.registry import FORMS as _REGISTRY
from ..forms.registry import resolve
from .params import SIZES
from .photo import (bilateral_features, colour_clusters, load_photo, random_fourier_features,
                    unaries_from_clusters)
from .spectrum import offdiag_spectrum, spectrum_tolerance, structured_spectrum

__all__ = [
    "FORMS",
    "SIZES",
    "Problem",
    "load_photo",
    "colour_clusters",
    "unaries_from_clusters",
    "bilateral_features",
    "random_fourier_features",
    "make_params",
    "build_operator",
    "make_problem",
    "problem_set",
]

#: The precision-matrix forms, in the order of the form registry.
FORMS = tuple(_REGISTRY)

_FORM_IDS = {form: i for i, form in enumerate(FORMS)}


@dataclasses.dataclass
class Problem:
    """One built-in G-CRF system ``M x = b``.

    Attributes
    ----------
    name : str
        Unique, readable name, e.g. ``"grid_potts-07"``.
    form : str
        One of :data:`FORMS`.
    operator : GCRFOperator
        The precision matrix ``M`` (built from ``params``).
    b : array, shape ``operator.vector_shape``
        Unary scores, on the operator's backend and dtype.
    params : dict
        The constructor arguments of the operator (NumPy arrays, ``lam``, options).
    meta : dict
        JSON-friendly facts: source, crop, stride, labels, ``N``, ``margin``, ``offdiag_radius``
        (``rho(B)``), ``pd_bound``, ``jacobi_radius_bound``.
    """

    name: str
    form: str
    operator: Any
    b: Any
    params: dict
    meta: dict

    @property
    def size(self) -> int:
        """``N``, the number of unknowns."""
        return int(self.meta["N"])

    def solve(self, method: str = "auto", **options):
        """``gcrflinalg.solve(self.operator, self.b, method, **options)`` (the same default method)."""
        from ..solve import solve

        return solve(self.operator, self.b, method, **options)


def make_params(form: str, index: int = 0, *, seed: int = 0, size: str = "small", synthetic: bool = False,
                margin=None, lam_rule: str = "jacobi", **overrides):
    """The parameters, right-hand side and facts of built-in problem ``index`` (NumPy, float64).

    Parameters
    ----------
    form : str
        One of :data:`FORMS`.
    index : int
        Selects crop, stride (8, 12 or 16), labels, neighbourhood and bandwidths; index 0 is a
        representative crop of the face at stride 8.
    seed : int
        Seeds every random choice; the same ``(form, index, seed, size, synthetic)`` gives the same
        problem bit for bit.
    size : {"tiny", "small", "medium", "large", "full"}
        Crop sizes (:data:`SIZES`; ``"tiny"`` systems have at most a few hundred unknowns); ``"large"`` is the whole photograph at the stride, ``"full"`` the
        whole photograph at full resolution (not for video).
    synthetic : bool
        Random parameters of the same shapes instead of photograph-derived ones.
    margin : float, optional
        ``lam = (1 + margin) * rho`` (see ``lam_rule``); default drawn in ``[0.05, 0.3]``.  ``rho`` is
        estimated to a hundredth of the margin (at most ``1e-3``) relative, so the margin holds to 1%.
    lam_rule : {"jacobi", "pd"}
        ``"jacobi"``: ``rho`` is the spectral radius of ``B = A - diag(A)`` (``M`` is PD and Jacobi
        converges); ``"pd"``: ``rho`` is the positive-definiteness bound of docs/design.md section 6
        (the smallest admissible ``lam``; Jacobi may diverge).
    **overrides
        ``stride``, ``num_labels``, ``num_features`` (low-rank), ``num_frames`` (video).

    Returns
    -------
    params : dict
        Operator constructor arguments (NumPy arrays and options) including ``lam``:

        - ``grid``: ``pairwise (K, L, L, H, W)``, ``neighbourhood`` (4, 8 or 12);
        - ``grid_potts``: ``weights (K, H, W)``, ``num_labels``, ``neighbourhood``;
        - ``multires``: ``levels`` (per level ``pairwise`` or ``weights`` as above), ``cross`` (per
          coupling ``(L, L, H_s, W_s)`` or ``(H_s, W_s)``), ``potts``, ``num_labels``, ``neighbourhood``;
        - ``lowrank``: ``embeddings (D, L, H, W)``;
        - ``lowrank_potts``: ``embeddings (D, H, W)``, ``num_labels``;
        - ``video``: ``spatial (V, Ds, L, H, W)``, ``temporal (V, Dt, L, H, W)``, ``neighbourhood``
          (``"fc"`` or a tuple of frame distances).
    b : numpy.ndarray or list of numpy.ndarray
        Unary scores of shape ``(L, H, W)`` (``(V, L, H, W)`` for video; one ``(L, H_s, W_s)`` per
        level for multires).
    meta : dict
        JSON-friendly description of the problem.
    """
    params, b, meta, _ = _make_params(form, index, seed=seed, size=size, synthetic=synthetic, margin=margin,
                                      lam_rule=lam_rule, **overrides)
    return params, b, meta


def _make_params(form, index, *, seed=0, size="small", synthetic=False, margin=None, lam_rule="jacobi",
                 **overrides):
    """:func:`make_params`, and the float64 NumPy operator when building the parameters built it
    (else None)."""
    _check_form(form)
    if lam_rule not in ("jacobi", "pd"):
        raise ValueError(f"lam_rule must be 'jacobi' or 'pd'; got {lam_rule!r}")
    index = int(index)
    if index < 0:
        raise ValueError(f"index must be >= 0; got {index}")
    rng = _rng(seed, form, index, synthetic)
    params, b, meta = _REGISTRY[form].problem_maker()(form, index, rng, size, synthetic, **overrides)
    coupling = params.pop("_coupling", None)
    if margin is None:
        margin = float(rng.uniform(0.05, 0.3))
    margin = float(margin)
    if margin <= 0:
        raise ValueError(f"margin must be > 0; got {margin}")
    # rho(B) to a hundredth of the margin: what lam needs, at a fraction of full accuracy's cost
    tol = spectrum_tolerance(margin)
    op = None
    if coupling is not None:
        # from the factors of the pairwise blocks; the operator is built once, with its lam, and one
        # product of it checks the factors, once per configuration (if they disagree, its own
        # products decide)
        rho, pd_bound, probe = structured_spectrum(coupling, _rng(seed, form, index, synthetic, stream=1), tol)
        params["lam"] = _lam(rho, pd_bound, margin, lam_rule)
        op = build_operator(form, params)
        if not coupling.agrees_with(op, probe):
            rho, pd_bound = offdiag_spectrum(op, _rng(seed, form, index, synthetic, stream=1), tol=tol)
            op = None
    else:
        probe = build_operator(form, dict(params, lam=1.0))
        rho, pd_bound = offdiag_spectrum(probe, _rng(seed, form, index, synthetic, stream=1), tol=tol)
    lam = _lam(rho, pd_bound, margin, lam_rule)
    params["lam"] = lam
    n = int(sum(np.size(x) for x in b)) if isinstance(b, list) else int(b.size)
    meta.update(form=form, index=index, seed=int(seed), size=size, synthetic=bool(synthetic),
                source="synthetic" if synthetic else "photo", N=n, lam=float(lam), margin=margin,
                lam_rule=lam_rule, offdiag_radius=float(rho), pd_bound=float(pd_bound),
                jacobi_radius_bound=float(rho / lam))
    return params, b, meta, op


def _lam(rho, pd_bound, margin, lam_rule) -> float:
    base = rho if lam_rule == "jacobi" else pd_bound
    # a system without pairwise terms still needs lam > 0
    return float((1.0 + margin) * base if base > 0 else 1.0)


def build_operator(form: str, params: dict, *, dtype=np.float64, xp=np):
    """The operator of ``form`` from :func:`make_params` parameters, on backend ``xp`` in ``dtype``.

    The operator class, its parameter names and constructor keywords come from the form registry;
    operator modules are imported here, on first use.
    """
    _check_form(form)
    spec = _REGISTRY[form]

    def arr(a):
        return xp.asarray(np.asarray(a, dtype=dtype))

    if spec.builder:
        return resolve(spec.builder)(params, arr)
    options = {key: params[key] for key in spec.constructor_options if key in params}
    arrays = [arr(params[name]) for name in spec.parameter_names]
    return spec.operator_class()(*arrays, params["lam"], **options)


def _rhs(form, b, op, dtype, xp):
    if isinstance(b, list):  # multires: levels concatenated, level 0 first
        flat = np.concatenate([np.asarray(x).reshape(-1) for x in b])
        return xp.asarray(flat.reshape(op.vector_shape).astype(dtype))
    return xp.asarray(np.asarray(b, dtype=dtype).reshape(op.vector_shape))


def make_problem(form: str, index: int = 0, *, seed: int = 0, size: str = "small", dtype=np.float64, xp=np,
                 synthetic: bool = False, **kwargs) -> Problem:
    """Built-in problem ``index`` of ``form``: parameters from :func:`make_params`, then the operator.

    Parameters
    ----------
    form, index, seed, size, synthetic
        As in :func:`make_params`.
    dtype : float32 or float64
        Dtype of the operator and of ``b``.
    xp : module
        ``numpy`` or ``cupy``: backend of the operator and of ``b``.
    **kwargs
        ``margin``, ``lam_rule`` and the overrides of :func:`make_params`.

    Returns
    -------
    Problem
    """
    params, b, meta, op = _make_params(form, index, seed=seed, size=size, synthetic=synthetic, **kwargs)
    if op is None or xp is not np or np.dtype(dtype) != np.float64:
        op = build_operator(form, params, dtype=dtype, xp=xp)
    name = f"{form}{'-synthetic' if synthetic else ''}-{int(index):02d}"
    meta["dtype"] = np.dtype(dtype).name
    return Problem(name=name, form=form, operator=op, b=_rhs(form, b, op, dtype, xp), params=params, meta=meta)


def problem_set(form: str, count: int = 25, *, seed: int = 0, quick: bool = False, **kwargs) -> list[Problem]:
    """Problems ``0`` to ``count - 1`` of ``form`` (``quick``: at most 3, size ``"small"``).

    Keyword arguments go to :func:`make_problem`.
    """
    count = int(count)
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    if quick:
        count = min(count, 3)
        kwargs["size"] = "small"
    return [make_problem(form, i, seed=seed, **kwargs) for i in range(count)]


def _check_form(form):
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}; got {form!r}")


def _rng(seed, form, index, synthetic, stream=0):
    return np.random.default_rng([int(seed), _FORM_IDS[form], int(index), int(bool(synthetic)), stream])
