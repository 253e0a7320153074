"""A fingerprint of the machine: CPU model and flags, OS, Python and library versions. No heavy imports."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from functools import lru_cache

# The host's own libraries; each backend adds its own (Backend.libraries, through edgeopt.backends.host_info).
LIBRARIES = ("numpy", "torch", "torchvision", "onnx", "onnxscript", "onnxslim", "nncf", "transformers",
             "torch-pruning")
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni",
                     "fma", "f16c", "asimd", "asimddp", "sve", "i8mm", "bf16")


def version_of(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    return {
        "model": model,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
    }


def cpu_has(flag: str) -> bool:
    return flag in cpu_info()["flags"]


def host_info(libraries: tuple[str, ...] = ()) -> dict:
    """This machine, with the versions of :data:`LIBRARIES` and of ``libraries`` (the backends')."""
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "libraries": {name: v for name in dict.fromkeys((*LIBRARIES, *libraries)) if (v := version_of(name))},
    }
