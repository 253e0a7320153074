"""cuda-python's runtime API as the double implements it: the functions edgeopt calls, with cuda-python's
parameter names and its return convention (a tuple whose first element is a ``cudaError_t``, then the outputs),
over the emulated device in :mod:`trt_double.device`. Enum members come from the API JSON of the version."""

from __future__ import annotations

import enum

from trt_double import api, state
from trt_double.device import Event

_SURFACE = api.cuda_surface(state.cuda_layout)
_RT = _SURFACE["modules"]["cuda.bindings.runtime"]

# The members of this version (API JSON) with CUDA's real values (tests/data/trt_api/cuda-enum-values.json).
_VALUES = api.cuda_enum_values()
cudaError_t = enum.IntEnum("cudaError_t", {n: _VALUES["cudaError_t"][n] for n in _RT["enums"]["cudaError_t"]})
cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {n: _VALUES["cudaMemcpyKind"][n] for n in _RT["enums"]["cudaMemcpyKind"]})
_OK = cudaError_t.cudaSuccess
_ERR_TEXT = {"cudaSuccess": "no error", "cudaErrorInvalidValue": "invalid argument",
             "cudaErrorMemoryAllocation": "out of memory",
             "cudaErrorInsufficientDriver": "CUDA driver version is insufficient for CUDA runtime version",
             "cudaErrorNoDevice": "no CUDA-capable device is detected",
             "cudaErrorInvalidResourceHandle": "invalid resource handle", "cudaErrorNotReady": "device not ready"}


_STORAGE = [0x7F00_0000_1000]  # fake host addresses of the handles' storage (never a stream or device pointer)


class _Handle:
    """cuda-python's handle types: ``int(h)`` (and ``cuda.bindings.utils.get_cuda_native_handle``) give the
    handle; ``getPtr()`` gives the address of the object's own storage of it, as cuda-python defines it."""

    def __init__(self, init_value=0):
        self._value = int(init_value)
        _STORAGE[0] += 0x40
        self._storage = _STORAGE[0]

    def __int__(self):
        return self._value

    def getPtr(self):
        return self._storage


class cudaStream_t(_Handle):
    pass


class cudaEvent_t(_Handle):
    pass


class cudaDeviceProp:
    """The fields edgeopt reads (each exists in both cuda-python versions' cudaDeviceProp)."""

    def __init__(self, dev):
        self.name = dev.name.encode() + b"\x00" * (256 - len(dev.name))
        self.major, self.minor = dev.cc
        self.totalGlobalMem = dev.memory
        self.integrated = int(dev.integrated)
        self.multiProcessorCount = 8


def _dev():
    return state.device


def _driver_error():
    dev = _dev()
    if dev is None:
        return cudaError_t.cudaErrorNoDevice
    built_for = 13000 if state.cuda_layout == "13.5" else 12060
    if dev.driver_cuda < built_for:
        return cudaError_t.cudaErrorInsufficientDriver
    return None


def _stream(stream):
    return _dev().stream(int(stream)) if stream is not None else _dev().stream(0)


def cudaGetErrorString(error):
    return (_OK, _ERR_TEXT.get(cudaError_t(error).name, cudaError_t(error).name).encode())


def cudaGetDeviceCount():
    err = _driver_error()
    return (err, 0) if err is not None else (_OK, 1)


def cudaGetDeviceProperties(device):
    err = _driver_error()
    if err is not None:
        return (err, cudaDeviceProp.__new__(cudaDeviceProp))
    if int(device) != 0:
        return (cudaError_t.cudaErrorInvalidValue, cudaDeviceProp.__new__(cudaDeviceProp))
    return (_OK, cudaDeviceProp(_dev()))


def cudaDriverGetVersion():
    return (_OK, _dev().driver_cuda if _dev() else 0)


def cudaRuntimeGetVersion():
    return (_OK, 13000 if state.cuda_layout == "13.5" else 12060)


def cudaMemGetInfo():
    err = _driver_error()
    return (err, 0, 0) if err is not None else (_OK, _dev().free_bytes(), _dev().memory)


def cudaMalloc(size):
    err = _driver_error()
    if err is not None:
        return (err, 0)
    ptr = _dev().malloc(int(size))
    return (cudaError_t.cudaErrorMemoryAllocation, 0) if ptr is None else (_OK, ptr)


def cudaFree(devPtr):
    return (_OK,) if _dev().free(int(devPtr)) else (cudaError_t.cudaErrorInvalidValue,)


def _copy_op(dst, src, count, kind):
    dev, kind = _dev(), cudaMemcpyKind(kind)
    dst, src, count = int(dst), int(src), int(count)
    if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
        if dev.is_device_pointer(src) or not dev.valid_range(dst, count):
            return None
        return dev.copy_h2d(dst, src, count)
    if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
        if dev.is_device_pointer(dst) or not dev.valid_range(src, count):
            return None
        return dev.copy_d2h(dst, src, count)
    raise NotImplementedError(f"the double does not emulate {kind.name}")


def cudaMemcpyAsync(dst, src, count, kind, stream):
    s = _stream(stream)
    if s is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    op = _copy_op(dst, src, count, kind)
    if op is None:
        return (cudaError_t.cudaErrorInvalidValue,)
    _dev().enqueue(s, f"{cudaMemcpyKind(kind).name} {int(count)}", op, 5e-6 + int(count) / 20e9)
    return (_OK,)


def cudaMemcpy(dst, src, count, kind):
    op = _copy_op(dst, src, count, kind)
    if op is None:
        return (cudaError_t.cudaErrorInvalidValue,)
    _dev().synchronize(_dev().stream(0))
    op()
    return (_OK,)


def cudaStreamCreate():
    err = _driver_error()
    if err is not None:
        return (err, cudaStream_t(0))
    dev = _dev()
    h = dev.new_handle()
    from trt_double.device import Stream

    dev.streams[h] = Stream(h)
    return (_OK, cudaStream_t(h))


def cudaStreamDestroy(stream):
    s = _dev().stream(int(stream))
    if s is None or int(stream) == 0:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    _dev().synchronize(s)
    s.destroyed = True
    return (_OK,)


def cudaStreamSynchronize(stream):
    s = _stream(stream)
    if s is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    _dev().synchronize(s)
    return (_OK,)


def cudaEventCreate():
    dev = _dev()
    h = dev.new_handle()
    dev.events[h] = Event(h)
    return (_OK, cudaEvent_t(h))


def _event(event) -> Event | None:
    ev = _dev().events.get(int(event))
    return None if ev is None or ev.destroyed else ev


def cudaEventDestroy(event):
    ev = _event(event)
    if ev is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    ev.destroyed = True
    return (_OK,)


def cudaEventRecord(event, stream):
    ev, s = _event(event), _stream(stream)
    if ev is None or s is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    ev.stream, ev.time_s = s, None
    _dev().enqueue(s, "event", lambda: setattr(ev, "time_s", _dev().clock_s))
    return (_OK,)


def cudaEventSynchronize(event):
    ev = _event(event)
    if ev is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    if ev.stream is not None:
        _dev().synchronize(ev.stream)
    return (_OK,)


def cudaEventElapsedTime(start, end):
    a, b = _event(start), _event(end)
    if a is None or b is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle, 0.0)
    if a.time_s is None or b.time_s is None:
        return (cudaError_t.cudaErrorNotReady, 0.0)
    return (_OK, (b.time_s - a.time_s) * 1e3)


__all__ = [n for n in dir() if n.startswith("cuda")]
