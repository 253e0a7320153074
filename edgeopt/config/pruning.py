"""[pruning]: the method, the share removed, and the optional recovery fine-tune."""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgeopt.errors import UserInputError
from edgeopt.core.checks import SEED, boolean, integer, key, keys_of, list_of, number, path_text, reject_unknown, text


@dataclass(frozen=True)
class FinetuneConfig:
    source: str = key(check=path_text, doc="training data with labels (same formats as calibration/evaluation data)")
    epochs: int = key(3, check=integer(0, 100_000), doc="epochs of the recovery fine-tune")
    lr: float = key(1e-3, check=number(0, 100), doc="learning rate")
    weight_decay: float = key(1e-4, check=number(0, 100), doc="weight decay")
    batch_size: int = key(64, check=integer(1, 1 << 20), doc="training batch size")
    freeze_backbone: bool = key(False, check=boolean, doc="train only the classifier head")
    seed: int = key(0, check=SEED, doc="seed of the shuffling")
    # How training images become samples (image folders): a [SECTION.preprocess] table; default the
    # recipe's own preprocessing ([preprocess], else that of [evaluation] or [calibration]).
    preprocess: dict | None = key(None, doc="a [SECTION.preprocess] table for the training data (default: the "
                                  "recipe's own)")

    @classmethod
    def parse(cls, data: dict, section: str):
        """The table ``[section]`` (a dict from TOML) as ``cls``: unknown keys refused, the source required, the
        preprocess table checked."""
        ft = dict(data)
        reject_unknown(section, ft, cls)
        if "source" not in ft:
            raise UserInputError(f"[{section}] has no source.",
                                 f'Give [{section}] source = "train.npz" (training data with labels: a .npz with a '
                                 "labels array, or an image folder with one subfolder per class).")
        if ft.get("preprocess") is not None:
            from edgeopt.data.dataset import Preprocess

            if not isinstance(ft["preprocess"], dict):
                raise UserInputError(f"[{section}] preprocess must be a table.",
                                     f"Write [{section}.preprocess] with resize, mean, std ...")
            ft["preprocess"] = Preprocess.from_dict(ft["preprocess"], f"[{section}.preprocess]").to_dict()
        return cls(**ft)


@dataclass(frozen=True)
class PruningConfig:
    method: str = key("structured", check=text(16), doc="structured (torch-pruning) | unstructured (NNCF)")
    ratio: float = key(0.5, check=number(0, 1),
                       doc="structured: share of channels removed; unstructured: share of weights zeroed")
    macs_target: float | None = key(None, check=number(0, 1),
                                    doc="structured: prune until MACs <= this share of the original")
    round_to: int = key(8, check=integer(1, 4096),
                        doc="keep channel counts multiples of this (friendly to SIMD and tensor cores)")
    ignored: tuple[str, ...] = key((), check=list_of(text(1000), 0, 100_000),
                                   doc="module names never pruned (the classifier head is always kept)")
    bn_adaptation: bool = key(True, check=boolean,
                              doc="re-estimate batch-norm statistics on calibration data after pruning")
    finetune: FinetuneConfig | None = key(None, doc="the recovery fine-tune: a [pruning.finetune] table")
    # The accuracy guard, in points of the task metric vs the unpruned model; default [compression] max_drop.
    # A recovery fine-tune that ends below the pruned model fails the build's artifacts whatever the budget.
    max_drop: float | None = key(None, check=number(0, 100),
                                 doc="the accuracy guard in points vs the unpruned model (default [compression])")

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
        reject_unknown("pruning", data, cls)
        if data.get("finetune"):
            data["finetune"] = FinetuneConfig.parse(data["finetune"], "pruning.finetune")
        data["ignored"] = tuple(data.get("ignored", ()))
        return cls(**data)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["finetune"] = None if self.finetune is None else {f.name: getattr(self.finetune, f.name)
                                                             for f in fields(self.finetune)}
        return d
