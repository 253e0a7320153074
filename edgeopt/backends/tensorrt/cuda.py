"""cuda-python's runtime API: the GPU probe and device memory, a stream and timing events.

Every cuda-python call returns a tuple ``(err, value...)``; ``err`` is a ``cudaError_t`` that is 0 on success.
Here a non-zero ``err`` becomes an :class:`EdgeoptError` (memory) or a reason string (the probe). cuda-python is
imported inside functions: ``cuda.bindings.runtime`` (12.6 and newer; 13.x has nothing else), else ``cuda.cudart``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edgeopt.errors import BackendMissingError, EdgeoptError
from edgeopt.backends.tensorrt.install import CUDA_PYTHON_PIN, INSTALL_HINT

def _cudart():
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (12.6 and newer; 13.x has nothing else), else the
    ``cuda.cudart`` module of older cuda-python."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6, cuda-bindings 12.8+/13.x
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python < 12.6
        return cudart
    except ImportError:
        return None


@lru_cache(maxsize=4)
def probe_gpu(device: int = 0) -> tuple[dict | None, str]:
    """({'name', 'compute_capability', 'memory_bytes', 'integrated', 'via'}, '') or (None, why not), through
    cuda-python's runtime API, which also holds the engine's device memory (``edgeopt[tensorrt]`` installs it)."""
    gpu, why = probe_cuda_python(device)
    return gpu, why or ("" if gpu else f"cuda-python is not installed to reach the GPU ({INSTALL_HINT})")


def probe_cuda_python(device: int) -> tuple[dict | None, str]:
    rt = _cudart()
    if rt is None:
        return None, ""
    err, prop = rt.cudaGetDeviceProperties(device)
    if int(err) != 0:
        text = _cuda_error_text(rt, err)
        if "insufficient" in text.lower():
            text += (" (no NVIDIA driver, or one older than the CUDA this cuda-python is built for: install the "
                     "cuda-python matching the CUDA of this JetPack/driver: pip install "
                     f"'{CUDA_PYTHON_PIN['12']}' on JetPack 6 (CUDA 12.6), '{CUDA_PYTHON_PIN['13']}' on JetPack 7)")
        return None, f"cuda-python: {text}"
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.split("\x00")[0].strip(), "compute_capability": f"{prop.major}.{prop.minor}",
            "memory_bytes": int(prop.totalGlobalMem), "integrated": bool(prop.integrated), "via": "cuda-python"}, ""


def _cuda_error_text(rt, err) -> str:
    try:
        return rt.cudaGetErrorString(err)[1].decode()
    except Exception:  # noqa: BLE001
        return str(err)


def require_gpu() -> dict:
    gpu, why = probe_gpu()
    if gpu is None:
        raise EdgeoptError(f"No usable NVIDIA GPU here ({why}).",
                           "Build and run TensorRT engines on the device: `edgeopt device-compile PACKAGE` there, or "
                           "`--remote user@host`. On this host, `edgeopt build` makes a device package.")
    return gpu


def native_handle(obj) -> int:
    """The CUDA handle a cuda-python object wraps (a ``cudaStream_t``'s stream), as an int.

    cuda-bindings 12.9.1 and 13.x deprecate ``int(obj)`` in favour of ``cuda.bindings.utils.get_cuda_native_handle``;
    older cuda-python has only ``int(obj)``. Never ``obj.getPtr()``: that is the address of the Python object's
    storage of the handle (a pointer to a ``cudaStream_t``), not the stream, and enqueueing on it is undefined."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    try:
        return int(get_cuda_native_handle(obj))
    except TypeError:  # a type that version does not register: the old spelling still works
        return int(obj)


class _CudaPythonMemory:
    """Device buffers, copies, a stream and timing events through cuda-python's runtime API (every call returns
    ``(err, value...)``; a non-zero ``err`` becomes an EdgeoptError)."""

    def __init__(self, rt):
        self.rt = rt
        self.stream = self._ok(rt.cudaStreamCreate())

    def _ok(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise EdgeoptError(f"CUDA call failed: {_cuda_error_text(self.rt, err)}",
                               "Check the GPU (nvidia-smi / tegrastats) and free memory, then retry.")
        return rest[0] if rest else None

    @property
    def stream_handle(self) -> int:
        """The ``cudaStream_t`` value TensorRT's ``execute_async_v3`` takes, as an int: the handle itself."""
        return native_handle(self.stream)

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self._ok(self.rt.cudaFree(ptr))

    def h2d(self, ptr: int, arr: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kind, self.stream))

    def d2h(self, arr: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, kind, self.stream))

    def event(self):
        return self._ok(self.rt.cudaEventCreate())

    def record(self, ev) -> None:
        self._ok(self.rt.cudaEventRecord(ev, self.stream))

    def elapsed_ms(self, start, end) -> float:
        self._ok(self.rt.cudaEventSynchronize(end))
        return float(self._ok(self.rt.cudaEventElapsedTime(start, end)))

    def destroy_event(self, ev) -> None:
        self.rt.cudaEventDestroy(ev)

    def synchronize(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        self.rt.cudaStreamDestroy(self.stream)


def cuda_memory():
    """Device memory, a stream and timing events through cuda-python (the library :func:`probe_gpu` used)."""
    rt = _cudart()
    if rt is None:
        exc = BackendMissingError("cuda-python", "tensorrt", "allocate GPU memory for TensorRT")
        exc.fix = INSTALL_HINT
        raise exc
    return _CudaPythonMemory(rt)
