"""The operator protocol adapter and the input checks shared by every solver.

:func:`as_operator` turns any supported ``A`` into an :class:`Operator` with one batched product
``apply(X)``, ``X`` of shape ``(*batch, n)`` -> ``(*batch, n)``:

=====================================  ==============================================
``A``                                  ``apply(X)``
=====================================  ==============================================
dense ndarray ``(n, n)`` (NumPy/CuPy)  ``X @ A.T``
SciPy / cupyx sparse matrix or array   ``(A @ X.reshape(-1, n).T).T`` reshaped
SciPy / cupyx ``LinearOperator``       ``A.matmat(X.reshape(-1, n).T).T`` reshaped
object with ``shape`` and ``matvec``   ``A.matvec(X)`` with the whole batched ``X``
=====================================  ==============================================

Objects of the last kind (the G-CRF operators) accept ``(*batch, n)`` inputs and may hold a
different matrix per batch item.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from .backend import asarray, get_array_module, is_cupy_array, sparse_module, synchronize, to_host

from ._options import check_options
from ._result import SolveResult, _History

__all__ = ["Operator", "as_operator", "prepare", "initial_guess", "finish"]


def _top_module(obj) -> str:
    return type(obj).__module__.split(".")[0]


def _is_sparse(A) -> bool:
    mod = _top_module(A)
    if mod == "scipy":
        import scipy.sparse as sp

        return sp.issparse(A)
    if mod == "cupyx":
        import cupyx.scipy.sparse as csp

        return csp.issparse(A)
    return False


def _linear_operator_backend(A):
    """``"numpy"``/``"cupy"`` if ``A`` is a SciPy/cupyx LinearOperator, else None."""
    for cls in type(A).__mro__:
        if cls.__name__ == "LinearOperator":
            if cls.__module__.startswith("scipy."):
                return "numpy"
            if cls.__module__.startswith("cupyx."):
                return "cupy"
    return None


def _is_dense_like(A) -> bool:
    if isinstance(A, (np.ndarray, list, tuple)) or is_cupy_array(A):
        return True
    return hasattr(A, "__dlpack__") and not hasattr(A, "matvec")


def compute_dtype(*dtypes) -> np.dtype:
    """Floating dtype of the computation: ``result_type`` promoted to float32/float64.

    Integers and booleans become float64; complex dtypes are rejected (``ValueError``).
    """
    dts = [np.dtype(d) for d in dtypes if d is not None]
    dt = np.result_type(*dts) if dts else np.dtype(np.float64)
    if dt.kind == "c":
        raise ValueError(f"complex systems are not supported (dtype {dt}); the solvers are real")
    if dt.kind != "f":
        return np.dtype(np.float64)
    if dt.itemsize < 4:
        return np.dtype(np.float32)
    if dt.itemsize > 8:
        return np.dtype(np.float64)
    return dt


class Operator:
    """Batched view of a system matrix (see the module docstring for the supported kinds).

    Attributes
    ----------
    A : the (possibly converted) original object
    kind : ``"dense"``, ``"sparse"``, ``"linop"`` or ``"custom"``
    xp : array module of the products (``numpy`` or ``cupy``)
    n : int, the size of the system
    dtype : numpy dtype of the computation
    """

    def __init__(self, A, kind, xp, n, dtype):
        self.A = A
        self.kind = kind
        self.xp = xp
        self.n = n
        self.dtype = np.dtype(dtype)
        self.declared_dtype = None
        self._csr = None

    def with_dtype(self, dtype):
        """The same operator computing in ``dtype`` (dense/sparse matrices are cast once)."""
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        A = self.A.astype(dtype) if self.kind in ("dense", "sparse") else self.A
        op = Operator(A, self.kind, self.xp, self.n, dtype)
        op.declared_dtype = self.declared_dtype
        return op

    @property
    def shape(self):
        return (self.n, self.n)

    def apply(self, X):
        """``A x`` for every system: ``X`` of shape ``(*batch, n)`` -> ``(*batch, n)``."""
        n = self.n
        if self.kind == "dense":
            return X @ self.A.T
        if self.kind == "sparse":
            Y = self.A @ X.reshape(-1, n).T
            return self.xp.asarray(Y).T.reshape(X.shape)
        if self.kind == "linop":
            Y = self.A.matmat(X.reshape(-1, n).T)
            return self.xp.asarray(Y).T.reshape(X.shape).astype(self.dtype, copy=False)
        Y = self.A.matvec(X)
        Y = asarray(Y)
        if Y.shape != X.shape:
            raise ValueError(
                f"{type(self.A).__name__}.matvec returned shape {Y.shape} for an input of shape "
                f"{X.shape}; operators must map (*batch, n) to (*batch, n)"
            )
        return Y.astype(self.dtype, copy=False)

    __call__ = apply

    def diagonal(self):
        """The diagonal of ``A``: shape ``(n,)``, or ``(*batch, n)`` for batched custom operators."""
        if self.kind == "dense":
            return self.xp.diagonal(self.A).copy()
        if self.kind == "sparse":
            return self.xp.asarray(self.A.diagonal()).astype(self.dtype, copy=False)
        if hasattr(self.A, "diagonal") and callable(self.A.diagonal):
            return asarray(self.A.diagonal()).astype(self.dtype, copy=False)
        raise TypeError(
            f"this method needs the diagonal of A, but {type(self.A).__name__} has no diagonal(); "
            "pass a dense or sparse matrix, or an operator object with a diagonal() method"
        )

    def csr(self):
        """``A`` as a CSR matrix of the operator's backend (converted once), or None if unavailable."""
        if self._csr is not None:
            return self._csr
        sp = sparse_module(self.xp)
        if self.kind == "dense":
            self._csr = sp.csr_matrix(self.A)
        elif self.kind == "sparse":
            self._csr = self.A.tocsr()
        elif self.kind == "custom":
            for name in ("tocsr", "to_csr"):
                meth = getattr(self.A, name, None)
                if callable(meth):
                    try:
                        M = meth()
                    except Exception:  # e.g. batched operators without a single matrix
                        return None
                    if _is_sparse(M) and tuple(M.shape) == (self.n, self.n):
                        self._csr = M.tocsr().astype(self.dtype)
                    break
        if self._csr is not None:
            self._csr.sum_duplicates()
            self._csr.sort_indices()
        return self._csr


def _shape_of(A):
    shape = getattr(A, "shape", None)
    if shape is None:
        raise TypeError(
            f"A must be an array, a sparse matrix, a LinearOperator or an object with shape and "
            f"matvec; got {type(A).__name__}"
        )
    return tuple(int(s) for s in shape)


def as_operator(A, xp=None, dtype=None, *, name="A") -> Operator:
    """Wrap ``A`` into an :class:`Operator`.

    Parameters
    ----------
    A : dense array ``(n, n)``, sparse matrix, LinearOperator, or object with ``shape``/``matvec``.
    xp : array module of the right-hand sides, or None to take it from ``A``.
    dtype : computational dtype, or None for ``A``'s floating dtype.
    """
    if _is_sparse(A):
        kind = "sparse"
        axp = get_array_module(A)
    elif _linear_operator_backend(A) is not None:
        kind = "linop"
        axp = np if _linear_operator_backend(A) == "numpy" else get_array_module(A)
    elif hasattr(A, "matvec") and hasattr(A, "shape") and not _is_dense_like(A):
        kind = "custom"
        axp = xp
    elif _is_dense_like(A):
        kind = "dense"
        A = asarray(A)
        axp = get_array_module(A)
        if A.ndim != 2:
            raise ValueError(f"{name} must be a 2-D square matrix, got shape {A.shape}")
    else:
        raise TypeError(
            f"{name} must be an array, a sparse matrix, a LinearOperator or an object with shape and "
            f"matvec; got {type(A).__name__}"
        )
    if xp is None:
        xp = axp if axp is not None else np
    elif axp is not None and axp is not xp:
        raise TypeError(
            f"{name} and b live on different devices ({axp.__name__} and {xp.__name__}); "
            "move them with solvers.backend.to_device/to_host"
        )
    shape = _shape_of(A)
    if len(shape) < 2 or shape[-1] != shape[-2] or (kind != "custom" and len(shape) != 2):
        raise ValueError(f"{name} must be square, got shape {shape}")
    n = shape[-1]
    a_dtype = getattr(A, "dtype", None)
    if dtype is None:
        dtype = compute_dtype(a_dtype)
    elif a_dtype is not None:
        compute_dtype(a_dtype)  # rejects complex
    if kind in ("dense", "sparse") and A.dtype != dtype:
        A = A.astype(dtype)
    if kind == "dense":
        _check_finite(get_array_module(A), A, f"{name} (its entries)")
    elif kind == "sparse":
        data = A.data if hasattr(A, "data") and hasattr(A.data, "dtype") else A.tocsr().data
        _check_finite(get_array_module(data), data, f"{name} (its stored entries)")
    op = Operator(A, kind, xp, n, dtype)
    op.declared_dtype = None if a_dtype is None else np.dtype(a_dtype)
    return op


def _check_finite(xp, arr, what):
    if not bool(xp.all(xp.isfinite(arr))):
        raise ValueError(f"{what} contains NaN or Inf")


def prepare(A, b, x0, *, rtol, atol, maxiter, method, allow_Mb=False):
    """Validate and convert the common inputs of every solver (nothing is modified).

    Returns a namespace with ``op`` (:class:`Operator`), ``xp``, ``b`` and ``x`` (``(*batch, n)``
    in the computational dtype; ``x`` is a fresh array), ``batch`` (the batch shape), ``n``,
    ``dtype``, ``bnorm`` and ``tol = max(rtol ||b||, atol)`` (``batch``-shaped device arrays),
    ``maxiter`` (None when not given), ``zero_b``, ``t0`` and a fresh residual ``history``.

    ``x0 = "Mb"`` (with ``allow_Mb``, as SciPy's ``cg``/``gmres`` take it) sets ``x0_is_Mb``; ``x`` is
    then a copy of ``b`` that the solver replaces by ``M b`` (see :func:`initial_guess`).
    """
    t0 = time.perf_counter()
    rtol, atol, maxiter = check_options(rtol, atol, maxiter, method=method)
    b = asarray(b)
    if b.ndim == 0:
        raise ValueError(f"{method}: b must have shape (n,) or (*batch, n), got a scalar")
    bxp = get_array_module(b)
    op = as_operator(A, bxp)
    xp = op.xp
    dtype = compute_dtype(op.declared_dtype, b.dtype)
    op = op.with_dtype(dtype)
    if b.shape[-1] != op.n:
        raise ValueError(
            f"{method}: b has shape {tuple(b.shape)} but A has shape {op.shape}; "
            f"the last axis of b must be {op.n}"
        )
    _check_finite(xp, b, "b")
    b = b.astype(dtype, copy=False)
    x0_is_Mb = isinstance(x0, str)
    if x0_is_Mb:
        if not allow_Mb or x0 != "Mb":
            allowed = "an array or 'Mb'" if allow_Mb else "an array"
            raise ValueError(f"{method}: x0 must be {allowed} or None, got {x0!r}")
        x = b.astype(dtype, copy=True)  # the solver replaces it by M b once M is built
    elif x0 is None:
        x = xp.zeros(b.shape, dtype=dtype)
    else:
        x0 = asarray(x0)
        if get_array_module(x0) is not xp:
            raise TypeError(f"{method}: x0 and b live on different devices")
        if x0.dtype.kind == "c":
            raise ValueError(f"{method}: complex x0 is not supported")
        if tuple(x0.shape) != tuple(b.shape):
            raise ValueError(
                f"{method}: x0 has shape {tuple(x0.shape)} but b has shape {tuple(b.shape)}; they must match"
            )
        _check_finite(xp, x0, "x0")
        x = x0.astype(dtype, copy=True)
    bnorm = xp.sqrt(xp.sum(b * b, axis=-1))
    bnorm = xp.asarray(bnorm)
    # rtol = inf with b = 0 would give inf * 0 = nan: the relative part of a zero b is 0
    rel = xp.where(bnorm > 0, rtol, 0.0) * bnorm if rtol == float("inf") else rtol * bnorm
    tol = xp.maximum(rel, dtype.type(atol)).astype(dtype)
    # zero right-hand side: the answer is x = 0, whatever x0 says (0 iterations)
    zero_b = bnorm == 0
    x = xp.where(zero_b[..., None], dtype.type(0), x)
    return SimpleNamespace(
        op=op, xp=xp, b=b, x=x, batch=tuple(b.shape[:-1]), n=op.n, dtype=dtype, bnorm=bnorm, tol=tol,
        maxiter=maxiter, zero_b=zero_b, t0=t0, history=_History(xp), method=method, x0_is_Mb=x0_is_Mb,
    )


def initial_guess(pb, precond):
    """``x_0`` of a preconditioned solver: ``M b`` when ``x0 = "Mb"`` (``b`` without ``M``), else ``pb.x``."""
    if not pb.x0_is_Mb or precond is None:
        return pb.x
    x = pb.xp.asarray(precond(pb.b)).astype(pb.dtype, copy=True)
    return pb.xp.where(pb.zero_b[..., None], pb.dtype.type(0), x)


def norms(xp, R):
    """Per-system 2-norms ``||r||_2`` of ``R`` with shape ``(*batch, n)`` -> ``batch``."""
    return xp.asarray(xp.sqrt(xp.einsum("...i,...i->...", R, R)))


def dots(xp, U, V):
    """Per-system inner products ``u^T v`` -> ``batch``."""
    return xp.asarray(xp.einsum("...i,...i->...", U, V))


def finish(pb, x, *, final_norm, iterations, broken, matvecs):
    """Assemble a :class:`SolveResult` (one device-to-host copy of the history and the flags)."""
    xp = pb.xp
    pb.history.set_last(final_norm)
    # a non-finite residual (a product returned NaN or Inf) is a breakdown, not an iteration limit
    broken = broken | ~xp.isfinite(final_norm)
    conv = (final_norm <= pb.tol) & ~broken
    iters = iterations
    info = xp.where(conv, 0, xp.where(broken, -1, xp.maximum(iters, 1)))
    hist = pb.history.to_host()
    synchronize(xp)
    t = time.perf_counter() - pb.t0
    conv_h = to_host(conv)
    info_h = to_host(info).astype(np.int64)
    it_h = to_host(iters).astype(np.int64)
    bn = to_host(pb.bnorm).astype(np.float64)
    if pb.batch == ():
        conv_h, info_h, it_h, bn = bool(conv_h), int(info_h), int(it_h), float(bn)
    return SolveResult(
        x=x, info=info_h, converged=conv_h, iterations=it_h, residual_norms=hist, matvecs=int(matvecs),
        time_s=float(t), method=pb.method, b_norm=bn,
    )
