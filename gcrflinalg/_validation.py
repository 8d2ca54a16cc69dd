"""Input checks shared by the operators and the solve API: clear errors, no mutation, no copies
unless a cast is needed."""
from __future__ import annotations

import contextlib
import contextvars
import numbers

import numpy as np

from .backend import asarray, get_array_module

__all__ = ["as_parameter", "readonly", "as_lam", "check_solver_options", "floating_dtype", "check_finite", "check_shape_tail"]


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
    if _scannable(arr):  # one compiled read, no temporary array
        from ._fingerprint import all_finite  # Numba: imported on first use

        if not all_finite(arr):
            raise ValueError(f"{name} contains NaN or Inf")
        return
    xp = get_array_module(arr)
    if arr.size and not bool(xp.isfinite(arr).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def _scannable(arr) -> bool:
    # below a million entries NumPy's isfinite (a small temporary) beats a compiled kernel's launch
    return (isinstance(arr, np.ndarray) and arr.dtype in (np.float32, np.float64)
            and arr.flags.c_contiguous and arr.size >= (1 << 20))


#: True inside :func:`borrowed_parameters`: parameters are viewed, never copied
_BORROWED = contextvars.ContextVar("gcrflinalg_borrowed_parameters", default=False)


@contextlib.contextmanager
def borrowed_parameters():
    """Within the block, operators view their parameter arrays instead of copying writeable ones.

    For framework layers only: an operator built there lives for one forward and backward pass, and
    the framework guarantees that its inputs do not change meanwhile (PyTorch's version counters
    reject a backward after an in-place change of a saved tensor; JAX arrays are immutable).  The
    copy it saves is the size of the parameters, per training step.
    """
    token = _BORROWED.set(True)
    try:
        yield
    finally:
        _BORROWED.reset(token)


def _frozen(arr) -> bool:
    """True when nobody can write ``arr``'s memory through NumPy: ``arr`` and every array it views
    are read-only, and the memory at the bottom is not an array (e.g. ``bytes``).  A read-only
    input is taken as the caller's promise not to make it writeable again."""
    if not isinstance(arr, np.ndarray):
        return False  # CuPy arrays have no read-only flag
    while isinstance(arr, np.ndarray):
        if arr.flags.writeable:
            return False
        arr = arr.base
    return arr is None or isinstance(arr, bytes)


def readonly(arr):
    """A read-only view of ``arr`` (NumPy); ``arr`` itself (and its flags) are left alone."""
    if isinstance(arr, np.ndarray) and arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def as_parameter(x, name: str, *, min_ndim: int, dtype=None, xp=None, view: bool = False,
                 check: bool = True):
    """A parameter array of an operator: validated, cast where needed, never the caller's to lose.

    The operator's results must describe one matrix at every call, so the input is taken as
    follows (docs/guarantees.md, "Mutation and ownership of parameters"):

    - an input that needs a cast (or is not an array: lists, scalars) becomes a new array, which
      the operator owns without a further copy;
    - a read-only NumPy input (``flags.writeable`` False down to the memory it views) is viewed
      without copying;
    - inside :func:`borrowed_parameters` (the framework layers' operators) any input is viewed;
    - a writeable C-contiguous NumPy input is, with ``view=True``, viewed without copying and
      *watched*: the operator keeps its fingerprint and re-validates it at every solve
      (:meth:`gcrflinalg.operator.GCRFOperator._sync_parameters`);
    - any other input (a writeable NumPy array with ``view=False`` or not C-contiguous, a CuPy
      array, a DLPack view of a framework's tensor on the GPU) is copied once, C-contiguous.

    The caller's array and its flags are never modified.  Store the result behind
    :func:`readonly` when it is exposed as a public attribute.

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
    view : bool
        Watch writeable NumPy inputs instead of copying them; then returns
        ``(array, watched, fingerprint)``.
    check : bool
        Check finiteness here (with ``view=True`` fused with the fingerprint in one read).  False
        when the caller does both in a pass of its own (``fingerprint`` is then None).

    Returns
    -------
    array, or ``(array, watched, fingerprint)`` with ``view=True`` (``fingerprint`` an int for a
    watched array that was checked, else None)
    """
    fresh = not (isinstance(x, np.ndarray) or hasattr(x, "__dlpack__") or hasattr(x, "__cuda_array_interface__"))
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a real numeric array; got {type(x).__name__}")
    arr = asarray(x)
    if xp is not None and get_array_module(arr) is not xp:
        raise TypeError(f"{name} lives on another device than the other parameters")
    if arr.dtype.kind == "c":
        raise ValueError(f"{name}: G-CRF systems are real; complex input is not supported")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    target = floating_dtype(arr.dtype) if dtype is None else np.dtype(dtype)
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes; got shape {tuple(arr.shape)}")
    watched = False
    if arr.dtype != target:
        arr = arr.astype(target, order="C")  # a new array: the operator's own
    elif not fresh and not _frozen(arr) and not _BORROWED.get():
        if view and isinstance(arr, np.ndarray) and arr.flags.c_contiguous:
            watched = True  # the caller may still write it: fingerprinted, re-checked per solve
        else:
            arr = get_array_module(arr).array(arr, copy=True, order="C")
    h = None
    if check:
        if watched:
            from ._fingerprint import scan

            finite, h = scan(arr)
            if not finite:
                raise ValueError(f"{name} contains NaN or Inf")
        else:
            check_finite(arr, name)
    return (arr, watched, h) if view else arr


def as_lam(lam, batch_shape: tuple, dtype, xp):
    """``lam`` as an array of ``batch_shape`` (broadcast from a scalar or a batch-shaped array).

    Returns ``(lam_array, lam_shape)`` where ``lam_shape`` is the shape the caller gave, so that the
    gradient of ``lam`` can be returned in that shape.
    """
    if lam is None or isinstance(lam, (bool, np.bool_, str, bytes)):
        raise TypeError(f"lam must be a real number or a real array; got {type(lam).__name__} {lam!r}")
    if isinstance(lam, numbers.Complex) and not isinstance(lam, numbers.Real):
        # complex input is a ValueError everywhere (docs/design.md 3.8)
        raise ValueError(f"lam must be real (G-CRF systems are real); got {type(lam).__name__} {lam!r}")
    if isinstance(lam, numbers.Real):
        lam_arr = xp.asarray(float(lam), dtype=dtype)
    else:
        lam_arr = asarray(lam)
        if lam_arr.dtype.kind == "c":
            raise ValueError(f"lam must be real (G-CRF systems are real); got dtype {lam_arr.dtype}")
        if lam_arr.dtype.kind not in "iuf":
            raise TypeError(f"lam must be a real number or a real array; got an array of dtype {lam_arr.dtype}")
        if get_array_module(lam_arr) is not xp:
            lam_arr = xp.asarray(lam_arr)
        lam_arr = lam_arr.astype(dtype, copy=True)  # one value per system: always the operator's own
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


def check_pd_policy(check_pd):
    """``check_pd`` of :func:`gcrflinalg.solve` normalised: ``True``, ``False`` or ``"exact"``.

    Raises ``ValueError`` for anything else (another string, a number other than 0 or 1, None).
    """
    if isinstance(check_pd, str):
        if check_pd == "exact":
            return check_pd
    elif isinstance(check_pd, (bool, np.bool_, int, np.integer)) and check_pd in (0, 1):
        return bool(check_pd)
    raise ValueError(f"check_pd must be True, False or 'exact'; got {check_pd!r}")


def check_solver_options(options: dict) -> dict:
    """``options`` with ``rtol``, ``atol`` and ``maxiter`` checked and normalised (floats, an int)
    by :func:`solvers.check_options`, the check every solver runs; the other entries unchanged.

    Raises ``TypeError`` (wrong type) or ``ValueError`` (bad value) naming the option.
    """
    from solvers import check_options

    options = dict(options)
    rtol, atol, maxiter = check_options(options.get("rtol", 1e-5), options.get("atol", 0.0),
                                        options.get("maxiter"))
    for key, value in (("rtol", rtol), ("atol", atol), ("maxiter", maxiter)):
        if key in options:
            options[key] = value
    return options
