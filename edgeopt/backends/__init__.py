"""Backend registry. Adding a backend is one folder (``backends/<name>/`` with a ``BACKEND``) plus one line here."""

from __future__ import annotations

import importlib
from pathlib import Path

from edgeopt.errors import BackendMissingError, UserInputError
from edgeopt.backends.base import Backend, CompileRequest, Runner
from edgeopt.backends.reference import HostReference
from edgeopt.core.targets import Target, load_targets

REGISTRY: dict[str, str] = {
    "onnxruntime": "edgeopt.backends.onnxruntime",
    "openvino": "edgeopt.backends.openvino",
    "tensorrt": "edgeopt.backends.tensorrt",
}


def get_backend(name: str) -> Backend:
    if name not in REGISTRY:
        raise UserInputError(f"Unknown backend {name!r}.", f"Use one of: {', '.join(REGISTRY)}.")
    return importlib.import_module(REGISTRY[name]).BACKEND


def host_reference() -> HostReference:
    """The host's reference executor (parity, FP32 outputs, scoring): the first registered backend whose
    package offers one (``HOST_REFERENCE``)."""
    for module in REGISTRY.values():
        ref = getattr(importlib.import_module(module), "HOST_REFERENCE", None)
        if ref is not None:
            return ref
    raise BackendMissingError("a backend that runs ONNX on this host", "torch", "check and score models here")


def target_status(target: Target) -> tuple[bool, str]:
    """Can this target run here? (True, details) or (False, why not and what to install)."""
    try:
        backend = get_backend(target.backend)
    except UserInputError as exc:
        return False, exc.problem
    reason = backend.unavailable_reason(target)
    return (reason is None), (reason or f"{backend.name} {backend.version()}")


def targets(folder: Path | None = None) -> list[dict]:
    """Every known target, with whether it can run on this machine and why not."""
    rows = []
    for t in load_targets(folder).values():
        ok, why = target_status(t)
        rows.append({**t.to_dict(), "runnable": ok, "status": why})
    return rows


__all__ = ["Backend", "CompileRequest", "HostReference", "Runner", "REGISTRY", "get_backend", "host_reference",
           "target_status", "targets"]
