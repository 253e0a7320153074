"""[qat]: quantization-aware training, the INT8 stage's recovery step after mixed precision (compress/qat.py).

The training keys are [pruning.finetune]'s (the same labelled data formats, epochs, lr, batch size, seed,
freeze_backbone, preprocess: one declaration, inherited); [qat] adds the time limit of the whole step and its own
default learning rate: QAT starts from a trained model, where the fine-tune's 1e-3 wrecks a pretrained network
(measured on the real MobileNetV2 digits model: 1e-4 already damaged it; 3e-5 recovered INT8, benchmarks/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgeopt.config.pruning import FinetuneConfig
from edgeopt.core.checks import key, number


@dataclass(frozen=True)
class QatConfig(FinetuneConfig):
    lr: float = key(3e-5, check=number(0, 100), doc="learning rate (small: QAT starts from the trained model)")
    time_s: float = key(600.0, check=number(0, 86400, above=True),
                        doc="at most this many seconds for QAT (training stops between batches; the result is judged)")

    @classmethod
    def from_dict(cls, data: dict | None) -> "QatConfig | None":
        return cls.parse(data, "qat") if data else None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
