"""What the build stages share: a planned artifact (:class:`Plan`), each stage's typed result, and the build's
context (:class:`BuildContext`) that carries them from one stage to the next.

A stage reads the context and returns its own frozen result; :func:`edgeopt.pipeline.build.build` puts that
result into a new context (``dataclasses.replace``) for the stages after it. No stage sets another's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeopt.config.compression import CompressionConfig
from edgeopt.config.recipe import Recipe
from edgeopt.core.artifact import artifact_id
from edgeopt.core.records import Status
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.core.tasks import Outputs, TaskConfig
from edgeopt.data.dataset import Dataset
from edgeopt.report.progress import Reporter

if TYPE_CHECKING:  # torch is imported by the stages that need it, never here
    import torch

    from edgeopt.compress.qat import QatSource


EXPORT_DIR = "export"


EXPORT_RECORD = "export.json"


MARKER = ".edgeopt"


Feeds = list[dict[str, np.ndarray]]


@dataclass
class Plan:
    target: Target
    precision: str
    status: Status = Status.PLANNED  # planned | skipped | not built here
    reason: str | None = None

    @property
    def id(self) -> str:
        return artifact_id(self.target.name, self.precision)


@dataclass
class LoadedModel:
    """The intake's model: one flat module with named outputs (or the ONNX file the user gave)."""

    name: str
    source: str
    sha256: str
    spec: IOSpec  # with output names filled in
    kind: str
    module: torch.nn.Module | None = None  # flat torch module (None for an ONNX source)
    onnx_path: Path | None = None  # set when the source is already ONNX
    scripted: torch.jit.ScriptModule | None = None  # a TorchScript module: exported as it is, by the legacy exporter
    adapter: dict | None = None  # a PEFT adapter applied to the base model (pipeline.adapters)
    labels: tuple[str, ...] | None = None  # class names the model itself carries (a Hugging Face config)
    as_trained: tuple | None = None  # (flat adapted model, unmerged; the merged module exported from it)
    notes: tuple[str, ...] = ()  # what loading found out, for the build log
    source_facts: dict | None = None  # read from a training tool's checkpoint (Ultralytics): task, classes, size
    detector: dict | None = None  # a torchvision detector: where its NMS runs, the [task] keys it tells (detectors)

    def describe(self) -> dict:
        out = {"name": self.name, "source": self.source, "sha256": self.sha256, "kind": self.kind,
               **self.spec.to_dict()}
        if self.adapter is not None:
            out["adapter"] = self.adapter
        if self.source_facts is not None:
            out["checkpoint_facts"] = self.source_facts
        if self.detector is not None:
            out["detector"] = self.detector
        return out

    def reference_module(self):
        """The module every artifact is checked against: the adapted model as trained (unmerged) while the
        exported module is still its merge (pruning replaces it), else the exported module itself."""
        if self.as_trained is not None and self.as_trained[1] is self.module:
            return self.as_trained[0]
        return self.module


@dataclass(frozen=True)
class BuildData:
    """The intake's data: the evaluation set, the calibration set, and the calibration samples held out of it
    to judge on when there is no evaluation set (never calibrated on)."""

    evaluation: Dataset | None = None
    calibration: Dataset | None = None
    holdout: Dataset | None = None

    @property
    def real(self) -> Dataset | None:
        """The real samples artifacts are judged on: the evaluation set, else the held-out samples."""
        return self.evaluation if self.evaluation is not None else self.holdout


@dataclass(frozen=True)
class Exported:
    """The export stage's result: the ONNX every artifact is compiled from, and the reference samples."""

    onnx_path: Path
    onnx_sha256: str  # the ONNX with its external data files: what artifacts are keyed on
    export_sha256: str | None  # the export record's sha256 (carry-over compares it across runs)
    feeds: Feeds  # reference inputs: random within the declared ranges, then real samples
    refs: Feeds  # the model's outputs on them (PyTorch, or the ONNX source)
    real_from: int  # index of the first real sample among the feeds


@dataclass(frozen=True)
class Judging:
    """How artifacts are judged: the resolved task, [compression]'s budget, and (with real samples) the judge set
    (real samples + the FP32 model's outputs) with the FP32 model's task metric."""

    task: TaskConfig
    compression: CompressionConfig
    outputs: Outputs | None = None
    fp32_metric: dict | None = None


@dataclass(frozen=True)
class Pruned:
    """The pruning stage's result: the pruned model, the user's model (the baseline row stays it), the judge set
    pruning was judged by, and why the pruned model failed its guard (nothing built from it is then ok)."""

    model: LoadedModel
    original_module: torch.nn.Module
    judging: Judging | None
    failure: str | None


@dataclass(frozen=True)
class BuildContext:
    """One build: the recipe, OUT, the reporter, and the results of the stages that have run."""

    recipe: Recipe
    out: Path
    reporter: Reporter
    generation: str | None = None  # this build's id, recorded in each artifact it compiles
    nms: dict | None = None  # where a detector's NMS runs, asked of the planned targets (pipeline.plan.detector_nms)
    data: BuildData = field(default_factory=BuildData)
    model: LoadedModel | None = None  # the intake's model (pruned, after the pruning stage)
    pruned: Pruned | None = None
    exported: Exported | None = None
    judging: Judging | None = None
    qat: QatSource | None = None  # [qat]: the build's QAT source (pipeline.qat.BuildQat), handed to the INT8 loop
