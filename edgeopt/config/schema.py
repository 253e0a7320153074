"""The shape of a recipe before it is parsed: types, ranges and lengths of every known key.

A recipe is untrusted input. :func:`check_recipe` walks the TOML data once and turns a value of the wrong
type, out of range, too long or not finite into one :class:`UserInputError` naming the key
(``[profile] warmup = -10``), so the typed objects built from it never see a surprise and no mutation
of a valid recipe ends in a traceback, a hang or a huge allocation. Unknown keys are left to the sections
(which list the allowed ones); semantic checks (kinds, precisions, dims order) stay with the dataclasses.
"""

from __future__ import annotations

import math
from typing import Callable

from edgeopt.errors import UserInputError

MAX_INT = 2**31 - 1  # sizes, counts
MAX_SEED = 2**32 - 1
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 255  # one path component, one name
MAX_EXACT = 2**53  # integers a TOML float holds exactly

Check = Callable[[object, str], None]


def _bad(where: str, value, want: str) -> UserInputError:
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
            raise _bad(where, v, f"an integer from {lo} to {hi}")
    return check


def number(lo: float | None = None, hi: float | None = None, above: bool = False) -> Check:
    """A finite number in [lo, hi] (``above``: lo excluded)."""
    def check(v, where):
        ok = _is_num(v) and math.isfinite(v)
        ok = ok and (lo is None or (v > lo if above else v >= lo)) and (hi is None or v <= hi)
        if not ok:
            rng = (f" {'above' if above else 'from'} {lo:g}" if lo is not None else "") + (
                f" {'and at most' if above or lo is None else 'to'} {hi:g}" if hi is not None else "")
            raise _bad(where, v, f"a finite number{rng}")
    return check


def boolean(v, where):
    if not isinstance(v, bool):
        raise _bad(where, v, "true or false")


def text(max_len: int = MAX_NAME_CHARS) -> Check:
    def check(v, where):
        if not isinstance(v, str) or not v or len(v) > max_len or not v.isprintable():
            raise _bad(where, v, f"a non-empty string of printable characters, at most {max_len} long")
    return check


def path_text(v, where):
    """A file, folder or ``module:function`` the OS can take: bounded length, no NUL or control characters."""
    if not isinstance(v, str) or not v.strip():
        raise _bad(where, v, "a non-empty path")
    if len(v) > MAX_PATH_CHARS or any(len(part) > MAX_NAME_CHARS for part in v.replace("\\", "/").split("/")):
        raise UserInputError(f"Recipe {where} is a path of {len(v)} characters with a name longer than "
                             f"{MAX_NAME_CHARS} (or over {MAX_PATH_CHARS} in all): no file system holds it.",
                             f"Give {where} a real path (each folder or file name at most {MAX_NAME_CHARS} "
                             "characters).")
    if not v.isprintable():
        raise _bad(where, v, "a path without control characters")


def list_of(item: Check, lo: int = 0, hi: int = 1024) -> Check:
    def check(v, where):
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            raise _bad(where, v, f"a list of {lo} to {hi} items" if lo else f"a list of at most {hi} items")
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
        raise _bad(where, v, want)
    return check


def table(keys: dict[str, Check], section: str | None = None) -> Check:
    """A TOML table whose known keys pass their checks (dashes in keys read as underscores)."""
    def check(v, where):
        if not isinstance(v, dict):
            name = section or where
            raise UserInputError(f"Recipe {name} is {_kind(v)}, not a table.",
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
            raise UserInputError(f"Recipe [{section}] is {_kind(v)}, not a table.",
                                 f"Write [{section}.NAME] tables.")
        for k, x in v.items():
            text(64)(k, f"[{section}] name")
            value(x, f"[{section}.{k}]")
    return check


def _kind(v) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}.get(
        type(v), type(v).__name__)


def _sub(keys: dict[str, Check]) -> Check:
    """A table nested under a section, named by its caller's path."""
    return table(keys)


SIZE = integer(1, MAX_INT)
COUNT = integer(1, 10_000_000)
SEED = integer(0, MAX_SEED)
PAIR = list_of(integer(1, 65536), 2, 2)
PER_CHANNEL = either(number(), list_of(number(), 1, 4), want="a number or a list of 1 to 4 finite numbers")

PREPROCESS = _sub({
    "resize": either(integer(1, 65536), PAIR, want="an integer or [height, width] from 1 to 65536"),
    "center_crop": either(integer(1, 65536), PAIR, want="an integer or [height, width] from 1 to 65536"),
    "mean": PER_CHANNEL, "std": PER_CHANNEL, "scale": number(0, None, above=True),
    "channel_order": text(8), "layout": text(8), "dtype": text(16), "interpolation": text(16),
})
_DATA_TABLE = _sub({
    "source": path_text, "size": either(COUNT, text(8), want='a sample count or "all"'), "seed": SEED,
    "min_samples": COUNT, "labels": text(), "input": text(), "preprocess": PREPROCESS, "tokenizer": path_text,
    "max_length": integer(1, 1_000_000),
})


def DATA(v, where):  # noqa: N802 - a check, named like the other schema constants
    """A data section: a table with source = PATH, or the path alone."""
    if isinstance(v, str):
        path_text(v, where)
    elif isinstance(v, dict):
        _DATA_TABLE(v, where)
    else:
        raise _bad(where, v, "a table with source = PATH (or a path)")
TOLERANCE = _sub({"atol": number(0, 1e6), "rtol": number(0, 1e6), "min_cosine": number(-1, 1),
                  "max_map_drop": number(0, 100)})
INPUT = _sub({
    "name": text(), "dtype": text(16),
    "shape": list_of(either(integer(1, MAX_INT), text(64), want="a size from 1 or a dynamic axis name"), 0, 16),
    "range": list_of(number(-1e9, 1e9), 2, 2),
})

RECIPE = {
    "targets": list_of(text(), 0, 64),
    "precisions": list_of(text(16), 0, 8),
    "outputs": list_of(text(), 0, 4096),
    "model": table({
        "source": path_text, "checkpoint": path_text, "name": text(), "kind": text(32), "allow_pickle": boolean,
        "outputs": list_of(text(), 0, 4096), "call": text(32),
        "labels": list_of(either(text(1000), number(), want="a label (text)"), 0, 1_000_000),
    }, "[model]"),
    "inputs": list_of(INPUT, 1, 64),
    "dims": map_of(_sub({"min": SIZE, "opt": SIZE, "max": SIZE, "multiple_of": integer(1, 1 << 20)}), "dims"),
    "export": table({"opset": integer(1, 100), "exporter": text(16), "slim": boolean}, "[export]"),
    "parity": table({"samples": integer(1, 1000), "seed": SEED,
                     "tolerances": map_of(TOLERANCE, "parity.tolerances")}, "[parity]"),
    "profile": table({
        "batches": list_of(integer(1, 65536), 1, 64), "warmup": integer(0, 100_000),
        "warmup_s": number(0, 600), "iterations": integer(1, 1_000_000), "duration_s": number(0, 3600, above=True),
        "min_iterations": integer(1, 1_000_000), "threads": integer(0, 1024), "baseline": boolean,
    }, "[profile]"),
    "calibration": DATA, "evaluation": DATA,
    "compression": table({
        "max_drop": number(0, 100), "drop_type": text(16), "min_cosine": number(-1, 1),
        "candidates": list_of(text(64), 0, 32), "accuracy_control": boolean, "subset_size": integer(1, 1_000_000),
        "preset": text(16), "timing_s": number(0, 600), "float_head": text(8),
        "ac_max_iterations": integer(1, 1_000_000), "ac_ranking_subset": integer(1, 1_000_000),
        "float_nodes": list_of(text(1024), 0, 4096), "reduce_range": text(8),
        "mixed_precision": boolean, "mixed_time_s": number(0, 86400, above=True),
    }, "[compression]"),
    "pruning": table({
        "method": text(16), "ratio": number(0, 1), "macs_target": number(0, 1), "round_to": integer(1, 4096),
        "ignored": list_of(text(1000), 0, 100_000), "bn_adaptation": boolean, "max_drop": number(0, 100),
        "finetune": _sub({"source": path_text, "epochs": integer(0, 100_000), "lr": number(0, 100),
                          "weight_decay": number(0, 100), "batch_size": integer(1, 1 << 20),
                          "freeze_backbone": boolean, "seed": SEED, "preprocess": PREPROCESS}),
    }, "[pruning]"),
    "select": table({
        "max_drop": number(-100, 100), "p99_ms": number(0, 1e9, above=True), "target": text(),
        "max_size_mb": number(0, 1e9, above=True), "min_cosine": number(-1, 1), "batch": integer(1, 65536),
    }, "[select]"),
    "preprocess": PREPROCESS,
}
def OPTION_VALUE(v, where):  # noqa: N802 - a check, named like the other schema constants
    """A target option: true/false, a finite number or a short text (tables and lists are not options)."""
    if isinstance(v, bool) or (isinstance(v, int) and abs(v) <= MAX_INT):
        return
    if isinstance(v, float) and math.isfinite(v):
        return
    if isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS and v.isprintable():
        return
    raise _bad(where, v, "true/false, a finite number or a short text")


def _options_table(v, where):
    if not isinstance(v, dict):
        raise UserInputError(f"Recipe {where} is {_kind(v)}, not a table.",
                             "Write [options.BACKEND] or [options.TARGET] tables, e.g. [options.tensorrt] nms = \"plugin\".")
    for k, x in v.items():
        text(64)(k, f"{where} key")
        OPTION_VALUE(x, f"{where} {k}")


RECIPE["options"] = map_of(_options_table, "options")
TOP_LEVEL_VALUES = ("targets", "precisions", "outputs", "inputs")  # the rest are [sections]


def check_recipe(data) -> None:
    """Raise :class:`UserInputError` for the first value of a known key with the wrong type or range."""
    if not isinstance(data, dict):
        raise UserInputError(f"The recipe is {_kind(data)}, not a table of sections.", "Write a TOML recipe.")
    for key, value in data.items():
        check = RECIPE.get(key)
        if check is not None and value is not None:
            check(value, key if key in TOP_LEVEL_VALUES else f"[{key}]")


# ---- memory ------------------------------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes this machine can still allocate (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_inputs_fit(spec, where: str = "the inputs") -> None:
    """Refuse dynamic-axis ranges whose largest inputs cannot be allocated here: the profiler and the
    reference samples allocate inputs up to each axis's max (every axis at its max, every input at once),
    and the backends need several times that for activations. The estimate comes before any allocation."""
    import numpy as np

    total, parts = 0, []
    for t in spec.inputs:
        shape = spec.shape_of(t, which="max")
        n = math.prod(shape) * np.dtype(t.np_dtype).itemsize
        total += n
        parts.append(f"{t.name} {list(shape)}")
    avail = available_memory()
    limit = min(avail // 4, 64 << 30) if avail else 16 << 30  # inputs are a fraction of what a run holds
    if total > limit:
        axes = ", ".join(f"{n} max {d.max}" for n, d in spec.dims.items())
        raise UserInputError(
            f"At their largest declared sizes {where} take {_gb(total)} ({'; '.join(parts)}); this machine has "
            f"{_gb(avail) if avail else 'an unknown amount'} available and a run needs several times the "
            "inputs' size.",
            f"Lower the dynamic axes' max ({axes or 'none declared'}) or the fixed sizes in the input shapes.")


def _gb(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"
