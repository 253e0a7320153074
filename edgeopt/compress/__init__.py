"""Compression stage: INT8 calibration per backend with an accuracy guard, and pruning.

- ``onnxruntime.py``: QDQ candidates for ONNX Runtime, measured; the fastest within budget wins.
- ``openvino.py``: NNCF on the OpenVINO IR (accuracy control when over budget).
- ``tensorrt.py``: the Q/DQ ONNX TensorRT's explicit quantization accepts (signed, symmetric, zero point 0).
- ``prune.py``: NNCF unstructured pruning, torch-pruning structured pruning, recovery fine-tuning.
- ``cache.py``: calibration results keyed by content.
- ``guard.py``: how a candidate is scored against the FP32 model and the budget.
"""

from __future__ import annotations

from .config import CompressionConfig

# Bump when a backend's INT8 candidates or graph rewrites change what they produce: it is part of every INT8
# artifact's key and of the rewriting recipe's calibration-cache key, so nothing made by older recipes is reused.
INT8_RECIPES_VERSION = 2


def quantize_for_onnxruntime(req, out_path):
    from .onnxruntime import quantize_for_onnxruntime as impl

    return impl(req, out_path)


def quantize_for_openvino(req, model):
    from .openvino import quantize_for_openvino as impl

    return impl(req, model)


def quantize_for_tensorrt(onnx_path, calibration, spec, out_path, model_kind="generic", log=print):
    from .tensorrt import quantize_for_tensorrt as impl

    return impl(onnx_path, calibration, spec, out_path, model_kind, log)


__all__ = ["CompressionConfig", "quantize_for_onnxruntime", "quantize_for_openvino", "quantize_for_tensorrt"]
