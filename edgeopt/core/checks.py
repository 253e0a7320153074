"""Checks of untrusted values (a recipe's, a target's options), and the one way to declare a config key.

A config section is a frozen dataclass; each of its recipe keys is a field declared with :func:`key`: its
default, the check of a raw value (type, range, length: a clear :class:`UserInputError` naming the key, never a
traceback) and one line of documentation. The allowed keys of a section, its schema (:func:`table_of`) and its
reference (:func:`describe`) are all read from those fields: a key is declared once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from edgeopt.errors import UserInputError

MAX_INT = 2**31 - 1  # sizes, counts
MAX_SEED = 2**32 - 1
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 255  # one path component, one name
MAX_EXACT = 2**53  # integers a TOML float holds exactly

Check = Callable[[object, str], None]


def bad_value(where: str, value, want: str) -> UserInputError:
    from edgeopt.core.untrusted import printable

    shown = printable(repr(value), 80)
    return UserInputError(f"Recipe {where} = {shown}: {want}.", f"Give {where} {want}.")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int, hi: int) -> Check:
    def check(v, where):
        if not _is_int(v) or not lo <= v <= hi:
            raise bad_value(where, v, f"an integer from {lo} to {hi}")
    return check


def number(lo: float | None = None, hi: float | None = None, above: bool = False) -> Check:
    """A finite number in [lo, hi] (``above``: lo excluded)."""
    def check(v, where):
        ok = _is_num(v) and math.isfinite(v)
        ok = ok and (lo is None or (v > lo if above else v >= lo)) and (hi is None or v <= hi)
        if not ok:
            rng = (f" {'above' if above else 'from'} {lo:g}" if lo is not None else "") + (
                f" {'and at most' if above or lo is None else 'to'} {hi:g}" if hi is not None else "")
            raise bad_value(where, v, f"a finite number{rng}")
    return check


def boolean(v, where):
    if not isinstance(v, bool):
        raise bad_value(where, v, "true or false")


def text(max_len: int = MAX_NAME_CHARS) -> Check:
    def check(v, where):
        if not isinstance(v, str) or not v or len(v) > max_len or not v.isprintable():
            raise bad_value(where, v, f"a non-empty string of printable characters, at most {max_len} long")
    return check


def choice(*values) -> Check:
    """One of ``values`` (exactly)."""
    def check(v, where):
        if isinstance(v, bool) or v not in values:
            raise bad_value(where, v, "one of " + ", ".join(repr(x) for x in values))
    return check


def path_text(v, where):
    """A file, folder or ``module:function`` the OS can take: bounded length, no NUL or control characters."""
    if not isinstance(v, str) or not v.strip():
        raise bad_value(where, v, "a non-empty path")
    if len(v) > MAX_PATH_CHARS or any(len(part) > MAX_NAME_CHARS for part in v.replace("\\", "/").split("/")):
        raise UserInputError(f"Recipe {where} is a path of {len(v)} characters with a name longer than "
                             f"{MAX_NAME_CHARS} (or over {MAX_PATH_CHARS} in all): no file system holds it.",
                             f"Give {where} a real path (each folder or file name at most {MAX_NAME_CHARS} "
                             "characters).")
    if not v.isprintable():
        raise bad_value(where, v, "a path without control characters")


def list_of(item: Check, lo: int = 0, hi: int = 1024) -> Check:
    def check(v, where):
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            raise bad_value(where, v, f"a list of {lo} to {hi} items" if lo else f"a list of at most {hi} items")
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
    return check


def either(*checks: Check, want: str) -> Check:
    def check(v, where):
        for c in checks:
            try:
                c(v, where)
                return
            except UserInputError:
                continue
        raise bad_value(where, v, want)
    return check


def table(keys: dict[str, Check], section: str | None = None) -> Check:
    """A TOML table whose known keys pass their checks (dashes in keys read as underscores)."""
    def check(v, where):
        if not isinstance(v, dict):
            name = section or where
            raise UserInputError(f"Recipe {name} is {kind_of(v)}, not a table.",
                                 f"Write it as a table: [{name.strip('[]')}] with its keys on the lines below.")
        for k, x in v.items():
            c = keys.get(str(k).replace("-", "_"))
            if c is not None and x is not None:  # None: not given (recipes made in Python)
                base = section or where
                c(x, f"{base} {k}" if base.endswith("]") else f"{base}.{k}")
    return check


def map_of(value: Check, section: str) -> Check:
    """A table of named tables (``[dims.batch]``, ``[parity.tolerances.fp32]``)."""
    def check(v, where):
        if not isinstance(v, dict):
            raise UserInputError(f"Recipe [{section}] is {kind_of(v)}, not a table.",
                                 f"Write [{section}.NAME] tables.")
        for k, x in v.items():
            text(64)(k, f"[{section}] name")
            value(x, f"[{section}.{k}]")
    return check


def kind_of(v) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}.get(
        type(v), type(v).__name__)


def OPTION_VALUE(v, where):  # noqa: N802 - a check, named like the other schema constants
    """A target option: true/false, a finite number or a short text (tables and lists are not options)."""
    if isinstance(v, bool) or (isinstance(v, int) and abs(v) <= MAX_INT):
        return
    if isinstance(v, float) and math.isfinite(v):
        return
    if isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS and v.isprintable():
        return
    raise bad_value(where, v, "true/false, a finite number or a short text")


# ---- declaring keys ----------------------------------------------------------------------------------------------
_MISSING = dataclasses.MISSING


def key(default=_MISSING, *, doc: str, check: Check | None = None, factory=_MISSING):
    """A recipe key of a config dataclass: ``default`` (or ``factory``), one line of ``doc``, and the ``check`` of
    its raw value (None: the dataclass checks it itself, in ``__post_init__``)."""
    meta = {"check": check, "doc": doc}
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def keys_of(cls) -> dict[str, dataclasses.Field]:
    """The recipe keys of a config dataclass (fields declared with :func:`key`), in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls) if "doc" in f.metadata}


def table_of(cls, section: str | None = None, extra: dict[str, Check] | None = None) -> Check:
    """The schema of a section: every key's declared check (``extra``: nested tables the class builds itself)."""
    checks = {n: f.metadata["check"] for n, f in keys_of(cls).items() if f.metadata["check"] is not None}
    return table({**checks, **(extra or {})}, section)


def describe(cls) -> list[tuple[str, object, str]]:
    """(key, default, doc) of every recipe key of ``cls``: the section's reference, from its declaration."""
    out = []
    for name, f in keys_of(cls).items():
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else _MISSING)
        out.append((name, None if default is _MISSING else default, f.metadata["doc"]))
    return out


def reject_unknown(section: str, data, cls, extra: tuple[str, ...] = ()) -> None:
    """Refuse keys ``cls`` does not declare, naming the closest declared one."""
    import difflib

    allowed = (*keys_of(cls), *extra)
    unknown = sorted(set(map(str, data)) - set(allowed))
    if unknown:
        near = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, allowed, n=1))}
        hint = "".join(f" Did you mean {m!r} for {k!r}?" for k, m in near.items())
        raise UserInputError(f"Recipe section [{section}] has unknown keys {unknown}.{hint}",
                             f"Allowed keys: {', '.join(sorted(allowed))}.")


# ---- the checks several sections share -----------------------------------------------------------------------------
SIZE = integer(1, MAX_INT)
COUNT = integer(1, 10_000_000)
SEED = integer(0, MAX_SEED)
PAIR = list_of(integer(1, 65536), 2, 2)
PER_CHANNEL = either(number(), list_of(number(), 1, 4), want="a number or a list of 1 to 4 finite numbers")
