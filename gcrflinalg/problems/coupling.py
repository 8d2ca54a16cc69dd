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

that is ``out[:, p] = sum_d M_d (u_d(p) v[:, p + sigma_d])`` over ``D = 2 K`` directions: ``M_d =
C_k``, ``sigma_d = s_k``, ``u_d(p) = w_k(p)`` (the pixel's own edge) and ``M_d = C_k^T``,
``sigma_d = -s_k``, ``u_d(p) = w_k(p - s_k)`` (its neighbour's edge).  Per tile of pixels that is
one small ``(L, D L) x (D L, tile)`` matrix product (:func:`gcrflinalg.problems._kernels.factor_product`),
with no read of the ``K L^2 P`` stored blocks.

On the 4-neighbourhood every edge joins a red pixel (``i + j`` even) and a black one, so ``B`` maps
red values to black ones and back; :meth:`GridCoupling.red_square_matvec` applies ``B^2`` on the red
pixels (``C C^T`` for ``C = B[red, black]``) as two such half-size products.
"""
from __future__ import annotations

import numpy as np

from ..neighbourhoods import edge_mask, neighbourhood_offsets
from ._kernels import factor_product

__all__ = ["GridCoupling", "CHECKED_CONFIGURATIONS"]

#: ``(potts, neighbourhood, labels, height, width)`` of the grid problems whose factors agreed with
#: their operator's product in this process (:meth:`GridCoupling.agrees_with`)
CHECKED_CONFIGURATIONS: set = set()


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
    num_labels, num_pixels, neighbourhood
    potts : bool
        ``B = (1 1^T - I) (x) W`` (the Potts form).
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
        self._shape = (H, W)
        # off-image entries ignored whatever they hold (NaN included), as the operators do
        w = np.where(edge_mask(neighbourhood, H, W), weights, 0.0).reshape(K, P)
        shifts = [di * W + dj for di, dj in offsets]  # > 0: a half-set of offsets
        # the D = 2K directions of the module docstring: own edges first, then the neighbours'
        self._sigma = np.array(shifts + [-s for s in shifts], dtype=np.intp)
        self._u = np.zeros((2 * K, P))
        self._u[:K] = w
        for k, s in enumerate(shifts):
            if s < P:
                self._u[K + k, s:] = w[k, : P - s]
        p = np.arange(P)
        # a neighbour index wherever the weight is nonzero (its edge is in the image); 0 elsewhere
        self._index = np.where(self._u != 0.0, p[None, :] + self._sigma[:, None], 0)
        self._ones = np.ones((1, 2 * K))  # W: M_d = 1 in every direction
        if self.potts:
            self.num_labels = int(num_labels)
            self._stacked = None
        else:
            compat = np.asarray(compat, dtype=np.float64)
            if compat.shape[0] != K or compat.shape[1] != compat.shape[2]:
                raise ValueError(f"compat must have shape ({K}, L, L); got {compat.shape}")
            self.num_labels = compat.shape[1]
            # [C_1 .. C_K, C_1^T .. C_K^T]: (L, 2 K L)
            self._stacked = np.ascontiguousarray(np.concatenate([*compat, *compat.transpose(0, 2, 1)], axis=1))
        self.size = self.num_labels * P
        self._red_black = None

    # ------------------------------------------------------------------ products
    def _columns(self, v, rows, product):
        """``product`` (on ``(rows, P)`` arrays) of ``v`` of shape ``(rows P,)`` or ``(rows P, E)``."""
        v = np.asarray(v, dtype=np.float64)
        P = self.num_pixels
        if v.ndim == 1:
            return product(np.ascontiguousarray(v.reshape(rows, P))).reshape(v.shape)
        cols = v.reshape(rows, P, -1)
        out = np.empty(cols.shape)
        for e in range(cols.shape[2]):
            out[:, :, e] = product(np.ascontiguousarray(cols[:, :, e]))
        return out.reshape(v.shape)

    def _weight_product(self, x):  # (R, P) -> (R, P): W on every row
        out = np.empty_like(x)
        for r in range(x.shape[0]):
            factor_product(self._ones, self._u, self._index, x[r: r + 1], out[r: r + 1])
        return out

    def weight_matvec(self, v):
        """``W v`` for ``v`` of shape ``(P,)`` or ``(P, E)`` (``W`` the ``P x P`` edge-weight matrix)."""
        return self._columns(v, 1, self._weight_product)

    def matvec(self, v, out=None):
        """``B v`` for ``v`` of shape ``(N,)`` or ``(N, E)``, flat index ``n = l P + p``.

        Returns ``out`` (given: a C-contiguous float64 array of ``v``'s shape), or a new array.
        """
        L, P = self.num_labels, self.num_pixels
        if self.potts:
            # B v = W (s - v_l) per label, s the sum over labels
            def product(x):
                return self._weight_product(x.sum(axis=0)[None] - x)
        elif out is not None and np.ndim(v) == 1:
            v = np.ascontiguousarray(v, dtype=np.float64)
            factor_product(self._stacked, self._u, self._index, v.reshape(L, P), out.reshape(L, P))
            return out
        else:
            def product(x):
                return factor_product(self._stacked, self._u, self._index, x, np.empty_like(x))
        result = self._columns(v, L, product)
        if out is None:
            return result
        out[...] = result
        return out

    # ------------------------------------------------------------------ red-black halves
    @property
    def red_size(self) -> int:
        """``L`` times the number of red pixels (``i + j`` even): the length of
        :meth:`red_square_matvec`'s vectors."""
        H, W = self._shape
        return self.num_labels * ((H * W + 1) // 2)

    def _halves(self):
        """``((u, index) black <- red, (u, index) red <- black)`` of the 4-neighbourhood (cached)."""
        if self._red_black is None:
            if self.neighbourhood != 4 or self.potts:
                raise ValueError("the red-black halves need the general form on the 4-neighbourhood")
            H, W = self._shape
            red = ((np.arange(H)[:, None] + np.arange(W)[None, :]) % 2 == 0).reshape(-1)
            position = np.empty(self.num_pixels, dtype=np.intp)  # a pixel's place among its colour
            position[red] = np.arange(int(red.sum()))
            position[~red] = np.arange(int((~red).sum()))
            halves = []
            for out_pixels in (np.flatnonzero(~red), np.flatnonzero(red)):
                u = np.ascontiguousarray(self._u[:, out_pixels])
                index = np.where(u != 0.0, position[self._index[:, out_pixels]], 0)
                halves.append((u, index))
            self._red_black = tuple(halves)
        return self._red_black

    def red_square_matvec(self, x):
        """``B^2`` on the red pixels, ``x`` of shape ``(red_size,)``: ``B`` to the black pixels and
        back (4-neighbourhood, general form).  Its eigenvalues are the squared singular values of
        ``B[red, black]``, so its largest is ``rho(B)^2``."""
        (u_b, i_b), (u_r, i_r) = self._halves()
        L = self.num_labels
        xr = np.ascontiguousarray(x, dtype=np.float64).reshape(L, -1)
        black = factor_product(self._stacked, u_b, i_b, xr, np.empty((L, u_b.shape[1])))
        return factor_product(self._stacked, u_r, i_r, black, np.empty_like(xr)).reshape(-1)

    # ------------------------------------------------------------------ a start for Lanczos
    def likely_extreme_vectors(self, iterations: int = 30, *, red_only: bool = False):
        """Unit vectors ``(4, N)`` near the extreme eigenvectors of ``B`` (general form); with
        ``red_only`` their entries on the red pixels only, ``(4, red_size)`` in the order of
        :meth:`red_square_matvec`'s vectors (each scaled to unit length there).

        Were every ``C_k`` the same symmetric ``C`` and the weights the same in every direction,
        ``B = C (x) W`` would have the eigenvectors ``u (x) w`` (``u`` of ``C``, ``w`` of ``W``) with
        the eigenvalues ``mu(C) mu(W)``: the extremes come from the extreme ``u`` and ``w``.  These are
        the four products of the extreme eigenvectors of the mean symmetric part of the ``C_k`` and
        of ``W`` (by ``iterations`` power steps on ``W + g I`` and ``g I - W``, ``g`` its Gershgorin
        bound, from the constant vector).  A Lanczos start that leans on them finds the ends in fewer
        steps; its certificate does not depend on the start.
        """
        if self.potts:
            raise ValueError("the Potts form's spectrum comes from W")
        K, L = len(self._sigma) // 2, self.num_labels
        compat = self._stacked[:, : K * L].reshape(L, K, L).transpose(1, 0, 2)
        _, U = np.linalg.eigh(((compat + compat.transpose(0, 2, 1)) / 2.0).mean(axis=0))
        g = float(np.abs(self._u).sum(axis=0).max()) or 1.0
        ends = []
        for sign in (1.0, -1.0):
            w = np.ones(self.num_pixels)
            for _ in range(iterations):
                w = sign * self.weight_matvec(w) + g * w
                w /= np.sqrt(np.einsum("i,i->", w, w))
            ends.append(w)
        if red_only:  # kron(u, w)[red] = kron(u, w[red pixels]): the halves never built
            H, W = self._shape
            red = ((np.arange(H)[:, None] + np.arange(W)[None, :]) % 2 == 0).reshape(-1)
            ends = [w[red] for w in ends]
        out = np.stack([np.kron(U[:, i], w) for i in (-1, 0) for w in ends])
        return out / np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]

    @property
    def red_pixels(self):
        """Boolean ``(N,)``: the unknowns of the red pixels (``i + j`` even), in the order of
        :meth:`red_square_matvec`'s vectors."""
        H, W = self._shape
        red = ((np.arange(H)[:, None] + np.arange(W)[None, :]) % 2 == 0).reshape(-1)
        return np.tile(red, self.num_labels)

    # ------------------------------------------------------------------ the check
    @property
    def configuration(self) -> tuple:
        """``(potts, neighbourhood, labels, height, width)``: what the two products' conventions
        (offsets, directions, transposes, the image's edges) can depend on."""
        return (self.potts, self.neighbourhood, self.num_labels) + tuple(self._shape)

    def agrees_with(self, op, v) -> bool:
        """:meth:`matches` for the first problem of a configuration in this process; later problems
        of the same configuration are taken to agree without the product.

        The check tests code, not values: the factors and the operator's blocks come from the same
        compatibilities and weights, and the two products agree or not by their conventions, which a
        problem of the configuration with generic values (the built-in compatibilities have a random
        antisymmetric part) exercises.  So a sweep pays the check's product once per configuration
        instead of once per problem, and the operator's first read of its blocks (NaN/Inf, Gershgorin
        radii, red-black blocks: :class:`~gcrflinalg.forms.grid.GridGCRF`) happens at its first solve.
        Clear :data:`CHECKED_CONFIGURATIONS` to check every problem again."""
        key = self.configuration
        if key in CHECKED_CONFIGURATIONS:
            return True
        agree = self.matches(op, v)
        if agree:
            CHECKED_CONFIGURATIONS.add(key)
        return agree

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
