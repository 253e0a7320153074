"""Where the data folders shipped with edgeopt live: the repository checkout, or inside the wheel."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # edgeopt/
MAX_TOML_BYTES = 16 << 20  # a recipe or target file (named limit, README "Limits")


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
            raw = f.read(MAX_TOML_BYTES + 1)
        if len(raw) > MAX_TOML_BYTES:
            raise UserInputError(f"{path} is over the limit MAX_TOML_BYTES = {MAX_TOML_BYTES} bytes.",
                                 "A recipe or target file is a few KB: check that the right file was given.")
        return tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"File not found: {path}.", "Check the path.") from None
    except IsADirectoryError:
        raise UserInputError(f"{path} is a folder, not a TOML file.", "Give the recipe file's path.") from None
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path} is not UTF-8 text (byte {exc.start}).", "Save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"{path} is not valid TOML: {exc}.", "Fix the syntax at the position named.") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise UserInputError(f"{path} nests arrays or tables too deeply to read.",
                             "Write the recipe with flat values (a recipe nests a few levels at most).") from None
    except OSError as exc:
        raise UserInputError(f"{path} cannot be read: {exc.strerror or exc}.", "Check the path and its "
                             "permissions.") from None
