"""Red-black reduction of the 4-neighbourhood grid G-CRF (docs/design.md 3.1): ``method="reduced_cg"``.

Colour pixel ``(i, j)`` red when ``i + j`` is even, black otherwise.  Every 4-neighbourhood edge
joins a red and a black pixel and every pixel's diagonal block is ``lam I``, so with the unknowns
ordered red first

    ``M = [[lam I, C], [C^T, lam I]]``,   ``C = A[red, black]``.

Eliminating the black unknowns, ``x_b = (b_b - C^T x_r) / lam``, leaves the Schur complement
system on the red half (scaled by ``lam``)

    ``S x_r = (lam^2 I - C C^T) x_r = lam b_r - C b_b``,

symmetric positive definite exactly when ``M`` is.  ``M`` has eigenvalues ``lam +- sigma_i(C)``
(and ``lam``), ``S`` has ``lam^2 - sigma_i^2``: CG on ``S`` needs about half the iterations of CG
on ``M``, on vectors of half the length.  The full residual of ``x = (x_r, x_b)`` is
``(r_S / lam, 0)`` up to rounding, so the stopping rule carries over exactly.

Colour-ordered storage (built once per operator, :func:`red_black_blocks`): each colour is split
by row parity ``pi`` (rows ``i = 2a + pi``) and compacted along rows (pixel ``j`` of a row of
its colour at column ``j // 2``), padded by one row and column on each side: a colour vector is
``(2, L, F)`` with ``F = (ceil(H/2) + 2) * (ceil(W/2) + 2)``, zeros on the pads.  In this layout
the four neighbours of every black pixel of class ``pi`` lie in one red class at one fixed flat
offset (:func:`neighbour_table`), so the products ``C^T x_r`` and ``C y_b`` are long contiguous
loops over each class.  The blocks are stored per black pixel and direction (right, left, down,
up) as ``G[b, pi, d, m, n, f] = A[(m, q), (n, q + d)]``, zero where the edge leaves the image.

Costs per CG step: ``C^T`` then ``C``, each reading the blocks once with half the arithmetic of a
full product.
"""
from __future__ import annotations

import time

import numba
import numpy as np

from solvers import NotPositiveDefiniteError, cg

from ... import threads as threads_policy
from ...backend import get_array_module, to_host
from ...results import curvature_not_positive_definite, make_result
from . import kernels

__all__ = [
    "colour_dims",
    "neighbour_table",
    "red_black_blocks",
    "to_red",
    "to_black",
    "from_colours",
    "black_product",
    "red_product",
    "ReducedGridSystem",
    "red_black_cg",
]


def colour_dims(height: int, width: int) -> tuple[int, int, int]:
    """``(Ha, Wp, F)``: class rows ``ceil(H/2)``, padded row length ``ceil(W/2) + 2`` and the flat
    length ``F = (Ha + 2) Wp`` of one label of one class."""
    ha = (height + 1) // 2
    wp = (width + 1) // 2 + 2
    return ha, wp, (ha + 2) * wp


def neighbour_table(wp: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the neighbours of a black pixel lie in the red storage.

    For black class ``pi`` and direction ``d`` (0 right, 1 left, 2 down, 3 up) the neighbour of
    the black pixel at flat index ``f`` is red class ``cls[pi, d]`` at flat index
    ``f + shift[pi, d]``.  (Class 0 rows are even, their black pixels at odd ``j``.)

    Returns
    -------
    cls, shift : int64 arrays of shape ``(2, 4)``
    """
    cls = np.array([[0, 0, 1, 1], [1, 1, 0, 0]], dtype=np.int64)
    shift = np.array([[1, 0, 0, -wp], [0, -1, wp, 0]], dtype=np.int64)
    return cls, shift


# ---------------------------------------------------------------------------------------------
# colour-ordered vectors


def _colour(v, xp, red: bool):
    L, H, W = v.shape[-3:]
    ha, wp, F = colour_dims(H, W)
    out = xp.zeros(v.shape[:-3] + (2, L, ha + 2, wp), dtype=v.dtype)
    for c in range(2):
        s = v[..., c::2, c::2] if red else v[..., c::2, 1 - c::2]
        out[..., c, :, 1:1 + s.shape[-2], 1:1 + s.shape[-1]] = s
    return out.reshape(v.shape[:-3] + (2, L, F))


def to_red(v):
    """The red pixels of ``v`` ``(..., L, H, W)`` in colour-ordered storage ``(..., 2, L, F)``."""
    return _colour(v, get_array_module(v), True)


def to_black(v):
    """The black pixels of ``v`` ``(..., L, H, W)`` in colour-ordered storage ``(..., 2, L, F)``."""
    return _colour(v, get_array_module(v), False)


def from_colours(red, black, height: int, width: int):
    """Inverse of :func:`to_red` / :func:`to_black`: ``(..., 2, L, F)`` pair -> ``(..., L, H, W)``."""
    xp = get_array_module(red)
    L = red.shape[-2]
    ha, wp, _ = colour_dims(height, width)
    red = red.reshape(red.shape[:-3] + (2, L, ha + 2, wp))
    black = black.reshape(red.shape)
    out = xp.empty(red.shape[:-4] + (L, height, width), dtype=red.dtype)
    for c in range(2):
        t = out[..., c::2, c::2]
        t[...] = red[..., c, :, 1:1 + t.shape[-2], 1:1 + t.shape[-1]]
        t = out[..., c::2, 1 - c::2]
        t[...] = black[..., c, :, 1:1 + t.shape[-2], 1:1 + t.shape[-1]]
    return out


# ---------------------------------------------------------------------------------------------
# colour-ordered blocks


@numba.njit(inline="always")
def write_block_row(G, b, k, m, n, src, wp):  # pragma: no cover - compiled
    """Write the stored block row ``src = pw[b, k, m, n]`` ``(H, W)`` into ``G``: its entries at
    black pixels q are A[(m, q), (n, q + d)] (right, k = 0; down, k = 1); its entries at red pixels
    p are the transposed blocks A[(n, q), (m, p)] of the black neighbour q = p + d (left, up).
    Edges that leave the image are not written (G holds zeros there)."""
    H, W = src.shape
    for i in range(H):
        row = src[i]
        pi = i % 2
        j0 = 1 - pi  # first black column of row i
        nb = (W - j0 + 1) // 2
        if k == 0:
            out = G[b, pi, 0, m, n][(i // 2 + 1) * wp + 1:]
            last = nb - 1 if j0 + 2 * (nb - 1) == W - 1 else nb  # no right neighbour at W - 1
            for c in range(last):
                out[c] = row[j0 + 2 * c]
            out = G[b, pi, 1, n, m][(i // 2 + 1) * wp + 1:]
            for c in range(1 if j0 == 0 else 0, nb):  # black j >= 1: its left edge sits at j - 1
                out[c] = row[j0 + 2 * c - 1]
        elif i + 1 < H:
            out = G[b, pi, 2, m, n][(i // 2 + 1) * wp + 1:]
            for c in range(nb):
                out[c] = row[j0 + 2 * c]
            # black pixels of row i + 1 (columns 1 - pi1 + 2c) take this edge as their up block
            pi1 = (i + 1) % 2
            j1 = 1 - pi1
            out = G[b, pi1, 3, n, m][((i + 1) // 2 + 1) * wp + 1:]
            for c in range((W - j1 + 1) // 2):
                out[c] = row[j1 + 2 * c]


@numba.njit(cache=True, nogil=True, parallel=True)
def _red_black_blocks_nb(pw, G, ha, wp):  # pragma: no cover - compiled
    # One item per stored block row pw[b, k, m, n] (read once); G must be zero on entry.
    B, K, L, _, H, W = pw.shape
    for it in numba.prange(B * K * L * L):
        n = it % L
        m = (it // L) % L
        k = (it // (L * L)) % K
        b = it // (K * L * L)
        write_block_row(G, b, k, m, n, pw[b, k, m, n], wp)


def _red_black_blocks_xp(xp, pw, G, ha, wp):
    B, _, L, _, H, W = pw.shape
    G = G.reshape(B, 2, 4, L, L, ha + 2, wp)
    pwt = xp.swapaxes(pw, 2, 3)  # [.., n, m, ..]
    for pi in range(2):
        na = len(range(pi, H, 2))
        nb = len(range(1 - pi, W, 2))
        if na == 0 or nb == 0:
            continue
        tgt = G[:, pi, :, :, :, 1:1 + na, 1:1 + nb]
        cols = slice(1 - pi, W, 2)
        # right: j + 1 < W drops a last black column at j = W - 1
        keep = nb - (1 if (1 - pi) + 2 * (nb - 1) == W - 1 else 0)
        tgt[:, 0, :, :, :, :keep] = pw[:, 0, :, :, pi::2, cols][..., :keep]
        # left: j >= 1 drops a first black column at j = 0, the block sits at j - 1
        first = 1 if pi == 1 else 0
        tgt[:, 1, :, :, :, first:] = pwt[:, 0, :, :, pi::2, slice(1 - pi + 2 * first - 1, W - 1, 2)][..., :nb - first]
        # down: i + 1 < H drops a last class row at i = H - 1
        rows_d = na - (1 if pi + 2 * (na - 1) == H - 1 else 0)
        tgt[:, 2, :, :, :rows_d, :] = pw[:, 1, :, :, pi::2, cols][..., :rows_d, :]
        # up: i >= 1 drops a first class row at i = 0, the block sits at i - 1
        r0 = 1 if pi == 0 else 0
        tgt[:, 3, :, :, r0:, :] = pwt[:, 1, :, :, slice(pi + 2 * r0 - 1, H - 1, 2), cols][..., :na - r0, :]


def red_black_blocks(pw):
    """Colour-ordered blocks ``G`` ``(B, 2, 4, L, L, F)`` of 4-neighbourhood pairwise terms ``pw``
    ``(B, 2, L, L, H, W)`` (offsets ``(0, 1)``, ``(1, 0)``); see the module docstring."""
    xp = get_array_module(pw)
    B, K, L, _, H, W = pw.shape
    if K != 2:
        raise ValueError(f"the red-black reduction needs the 4-neighbourhood (K = 2); got K = {K}")
    ha, wp, F = colour_dims(H, W)
    if kernels._use_numba(pw):
        G = np.zeros((B, 2, 4, L, L, F), dtype=pw.dtype)  # calloc: zero pages for free
        with threads_policy.parallel_kernel(_threads(G)):
            _red_black_blocks_nb(np.ascontiguousarray(pw), G, ha, wp)
        return G
    G = xp.zeros((B, 2, 4, L, L, F), dtype=pw.dtype)
    _red_black_blocks_xp(xp, pw, G, ha, wp)
    return G


# ---------------------------------------------------------------------------------------------
# products with C^T (red -> black) and C (black -> red)

def _threads(G):
    """Threads of a red-black kernel over the blocks ``G``: one below
    :data:`gcrflinalg.forms.grid.kernels.PARALLEL_MIN_ENTRIES` stored entries, as the general
    product (a parallel region on a busy machine waits for every thread to be scheduled: tens of
    ms, against microseconds of work), else the automatic count."""
    return 1 if G.size < kernels.PARALLEL_MIN_ENTRIES else None


@numba.njit(inline="always")
def _acc4(o, c0, c1, c2, c3, x0, x1, x2, x3, n):  # pragma: no cover - compiled
    for j in range(n):
        o[j] += c0[j] * x0[j] + c1[j] * x1[j] + c2[j] * x2[j] + c3[j] * x3[j]


@numba.njit(inline="always")
def _acc1(o, c0, x0, n):  # pragma: no cover - compiled
    for j in range(n):
        o[j] += c0[j] * x0[j]


@numba.njit(inline="always")
def _acc_rows(o, Gf, gb, gs, vf, vb, vs, count, n):  # pragma: no cover - compiled
    # o[j] += sum_{k < count} Gf[gb + k gs + j] vf[vb + k vs + j], four rows at a time
    k = 0
    while k + 4 <= count:
        _acc4(o, Gf[gb + k * gs:gb + k * gs + n], Gf[gb + (k + 1) * gs:gb + (k + 1) * gs + n],
              Gf[gb + (k + 2) * gs:gb + (k + 2) * gs + n], Gf[gb + (k + 3) * gs:gb + (k + 3) * gs + n],
              vf[vb + k * vs:vb + k * vs + n], vf[vb + (k + 1) * vs:vb + (k + 1) * vs + n],
              vf[vb + (k + 2) * vs:vb + (k + 2) * vs + n], vf[vb + (k + 3) * vs:vb + (k + 3) * vs + n], n)
        k += 4
    while k < count:
        _acc1(o, Gf[gb + k * gs:gb + k * gs + n], vf[vb + k * vs:vb + k * vs + n], n)
        k += 1


@numba.njit(inline="always")
def _interior(shift, F):  # pragma: no cover - compiled
    # [lo, hi): the flat range of the class rows inside the pad rows (one padded row of wp each)
    wp = -shift[0, 3]
    return wp, F - wp


@numba.njit(inline="always")
def _output_row(arr, it, L, B, lo, hi):  # pragma: no cover - compiled
    # Work item it = ((e B + b) 2 + colour class) L + label: its output row, pads and interior zeroed
    label = it % L
    cls = (it // L) % 2
    b = (it // (2 * L)) % B
    e = it // (2 * L * B)
    row = arr[e, b, cls, label]
    row[:] = 0
    return row[lo:hi], label, cls, b, e


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def _black_product_nb(G, x, y, a1, base, a0, cls, shift):  # pragma: no cover - compiled
    # y[e, b, pi, m] = a1[b] sum_d sum_n G[b, pi, d, m, n] x[e, b, cls[pi, d], n](shifted) + a0[b] base
    E, B, _, L, F = x.shape
    lo, hi = _interior(shift, F)
    n = hi - lo
    Gf = G.reshape(-1)
    xf = x.reshape(-1)
    for it in numba.prange(E * B * 2 * L):
        o, m, pi, b, e = _output_row(y, it, L, B, lo, hi)
        if a1[b] != 0:
            for d in range(4):
                gb = (((b * 2 + pi) * 4 + d) * L + m) * L * F + lo
                xb = ((e * B + b) * 2 + cls[pi, d]) * L * F + lo + shift[pi, d]
                _acc_rows(o, Gf, gb, F, xf, xb, F, L, n)  # over n: G[.., m, n] x[.., n]
        c1, c0 = a1[b], a0[b]
        if c1 != 1 or c0 != 0:
            s = base[e, b, pi, m][lo:hi]
            for j in range(n):
                o[j] = c1 * o[j] + c0 * s[j]


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
def _red_product_nb(G, y, out, cx, x, cz, cb, base, cls, shift):  # pragma: no cover - compiled
    # out[e, b, rho, n] = cx[b] x + cz[b] sum_{(pi, d): cls = rho} sum_m G[b, pi, d, m, n] y[e, b, pi, m]
    #                     (moved by +shift) + cb[b] base
    E, B, _, L, F = y.shape
    lo, hi = _interior(shift, F)
    n = hi - lo
    Gf = G.reshape(-1)
    yf = y.reshape(-1)
    LF = L * F
    for it in numba.prange(E * B * 2 * L):
        t, c, rho, b, e = _output_row(out, it, L, B, lo, hi)
        for pi in range(2):
            for d in range(4):
                if cls[pi, d] != rho:
                    continue
                s = shift[pi, d]  # black f feeds red f + s: output j reads input j - s
                gb = (((b * 2 + pi) * 4 + d) * L * L + c) * F + lo - s
                yb = ((e * B + b) * 2 + pi) * LF + lo - s
                _acc_rows(t, Gf, gb, LF, yf, yb, F, L, n)  # over m: G[.., m, c] y[.., m]
        xs = x[e, b, rho, c][lo:hi]
        bs = base[e, b, rho, c][lo:hi]
        ax, az, ab = cx[b], cz[b], cb[b]
        for j in range(n):
            t[j] = ax * xs[j] + az * t[j] + ab * bs[j]


def _coef(xp, value, B, dtype):
    return xp.ascontiguousarray(xp.broadcast_to(xp.asarray(value, dtype=dtype), (B,)))


def black_product(G, x, *, cls, shift, scale=1.0, base=None, base_scale=0.0):
    """``y = scale * C^T x + base_scale * base`` on the black half.

    Parameters
    ----------
    G : array ``(B, 2, 4, L, L, F)`` from :func:`red_black_blocks`
    x : array ``(E, B, 2, L, F)``, red storage (zero pads)
    cls, shift : from :func:`neighbour_table`
    scale, base_scale : float or array ``(B,)``
    base : array ``(E, B, 2, L, F)``, black storage; required when ``base_scale`` is nonzero

    Returns
    -------
    y : array ``(E, B, 2, L, F)``, black storage, zero pads
    """
    xp = get_array_module(x)
    B = x.shape[1]
    dt = x.dtype
    a1, a0 = _coef(xp, scale, B, dt), _coef(xp, base_scale, B, dt)
    if base is None:
        base = x  # never read: a0 is zero
    if kernels._use_numba(x):
        y = np.empty_like(x)
        with threads_policy.parallel_kernel(_threads(G)):
            _black_product_nb(G, np.ascontiguousarray(x), y, a1, np.ascontiguousarray(base), a0, cls, shift)
        return y
    return _black_product_xp(xp, G, x, a1, base, a0, cls, shift)


def _black_product_xp(xp, G, x, a1, base, a0, cls, shift):
    """Array-module version of :func:`black_product` (CuPy; any backend)."""
    F = x.shape[-1]
    lo, hi = _interior(shift, F)
    y = xp.zeros_like(x)
    for pi in range(2):
        for d in range(4):
            rc, s = int(cls[pi, d]), int(shift[pi, d])
            y[:, :, pi, :, lo:hi] += xp.einsum("bmnf,ebnf->ebmf", G[:, pi, d, :, :, lo:hi],
                                               x[:, :, rc, :, lo + s:hi + s])
    y = a1[None, :, None, None, None] * y + a0[None, :, None, None, None] * base
    y[..., :lo] = 0
    y[..., hi:] = 0
    return y


def red_product(G, y, *, cls, shift, x=None, x_scale=0.0, scale=1.0, base=None, base_scale=0.0):
    """``out = x_scale * x + scale * C y + base_scale * base`` on the red half.

    ``y`` is black storage ``(E, B, 2, L, F)``; ``x``, ``base`` and ``out`` red storage; the
    coefficients are floats or arrays ``(B,)``; ``cls, shift`` from :func:`neighbour_table`.
    """
    xp = get_array_module(y)
    B = y.shape[1]
    dt = y.dtype
    ax, az, ab = _coef(xp, x_scale, B, dt), _coef(xp, scale, B, dt), _coef(xp, base_scale, B, dt)
    x = y if x is None else x
    base = y if base is None else base
    if kernels._use_numba(y):
        out = np.empty_like(y)
        with threads_policy.parallel_kernel(_threads(G)):
            _red_product_nb(G, np.ascontiguousarray(y), out, ax, np.ascontiguousarray(x), az, ab,
                            np.ascontiguousarray(base), cls, shift)
        return out
    return _red_product_xp(xp, G, y, ax, x, az, ab, base, cls, shift)


def _red_product_xp(xp, G, y, ax, x, az, ab, base, cls, shift):
    """Array-module version of :func:`red_product` (CuPy; any backend)."""
    F = y.shape[-1]
    lo, hi = _interior(shift, F)
    t = xp.zeros_like(y)
    for pi in range(2):
        for d in range(4):
            rc, s = int(cls[pi, d]), int(shift[pi, d])
            t[:, :, rc, :, lo:hi] += xp.einsum("bmnf,ebmf->ebnf", G[:, pi, d, :, :, lo - s:hi - s],
                                               y[:, :, pi, :, lo - s:hi - s])

    def c(a):
        return a[None, :, None, None, None]

    out = c(ax) * x + c(az) * t + c(ab) * base
    out[..., :lo] = 0
    out[..., hi:] = 0
    return out


# ---------------------------------------------------------------------------------------------
# the reduced system and its solve


class ReducedGridSystem:
    """``S = lam^2 I - C C^T`` on the red half of every system, for :func:`solvers.cg`.

    ``matvec`` takes ``(E, B, n)`` arrays, ``n = 2 L F`` (red storage, flattened; pads stay zero).
    """

    def __init__(self, G, lam, num_labels, flat_len, cls, shift):
        xp = get_array_module(G)
        self.G, self.cls, self.shift = G, cls, shift
        self.lam2 = xp.ascontiguousarray(lam * lam)
        self.L, self.F = num_labels, flat_len
        n = 2 * num_labels * flat_len
        self.shape = (n, n)
        self.dtype = G.dtype

    def matvec(self, X):
        x = X.reshape(X.shape[:-1] + (2, self.L, self.F))
        y = black_product(self.G, x, cls=self.cls, shift=self.shift)
        out = red_product(self.G, y, x=x, x_scale=self.lam2, scale=-1.0, cls=self.cls, shift=self.shift)
        return out.reshape(X.shape)


def red_black_cg(op, b, x0, options):
    """``M x = b`` for a 4-neighbourhood :class:`~gcrflinalg.GridGCRF` by CG on the red-black
    reduced system (module docstring), in refinement rounds.

    Each round takes the current residual ``r = b - M x`` (``r = b`` at the start without
    ``x0``), solves ``S d_r = lam r_r - C r_b`` by :func:`solvers.cg` to ``lam`` times the
    tolerance of the full system, back-substitutes ``d_b = (r_b - C^T d_r) / lam``, sets
    ``x += d`` and measures the true residual ``b - M x`` of the full system.  Rounds stop when it
    meets ``max(rtol ||b||, atol)`` per system, when ``maxiter`` reduced steps are spent, or when a
    round does not halve it (the accuracy of the dtype).  A system that meets its tolerance (at the
    start or after a round) keeps its iterate through the later rounds of the others.

    Parameters
    ----------
    op : GridGCRF with ``neighbourhood=4``
    b : array ``(*extra, *op.batch_shape, N)``
    x0 : array of ``b``'s shape, or None
    options : dict
        ``rtol`` (default 1e-5), ``atol`` (0), ``maxiter`` (reduced CG steps, default ``10 N``),
        ``callback`` (called with the full iterate, costing one back-substitution per call),
        ``check_pd``.

    Returns
    -------
    SolveResult
        ``iterations`` counts reduced CG steps; ``matvecs`` counts products with ``C`` or ``C^T``
        (half the arithmetic of a product with ``M`` each); ``residual_norms`` holds the full
        residual implied by the reduced one (``||r_S|| / lam``), the last row the true residual.
    """

    t0 = time.perf_counter()
    xp = op.xp
    options = dict(options)
    rtol = float(options.pop("rtol", 1e-5))
    atol = float(options.pop("atol", 0.0))
    maxiter = options.pop("maxiter", None)
    callback = options.pop("callback", None)
    check_pd = options.pop("check_pd", True)
    if options:
        raise TypeError(f"method='reduced_cg' got unexpected options {sorted(options)}")
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0; got rtol={rtol}, atol={atol}")
    B, L, H, W = op._n_systems, op.num_labels, op.height, op.width
    sys_shape = b.shape[: b.ndim - 1]
    bb = b.reshape((-1, B, L, H, W))
    E = bb.shape[0]
    G = op.red_black_layout()
    _, wp, F = colour_dims(H, W)
    cls, shift = neighbour_table(wp)
    dt = G.dtype
    lam = op._lam_flat.astype(dt)  # (B,)
    lam5 = lam[None, :, None, None, None]
    b_r, b_b = to_red(bb), to_black(bb)
    bnorm = xp.sqrt(xp.sum(bb * bb, axis=(2, 3, 4), dtype=np.float64))  # (E, B)
    tol = xp.maximum(rtol * bnorm, atol)
    # Y = C^T x_r is kept (updated by the products of the corrections), so that the true residual
    # ``r_b = b_b - Y - lam x_b``, ``r_r = b_r - lam x_r - C x_b`` costs one product with C per round
    if x0 is None:
        x_r, x_b, Y = xp.zeros_like(b_r), xp.zeros_like(b_b), xp.zeros_like(b_b)
        r_r, r_b = b_r, b_b
    else:
        x0 = x0.reshape(bb.shape).astype(dt)
        x_r, x_b = to_red(x0), to_black(x0)
        Y = black_product(G, x_r, cls=cls, shift=shift)
        r_r, r_b = _residual(G, b_r, b_b, x_r, x_b, Y, lam, lam5, cls, shift)
    rnorm = _norm2(xp, r_r, r_b)
    budget = 10 * op.size if maxiter is None else int(maxiter)
    used = np.zeros((E, B), dtype=np.int64)
    history = [to_host(rnorm)]
    matvecs = 0 if x0 is None else 2  # products with C or C^T
    # CG runs on S d' = D rhs with D = 1 / (lam tol) per system, so that one absolute tolerance
    # serves every system: ||D rhs - S d'|| <= 1  <=>  ||rhs - S d|| / lam <= tol  (d = d' / D)
    if rtol > 0 or atol > 0:
        lam64 = lam[None, :].astype(np.float64)
        scale = xp.where(tol > 0, 1.0 / (lam64 * xp.where(tol > 0, tol, 1.0)), 1.0)
        reduced_atol = 1.0
    else:
        scale = xp.ones_like(tol)
        reduced_atol = 0.0
    scale5 = scale.astype(dt)[:, :, None, None, None]
    system = ReducedGridSystem(G, lam, L, F, cls, shift)

    def black_correction(d_r, y, todo):
        # d_b = (r_b - C^T d_r) / lam; a finished system keeps its iterate (d_r = 0 there, d_b too)
        d_b = (r_b - y) / lam5
        return d_b if todo.all() else xp.where(xp.asarray(todo)[:, :, None, None, None], d_b, 0)

    def full_callback(xr_flat):
        d_r = xr_flat.reshape(x_r.shape) / scale5
        d_b = black_correction(d_r, black_product(G, d_r, cls=cls, shift=shift), todo)
        callback(from_colours(x_r + d_r, x_b + d_b, H, W).reshape(b.shape))

    for _ in range(8):
        todo = to_host(rnorm > tol)
        if not todo.any() or used.max() >= budget:
            break
        rhs = red_product(G, r_b, x=r_r, x_scale=lam, scale=-1.0, cls=cls, shift=shift)
        rhs *= scale5
        if not todo.all():
            rhs = xp.where(xp.asarray(todo)[:, :, None, None, None], rhs, 0)  # finished systems sit still
        try:
            res = cg(system, rhs.reshape(E, B, -1), rtol=0.0, atol=reduced_atol,
                     maxiter=max(1, budget - int(used.max())), check_pd=check_pd, true_residual=False,
                     callback=None if callback is None else full_callback)
        except NotPositiveDefiniteError as err:
            sys_b = int(err.system[1]) if err.system else 0
            idx = np.unravel_index(int(sys_b), op.batch_shape) if op.batch_shape else ()
            idx = tuple(int(i) for i in idx)
            lam_s = float(to_host(lam)[sys_b])
            # S = lam^2 I - C C^T has lambda_min <= rho, so sigma_max(C) = -lambda_min(A) is at
            # least sqrt(lam^2 - rho)
            raise curvature_not_positive_definite(
                "GridGCRF", lam=lam_s, rayleigh=float(err.value), system=idx,
                bound=float(np.sqrt(lam_s * lam_s - float(err.value))),
                threshold_name="-lambda_min(A) = sigma_max(C), the red-black coupling,",
                matrix="S", how="CG on the red-black reduced system S = lam^2 I - C C^T") from err
        d_r = res.x.reshape(x_r.shape) / scale5
        y = black_product(G, d_r, cls=cls, shift=shift)  # C^T d_r
        x_r, x_b, Y = x_r + d_r, x_b + black_correction(d_r, y, todo), Y + y
        r_r, r_b = _residual(G, b_r, b_b, x_r, x_b, Y, lam, lam5, cls, shift)
        previous, rnorm = rnorm, _norm2(xp, r_r, r_b)
        steps = np.asarray(res.iterations).reshape(E, B) * todo
        used += steps
        matvecs += 2 * int(res.matvecs) + 3
        # the reduced history in units of the full residual, then the true residual
        hist = np.asarray(res.residual_norms).reshape(-1, E, B) / (to_host(scale)
                                                                   * to_host(lam).astype(np.float64)[None, :])
        rows = list(hist[1:]) or [history[-1]]  # a round without CG steps still adds its end row
        rows[-1] = to_host(rnorm)
        history.extend(np.where(todo, row, history[-1]) for row in rows)
        if not to_host((rnorm < 0.5 * previous) | (rnorm <= tol)).all():
            break
    converged = to_host(rnorm <= tol)
    x = from_colours(x_r, x_b, H, W).reshape(b.shape)
    hist = np.stack(history).reshape((-1,) + sys_shape)
    return make_result(x, converged=converged.reshape(sys_shape), iterations=used.reshape(sys_shape),
                        history=hist, matvecs=matvecs, time_s=time.perf_counter() - t0,
                        method="reduced_cg", bnorm=to_host(bnorm).reshape(sys_shape))


def _residual(G, b_r, b_b, x_r, x_b, Y, lam, lam5, cls, shift):
    """The residual ``b - M x`` in colour storage, ``Y = C^T x_r``: ``r_b = b_b - Y - lam x_b``,
    ``r_r = b_r - lam x_r - C x_b``."""
    r_b = b_b - Y - lam5 * x_b
    r_r = red_product(G, x_b, x=x_r, x_scale=-lam, scale=-1.0, base=b_r, base_scale=1.0, cls=cls,
                      shift=shift)
    return r_r, r_b


def _norm2(xp, r_r, r_b):
    """Per-system ``||r||_2`` (float64) of a colour-split residual ``(E, B, 2, L, F)``."""
    axes = (2, 3, 4)
    return xp.sqrt(xp.sum(r_r * r_r, axis=axes, dtype=np.float64) + xp.sum(r_b * r_b, axis=axes, dtype=np.float64))
