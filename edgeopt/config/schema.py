"""The shape of a recipe before it is parsed: types, ranges and lengths of every known key.

A recipe is untrusted input. :func:`check_recipe` walks the TOML data once and turns a value of the wrong
type, out of range, too long or not finite into one :class:`UserInputError` naming the key
(``[profile] warmup = -10``), so the typed objects built from it never see a surprise and no mutation
of a valid recipe ends in a traceback, a hang or a huge allocation. A section's checks are declared on its
dataclass's fields (:func:`edgeopt.core.checks.key`); unknown keys are left to the sections (which allow the
keys they declare); semantic checks (kinds, precisions, dims order) stay with the dataclasses.
"""

from __future__ import annotations

import math

from edgeopt.errors import UserInputError

from edgeopt.core.checks import (
    MAX_INT, OPTION_VALUE, SIZE, Check, bad_value, either, integer, kind_of, list_of, map_of, number, path_text, table,
    table_of, text,
)
from edgeopt.core.parity import Tolerance


def _sub(keys: dict[str, Check]) -> Check:
    """A table nested under a section, named by its caller's path."""
    return table(keys)


TOLERANCE = table_of(Tolerance)
INPUT = _sub({
    "name": text(), "dtype": text(16),
    "shape": list_of(either(integer(1, MAX_INT), text(64), want="a size from 1 or a dynamic axis name"), 0, 16),
    "range": list_of(number(-1e9, 1e9), 2, 2),
})
DIM = _sub({"min": SIZE, "opt": SIZE, "max": SIZE, "multiple_of": integer(1, 1 << 20)})


def data_section(data_table: Check) -> Check:
    """A data section: a table with source = PATH, or the path alone."""
    def check(v, where):
        if isinstance(v, str):
            path_text(v, where)
        elif isinstance(v, dict):
            data_table(v, where)
        else:
            raise bad_value(where, v, "a table with source = PATH (or a path)")
    return check


def _options_table(v, where):
    if not isinstance(v, dict):
        raise UserInputError(f"Recipe {where} is {kind_of(v)}, not a table.",
                             "Write [options.BACKEND] or [options.TARGET] tables, e.g. [options.tensorrt] nms = \"plugin\".")
    for k, x in v.items():
        text(64)(k, f"{where} key")
        OPTION_VALUE(x, f"{where} {k}")


OPTIONS = map_of(_options_table, "options")  # each backend checks its own keys (edgeopt.backends.check_options)
TOP_LEVEL = {  # the recipe's values before the first [section]; the sections are config dataclasses (recipe.py)
    "targets": list_of(text(), 0, 64),
    "precisions": list_of(text(16), 0, 8),
    "outputs": list_of(text(), 0, 4096),
    "inputs": list_of(INPUT, 1, 64),
}


def check_recipe(data, sections: dict[str, Check]) -> None:
    """Raise :class:`UserInputError` for the first value of a known key with the wrong type or range
    (``sections``: the check of each [section], derived from its dataclass)."""
    if not isinstance(data, dict):
        raise UserInputError(f"The recipe is {kind_of(data)}, not a table of sections.", "Write a TOML recipe.")
    for key, value in data.items():
        check = TOP_LEVEL.get(key) or sections.get(key)
        if check is not None and value is not None:
            check(value, key if key in TOP_LEVEL else f"[{key}]")


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
