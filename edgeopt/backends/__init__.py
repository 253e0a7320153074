"""Backend registry. Adding a backend is one new module plus one line here."""

from __future__ import annotations

import importlib

from ..errors import UserInputError
from .base import Backend, CompileRequest, Runner

REGISTRY: dict[str, str] = {
    "onnxruntime": "edgeopt.backends.onnxruntime",
    "openvino": "edgeopt.backends.openvino",
    "tensorrt": "edgeopt.backends.tensorrt",
}


def get_backend(name: str) -> Backend:
    if name not in REGISTRY:
        raise UserInputError(f"Unknown backend {name!r}.", f"Use one of: {', '.join(REGISTRY)}.")
    return importlib.import_module(REGISTRY[name]).BACKEND


__all__ = ["Backend", "CompileRequest", "Runner", "REGISTRY", "get_backend"]
