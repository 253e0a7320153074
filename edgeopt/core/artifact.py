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
    fix = "Rebuild the artifact (or get the bundle again from its source)."
    data = load_json(path, str(path), fix=fix)
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} is not a JSON object.", fix)
    bad = [k for k in ("id", "backend", "precision") if not _plain(data.get(k))]
    bad += [k for k in ("target", "spec") if not isinstance(data.get(k), dict)]
    bad += [k for k in ("meta",) if not isinstance(data.get(k, {}), dict)]
    bad += [k for k in ("key", "generation", "backend_version", "edgeopt_version")
            if data.get(k) is not None and not _plain(data[k])]
    if bad:
        raise IntegrityError(f"{path} is malformed: {', '.join(bad)} missing or of the wrong type.", fix)
    return data


def _plain(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


