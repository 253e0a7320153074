"""The record stage and OUT itself: the output folder (refused when it holds something else), what an earlier run
left that is still valid, and the manifest the build writes at its end (artifacts, carried-over records, the
recipe's [select] applied)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgeopt.config.budgets import Budgets
from edgeopt.core.fsutil import clean_stale_staging, sha256_file
from edgeopt.core.lock import OUT_LOCK
from edgeopt.core.manifest import MANIFEST, Manifest
from edgeopt.core.records import Status
from edgeopt.errors import UserInputError
from edgeopt.pipeline.context import MARKER, BuildContext


def check_output(out: Path, force: bool) -> None:
    """Refuse a folder that holds something other than an edgeopt output, unless ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"Output {out} exists and is a file.", "Choose another -o/--output folder.")
    if (out.is_dir() and any(p.name != OUT_LOCK for p in out.iterdir()) and not (out / MARKER).is_file()
            and not (out / MANIFEST).is_file()):
        if not force:
            names = ", ".join(sorted(p.name for p in out.iterdir())[:5])
            raise UserInputError(f"Output folder {out} is not empty and is not an edgeopt output (holds {names}).",
                                 "Choose another -o/--output folder, or pass --force to build into it anyway.")


def prepare_output(out: Path, force: bool) -> None:
    check_output(out, force)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("This folder is written by edgeopt; rerunning a build here reuses what is valid.\n")
    clean_stale_staging(out)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def files_intact(root: Path, files: list[dict]) -> bool:
    """Every file of a record is there with its sha256 (and there is at least one)."""
    return bool(files) and all((root / f["path"]).is_file() and sha256_file(root / f["path"]) == f["sha256"]
                               for f in files)


def carry_over(ctx: BuildContext, previous: Manifest | None, planned: set[str]) -> list[dict]:
    """Artifacts of an earlier run that this run did not plan: kept when still valid for the same ONNX,
    removed otherwise (a stale artifact is never left next to a new manifest)."""
    if previous is None:
        return []
    exported = ctx.exported
    same_onnx = (previous.data.get("export") or {}).get("sha256") == (exported.export_sha256
                                                                     or sha256_file(exported.onnx_path))
    kept = []
    for rec in previous.data.get("artifacts", []):
        if rec["id"] in planned:
            continue
        folder = ctx.out / rec["id"]
        if same_onnx and rec.get("status") in (Status.OK, Status.NOT_BUILT_HERE) and files_intact(ctx.out, rec.get("files", [])):
            kept.append({**rec, "reused": True})
        elif folder.is_dir():
            shutil.rmtree(folder)
    return kept


def select_or_report(manifest: dict, budgets: Budgets) -> dict:
    """The recipe's [select] budgets applied to this build; a build with no qualifying artifact records why."""
    from edgeopt.ship.select import NoArtifactQualifiesError, select_manifest

    try:
        return select_manifest(manifest, budgets)
    except NoArtifactQualifiesError as exc:
        return {**exc.result, "selected": None, "error": exc.problem}


def stage_record(ctx: BuildContext, manifest: Manifest, records: list[dict]) -> None:
    """The artifacts' records, the recipe's [select] applied to them, and the manifest written (complete)."""
    manifest.data["artifacts"] = records
    if ctx.recipe.select is not None:
        manifest.data["selection"] = select_or_report(manifest.data, ctx.recipe.select)
    manifest.write(ctx.out)
