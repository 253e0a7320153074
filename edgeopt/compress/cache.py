"""Calibration cache keyed by content: model, calibration set, algorithm and parameters, library versions.

A changed input gives another key (the old entry is simply not used); a hit is reported as such.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeopt.core.fsutil import sha256_json, staged_dir
from edgeopt.core.hostinfo import version_of
from edgeopt.core.isolation import cache_dir

LIBS = ("nncf", "onnx")  # the compression libraries; the backends' own come from the registry (libraries=)


def calibration_key(model_sha256: str, calibration_sha256: str | None, algorithm: str, params: dict,
                    libraries: tuple[str, ...] = ()) -> str:
    """``libraries``: the backends' pip distributions (``edgeopt.backends.library_names()``), whose versions
    key the entry beside :data:`LIBS`."""
    libs = sorted({*LIBS, *libraries})
    return sha256_json({"model": model_sha256, "calibration": calibration_sha256, "algorithm": algorithm,
                        "params": params, "versions": {lib: version_of(lib) for lib in libs}})


def cache_root() -> Path:
    return cache_dir() / "calibration"


def lookup(key: str) -> Path | None:
    folder = cache_root() / key
    return folder if (folder / "COMPLETE").is_file() else None


def store(key: str, files: dict[str, Path]) -> Path:
    """Copy ``files`` (name -> path) into the cache entry for ``key``, atomically."""
    folder = cache_root() / key
    with staged_dir(folder) as stage:
        for name, src in files.items():
            shutil.copy2(src, stage / name)
        (stage / "COMPLETE").write_text(key + "\n")
    return folder
