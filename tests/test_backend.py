"""The backend module: array namespaces, DLPack views, host/device moves, clean GPU absence."""
import numpy as np
import pytest

from gcrflinalg import backend


def test_numpy_namespace_and_modules():
    a = np.zeros(3)
    assert backend.get_array_module(a) is np
    assert backend.get_array_module(a, None, 1.0) is np
    import scipy.sparse
    import scipy.sparse.linalg
    assert backend.sparse_module(np) is scipy.sparse
    assert backend.linear_operator_class(np) is scipy.sparse.linalg.LinearOperator
    assert backend.get_array_module(scipy.sparse.eye(3, format="csr")) is np


def test_available_backends_lists_cpu():
    assert backend.available_backends()[0] == "cpu"
    assert ("gpu" in backend.available_backends()) == backend.cupy_available()


@pytest.mark.skipif(backend.cupy_available(), reason="checks the no-GPU path")
def test_gpu_request_without_cupy_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CuPy"):
        backend.to_device(np.zeros(2))


def test_asarray_is_zero_copy_for_numpy():
    a = np.arange(6.0)
    assert backend.asarray(a) is a
    assert backend.to_host(a) is a


def test_from_dlpack_numpy_exporter_shares_memory():
    class Exporter:
        def __init__(self, arr):
            self.arr = arr

        def __dlpack__(self, **kw):
            return self.arr.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.arr.__dlpack_device__()

    a = np.arange(12.0).reshape(3, 4)
    view = backend.from_dlpack(Exporter(a))
    assert isinstance(view, np.ndarray)
    assert view.ctypes.data == a.ctypes.data
    np.testing.assert_array_equal(view, a)


def test_from_dlpack_torch_zero_copy():
    torch = pytest.importorskip("torch")
    t = torch.arange(10, dtype=torch.float64, requires_grad=True)
    view = backend.from_dlpack(t)
    assert isinstance(view, np.ndarray)
    assert view.ctypes.data == t.data_ptr()


def test_from_dlpack_rejects_non_arrays():
    with pytest.raises(TypeError, match="__dlpack__"):
        backend.from_dlpack(object())


def test_cupy_roundtrip(xp):
    a = xp.arange(5.0)
    assert backend.get_array_module(a) is xp
    np.testing.assert_array_equal(backend.to_host(a), np.arange(5.0))
