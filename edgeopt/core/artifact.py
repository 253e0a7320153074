"""An artifact folder: the backend's files plus ``artifact.json`` (target, precision, spec, metadata).

Opening one needs numpy and its backend only: this is what runs on a device.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeopt.errors import IntegrityError, UserInputError

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


