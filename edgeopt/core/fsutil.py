"""Atomic writes and content hashes. Nothing here is half-written: temp file or folder, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

STAGING_PREFIX = ".staging-"
DISK_FULL_MARGIN = 1 << 20  # less free space than this after a failed write: the disk is full


def enospc_in(exc: BaseException | None) -> OSError | None:
    """The OSError(ENOSPC/EDQUOT) in ``exc``'s chain of causes, if any."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read ("does not exist", "is a folder", "is a device ..."), or None."""
    import stat

    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "does not exist" + (" (a link to nothing)" if Path(path).is_symlink() else "")
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        link = ", reached through a link" if Path(path).is_symlink() else ""
        return f"is not a regular file (a device, FIFO or socket{link})"
    return None


def unwritable_error(exc: BaseException | None):
    """A UserInputError for an OSError (in ``exc``'s chain) saying a place cannot be written: a read-only file
    system (EROFS) or no permission (EACCES, EPERM); else None."""
    import errno

    from edgeopt.errors import UserInputError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = exc.filename if exc.filename is not None else "a file"
            why = "the file system is read-only" if exc.errno == errno.EROFS else "permission denied"
            return UserInputError(
                f"Cannot write {where}: {why}.",
                "Give an output folder (-o/--output) on a writable disk, or make it writable; the extraction and "
                "build caches go where EDGEOPT_CACHE_DIR points (set it to a writable folder).")
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_error(exc: BaseException, where: Path):
    """A DiskFullError for ``exc`` when it (or the state of the disk holding ``where``) says the disk is full,
    else None. Backends written in C++ report a full disk as a generic error ("iostream error", "Protobuf
    serialization failed"), so the free space is checked too; call this before removing partial files."""
    from edgeopt.errors import DiskFullError, EdgeoptError

    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return None
    cause = enospc_in(exc)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    if cause is None and (free is None or free >= DISK_FULL_MARGIN):
        return None
    what = str(cause) if cause is not None else (
        exc.problem if isinstance(exc, EdgeoptError) else f"{type(exc).__name__}: {exc}")
    left = f"{free / 1e6:.1f} MB free" if free is not None else "free space unknown"
    return DiskFullError(f"No space left on device: the disk holding {where} is full ({left}); writing failed "
                         f"with: {what}",
                         "Free space on that disk or choose another -o/--output folder, then run the same command "
                         "again (finished stages are reused; nothing half-written was kept).")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def onnx_digest(path: Path) -> str:
    """sha256 of an ONNX file together with its external data files (``NAME.data*`` beside it)."""
    path = Path(path)
    extra = sorted(p for p in path.parent.glob(f"{path.name}.data*") if p.is_file())
    if not extra:
        return sha256_file(path)
    return sha256_json([sha256_file(path), *[(p.name, sha256_file(p)) for p in extra]])


def sha256_json(obj) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def sha256_tree(paths) -> str:
    """One hash over several files (name and content), in a stable order."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` all or nothing: a temporary file beside it, fsynced, then renamed into place.
    ``mode``: the file's permissions (e.g. 0o600 for a private key; set before any byte is written); default
    0o666 less the umask, as ``open`` would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if enospc_in(exc) is not None:
            raise disk_full_error(exc, path.parent) from exc
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def staged_dir(final: Path):
    """Yield a hidden staging folder beside ``final``; on success it replaces ``final`` in one rename.

    On any exception (Ctrl-C included) the staging folder is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{final.name}-", dir=final.parent))
    os.chmod(stage, 0o777 & ~_umask())
    try:
        yield stage
        for p in stage.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists():
            trash = final.parent / f"{STAGING_PREFIX}old-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(stage, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(stage, final)
        _fsync_dir(final.parent)
    except BaseException as exc:
        full = disk_full_error(exc, final.parent)  # before the partial files are removed
        shutil.rmtree(stage, ignore_errors=True)
        if full is not None and full is not exc:
            raise full from exc
        raise


def clean_stale_staging(folder: Path) -> list[str]:
    """Remove staging folders and temp files an interrupted run (kill -9) left behind."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(STAGING_PREFIX) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


@contextlib.contextmanager
def working_dir(path: Path):
    """chdir into ``path`` for the block (contextlib.chdir exists only from Python 3.11)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def file_record(path: Path, root: Path) -> dict:
    path = Path(path)
    return {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def file_records(folder: Path, root: Path) -> list[dict]:
    return [file_record(p, root) for p in sorted(Path(folder).rglob("*")) if p.is_file()]
