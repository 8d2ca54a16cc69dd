"""Pixel neighbourhoods of the grid G-CRFs (docs/design.md section 3).

Each neighbourhood is a half-set of offsets ``(di, dj)``: edge ``k`` at pixel ``p = (i, j)`` joins
``p`` and ``q = (i + di, j + dj)``, every undirected edge stored once.
"""
from __future__ import annotations

import numpy as np

__all__ = ["NEIGHBOURHOODS", "neighbourhood_offsets", "edge_mask"]

NEIGHBOURHOODS = {
    4: ((0, 1), (1, 0)),
    8: ((0, 1), (1, 0), (1, 1), (1, -1)),
    12: ((0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0)),
}


def neighbourhood_offsets(neighbourhood) -> tuple[tuple[int, int], ...]:
    """The offsets ``((di, dj), ...)`` of a neighbourhood name 4, 8 or 12 (``K`` = 2, 4, 6)."""
    # an integer only: 4.5, "4" or True are not silently read as a neighbourhood
    if isinstance(neighbourhood, (bool, np.bool_)) or not isinstance(neighbourhood, (int, np.integer)) \
            or int(neighbourhood) not in NEIGHBOURHOODS:
        raise ValueError(f"neighbourhood must be one of the integers 4, 8, 12; got "
                         f"{type(neighbourhood).__name__} {neighbourhood!r}")
    return NEIGHBOURHOODS[int(neighbourhood)]


def edge_mask(neighbourhood, height: int, width: int) -> np.ndarray:
    """Boolean array ``(K, H, W)``: True where edge ``k`` at ``(i, j)`` stays inside the image."""
    offs = neighbourhood_offsets(neighbourhood)
    mask = np.zeros((len(offs), height, width), dtype=bool)
    i = np.arange(height)[:, None]
    j = np.arange(width)[None, :]
    for k, (di, dj) in enumerate(offs):
        mask[k] = (i + di >= 0) & (i + di < height) & (j + dj >= 0) & (j + dj < width)
    return mask
