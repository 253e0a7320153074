"""The host's reference executor: what runs an ONNX file as written on this machine's CPU, for the checks every
build makes whatever its targets (the export against PyTorch, the FP32 outputs artifacts are judged against, an
ONNX source's reference outputs, a device package's host check and score).

A backend offers one by setting ``HOST_REFERENCE`` in its package; :func:`host_reference` asks the registry
which backend does, so nothing outside ``backends/`` names the runtime that plays this part.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from edgeopt.errors import BackendMissingError


class HostReference(ABC):
    """Runs an ONNX file on the host's CPU: named numpy feeds in, named numpy outputs out, one dict per feed."""

    name: str = ""
    distribution: str = ""  # what to install (the error names it)
    extra: str = ""  # the pip extra that provides it

    @abstractmethod
    def installed(self) -> bool:
        """Whether the runtime can be imported here (without importing it)."""

    @abstractmethod
    def run(self, onnx_path: Path, feeds: list[dict[str, np.ndarray]], *,
            optimize: bool = True) -> list[dict[str, np.ndarray]]:
        """Outputs of ``onnx_path`` for each feed. ``optimize=False`` runs the graph node by node as written (no
        fusion: Q/DQ pairs stay float quantize-dequantize steps, as TensorRT's explicit quantization computes)."""

    def require(self, purpose: str) -> "HostReference":
        """This executor, or :class:`BackendMissingError` saying what to install to ``purpose``."""
        if not self.installed():
            raise BackendMissingError(self.distribution, self.extra, purpose)
        return self

    def runs(self, onnx_path: Path):
        """A feed -> outputs function over ``onnx_path`` (one session per call: for scoring, not timing)."""
        return lambda feed: self.run(onnx_path, [feed])[0]
