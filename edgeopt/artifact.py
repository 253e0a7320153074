"""An artifact folder: the backend's files plus ``artifact.json`` (target, precision, spec, metadata).

Opening one needs numpy and its backend only: this is what runs on a device.
"""

from __future__ import annotations

import json
from pathlib import Path

from .backends import get_backend
from .errors import IntegrityError, UserInputError
from .spec import IOSpec
from .targets import Target

ARTIFACT_JSON = "artifact.json"


def artifact_id(target: str, precision: str) -> str:
    return f"{target}-{precision}"


def read_artifact_json(folder: Path) -> dict:
    path = Path(folder) / ARTIFACT_JSON
    if not path.is_file():
        raise UserInputError(f"{folder} is not an edgeopt artifact folder (no {ARTIFACT_JSON}).",
                             "Point at OUT/<artifact-id> written by `edgeopt build` or `edgeopt compile`.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path} is corrupt: {exc}.", "Rebuild the artifact.") from exc


def open_artifact(folder: Path, threads: int | None = None):
    """(runner, artifact record) for a compiled artifact folder. The runner is not yet activated."""
    rec = read_artifact_json(folder)
    target = Target.from_dict(rec["target"])
    spec = IOSpec.from_dict(rec["spec"])
    backend = get_backend(rec["backend"])
    return backend.open(Path(folder), rec.get("meta", {}), spec, target, threads=threads), rec
