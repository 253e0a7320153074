"""``edgeopt doctor``: installed backends and versions, CPU features, devices."""

from __future__ import annotations

from edgeopt.backends import REGISTRY, get_backend
from edgeopt.core.hostinfo import host_info


def doctor() -> dict:
    backends = {}
    for name in REGISTRY:
        b = get_backend(name)
        info = {"installed": b.installed(), "version": b.version(), "install": b.install_hint()}
        if b.installed() and name == "openvino":
            try:
                import openvino as ov

                core = ov.Core()
                info["devices"] = {d: core.get_property(d, "FULL_DEVICE_NAME") for d in core.available_devices}
            except Exception as exc:  # noqa: BLE001
                info["devices_error"] = str(exc)
        if b.installed() and name == "onnxruntime":
            import onnxruntime as ort

            info["providers"] = ort.get_available_providers()
        backends[name] = info
    return {"host": host_info(), "backends": backends}
