"""Temporal neighbourhoods of the video G-CRF (docs/design.md 3.6): names and the coupling matrix."""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["normalise_neighbourhood", "frame_coupling_matrix"]


def normalise_neighbourhood(neighbourhood):
    """``"fc"`` or a sorted tuple of positive frame distances."""
    if isinstance(neighbourhood, str):
        if neighbourhood == "fc":
            return "fc"
        raise ValueError(f"neighbourhood must be 'fc' or a set of positive frame distances such as "
                         f"{{1}}, {{1, 2}}, {{1, 2, 4}}; got {neighbourhood!r}")
    if isinstance(neighbourhood, numbers.Integral):
        neighbourhood = (neighbourhood,)
    try:
        distances = tuple(neighbourhood)
    except TypeError:
        raise TypeError(f"neighbourhood must be 'fc' or a set of positive frame distances; "
                        f"got {neighbourhood!r}") from None
    if not distances or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                and d >= 1 for d in distances):
        raise ValueError(f"neighbourhood must be 'fc' or a non-empty set of positive integer frame "
                         f"distances; got {neighbourhood!r}")
    return tuple(sorted({int(d) for d in distances}))


def frame_coupling_matrix(neighbourhood, n_frames: int) -> np.ndarray:
    """The frame coupling matrix ``K`` of a temporal neighbourhood.

    ``K[u, v] = 1`` if ``u != v`` and ``|u - v|`` is one of the neighbourhood's frame distances
    (every distance for ``"fc"``), else 0.

    Parameters
    ----------
    neighbourhood : "fc" or iterable of int
        ``"fc"`` (all frame pairs) or positive frame distances, e.g. ``{1}``, ``{1, 2}``,
        ``{1, 2, 4}``.
    n_frames : int
        ``V``.

    Returns
    -------
    numpy.ndarray, shape ``(V, V)``, float64, symmetric with a zero diagonal.
    """
    nb = normalise_neighbourhood(neighbourhood)
    gap = np.abs(np.subtract.outer(np.arange(n_frames), np.arange(n_frames)))
    if nb == "fc":
        return (gap > 0).astype(np.float64)
    return np.isin(gap, nb).astype(np.float64)
