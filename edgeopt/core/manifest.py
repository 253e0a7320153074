"""``OUT/manifest.json``: what every stage did, with the sha256 of every file. Other tools read its
stable keys (see README, "Manifest")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgeopt import __version__
from edgeopt.errors import IntegrityError, UserInputError
from edgeopt.core.fsutil import write_json_atomic

MANIFEST = "manifest.json"
SCHEMA = "edgeopt.manifest/1"
REQUIRED = ("schema", "edgeopt_version", "created", "host", "model", "artifacts")
ARTIFACT_REQUIRED = ("id", "target", "backend", "precision", "status", "files")


@dataclass
class Manifest:
    data: dict

    @classmethod
    def new(cls, recipe, host: dict) -> "Manifest":
        return cls({
            "schema": SCHEMA,
            "edgeopt_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": host,
            "recipe": recipe.path or "built-in example",
            "model": {},
            "export": None,
            "reference": None,
            "calibration": None,
            "evaluation": None,
            "baseline": None,
            "artifacts": [],
        })

    def write(self, out: Path) -> None:
        validate(self.data)
        write_json_atomic(Path(out) / MANIFEST, self.data)

    def artifact(self, artifact_id: str) -> dict:
        for a in self.data["artifacts"]:
            if a["id"] == artifact_id:
                return a
        raise UserInputError(f"No artifact {artifact_id!r} in the manifest.",
                             f"Known: {', '.join(a['id'] for a in self.data['artifacts'])}.")


def validate(data: dict) -> None:
    missing = [k for k in REQUIRED if k not in data]
    if missing or data.get("schema") != SCHEMA:
        raise IntegrityError(f"Manifest lacks keys {missing} or has schema {data.get('schema')!r} (want {SCHEMA}).",
                             "Rebuild with this edgeopt version.")
    for a in data["artifacts"]:
        gone = [k for k in ARTIFACT_REQUIRED if k not in a]
        if gone:
            raise IntegrityError(f"Manifest artifact {a.get('id', '?')} lacks {gone}.", "Rebuild the artifact.")


def load_manifest(out: Path, missing_ok: bool = False) -> Manifest | None:
    path = Path(out) / MANIFEST
    if not path.is_file():
        if missing_ok:
            return None
        raise UserInputError(f"{out} holds no {MANIFEST}.", "Point at a folder written by `edgeopt build`.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        if missing_ok:
            return None
        raise IntegrityError(f"{path} is not valid JSON: {exc}.", "Rebuild: edgeopt build -o OUT.") from exc
    validate(data)
    return Manifest(data)
