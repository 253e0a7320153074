"""Compression stage: INT8 calibration per backend with an accuracy guard, and pruning.

- ``onnxruntime.py``: QDQ candidates for ONNX Runtime, measured; the fastest within budget wins.
- ``openvino.py``: NNCF on the OpenVINO IR (accuracy control when over budget).
- ``tensorrt.py``: the Q/DQ ONNX TensorRT's explicit quantization accepts (signed, symmetric, zero point 0).
- ``prune.py``: NNCF unstructured pruning, torch-pruning structured pruning, recovery fine-tuning.
- ``cache.py``: calibration results keyed by content.
- ``guard.py``: how a candidate is scored against the FP32 model and the budget.
"""

from __future__ import annotations

from edgeopt.config.compression import CompressionConfig

# Bump when a backend's INT8 candidates or graph rewrites change what they produce: it is part of every INT8
# artifact's key and of the rewriting recipe's calibration-cache key, so nothing made by older recipes is reused.
INT8_RECIPES_VERSION = 2


__all__ = ["CompressionConfig", "INT8_RECIPES_VERSION"]
