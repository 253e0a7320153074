"""What the records of a manifest say about an artifact. Standard library only (runs on a device)."""

from __future__ import annotations

from enum import Enum


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
