"""What a device package is (its file names and schema, what it is made from, the preflight's refusal) and
reading one, on either side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgeopt import __version__
from edgeopt.errors import (
    CompileError,
    IntegrityError,
    UserInputError,
)
from edgeopt.core.fsutil import (
    onnx_digest,
    sha256_file,
    sha256_json,
)
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.core.tasks import TaskConfig

if TYPE_CHECKING:  # the data package is imported where data is loaded
    from edgeopt.data.dataset import Dataset


PACKAGE_JSON = "package.json"


PACKAGE_SCHEMA = "edgeopt.device-package/1"


ONNX_DIR = "onnx"


PACKAGE_ONNX = f"{ONNX_DIR}/model.onnx"


PLAN_JSON = "build_plan.json"


LINT_JSON = "lint.json"


REFERENCE_NPZ = "reference.npz"


INSTRUCTIONS = "INSTRUCTIONS.md"


REPORT_JSON = "device_report.json"


class PackageLintError(CompileError):
    """The TensorRT preflight found errors: the package is not written (the device would reject it)."""

    def __init__(self, report):
        errs = report.errors
        names = "; ".join(f"{f.code}" + (f" [{f.node}]" if f.node else "") for f in errs[:6])
        more = f" and {len(errs) - 6} more" if len(errs) > 6 else ""
        super().__init__(f"The TensorRT {report.tensorrt} preflight found {len(errs)} error(s): {names}{more}.",
                         "Fix each finding (see the manifest's lint findings, or run `edgeopt lint "
                         f"{report.onnx_path} --target {report.target}`), then build again.")
        self.report = report


class Int8Judging(Protocol):
    """What the INT8 stage judges a package's Q/DQ form with (``edgeopt.compress.judging.Judging``, which the device
    side never imports): handed on to the backend's packaging as it is; its FP32 figure is part of the package's
    key (a package judged on another evaluation set is not reused)."""

    fp32_metric: dict | None


@dataclass(frozen=True, kw_only=True)
class PackageSource:
    """Everything a package is made from: the one input the package writer reads (see
    :func:`write_package_files`); the build fills it from its stages' results, ``package_from_out`` from an OUT
    folder."""

    target: Target
    precision: str
    spec: IOSpec
    model_kind: str
    onnx_path: Path
    reference_path: Path
    tolerance: dict  # the precision's parity tolerance (Tolerance.to_dict())
    calibration: Dataset | None = None  # the calibration set: an INT8 package's Q/DQ ONNX is calibrated on it
    compression: dict = field(default_factory=dict)  # [compression] as plain data (a CompressionConfig is converted)
    model: dict = field(default_factory=dict)  # name, source, sha256, kind
    why_not_here: str | None = None  # why the artifact is not built on this machine
    task: TaskConfig = field(default_factory=TaskConfig)  # the resolved task (None: the default)
    judging: Int8Judging | None = None  # how the INT8 loop scores an INT8 form here (None: not INT8)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the inputs once, here
        set_(self, "onnx_path", Path(self.onnx_path))
        set_(self, "reference_path", Path(self.reference_path))
        set_(self, "compression", _plain(self.compression))
        set_(self, "model", dict(self.model or {}))
        if self.task is None:
            set_(self, "task", TaskConfig())

    @property
    def detector(self) -> bool:
        return self.task.type == "detection" or (self.task.type == "auto" and self.model_kind == "detector")

    @property
    def id(self) -> str:
        from edgeopt.core.artifact import artifact_id

        return artifact_id(self.target.name, self.precision)

    def key(self) -> str:
        """What the package depends on: same key, same package (a rebuild reuses it)."""
        if not self.onnx_path.is_file():
            raise UserInputError(f"The exported ONNX {self.onnx_path} is missing.", "Run `edgeopt export` (or build) again.")
        if not self.reference_path.is_file():
            raise UserInputError(f"The reference outputs {self.reference_path} are missing.",
                                 "Run `edgeopt export` (or build) again: it writes OUT/reference/reference.npz.")
        judged = {"judged_on": self.judging.fp32_metric} if self.judging is not None else {}
        return sha256_json({"onnx": onnx_digest(self.onnx_path), "reference": sha256_file(self.reference_path),
                            "target": self.target.to_dict(), "precision": self.precision,
                            "spec": self.spec.to_dict(), "kind": self.model_kind, "tolerance": self.tolerance,
                            "calibration": getattr(self.calibration, "sha256", None),
                            "compression": self.compression, "task": self.task.to_dict(), "edgeopt": __version__,
                            **judged})  # the INT8 loop's verdict depends on the judge set (its FP32 figure)


def _plain(obj):
    """A recipe section (dict or dataclass) as plain data, for the package key."""
    import dataclasses

    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj) if isinstance(obj, dict) else repr(obj)


def is_package(folder: Path) -> bool:
    return (Path(folder) / PACKAGE_JSON).is_file()


def read_package(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / PACKAGE_JSON
    if not path.is_file():
        raise UserInputError(f"{folder} is not an edgeopt device package (no {PACKAGE_JSON}).",
                             "Point at OUT/<artifact-id> written by `edgeopt build` for a TensorRT target "
                             "(its status says \"not built here\").")
    try:
        pkg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is corrupt: {exc}.", "Copy the package again from the host, or rebuild it.") from None
    if pkg.get("schema") != PACKAGE_SCHEMA:
        raise IntegrityError(f"{path} has schema {pkg.get('schema')!r}; this edgeopt reads {PACKAGE_SCHEMA}.",
                             f"Use the edgeopt version that made it ({pkg.get('edgeopt_version', 'unknown')}), or rebuild it.")
    return pkg


def verify_package_files(folder: Path, pkg: dict) -> None:
    """Every file package.json lists is there with its sha256 (a copy to the device can be cut short)."""
    folder = Path(folder)
    for f in pkg.get("files", []):
        rel = Path(f["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise IntegrityError(f"{PACKAGE_JSON} lists a path outside the package: {f['path']}.", "Rebuild the package.")
        p = folder / rel
        if not p.is_file():
            raise IntegrityError(f"The package {folder.name} lacks {f['path']}.",
                                 "Copy the whole package folder again (the copy was incomplete).")
        if p.stat().st_size != f.get("bytes", p.stat().st_size) or sha256_file(p) != f["sha256"]:
            raise IntegrityError(f"{f['path']} in {folder.name} does not match its sha256 in {PACKAGE_JSON}.",
                                 "Copy the package again (it was damaged or changed), or rebuild it.")


def find_packages(out: Path) -> list[Path]:
    """The device packages directly inside an OUT folder, in name order."""
    out = Path(out)
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and is_package(p))
