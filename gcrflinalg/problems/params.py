"""Per-form parameters of the built-in problems: one maker per form family.

Each maker has the signature ``(form, index, rng, size, synthetic, **overrides) -> (params, b, meta)``
that the form registry (:mod:`gcrflinalg.forms.registry`, field ``problem``) names, and draws every
random choice from ``rng``.  A maker may add the entry ``"_coupling"`` to ``params``: the factors
of the pairwise part (:class:`gcrflinalg.problems.coupling.GridCoupling`), from which
:func:`gcrflinalg.problems.make_params` takes the spectral facts without building the operator twice
(and which it removes from ``params``).

- grid forms take pairwise terms from colour contrast,
  ``w_pq = alpha exp(-|c_p - c_q|^2 / (2 sigma^2))``, and label compatibilities from colour clusters;
- low-rank and video forms take embeddings from random Fourier features of colour and position;
- the multi-resolution form stacks grid levels of a halving pyramid of the crop.
"""
from __future__ import annotations

import math

import numpy as np

from ..neighbourhoods import edge_mask, neighbourhood_offsets
from ._kernels import pairwise_blocks
from .coupling import GridCoupling
from .photo import (bilateral_features, colour_clusters, load_photo, random_fourier_features,
                    squared_distances, unaries_from_clusters)

__all__ = ["SIZES", "grid_params", "lowrank_params", "video_params", "multires_params", "build_multires"]

#: Problem sizes: ``(crop height range, crop width range, label range)`` in pixels of the
#: stride-downsampled photograph.  ``"large"`` is the whole photograph at the stride, ``"full"`` the
#: whole photograph at full resolution (stride 1).
SIZES = {
    "tiny": ((5, 8), (5, 8), (2, 3)),
    "small": ((9, 16), (9, 16), (3, 5)),
    "medium": ((20, 32), (20, 32), (4, 7)),
}


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
def grid_params(form, index, rng, size, synthetic, stride=None, num_labels=None):
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
        coupling = GridCoupling(weights, neighbourhood, num_labels=L)
    else:
        if synthetic:
            compat = rng.standard_normal((len(offsets), L, L))
        else:
            _, centres = colour_clusters(image, L, seed=int(rng.integers(2 ** 31)))
            compat = _label_compatibility(centres, rng, len(offsets))
        pairwise = pairwise_blocks(compat, weights)  # compat[:, :, :, None, None] * weights[:, None, None]
        params = dict(pairwise=pairwise, neighbourhood=neighbourhood)
        coupling = GridCoupling(weights, neighbourhood, compat=compat)
    # the factors of the pairwise blocks, for the spectral facts (make_params takes them out)
    params["_coupling"] = coupling
    meta.update(stride=stride, crop=list(crop), num_labels=L, image_shape=[h, w])
    return params, b, meta


def lowrank_params(form, index, rng, size, synthetic, stride=None, num_labels=None, num_features=None):
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
            d = squared_distances(image, centres)
            soft = np.exp(-(d - d.min(axis=0)) / (2.0 * theta_col ** 2))
            soft /= soft.sum(axis=0, keepdims=True)
            emb = phi[:, None, :, :] * soft[None, :, :, :]
        meta.update(theta_pos=theta_pos, theta_col=theta_col)
    params = dict(embeddings=emb)
    if form == "lowrank_potts":
        params["num_labels"] = L
    meta.update(stride=stride, crop=list(crop), num_labels=L, image_shape=[h, w])
    return params, b, meta


def video_params(form, index, rng, size, synthetic, stride=None, num_labels=None, num_frames=None):
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
            d = squared_distances(frame, centres)
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


def multires_params(form, index, rng, size, synthetic, stride=None, num_labels=None):
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
            d = squared_distances(img_s, centres)
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




def build_multires(params, arr):
    """The :class:`~gcrflinalg.MultiResGCRF` of :func:`multires_params` parameters (``arr`` casts arrays)."""
    from ..forms.multires import GeneralLevel, MultiResGCRF, PottsLevel

    level = PottsLevel if params["potts"] else GeneralLevel
    levels = [level(arr(p), params["neighbourhood"]) for p in params["levels"]]
    return MultiResGCRF(levels, [arr(c) for c in params["cross"]], params["lam"],
                        num_labels=params["num_labels"])
