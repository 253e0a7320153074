"""Fake ``cuda`` package (cuda-python) of the TensorRT/CUDA test double: see tests/trt_double/__init__.py."""
