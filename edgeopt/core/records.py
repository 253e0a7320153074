"""What the records of a manifest say about an artifact: the :class:`Status` enum and the typed
:class:`ArtifactRecord` (with its :class:`FileRecord` list). Standard library only (runs on a device).

``manifest.json`` keeps its format: :meth:`ArtifactRecord.from_dict` reads a record (from an OUT folder or an
untrusted bundle: every field a reader uses is checked, bad ones are an :class:`IntegrityError`), and
:meth:`ArtifactRecord.to_dict` gives the same record back, key for key in the recorded order (fields this
class does not name are kept in ``extra``), so a record read and written again is the same JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum

from edgeopt.errors import IntegrityError
from edgeopt.core.untrusted import printable


class Status(str, Enum):
    """An artifact record's ``status``. A str Enum: it equals, hashes, formats and serialises (JSON) as its
    value, so manifests read back as plain strings compare equal to these members."""

    OK = "ok"  # built, parity-checked and profiled
    FAILED = "failed"  # tried and failed: ``reason`` says why
    SKIPPED = "skipped"  # not tried: the target cannot run here (missing package or device)
    NOT_BUILT_HERE = "not built here"  # a device package: compiled on the device that runs it
    PLANNED = "planned"  # a build plan not yet compiled
    BASELINE = "baseline"  # the FP32 PyTorch row of a table

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


ARTIFACT_REQUIRED = ("id", "target", "backend", "precision", "status", "files")
REBUILD = "Rebuild the artifact."


def _short_text(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _name(value) -> str:
    return printable(repr(value), 80)


def _to_dict(obj, order: tuple[str, ...], extra: dict, encode: dict) -> dict:
    """The record as recorded: its keys in ``order`` (typed fields encoded back, the rest from ``extra``);
    a record made in code (no ``order``) gives its required and set fields in declaration order, then ``extra``."""
    named = [f.name for f in fields(obj) if f.name not in ("extra", "order")]

    def is_set(name: str) -> bool:
        v = getattr(obj, name)
        return name in ARTIFACT_REQUIRED or not (v is None or v is False)

    keys = order or (*(n for n in named if is_set(n)), *extra)
    out = {}
    for k in keys:
        if k in named:
            v = getattr(obj, k)
            out[k] = encode[k](v) if k in encode and v is not None else v
        else:
            out[k] = extra[k]
    return out


@dataclass(frozen=True)
class FileRecord:
    """One file of an artifact: its path relative to OUT (or the bundle), sha256 and size."""

    path: str
    sha256: str
    bytes: int | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)
    order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, data, where: str) -> "FileRecord":
        if not isinstance(data, dict):
            raise IntegrityError(f"{where}: files is not a list of records.", REBUILD)
        if not isinstance(data.get("path"), str) or not data["path"] or not isinstance(data.get("sha256"), str):
            raise IntegrityError(f"{where}: a file record lacks its path or sha256 text.", REBUILD)
        size = data.get("bytes")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise IntegrityError(f"{where}: file {_name(data['path'])} has a size that is not a byte count.", REBUILD)
        known = ("path", "sha256", "bytes")
        return cls(data["path"], data["sha256"], size, {k: v for k, v in data.items() if k not in known},
                   tuple(data))

    def to_dict(self) -> dict:
        return _to_dict(self, self.order, self.extra, {})


@dataclass(frozen=True)
class ArtifactRecord:
    """One entry of a manifest's ``artifacts``: what was built for a target and precision and how it did.

    The fields readers use are typed; ``extra`` holds the rest as recorded (``package``, ``devices``,
    ``lint`` ...). ``parity``, ``accuracy``, ``meta``, ``runtime`` and ``layers`` are the recorded tables
    (dicts), ``latency`` the profiled rows (one dict per batch)."""

    id: str
    target: str
    backend: str
    precision: str
    status: Status
    files: tuple[FileRecord, ...] = ()
    device: str | None = None
    reason: str | None = None
    fix: str | None = None
    key: str | None = None
    generation: str | None = None
    parity: dict | None = None
    accuracy: dict | None = None
    latency: tuple[dict, ...] | None = None
    speedup_vs_torch: dict | None = None
    speedup_interval: dict | None = None
    timing_run: str | None = None
    flags: tuple[str, ...] | None = None
    meta: dict | None = None
    runtime: dict | None = None
    layers: dict | None = None
    compile_s: float | None = None
    load_s: float | None = None
    threads: int | None = None
    peak_rss_mb: float | None = None
    reused: bool = False
    extra: dict = field(default_factory=dict, repr=False, compare=False)
    order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def latency_at(self, batch: int) -> dict | None:
        """The profiled row at ``batch``, or None."""
        return next((r for r in self.latency or () if r["batch"] == batch), None)

    @property
    def tolerance(self) -> dict | None:
        """The parity tolerance the build recorded for this artifact (a dict), or None."""
        t = (self.parity or {}).get("tolerance")
        return t if isinstance(t, dict) else None

    @classmethod
    def from_dict(cls, data) -> "ArtifactRecord":
        """A record read from a manifest (untrusted): :class:`IntegrityError` naming the field when it is not
        what edgeopt writes."""
        if not isinstance(data, dict):
            raise IntegrityError("The manifest's artifacts are not a list of records.", "Rebuild with this edgeopt version.")
        gone = [k for k in ARTIFACT_REQUIRED if k not in data]
        if gone:
            raise IntegrityError(f"Manifest artifact {_name(data.get('id', '?'))} lacks {gone}.", REBUILD)
        bad = [k for k in ARTIFACT_REQUIRED[:-1] if not _short_text(data[k])]
        if bad:
            raise IntegrityError(f"Manifest artifact {_name(data['id'])}: {', '.join(bad)} must be short "
                                 "printable text.", REBUILD)
        aid = data["id"]
        where = f"Manifest artifact {aid}"
        try:
            status = Status(data["status"])
        except ValueError:
            raise IntegrityError(f"{where}: status {_name(data['status'])} is not one this edgeopt knows "
                                 f"({', '.join(s.value for s in Status)}).", REBUILD) from None
        if not isinstance(data["files"], list):
            raise IntegrityError(f"{where}: files is not a list of records.", REBUILD)
        files = tuple(FileRecord.from_dict(f, where) for f in data["files"])
        for k in ("device", "reason", "fix", "key", "generation", "timing_run"):
            if data.get(k) is not None and not isinstance(data[k], str):
                raise IntegrityError(f"{where}: {k} is not text.", REBUILD)
        for k in ("parity", "accuracy", "meta", "runtime", "layers", "speedup_vs_torch", "speedup_interval"):
            if data.get(k) is not None and not isinstance(data[k], dict):
                raise IntegrityError(f"{where}: {k} is not a table.", REBUILD)
        for k in ("compile_s", "load_s", "peak_rss_mb", "threads"):
            if data.get(k) is not None and not (_number(data[k]) and (k != "threads" or isinstance(data[k], int))):
                raise IntegrityError(f"{where}: {k} is not a number.", REBUILD)
        flags, latency = data.get("flags"), data.get("latency")
        if flags is not None and not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            raise IntegrityError(f"{where}: flags is not a list of text.", REBUILD)
        if latency is not None and not (isinstance(latency, list) and all(_latency_row_ok(r) for r in latency)):
            raise IntegrityError(f"{where}: latency is not a list of rows with a batch and figures in ms.", REBUILD)
        if "reused" in data and not isinstance(data["reused"], bool):
            raise IntegrityError(f"{where}: reused is not true or false.", REBUILD)
        known = {f.name for f in fields(cls)} - {"extra", "order"}
        return cls(id=aid, target=data["target"], backend=data["backend"], precision=data["precision"],
                   status=status, files=files, device=data.get("device"), reason=data.get("reason"),
                   fix=data.get("fix"), key=data.get("key"), generation=data.get("generation"),
                   parity=data.get("parity"), accuracy=data.get("accuracy"),
                   latency=None if latency is None else tuple(latency),
                   speedup_vs_torch=data.get("speedup_vs_torch"), speedup_interval=data.get("speedup_interval"),
                   timing_run=data.get("timing_run"), flags=None if flags is None else tuple(flags),
                   meta=data.get("meta"), runtime=data.get("runtime"), layers=data.get("layers"),
                   compile_s=data.get("compile_s"), load_s=data.get("load_s"), threads=data.get("threads"),
                   peak_rss_mb=data.get("peak_rss_mb"), reused=data.get("reused", False),
                   extra={k: v for k, v in data.items() if k not in known}, order=tuple(data))

    def to_dict(self) -> dict:
        """The record as the manifest holds it (same keys, same order as read)."""
        return _to_dict(self, self.order, self.extra,
                        {"files": lambda fs: [f.to_dict() for f in fs], "latency": list, "flags": list})


def _latency_row_ok(row) -> bool:
    if not isinstance(row, dict) or not isinstance(row.get("batch"), int) or isinstance(row["batch"], bool):
        return False
    return all(row.get(k) is None or _number(row[k]) for k in ("median_ms", "p99_ms", "mean_ms"))


def records_of(manifest: dict) -> list[ArtifactRecord]:
    """The typed artifact records of a manifest (a dict as read or built)."""
    return [ArtifactRecord.from_dict(a) for a in manifest.get("artifacts") or []]
