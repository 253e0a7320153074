"""No phoning home, no litter under HOME.

Imported by ``edgeopt/__init__``: before any framework loads, it
- blocks ``openvino_telemetry`` for this process (NNCF and OpenVINO's converter send usage telemetry through
  it by default; with the module absent they fall back to their no-op stubs), and
- points the caches the frameworks would create under HOME at edgeopt's one cache folder
  (``$EDGEOPT_CACHE_DIR``, default ``~/.cache/edgeopt``), and keeps Hugging Face offline.

Variables the user has set are left alone. ``EDGEOPT_ALLOW_TELEMETRY=1`` lifts the telemetry block.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEOPT_CACHE_DIR") or Path.home() / ".cache" / "edgeopt")


CACHE_VARS = {
    "MPLCONFIGDIR": "matplotlib",
    "TORCH_HOME": "torch",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "HF_HOME": "huggingface",
    "CUDA_CACHE_PATH": "cuda",
    "NUMBA_CACHE_DIR": "numba",
}
OFFLINE_VARS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "DO_NOT_TRACK": "1",
                # ONNX Runtime writes a telemetry device id to ~/.cache/Microsoft/DeveloperTools/.onnxruntime/
                # (deviceid, onnxruntime.db) when it is imported, unless telemetry is off.
                "ORT_DISABLE_TELEMETRY": "1"}


def isolate() -> None:
    if os.environ.get("EDGEOPT_ALLOW_TELEMETRY") != "1" and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # `import openvino_telemetry` now raises ImportError
    base = cache_dir()
    for var, sub in CACHE_VARS.items():
        os.environ.setdefault(var, str(base / sub))
    for var, val in OFFLINE_VARS.items():
        os.environ.setdefault(var, val)
