"""Array backends: NumPy/SciPy on the CPU, CuPy/``cupyx.scipy`` on an NVIDIA GPU.

Every routine in the toolkit takes its array namespace from its inputs (``get_array_module``), so one
code path serves both backends.  CuPy is imported lazily, on first need; a machine without CuPy, or
with CuPy but no usable GPU, simply has the CPU backend only (``cupy_available()`` is then False).

This module is the bottom of the import graph: it imports nothing G-CRF specific, and both the
:mod:`solvers` package and :mod:`gcrflinalg` (which re-exports it as :mod:`gcrflinalg.backend`) use it.

It also holds the array-kernel switch for tests (:func:`array_kernels_on`, :func:`array_kernels`,
``GCRFLINALG_ARRAY_KERNELS=1``): NumPy input then takes the array code that CuPy runs instead of
the compiled CPU kernels, so that CI, without a GPU, runs that code too.
"""
from __future__ import annotations

import contextlib
import functools
import os
import types

import numpy as np

__all__ = [
    "cupy_available",
    "get_array_module",
    "is_cupy_array",
    "sparse_module",
    "sparse_linalg_module",
    "linalg_module",
    "linear_operator_class",
    "from_dlpack",
    "asarray",
    "to_host",
    "to_device",
    "available_backends",
    "synchronize",
]


@functools.lru_cache(maxsize=None)
def _cupy_or_none():
    try:
        import cupy
    except Exception:  # ImportError, or a broken CUDA install raising on import
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports and at least one CUDA device is usable."""
    return _cupy_or_none() is not None


def available_backends() -> tuple[str, ...]:
    """Names of the usable backends: ``("cpu",)`` or ``("cpu", "gpu")``."""
    return ("cpu", "gpu") if cupy_available() else ("cpu",)


def _cupy():
    cp = _cupy_or_none()
    if cp is None:
        raise RuntimeError(
            "the GPU backend needs CuPy and a CUDA device: on a machine with an NVIDIA GPU install "
            "CuPy with pip install -e '.[cuda12]' from a gcrflinalg checkout (or '.[cuda13]'; "
            "or pip install cupy-cuda12x)"
        )
    return cp


def is_cupy_array(x) -> bool:
    """True if ``x`` is a CuPy array (checked without importing CuPy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays) -> types.ModuleType:
    """The array namespace (``numpy`` or ``cupy``) of the given arrays.

    Mixing host and device arrays is an error; ``None`` entries and Python scalars are ignored.
    SciPy/CuPy sparse matrices count as their backend's arrays.
    """
    gpu = cpu = False
    for a in arrays:
        if a is None or isinstance(a, (int, float, bool, complex, np.generic)):
            continue
        mod = type(a).__module__.split(".")[0]
        if mod in ("cupy", "cupyx"):
            gpu = True
        else:
            cpu = True
    if gpu and cpu:
        raise TypeError("arrays live on different devices (NumPy and CuPy mixed); move them with to_device/to_host")
    return _cupy() if gpu else np


def sparse_module(xp) -> types.ModuleType:
    """``scipy.sparse`` for NumPy, ``cupyx.scipy.sparse`` for CuPy."""
    if xp is np:
        import scipy.sparse as sp
        return sp
    import cupyx.scipy.sparse as csp
    return csp


def sparse_linalg_module(xp) -> types.ModuleType:
    """``scipy.sparse.linalg`` for NumPy, ``cupyx.scipy.sparse.linalg`` for CuPy (``splu``, ``eigsh``)."""
    if xp is np:
        import scipy.sparse.linalg as spla
        return spla
    import cupyx.scipy.sparse.linalg as cspla
    return cspla


def linalg_module(xp) -> types.ModuleType:
    """``scipy.linalg`` for NumPy, ``cupy.linalg`` for CuPy (Cholesky, eigh, triangular solves)."""
    if xp is np:
        import scipy.linalg as sl
        return sl
    return xp.linalg


def linear_operator_class(xp):
    """``scipy.sparse.linalg.LinearOperator`` or ``cupyx.scipy.sparse.linalg.LinearOperator``."""
    if xp is np:
        from scipy.sparse.linalg import LinearOperator
        return LinearOperator
    from cupyx.scipy.sparse.linalg import LinearOperator
    return LinearOperator


def from_dlpack(x):
    """Zero-copy view of any DLPack-exporting array as a NumPy (CPU) or CuPy (CUDA) array.

    NumPy and CuPy arrays are returned unchanged.  Torch tensors that require grad are detached
    first (the view shares memory; gradients are the caller's business).
    """
    if isinstance(x, np.ndarray) or is_cupy_array(x):
        return x
    if type(x).__module__.split(".")[0] == "torch" and getattr(x, "requires_grad", False):
        x = x.detach()
    if not hasattr(x, "__dlpack__"):
        raise TypeError(f"expected an array exporting __dlpack__, got {type(x).__name__}")
    device_type = None
    if hasattr(x, "__dlpack_device__"):
        device_type, _ = x.__dlpack_device__()
    # DLPack device types: 1 = CPU, 2 = CUDA, 3 = CUDA host (pinned), 13 = CUDA managed.
    if device_type in (None, 1, 3):
        return np.from_dlpack(x)
    if device_type in (2, 13):
        return _cupy().from_dlpack(x)
    raise TypeError(f"unsupported DLPack device type {device_type} for {type(x).__name__}")


def asarray(x, xp=None):
    """``x`` as a NumPy or CuPy array without copying when possible.

    DLPack exporters (torch, jax, ...) are viewed with :func:`from_dlpack`; nested sequences and
    scalars become arrays of ``xp`` (NumPy when ``xp`` is None).
    """
    if isinstance(x, np.ndarray) or is_cupy_array(x):
        arr = x
    elif hasattr(x, "__dlpack__") and not isinstance(x, (list, tuple)):
        arr = from_dlpack(x)
    else:
        arr = (xp or np).asarray(x)
    if xp is not None and get_array_module(arr) is not xp:
        arr = to_device(arr) if xp is not np else to_host(arr)
    return arr


def to_host(x):
    """A NumPy array holding ``x`` (a copy only for device arrays)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def to_device(x):
    """A CuPy array holding ``x`` (raises cleanly when no GPU backend is available)."""
    cp = _cupy()
    return cp.asarray(x)


# ---------------------------------------------------------------------------------------------
# array kernels on NumPy: a switch for tests (outside __all__, not part of the public API;
# gcrflinalg.backend re-exports it under private names)

#: Environment variable of :func:`array_kernels_on`: ``1`` makes NumPy inputs take the array code.
ARRAY_KERNELS_ENV = "GCRFLINALG_ARRAY_KERNELS"

_ENV_VALUES = {"": False, "0": False, "1": True}

#: The setting of :func:`set_array_kernels`, or None to follow the environment variable.
_array_kernels_setting: bool | None = None


def array_kernels_on() -> bool:
    """True when kernels should take their array-expression branch on NumPy input too.

    Every selection between a compiled CPU kernel (Numba, or a host BLAS loop) and the array code
    that CuPy runs asks this; when True, NumPy arrays go through the array code, so that the
    branches a GPU runs are exercised on the CPU.  For tests, not part of the public API.  The
    order: the value of :func:`set_array_kernels` / :func:`array_kernels` when one is set, else
    the environment variable ``GCRFLINALG_ARRAY_KERNELS`` (``1`` on; ``0`` or unset off), read
    at every call.
    """
    setting = _array_kernels_setting
    if setting is not None:
        return setting
    value = os.environ.get(ARRAY_KERNELS_ENV, "")
    try:
        return _ENV_VALUES[value.strip()]
    except KeyError:
        raise ValueError(f"{ARRAY_KERNELS_ENV} must be 0 or 1 (or unset); got {value!r}") from None


def set_array_kernels(enabled: bool | None) -> bool | None:
    """Set the array-kernel switch of :func:`array_kernels_on` (None: follow the environment
    variable again); returns the previous setting.  Process-wide, not thread-local."""
    global _array_kernels_setting
    if enabled is not None and not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be a bool or None; got {type(enabled).__name__}")
    previous = _array_kernels_setting
    _array_kernels_setting = None if enabled is None else bool(enabled)
    return previous


@contextlib.contextmanager
def array_kernels(enabled: bool = True):
    """Context manager: kernels take their array-expression branch on NumPy input (``enabled``
    True) or their compiled branch (False) inside the block; the previous setting is restored."""
    previous = set_array_kernels(enabled)
    try:
        yield
    finally:
        set_array_kernels(previous)


def synchronize(xp) -> None:
    """Wait for queued device work (no-op on NumPy); use around wall-clock timings."""
    if xp is not np:
        xp.cuda.Stream.null.synchronize()
