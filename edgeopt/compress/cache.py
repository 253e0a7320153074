"""Calibration cache keyed by content: model, calibration set, quantizer and candidate, parameters, and the
versions of the libraries the quantizer names (``Quantizer.versions``).

A changed input gives another key (the old entry is simply not used); a hit is reported as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from edgeopt.core.fsutil import sha256_json, staged_dir
from edgeopt.core.hostinfo import version_of
from edgeopt.core.isolation import cache_dir

NOTES = "notes.json"  # what the candidate changed besides quantizing, kept beside its files


def calibration_key(model_sha256: str, calibration_sha256: str | None, algorithm: str, params: dict,
                    libraries: Iterable[str]) -> str:
    """The one cache key: ``model_sha256`` is the ONNX with its external data (``CompileRequest.onnx_key``)."""
    return sha256_json({"model": model_sha256, "calibration": calibration_sha256, "algorithm": algorithm,
                        "params": params, "versions": {lib: version_of(lib) for lib in sorted(set(libraries))}})


def cache_root() -> Path:
    return cache_dir() / "calibration"


def lookup(key: str) -> Path | None:
    folder = cache_root() / key
    return folder if (folder / "COMPLETE").is_file() else None


def notes_of(folder: Path) -> dict:
    path = folder / NOTES
    return json.loads(path.read_text()) if path.is_file() else {}


def store(key: str, write: Callable[[Path], None], notes: dict | None = None) -> Path:
    """``write(folder)`` fills the cache entry for ``key`` (with ``notes`` beside), atomically."""
    folder = cache_root() / key
    with staged_dir(folder) as stage:
        write(stage)
        (stage / NOTES).write_text(json.dumps(notes or {}))
        (stage / "COMPLETE").write_text(key + "\n")
    return folder
