"""``edgeopt doctor``: installed backends and versions, CPU features, devices."""

from __future__ import annotations

from edgeopt.backends import REGISTRY, get_backend, host_info


def doctor() -> dict:
    backends = {}
    for name in REGISTRY:
        b = get_backend(name)
        info = {"installed": b.installed(), "version": b.version(), "install": b.install_hint()}
        if info["installed"]:
            info.update(b.details())
        backends[name] = info
    return {"host": host_info(), "backends": backends}
