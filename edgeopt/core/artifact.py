"""An artifact folder: the backend's files plus ``artifact.json`` (target, precision, spec, metadata).

Opening one needs numpy and its backend only: this is what runs on a device.
"""

from __future__ import annotations

from pathlib import Path

from edgeopt.errors import IntegrityError, UserInputError
from edgeopt.core.untrusted import load_json

ARTIFACT_JSON = "artifact.json"


def artifact_id(target: str, precision: str) -> str:
    return f"{target}-{precision}"


def read_artifact_json(folder: Path) -> dict:
    path = Path(folder) / ARTIFACT_JSON
    if not path.is_file():
        raise UserInputError(f"{folder} is not an edgeopt artifact folder (no {ARTIFACT_JSON}).",
                             "Point at OUT/<artifact-id> written by `edgeopt build` or `edgeopt compile`.")
    data = load_json(path, str(path), fix="Rebuild the artifact (or get the bundle again from its source).")
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} is not a JSON object.", "Rebuild the artifact.")
    return data


