"""Zero-copy DLPack exchange between the core (NumPy) and PyTorch / JAX arrays on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gcrflinalg.backend import from_dlpack
from gcrflinalg._validation import as_parameter

from gcrflinalg.interop.torch import to_array, to_tensor


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed")


def test_package_imports_without_torch_or_jax():
    # the frameworks are blocked; the core and the interop modules still import, and using a
    # wrapper says what to install
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['jax'] = None\n"
        "import gcrflinalg, gcrflinalg.interop, gcrflinalg.interop.torch, gcrflinalg.interop.jax\n"
        "from gcrflinalg.interop.torch import gcrf_solve\n"
        "try:\n"
        "    gcrf_solve('lowrank', None, None, lam=1.0)\n"
        "except ImportError as err:\n"
        "    assert \"pip install -e '.[torch]'\" in str(err), err\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_torch_tensor_round_trips_with_zero_copy(torch):
    t = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    arr = from_dlpack(t)
    assert isinstance(arr, np.ndarray)
    assert arr.ctypes.data == t.data_ptr()
    assert np.from_dlpack(t).ctypes.data == t.data_ptr()
    back = to_tensor(arr)
    assert back.data_ptr() == t.data_ptr()
    # a view of the same memory: writes show through both ways
    back[0, 0, 0] = -1.0
    assert t[0, 0, 0].item() == -1.0 and arr[0, 0, 0] == -1.0


def test_tensor_requiring_grad_and_strided_views_are_not_copied(torch):
    leaf = torch.randn(3, 5, dtype=torch.float32, requires_grad=True)
    arr = to_array(leaf)
    assert arr.ctypes.data == leaf.data_ptr() and arr.dtype == np.float32
    transposed = leaf.detach().T
    arr_t = from_dlpack(transposed)
    assert arr_t.ctypes.data == leaf.data_ptr()
    np.testing.assert_array_equal(arr_t, transposed.numpy())
    expanded = leaf.detach()[0].expand(4, 5)  # stride 0: still one buffer
    arr_e = from_dlpack(expanded)
    assert arr_e.strides[0] == 0 and arr_e.ctypes.data == leaf.data_ptr()


def test_core_parameters_own_tensor_memory(torch):
    # a tensor the caller can still update in place (an optimiser step) is copied once, so that the
    # operator's products and cached factors keep describing one matrix (docs/guarantees.md)
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    param = as_parameter(t, "embeddings", min_ndim=3)
    assert isinstance(param, np.ndarray) and param.ctypes.data != t.data_ptr()
    np.testing.assert_array_equal(param, t.numpy())


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_core_takes_framework_arrays_and_returns_numpy(framework):
    from gcrflinalg.forms.lowrank import LowRankPottsGCRF
    from gcrflinalg.solve import solve

    if framework == "torch":
        torch = pytest.importorskip("torch", reason="PyTorch is not installed")
        convert = torch.from_numpy
    else:
        jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed")
        convert = jnp.asarray  # float32 unless x64 is enabled
    rng = np.random.default_rng(0)
    psi = (0.2 * rng.standard_normal((3, 4, 5))).astype(np.float32)
    b = rng.standard_normal((2, 4, 5)).astype(np.float32)
    ref = solve(LowRankPottsGCRF(psi, 2.0, 2), b, method="direct").x
    out = solve(LowRankPottsGCRF(convert(psi), 2.0, 2), convert(b), method="direct").x
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_jax_array_is_viewed_without_copy():
    jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed")
    a = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4)
    arr = from_dlpack(a)
    assert isinstance(arr, np.ndarray)
    assert arr.ctypes.data == a.unsafe_buffer_pointer()
    np.testing.assert_array_equal(arr, np.arange(12.0, dtype=np.float32).reshape(3, 4))
