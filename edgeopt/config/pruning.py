"""[pruning]: the method, the share removed, and the optional recovery fine-tune."""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgeopt.errors import UserInputError


@dataclass(frozen=True)
class FinetuneConfig:
    source: str  # training data with labels (same formats as calibration/evaluation data)
    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    freeze_backbone: bool = False  # train only the classifier head
    seed: int = 0
    # How training images become samples (image folders): a [pruning.finetune.preprocess] table; default the
    # recipe's own preprocessing ([preprocess], else that of [evaluation] or [calibration]).
    preprocess: dict | None = None


@dataclass(frozen=True)
class PruningConfig:
    method: str = "structured"  # structured (torch-pruning) | unstructured (NNCF)
    ratio: float = 0.5  # structured: share of channels removed; unstructured: share of weights zeroed
    macs_target: float | None = None  # structured: prune until MACs <= this share of the original
    round_to: int = 8  # keep channel counts multiples of this (friendly to SIMD and tensor cores)
    ignored: tuple[str, ...] = ()  # module names never pruned (the classifier head is always kept)
    bn_adaptation: bool = True  # re-estimate batch-norm statistics on calibration data after pruning
    finetune: FinetuneConfig | None = None
    # The accuracy guard, in points of the task metric vs the unpruned model; default [compression] max_drop.
    # A recovery fine-tune that ends below the pruned model fails the build's artifacts whatever the budget.
    max_drop: float | None = None

    def __post_init__(self):
        if self.method not in ("structured", "unstructured"):
            raise UserInputError(f"[pruning] method {self.method!r} is unknown.", "Use structured or unstructured.")
        if not 0 < self.ratio < 1:
            raise UserInputError(f"[pruning] ratio {self.ratio} is not between 0 and 1.", "For example ratio = 0.5.")
        if self.macs_target is not None and not 0 < self.macs_target < 1:
            raise UserInputError("[pruning] macs_target must be between 0 and 1.", "For example macs_target = 0.5.")
        if self.max_drop is not None and not (isinstance(self.max_drop, (int, float)) and self.max_drop >= 0):
            raise UserInputError(f"[pruning] max_drop {self.max_drop!r} is not a number >= 0.",
                                 "For example max_drop = 1.0 (points of top-1 vs the unpruned model).")

    @classmethod
    def from_dict(cls, data: dict | None) -> "PruningConfig | None":
        if not data:
            return None
        data = dict(data)
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise UserInputError(f"Recipe section [pruning] has unknown keys {unknown}.",
                                 f"Allowed keys: {', '.join(sorted(allowed))}.")
        if data.get("finetune"):
            ft = dict(data["finetune"])
            bad = sorted(set(ft) - {f.name for f in fields(FinetuneConfig)})
            if bad or "source" not in ft:
                raise UserInputError(f"[pruning.finetune] has unknown keys {bad} or no source.",
                                     "Give source (training data with labels), and optionally epochs, lr, "
                                     "freeze_backbone, preprocess.")
            if ft.get("preprocess") is not None:
                from edgeopt.data.dataset import Preprocess

                if not isinstance(ft["preprocess"], dict):
                    raise UserInputError("[pruning.finetune] preprocess must be a table.",
                                         "Write [pruning.finetune.preprocess] with resize, mean, std ...")
                ft["preprocess"] = Preprocess.from_dict(ft["preprocess"], "[pruning.finetune.preprocess]").to_dict()
            data["finetune"] = FinetuneConfig(**ft)
        data["ignored"] = tuple(data.get("ignored", ()))
        return cls(**data)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["finetune"] = None if self.finetune is None else {f.name: getattr(self.finetune, f.name)
                                                             for f in fields(self.finetune)}
        return d
