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
positive-definiteness bound of DESIGN.md section 6 (Jacobi may then diverge).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

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

#: The precision-matrix forms of DESIGN.md section 3, in that order.
FORMS = ("grid", "grid_potts", "multires", "lowrank", "lowrank_potts", "video")

#: Problem sizes: ``(crop height range, crop width range, label range)`` in pixels of the
#: stride-downsampled photograph.  ``"large"`` is the whole photograph at the stride, ``"full"`` the
#: whole photograph at full resolution (stride 1).
SIZES = {
    "tiny": ((5, 8), (5, 8), (2, 3)),
    "small": ((9, 16), (9, 16), (3, 5)),
    "medium": ((20, 32), (20, 32), (4, 7)),
}

_FORM_IDS = {form: i for i, form in enumerate(FORMS)}


# --------------------------------------------------------------------------- the photograph
@functools.lru_cache(maxsize=1)
def _photo_full() -> np.ndarray:
    import matplotlib.cbook as cbook
    import matplotlib.image as mimage

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        img = mimage.imread(fh, format="jpg")
    img = np.asarray(img, dtype=np.float64)
    if img.max() > 1.0:
        img = img / 255.0
    img = img[..., :3]
    img.setflags(write=False)
    return img


def load_photo(stride: int = 8, crop=None) -> np.ndarray:
    """The photograph shipped with Matplotlib, block-averaged at ``stride`` and optionally cropped.

    Parameters
    ----------
    stride : int
        Side of the square blocks averaged into one pixel (1 = full resolution, 600 x 512).  Rows and
        columns that do not fill a block are dropped.
    crop : (top, left, height, width), optional
        Window of the *downsampled* image to return.

    Returns
    -------
    numpy.ndarray, shape ``(H, W, 3)``, float64 in ``[0, 1]``
        A new array (the cached photograph is never exposed).
    """
    stride = int(stride)
    if stride < 1:
        raise ValueError(f"stride must be a positive integer; got {stride}")
    img = _photo_full()
    h, w = img.shape[0] // stride, img.shape[1] // stride
    if h < 1 or w < 1:
        raise ValueError(f"stride {stride} is larger than the photograph {img.shape[:2]}")
    out = img[: h * stride, : w * stride].reshape(h, stride, w, stride, 3).mean(axis=(1, 3))
    if crop is not None:
        top, left, ch, cw = (int(c) for c in crop)
        if top < 0 or left < 0 or ch < 1 or cw < 1 or top + ch > h or left + cw > w:
            raise ValueError(f"crop {tuple(crop)} does not fit the {h} x {w} image at stride {stride}")
        out = out[top: top + ch, left: left + cw]
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------- unaries
def colour_clusters(image, num_labels: int, seed: int = 0, *, iterations: int = 25):
    """Deterministic k-means of the pixel colours (k-means++ seeding, Lloyd iterations).

    Parameters
    ----------
    image : array, shape ``(H, W, 3)``
    num_labels : int
        Number of clusters ``L``.
    seed : int
        Seeds the k-means++ initialisation.

    Returns
    -------
    labels : numpy.ndarray of int, shape ``(H, W)``
        Index of the nearest centre of each pixel.
    centres : numpy.ndarray, shape ``(L, 3)``
        Cluster centres, sorted by brightness so that label order does not depend on the seeding.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3); got {img.shape}")
    num_labels = int(num_labels)
    pix = img.reshape(-1, 3)
    if num_labels < 1 or num_labels > pix.shape[0]:
        raise ValueError(f"num_labels must be in [1, {pix.shape[0]}]; got {num_labels}")
    rng = np.random.default_rng(seed)
    centres = np.empty((num_labels, 3))
    centres[0] = pix[rng.integers(pix.shape[0])]
    d2 = np.sum((pix - centres[0]) ** 2, axis=1)
    for k in range(1, num_labels):
        total = d2.sum()
        # k-means++: next centre drawn with probability proportional to d^2 (uniform if all equal)
        idx = rng.choice(pix.shape[0], p=d2 / total) if total > 0 else rng.integers(pix.shape[0])
        centres[k] = pix[idx]
        d2 = np.minimum(d2, np.sum((pix - centres[k]) ** 2, axis=1))
    for _ in range(iterations):
        labels = _nearest(pix, centres)
        counts = np.bincount(labels, minlength=num_labels)
        sums = np.stack([np.bincount(labels, weights=pix[:, c], minlength=num_labels) for c in range(3)], 1)
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        if np.allclose(new, centres, atol=1e-10, rtol=0):
            centres = new
            break
        centres = new
    centres = centres[np.argsort(centres.sum(axis=1), kind="stable")]
    return _nearest(pix, centres).reshape(img.shape[:2]), centres


def _nearest(pix, centres):
    d2 = (pix ** 2).sum(1)[:, None] - 2.0 * pix @ centres.T + (centres ** 2).sum(1)[None, :]
    return np.argmin(d2, axis=1)


def _squared_distances(image, centres):
    """``d[l, i, j] = |image[i, j] - centres[l]|^2``, shape ``(L, H, W)``."""
    diff = image[None, :, :, :] - centres[:, None, None, :]
    return np.einsum("lhwc,lhwc->lhw", diff, diff)


def unaries_from_clusters(image, num_labels: int, seed: int = 0, noise: float = 0.5):
    """Unary scores ``b`` from the distances of each pixel's colour to the colour-cluster centres.

    ``b[l, p] = 1 - d(l, p) / median(d) + noise * z[l, p]`` with ``d(l, p) = |c_p - centre_l|^2``
    and ``z`` standard normal noise (seeded), so the nearest cluster scores highest and the noise
    gives the pairwise terms something to smooth.

    Parameters
    ----------
    image : array, shape ``(H, W, 3)``
    num_labels : int
    seed : int
        Seeds the clustering and the noise.
    noise : float
        Standard deviation of the added noise.

    Returns
    -------
    numpy.ndarray, shape ``(L, H, W)``, float64
    """
    img = np.asarray(image, dtype=np.float64)
    _, centres = colour_clusters(img, num_labels, seed)
    d = _squared_distances(img, centres)
    scale = float(np.median(d)) or 1.0
    rng = np.random.default_rng([int(seed), 1])
    return 1.0 - d / scale + float(noise) * rng.standard_normal(d.shape)


# --------------------------------------------------------------------------- features
def bilateral_features(image, *, theta_pos: float, theta_col: float, stride: int = 1, offset=(0.0, 0.0)):
    """Colour + position features ``f_p = (y/theta_pos, x/theta_pos, rgb/theta_col)``.

    Parameters
    ----------
    image : array, shape ``(H, W, 3)``, colours in ``[0, 1]``
    theta_pos : float
        Spatial bandwidth in pixels of the full-resolution photograph.
    theta_col : float
        Colour bandwidth (colours in ``[0, 1]``).
    stride : int
        Pixel spacing of ``image`` in full-resolution pixels (positions are ``stride * (i, j)``).
    offset : (float, float)
        Position of pixel ``(0, 0)`` in full-resolution pixels (frames of a panning camera share
        one coordinate frame this way).

    Returns
    -------
    numpy.ndarray, shape ``(H * W, 5)``
    """
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape[:2]
    ii, jj = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    pos = np.stack([offset[0] + stride * ii, offset[1] + stride * jj], axis=-1) / float(theta_pos)
    return np.concatenate([pos, img / float(theta_col)], axis=-1).reshape(h * w, 5)


def random_fourier_features(features, num_features: int, rng):
    """Random Fourier features ``phi(f) = sqrt(2/D) cos(Omega f + beta)`` of the Gaussian kernel.

    ``<phi(f_p), phi(f_q)>`` approximates ``exp(-|f_p - f_q|^2 / 2)`` (``Omega`` standard normal,
    ``beta`` uniform on ``[0, 2 pi)``).

    Parameters
    ----------
    features : array, shape ``(P, F)``
    num_features : int
        ``D``.
    rng : numpy.random.Generator, or a ``(Omega, beta)`` pair of shapes ``(D, F)`` and ``(D,)``
        to reuse the same features across images (video frames).

    Returns
    -------
    numpy.ndarray, shape ``(D, P)``
    """
    feats = np.asarray(features, dtype=np.float64)
    if isinstance(rng, tuple):
        omega, beta = rng
    else:
        omega = rng.standard_normal((int(num_features), feats.shape[1]))
        beta = rng.uniform(0.0, 2.0 * np.pi, size=int(num_features))
    return math.sqrt(2.0 / omega.shape[0]) * np.cos(omega @ feats.T + beta[:, None])


# --------------------------------------------------------------------------- problems
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

    def solve(self, method: str = "cg", **options):
        """``gcrflinalg.solve(self.operator, self.b, method, **options)``."""
        from .solve import solve

        return solve(self.operator, self.b, method, **options)


def _check_form(form):
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}; got {form!r}")


def _rng(seed, form, index, synthetic, stream=0):
    return np.random.default_rng([int(seed), _FORM_IDS[form], int(index), int(bool(synthetic)), stream])


def _layout(form, index, size, rng, stride=None):
    """Stride, crop window and label count of problem ``index``."""
    if size in ("large", "full"):
        stride = 1 if size == "full" else (stride or 8)
        img = load_photo(stride)
        return stride, (0, 0, img.shape[0], img.shape[1]), None
    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES) + ('large', 'full')}; got {size!r}")
    (h0, h1), (w0, w1), (l0, l1) = SIZES[size]
    if stride is None:
        # index 0 is the representative problem: stride 8, centred on the face
        stride = 8 if index % 3 == 0 else (12 if index % 3 == 1 else 16)
    full = load_photo(stride)
    hh, ww = full.shape[:2]
    ch = min(int(rng.integers(h0, h1 + 1)), hh)
    cw = min(int(rng.integers(w0, w1 + 1)), ww)
    if index == 0:
        top, left = max(0, (hh - ch) // 3), max(0, (ww - cw) // 2)
    else:
        top, left = int(rng.integers(0, hh - ch + 1)), int(rng.integers(0, ww - cw + 1))
    labels = int(rng.integers(l0, l1 + 1))
    return stride, (top, left, ch, cw), labels


def _contrast_weights(image, offsets, alpha, sigma):
    """Edge weights ``w[k, i, j] = alpha exp(-|c_p - c_q|^2 / (2 sigma^2))``, zero off the image.

    Returns an array of shape ``(K, H, W)``.
    """
    h, w = image.shape[:2]
    out = np.zeros((len(offsets), h, w))
    for k, (di, dj) in enumerate(offsets):
        i0, i1 = max(0, -di), min(h, h - di)
        j0, j1 = max(0, -dj), min(w, w - dj)
        if i1 <= i0 or j1 <= j0:
            continue
        p = image[i0:i1, j0:j1]
        q = image[i0 + di: i1 + di, j0 + dj: j1 + dj]
        out[k, i0:i1, j0:j1] = alpha * np.exp(-np.sum((p - q) ** 2, axis=-1) / (2.0 * sigma ** 2))
    return out


def _label_compatibility(centres, rng, num_offsets):
    """Per-offset ``L x L`` label compatibilities of the general grid form.

    ``C[m, n] = |centre_m - centre_n| / max`` for ``m != n`` (disagreeing labels of similar colour
    cost less), ``C[m, m] = -1/4`` (agreement is rewarded), plus a small antisymmetric part that
    differs per offset so that the blocks are not symmetric.  Shape ``(K, L, L)``.
    """
    L = centres.shape[0]
    dist = np.sqrt(np.sum((centres[:, None] - centres[None]) ** 2, axis=-1))
    base = dist / max(float(dist.max()), 1e-12)
    base[np.diag_indices(L)] = -0.25
    out = np.empty((num_offsets, L, L))
    for k in range(num_offsets):
        skew = rng.standard_normal((L, L))
        out[k] = base + 0.1 * (skew - skew.T)
    return out


# -- parameter generation per form (pure NumPy) -------------------------------------------------
def _grid_params(form, index, rng, size, synthetic, stride=None, num_labels=None):
    from .neighbourhoods import edge_mask, neighbourhood_offsets

    stride, crop, labels = _layout(form, index, size, rng, stride)
    L = int(num_labels or labels or 5)
    neighbourhood = (4, 8, 4, 12)[index % 4]
    offsets = neighbourhood_offsets(neighbourhood)
    h, w = crop[2], crop[3]
    meta = dict(neighbourhood=neighbourhood)
    if synthetic:
        image = None
        b = rng.standard_normal((L, h, w))
        weights = rng.uniform(0.0, 1.0, size=(len(offsets), h, w))
    else:
        image = load_photo(stride, crop)
        sigma = float(rng.uniform(0.08, 0.2))
        b = unaries_from_clusters(image, L, seed=int(rng.integers(2 ** 31)), noise=0.5)
        weights = _contrast_weights(image, offsets, 1.0, sigma)
        meta.update(sigma=sigma)
    weights = weights * edge_mask(neighbourhood, h, w)
    if form == "grid_potts":
        params = dict(weights=weights, num_labels=L, neighbourhood=neighbourhood)
    else:
        if synthetic:
            compat = rng.standard_normal((len(offsets), L, L))
        else:
            _, centres = colour_clusters(image, L, seed=int(rng.integers(2 ** 31)))
            compat = _label_compatibility(centres, rng, len(offsets))
        pairwise = compat[:, :, :, None, None] * weights[:, None, None, :, :]
        params = dict(pairwise=pairwise, neighbourhood=neighbourhood)
    meta.update(stride=stride, crop=list(crop), num_labels=L, image_shape=[h, w])
    return params, b, meta


def _grid_offdiag_sparse(params, form, L, h, w):
    """``A`` of a grid form as a SciPy CSR matrix (DESIGN.md 3.1/3.2), index ``n = l*P + i*W + j``."""
    import scipy.sparse as sp

    from .neighbourhoods import neighbourhood_offsets

    offsets = neighbourhood_offsets(params["neighbourhood"])
    P = h * w
    rows, cols, vals = [], [], []
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for k, (di, dj) in enumerate(offsets):
        valid = (ii + di >= 0) & (ii + di < h) & (jj + dj >= 0) & (jj + dj < w)
        p = (ii * w + jj)[valid]
        q = ((ii + di) * w + (jj + dj))[valid]
        for m in range(L):
            for n in range(L):
                if form == "grid_potts":
                    if m == n:
                        continue
                    v = params["weights"][k][valid]
                else:
                    v = params["pairwise"][k, m, n][valid]
                rows += [m * P + p, n * P + q]
                cols += [n * P + q, m * P + p]
                vals += [v, v]
    N = L * P
    if not rows:
        return sp.csr_matrix((N, N))
    A = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(N, N))
    return A.tocsr()


def _lowrank_params(form, index, rng, size, synthetic, stride=None, num_labels=None, num_features=None):
    stride, crop, labels = _layout(form, index, size, rng, stride)
    L = int(num_labels or labels or 5)
    h, w = crop[2], crop[3]
    D = int(num_features or (16, 32, 24, 48)[index % 4])
    meta = dict(num_features=D)
    if synthetic:
        b = rng.standard_normal((L, h, w))
        if form == "lowrank_potts":
            emb = rng.standard_normal((D, h, w)) / math.sqrt(D)
        else:
            emb = rng.standard_normal((D, L, h, w)) / math.sqrt(D)
    else:
        image = load_photo(stride, crop)
        theta_pos = float(rng.uniform(30.0, 90.0))
        theta_col = float(rng.uniform(0.08, 0.25))
        b = unaries_from_clusters(image, L, seed=int(rng.integers(2 ** 31)), noise=0.5)
        phi = random_fourier_features(
            bilateral_features(image, theta_pos=theta_pos, theta_col=theta_col, stride=stride), D, rng
        ).reshape(D, h, w)
        if form == "lowrank_potts":
            emb = phi
        else:
            # E[d, l, p] = phi_d(p) pi_l(p): kernel similarity weighted by soft cluster memberships
            _, centres = colour_clusters(image, L, seed=int(rng.integers(2 ** 31)))
            d = _squared_distances(image, centres)
            soft = np.exp(-(d - d.min(axis=0)) / (2.0 * theta_col ** 2))
            soft /= soft.sum(axis=0, keepdims=True)
            emb = phi[:, None, :, :] * soft[None, :, :, :]
        meta.update(theta_pos=theta_pos, theta_col=theta_col)
    params = dict(embeddings=emb)
    if form == "lowrank_potts":
        params["num_labels"] = L
    meta.update(stride=stride, crop=list(crop), num_labels=L, image_shape=[h, w])
    return params, b, meta


def _video_params(form, index, rng, size, synthetic, stride=None, num_labels=None, num_frames=None):
    if size in ("large", "full"):
        raise ValueError("video problems come in sizes 'tiny', 'small' and 'medium'")
    (h0, h1), (w0, w1), (l0, l1) = SIZES[size]
    V = int(num_frames or {"tiny": 2, "small": 3}.get(size, 4) + index % 2)
    stride = int(stride or 8)
    full = load_photo(stride)
    hh, ww = full.shape[:2]
    h = min(int(rng.integers(h0, h1 + 1)) - 2, hh - V)
    w = min(int(rng.integers(w0, w1 + 1)) - 2, ww - V)
    L = int(num_labels or rng.integers(l0, l1 + 1))
    # camera pan: frame v is the crop shifted by v * (dy, dx) pixels
    dy, dx = (int(s) for s in rng.integers(-1, 2, size=2))
    if dy == 0 and dx == 0:
        dx = 1
    top0 = int(rng.integers(max(0, -dy * (V - 1)), hh - h - max(0, dy * (V - 1)) + 1))
    left0 = int(rng.integers(max(0, -dx * (V - 1)), ww - w - max(0, dx * (V - 1)) + 1))
    neighbourhood = ("fc", (1,), (1, 2), "fc", (1, 2, 4))[index % 5]
    Ds, Dt = (8, 16, 12)[index % 3], (8, 12, 16)[index % 3]
    meta = dict(num_frames=V, pan=[dy, dx], spatial_features=Ds, temporal_features=Dt)
    if synthetic:
        b = rng.standard_normal((V, L, h, w))
        spatial = rng.standard_normal((V, Ds, L, h, w)) / math.sqrt(Ds)
        temporal = rng.standard_normal((V, Dt, L, h, w)) / math.sqrt(Dt)
    else:
        theta_pos = float(rng.uniform(30.0, 90.0))
        theta_col = float(rng.uniform(0.1, 0.25))
        ns = rng.integers(2 ** 31)
        feats_s = (rng.standard_normal((Ds, 5)), rng.uniform(0, 2 * np.pi, Ds))
        feats_t = (rng.standard_normal((Dt, 5)), rng.uniform(0, 2 * np.pi, Dt))
        frames = [load_photo(stride, (top0 + v * dy, left0 + v * dx, h, w)) for v in range(V)]
        _, centres = colour_clusters(np.concatenate(frames, axis=0), L, seed=int(ns))
        b, spatial, temporal = [], [], []
        for v, frame in enumerate(frames):
            d = _squared_distances(frame, centres)
            noise = np.random.default_rng([int(ns), v]).standard_normal(d.shape)
            b.append(1.0 - d / (float(np.median(d)) or 1.0) + 0.5 * noise)
            soft = np.exp(-(d - d.min(axis=0)) / (2.0 * theta_col ** 2))
            soft /= soft.sum(axis=0, keepdims=True)
            # one world coordinate frame for all frames, so a scene point keeps its features
            f = bilateral_features(frame, theta_pos=theta_pos, theta_col=theta_col, stride=stride,
                                   offset=(stride * (top0 + v * dy), stride * (left0 + v * dx)))
            spatial.append(random_fourier_features(f, Ds, feats_s).reshape(Ds, 1, h, w) * soft[None])
            temporal.append(random_fourier_features(f, Dt, feats_t).reshape(Dt, 1, h, w) * soft[None])
        b, spatial, temporal = np.stack(b), np.stack(spatial), np.stack(temporal)
        meta.update(theta_pos=theta_pos, theta_col=theta_col)
    params = dict(spatial=spatial, temporal=temporal, neighbourhood=neighbourhood)
    meta.update(stride=stride, crop=[top0, left0, h, w], num_labels=L, image_shape=[h, w],
                neighbourhood=neighbourhood if isinstance(neighbourhood, str) else list(neighbourhood))
    return params, b, meta


def _video_pairs(V, neighbourhood):
    if neighbourhood == "fc":
        return [(u, v) for u in range(V) for v in range(V) if u != v]
    dists = set(int(d) for d in neighbourhood)
    return [(u, v) for u in range(V) for v in range(V) if u != v and abs(u - v) in dists]


def _multires_params(form, index, rng, size, synthetic, stride=None, num_labels=None):
    from .neighbourhoods import edge_mask, neighbourhood_offsets

    stride, crop, labels = _layout(form, index, size, rng, stride)
    L = int(num_labels or labels or 5)
    num_levels = 2 + index % 2
    potts = index % 2 == 1
    neighbourhood = (4, 8)[(index // 2) % 2]
    offsets = neighbourhood_offsets(neighbourhood)
    top, left, h, w = crop
    full = load_photo(stride)
    image = full[top: top + h, left: left + w]
    sizes = [(h, w)]
    for _ in range(1, num_levels):
        ph, pw = sizes[-1]
        sizes.append((max(1, (ph + 1) // 2), max(1, (pw + 1) // 2)))
    sigma = float(rng.uniform(0.08, 0.2))
    seed_b = int(rng.integers(2 ** 31))
    _, centres = colour_clusters(image, L, seed=seed_b)
    levels, bs, images = [], [], []
    for s, (hs, ws) in enumerate(sizes):
        if synthetic:
            img_s = None
            b_s = rng.standard_normal((L, hs, ws))
            wts = rng.uniform(0.0, 1.0, size=(len(offsets), hs, ws))
        else:
            img_s = _resize_blocks(image, hs, ws)
            d = _squared_distances(img_s, centres)
            noise = np.random.default_rng([seed_b, s]).standard_normal(d.shape)
            b_s = 1.0 - d / (float(np.median(d)) or 1.0) + 0.5 * noise
            wts = _contrast_weights(img_s, offsets, 1.0, sigma)
        wts = wts * edge_mask(neighbourhood, hs, ws)
        images.append(img_s)
        bs.append(b_s)
        if potts:
            levels.append(wts)
        else:
            compat = (rng.standard_normal((len(offsets), L, L)) if synthetic
                      else _label_compatibility(centres, rng, len(offsets)))
            levels.append(compat[:, :, :, None, None] * wts[:, None, None])
    cross = []
    for s in range(num_levels - 1):
        (hf, wf), (hc, wc) = sizes[s], sizes[s + 1]
        if synthetic:
            c = rng.uniform(0.0, 1.0, size=(hf, wf))
        else:
            pi = (np.arange(hf) * hc) // hf
            pj = (np.arange(wf) * wc) // wf
            parent = images[s + 1][pi][:, pj]
            c = np.exp(-np.sum((images[s] - parent) ** 2, axis=-1) / (2.0 * sigma ** 2))
        if potts:
            cross.append(0.5 * c)
        else:
            compat = np.full((L, L), 0.5) - np.eye(L)
            cross.append(0.5 * compat[:, :, None, None] * c[None, None])
    params = dict(levels=levels, cross=cross, num_labels=L, neighbourhood=neighbourhood, potts=potts)
    meta = dict(stride=stride, crop=list(crop), num_labels=L, image_shape=[h, w], num_levels=num_levels,
                level_shapes=[list(s) for s in sizes], potts=potts, neighbourhood=neighbourhood, sigma=sigma)
    return params, bs, meta


def _resize_blocks(image, hs, ws):
    """Average ``image`` (H, W, 3) over the pixels of each parent cell (nearest-parent rule)."""
    h, w = image.shape[:2]
    pi = (np.arange(h) * hs) // h
    pj = (np.arange(w) * ws) // w
    out = np.zeros((hs, ws, 3))
    cnt = np.zeros((hs, ws, 1))
    np.add.at(out, (pi[:, None], pj[None, :]), image)
    np.add.at(cnt, (pi[:, None], pj[None, :]), 1.0)
    return out / np.maximum(cnt, 1.0)


def _multires_offdiag_sparse(params, sizes, L):
    """``A`` of the multi-resolution form (DESIGN.md 3.3) as SciPy CSR, levels concatenated."""
    import scipy.sparse as sp

    form = "grid_potts" if params["potts"] else "grid"
    blocks = []
    for s, (hs, ws) in enumerate(sizes):
        key = "weights" if params["potts"] else "pairwise"
        blocks.append(_grid_offdiag_sparse({key: params["levels"][s], "neighbourhood": params["neighbourhood"]},
                                           form, L, hs, ws))
    A = sp.block_diag(blocks, format="lil")
    starts = np.cumsum([0] + [L * hs * ws for hs, ws in sizes])
    rows, cols, vals = [], [], []
    for s in range(len(sizes) - 1):
        (hf, wf), (hc, wc) = sizes[s], sizes[s + 1]
        Pf, Pc = hf * wf, hc * wc
        ii, jj = np.meshgrid(np.arange(hf), np.arange(wf), indexing="ij")
        p = (ii * wf + jj).ravel()
        q = (((ii * hc) // hf) * wc + (jj * wc) // wf).ravel()
        for m in range(L):
            for n in range(L):
                if params["potts"]:
                    if m == n:
                        continue
                    v = params["cross"][s].ravel()
                else:
                    v = params["cross"][s][m, n].ravel()
                r = starts[s] + m * Pf + p
                c = starts[s + 1] + n * Pc + q
                rows += [r, c]
                cols += [c, r]
                vals += [v, v]
    n_total = int(starts[-1])
    C = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_total, n_total)) if rows else sp.csr_matrix((n_total, n_total))
    return (A.tocsr() + C.tocsr()).tocsr()


# -- lam from the spectral radius of the off-diagonal part ---------------------------------------
def _extreme_eigenvalues(matvec, n, rng):
    """``(lambda_min, lambda_max)`` of a symmetric operator ``(n, n)`` given by ``matvec``.

    Dense ``eigvalsh`` for small ``n``; otherwise Lanczos (ARPACK) for the eigenvalue ``mu`` of
    largest magnitude, then for the largest-magnitude eigenvalue of ``A - mu I``, which is the other
    end of the spectrum shifted by ``mu``.  The start vector is seeded, so the result is reproducible.
    """
    import scipy.sparse.linalg as spla

    if n <= 150:
        dense = np.asarray(matvec(np.eye(n)))
        ev = np.linalg.eigvalsh((dense + dense.T) / 2.0)
        return float(ev[0]), float(ev[-1])
    v0 = rng.standard_normal(n)

    def top(mv):
        op = spla.LinearOperator((n, n), matvec=mv, matmat=mv, dtype=np.float64)
        ev = spla.eigsh(op, k=1, which="LM", v0=v0, tol=1e-8, maxiter=max(1000, 20 * n),
                        return_eigenvectors=False)
        return float(ev[0])

    mu = top(matvec)
    other = top(lambda v: matvec(v) - mu * v) + mu
    return (min(mu, other), max(mu, other))


def _offdiag_spectrum(form, params, meta, rng):
    """``(rho(B), pd_bound)``: spectral radius of ``B = A - diag(A)``, and the positive-definiteness
    bound ``-lambda_min(A)`` that ``lam`` must exceed (DESIGN.md section 6)."""
    L = meta["num_labels"]
    if form == "grid_potts":
        # eigenvalues of A are (L-1) w_i and -w_i for the eigenvalues w_i of W (DESIGN.md 3.2)
        h, w = meta["image_shape"]
        Wm = _grid_offdiag_sparse(params, "grid_potts", 2, h, w)[: h * w, h * w:]
        lmin, lmax = _extreme_eigenvalues(lambda v: Wm @ v, h * w, rng)
        rho = max(L - 1, 1) * max(abs(lmax), abs(lmin))
        return rho, max(lmax, -(L - 1) * lmin, 0.0)
    if form in ("grid", "multires"):  # diag(A) = 0: B = A
        if form == "grid":
            h, w = meta["image_shape"]
            A = _grid_offdiag_sparse(params, "grid", L, h, w)
        else:
            A = _multires_offdiag_sparse(params, [tuple(s) for s in meta["level_shapes"]], L)
        lmin, lmax = _extreme_eigenvalues(lambda v: A @ v, A.shape[0], rng)
        return max(abs(lmin), abs(lmax)), max(-lmin, 0.0)
    if form == "lowrank_potts":
        psi = params["embeddings"].reshape(params["embeddings"].shape[0], -1)
        top = float(np.linalg.eigvalsh(psi @ psi.T)[-1])  # ||psi||_2^2 = lambda_max(W), W = psi^T psi
        return max(L - 1, 1) * top, top
    if form == "lowrank":  # A = E^T E is PSD: PD for every lam > 0
        E = params["embeddings"].reshape(params["embeddings"].shape[0], -1)
        d = np.sum(E * E, axis=0)
        lmin, lmax = _extreme_eigenvalues(lambda v: E.T @ (E @ v) - (d * v.T).T, E.shape[1], rng)
        return max(abs(lmin), abs(lmax)), 0.0
    if form == "video":
        S, T = params["spatial"], params["temporal"]
        V = S.shape[0]
        n_frame = int(np.prod(S.shape[2:]))
        Sf = S.reshape(V, S.shape[1], n_frame)
        Tf = T.reshape(V, T.shape[1], n_frame)
        pairs = _video_pairs(V, params["neighbourhood"])
        diag = np.sum(Sf * Sf, axis=1).reshape(-1)
        n = V * n_frame

        def a_matvec(v):  # DESIGN.md 3.6 without lam, on (n,) or (n, k)
            vv = v.reshape(V, n_frame, -1)
            out = np.einsum("vdn,vdk->vnk", Sf, np.einsum("vdn,vnk->vdk", Sf, vv))
            tv = np.einsum("vdn,vnk->vdk", Tf, vv)
            for u, w in pairs:
                out[u] += Tf[u].T @ tv[w]
            return out.reshape(v.shape)

        def b_matvec(v):
            return a_matvec(v) - (diag * v.T).T

        bmin, bmax = _extreme_eigenvalues(b_matvec, n, rng)
        amin, _ = _extreme_eigenvalues(a_matvec, n, rng)
        return max(abs(bmin), abs(bmax)), max(-amin, 0.0)
    raise AssertionError(form)


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
        ``lam = (1 + margin) * rho`` (see ``lam_rule``); default drawn in ``[0.05, 0.3]``.
    lam_rule : {"jacobi", "pd"}
        ``"jacobi"``: ``rho`` is the spectral radius of ``B = A - diag(A)`` (``M`` is PD and Jacobi
        converges); ``"pd"``: ``rho`` is the positive-definiteness bound of DESIGN.md section 6
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
    _check_form(form)
    if lam_rule not in ("jacobi", "pd"):
        raise ValueError(f"lam_rule must be 'jacobi' or 'pd'; got {lam_rule!r}")
    index = int(index)
    if index < 0:
        raise ValueError(f"index must be >= 0; got {index}")
    rng = _rng(seed, form, index, synthetic)
    if form in ("grid", "grid_potts"):
        params, b, meta = _grid_params(form, index, rng, size, synthetic, **overrides)
    elif form in ("lowrank", "lowrank_potts"):
        params, b, meta = _lowrank_params(form, index, rng, size, synthetic, **overrides)
    elif form == "video":
        params, b, meta = _video_params(form, index, rng, size, synthetic, **overrides)
    else:
        params, b, meta = _multires_params(form, index, rng, size, synthetic, **overrides)
    rho, pd_bound = _offdiag_spectrum(form, params, meta, _rng(seed, form, index, synthetic, stream=1))
    if margin is None:
        margin = float(rng.uniform(0.05, 0.3))
    margin = float(margin)
    if margin <= 0:
        raise ValueError(f"margin must be > 0; got {margin}")
    base = rho if lam_rule == "jacobi" else pd_bound
    # a system without pairwise terms still needs lam > 0
    lam = (1.0 + margin) * base if base > 0 else 1.0
    params["lam"] = float(lam)
    n = int(sum(np.size(x) for x in b)) if isinstance(b, list) else int(b.size)
    meta.update(form=form, index=index, seed=int(seed), size=size, synthetic=bool(synthetic),
                source="synthetic" if synthetic else "photo", N=n, lam=float(lam), margin=margin,
                lam_rule=lam_rule, offdiag_radius=float(rho), pd_bound=float(pd_bound),
                jacobi_radius_bound=float(rho / lam))
    return params, b, meta


def build_operator(form: str, params: dict, *, dtype=np.float64, xp=np):
    """The operator of ``form`` from :func:`make_params` parameters, on backend ``xp`` in ``dtype``.

    Operator modules are imported here, on first use.
    """
    _check_form(form)

    def arr(a):
        return xp.asarray(np.asarray(a, dtype=dtype))

    lam = params["lam"]
    if form == "grid":
        from .grid import GridGCRF

        return GridGCRF(arr(params["pairwise"]), lam, neighbourhood=params["neighbourhood"])
    if form == "grid_potts":
        from .grid import GridPottsGCRF

        return GridPottsGCRF(arr(params["weights"]), lam, params["num_labels"],
                             neighbourhood=params["neighbourhood"])
    if form == "lowrank":
        from .lowrank import LowRankGCRF

        return LowRankGCRF(arr(params["embeddings"]), lam)
    if form == "lowrank_potts":
        from .lowrank import LowRankPottsGCRF

        return LowRankPottsGCRF(arr(params["embeddings"]), lam, params["num_labels"])
    if form == "video":
        from .video import VideoGCRF

        return VideoGCRF(arr(params["spatial"]), arr(params["temporal"]), lam,
                         neighbourhood=params["neighbourhood"])
    return _build_multires(params, arr)


def _build_multires(params, arr):
    from .multires import GeneralLevel, MultiResGCRF, PottsLevel

    level = PottsLevel if params["potts"] else GeneralLevel
    levels = [level(arr(p), params["neighbourhood"]) for p in params["levels"]]
    return MultiResGCRF(levels, [arr(c) for c in params["cross"]], params["lam"],
                        num_labels=params["num_labels"])


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
    params, b, meta = make_params(form, index, seed=seed, size=size, synthetic=synthetic, **kwargs)
    op = build_operator(form, params, dtype=dtype, xp=xp)
    name = f"{form}{'-synthetic' if synthetic else ''}-{int(index):02d}"
    meta["dtype"] = np.dtype(dtype).name
    return Problem(name=name, form=form, operator=op, b=_rhs(form, b, op, dtype, xp), params=params, meta=meta)


def problem_set(form: str, count: int = 25, *, seed: int = 0, quick: bool = False, **kwargs) -> list[Problem]:
    """Problems ``0 .. count-1`` of ``form`` (``quick``: at most 3, size ``"small"``).

    Keyword arguments go to :func:`make_problem`.
    """
    count = int(count)
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    if quick:
        count = min(count, 3)
        kwargs["size"] = "small"
    return [make_problem(form, i, seed=seed, **kwargs) for i in range(count)]
