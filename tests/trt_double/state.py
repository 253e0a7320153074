"""What the double is set to emulate: the TensorRT / cuda-python surface and the GPU. Set by
:func:`trt_double.activate` before the fake modules are imported; the fake modules read it at import."""

from __future__ import annotations

TRT_SURFACES = {"10.3": "10.3.0.30", "11.4": "11.4.0.106"}
CUDA_FOR_TRT = {"10.3": "12.6", "11.4": "13.5"}

surface = "10.3"        # the TensorRT API surface: "10.3" or "11.4"
cuda_layout = "12.6"    # "12.6" (cuda.bindings.runtime + the cuda.cudart shim), "13.5" (no cuda.cudart),
                        # "legacy" (cuda-python < 12.6: cuda.cudart only), "none" (not installed)
device = None           # the emulated GPU (trt_double.device.Device)
plugins_registered = False  # trt.init_libnvinfer_plugins was called in this process
broken_libs = False     # tensorrt is installed but libnvinfer does not load (import raises OSError)
plugin_logger = None     # weakref to the logger init_libnvinfer_plugins was given (libnvinfer_plugin keeps the
                         # raw pointer; the binding keeps no reference)
