"""Backend registry. Adding a backend is one folder (``backends/<name>/`` with a ``BACKEND``) plus one line here."""

from __future__ import annotations

import importlib
from pathlib import Path

from edgeopt.errors import BackendMissingError, UserInputError
from edgeopt.backends.base import Backend, CompileRequest, Runner
from edgeopt.backends.packaging import DevicePackaging
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


def get_packaging(name: str) -> DevicePackaging:
    """How ``name``'s artifacts are packaged for a device: the backend's own ``PACKAGING`` (TensorRT), else the
    default (the FP32 ONNX, compiled there with the backend's pip extra)."""
    backend = get_backend(name)
    own = getattr(importlib.import_module(REGISTRY[name]), "PACKAGING", None)
    return own if own is not None else DevicePackaging(backend)


def backends() -> list[Backend]:
    """Every registered backend (imports without its framework)."""
    return [get_backend(n) for n in REGISTRY]


def library_names() -> tuple[str, ...]:
    """The pip distributions the registered backends declare (host info, device modules, cache keys)."""
    return tuple(dict.fromkeys(lib for b in backends() for lib in b.libraries))


def check_target_options(target: Target, where: str | None = None) -> None:
    """Refuse an option ``target``'s backend does not declare (the closest declared key named)."""
    try:
        backend = get_backend(target.backend)
    except UserInputError:
        return  # an unknown backend is reported where the target is used
    backend.check_options(target.options, where or f"Target {target.name!r} [options]")


def check_recipe_options(options: dict, targets: list[Target]) -> None:
    """Check a recipe's ``[options.<backend>]`` and ``[options.<target>]`` tables against the backend's declared
    options (``targets``: the targets that a table named after a target may mean)."""
    by_name = {t.name: t.backend for t in targets}
    for section, values in options.items():
        backend = section if section in REGISTRY else by_name.get(section)
        if backend is None or backend not in REGISTRY:
            continue  # unknown names are refused by the caller, which knows every target
        get_backend(backend).check_options(values, f"Recipe [options.{section}]")


def preflight(model, target: Target, spec=None, version: str | None = None):
    """``edgeopt lint``: the report of ``target``'s backend preflight on the ONNX ``model`` (``version``: check
    against this version of the backend's framework instead of the target's), or None when the backend has none."""
    check = get_backend(target.backend).preflight()
    return None if check is None else check.run(Path(model), target, spec, version)


def host_info() -> dict:
    """:func:`edgeopt.core.hostinfo.host_info` with the registered backends' library versions."""
    from edgeopt.core.hostinfo import host_info as core_host_info

    return core_host_info(library_names())


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


__all__ = ["Backend", "CompileRequest", "DevicePackaging", "HostReference", "Runner", "REGISTRY", "backends",
           "check_recipe_options", "check_target_options", "get_backend", "get_packaging", "host_info",
           "host_reference", "library_names", "preflight",
           "target_status", "targets"]
