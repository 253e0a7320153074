"""Device targets: one TOML file each in ``targets/``, parsed once into :class:`Target` objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.errors import UserInputError
from edgeopt.core.resources import data_dir, load_toml

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str
    device: str
    precisions: tuple[str, ...]
    options: dict = field(default_factory=dict)  # backend options (threads, workspace, DLA, hints ...)
    hardware: dict = field(default_factory=dict)  # what the device is (JetPack, TensorRT, memory, DLA cores)
    path: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "backend": self.backend,
                "device": self.device, "precisions": list(self.precisions), "options": dict(self.options),
                "hardware": dict(self.hardware)}

    @classmethod
    def from_dict(cls, data: dict, path: str = "") -> "Target":
        if not isinstance(data, dict):
            raise UserInputError(f"Target {path or ''} is a {type(data).__name__}, not a table.",
                                 "Every target names name, backend, device and precisions.")
        where = path or str(data.get("name", "target"))[:80]
        for key in ("name", "backend", "device", "precisions"):
            if key not in data:
                raise UserInputError(f"Target file {where} lacks the key {key!r}.",
                                     "Every target names name, backend, device and precisions.")
        wrong = [k for k in ("name", "backend", "device") if not isinstance(data[k], str) or not data[k]]
        wrong += [k for k in ("description",) if not isinstance(data.get(k, ""), str)]
        wrong += [k for k in ("options", "hardware") if not isinstance(data.get(k, {}), dict)]
        if not isinstance(data["precisions"], list) or not all(isinstance(p, str) for p in data["precisions"]):
            wrong.append("precisions")
        if wrong:
            raise UserInputError(f"Target {where}: {', '.join(wrong)} of the wrong type.",
                                 "name, backend and device are strings, precisions a list of strings, options and "
                                 "hardware tables.")
        bad = [p for p in data["precisions"] if p not in PRECISIONS]
        if bad:
            raise UserInputError(f"Target {where}: unknown precisions {bad}.", f"Use any of {list(PRECISIONS)}.")
        return cls(name=data["name"], description=data.get("description", ""), backend=data["backend"],
                   device=data["device"], precisions=tuple(data["precisions"]),
                   options=dict(data.get("options", {})), hardware=dict(data.get("hardware", {})), path=path)


def load_targets(folder: Path | None = None) -> dict[str, Target]:
    folder = Path(folder) if folder else data_dir("targets")
    out = {}
    for p in sorted(folder.glob("*.toml")):
        t = Target.from_dict(load_toml(p), str(p))
        out[t.name] = t
    return out


def get_target(name: str, extra: dict[str, Target] | None = None) -> Target:
    known = {**load_targets(), **(extra or {})}
    if name.endswith(".toml") and Path(name).is_file():
        return Target.from_dict(load_toml(Path(name)), name)
    if name not in known:
        raise UserInputError(f"Unknown target {name!r}.",
                             f"Use one of: {', '.join(sorted(known))} (see `edgeopt targets`), or a path to a target TOML file.")
    return known[name]


def check_precision(target: Target, precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserInputError(f"Unknown precision {precision!r}.", f"Use one of: {', '.join(PRECISIONS)}.")
    if precision not in target.precisions:
        raise UserInputError(f"Target {target.name!r} does not offer {precision}.",
                             f"It offers: {', '.join(target.precisions)}.")



