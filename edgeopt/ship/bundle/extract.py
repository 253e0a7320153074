"""Reading an archive safely: member by member into a staging folder, each checked (no absolute paths, no
``..``, no links, no devices, only the files and sizes the manifest declares), renamed into the extraction
cache only when all passed; ``tarfile.extractall`` is never used.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path, PurePosixPath
from edgeopt.errors import EdgeoptError, IntegrityError, UserInputError
from edgeopt.core.fsutil import sha256_file
from edgeopt.core.manifest import MANIFEST
from edgeopt.core.untrusted import load_json
from edgeopt.ship.bundle.format import (
    CONTROL_FILES, GET_AGAIN, Limits, MAX_CONTROL_BYTES, file_record_ok, safe_relpath,
)


MAX_TAR_HEADER_BYTES = 64 << 10  # one PAX or GNU long-name header (edgeopt writes a few hundred bytes)
MAX_TAR_HEADER_CHAIN = 8  # extended headers before one member (a chain recurses in tarfile)
_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
             tarfile.SOLARIS_XHDTYPE)


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose extended headers (PAX, GNU long names) are bounded before ``tarfile`` reads them
    into memory: it reads a PAX or long-name header whole, whatever size the header claims (a 3.4 MB archive
    with a 600 MB PAX comment cost 1.8 GB and was accepted)."""

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED:
            if self.size > MAX_TAR_HEADER_BYTES:
                raise _refuse(self.name[:80], f"an extended tar header of {self.size} bytes, over the limit "
                              f"MAX_TAR_HEADER_BYTES = {MAX_TAR_HEADER_BYTES}")
            chain = getattr(tarfile_, "_edgeopt_chain", 0) + 1
            if chain > MAX_TAR_HEADER_CHAIN:
                raise _refuse(self.name[:80], f"more than MAX_TAR_HEADER_CHAIN = {MAX_TAR_HEADER_CHAIN} extended "
                              "headers before one member")
            tarfile_._edgeopt_chain = chain
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise _refuse(self.name[:80], "a sparse file")
        else:
            tarfile_._edgeopt_chain = 0
        return super()._proc_member(tarfile_)


def open_tar(archive: Path):
    """``archive`` opened for one streaming read, extended headers bounded (:class:`BoundedTarInfo`)."""
    return tarfile.open(archive, mode="r|gz", tarinfo=BoundedTarInfo)


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
        with open_tar(archive) as tar:
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
    with open_tar(archive) as tar:
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
    if not isinstance(files, list) or not all(file_record_ok(f) for f in files):
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


def discard_refused(root: Path, digest: str) -> None:
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
