"""The official API surfaces (tests/data/trt_api/*.json, extracted from the binding wheels)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "trt_api"
TRT_VERSIONS = ("10.3", "11.4")
CUDA_VERSIONS = ("12.6", "13.5")


@lru_cache(maxsize=None)
def trt_surface(version: str) -> dict:
    return json.loads((DATA / f"tensorrt-{version}.json").read_text())


@lru_cache(maxsize=None)
def cuda_surface(layout: str) -> dict:
    return json.loads((DATA / f"cuda-{'12.6' if layout == 'legacy' else layout}.json").read_text())


def trt_names(version: str, cls: str) -> set[str]:
    """Methods and properties of a TensorRT class (empty when the class does not exist)."""
    c = trt_surface(version)["classes"].get(cls)
    return set() if c is None else set(c["methods"]) | set(c["properties"])


@lru_cache(maxsize=None)
def trt_enum_values(version: str) -> dict:
    """Real values of TensorRT enums (from NVIDIA's headers: tests/data/trt_api/tensorrt-enum-values.json)."""
    return json.loads((DATA / "tensorrt-enum-values.json").read_text())[version]


@lru_cache(maxsize=None)
def cuda_enum_values() -> dict:
    """Real values of cudaError_t and cudaMemcpyKind (tests/data/trt_api/cuda-enum-values.json)."""
    return json.loads((DATA / "cuda-enum-values.json").read_text())
