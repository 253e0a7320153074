"""The trust boundary: reading what a bundle, an artifact folder or a manifest says without trusting it.

Standard library only (device-safe). Every function here turns hostile input into a clear
:class:`~edgeopt.errors.IntegrityError`, never a traceback:

- :func:`load_json`: JSON of bounded size and nesting depth (a deeply nested file is an error, not a
  ``RecursionError`` later on);
- :func:`confined`: a file name from metadata, resolved inside its folder (no absolute path, no ``..``, no
  link that leads out);
- :func:`check_settings`: backend runtime settings from an allow-list of keys and values (no paths);
- :func:`printable`: a string safe to print (control characters and line breaks shown escaped).
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Callable

from edgeopt.errors import IntegrityError

MAX_JSON_BYTES = 16 << 20  # a manifest of thousands of artifacts is a few MB
MAX_JSON_DEPTH = 64  # edgeopt writes JSON about 8 levels deep
MAX_NAME_CHARS = 255
REFETCH = "Do not use this copy: get it again from its source (or rebuild it with `edgeopt build`)."


def printable(text, limit: int | None = None) -> str:
    """``text`` with control characters, line/paragraph separators and bidi controls shown as escapes
    (``\\n``, ``\\x1b``, ``\\u202e``): a name from a bundle cannot start a new output line or drive the terminal."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "..."
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in s)


def printable_lines(text) -> str:
    """Like :func:`printable`, but keeps plain line breaks (for our own multi-line messages); every other
    control character (escape sequences, carriage returns) is shown escaped."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def _depth(obj) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > deepest:
                deepest = d
                if deepest > MAX_JSON_DEPTH:
                    return deepest
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def load_json(source: Path | bytes | str, what: str, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH, fix: str = REFETCH):
    """Parse JSON from a file or bytes, refusing files over ``max_bytes``, nesting deeper than ``max_depth``,
    invalid UTF-8/JSON, NaN/Infinity constants and duplicate keys, each as one :class:`IntegrityError`."""
    if isinstance(source, (bytes, bytearray, str)):
        raw = bytes(source, "utf-8") if isinstance(source, str) else bytes(source)
        if len(raw) > max_bytes:
            raise IntegrityError(f"{what} is {len(raw)} bytes, over the limit of {max_bytes}.", fix)
    else:
        try:
            with open(source, "rb") as f:
                raw = f.read(max_bytes + 1)
        except OSError as exc:
            raise IntegrityError(f"{what} cannot be read: {exc.strerror or exc}.", fix) from None
        if len(raw) > max_bytes:
            raise IntegrityError(f"{what} is over the limit of {max_bytes} bytes.", fix)

    def no_constant(name):
        raise ValueError(f"the non-JSON constant {name}")

    def no_duplicates(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"the key {printable(k, 80)!r} twice in one object")
            out[k] = v
        return out

    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=no_constant, object_pairs_hook=no_duplicates)
    except RecursionError:
        raise IntegrityError(f"{what} is nested deeper than {max_depth} levels.", fix) from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise IntegrityError(f"{what} is not valid JSON: {printable(exc, 200)}.", fix) from None
    if _depth(data) > max_depth:
        raise IntegrityError(f"{what} is nested deeper than {max_depth} levels.", fix)
    return data


def relpath_problem(name) -> str | None:
    """Why ``name`` is not a plain relative POSIX path inside its folder, or None."""
    if not isinstance(name, str) or not name:
        return "an empty path" if isinstance(name, str) or name is None else f"a {type(name).__name__}, not a path"
    if len(name) > 4 * MAX_NAME_CHARS:
        return f"a path longer than {4 * MAX_NAME_CHARS} characters"
    if "\x00" in name:
        return "a NUL byte in the path"
    if not name.isprintable():
        return "a control character (line break, escape ...) in the path"
    if "\\" in name:
        return "a backslash in the path"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "a '..' component that leads out of the folder"
    if any(len(p) > MAX_NAME_CHARS for p in parts):
        return f"a name longer than {MAX_NAME_CHARS} characters"
    return None


def confined(folder: Path, name, what: str, fix: str = REFETCH) -> Path:
    """``folder/name`` for a file name read from metadata: relative, no ``..``, and (links resolved) still
    inside ``folder``; else :class:`IntegrityError` naming ``what``."""
    problem = relpath_problem(name)
    if problem is None:
        path = Path(folder) / name
        try:
            inside = path.resolve().is_relative_to(Path(folder).resolve())
        except (OSError, RuntimeError):  # a link loop
            inside = False
        if inside:
            return path
        problem = "a path that leads out of the folder through a link"
    raise IntegrityError(f"Refused {what} {printable(name, 200)!r}: {problem}.", fix)


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(value, what: str, fix: str = REFETCH) -> str:
    """An artifact id (or other name used as a folder name): letters, digits, ``._-``, at most 128 chars."""
    if not isinstance(value, str) or not _ID_RE.match(value) or value in (".", ".."):
        raise IntegrityError(f"Refused {what} {printable(value, 200)!r}: not a plain folder name "
                             "(letters, digits, '.', '_', '-').", fix)
    return value


# ---- runtime settings ---------------------------------------------------------------------------

Check = Callable[[object], bool]


def one_of(*values) -> Check:
    def ok(v):
        return isinstance(v, str) and v in values

    ok.describe = f"one of {list(values)}"
    return ok


def int_in(lo: int, hi: int) -> Check:
    def ok(v):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    ok.describe = f"an integer in {lo}..{hi}"
    return ok


def check_settings(settings, allowed: dict[str, Check], what: str, fix: str = REFETCH) -> dict:
    """``settings`` (a dict read from an artifact) when every key is in ``allowed`` and every value passes its
    check; else :class:`IntegrityError` naming the key. Paths and other unlisted keys never get through."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise IntegrityError(f"{what} is a {type(settings).__name__}, not a table of settings.", fix)
    for key, value in settings.items():
        if key not in allowed:
            raise IntegrityError(f"Refused {what} {printable(key, 80)!r}: not a setting edgeopt writes "
                                 f"(allowed: {', '.join(sorted(allowed))}).", fix)
        if not allowed[key](value):
            raise IntegrityError(f"Refused {what} {key} = {printable(repr(value), 80)}: it must be "
                                 f"{getattr(allowed[key], 'describe', 'a known value')}.", fix)
    return dict(settings)


# ---- threads and streams ------------------------------------------------------------------------


def machine_threads() -> int:
    """The CPUs this process may run on (its affinity): the most threads, and the most streams, a setting
    read from an artifact or bundle is given. A bundle asking for 4096 ONNX Runtime threads on a 2-core
    device would otherwise spawn them all (a load average past 1,300, a 1 s self-test taking minutes)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def cap_threads(value, what: str = "threads") -> int:
    """``value`` (an int, 0 meaning the framework's default) capped at :func:`machine_threads`; the cap is
    logged, never an error (a bundle built on a bigger machine still runs)."""
    n = int(value or 0)
    limit = machine_threads()
    if n > limit:
        import logging

        logging.getLogger("edgeopt").info("%s = %d capped to %d, the CPUs this process may use.", what, n, limit)
        return limit
    return n


# ---- links ---------------------------------------------------------------------------------------


def link_leaving(folder: Path, root: Path, max_entries: int = 100_000) -> str | None:
    """The first entry under ``folder`` (``folder`` itself included) that is a symbolic link leading out of
    ``root`` (or a link loop), as a path relative to ``root``; None when there is none. Links that stay
    inside ``root`` are left to the caller's own checks."""
    import os

    root = Path(root)
    try:
        real_root = root.resolve()
    except (OSError, RuntimeError):
        return "."

    def leaves(p: Path) -> bool:
        try:
            return not p.resolve().is_relative_to(real_root)
        except (OSError, RuntimeError):  # a loop
            return True

    folder = Path(folder)
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    if leaves(folder):
        return rel(folder)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            seen += 1
            if seen > max_entries:
                return rel(Path(dirpath) / name) + " (and more entries than can be checked)"
            p = Path(dirpath) / name
            if p.is_symlink() and leaves(p):
                return rel(p)
    return None
