"""What the build stages share: a planned artifact (:class:`Plan`) and the build's state (:class:`BuildContext`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from edgeopt.core.artifact import artifact_id
from edgeopt.config.recipe import Recipe
from edgeopt.report.progress import Reporter
from edgeopt.core.targets import Target
from edgeopt.core.records import Status


EXPORT_DIR = "export"


EXPORT_RECORD = "export.json"


MARKER = ".edgeopt"


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
class BuildContext:
    recipe: Recipe
    out: Path
    reporter: Reporter
    force: bool = False
    model: object = None  # intake.LoadedModel
    onnx_path: Path | None = None
    feeds: list = field(default_factory=list)
    refs: list = field(default_factory=list)
    evaluation: object = None  # data.Dataset
    calibration: object = None
    original_module: object = None  # the model before pruning: the baseline row stays the user's model
    task: object = None  # core.tasks.TaskConfig, resolved from [task], the model kind and the outputs
    real_from: int = 0  # index of the first real sample among the reference feeds
    holdout: object = None  # data.Dataset: calibration samples kept out of calibration to judge on (no evaluation set)
    judge: object = None  # core.tasks.Outputs: real samples (evaluation / held out of calibration) + FP32 outputs
    fp32_metric: dict | None = None  # the exported FP32 model's task metric (the int8 accuracy budget's base)
    int8: bool = False  # some planned artifact is int8
    generation: str | None = None  # this build's id, recorded in each artifact it compiles
    onnx_sha256: str | None = None  # the ONNX with its external data files: what artifacts are keyed on
    export_sha256: str | None = None  # the export record's sha256 (carry-over compares it across runs)
    pruning_failure: str | None = None  # the pruned model failed its accuracy guard: nothing built from it is ok
