"""Dense low-rank G-CRFs from embeddings: general and Potts (docs/design.md 3.4, 3.5).

- :mod:`.operators`: :class:`LowRankGCRF`, :class:`LowRankPottsGCRF` (products, exact direct solves,
  gradients, PD certificate) and the ``"auto"`` cost model :func:`direct_is_cheaper`;
- :mod:`.woodbury`: the ``D x D`` Woodbury factorisation shared by both;
- :mod:`.kernels`: compiled Gauss–Seidel sweeps.
"""
from .operators import LowRankGCRF, LowRankPottsGCRF, direct_is_cheaper

__all__ = ["LowRankGCRF", "LowRankPottsGCRF", "direct_is_cheaper"]
