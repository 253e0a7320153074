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
from edgeopt.core.records import ArtifactRecord, records_of

MANIFEST = "manifest.json"
SCHEMA = "edgeopt.manifest/1"
REQUIRED = ("schema", "edgeopt_version", "created", "host", "model", "artifacts")


@dataclass
class Manifest:
    data: dict

    @classmethod
    def new(cls, recipe, host: dict) -> "Manifest":
        return cls({
            "schema": SCHEMA,
            "edgeopt_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "generation": new_generation(),  # this build; its artifacts carry it in their records and artifact.json
            "complete": False,  # True once the build wrote this manifest at its end
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

    def write(self, out: Path, complete: bool = True) -> None:
        self.data["complete"] = complete
        validate(self.data)
        write_json_atomic(Path(out) / MANIFEST, self.data)

    @property
    def records(self) -> list[ArtifactRecord]:
        """The artifact records, typed."""
        return records_of(self.data)

    @property
    def generation(self) -> str | None:
        return self.data.get("generation")

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
        ArtifactRecord.from_dict(a)  # raises on a field that is not what edgeopt writes


def new_generation() -> str:
    import uuid

    return uuid.uuid4().hex[:16]


def mark_incomplete(out: Path) -> None:
    """Before a build changes anything in OUT: its manifest (if any) says the folder is being rebuilt, so a
    build killed half-way leaves a manifest every reader refuses instead of one that describes old files."""
    previous = load_manifest(out, missing_ok=True)
    if previous is not None and previous.data.get("complete") is not False:
        previous.write(out, complete=False)


def rerun_fix(out: Path) -> str:
    return (f"Rerun the build into it (edgeopt build RECIPE -o {out}; finished artifacts are reused), or use "
            "another OUT folder.")


def check_consistent(out: Path, data: dict) -> None:
    """Refuse an OUT whose manifest and artifact folders disagree: a build that stopped before it finished
    (the manifest says incomplete) or artifacts from another build beside the manifest (generation, build
    key, missing files or other sizes). Cheap: reads each artifact.json and stats files, no hashing."""
    from edgeopt.core.artifact import ARTIFACT_JSON
    from edgeopt.core.untrusted import check_id, relpath_problem

    out = Path(out)
    if data.get("complete") is False:
        from edgeopt.core.lock import OUT_LOCK, describe_holder, held_by
        from edgeopt.errors import BusyError

        holder = held_by(out / OUT_LOCK)
        if holder is not None:
            raise BusyError(f"{out} is being written now by another edgeopt process ({describe_holder(holder)}).",
                            "Wait for it to finish, then run this command again.")
        raise IntegrityError(f"{out} is incomplete: a build into it stopped before it finished (its manifest "
                             "still describes the previous build while artifacts may already be new).", rerun_fix(out))

    def disagree(detail: str) -> IntegrityError:
        return IntegrityError(f"{out}: the manifest and the artifacts disagree ({detail}); a build into it was "
                              "interrupted or files were changed by hand.", rerun_fix(out))

    for rec in records_of(data):
        if not rec.ok:
            continue
        aid = check_id(rec.id, "artifact id", rerun_fix(out))
        art_path = out / aid / ARTIFACT_JSON
        if not art_path.is_file():
            raise disagree(f"{aid}/{ARTIFACT_JSON} is missing")
        art = load_json(art_path, str(art_path), fix=rerun_fix(out))
        if not isinstance(art, dict):
            raise disagree(f"{aid}/{ARTIFACT_JSON} is not a JSON object")
        for key in ("generation", "key"):
            mine = getattr(rec, key)
            if mine and art.get(key) and mine != art[key]:
                raise disagree(f"{aid} was built by another build ({key} {str(art[key])[:12]} in its folder, "
                               f"{mine[:12]} in the manifest)")
        for f in rec.files:
            if relpath_problem(f.path):
                raise disagree(f"{aid} lists the file {printable(repr(f.path), 80)}")
            path = out / f.path
            if not path.is_file():
                raise disagree(f"{f.path} is missing")
            if f.bytes is not None and path.stat().st_size != f.bytes:
                raise disagree(f"{f.path} has {path.stat().st_size} bytes, the manifest says {f.bytes}")


def load_consistent(out: Path) -> Manifest:
    """The manifest of a finished build whose artifacts match it (see :func:`check_consistent`)."""
    m = load_manifest(out)
    check_consistent(out, m.data)
    return m


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
