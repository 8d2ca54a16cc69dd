"""The pairwise part of a built-in grid problem from its factors, for the spectral facts that set ``lam``.

A grid problem's pairwise blocks are products of a small per-offset factor and a per-pixel edge
weight (:func:`gcrflinalg.problems.params.grid_params`):

- general grid (docs/design.md 3.1): ``pairwise[k, :, :, p] = C_k w_k(p)``, ``C_k`` an ``L x L``
  label compatibility;
- Potts grid (3.2): ``B = (1 1^T - I) (x) W``, ``W`` the ``P x P`` edge-weight matrix of the
  ``w_k(p)``.

So ``B v`` (``B = A``: ``diag(A) = 0`` on the grids) is, per offset ``k`` with flat pixel shift
``s_k = di_k W + dj_k``,

    out[:, p] += w_k(p) C_k v[:, p + s_k]   and   out[:, p + s_k] += w_k(p) C_k^T v[:, p],

one ``(L, 2 K L) x (2 K L, P)`` matrix product of the stacked factors with the weighted, shifted
copies of ``v``: no read of the ``K L^2 P`` stored blocks.  Flat shifts wrap a row's last pixels to
the next row's first; those edges leave the image, and their weights are zero here.
"""
from __future__ import annotations

import numpy as np

from ..neighbourhoods import edge_mask, neighbourhood_offsets

__all__ = ["GridCoupling"]


class GridCoupling:
    """``B = A - diag(A)`` of a grid problem from its factors (see the module docstring).

    Parameters
    ----------
    weights : array, shape ``(K, H, W)``
        Per-pixel edge weights ``w_k(p)``; entries of edges leaving the image are ignored.
    neighbourhood : {4, 8, 12}
    compat : array, shape ``(K, L, L)``, optional
        Label compatibilities ``C_k`` of the general form; None for the Potts form.
    num_labels : int, optional
        ``L`` of the Potts form.

    Attributes
    ----------
    size : int
        ``N = L P``.
    num_labels, num_pixels, neighbourhood, potts
    """

    def __init__(self, weights, neighbourhood, *, compat=None, num_labels=None):
        offsets = neighbourhood_offsets(neighbourhood)
        weights = np.asarray(weights, dtype=np.float64)
        K, H, W = weights.shape
        if K != len(offsets):
            raise ValueError(f"weights must have K = {len(offsets)} offsets; got {weights.shape}")
        self.neighbourhood = int(neighbourhood)
        self.potts = compat is None
        self.num_pixels = P = H * W
        # off-image entries ignored whatever they hold (NaN included), as the operators do
        self._weights = np.where(edge_mask(neighbourhood, H, W), weights, 0.0).reshape(K, P)
        self._shifts = [di * W + dj for di, dj in offsets]  # > 0: a half-set of offsets
        if self.potts:
            self.num_labels = int(num_labels)
            self._stacked = None
        else:
            compat = np.asarray(compat, dtype=np.float64)
            if compat.shape[0] != K or compat.shape[1] != compat.shape[2]:
                raise ValueError(f"compat must have shape ({K}, L, L); got {compat.shape}")
            self.num_labels = compat.shape[1]
            # [C_1 .. C_K, C_1^T .. C_K^T]: (L, 2 K L)
            self._stacked = np.ascontiguousarray(
                np.concatenate([*compat, *compat.transpose(0, 2, 1)], axis=1))
        self.size = self.num_labels * P
        self._buffers = {}

    # ------------------------------------------------------------------ products
    def _shifted_copies(self, V):
        """``Z (2K, R, P, E)``: ``Z[k][:, p] = w_k(p) V[:, p + s_k]``, ``Z[K + k][:, p + s_k] =
        w_k(p) V[:, p]``, zero where no edge lands (for one column a buffer reused between calls)."""
        K = len(self._shifts)
        R, P, E = V.shape
        Z = self._buffers.get((R, E))
        if Z is None:  # the slices never written stay zero
            Z = np.zeros((2 * K, R, P, E))
            if E == 1:
                self._buffers[(R, E)] = Z
        for k, s in enumerate(self._shifts):
            if s >= P:  # no pixel has this neighbour (the slices stay zero)
                continue
            w = self._weights[k, : P - s, None]
            np.multiply(V[:, s:], w, out=Z[k, :, : P - s])
            np.multiply(V[:, : P - s], w, out=Z[K + k, :, s:])
        return Z

    def _pixel_product(self, V, out):
        """``out[r] = W V[r]`` for ``V, out`` of shape ``(R, P, E)`` (the weights only, no labels)."""
        P = self.num_pixels
        out[...] = 0.0
        for k, s in enumerate(self._shifts):
            if s < P:
                w = self._weights[k, : P - s, None]
                out[:, : P - s] += w * V[:, s:]
                out[:, s:] += w * V[:, : P - s]
        return out

    def weight_matvec(self, v):
        """``W v`` for ``v`` of shape ``(P,)`` or ``(P, E)`` (``W`` the ``P x P`` edge-weight matrix)."""
        v = np.asarray(v, dtype=np.float64)
        V = v.reshape(1, self.num_pixels, -1)
        return self._pixel_product(V, np.empty(V.shape)).reshape(v.shape)

    def matvec(self, v, out=None):
        """``B v`` for ``v`` of shape ``(N,)`` or ``(N, E)``, flat index ``n = l P + p``.

        Returns ``out`` (a C-contiguous float64 array of the shape of ``v``), or a new array.
        """
        v = np.asarray(v, dtype=np.float64)
        L, P = self.num_labels, self.num_pixels
        V = v.reshape(L, P, -1)
        E = V.shape[2]
        if out is None:
            out = np.empty(v.shape)
        if self.potts:
            # B v = W (s - v_l) per label, s the sum over labels
            self._pixel_product(V.sum(axis=0)[None] - V, out.reshape(L, P, E))
            return out
        Z = self._shifted_copies(V)
        np.matmul(self._stacked, Z.reshape(Z.shape[0] * L, P * E), out=out.reshape(L, P * E))
        return out

    def matches(self, op, v) -> bool:
        """Whether ``B v`` agrees with the operator's ``M v - diag(M) v`` (to ``1e-10`` relative) for
        the given vector ``v`` of shape ``(N,)``: one product that checks the factors against ``op``."""
        from ..backend import to_host

        if getattr(op, "size", None) != self.size or getattr(op, "batch_shape", ()) != ():
            return False
        v = np.asarray(v, dtype=np.float64).reshape(self.size)
        diag = np.asarray(to_host(op.diagonal()), dtype=np.float64).reshape(self.size)
        mv = np.asarray(to_host(op.matvec(v)), dtype=np.float64).reshape(self.size)
        ref = mv - diag * v
        r = ref - self.matvec(v)
        gap2, ref2 = float(np.einsum("i,i->", r, r)), float(np.einsum("i,i->", ref, ref))
        return bool(np.isfinite(gap2) and gap2 <= 1e-20 * max(ref2, np.finfo(float).tiny))
