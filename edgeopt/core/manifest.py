"""``OUT/manifest.json``: what every stage did, with the sha256 of every file. Other tools read its
stable keys (see README, "Manifest")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgeopt import __version__
from edgeopt.errors import IntegrityError, UserInputError
from edgeopt.core.fsutil import write_json_atomic
from edgeopt.core.untrusted import load_json, printable

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
    """The manifest's required keys and the shape of its artifact records (the fields other code indexes
    and prints): :class:`IntegrityError` for anything else, never a KeyError or TypeError later on."""
    if not isinstance(data, dict):
        raise IntegrityError(f"The manifest is a JSON {type(data).__name__}, not an object.", "Rebuild with this edgeopt version.")
    missing = [k for k in REQUIRED if k not in data]
    if missing or data.get("schema") != SCHEMA:
        raise IntegrityError(f"Manifest lacks keys {missing} or has schema {printable(repr(data.get('schema')), 80)} "
                             f"(want {SCHEMA}).", "Rebuild with this edgeopt version.")
    if not isinstance(data["artifacts"], list) or not all(isinstance(a, dict) for a in data["artifacts"]):
        raise IntegrityError("The manifest's artifacts are not a list of records.", "Rebuild with this edgeopt version.")
    for k in ("model", "host"):
        if not isinstance(data[k], dict):
            raise IntegrityError(f"The manifest's {k} is not a record.", "Rebuild with this edgeopt version.")
    for a in data["artifacts"]:
        gone = [k for k in ARTIFACT_REQUIRED if k not in a]
        if gone:
            raise IntegrityError(f"Manifest artifact {printable(repr(a.get('id', '?')), 80)} lacks {gone}.",
                                 "Rebuild the artifact.")
        bad = [k for k in ARTIFACT_REQUIRED[:-1] if not _plain(a[k])]
        if bad:
            raise IntegrityError(f"Manifest artifact {printable(repr(a['id']), 80)}: {', '.join(bad)} must be short "
                                 "printable text.", "Rebuild the artifact.")
        if not isinstance(a["files"], list) or not all(isinstance(f, dict) for f in a["files"]):
            raise IntegrityError(f"Manifest artifact {a['id']}: files is not a list of records.", "Rebuild the artifact.")
        if a.get("reason") is not None and not isinstance(a["reason"], str):
            raise IntegrityError(f"Manifest artifact {a['id']}: reason is not text.", "Rebuild the artifact.")


def _plain(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


def load_manifest(out: Path, missing_ok: bool = False) -> Manifest | None:
    path = Path(out) / MANIFEST
    if not path.is_file():
        if missing_ok:
            return None
        raise UserInputError(f"{out} holds no {MANIFEST}.", "Point at a folder written by `edgeopt build`.")
    try:
        data = load_json(path, str(path), fix=f"Rebuild: edgeopt build -o {out}.")
    except IntegrityError:
        if missing_ok:
            return None
        raise
    validate(data)
    return Manifest(data)
