"""The base class of every G-CRF precision-matrix operator ``M = lam I + A``.

Conventions (docs/design.md section 3): a vector has shape ``vector_shape`` (``(L, H, W)`` for one image),
flattened in C order to ``N`` entries; leading *batch axes* index independent systems with their own
parameters.  Subclasses implement the structured product and the gradient contractions; this class
provides shape handling, the flat view, dense/LinearOperator views and the pieces the solvers use.
"""
from __future__ import annotations

import abc
import contextlib
import math

import numpy as np

from .backend import asarray, get_array_module, linear_operator_class
from ._validation import floating_dtype

__all__ = ["GCRFOperator", "DENSE_MAX_SIZE"]

#: ``to_dense()`` refuses to form more than ``DENSE_MAX_SIZE**2`` entries in all (the whole batch
#: counted) unless called with ``force=True``: one float64 ``N x N`` matrix with ``N = DENSE_MAX_SIZE``
#: is 512 MiB.
DENSE_MAX_SIZE = 8192


class GCRFOperator(abc.ABC):
    """Batched symmetric operator ``M = lam I + A`` of a G-CRF.

    Attributes
    ----------
    batch_shape : tuple of int
        Leading axes of independent systems.
    vector_shape : tuple of int
        Shape of one unknown vector, e.g. ``(L, H, W)``.
    shape : (int, int)
        ``(N, N)`` with ``N = prod(vector_shape)``: the size of one system.
    dtype : numpy.dtype
        float32 or float64, the parameters' dtype.
    lam : array, shape ``batch_shape``
        The diagonal shift, one value per system.
    xp : module
        ``numpy`` or ``cupy``: where the parameters live.

    Subclasses implement ``_matvec`` (and may override ``_diagonal``, ``_to_dense``,
    ``_gauss_seidel_sweep``, ``_solve``, ``check_positive_definite``) on arrays of shape
    ``batch_shape + vector_shape``.
    """

    def __init__(self, *, xp, dtype, batch_shape, vector_shape, lam, lam_shape=()):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.batch_shape = tuple(int(s) for s in batch_shape)
        self.vector_shape = tuple(int(s) for s in vector_shape)
        self.lam = lam
        self._lam_shape = tuple(lam_shape)
        self._pd_checked = False
        if not hasattr(self, "_watched"):
            self._watched = []  # [name, array, fingerprint] of viewed writeable parameters
        self._sync_depth = 0

    # ------------------------------------------------------------------ shapes
    @property
    def size(self) -> int:
        """``N``, the number of unknowns of one system."""
        return math.prod(self.vector_shape)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def ndim(self) -> int:
        return 2

    def __repr__(self) -> str:
        batch = f", batch_shape={self.batch_shape}" if self.batch_shape else ""
        return (f"{type(self).__name__}(vector_shape={self.vector_shape}{batch}, "
                f"dtype={self.dtype}, backend={'numpy' if self.xp is np else 'cupy'})")

    def as_vectors(self, v, name: str = "v"):
        """View ``v`` as an array of shape ``(*extra, *batch_shape, *vector_shape)``.

        ``v`` may be laid out as ``batch_shape + vector_shape`` or as the flat ``batch_shape + (N,)``,
        optionally with further leading axes (many right-hand sides per system).  Returns
        ``(array, flat)`` where ``flat`` says which layout the caller used.  Real non-float inputs
        are cast to the operator's dtype; complex inputs raise ``ValueError``.
        """
        arr = asarray(v)
        if get_array_module(arr) is not self.xp:
            raise TypeError(f"{name} lives on another device than the operator's parameters")
        floating_dtype(arr.dtype)  # rejects complex / non-numeric
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        shape = tuple(arr.shape)
        nb, nv = len(self.batch_shape), len(self.vector_shape)
        tail_full = self.batch_shape + self.vector_shape
        tail_flat = self.batch_shape + (self.size,)
        if len(shape) >= nb + nv and shape[len(shape) - nb - nv:] == tail_full:
            return arr, False
        if len(shape) >= nb + 1 and shape[len(shape) - nb - 1:] == tail_flat:
            return arr.reshape(shape[: len(shape) - nb - 1] + tail_full), True
        raise ValueError(
            f"{name} must have shape (..., *{tail_full}) or (..., *{tail_flat}); got {shape}"
        )

    def _restore(self, out, like_flat: bool):
        if like_flat:
            nv = len(self.vector_shape)
            return out.reshape(out.shape[: out.ndim - nv] + (self.size,))
        return out

    def _over_extra_axes(self, fn, *arrays):
        """Apply ``fn`` (defined on ``batch_shape + vector_shape`` arrays) over extra leading axes."""
        nd = len(self.batch_shape) + len(self.vector_shape)
        extra = arrays[0].shape[: arrays[0].ndim - nd]
        if not extra:
            return fn(*arrays)
        flat = [a.reshape((-1,) + a.shape[len(extra):]) for a in arrays]
        out = [fn(*(a[i] for a in flat)) for i in range(flat[0].shape[0])]
        return self.xp.stack(out).reshape(arrays[0].shape)

    # ------------------------------------------------------------------ parameters
    #: attributes holding what is cached from the parameter values (set to None when they change)
    _CACHED: tuple = ()

    def _watch(self, name: str, arr, fingerprint, *, lazy: bool = False) -> None:
        """Record a viewed writeable parameter (``as_parameter(..., view=True)``) and its
        fingerprint; a solve re-checks it (:meth:`_sync_parameters`).

        With ``lazy=True`` and no fingerprint yet, it is taken when the operator first stores
        something computed from its parameters (an attribute of ``_CACHED``, see
        :meth:`__setattr__`): a form whose positive definiteness does not depend on the
        parameter and that solves without a factor never reads it again."""
        if not hasattr(self, "_watched"):
            self._watched = []
        if fingerprint is None and not lazy:
            from ._fingerprint import scan

            finite, fingerprint = scan(arr)
            if not finite:
                raise ValueError(f"{name} contains NaN or Inf")
        self._watched.append([name, arr, None if fingerprint is None else int(fingerprint)])

    def __setattr__(self, name, value):
        # the first cached value computed from lazily watched parameters fixes their fingerprint
        if value is not None and name in type(self)._CACHED:
            self._take_pending_fingerprints()
        object.__setattr__(self, name, value)

    def _take_pending_fingerprints(self) -> None:
        from ._fingerprint import scan

        for entry in getattr(self, "_watched", ()):
            if entry[2] is None:
                entry[2] = scan(entry[1])[1]

    @property
    def watches_parameters(self) -> bool:
        """True when the operator views a writeable parameter array of the caller (no copy was
        made): every solve then reads it once more to see whether it changed."""
        return bool(getattr(self, "_watched", None))

    def _sync_parameters(self) -> bool:
        """Bring what is cached in line with the parameters as they are now.

        When the operator holds anything computed from its parameters (:meth:`_holds_derived`),
        recompute the fingerprint of every watched (viewed, writeable) parameter array (one
        read).  If one changed, check it for NaN/Inf again (``ValueError``), forget the
        positive-definiteness check and every cached factor (:meth:`_parameters_changed`).
        Returns True when something changed.  Nested calls (inside :meth:`_synced`) do nothing.
        """
        if not getattr(self, "_watched", None) or self._sync_depth or not self._holds_derived():
            return False
        from ._fingerprint import scan

        changed = False
        for entry in self._watched:
            name, arr, old = entry
            if old is None:  # lazily watched, nothing cached from it yet
                continue
            finite, h = scan(arr)
            if h != old:
                if not finite:
                    raise ValueError(f"{name} contains NaN or Inf (written after the operator was built)")
                entry[2] = h
                changed = True
        if changed:
            self._parameters_changed()
        return changed

    @contextlib.contextmanager
    def _synced(self):
        """Sync once (:meth:`_sync_parameters`); within the block further syncs do nothing."""
        self._sync_parameters()
        self._sync_depth += 1
        try:
            yield
        finally:
            self._sync_depth -= 1

    #: further attributes computed from the parameters (e.g. at construction), beyond ``_CACHED``
    _DERIVED: tuple = ()

    def _holds_derived(self) -> bool:
        """True when the operator holds something computed from its parameters (the positive-
        definiteness check, a factor, a bound): only then can a change make it inconsistent.
        An operator that holds nothing yet (e.g. a fresh low-rank operator) is not re-read."""
        if self._pd_checked:
            return True
        if any(getattr(self, attr, None) is not None for attr in self._CACHED + self._DERIVED):
            return True
        return bool(getattr(self, "_factors", None))

    def _parameters_changed(self) -> None:
        """The watched parameters changed: forget the positive-definiteness check and every
        attribute named in ``_CACHED``.  Forms with more to refresh extend this."""
        self._pd_checked = False
        for attr in self._CACHED:
            setattr(self, attr, None)
        if isinstance(getattr(self, "_factors", None), dict):  # sparse LU factors per system
            self._factors.clear()

    # ------------------------------------------------------------------ products
    def matvec(self, v):
        """``M v = lam v + A v`` for every system of the batch.

        Parameters
        ----------
        v : array, shape ``(..., *batch_shape, *vector_shape)`` or ``(..., *batch_shape, N)``

        Returns
        -------
        array of the same shape as ``v``
        """
        arr, flat = self.as_vectors(v)
        if arr.size == 0:  # an empty batch (or no vectors): nothing to multiply
            return self._restore(self.xp.zeros(arr.shape, dtype=self.dtype), flat)
        return self._restore(self._over_extra_axes(self._matvec, arr), flat)

    __matmul__ = matvec

    def rmatvec(self, v):
        """``M^T v``; ``M`` is symmetric, so this is :meth:`matvec`."""
        return self.matvec(v)

    @abc.abstractmethod
    def _matvec(self, v):
        """``M v`` for ``v`` of shape ``batch_shape + vector_shape``."""

    def _lam_times(self, v):
        """``lam v`` with ``lam`` broadcast over the vector axes."""
        lam = self.lam.reshape(self.lam.shape + (1,) * len(self.vector_shape))
        return lam * v

    def diagonal(self):
        """The diagonal of ``M``, shape ``batch_shape + (N,)``."""
        d = self._diagonal()
        return d.reshape(self.batch_shape + (self.size,))

    def _diagonal(self):
        # Default: lam (the pairwise terms of most forms have a zero diagonal); override otherwise.
        return self.xp.broadcast_to(
            self.lam.reshape(self.lam.shape + (1,) * len(self.vector_shape)),
            self.batch_shape + self.vector_shape,
        ).copy()

    def to_dense(self, *, force: bool = False):
        """The dense matrix ``M``, shape ``batch_shape + (N, N)``: for tests and small problems.

        Refuses (``MemoryError``) when the result, every system of the batch counted
        (``prod(batch_shape) * N * N`` entries), would exceed ``DENSE_MAX_SIZE**2`` entries, unless
        ``force=True``.
        """
        n_sys = math.prod(self.batch_shape)
        entries = n_sys * self.size * self.size
        if entries > DENSE_MAX_SIZE ** 2 and not force:
            nbytes = entries * self.dtype.itemsize
            raise MemoryError(
                f"to_dense() would allocate {n_sys} x {self.size} x {self.size} = {entries} entries "
                f"({nbytes / 2**30:.3g} GiB of {self.dtype}), more than DENSE_MAX_SIZE**2 = "
                f"{DENSE_MAX_SIZE}**2; pass force=True if you mean it"
            )
        return self._to_dense()

    def _to_dense(self):
        # Column by column through the product: M e_j for all j at once as extra leading axes.
        xp, n = self.xp, self.size
        eye = xp.eye(n, dtype=self.dtype)
        cols = xp.broadcast_to(eye.reshape((n,) + (1,) * len(self.batch_shape) + (n,)),
                               (n,) + self.batch_shape + (n,))
        mcols = self.matvec(xp.ascontiguousarray(cols))  # (n_col, *batch, n_row)
        return xp.moveaxis(mcols, 0, -1)  # (*batch, n_row, n_col)

    def aslinearoperator(self, index=()):
        """A SciPy (or CuPy) ``LinearOperator`` for one system of the batch.

        Parameters
        ----------
        index : tuple of int
            Batch index of the system; ``()`` for an unbatched operator.
        """
        index = tuple(np.atleast_1d(index)) if not isinstance(index, tuple) else index
        if len(index) != len(self.batch_shape):
            raise ValueError(f"index must have {len(self.batch_shape)} entries for batch_shape "
                             f"{self.batch_shape}; got {index}")
        xp, n, bs = self.xp, self.size, self.batch_shape

        def mv(v):
            v = xp.asarray(v, dtype=self.dtype).reshape(n)
            full = xp.zeros(bs + (n,), dtype=self.dtype)
            full[index] = v
            return self.matvec(full)[index]

        def mm(V):
            V = xp.asarray(V, dtype=self.dtype)
            k = V.shape[1]
            full = xp.zeros((k,) + bs + (n,), dtype=self.dtype)
            full[(slice(None),) + index] = V.T
            return self.matvec(full)[(slice(None),) + index].T

        LinearOperator = linear_operator_class(xp)
        return LinearOperator((n, n), matvec=mv, rmatvec=mv, matmat=mm, dtype=self.dtype)

    # ------------------------------------------------------------------ solver hooks
    def gauss_seidel_sweep(self, x, b, omega: float = 1.0):
        """One Gauss–Seidel (SOR) sweep on ``M x = b`` in the operator's own ordering.

        ``x`` and ``b`` have shape ``batch_shape + (N,)`` (or the vector layout); returns the swept
        ``x`` in the same layout.  ``x`` may be overwritten.
        """
        xa, flat = self.as_vectors(x, "x")
        ba, _ = self.as_vectors(b, "b")
        out = self._over_extra_axes(lambda xx, bb: self._gauss_seidel_sweep(xx, bb, omega), xa, ba)
        return self._restore(out, flat)

    def _gauss_seidel_sweep(self, x, b, omega):
        raise TypeError(f"{type(self).__name__} provides no Gauss-Seidel sweep")

    def block_jacobi_preconditioner(self):
        """A callable applying the inverse of ``M``'s per-pixel ``L x L`` diagonal blocks.

        Default: the point Jacobi preconditioner ``R -> R / diag(M)`` (for the forms whose pixel
        blocks are ``lam I`` that is the same thing).  Applies to arrays of shape
        ``(..., *batch_shape, N)``.
        """
        inv_diag = 1.0 / self.diagonal()

        def apply(r):
            return r * inv_diag

        return apply

    def check_positive_definite(self, exact: bool = False) -> bool:
        """Raise :class:`NotPositiveDefiniteError` when a positive-definiteness bound of the form is
        violated (docs/design.md section 6); return True when the form certifies ``M`` positive definite,
        False when it leaves the question to CG's curvature test.  By default only cheap
        certificates run (about one product); ``exact=True`` adds the form's costlier exact test or
        estimate where the cheap one is inconclusive.  The base operator knows no bound: False."""
        return False

    def _solve(self, b, method: str, x0, options: dict):
        """Form-specific solve of ``M x = b`` (``b`` of shape ``batch_shape + (N,)``), or
        ``NotImplemented`` to let :func:`gcrflinalg.solve` run the generic solver."""
        return NotImplemented

    # ------------------------------------------------------------------ gradients
    def parameter_gradients(self, x, g) -> dict:
        """Gradients of a loss ``L`` w.r.t. the parameters, given the solution ``x = M^{-1} b`` and
        the adjoint ``g = M^{-1} dL/dx``: ``dL/dM = -g x^T`` contracted with the structure
        (docs/design.md section 5).

        Parameters
        ----------
        x, g : array, shape ``batch_shape + vector_shape`` or ``batch_shape + (N,)``

        Returns
        -------
        dict
            One array per parameter, shaped like the parameter as given, and ``"lam"``
            (``dL/dlam = -g . x``, summed over the batch when one ``lam`` is shared).
        """
        xa, _ = self.as_vectors(x, "x")
        ga, _ = self.as_vectors(g, "g")
        nd = len(self.batch_shape) + len(self.vector_shape)
        if xa.ndim != nd or ga.ndim != nd:
            raise ValueError("parameter_gradients takes one solution per system (no extra axes)")
        grads = dict(self._parameter_gradients(xa, ga))
        grads["lam"] = self._lam_gradient(xa, ga)
        return grads

    @abc.abstractmethod
    def _parameter_gradients(self, x, g) -> dict:
        """Gradients of the structural parameters; ``x``, ``g`` of shape batch + vector shape."""

    def _lam_gradient(self, x, g):
        xp = self.xp
        axes = tuple(range(len(self.batch_shape), x.ndim))
        per_system = -xp.sum(g * x, axis=axes)  # shape batch_shape
        return _sum_to_shape(per_system, self._lam_shape, xp)


def _sum_to_shape(arr, shape, xp):
    """Sum a broadcast result back to ``shape`` (the adjoint of ``broadcast_to``)."""
    shape = tuple(shape)
    lead = arr.ndim - len(shape)
    if lead:
        arr = arr.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and arr.shape[i] != 1)
    if axes:
        arr = arr.sum(axis=axes, keepdims=True)
    return arr.reshape(shape)
