"""Writing a bundle: the chosen artifacts of an OUT folder, checked against its manifest, as a deterministic
``NAME.edgeopt.tar.gz`` or a folder, written atomically (leftovers of killed writers are removed).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from edgeopt import __version__
from edgeopt.errors import IntegrityError, UserInputError
from edgeopt.core.fsutil import sha256_file, staged_dir
from edgeopt.core.manifest import MANIFEST, load_consistent
from edgeopt.core.records import ArtifactRecord, Status, records_of
from edgeopt.ship.bundle.format import (
    BUNDLE_SCHEMA, CONTROL_FILES, SIGNATURE, SUFFIXES, dumps, model_files, safe_relpath,
)


@dataclass(frozen=True)
class _Entry:
    rel: str  # path inside the bundle
    source: Path | None = None  # a file to copy, or
    data: bytes | None = None  # bytes to write


def bundle(out_dir: str | Path, output: str | Path, artifacts=None, folder: bool = False,
           sign_key: str | Path | None = None) -> Path:
    """Write a bundle of OUT's artifacts (ids in ``artifacts``; default every "ok" one) and return its path.

    ``output`` is ``NAME.edgeopt.tar.gz`` (the suffix is added when missing) or, with ``folder``, a folder.
    With ``sign_key`` (a private key from :func:`edgeopt.ship.keys.generate_key`) the manifest is signed.
    Every file is checked against OUT's manifest first: only what was built and measured ships.
    """
    from edgeopt.ship.keys import load_private_key, sign_bytes, signature_record_bytes

    out = Path(out_dir)
    key = load_private_key(sign_key) if sign_key else None  # a bad key fails before anything is written
    manifest = load_consistent(out).data
    chosen = _choose(manifest, artifacts)
    files = _source_files(out, manifest, chosen)
    if not folder:
        files = _store_once(files)
    dest = _output_path(output, folder)
    name = _bundle_name(dest, folder)
    data = _bundle_manifest(out, manifest, chosen, files, name)
    manifest_bytes = dumps(data)
    entries = [_Entry(MANIFEST, data=manifest_bytes)]
    if key is not None:
        entries.append(_Entry(SIGNATURE, data=signature_record_bytes(sign_bytes(manifest_bytes, key))))
    entries += [_Entry(f["path"], source=out / f["path"]) for f in files if "stored_as" not in f]
    entries.sort(key=lambda e: e.rel)
    try:
        if folder:
            _write_folder(dest, entries)
        else:
            _write_tar(dest, name, entries, _epoch(manifest.get("created")))
    except OSError as exc:  # the disk (or permissions) of the bundle being written, not the working folder's
        from edgeopt.core.fsutil import disk_full_error, enospc_in

        if enospc_in(exc) is not None:
            raise disk_full_error(exc, dest.parent if dest.parent.exists() else Path.cwd()) from exc
        raise
    return dest


def _choose(manifest: dict, ids) -> list[ArtifactRecord]:
    records = records_of(manifest)
    by_id = {a.id: a for a in records}
    if not ids:
        chosen = [a for a in records if a.ok]
        if not chosen:
            raise UserInputError("The OUT folder has no artifact with status ok to bundle.",
                                 "Build one first (`edgeopt build -o OUT`) and check the table it prints.")
        return chosen
    chosen = []
    for i in dict.fromkeys(ids):
        if i not in by_id:
            raise UserInputError(f"No artifact {i!r} in the manifest.", f"Known: {', '.join(by_id) or 'none'}.")
        rec = by_id[i]
        if not rec.ok:
            fix = ("Build it on the device (`edgeopt device-compile PACKAGE` there) and bundle from that OUT folder."
                   if rec.status is Status.NOT_BUILT_HERE else "Rebuild it, or leave it out of --artifact.")
            raise UserInputError(f"Artifact {i} has status {rec.status.value!r}"
                                 + (f" ({rec.reason})" if rec.reason else "")
                                 + "; only artifacts with status ok are shipped.", fix)
        chosen.append(rec)
    return chosen


def _source_files(out: Path, manifest: dict, chosen: list[ArtifactRecord]) -> list[dict]:
    """The files to ship (artifact files and the reference), each checked against OUT's manifest."""
    ref = manifest.get("reference") or {}
    if not ref.get("path") or not ref.get("sha256"):
        raise UserInputError(f"{out} has no reference inputs/outputs in its manifest; a bundle needs them for "
                             "the on-device self-test.", f"Rebuild: edgeopt build -o {out}.")
    wanted = [{"path": ref["path"], "sha256": ref["sha256"]}, *model_files(manifest)]
    for rec in chosen:
        if not rec.files:
            raise UserInputError(f"Artifact {rec.id} lists no files in the manifest.", f"Rebuild it: edgeopt build -o {out}.")
        wanted += [{"path": f.path, "sha256": f.sha256} for f in rec.files]
    files: dict[str, dict] = {}
    for f in wanted:
        rel = safe_relpath(f["path"], "manifest")
        path = out / rel
        if not path.is_file() or path.is_symlink():
            raise IntegrityError(f"{rel} is missing from {out}.", f"Rebuild: edgeopt build -o {out}.")
        digest = sha256_file(path)
        if digest != f["sha256"]:
            raise IntegrityError(f"{rel} in {out} differs from the manifest (sha256 {digest[:12]}... instead of "
                                 f"{f['sha256'][:12]}...): it is not the file that was built and measured.",
                                 f"Rebuild: edgeopt build -o {out}.")
        files[rel] = {"path": rel, "sha256": digest, "bytes": path.stat().st_size}
    return [files[k] for k in sorted(files)]


def _store_once(files: list[dict]) -> list[dict]:
    """Identical files (same sha256, e.g. the OpenVINO fp32 and bf16 artifacts' model.bin) are stored once in
    the archive: later copies name the first (``stored_as``) in the signed file list, and extraction links
    them back (``extract._restore_copies``), where every file is then checked against its own sha256."""
    first: dict[str, str] = {}
    out = []
    for f in files:  # sorted by path: the same OUT gives the same bundle
        if f["sha256"] in first:
            out.append({**f, "stored_as": first[f["sha256"]]})
        else:
            first[f["sha256"]] = f["path"]
            out.append(f)
    return out


def _bundle_manifest(out: Path, manifest: dict, chosen: list[ArtifactRecord], files: list[dict], name: str) -> dict:
    data = copy.deepcopy(manifest)
    data["artifacts"] = copy.deepcopy([a.to_dict() for a in chosen])
    data["bundle"] = {
        "schema": BUNDLE_SCHEMA,
        "name": name,
        # The build time of the contents, not the time of bundling: the same OUT gives the same bytes.
        "created": manifest.get("created"),
        "edgeopt_version": __version__,
        "artifacts": [a.id for a in chosen],
        "source_manifest_sha256": sha256_file(out / MANIFEST),
        "files": files,
    }
    return data


def _output_path(output: str | Path, folder: bool) -> Path:
    dest = Path(output)
    if not folder and not dest.name.endswith(SUFFIXES):
        dest = dest.with_name(dest.name + SUFFIXES[0])
    if dest.exists() and not folder and dest.is_dir():
        raise UserInputError(f"{dest} is a folder.", "Give a file name (NAME.edgeopt.tar.gz), or pass --folder.")
    if folder and dest.exists() and not _is_bundle_folder(dest):
        raise UserInputError(f"{dest} exists and is not an edgeopt bundle folder.",
                             "Choose a new folder name; only an earlier bundle folder is replaced.")
    return dest


def _is_bundle_folder(path: Path) -> bool:
    try:
        return path.is_dir() and "bundle" in json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError, TypeError):
        return False


def _bundle_name(dest: Path, folder: bool) -> str:
    name = dest.name
    if not folder:
        for s in SUFFIXES:
            if name.endswith(s):
                name = name[: -len(s)]
                break
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).strip(".-")
    return name or "bundle"


def _epoch(created: str | None) -> int:
    try:
        return int(datetime.fromisoformat(str(created)).timestamp())
    except (TypeError, ValueError):
        return 0


def _tarinfo(name: str, is_dir: bool, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mtime = mtime
    info.mode = 0o755 if is_dir else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(dest: Path, name: str, entries: list[_Entry], mtime: int) -> None:
    """Deterministic tar.gz, written to a temp file beside ``dest`` and renamed into place."""
    import gzip

    dirs = {name} | {f"{name}/{p}" for e in entries for p in map(str, PurePosixPath(e.rel).parents) if p != "."}
    # The manifest (and its signature) first: extraction then knows every file's declared size before it
    # writes anything else, and refuses what the manifest does not declare.
    first = {f"{name}/{c}": i for i, c in enumerate(CONTROL_FILES)}
    items = sorted([(d, None) for d in dirs] + [(f"{name}/{e.rel}", e) for e in entries],
                   key=lambda x: (x[0] != name, first.get(x[0], len(first)), x[0]))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_file(dest) as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for arcname, e in items:
                if e is None:
                    tar.addfile(_tarinfo(arcname, True, 0, mtime))
                elif e.data is not None:
                    tar.addfile(_tarinfo(arcname, False, len(e.data), mtime), io.BytesIO(e.data))
                else:
                    with open(e.source, "rb") as f:
                        tar.addfile(_tarinfo(arcname, False, os.fstat(f.fileno()).st_size, mtime), f)


@contextlib.contextmanager
def _atomic_file(dest: Path):
    remove_dead_leftovers(dest.parent, dest.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_folder(dest: Path, entries: list[_Entry]) -> None:
    remove_dead_leftovers(dest.parent, dest.name)
    with staged_dir(dest) as stage:
        for e in entries:
            path = stage / e.rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if e.data is not None:
                path.write_bytes(e.data)
            else:
                shutil.copyfile(e.source, path)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_dead_leftovers(folder: Path, name: str) -> list[str]:
    """Temp files and staging folders for ``name`` in ``folder`` left by writers that were killed: their
    names carry the writer's pid (``.NAME.PID.*.tmp``, ``.staging-NAME-PID-*``, ``.staging-old-NAME-PID``);
    those of live processes are left alone."""
    from edgeopt.core.fsutil import STAGING_PREFIX

    pats = [re.compile(rf"^\.{re.escape(name)}\.(\d+)\..*\.tmp$"),
            re.compile(rf"^{re.escape(STAGING_PREFIX)}(?:old-)?{re.escape(name)}-(\d+)(?:-.*)?$")]
    removed = []
    with contextlib.suppress(OSError):
        for p in Path(folder).iterdir():
            m = next((m for pat in pats if (m := pat.match(p.name))), None)
            if m and not _pid_alive(int(m[1])):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
                removed.append(p.name)
    return removed


def bundle_summary(path: str | Path) -> dict:
    """What :func:`bundle` wrote: form, size, sha256 (a folder: its manifest's), artifacts, signed."""
    path = Path(path)
    if path.is_dir():
        data = json.loads((path / MANIFEST).read_text())
        return {"path": str(path), "form": "folder", "bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
                "manifest_sha256": sha256_file(path / MANIFEST), "artifacts": data["bundle"]["artifacts"],
                "signed": (path / SIGNATURE).is_file()}
    data, signed = None, False
    with tarfile.open(path, mode="r|gz") as tar:  # a bundle this process just wrote: read its manifest only
        for m in tar:
            parts = PurePosixPath(m.name).parts
            if len(parts) == 2 and m.isreg() and parts[1] == MANIFEST:
                data = json.loads(tar.extractfile(m).read())
            signed = signed or (len(parts) == 2 and parts[1] == SIGNATURE)
    return {"path": str(path), "form": "tar.gz", "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "artifacts": (data or {}).get("bundle", {}).get("artifacts", []), "signed": signed}
