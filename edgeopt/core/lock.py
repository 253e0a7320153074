"""Exclusive locks between edgeopt processes: one writer per OUT folder, one extractor per cached bundle.

``fcntl.flock`` on a small lock file: the kernel releases the lock when its holder exits, kill -9 included,
so a lock is never stale; the file only tells a refused process who holds it (pid, command, start time).
Standard library only (device-safe). Where ``fcntl`` does not exist (Windows) locking is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from edgeopt.errors import BusyError

OUT_LOCK = ".edgeopt.lock"


def _fcntl():
    try:
        import fcntl

        return fcntl
    except ImportError:  # pragma: no cover - Windows
        return None


def holder_of(path: Path) -> dict:
    """What the lock file says about its holder ({} when unreadable or not yet written)."""
    try:
        data = json.loads(Path(path).read_text()[:4096] or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_holder(info: dict) -> str:
    from edgeopt.core.untrusted import printable

    if not info.get("pid"):
        return "another edgeopt process (it has just started)"
    cmd = printable(info.get("command") or "edgeopt", 160)
    since = f", since {info['started']}" if info.get("started") else ""
    host = f" on {printable(info['host'], 60)}" if info.get("host") else ""
    return f"pid {info['pid']}{host}: {cmd}{since}"


@contextlib.contextmanager
def file_lock(path: Path, command: str | None = None, wait_s: float = 0.0, busy=None):
    """Hold an exclusive lock on ``path`` (created when missing) for the block. A lock held elsewhere is
    waited for up to ``wait_s`` seconds, then refused: ``busy(holder info)`` gives the error to raise
    (default: a :class:`BusyError` naming the file and its holder). ``command`` (what this process does) is
    written into the file for whoever is refused."""
    fcntl = _fcntl()
    path = Path(path)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    info = holder_of(path)
                    raise (busy(info) if busy else BusyError(
                        f"{path} is locked by {describe_holder(info)}.",
                        "Wait for that process to finish, then try again.")) from None
                time.sleep(0.05)
        if command is not None:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        if held and command is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the lock


def held_by(path: Path) -> dict | None:
    """The holder's info when another process holds the lock on ``path`` now, else None (a probe: the
    lock is taken shared and released at once)."""
    fcntl = _fcntl()
    if fcntl is None or not Path(path).is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        info = holder_of(path)
        return None if info.get("pid") == os.getpid() else info  # this process holds it (profile reads under it)
    finally:
        os.close(fd)


def this_command() -> str:
    """This process's command line, shortened, for the lock file."""
    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    text = " ".join(argv)
    return text if len(text) <= 300 else text[:297] + "..."


def out_lock(out: Path, what: str):
    """The exclusive writer's lock on an OUT folder (created when missing) for ``what`` (build, profile ...).
    A second writer is refused with :class:`BusyError` naming the holder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def busy(info: dict) -> BusyError:
        return BusyError(f"{out} is being written by another edgeopt process ({describe_holder(info)}); "
                         f"this {what} would overwrite its results.",
                         "Wait for that process to finish (or stop it), then run this command again; to work in "
                         "parallel, give each run its own -o/--output folder.")

    # A short wait: readers probe the lock for a moment (held_by), a writer must not mistake that for a writer.
    return file_lock(out / OUT_LOCK, f"{what} ({this_command()})", wait_s=2.0, busy=busy)
