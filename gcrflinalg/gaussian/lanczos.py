"""Lock-step Lanczos on many starting vectors at once, and Gauss quadrature on its tridiagonals.

All starting vectors (probes) advance together: one batched product ``M V`` per step for every probe
of every system, so the product's cost is shared across the batch.  A probe whose Krylov space
becomes invariant (``beta_j`` below round-off, e.g. every probe of ``M = lam I`` after one step)
stops there: its tridiagonal keeps the steps it has, which give the *exact* quadrature of that probe
(no ``log 0``, no division by a vanishing ``beta``), while the other probes go on.

For a symmetric ``M`` and a unit start ``q_0 = v / ||v||`` the ``k``-step Lanczos process gives
``Q_k`` (orthonormal in exact arithmetic) and the tridiagonal ``T_k = Q_k^T M Q_k``; with
``T_k = S diag(theta) S^T``::

    v^T f(M) v  ~  ||v||^2 sum_i S[0, i]^2 f(theta_i)             (Gauss quadrature, exact for
                                                                     polynomials of degree 2k - 1)
    f(M) v      ~  ||v|| Q_k S diag(f(theta)) S^T e_1             (Krylov approximation)

A Ritz value ``theta_i <= 0`` is a Rayleigh quotient of ``M``: it proves ``M`` not positive
definite and raises :class:`NotPositiveDefiniteError`.
"""
from __future__ import annotations

import numpy as np

from solvers import NotPositiveDefiniteError

from ..backend import _array_kernels_on, get_array_module
from ._kernels import fused_lanczos_available, gauss_nodes, lanczos_update

__all__ = ["LanczosState", "tridiagonal_eigh", "quadrature", "LOOP_MAX_PROBES"]

#: up to this many probes the tridiagonals are diagonalised one by one by LAPACK's tridiagonal
#: eigensolver (``scipy.linalg.eigh_tridiagonal``: no BLAS threads, whose start-up on a loaded
#: machine was measured to cost up to a second for thirty 30 x 30 matrices); above it one batched
#: ``numpy.linalg.eigh``
LOOP_MAX_PROBES = 4096


class LanczosState:
    """The lock-step Lanczos process on the columns of ``v0``.

    Parameters
    ----------
    apply : callable
        ``V -> M V`` on float64 arrays of the shape of ``v0``.
    v0 : array, shape ``(*probes, N)``, float64
        Starting vectors (nonzero).
    reorthogonalize : bool
        Full reorthogonalisation of every new vector against the stored basis (classical
        Gram–Schmidt, twice).  Implies ``keep_basis``.
    keep_basis : bool
        Store ``Q_k`` (for Krylov approximations of ``f(M) v``).
    breakdown : float
        Relative threshold: a probe stops when ``beta_j <= breakdown * max_i(|alpha_i| + beta_i)``.
    apply_quadratic : callable, optional
        ``V -> (M V, v . M v per probe)``: a product that also returns the quadratic forms, which
        the compiled update then takes instead of a pass of its own.
    fused_step : callable, optional
        ``(W, Q, Qp, sq, cq, cp) -> (x . M x, ||x||^2)`` on the ``(N, probes)`` transposes of
        Fortran-ordered float64 blocks: writes ``x = sq W - cq Q - cp Qp`` (per probe) over ``Qp``
        and ``M x`` over ``W`` in one pass.  With ``apply_quadratic``, a Fortran-ordered ``v0`` and
        no stored basis, each step's update and the next step's product then run as one pass.
    overwrite : bool
        ``v0`` may be overwritten (with ``fused_step``: the first pass normalises it as it goes).

    Notes
    -----
    On the CPU (float64 NumPy arrays of one layout, array-kernel switch off) a compiled kernel does
    the recurrence (:mod:`gcrflinalg.gaussian._kernels`); without a stored basis it also keeps the
    new vector unnormalised, with its factor ``1 / beta_j`` applied in the next step's pass (one
    pass over the block less per step).

    Attributes
    ----------
    alpha, beta : list of arrays of shape ``probes``
        Diagonal and off-diagonal of the tridiagonals (``beta[j]`` couples steps ``j`` and
        ``j + 1``).
    sizes : array of int, shape ``probes``
        Steps taken by each probe (a stopped probe keeps its size).
    norms : array, shape ``probes``
        ``||v0||``.
    matvecs : int
        Batched products so far.
    """

    def __init__(self, apply, v0, *, reorthogonalize=False, keep_basis=False, breakdown=1e-12,
                 apply_quadratic=None, fused_step=None, overwrite=False):
        xp = get_array_module(v0)
        self.xp = xp
        self.apply = apply
        self.apply_quadratic = apply_quadratic
        fortran = v0.ndim == 2 and v0.flags.f_contiguous and not v0.flags.c_contiguous
        one_pass = (fused_step is not None and apply_quadratic is not None and xp is np and fortran
                    and not (keep_basis or reorthogonalize))
        self.norms = xp.sqrt(xp.einsum("...n,...n->...", v0, v0))
        if bool((self.norms == 0).any()):
            raise ValueError("Lanczos needs nonzero starting vectors")
        self._start = None
        if one_pass and overwrite and v0.dtype == np.float64:
            # the first pass normalises v0 itself (into a zeroed buffer) and writes M q_0 over v0
            self._start = v0
            self.q = xp.zeros(v0.shape, order="F")
        else:
            self.q = v0 / self.norms[..., None]
        # zero pages from the allocator, in q's layout (no pass of its own)
        self.q_prev = xp.zeros(self.q.shape, order="F" if fortran else "C")
        self.beta_prev = xp.zeros(self.norms.shape)
        self.reorthogonalize = bool(reorthogonalize)
        self.keep_basis = bool(keep_basis or reorthogonalize)
        self._basis = None
        self._stored = 0
        if self.keep_basis:
            self._store(self.q)
        self.breakdown = float(breakdown)
        self.alpha, self.beta = [], []
        self.active = xp.ones(self.norms.shape, dtype=bool)
        self.sizes = xp.zeros(self.norms.shape, dtype=np.int64)
        self.scale = xp.zeros(self.norms.shape)
        self.matvecs = 0
        self._scratch = None
        self._fused = None
        # compiled path without a stored basis: the Lanczos vectors are q * _q_scale (per probe)
        self._q_scale = self._prev_scale = None
        # one-pass steps (``fused_step``): the product of the next step, computed with this one's update
        self._fused_step = fused_step if one_pass else None
        self._pending = None

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def step(self, last: bool = True) -> None:
        """One Lanczos step of every active probe (``last=False``: another step follows, which a
        one-pass ``fused_step`` computes the product of together with this step's update)."""
        if self._fused_step is not None:
            self._step_one_pass(last)
            return
        xp = self.xp
        dots = None
        if self.apply_quadratic is not None and not self.reorthogonalize and self._fused is not False:
            w, dots = self.apply_quadratic(self.q)
        else:
            w = self.apply(self.q)
        self.matvecs += 1
        if self._fused is None:  # decided once per run (the layout stays the same)
            self._fused = not self.reorthogonalize and fused_lanczos_available(w, self.q, self.q_prev)
        if self._fused:
            # compiled: both passes of the recurrence per probe while its vectors are in cache
            a, b2 = lanczos_update(w, self.q, self.q_prev, self.beta_prev, self._q_scale, self._prev_scale,
                                   dots=dots)
            b = np.sqrt(b2)
        else:
            a = xp.einsum("...n,...n->...", self.q, w)
            # w -= a q + beta_prev q_prev, through one scratch array (no N-sized temporaries per step)
            if self._scratch is None:
                self._scratch = xp.empty_like(w)
            tmp = self._scratch
            xp.multiply(self.q, a[..., None], out=tmp)
            w -= tmp
            xp.multiply(self.q_prev, self.beta_prev[..., None], out=tmp)
            w -= tmp
            if self.reorthogonalize:
                Q = self._basis[: self._stored]  # (j, *probes, N)
                for _ in range(2):  # classical Gram-Schmidt, twice
                    c = xp.einsum("k...n,...n->k...", Q, w)
                    w -= xp.einsum("k...n,k...->...n", Q, c)
            b = xp.sqrt(xp.einsum("...n,...n->...", w, w))
        a = xp.where(self.active, a, 1.0)  # stopped probes: a decoupled 1 x 1 block
        self.sizes = self.sizes + self.active
        self.scale = xp.maximum(self.scale, xp.abs(a) + b)
        stop = self.active & (b <= self.breakdown * self.scale)
        self.active = self.active & ~stop
        b = xp.where(self.active, b, 0.0)
        self.alpha.append(a)
        self.beta.append(b)
        # q_{j+1} = w / beta_j, and 0 for a stopped probe (its factor is 0)
        factor = xp.where(self.active, 1.0, 0.0) / xp.where(self.active, b, 1.0)
        if self._fused and not self.keep_basis:
            # kept unnormalised: the compiled update of the next step applies the factor
            self._prev_scale, self._q_scale = self._q_scale, factor
        else:
            w *= factor[..., None]
        self.q_prev, self.q, self.beta_prev = self.q, w, b
        if self.keep_basis:
            self._store(self.q)

    def _step_one_pass(self, last):
        # w = M q (q unnormalised, scale sq) is known from the previous pass; the update
        # x = sq w - alpha sq q - beta_prev sp q_prev and the product M x of the next step run as
        # one pass (x over q_prev, M x over w).  The last step updates only.
        if self._start is not None:
            # q_0 = v0 / ||v0|| into the zeroed q_prev buffer, M q_0 over v0, in one pass
            w, self._start = self._start, None
            dots, _ = self._fused_step(w.T, self.q.T, self.q_prev.T, 1.0 / self.norms,
                                       np.zeros(self.norms.shape), np.zeros(self.norms.shape))
            self.matvecs += 1
            self.q, self.q_prev = self.q_prev, self.q
        elif self._pending is None:
            w, dots = self.apply_quadratic(self.q)
            self.matvecs += 1
        else:
            w, dots = self._pending
        ones = np.ones(self.norms.shape)
        sq = ones if self._q_scale is None else self._q_scale
        sp = ones if self._prev_scale is None else self._prev_scale
        if last:
            a, b2 = lanczos_update(w, self.q, self.q_prev, self.beta_prev, self._q_scale, self._prev_scale,
                                   dots=dots)
            new, self._pending = w, None
        else:
            a = np.asarray(dots, dtype=np.float64) * sq * sq
            next_dots, b2 = self._fused_step(w.T, self.q.T, self.q_prev.T, sq, a * sq, self.beta_prev * sp)
            self.matvecs += 1
            new, self._pending = self.q_prev, (w, next_dots)
        b = np.sqrt(b2)
        a = np.where(self.active, a, 1.0)  # stopped probes: a decoupled 1 x 1 block
        self.sizes = self.sizes + self.active
        self.scale = np.maximum(self.scale, np.abs(a) + b)
        stop = self.active & (b <= self.breakdown * self.scale)
        self.active = self.active & ~stop
        b = np.where(self.active, b, 0.0)
        self.alpha.append(a)
        self.beta.append(b)
        factor = np.where(self.active, 1.0, 0.0) / np.where(self.active, b, 1.0)
        self._prev_scale, self._q_scale = self._q_scale, factor
        self.q_prev, self.q, self.beta_prev = self.q, new, b

    def _store(self, q):
        xp = self.xp
        if self._basis is None or self._stored == self._basis.shape[0]:
            cap = 8 if self._basis is None else 2 * self._basis.shape[0]
            grown = xp.empty((cap,) + q.shape)
            if self._basis is not None:
                grown[: self._stored] = self._basis[: self._stored]
            self._basis = grown
        self._basis[self._stored] = q
        self._stored += 1

    def basis(self, k=None):
        """``Q_k`` as an array of shape ``(k, *probes, N)`` (``keep_basis`` only)."""
        k = self._stored if k is None else int(k)
        return self._basis[:k]

    def run(self, steps: int) -> "LanczosState":
        steps = int(steps)
        for i in range(steps):
            if not bool(self.active.any()):
                break
            self.step(last=i == steps - 1)
        return self

    def tridiagonal(self):
        """The tridiagonals ``T``, shape ``(*probes, k, k)`` (``k`` = steps so far); a stopped
        probe's rows past its size form a decoupled identity block."""
        xp = self.xp
        k = self.steps
        a = xp.stack(self.alpha, axis=-1)
        T = a[..., :, None] * xp.eye(k)
        if k > 1:
            b = xp.stack(self.beta[:-1], axis=-1)
            idx = xp.arange(k - 1)
            T[..., idx, idx + 1] = b
            T[..., idx + 1, idx] = b
        return T


def tridiagonal_eigh(state: LanczosState, *, what: str = "M"):
    """Ritz values and the first components of the Ritz vectors of every probe.

    Returns
    -------
    theta : array, shape ``(*probes, k)``
    s0 : array, shape ``(*probes, k)``
        ``S[0, i]``; zero on the decoupled padding of a stopped probe.
    S : array, shape ``(*probes, k, k)``

    Raises
    ------
    NotPositiveDefiniteError
        Some Ritz value of a probe (within its own steps) is ``<= 0``.
    """
    xp = state.xp
    T = state.tridiagonal()
    count = int(np.prod(T.shape[:-2]))
    if xp is np and count <= LOOP_MAX_PROBES:
        theta, S = _eigh_tridiagonal_loop(T)
    else:
        theta, S = xp.linalg.eigh(T)
    s0 = S[..., 0, :]
    _check_ritz_values(theta, s0, what)
    return theta, s0, S


def _check_ritz_values(theta, s0, what):
    # a padded eigenvalue is exactly 1 with a zero first component; real Ritz values count
    xp = get_array_module(theta)
    real = xp.abs(s0) > 0
    bad = real & (theta <= 0)
    if bool(bad.any()):
        worst = float(xp.min(xp.where(real, theta, xp.inf)))
        raise NotPositiveDefiniteError(
            f"{what} is not positive definite: Lanczos found the Ritz value {worst:.6g} <= 0 "
            "(a Rayleigh quotient of M, so lambda_min(M) <= it)",
            quantity="ritz value", value=worst, bound=0.0, system=None)


def _eigh_tridiagonal_loop(T):
    from scipy.linalg import eigh_tridiagonal

    k = T.shape[-1]
    flat = T.reshape((-1, k, k))
    theta = np.empty(flat.shape[:2])
    S = np.empty(flat.shape)
    idx = np.arange(k)
    for i, t in enumerate(flat):
        if k == 1:
            theta[i], S[i] = t[0, 0], 1.0
        else:
            theta[i], S[i] = eigh_tridiagonal(t[idx, idx], t[idx[:-1], idx[:-1] + 1])
    return theta.reshape(T.shape[:-1]), S.reshape(T.shape)


def quadrature(state: LanczosState, f, *, what: str = "M"):
    """``v^T f(M) v / ||v||^2`` by Gauss quadrature, shape ``probes``: ``sum_i S[0, i]^2 f(theta_i)``
    over the eigenpairs of each probe's tridiagonal (on NumPy the nodes and first components only,
    by a compiled implicit QL on the first row: :func:`gauss_nodes`)."""
    xp = state.xp
    nodes = None
    if xp is np and not _array_kernels_on() and state.steps:
        shape = state.norms.shape
        a = np.stack(state.alpha, axis=-1).reshape((-1, state.steps))
        b = np.stack(state.beta[:-1], axis=-1).reshape((-1, state.steps - 1)) if state.steps > 1 else None
        nodes = gauss_nodes(a, b)
    if nodes is not None:
        theta, s0 = (v.reshape(shape + (state.steps,)) for v in nodes)
        _check_ritz_values(theta, s0, what)
    else:
        theta, s0, _ = tridiagonal_eigh(state, what=what)
    safe = xp.where(xp.abs(s0) > 0, theta, 1.0)
    return (s0 * s0 * f(safe)).sum(axis=-1)
