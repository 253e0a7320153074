"""edgeopt: fine-tuned PyTorch model -> parity-checked, profiled artifacts for edge targets.

``import edgeopt`` pulls in nothing heavy; each stage imports its framework when it runs.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgeopt.core.isolation import isolate as _isolate  # noqa: E402 - must run before any framework import

_isolate()

_LAZY = {
    "build": "edgeopt.pipeline.build",
    "export": "edgeopt.pipeline.api",
    "compile": "edgeopt.pipeline.api",
    "profile": "edgeopt.pipeline.api",
    "targets": "edgeopt.backends",
    "doctor": "edgeopt.backends.doctor",
    "load": "edgeopt.ship.runtime",
    "verify": "edgeopt.ship.bundle",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
