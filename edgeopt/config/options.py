"""Declared target options: each backend lists the ``[options]`` keys it reads, with a check and a doc line.

A target file's ``[options]`` and a recipe's ``[options.<backend>]`` / ``[options.<target>]`` are checked against
the declaration of the target's backend (:attr:`edgeopt.backends.base.Backend.options`): an unknown key is an
error naming the closest declared one (``perfomance_hint`` -> ``performance_hint``), a value of the wrong type or
range an error naming the key. A key is declared once, beside the code that reads it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from edgeopt.errors import UserInputError
from edgeopt.core.checks import OPTION_VALUE


@dataclass(frozen=True)
class Option:
    """One ``[options]`` key a backend reads: its name, the check of its value, what it does (``doc``)."""

    name: str
    doc: str
    check: Callable[[object, str], None] = OPTION_VALUE


def closest(name: str, names: Iterable[str]) -> str | None:
    """The declared name closest to a misspelt ``name`` (difflib), or None when none is close."""
    found = difflib.get_close_matches(str(name), sorted(names), n=1, cutoff=0.6)
    return found[0] if found else None


def check_options(values: Mapping, declared: Iterable[Option], where: str, owner: str) -> None:
    """Raise :class:`UserInputError` for the first key of ``values`` ``declared`` does not list, or whose value
    fails its check. ``where`` names the table (``[options.openvino]``), ``owner`` the backend."""
    by_name = {o.name: o for o in declared}
    for key, value in values.items():
        option = by_name.get(str(key))
        if option is None:
            near = closest(key, by_name)
            hint = f" Did you mean {near!r}?" if near else ""
            valid = ", ".join(sorted(by_name)) or "none"
            raise UserInputError(f"{where} has an unknown key {str(key)[:64]!r}: the {owner} backend reads no such "
                                 f"option.{hint}",
                                 f"Use one of the {owner} options: {valid}.")
        OPTION_VALUE(value, f"{where} {key}")
        option.check(value, f"{where} {key}")
