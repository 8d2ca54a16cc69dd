"""Input checks shared by the operators and the solve API: clear errors, no mutation, no copies
unless a cast is needed."""
from __future__ import annotations

import numbers

import numpy as np

from .backend import asarray, get_array_module

__all__ = ["as_parameter", "as_lam", "floating_dtype", "check_finite", "check_shape_tail"]


def floating_dtype(dtype) -> np.dtype:
    """The floating dtype an array of ``dtype`` computes in: float32 and float64 stay, every other
    real type (integers, bools, float16) becomes float64.  Complex is rejected."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ValueError("G-CRF systems are real: complex input is not supported")
    if dtype.kind not in "biuf":
        raise TypeError(f"expected a real numeric array, got dtype {dtype}")
    if dtype in (np.float32, np.float64):
        return dtype
    return np.dtype(np.float64)


def check_finite(arr, name: str) -> None:
    """Raise ``ValueError`` if ``arr`` holds NaN or Inf."""
    xp = get_array_module(arr)
    if arr.size and not bool(xp.isfinite(arr).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def as_parameter(x, name: str, *, min_ndim: int, dtype=None, xp=None):
    """A parameter array, viewed without copying when possible (DLPack inputs included).

    Parameters
    ----------
    x : array_like
        NumPy, CuPy or any DLPack-exporting array.
    name : str
        Used in error messages.
    min_ndim : int
        The number of trailing (non-batch) axes the parameter must have.
    dtype : dtype, optional
        Cast to this floating dtype; default: ``floating_dtype(x.dtype)``.
    xp : module, optional
        Required array namespace (raises when the parameter lives elsewhere).
    """
    arr = asarray(x)
    if xp is not None and get_array_module(arr) is not xp:
        raise TypeError(f"{name} lives on another device than the other parameters")
    target = floating_dtype(arr.dtype) if dtype is None else np.dtype(dtype)
    if arr.dtype.kind == "c":
        raise ValueError(f"{name}: G-CRF systems are real; complex input is not supported")
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes; got shape {tuple(arr.shape)}")
    if arr.dtype != target:
        arr = arr.astype(target)
    check_finite(arr, name)
    return arr


def as_lam(lam, batch_shape: tuple, dtype, xp):
    """``lam`` as an array of ``batch_shape`` (broadcast from a scalar or a batch-shaped array).

    Returns ``(lam_array, lam_shape)`` where ``lam_shape`` is the shape the caller gave, so that the
    gradient of ``lam`` can be returned in that shape.
    """
    if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
        lam_arr = xp.asarray(float(lam), dtype=dtype)
    else:
        lam_arr = asarray(lam)
        if lam_arr.dtype.kind == "c":
            raise ValueError("lam must be real")
        if get_array_module(lam_arr) is not xp:
            lam_arr = xp.asarray(lam_arr)
        lam_arr = lam_arr.astype(dtype, copy=False)
    lam_shape = tuple(lam_arr.shape)
    try:
        full = xp.broadcast_to(lam_arr, batch_shape)
    except ValueError:
        raise ValueError(
            f"lam must be a scalar or have the batch shape {batch_shape}; got shape {lam_shape}"
        ) from None
    check_finite(lam_arr, "lam")
    if lam_arr.size and not bool((lam_arr > 0).all()):
        raise ValueError(f"lam must be > 0 (M = A + lam I); got min(lam) = {float(lam_arr.min())}")
    return full, lam_shape


def check_shape_tail(arr, tail: tuple, name: str, what: str = "") -> tuple:
    """Check that ``arr.shape`` ends with ``tail``; return the leading (batch) shape."""
    shape = tuple(arr.shape)
    if len(shape) < len(tail) or shape[len(shape) - len(tail):] != tuple(tail):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape (..., {', '.join(map(str, tail))}){extra}; got {shape}")
    return shape[: len(shape) - len(tail)]
