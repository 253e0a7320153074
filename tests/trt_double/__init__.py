"""A TensorRT + CUDA test double: fake ``tensorrt`` and ``cuda`` (cuda-python) packages that the real edgeopt code
imports as if they were installed, so every line of the TensorRT path runs here, without TensorRT or a GPU.

What it is faithful to (each checked by a test): the names, parameter names and enums of TensorRT 10.3 or 11.4
and of cuda-python 12.6 or 13.5 (tests/data/trt_api/*.json, extracted from the official binding wheels);
cuda-python's ``(err, value...)`` return tuples; the order TensorRT requires (parse before build, profiles for
dynamic inputs, shapes and device addresses before ``execute_async_v3``, plugins registered before a plugin node
is parsed or a plugin engine deserialized); engines that load only on the TensorRT version and GPU that built them;
device memory as numpy buffers behind fake pointers (a host pointer used as a device pointer, or an access past an
allocation, fails); streams that run their work only when synchronized. Outputs come from ONNX Runtime on the
ONNX the parser was given (FP16 flag: converted to FP16; TF32: FP32 rounded to a 10-bit mantissa).

What it cannot say: whether real TensorRT builds a given graph, its kernels' numerics and speed, real memory
limits, DLA numerics, or anything about a Jetson. Timing figures from it are the double's, never a device's.

Use :func:`activate` (the ``trt_double`` fixture in tests/test_trt_double.py does) and :func:`deactivate`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from trt_double import state
from trt_double.device import Device, DoubleViolation

FAKE = str(Path(__file__).resolve().parent / "fake")
_MODULES = ("tensorrt", "cuda")
_saved: dict = {}

__all__ = ["Device", "DoubleViolation", "activate", "deactivate", "state"]


def _ours(name: str) -> bool:
    return name in _MODULES or any(name.startswith(m + ".") for m in _MODULES)


def activate(surface: str = "10.3", device: Device | None = None, cuda_layout: str | None = None,
             broken_libs: bool = False):
    """Make ``import tensorrt`` / ``import cuda...`` give the double for ``surface`` ("10.3" or "11.4"); returns
    the fake tensorrt module (None when ``broken_libs``: then importing it raises OSError, as when libnvinfer does
    not load). ``cuda_layout``: "12.6", "13.5", "legacy" or "none" (default: the CUDA of that TensorRT)."""
    deactivate()
    _saved.update({n: m for n, m in sys.modules.items() if _ours(n)})
    for n in list(_saved):
        del sys.modules[n]
    state.surface = surface
    state.cuda_layout = cuda_layout or state.CUDA_FOR_TRT[surface]
    state.device = device if device is not None else Device()
    state.plugins_registered = False
    state.plugin_logger = None
    state.broken_libs = broken_libs
    sys.path.insert(0, FAKE)
    importlib.invalidate_caches()
    _clear_edgeopt_caches()
    return None if broken_libs else importlib.import_module("tensorrt")


def deactivate() -> None:
    for n in [n for n in sys.modules if _ours(n)]:
        del sys.modules[n]
    while FAKE in sys.path:
        sys.path.remove(FAKE)
    sys.modules.update(_saved)
    _saved.clear()
    importlib.invalidate_caches()
    _clear_edgeopt_caches()


def _clear_edgeopt_caches() -> None:
    mod = sys.modules.get("edgeopt.backends.tensorrt.cuda")
    if mod is not None:
        mod.probe_gpu.cache_clear()
