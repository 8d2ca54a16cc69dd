"""Array backends of gcrflinalg: NumPy/SciPy on the CPU, CuPy/``cupyx.scipy`` on an NVIDIA GPU.

The helpers live in :mod:`solvers.backend`, the bottom layer that the :mod:`solvers` package and
this package both build on (see ``docs/design.md``, "Layout and layers"); this module re-exports
them under the package's own name so that ``gcrflinalg.backend.to_host`` and friends keep working.
"""
from solvers.backend import (  # noqa: F401
    ARRAY_KERNELS_ENV,
    asarray,
    available_backends,
    cupy_available,
    from_dlpack,
    get_array_module,
    is_cupy_array,
    linalg_module,
    linear_operator_class,
    sparse_linalg_module,
    sparse_module,
    synchronize,
    to_device,
    to_host,
)
from solvers.backend import __all__  # noqa: F401
# the array-kernel switch, for tests (docs/design.md, "Array kernels"): private here
from solvers.backend import array_kernels as _array_kernels  # noqa: F401
from solvers.backend import array_kernels_on as _array_kernels_on  # noqa: F401
from solvers.backend import set_array_kernels as _set_array_kernels  # noqa: F401
