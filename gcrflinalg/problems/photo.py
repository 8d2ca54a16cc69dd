"""The built-in photograph and what is derived from it: crops, colour clusters, unaries, features.

The photograph ships with Matplotlib (``matplotlib.cbook.get_sample_data("grace_hopper.jpg")``,
600 x 512 pixels), so nothing is downloaded.
"""
from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["load_photo", "colour_clusters", "unaries_from_clusters", "bilateral_features",
           "random_fourier_features", "squared_distances"]


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


@functools.lru_cache(maxsize=8)
def _photo_at_stride(stride: int) -> np.ndarray:
    """The block-averaged photograph at ``stride``, computed once per stride (read-only)."""
    img = _photo_full()
    h, w = img.shape[0] // stride, img.shape[1] // stride
    if h < 1 or w < 1:
        raise ValueError(f"stride {stride} is larger than the photograph {img.shape[:2]}")
    out = img[: h * stride, : w * stride].reshape(h, stride, w, stride, 3).mean(axis=(1, 3))
    out.setflags(write=False)
    return out


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
    out = _photo_at_stride(stride)
    h, w = out.shape[:2]
    if crop is not None:
        top, left, ch, cw = (int(c) for c in crop)
        if top < 0 or left < 0 or ch < 1 or cw < 1 or top + ch > h or left + cw > w:
            raise ValueError(f"crop {tuple(crop)} does not fit the {h} x {w} image at stride {stride}")
        out = out[top: top + ch, left: left + cw]
    return np.array(out, order="C", copy=True)


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
    labels, centres = _kmeans(np.ascontiguousarray(pix), num_labels, seed, iterations)
    return labels.reshape(img.shape[:2]), centres


def _kmeans(pix, num_labels, seed, iterations):
    """``(labels, centres)`` of :func:`colour_clusters` for the pixels ``pix (P, 3)`` (C-contiguous).

    The passes over the pixels are compiled loops (:mod:`gcrflinalg.problems._kernels`) doing the
    operations of the NumPy expressions ``sum((pix - c) ** 2, axis=1)``, ``argmin(|pix|^2 - 2 pix
    C^T + |C|^2, axis=1)`` and ``bincount`` in the same order, without their ``(P, L)``
    temporaries and without BLAS: only the three-term products ``2 pix . c`` may round differently
    from a BLAS matrix product's, which can change a label only at a tie to the last bit.  The
    clusters are those of the plain NumPy k-means (tests/test_problem_spectrum.py compares them:
    the same labels, the same centres), about six times faster.  The Lloyd iterations run as one
    compiled loop (:func:`gcrflinalg.problems._kernels.lloyd_iterations`), whose assignment goes
    label by label over blocks of pixels so that its inner loop vectorises.
    """
    from ._kernels import assign_and_sum, lloyd_iterations, nearer_squared_distances

    P = pix.shape[0]
    rng = np.random.default_rng(seed)
    centres = np.empty((num_labels, 3))
    centres[0] = pix[rng.integers(P)]
    d2 = np.full(P, np.inf)
    nearer_squared_distances(pix, centres[0], d2)
    for k in range(1, num_labels):
        total = d2.sum()
        # k-means++: next centre drawn with probability proportional to d^2 (uniform if all equal)
        idx = rng.choice(P, p=d2 / total) if total > 0 else rng.integers(P)
        centres[k] = pix[idx]
        nearer_squared_distances(pix, centres[k], d2)
    # the terms of the distances |pix|^2 - 2 pix C^T + |C|^2 that do not change between iterations
    pix2 = (pix ** 2).sum(1)
    twice = np.ascontiguousarray((2.0 * pix).T)  # (3, P): the assignment's loops over pixels read rows
    labels = np.empty(P, dtype=np.intp)
    counts = np.empty(num_labels, dtype=np.intp)
    sums = np.empty((num_labels, 3))

    # Lloyd: assign, new = where(counts > 0, sums / maximum(counts, 1), centres), until no centre
    # moved by more than 1e-10 (np.allclose(new, centres, atol=1e-10, rtol=0) for finite values)
    lloyd_iterations(pix, twice, pix2, centres, iterations, labels, counts, sums)
    centres = centres[np.argsort(centres.sum(axis=1), kind="stable")]
    assign_and_sum(pix, twice, pix2, centres, (centres ** 2).sum(1), labels, counts, sums)
    return labels, centres


def squared_distances(image, centres):
    """``d[l, i, j] = |image[i, j] - centres[l]|^2``, shape ``(L, H, W)`` (one compiled pass, the
    sums of :func:`numpy.einsum` over the colour axis)."""
    from ._kernels import squared_distances_to

    img = np.ascontiguousarray(image, dtype=np.float64)
    c = np.ascontiguousarray(centres, dtype=np.float64)
    out = np.empty((c.shape[0],) + img.shape[:2])
    squared_distances_to(img, c, out)
    return out


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
    from ._kernels import unaries_from_distances

    img = np.asarray(image, dtype=np.float64)
    _, centres = colour_clusters(img, num_labels, seed)
    d = squared_distances(img, centres)
    scale = float(np.median(d)) or 1.0
    rng = np.random.default_rng([int(seed), 1])
    z = rng.standard_normal(d.shape)
    unaries_from_distances(d, scale, float(noise), z, z)  # 1 - d / scale + noise z, over z
    return z


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
