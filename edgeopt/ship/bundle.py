"""Bundles: the artifacts chosen for shipping, their manifest and the reference data, in one file; and the
checks a device runs before it trusts one.

Layout (a ``NAME.edgeopt.tar.gz`` holds one top folder ``NAME/``; the folder form is that folder)::

    manifest.json            the OUT manifest cut to the chosen artifacts, plus a "bundle" section with
                             the sha256 and size of every other file
    manifest.sig             optional Ed25519 signature of manifest.json's exact bytes (see keys.py)
    reference/reference.npz  reference inputs and outputs for the on-device self-test
    <artifact-id>/...        each artifact folder (backend files + artifact.json)

Writing is atomic and deterministic: the same OUT gives the same bytes (sorted entries, fixed mtime,
uid/gid 0, no gzip timestamp). Reading never trusts the archive: members are checked one by one (no
absolute paths, no ``..``, no links, no devices, size limits) and copied by hand into a staging folder
that is renamed into place only when all of them passed; ``tarfile.extractall`` is never used.

Numpy only at module level: this runs on devices without torch.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from edgeopt import __version__
from edgeopt.errors import ArtifactLoadError, EdgeoptError, IntegrityError, ParityError, UserInputError
from edgeopt.core.fsutil import json_default, sha256_file, staged_dir
from edgeopt.core.manifest import MANIFEST, load_consistent, validate
from edgeopt.core.untrusted import check_id, load_json, printable, relpath_problem
from edgeopt.core.records import Status

BUNDLE_SCHEMA = "edgeopt.bundle/1"
SIGNATURE = "manifest.sig"
SUFFIXES = (".edgeopt.tar.gz", ".tar.gz", ".tgz")
CONTROL_FILES = (MANIFEST, SIGNATURE)  # in the bundle but not in its file list
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
REQUIRE_ENV = "EDGEOPT_REQUIRE_SIGNATURE"
UNCHECKED_WARNING = ("the bundle carries a signature but no public key was given, so it was not checked: a "
                     "changed or re-signed bundle is accepted. Pass --public-key KEY.pub (and --require-signature "
                     "or EDGEOPT_REQUIRE_SIGNATURE=1 to refuse unsigned bundles).")
GET_AGAIN = "Do not use this copy: get the bundle again from its source and compare its sha256 with the sender's."


class SignatureNotCheckedWarning(UserWarning):
    """A bundle carries a signature that was not checked (no public key given)."""


class SignatureError(IntegrityError):
    """The signature is missing, malformed, or not by the key given."""


class IncompatibleError(EdgeoptError):
    """A bundle's artifact cannot run on this device (backend, version, GPU); the fix says what to rebuild."""

    exit_code = 8


@dataclass(frozen=True)
class Limits:
    """What extraction accepts from an archive."""

    max_member_bytes: int = 8 << 30  # one file
    max_total_bytes: int = 32 << 30  # all files
    max_members: int = 10_000
    max_name_chars: int = 1024


# ================================================================================================
# writing
# ================================================================================================

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
    if folder:
        _write_folder(dest, entries)
    else:
        _write_tar(dest, name, entries, _epoch(manifest.get("created")))
    return dest


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, default=json_default) + "\n").encode()


def _choose(manifest: dict, ids) -> list[dict]:
    records = manifest["artifacts"]
    by_id = {a["id"]: a for a in records}
    if not ids:
        chosen = [a for a in records if a["status"] == Status.OK]
        if not chosen:
            raise UserInputError("The OUT folder has no artifact with status ok to bundle.",
                                 "Build one first (`edgeopt build -o OUT`) and check the table it prints.")
        return chosen
    chosen = []
    for i in dict.fromkeys(ids):
        if i not in by_id:
            raise UserInputError(f"No artifact {i!r} in the manifest.", f"Known: {', '.join(by_id) or 'none'}.")
        rec = by_id[i]
        if rec["status"] != Status.OK:
            fix = ("Build it on the device (`edgeopt device-compile PACKAGE` there) and bundle from that OUT folder."
                   if rec["status"] == Status.NOT_BUILT_HERE else "Rebuild it, or leave it out of --artifact.")
            raise UserInputError(f"Artifact {i} has status {rec['status']!r}"
                                 + (f" ({rec.get('reason')})" if rec.get("reason") else "")
                                 + "; only artifacts with status ok are shipped.", fix)
        chosen.append(rec)
    return chosen


def _model_files(manifest: dict) -> list[dict]:
    """Files the model record ships besides the artifacts (the text tokenizer)."""
    tok = (manifest.get("model") or {}).get("tokenizer")
    if isinstance(tok, dict) and isinstance(tok.get("path"), str) and isinstance(tok.get("sha256"), str):
        return [{"path": tok["path"], "sha256": tok["sha256"]}]
    return []


def _source_files(out: Path, manifest: dict, chosen: list[dict]) -> list[dict]:
    """The files to ship (artifact files and the reference), each checked against OUT's manifest."""
    ref = manifest.get("reference") or {}
    if not ref.get("path") or not ref.get("sha256"):
        raise UserInputError(f"{out} has no reference inputs/outputs in its manifest; a bundle needs them for "
                             "the on-device self-test.", f"Rebuild: edgeopt build -o {out}.")
    wanted = [{"path": ref["path"], "sha256": ref["sha256"]}, *_model_files(manifest)]
    for rec in chosen:
        if not rec.get("files"):
            raise UserInputError(f"Artifact {rec['id']} lists no files in the manifest.", f"Rebuild it: edgeopt build -o {out}.")
        wanted += rec["files"]
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
    them back (:func:`_restore_copies`), where every file is then checked against its own sha256."""
    first: dict[str, str] = {}
    out = []
    for f in files:  # sorted by path: the same OUT gives the same bundle
        if f["sha256"] in first:
            out.append({**f, "stored_as": first[f["sha256"]]})
        else:
            first[f["sha256"]] = f["path"]
            out.append(f)
    return out


def _restore_copies(stage: Path, limits: "Limits") -> None:
    """After extraction: make each file the manifest lists as ``stored_as`` another, from that one (a hard
    link, or a copy where the file system has none). Untrusted until the checks that follow: paths are
    confined to the bundle, a copy never replaces a file, and every file's sha256 is checked afterwards."""
    from edgeopt.core.untrusted import load_json

    top = stage  # safe_extract leaves the bundle's top folder's contents here
    if not (top / MANIFEST).is_file():
        return
    try:
        files = load_json(top / MANIFEST, f"the {MANIFEST} of the bundle")["bundle"]["files"]
    except (KeyError, TypeError):
        return  # the checks on opening report a broken manifest
    if not isinstance(files, list):
        return
    total = 0
    for f in files:
        if not isinstance(f, dict) or not isinstance(f.get("stored_as"), str) or not isinstance(f.get("path"), str):
            continue
        rel, src_rel = safe_relpath(f["path"], "manifest"), safe_relpath(f["stored_as"], "manifest")
        src, dst = top / src_rel, top / rel
        if src.is_symlink() or not src.is_file() or dst.exists() or dst.is_symlink():
            raise IntegrityError(f"Bundle file {rel} is stored as {src_rel}, which is missing, or {rel} is there "
                                 "twice.", GET_AGAIN)
        total += src.stat().st_size
        if total > limits.max_total_bytes:
            raise _refuse(rel, f"the files add up to more than {limits.max_total_bytes} bytes")
        if "/" in rel:
            _mkdirs(top, rel.rsplit("/", 1)[0], rel)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def _bundle_manifest(out: Path, manifest: dict, chosen: list[dict], files: list[dict], name: str) -> dict:
    data = copy.deepcopy(manifest)
    data["artifacts"] = copy.deepcopy(chosen)
    data["bundle"] = {
        "schema": BUNDLE_SCHEMA,
        "name": name,
        # The build time of the contents, not the time of bundling: the same OUT gives the same bytes.
        "created": manifest.get("created"),
        "edgeopt_version": __version__,
        "artifacts": [a["id"] for a in chosen],
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


# ================================================================================================
# reading: safe extraction
# ================================================================================================

def safe_relpath(name: str, where: str) -> str:
    """``name`` as a relative POSIX path that stays inside its folder, or :class:`IntegrityError`."""
    bad = relpath_problem(name)
    if bad:
        raise IntegrityError(f"Refused {where} entry {printable(name, 200)!r}: {bad}.",
                             "`edgeopt bundle` writes only relative paths inside one folder: this was not made by it "
                             "or was altered. " + GET_AGAIN)
    return PurePosixPath(name).as_posix()


def _member_type_problem(m: tarfile.TarInfo) -> str | None:
    if m.issym():
        return f"a symbolic link (to {m.linkname!r})"
    if m.islnk():
        return f"a hard link (to {m.linkname!r})"
    if m.ischr() or m.isblk():
        return "a device file"
    if m.isfifo():
        return "a FIFO"
    if m.issparse():
        return "a sparse file"
    if not (m.isreg() or m.isdir()):
        return f"an entry of tar type {m.type!r}"
    return None


def _refuse(name: str, problem: str) -> IntegrityError:
    return IntegrityError(f"Refused archive member {name!r}: {problem}.",
                          "`edgeopt bundle` writes only plain files and folders under one top folder: this archive "
                          "was not made by it or was altered. " + GET_AGAIN)


def _no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def safe_extract(archive: Path, dest: Path, limits: Limits = Limits()) -> None:
    """Extract a bundle's one top folder into ``dest`` (an empty folder), member by member, refusing anything
    that is not a plain file or folder inside it. Every file must be one the manifest declares, with the
    size it declares (the manifest comes first in archives `edgeopt bundle` writes; for others the
    archive's headers are read once before anything is written), so a small archive cannot fill the disk.
    On refusal ``dest`` may hold part of the files: the caller extracts into a staging folder and discards it."""
    top, seen, total, count, declared, raw = None, set(), 0, 0, None, None
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for m in tar:
                count += 1
                top, inner = _check_member(m, top, seen, count, limits)
                if m.isdir():
                    _mkdirs(dest, inner, m.name)
                    continue
                if raw is None and inner == MANIFEST:
                    total = _add_size(m, total, limits)
                    raw = _read_control(tar, m, MAX_CONTROL_BYTES[MANIFEST])
                    _write_member(dest, inner, m.name, io.BytesIO(raw))
                    continue
                if declared is None:  # the first file after the manifest, or the manifest is not first
                    declared = _declared_sizes(raw if raw is not None else _prepass_manifest(archive, limits),
                                               archive, dest, limits)
                _check_declared(m, inner, declared)
                total = _add_size(m, total, limits)
                _copy_member(tar, m, dest, inner)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _corrupt(archive, exc) from None
    except OSError as exc:
        if _no_space(exc):
            raise EdgeoptError(f"No space left while extracting {archive} to {dest.parent}.",
                               "Free some space, or point EDGEOPT_CACHE_DIR at a larger disk.") from None
        raise _corrupt(archive, exc) from None
    if top is None:
        raise IntegrityError(f"{archive} is an empty archive.", "Make bundles with `edgeopt bundle OUT -o NAME`.")
    if raw is None:
        raise IntegrityError(f"{archive} holds no {MANIFEST}: it is not an edgeopt bundle.",
                             "Make bundles with `edgeopt bundle OUT -o NAME.edgeopt.tar.gz`.")
    if declared is None:
        _declared_sizes(raw, archive, dest, limits)  # a manifest alone: still checked


def _add_size(m: tarfile.TarInfo, total: int, limits: Limits) -> int:
    total += m.size
    if total > limits.max_total_bytes:
        raise _refuse(m.name, f"the files add up to more than {limits.max_total_bytes} bytes")
    return total


MAX_CONTROL_BYTES = {MANIFEST: 16 << 20, SIGNATURE: 64 << 10}


def _check_member(m: tarfile.TarInfo, top: str | None, seen: set, count: int, limits: Limits) -> tuple[str, str]:
    """(top folder, path inside it) of a member that may be extracted, else the refusal."""
    if count > limits.max_members:
        raise _refuse(m.name, f"more than {limits.max_members} members")
    if len(m.name) > limits.max_name_chars:
        raise _refuse(m.name[:80] + "...", f"a name longer than {limits.max_name_chars} characters")
    parts = PurePosixPath(safe_relpath(m.name, "archive")).parts
    problem = _member_type_problem(m)
    if problem:
        raise _refuse(m.name, problem)
    top = top or parts[0]
    if parts[0] != top:
        raise _refuse(m.name, f"outside the bundle's top folder {top!r}")
    inner = "/".join(parts[1:])
    if inner in seen:
        raise _refuse(m.name, "a second member with the same name")
    seen.add(inner)
    if not m.isdir():
        if not inner:
            raise _refuse(m.name, "a file in place of the top folder")
        if m.size > limits.max_member_bytes:
            raise _refuse(m.name, f"{m.size} bytes, over the limit of {limits.max_member_bytes}")
    return top, inner


def _read_control(tar: tarfile.TarFile, m: tarfile.TarInfo, limit: int) -> bytes:
    if m.size > limit:
        raise _refuse(m.name, f"{m.size} bytes, over the limit of {limit} for {PurePosixPath(m.name).name}")
    return tar.extractfile(m).read()


def _prepass_manifest(archive: Path, limits: Limits) -> bytes:
    """The manifest of an archive whose first file is not the manifest: one pass over the headers (data is
    decompressed and skipped, nothing is written)."""
    top, seen, count, total = None, set(), 0, 0
    with tarfile.open(archive, mode="r|gz") as tar:
        for m in tar:
            count += 1
            top, inner = _check_member(m, top, seen, count, limits)
            if m.isdir():
                continue
            total = _add_size(m, total, limits)
            if inner == MANIFEST:
                return _read_control(tar, m, MAX_CONTROL_BYTES[MANIFEST])
    raise IntegrityError(f"{archive} holds no {MANIFEST}: it is not an edgeopt bundle.",
                         "Make bundles with `edgeopt bundle OUT -o NAME.edgeopt.tar.gz`.")


def _declared_sizes(raw: bytes, archive: Path, dest: Path, limits: Limits) -> dict[str, int]:
    """path -> bytes from the manifest's bundle.files: the only files extraction writes. Refuses a total over
    the limits, and one the disk cannot hold, before anything else is written."""
    data = load_json(raw, f"The manifest of {archive}", fix=GET_AGAIN)
    files = (data.get("bundle") or {}).get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("bundle"), dict):
        raise IntegrityError(f"{archive} holds a manifest without a 'bundle' section: not an edgeopt bundle.",
                             "Make bundles with `edgeopt bundle OUT -o NAME.edgeopt.tar.gz`.")
    if not isinstance(files, list) or not all(_file_record_ok(f) for f in files):
        raise IntegrityError(f"{archive}: the manifest's bundle.files is malformed.", GET_AGAIN)
    declared = {safe_relpath(f["path"], "manifest"): f["bytes"] for f in files}
    if len(declared) > limits.max_members:
        raise IntegrityError(f"{archive} declares {len(declared)} files, over the limit of {limits.max_members}.",
                             GET_AGAIN)
    total = sum(declared.values())
    if total > limits.max_total_bytes or any(b > limits.max_member_bytes for b in declared.values()):
        raise IntegrityError(f"{archive} declares {total} bytes of files, over the limits ({limits.max_member_bytes} "
                             f"per file, {limits.max_total_bytes} in all).", GET_AGAIN)
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(dest).free
        if total + (64 << 20) > free:
            from edgeopt.errors import DiskFullError

            raise DiskFullError(f"{archive} needs {total / 1e6:.1f} MB to extract; {free / 1e6:.1f} MB are free on "
                                f"the disk holding {dest.parent}.",
                                "Free some space, or point EDGEOPT_CACHE_DIR at a larger disk.")
    return declared


def _check_declared(m: tarfile.TarInfo, inner: str, declared: dict[str, int]) -> None:
    if inner in CONTROL_FILES:
        if m.size > MAX_CONTROL_BYTES[inner]:
            raise _refuse(m.name, f"{m.size} bytes, over the limit of {MAX_CONTROL_BYTES[inner]}")
        return
    if inner not in declared:
        raise _refuse(m.name, "a file the manifest does not list")
    if m.size != declared[inner]:
        raise _refuse(m.name, f"{m.size} bytes where the manifest declares {declared[inner]}")


def _corrupt(archive: Path, exc: Exception) -> IntegrityError:
    return IntegrityError(f"{archive} is truncated or not a gzip-compressed tar ({type(exc).__name__}: {exc}).",
                          "Copy the bundle again (an interrupted copy is the usual cause) and compare its sha256 "
                          "with the sender's.")


def _mkdirs(dest: Path, inner: str, name: str) -> None:
    try:
        (dest / inner).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _refuse(name, "a folder where another member is a file") from None


def _copy_member(tar: tarfile.TarFile, m: tarfile.TarInfo, dest: Path, inner: str) -> None:
    _write_member(dest, inner, m.name, tar.extractfile(m))


def _write_member(dest: Path, inner: str, name: str, src) -> None:
    path = dest / inner
    if "/" in inner:
        _mkdirs(dest, inner.rsplit("/", 1)[0], name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except (FileExistsError, IsADirectoryError, NotADirectoryError):
        raise _refuse(name, "a file where another member is a folder") from None
    with os.fdopen(fd, "wb") as f:
        shutil.copyfileobj(src, f, 1 << 20)


def default_cache_dir() -> Path:
    from edgeopt.core.isolation import cache_dir

    return cache_dir() / "bundles"


EXTRACT_WAIT_S = 1800.0  # how long a loader waits for another process extracting the same bundle


def extract_cached(archive: Path, limits: Limits = Limits(), cache_dir: str | Path | None = None,
                   fresh: bool = False) -> tuple[Path, bool, str]:
    """(folder, reused, sha256 of the archive): the archive extracted into ``cache_dir/<sha256>`` (once; later calls reuse it).

    One process at a time extracts a given bundle (a lock per archive digest; the others wait and then
    reuse it). Extraction goes into a staging folder renamed into place only when every member passed, so a
    folder with a manifest is always complete; leftovers of killed or refused extractions are removed."""
    from edgeopt.core.lock import file_lock, this_command

    base = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        digest = sha256_file(archive)
    except OSError as exc:
        raise UserInputError(f"Cannot read {archive}: {exc.strerror or exc}.", "Check the path.") from None
    key = digest[:32]
    final = base / key
    if not fresh and (final / MANIFEST).is_file():
        return final, True, digest  # complete: only a finished extraction is renamed into place
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / f".lock-{key}", f"extracting {archive} ({this_command()})", wait_s=EXTRACT_WAIT_S):
        clean_cache_leftovers(base, held=key)
        if not fresh and (final / MANIFEST).is_file():
            return final, True, digest  # another process extracted it while this one waited
        stage = Path(tempfile.mkdtemp(prefix=f".extract-{key}-", dir=base))
        try:
            safe_extract(archive, stage, limits)
            _restore_copies(stage, limits)
            # A damaged copy (fresh) or an incomplete leftover is swapped out, not deleted first: a process
            # still reading the old copy finds the same files in the new one.
            trash = final.with_name(f".trash-{key}-{os.getpid()}")
            if final.exists():
                os.replace(final, trash)
            os.rename(stage, final)
            shutil.rmtree(trash, ignore_errors=True)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    return final, False, digest


def _discard(folder: Path) -> None:
    """Remove a cached extraction: renamed aside first (one atomic step), then deleted."""
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def _discard_refused(root: Path, digest: str) -> None:
    """Remove the cached extraction of an archive whose content was refused."""
    from edgeopt.core.lock import file_lock

    key = digest[:32]
    if root.name != key:
        return
    with contextlib.suppress(EdgeoptError, OSError), file_lock(root.parent / f".lock-{key}", wait_s=60):
        _discard(root)


def clean_cache_leftovers(base: Path, held: str | None = None) -> list[str]:
    """Staging and trash folders of extractions that are not running any more (killed, or refused by an older
    version): each is removed when the lock of its bundle can be taken, i.e. no process extracts it now
    (``held``: the bundle whose lock this process holds)."""
    from edgeopt.core.lock import file_lock

    removed = []
    with contextlib.suppress(OSError):
        for p in base.iterdir():
            m = re.match(r"^\.(?:extract|trash)-([0-9a-f]{32})-", p.name)
            if not m:
                if p.name.startswith(".extract-") and time.time() - p.stat().st_mtime > 3600:
                    shutil.rmtree(p, ignore_errors=True)  # an older version's name, untouched for an hour
                    removed.append(p.name)
                continue
            try:
                with file_lock(base / f".lock-{m[1]}") if m[1] != held else contextlib.nullcontext():
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
            except EdgeoptError:
                continue  # that bundle is being extracted right now
    return removed


# ================================================================================================
# reading: the bundle, its manifest and its files
# ================================================================================================

@dataclass
class Bundle:
    """An opened bundle (or bundle folder, or OUT folder): where its files are and what its manifest says."""

    source: Path  # what was given
    root: Path  # the folder holding manifest.json
    manifest: dict
    kind: str  # "archive" | "bundle folder" | "OUT folder"
    signature: str = "not signed"
    signature_state: str = "unsigned"  # "valid" | "unchecked" (present, no key given) | "unsigned"
    files_checked: int = 0
    archive_sha256: str | None = None
    _refs: tuple | None = field(default=None, repr=False)

    @property
    def model(self) -> dict:
        return self.manifest.get("model") or {}

    @property
    def artifacts(self) -> list[dict]:
        return self.manifest["artifacts"]

    def artifact_dir(self, artifact_id: str) -> Path:
        return self.root / check_id(artifact_id, "artifact id", GET_AGAIN)

    def artifact_json(self, artifact_id: str) -> dict:
        from edgeopt.core.artifact import read_artifact_json

        return read_artifact_json(self.artifact_dir(artifact_id))

    def reference(self) -> tuple[list[dict], list[dict]]:
        """(feeds, outputs) stored for the self-test."""
        if self._refs is None:
            from edgeopt.core.reference import load_reference

            ref = self.manifest.get("reference") or {}
            path = self.root / safe_relpath(ref.get("path") or "", "manifest")
            try:
                self._refs = load_reference(path)
            except (OSError, ValueError, KeyError) as exc:
                raise IntegrityError(f"The reference data {ref.get('path')} cannot be read: {exc}.", GET_AGAIN) from None
        return self._refs


def signature_required(require: bool | None = None) -> bool:
    """``require`` when given, else the environment: EDGEOPT_REQUIRE_SIGNATURE=1 (true, yes, on) makes every
    bundle need a valid signature; 0 (false, no, off) or unset does not."""
    if require is not None:
        return bool(require)
    raw = os.environ.get(REQUIRE_ENV, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise UserInputError(f"{REQUIRE_ENV}={printable(raw, 40)!r} is not a yes/no value.",
                         f"Set {REQUIRE_ENV}=1 to require signed bundles, or unset it.")


def open_bundle(path: str | Path, public_key=None, check: bool = True, limits: Limits = Limits(),
                cache_dir: str | Path | None = None, require_signature: bool | None = None) -> Bundle:
    """Open a ``.edgeopt.tar.gz`` (safely extracted into the cache), a bundle folder or an OUT folder.

    With ``check``: manifest schema, the signature when ``public_key`` is given, every file's size and
    sha256, no unlisted files or links, and that the manifest, the artifact folders and the reference
    data belong together. Raises :class:`IntegrityError` naming what is wrong.

    ``require_signature`` (default: EDGEOPT_REQUIRE_SIGNATURE): refuse anything without a signature that
    ``public_key`` verifies (unsigned bundles, OUT folders, or no key to check with). Without it, a
    signature that is present but not checked (no key given) is recorded as such and warned about."""
    required = signature_required(require_signature)
    if required and public_key is None:
        raise UserInputError("A valid signature is required (--require-signature or EDGEOPT_REQUIRE_SIGNATURE), "
                             "but no public key was given to check it with.",
                             "Pass the signer's public key: --public-key KEY.pub (Python: public_key=...).")
    check = check or required  # a signature vouches for the files only through their checked hashes
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path} does not exist.",
                             "Give a NAME.edgeopt.tar.gz, a bundle folder or an OUT folder from `edgeopt build`.")
    if path.is_dir():
        b = _open_root(path, path, None, public_key, check, required)
    else:
        root, reused, digest = extract_cached(path, limits, cache_dir)
        for attempt in (1, 2):
            try:
                b = _open_root(path, root, "archive", public_key, check, required)
                break
            except IntegrityError as exc:
                if reused and attempt == 1:  # perhaps a damaged cached copy: extract again, check again
                    root, _, digest = extract_cached(path, limits, cache_dir, fresh=True)
                    continue
                if not isinstance(exc, SignatureError):  # a signature's verdict depends on the key given
                    _discard_refused(root, digest)  # a refused archive leaves nothing in the cache
                raise
        b.archive_sha256 = digest
    if b.signature_state == "unchecked":
        warnings.warn(f"{b.source}: {UNCHECKED_WARNING}", SignatureNotCheckedWarning, stacklevel=2)
    return b


def _open_root(source: Path, root: Path, kind: str | None, public_key, check: bool, required: bool = False) -> Bundle:
    raw = _read_manifest_bytes(source, root)
    data = load_json(raw, f"The manifest of {source}", fix=GET_AGAIN)
    if not isinstance(data, dict):
        raise IntegrityError(f"The manifest of {source} is not a JSON object.", GET_AGAIN)
    if kind is None:
        kind = "bundle folder" if "bundle" in data else "OUT folder"
    elif "bundle" not in data:
        raise IntegrityError(f"{source} holds a manifest without a 'bundle' section: not an edgeopt bundle.",
                             "Make bundles with `edgeopt bundle OUT -o NAME.edgeopt.tar.gz`.")
    b = Bundle(source=source, root=root, manifest=data, kind=kind)
    b.signature_state, b.signature = _check_signature(b, raw, public_key, required)
    try:
        _check_schema(b)
        if check:
            b.files_checked = _check_files(b)
            _check_consistency(b)
    except (KeyError, TypeError, AttributeError) as exc:  # a manifest with the right keys but wrong shapes
        raise IntegrityError(f"The manifest of {source} is malformed ({type(exc).__name__}: {exc}).",
                             GET_AGAIN) from None
    return b


def _read_manifest_bytes(source: Path, root: Path) -> bytes:
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise IntegrityError(f"{source} holds no {MANIFEST}: it is not an edgeopt bundle or OUT folder.",
                             "Make bundles with `edgeopt bundle OUT -o NAME.edgeopt.tar.gz`.")
    from edgeopt.core.untrusted import MAX_JSON_BYTES

    if path.stat().st_size > MAX_JSON_BYTES:
        raise IntegrityError(f"The {MANIFEST} of {source} is over the limit of {MAX_JSON_BYTES} bytes.", GET_AGAIN)
    return path.read_bytes()


def _check_signature(b: Bundle, raw: bytes, public_key, required: bool) -> tuple[str, str]:
    """(state, description): state is "valid", "unchecked" (present, no key given) or "unsigned"."""
    from edgeopt.ship.keys import check_signature, parse_signature_record

    sig = b.root / SIGNATURE
    present = b.kind != "OUT folder" and sig.is_file() and not sig.is_symlink()
    if public_key is None:
        return ("unchecked", "present, NOT CHECKED (no public key given)") if present else (
            "unsigned", "not signed")
    if not present:
        what = "an OUT folder, which is never signed" if b.kind == "OUT folder" else "not signed"
        raise SignatureError(f"{b.source} is {what}, and a "
                             + ("valid signature is required." if required else
                                "public key was given to check its signature."),
                             "Ask for a signed bundle (`edgeopt bundle OUT -o NAME --sign-key KEY`)"
                             + ("." if required else ", or leave out --public-key to accept an unsigned one."))
    try:
        if sig.stat().st_size > 64 << 10:
            raise IntegrityError(f"{b.source}: {SIGNATURE} is too large to be a signature record.", GET_AGAIN)
        rec = parse_signature_record(sig.read_bytes(), SIGNATURE)
        return "valid", f"valid (Ed25519 key {check_signature(raw, rec, public_key)})"
    except SignatureError:
        raise
    except IntegrityError as exc:
        raise SignatureError(exc.problem, exc.fix) from None


def _check_schema(b: Bundle) -> None:
    data = b.manifest
    try:
        validate(data)
    except IntegrityError as exc:
        raise IntegrityError(f"{b.source}: {exc.problem}", exc.fix) from None
    if b.kind == "OUT folder":
        if data.get("complete") is False:
            from edgeopt.core.manifest import check_consistent

            check_consistent(b.root, data)  # raises: a build into it stopped before it finished
        return
    sec = data.get("bundle")
    if not isinstance(sec, dict) or sec.get("schema") != BUNDLE_SCHEMA:
        have = sec.get("schema") if isinstance(sec, dict) else sec
        raise IntegrityError(f"{b.source} has bundle schema {have!r}; this edgeopt reads {BUNDLE_SCHEMA}.",
                             "Bundle it again with this edgeopt version, or install the edgeopt version that made "
                             f"it ({data.get('edgeopt_version')}).")
    files = sec.get("files")
    if not isinstance(files, list) or not all(_file_record_ok(f) for f in files):
        raise IntegrityError(f"{b.source}: the manifest's bundle.files is malformed.", GET_AGAIN)
    ids = [check_id(a["id"], "artifact id", GET_AGAIN) for a in data["artifacts"]]
    if sec.get("artifacts") != ids or not ids:
        raise IntegrityError(f"{b.source}: bundle.artifacts {sec.get('artifacts')} does not list the manifest's "
                             f"artifacts {ids}.", GET_AGAIN)


def _file_record_ok(f) -> bool:
    return (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
            and bool(_SHA_RE.match(f["sha256"])) and isinstance(f.get("bytes"), int) and f["bytes"] >= 0)


def expected_files(b: Bundle) -> dict[str, dict]:
    """path -> {path, sha256, bytes?}: the bundle's file list, or for an OUT folder the files of its
    "ok" artifacts and the reference."""
    data = b.manifest
    if b.kind != "OUT folder":
        return {safe_relpath(f["path"], "manifest"): f for f in data["bundle"]["files"]}
    out = {}
    ref = data.get("reference") or {}
    if ref.get("path"):
        out[safe_relpath(ref["path"], "manifest")] = {"path": ref["path"], "sha256": ref.get("sha256")}
    for f in _model_files(data):
        out[safe_relpath(f["path"], "manifest")] = f
    for a in data["artifacts"]:
        if a.get("status") == Status.OK:
            for f in a.get("files", []):
                out[safe_relpath(f["path"], "manifest")] = f
    return out


def _check_files(b: Bundle) -> int:
    files = expected_files(b)
    for rel, f in files.items():
        path = b.root / rel
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise IntegrityError(f"Bundle file {rel} is not a plain file.", GET_AGAIN)
        if not path.is_file():
            raise IntegrityError(f"Bundle file {rel} is missing (the manifest lists it).",
                                 "The bundle is incomplete or foreign. " + GET_AGAIN)
        size = path.stat().st_size
        if f.get("bytes") is not None and size != f["bytes"]:
            raise IntegrityError(f"Bundle file {rel} has {size} bytes; the manifest says {f['bytes']}: it was "
                                 "changed or truncated.", GET_AGAIN)
        if sha256_file(path) != f.get("sha256"):
            raise IntegrityError(f"Bundle file {rel} does not match its sha256 in the manifest: it was changed "
                                 "after bundling (tampered or damaged).", GET_AGAIN)
    if b.kind != "OUT folder":
        _check_no_extras(b, set(files))
    return len(files)


def _check_no_extras(b: Bundle, listed: set[str]) -> None:
    for dirpath, dirnames, filenames in os.walk(b.root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(b.root).as_posix()
            if path.is_symlink():
                raise IntegrityError(f"Bundle entry {printable(rel, 200)} is a symbolic link; bundles hold plain "
                                     "files only.", GET_AGAIN)
            if name in filenames and rel not in listed and rel not in CONTROL_FILES:
                raise IntegrityError(f"Bundle file {printable(rel, 200)} is not listed in the manifest: the bundle was changed "
                                     "or mixed with another one.", GET_AGAIN)


def _model_spec(model: dict):
    from edgeopt.core.spec import IOSpec

    return IOSpec.from_dict({"inputs": model.get("inputs") or [], "dims": model.get("dims") or {},
                             "outputs": model.get("outputs") or []})


def _check_consistency(b: Bundle) -> None:
    """The manifest, each artifact folder and the reference data describe the same model and build."""
    files = expected_files(b)
    ref = b.manifest.get("reference") or {}
    where = b.source
    if not ref.get("path") or safe_relpath(ref["path"], "manifest") not in files:
        raise IntegrityError(f"{where}: the reference data is not in the bundle.", "Bundle it again with `edgeopt bundle`.")
    if ref.get("sha256") != files[safe_relpath(ref["path"], "manifest")].get("sha256"):
        raise IntegrityError(f"{where}: the reference data's sha256 differs between the manifest's reference and "
                             "file sections (a manifest from another build).", GET_AGAIN)
    try:
        spec = _model_spec(b.model)
    except UserInputError as exc:
        raise IntegrityError(f"{where}: the manifest's model I/O spec is unusable: {exc.problem}", GET_AGAIN) from None
    for rec in b.artifacts:
        _check_artifact_record(b, rec, files, spec)
    _check_reference_fits(b, spec)


def _check_artifact_record(b: Bundle, rec: dict, files: dict, spec) -> None:
    from edgeopt.core.spec import IOSpec

    aid = rec["id"]
    if not isinstance(aid, str) or not _ID_RE.match(aid):
        raise IntegrityError(f"{b.source}: artifact id {aid!r} is not a plain folder name.", GET_AGAIN)
    if b.kind == "OUT folder" and rec.get("status") != Status.OK:
        return
    if rec.get("status") != Status.OK:
        raise IntegrityError(f"{b.source}: artifact {aid} has status {rec.get('status')!r}; bundles hold ok ones.", GET_AGAIN)
    for f in rec.get("files", []):
        rel = safe_relpath(f["path"], "manifest")
        if not rel.startswith(aid + "/") or files.get(rel, {}).get("sha256") != f.get("sha256"):
            raise IntegrityError(f"{b.source}: artifact {aid}'s file {rel} does not match the bundle's file list "
                                 "(a manifest from another build).", GET_AGAIN)
    art = b.artifact_json(aid)
    for key in ("id", "backend", "precision"):
        if art.get(key) != rec.get(key):
            raise IntegrityError(f"{aid}/artifact.json says {key} {art.get(key)!r}; the manifest says {rec.get(key)!r}: "
                                 "the artifact and the manifest come from different builds.", GET_AGAIN)
    if rec.get("key") and art.get("key") and rec["key"] != art["key"]:
        raise IntegrityError(f"{aid}/artifact.json has build key {art['key'][:12]}...; the manifest has "
                             f"{rec['key'][:12]}...: the artifact and the manifest come from different builds.", GET_AGAIN)
    try:
        same = IOSpec.from_dict(art["spec"]).to_dict() == spec.to_dict()
    except (KeyError, TypeError, UserInputError):
        same = False
    if not same:
        raise IntegrityError(f"{aid}/artifact.json describes other inputs/outputs than the manifest's model "
                             f"{b.model.get('name')!r}: the artifact is from another model.", GET_AGAIN)


def _check_reference_fits(b: Bundle, spec) -> None:
    feeds, outs = b.reference()
    if not feeds or len(feeds) != len(outs):
        raise IntegrityError(f"{b.source}: the reference data holds no complete samples.", GET_AGAIN)
    for i, feed in enumerate(feeds):
        try:
            spec.check_feed(feed, where=f"reference sample {i}")
        except UserInputError as exc:
            raise IntegrityError(f"{b.source}: the reference inputs do not fit model {b.model.get('name')!r} "
                                 f"({exc.problem}): they are from another model.", GET_AGAIN) from None
    if spec.outputs and any(set(o) - set(spec.outputs) for o in outs):
        raise IntegrityError(f"{b.source}: the reference outputs name outputs the model does not have.", GET_AGAIN)


# ================================================================================================
# this device: compatibility and the self-test
# ================================================================================================

@dataclass(frozen=True)
class Compatibility:
    artifact: str
    ok: bool
    reason: str | None = None
    fix: str | None = None
    backend_version: str | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"runs_here": self.ok, "reason": self.reason, "fix": self.fix,
                "backend_version": self.backend_version, "warnings": list(self.warnings)}


def installed_version(backend) -> str | None:
    """The backend's installed version; falls back to the module's ``__version__`` (onnxruntime-gpu,
    JetPack's tensorrt and other builds installed under another distribution name)."""
    v = backend.version()
    if v:
        return v
    with contextlib.suppress(Exception):
        import importlib

        return getattr(importlib.import_module(backend.module), "__version__", None)
    return None


def rebuild_fix(rec: dict, needs: str, verb: str = "Rebuild") -> str:
    return (f"{verb} {rec['id']} for this device: `edgeopt build RECIPE --target {rec['target']} --precision "
            f"{rec['precision']}` on {needs}, then `edgeopt bundle` again.")


def _other_target_fix(rec: dict, verb: str = "Rebuild") -> str:
    return (f"{verb} for a target this device has: `edgeopt targets` (run here) lists them; then `edgeopt build "
            f"RECIPE --target TARGET --precision {rec['precision']}` and `edgeopt bundle` again.")


def check_compatibility(b: Bundle, rec: dict) -> Compatibility:
    """Can ``rec`` run here: backend known and installed, device present, versions that can load it."""
    from edgeopt.backends import get_backend
    from edgeopt.core.targets import Target

    aid = rec["id"]
    art = b.artifact_json(aid)
    try:
        backend = get_backend(art["backend"])
    except UserInputError:
        return Compatibility(aid, False, f"this edgeopt {__version__} does not know the backend {art['backend']!r}",
                             "Upgrade edgeopt on this device (pip install -U edgeopt), or "
                             + _other_target_fix(rec, "rebuild"))
    target = Target.from_dict(art["target"])
    why = backend.unavailable_reason(target)
    if why and not backend.installed():
        return Compatibility(aid, False, why, f"Install it here (pip install 'edgeopt[{backend.extra}]'), or "
                             + _other_target_fix(rec, "rebuild"))
    if why:
        return Compatibility(aid, False, why, f"{aid} is for {target.description or target.name}. "
                             + _other_target_fix(rec))
    version = installed_version(backend)
    reason, warnings = backend.artifact_fits_here(aid, art.get("meta") or {}, art.get("backend_version"), version)
    fix = None
    if reason:
        fix = (f"Rebuild the artifact on this device: `edgeopt device-compile PACKAGE` here (or `edgeopt build RECIPE --target "
               f"{rec['target']} --precision {rec['precision']}` on it), then `edgeopt bundle` again. "
               f"{backend.rebuild_note}").rstrip()
    return Compatibility(aid, reason is None, reason, fix, version, tuple(warnings))


def _load_fix(b: Bundle, rec: dict) -> str:
    from edgeopt.backends import get_backend

    backend = get_backend(rec["backend"])
    here, built = installed_version(backend), b.artifact_json(rec["id"]).get("backend_version")
    if built and here and built != here:
        return (f"Install the version that built it (pip install '{backend.distribution}=={built}'), or "
                + rebuild_fix(rec, f"a machine with {backend.distribution} {here}, the version here", "rebuild"))
    return ("It does not load even with the version that built it, so the build itself is at fault (an opset or "
            "operator this runtime lacks, or a damaged file). " + rebuild_fix(rec, "the build host"))


def _short(exc: Exception, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tolerance_of(rec: dict):
    """The tolerance the build checked this artifact with (recipe overrides included), else the default."""
    from edgeopt.core.parity import Tolerance, tolerance_for

    import math

    parity = rec.get("parity")
    t = parity.get("tolerance") if isinstance(parity, dict) else None
    if isinstance(t, dict) and {"atol", "rtol", "min_cosine"} <= set(t):
        values = [t["atol"], t["rtol"], t["min_cosine"], t.get("max_map_drop")]
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                   for v in values):
            raise IntegrityError(f"Artifact {rec['id']}: the manifest's parity tolerance {printable(repr(t), 120)} "
                                 "is not made of finite numbers.", GET_AGAIN)
        return Tolerance(atol=t["atol"], rtol=t["rtol"], min_cosine=t["min_cosine"], max_map_drop=t.get("max_map_drop"))
    from edgeopt.core.parity import DEFAULT_TOLERANCES

    if rec["precision"] not in DEFAULT_TOLERANCES:
        raise IntegrityError(f"Artifact {rec['id']} has precision {printable(repr(rec['precision']), 40)}, which "
                             "this edgeopt does not know.", GET_AGAIN)
    return tolerance_for(rec["precision"])


def open_runner(b: Bundle, rec: dict, threads: int | None = None):
    """(activated runner, artifact.json) for ``rec``; :class:`IncompatibleError` when the backend installed
    here cannot load it (an opset, operator or IR version it does not know, a corrupt engine ...)."""
    from edgeopt.backends.artifact import open_artifact

    runner = None
    try:
        runner, art = open_artifact(b.artifact_dir(rec["id"]), threads=threads)
        runner.activate()
        return runner, art
    except ArtifactLoadError as exc:  # the backend's own error is the cause
        cause = exc.__cause__ or exc
        raise IncompatibleError(f"{rec['backend']} cannot load {rec['id']} on this device: {_short(cause)}",
                                _load_fix(b, rec)) from cause
    except EdgeoptError:
        raise
    except Exception as exc:  # noqa: BLE001 - each framework raises its own types
        if runner is not None:
            runner.close()
        raise IncompatibleError(f"{rec['backend']} cannot load {rec['id']} on this device: {_short(exc)}",
                                _load_fix(b, rec)) from exc


def run_self_test(b: Bundle, rec: dict, runner=None) -> dict:
    """Run the artifact on the stored reference inputs and compare with the stored reference outputs, with
    the tolerance of its precision. Raises :class:`ParityError` on a mismatch, :class:`IncompatibleError`
    when the backend cannot load or run it. ``runner``: an activated runner (left open), else one is opened
    and closed here."""
    from edgeopt.core.parity import parity

    feeds, refs = b.reference()
    own = runner is None
    if own:
        runner, _ = open_runner(b, rec)
    try:
        got = [runner.infer(f) for f in feeds]
    except EdgeoptError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise IncompatibleError(f"{rec['backend']} cannot run {rec['id']} on this device: {_short(exc)}",
                                _load_fix(b, rec)) from exc
    finally:
        if own:
            runner.close()
    kind = b.model.get("kind")
    rep = parity(refs, got, tolerance_of(rec), kind=kind if isinstance(kind, str) else "generic")
    summary = {k: rep.get(k) for k in ("passed", "max_abs", "cosine", "samples", "reason")} | {
        "tolerance": rep.get("tolerance")}
    judged = _task_self_test(b, rec, feeds, refs, got, rep)
    if judged is not None:
        return summary | {"passed": True, "task_metric": judged}
    if not rep["passed"]:
        raise ParityError(f"Self-test failed: {rec['id']} on this device differs from the reference outputs: "
                          f"{rep['reason']} (max abs {rep['max_abs']:.3g}, cosine {rep['cosine']:.6f}).",
                          rebuild_fix(rec, "this device (or a machine of the same kind)")
                          + " If the device is right and the difference acceptable, loosen the recipe's "
                          f"[parity.tolerances.{rec['precision']}].")
    return summary


def _table(value) -> dict:
    """A manifest section that should be a table: itself, or {} when it is anything else."""
    return value if isinstance(value, dict) else {}


def _task_self_test(b: Bundle, rec: dict, feeds, refs, got, rep) -> dict | None:
    """For artifacts the build judged by the task metric (int8, bf16: their tolerance has no absolute bound),
    recompute that metric on the real reference samples and hold it to the figure the build measured on the
    same samples (one sample's worth of slack for accuracy-like metrics, 0.005 for cosines). None when the
    artifact was not judged so (the parity tolerance applies). Missing or non-finite outputs always fail."""
    from edgeopt.core.tasks import Outputs, TaskConfig, describe, evaluate

    built = _table(rec.get("parity")).get("task_metric")
    start = _table(b.manifest.get("reference")).get("real_from")
    task = _table(b.manifest.get("task")).get("config")
    if not isinstance(built, dict) or not isinstance(task, dict) or tolerance_of(rec).atol is not None:
        return None
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start < len(feeds) \
            or not isinstance(built.get("value"), (int, float)):
        raise IntegrityError(f"{b.source}: the manifest's reference.real_from or task metric is malformed.", GET_AGAIN)
    reason = rep.get("reason") or ""
    if any(w in reason for w in ("missing", "non-finite", "shape")):
        raise ParityError(f"Self-test failed: {rec['id']} on this device is broken: {reason}.",
                          rebuild_fix(rec, "this device (or a machine of the same kind)"))
    sel = slice(start, None)
    try:
        config = TaskConfig.from_dict(task)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a manifest's task section is untrusted
        raise IntegrityError(f"{b.source}: the manifest's task config is malformed ({type(exc).__name__}).",
                             GET_AGAIN) from None
    here = evaluate(config, Outputs(feeds[sel], got[sel]), Outputs(feeds[sel], refs[sel]))
    n = max(int(here.get("samples") or 1), 1)
    slack = 0.005 if here.get("budget") == "cosine" else 1.0 / n
    result = {"metric": here["metric"], "here": here["value"], "built": built["value"], "samples": n}
    if here["value"] < built["value"] - slack - 1e-9:
        raise ParityError(f"Self-test failed: {rec['id']} on this device scores {describe(here)} on the {n} real "
                          f"reference samples; the build measured {describe({**here, 'value': built['value']})}.",
                          rebuild_fix(rec, "this device (or a machine of the same kind)"))
    return result


# ================================================================================================
# verify
# ================================================================================================

def select_records(b: Bundle, target: str | None) -> list[dict]:
    """The bundle's "ok" artifacts, or those of ``target`` (a target name or an artifact id)."""
    ok = [a for a in b.artifacts if a.get("status") == Status.OK]
    if target is None:
        if not ok:
            raise IntegrityError(f"{b.source} holds no artifact with status ok.", "Build and bundle one first.")
        return ok
    hits = [a for a in ok if target in (a["id"], a["target"])]
    if not hits:
        raise UserInputError(f"No artifact for {target!r} in {b.source}.",
                             "It holds: " + ", ".join(f"{a['id']} (target {a['target']})" for a in ok) + ".")
    return hits


def refuse_incompatible(b: Bundle, why: list[tuple[str, str | None, str | None]]) -> IncompatibleError:
    """The refusal when nothing can run here; ``why``: (artifact id, reason, fix) for each one tried."""
    lines = "; ".join(f"{aid}: {reason}" for aid, reason, _ in why)
    fixes = " ".join(dict.fromkeys(fix for _, _, fix in why if fix))
    return IncompatibleError(f"No artifact in {b.source} can run on this device: {lines}.", fixes or None)


def verify(bundle_path: str | Path, public_key=None, target: str | None = None, *, self_test: bool = True,
           limits: Limits = Limits(), cache_dir: str | Path | None = None,
           require_signature: bool | None = None) -> dict:
    """Check a bundle (or bundle/OUT folder) on this device and return a report.

    Refuses (raises) on: unsafe archive members, a manifest that is not an edgeopt manifest, a file whose
    sha256 differs (named), a foreign or incomplete bundle, a bad signature when ``public_key`` is given, no
    artifact (of ``target``) that can load here, or a self-test whose outputs differ from the reference.
    Artifacts for other devices are listed with why they cannot run here and what to rebuild.
    """
    b = open_bundle(bundle_path, public_key=public_key, check=True, limits=limits, cache_dir=cache_dir,
                    require_signature=require_signature)
    rows = [_verify_one(b, rec, self_test) for rec in select_records(b, target)]
    if not any(r["runs_here"] for r in rows):
        raise refuse_incompatible(b, [(r["id"], r["reason"], r["fix"]) for r in rows])
    return report(b, rows)


def _verify_one(b: Bundle, rec: dict, self_test: bool) -> dict:
    c = check_compatibility(b, rec)
    row = {"id": rec["id"], "target": rec["target"], "backend": rec["backend"], "precision": rec["precision"],
           **c.to_dict(), "self_test": None}
    if not c.ok:
        return row
    try:
        runner, _ = open_runner(b, rec)
    except IncompatibleError as exc:
        return {**row, "runs_here": False, "reason": exc.problem, "fix": exc.fix}
    try:
        if self_test:
            row["self_test"] = run_self_test(b, rec, runner)
    finally:
        runner.close()
    return row


def report(b: Bundle, rows: list[dict]) -> dict:
    sec = b.manifest.get("bundle") or {}
    return {
        "ok": True,
        "bundle": str(b.source),
        "kind": b.kind,
        "archive_sha256": b.archive_sha256,
        "root": str(b.root),
        "name": sec.get("name"),
        "model": b.model.get("name"),
        "model_sha256": b.model.get("sha256"),
        "built": b.manifest.get("created"),
        "built_with": b.manifest.get("edgeopt_version"),
        "files_checked": b.files_checked,
        "signature": b.signature,
        "signature_state": b.signature_state,
        "signature_checked": b.signature_state == "valid",
        "artifacts": rows,
        "runs_here": [r["id"] for r in rows if r["runs_here"]],
    }


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


__all__ = ["BUNDLE_SCHEMA", "Bundle", "Compatibility", "IncompatibleError", "Limits", "SignatureNotCheckedWarning",
           "bundle", "check_compatibility", "extract_cached", "open_bundle", "open_runner", "run_self_test",
           "safe_extract", "select_records", "signature_required", "verify"]
