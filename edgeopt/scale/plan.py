"""A sweep file: models x targets x precisions (and recipe overrides), expanded into build jobs.

```toml
name = "nightly"
targets = ["ort-cpu", "openvino-cpu"]   # the matrix every model gets (default: the recipe's own)
precisions = ["fp32", "int8"]           # one job per target x precision

[[models]]
recipe = "example"                      # a recipe file (relative to this file), or "example" (the built-in)
name = "digits"                         # default: the recipe's [model] name

[[models]]
recipe = "example"
name = "digits-strict"
overrides = { compression = { max_drop = 0.5 } }   # recipe keys merged over the recipe's own

[select]                                # budgets for `select`, applied per model (as a recipe's [select])
max_drop = 1.0

[retries]
max = 2                                 # Ray retries of a job whose worker died

[[farm]]
board = "jetson-orin-nano"              # a Ray resource that a board node offers (edgeopt farm join --board ...)
models = ["digits"]                     # default: every model
batches = [1]
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.config.budgets import Budgets
from edgeopt.core.fsutil import sha256_json
from edgeopt.core.resources import load_toml
from edgeopt.errors import UserInputError

TOP = {"name", "targets", "precisions", "models", "select", "retries", "farm", "profile"}
MODEL_KEYS = {"recipe", "name", "targets", "precisions", "overrides"}
FARM_KEYS = {"board", "models", "batches", "duration_s"}
# What decides the exported ONNX: jobs whose recipes agree on these share one export.
EXPORT_SECTIONS = ("model", "inputs", "dims", "export", "pruning")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_JOBS = 1000


@dataclass(frozen=True)
class ModelEntry:
    name: str
    recipe: dict  # the merged recipe table
    base_dir: str  # where the recipe's relative paths start
    recipe_path: str
    targets: tuple[str, ...]
    precisions: tuple[str, ...]

    @property
    def export_key(self) -> str:
        return sha256_json({k: self.recipe.get(k) for k in EXPORT_SECTIONS})[:16]


@dataclass(frozen=True)
class Job:
    model: str
    target: str
    precision: str

    @property
    def id(self) -> str:
        return f"{self.model}/{self.target}-{self.precision}"


@dataclass(frozen=True)
class FarmEntry:
    board: str
    models: tuple[str, ...]
    batches: tuple[int, ...] = (1,)
    duration_s: float = 1.5


@dataclass(frozen=True)
class Sweep:
    name: str
    models: tuple[ModelEntry, ...]
    jobs: tuple[Job, ...]
    budgets: Budgets | None = None
    retries: int = 2
    profile: bool = True
    farm: tuple[FarmEntry, ...] = field(default_factory=tuple)

    def model(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)


def _unknown(where: str, data: dict, allowed: set) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise UserInputError(f"Sweep file {where} has unknown keys {extra}.", f"Allowed: {', '.join(sorted(allowed))}.")


def _names(value, where: str, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and NAME.match(v) for v in value):
        raise UserInputError(f"Sweep file {where} {what} must be a list of names, not {value!r}.",
                             f'Write e.g. {what} = ["ort-cpu", "openvino-cpu"].')
    return tuple(value)


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` table by table (lists and values replace)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _recipe_table(ref: str, here: Path) -> tuple[dict, Path, str]:
    if ref == "example":
        from edgeopt.core.resources import data_dir
        from edgeopt.example import example_dict

        return example_dict(), data_dir("calibration"), ""
    path = (here / ref) if not Path(ref).is_absolute() else Path(ref)
    if not path.is_file():
        raise UserInputError(f"Sweep file: recipe {ref} not found (looked at {path}).",
                             'Give a recipe file relative to the sweep file, or recipe = "example".')
    return load_toml(path), path.resolve().parent, str(path)


def _model(i: int, data: dict, here: Path, targets, precisions) -> ModelEntry:
    from edgeopt.config.recipe import recipe_from_dict

    where = f"[[models]] #{i + 1}"
    if not isinstance(data, dict) or not isinstance(data.get("recipe"), str):
        raise UserInputError(f"Sweep file {where} has no recipe.", 'Add recipe = "recipe.toml" (or "example").')
    _unknown(where, data, MODEL_KEYS)
    table, base, path = _recipe_table(data["recipe"], here)
    over = data.get("overrides") or {}
    if not isinstance(over, dict):
        raise UserInputError(f"Sweep file {where} overrides must be a table.", "Write overrides = { section = {...} }.")
    table = merge(table, over)
    recipe = recipe_from_dict(table, base, path)  # every recipe error now, before any job starts
    name = data.get("name") or recipe.model.name
    if not isinstance(name, str) or not NAME.match(name):
        raise UserInputError(f"Sweep file {where}: model name {name!r} is not a plain name.",
                             "Use letters, digits, '.', '_' and '-' (it names a folder).")
    return ModelEntry(name, table, str(base), path,
                      _names(data.get("targets"), where, "targets") or targets or tuple(recipe.targets),
                      _names(data.get("precisions"), where, "precisions") or precisions or tuple(recipe.precisions))


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file: every recipe is loaded (and refused) here, before anything runs."""
    path = Path(path)
    data = load_toml(path)
    _unknown("(top level)", data, TOP)
    here = path.resolve().parent
    targets = _names(data.get("targets"), "(top level)", "targets")
    precisions = _names(data.get("precisions"), "(top level)", "precisions")
    raw = data.get("models")
    if not isinstance(raw, list) or not raw:
        raise UserInputError("The sweep file lists no models.", 'Add [[models]] tables with recipe = "...".')
    models = tuple(_model(i, m, here, targets, precisions) for i, m in enumerate(raw))
    dup = sorted({m.name for m in models if [x.name for x in models].count(m.name) > 1})
    if dup:
        raise UserInputError(f"Sweep file: model names {dup} are used twice.", "Give each [[models]] its own name.")
    for m in models:
        if not m.targets or not m.precisions:
            raise UserInputError(f"Sweep file: model {m.name} has no targets or precisions.",
                                 "Set targets = [...] and precisions = [...] at the top or in its [[models]] table.")
    jobs = tuple(Job(m.name, t, p) for m in models for t in m.targets for p in m.precisions)
    if len(jobs) > MAX_JOBS:
        raise UserInputError(f"The sweep expands to {len(jobs)} jobs (at most {MAX_JOBS}).", "Split the sweep file.")
    retries = (data.get("retries") or {}).get("max", 2)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 10:
        raise UserInputError(f"Sweep file [retries] max must be 0..10, not {retries!r}.", "Write [retries] max = 2.")
    profile = data.get("profile", True)
    if not isinstance(profile, bool):
        raise UserInputError("Sweep file: profile must be true or false.", "Write profile = false.")
    names = {m.name for m in models}
    return Sweep(str(data.get("name") or path.stem), models, jobs,
                 Budgets.from_dict(data["select"], "[select]") if data.get("select") else None,
                 retries, profile, tuple(_farm(i, f, names) for i, f in enumerate(data.get("farm") or [])))


def _farm(i: int, data: dict, names: set) -> FarmEntry:
    where = f"[[farm]] #{i + 1}"
    if not isinstance(data, dict) or not isinstance(data.get("board"), str) or not NAME.match(data["board"]):
        raise UserInputError(f"Sweep file {where} has no board.", 'Add board = "jetson-orin-nano" (a Ray resource).')
    _unknown(where, data, FARM_KEYS)
    models = _names(data.get("models"), where, "models") or tuple(sorted(names))
    missing = sorted(set(models) - names)
    if missing:
        raise UserInputError(f"Sweep file {where} names models {missing} the sweep does not build.",
                             f"Known models: {', '.join(sorted(names))}.")
    batches = data.get("batches", [1])
    if not isinstance(batches, list) or not all(isinstance(b, int) and 1 <= b <= 1024 for b in batches):
        raise UserInputError(f"Sweep file {where} batches must be a list of batch sizes.", "Write batches = [1, 8].")
    dur = data.get("duration_s", 1.5)
    if not isinstance(dur, (int, float)) or not 0 < dur <= 600:
        raise UserInputError(f"Sweep file {where} duration_s must be in (0, 600].", "Write duration_s = 1.5.")
    return FarmEntry(data["board"], models, tuple(batches), float(dur))
