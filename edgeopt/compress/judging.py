"""What the INT8 stage judges candidates with: the compression options, the FP32 reference outputs, the task,
the real samples and the FP32 figure the budget is measured from. Lives with the INT8 stage, not with the
compile request (compiling an artifact needs none of it)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgeopt.config.compression import CompressionConfig

if TYPE_CHECKING:
    from edgeopt.core.spec import IOSpec
    from edgeopt.core.tasks import Outputs, TaskConfig


@dataclass(frozen=True)
class Judging:
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    # (feeds, fp32 reference outputs) on the parity samples: the cosine reported beside the task metric
    reference: tuple[list[dict], list[dict]] | None = None
    fp32_metric: dict | None = None  # the FP32 model's task metric on judge_set
    task: TaskConfig | None = None  # the resolved task: how candidates are judged
    judge_set: Outputs | None = None  # real samples (evaluation, or held out of calibration) + FP32's outputs
    spec: IOSpec | None = None  # filled in by the INT8 loop from the compile request
    model_kind: str = "generic"
    # [qat]: the build's QAT source (compress.qat.QatSource): trains once, returns the Q/DQ ONNX every backend adopts
    qat: Any = field(default=None, compare=False)

    def of(self, spec, model_kind: str) -> "Judging":
        return replace(self, spec=spec, model_kind=model_kind)


def judging_of(req) -> Judging:
    """The judging inputs of a compile request (defaults where it has none), with its spec and model kind."""
    j = getattr(req, "judging", None) or Judging()
    return j.of(req.spec, getattr(req, "model_kind", "generic") or "generic")
