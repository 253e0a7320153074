"""Where the data folders shipped with edgeopt live: the repository checkout, or inside the wheel."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # edgeopt/


def import_tomllib():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 on JetPack 6
        import tomli as tomllib
    return tomllib


def data_dir(name: str) -> Path:
    """``targets`` or ``calibration``: the repo's top-level folder in a checkout, else the wheel's copy."""
    for candidate in (PACKAGE_DIR.parent / name, PACKAGE_DIR / "_data" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgeopt's {name}/ folder is missing from this installation")


def load_toml(path: Path) -> dict:
    from edgeopt.errors import UserInputError

    tomllib = import_tomllib()
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserInputError(f"File not found: {path}.", "Check the path.") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"{path} is not valid TOML: {exc}.", "Fix the syntax at the position named.") from None
