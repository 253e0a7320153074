"""[select] budgets: what an artifact must meet to be chosen."""

from __future__ import annotations

from dataclasses import dataclass

from edgeopt.errors import UserInputError
from edgeopt.core.checks import integer, key, keys_of, number, text


@dataclass(frozen=True)
class Budgets:
    """What an artifact must meet to be selected. ``None`` leaves a budget out."""

    max_drop: float | None = key(None, check=number(-100, 100), doc="accuracy points below the torch baseline")
    p99_ms: float | None = key(None, check=number(0, 1e9, above=True), doc="p99 latency at batch")
    target: str | None = key(None, check=text(), doc="only this target's artifacts")
    max_size_mb: float | None = key(None, check=number(0, 1e9, above=True),
                                    doc="model files on disk (the artifact.json record not counted)")
    min_cosine: float | None = key(None, check=number(-1, 1), doc="parity cosine against PyTorch")
    batch: int = key(1, check=integer(1, 65536), doc="the batch the latency figures are read at")

    def __post_init__(self):
        for name in ("max_drop", "p99_ms", "max_size_mb", "min_cosine"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise UserInputError(f"Selection budget {name} = {v!r} is not a number.",
                                     f"Write a number, e.g. {name} = 1.")
        if self.p99_ms is not None and self.p99_ms <= 0:
            raise UserInputError(f"The p99 budget {self.p99_ms} ms is not positive.", "Give --p99-ms a value above 0.")
        if self.max_size_mb is not None and self.max_size_mb <= 0:
            raise UserInputError(f"The size budget {self.max_size_mb} MB is not positive.",
                                 "Give --max-size-mb a value above 0.")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise UserInputError(f"The cosine budget {self.min_cosine} is outside [-1, 1].",
                                 "Give --min-cosine a value such as 0.999.")
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise UserInputError(f"Selection batch {self.batch!r} is not a positive integer.",
                                 "Give --batch 1 or more.")

    @classmethod
    def from_dict(cls, data: dict, where: str = "[select]") -> "Budgets":
        """From a recipe table (``[select]`` with the field names above; dashes allowed)."""
        names = set(keys_of(cls))
        norm = {str(k).replace("-", "_"): v for k, v in (data or {}).items()}
        unknown = sorted(set(norm) - names)
        if unknown:
            raise UserInputError(f"Unknown key(s) {unknown} in {where}.", f"Use only {sorted(names)}.")
        return cls(**norm)

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"accuracy drop <= {self.max_drop:g} pt")
        if self.p99_ms is not None:
            parts.append(f"p99 <= {self.p99_ms:g} ms at batch {self.batch}")
        if self.max_size_mb is not None:
            parts.append(f"size <= {self.max_size_mb:g} MB")
        if self.min_cosine is not None:
            parts.append(f"parity cosine >= {self.min_cosine:g}")
        if self.target is not None:
            parts.append(f"target {self.target}")
        return ", ".join(parts) or "no budget"
