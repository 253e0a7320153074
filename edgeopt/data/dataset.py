"""Calibration and evaluation data: one loader for every accepted source, checked before anything is built.

Sources (see ``calibration/README.md``):

- ``.npz`` keyed by input name, with an optional labels array;
- ``.npy`` holding one input;
- a folder of images through a :class:`Preprocess` spec: flat (calibration) or one subfolder per class
  (evaluation; class ``i`` is the ``i``-th subfolder name in sorted order);
- a Python callable, ``package.module:function`` or ``path/file.py:function``, yielding (or returning a list
  of) dicts of numpy arrays, each dict one batch with a leading batch axis and an optional labels key;
- a ``.txt`` file of text lines plus a local Hugging Face tokenizer folder.

Samples are shuffled with a seed and cut to ``size``; the sha256 of exactly the samples used (in order,
labels included) identifies the set in caches and the manifest. The same :class:`Dataset` object feeds
every backend.

Numpy and the standard library only at module level: :class:`Preprocess` is used by the on-device runtime,
which needs Pillow only when it resizes, crops or converts images; ``transformers`` only for text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt.errors import DataError, UserInputError
from edgeopt.core.checks import COUNT, SEED, either, integer, key, keys_of, path_text, text
from edgeopt.core.spec import IOSpec
from edgeopt.data.preprocess import Preprocess, is_int, unknown_keys
from edgeopt.data.sources import check_label_count, conform, open_source

PURPOSES = ("calibration", "evaluation", "training")
DEFAULT_MIN_SAMPLES = {"calibration": 10, "evaluation": 1, "training": 1}
DEFAULT_SIZE = 300


# ================================================================================================
# DataConfig
# ================================================================================================

@dataclass(frozen=True)
class DataConfig:
    """One ``[calibration]`` or ``[evaluation]`` section of a recipe."""

    source: str = key(check=path_text, doc="an image folder, .npz, .npy, .txt, or module:function")
    size: int | None = key(DEFAULT_SIZE, check=either(COUNT, text(8), want='a sample count or "all"'),
                           doc='samples used ("all": every sample)')
    seed: int = key(0, check=SEED, doc="seed of the sample choice")
    min_samples: int | None = key(None, check=COUNT, doc="fewer is an error (default 10 for calibration, 1 for "
                                  "evaluation)")
    labels: str = key("labels", check=text(), doc="key of the labels array in an .npz or in a callable's dicts")
    input: str | None = key(None, check=text(), doc="which input an image folder or .npy feeds; default the first")
    preprocess: Preprocess | None = key(None, doc="how images become samples: a [SECTION.preprocess] table")
    tokenizer: str | None = key(None, check=path_text, doc="local folder of a Hugging Face tokenizer (text sources)")
    max_length: int | None = key(None, check=integer(1, 1_000_000),
                                 doc="tokens per text sample; default the input's fixed length or opt")
    base_dir: Path | None = None  # relative paths are resolved against it (not a recipe key)

    KEYS = ()  # set below the class: its recipe keys, in order

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source.strip():
            raise UserInputError("A data section has no source.",
                                 'Set source = "data.npz" (or an image folder, .npy, .txt, module:function).')
        for key, low in (("size", 1), ("min_samples", 1), ("max_length", 1)):
            v = getattr(self, key)
            if v is not None and (not is_int(v) or v < low):
                raise UserInputError(f"Data section: {key} is {v!r}.", f"Use an integer >= {low}.")
        if not is_int(self.seed):
            raise UserInputError(f"Data section: seed is {self.seed!r}.", "Use an integer.")
        for key in ("labels", "input", "tokenizer"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, str) or not v):
                raise UserInputError(f"Data section: {key} is {v!r}.", "Use a non-empty string.")
        if self.preprocess is not None and not isinstance(self.preprocess, Preprocess):
            object.__setattr__(self, "preprocess", Preprocess.from_dict(self.preprocess))
        if self.base_dir is not None:
            object.__setattr__(self, "base_dir", Path(self.base_dir))

    @classmethod
    def from_dict(cls, d: Mapping, base_dir: str | Path | None = None, section: str = "data") -> "DataConfig":
        """Parse a recipe section; ``size = "all"`` (or None) takes every sample."""
        if isinstance(d, str):
            d = {"source": d}
        if not isinstance(d, Mapping):
            raise UserInputError(f"[{section}] must be a table, got {type(d).__name__}.",
                                 f'Write [{section}] with source = "...".')
        unknown_keys(d, cls.KEYS, f"[{section}]")
        if "source" not in d:
            raise UserInputError(f"[{section}] has no source.",
                                 'Set source = "data.npz" (or an image folder, .npy, .txt, module:function).')
        kw = dict(d)
        if isinstance(kw.get("size"), str) and kw["size"].lower() == "all":
            kw["size"] = None
        if "preprocess" in kw and kw["preprocess"] is not None:
            kw["preprocess"] = Preprocess.from_dict(kw["preprocess"], f"[{section}.preprocess]")
        try:
            return cls(**kw, base_dir=Path(base_dir) if base_dir is not None else None)
        except UserInputError as exc:
            raise UserInputError(exc.problem.replace("Data section", f"[{section}]"), exc.fix) from None

    def to_dict(self) -> dict:
        out = {"source": self.source, "size": self.size, "seed": self.seed}
        for k in ("min_samples", "labels", "input", "tokenizer", "max_length"):
            v = getattr(self, k)
            if v is not None and not (k == "labels" and v == "labels"):
                out[k] = v
        if self.preprocess is not None:
            out["preprocess"] = self.preprocess.to_dict()
        return out

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        return p

    def min_for(self, purpose: str) -> int:
        return self.min_samples if self.min_samples is not None else DEFAULT_MIN_SAMPLES[purpose]


DataConfig.KEYS = tuple(keys_of(DataConfig))


# ================================================================================================
# Dataset
# ================================================================================================

def dataset_sha256(arrays: Mapping[str, np.ndarray], labels: np.ndarray | None) -> str:
    """sha256 over every array's name, dtype, shape and bytes (samples in order), then the labels."""
    h = hashlib.sha256()
    items = sorted(arrays.items()) + ([("\0labels", labels)] if labels is not None else [])
    for name, a in items:
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


@dataclass
class Dataset:
    """Samples stacked on axis 0, one array per model input, plus optional labels."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    requested: int | None
    count: int
    source: str
    sha256: str
    warnings: list[str] = field(default_factory=list)
    classes: list[str] | None = None  # class names of an image folder with one subfolder per class
    purpose: str = "calibration"

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], labels=None, *, source: str = "arrays",
                    requested: int | None = None, warnings: list[str] | None = None,
                    classes: list[str] | None = None, purpose: str = "calibration") -> "Dataset":
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        counts = {k: (v.shape[0] if v.ndim else 0) for k, v in arrays.items()}
        if not arrays or len(set(counts.values())) != 1:
            raise DataError(f"{source}: the arrays hold different numbers of samples: {counts}.",
                            "Give every input the same number of samples on axis 0.")
        n = next(iter(counts.values()))
        if labels is not None:
            labels = np.ascontiguousarray(labels)
            check_label_count(labels, n, source, "labels")
        return cls(arrays=arrays, labels=labels, requested=requested, count=n, source=source,
                   sha256=dataset_sha256(arrays, labels), warnings=list(warnings or []),
                   classes=list(classes) if classes is not None else None, purpose=purpose)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Feeds at batch 1, in order: the form calibration readers take."""
        for feed, _ in self.batches(1):
            yield feed

    def batches(self, batch_size: int = 1, drop_last: bool = False) -> Iterator[tuple[dict, np.ndarray | None]]:
        """(feed, labels) pairs of ``batch_size`` samples; the last one is smaller unless ``drop_last``."""
        _check_batch_size(batch_size)
        for start in range(0, self.count, batch_size):
            stop = min(start + batch_size, self.count)
            if drop_last and stop - start < batch_size:
                return
            labels = self.labels[start:stop] if self.labels is not None else None
            yield {k: v[start:stop] for k, v in self.arrays.items()}, labels

    def feeds(self, n: int | None = None, batch_size: int = 1) -> list[dict[str, np.ndarray]]:
        """Feeds over the first ``n`` samples (all when None), ``batch_size`` samples each."""
        _check_batch_size(batch_size)
        limit = self.count if n is None else max(0, min(int(n), self.count))
        return [{k: v[s:min(s + batch_size, limit)] for k, v in self.arrays.items()}
                for s in range(0, limit, batch_size)]

    def summary(self) -> dict:
        """The manifest's record of this data set."""
        out = {"purpose": self.purpose, "source": self.source, "requested": self.requested, "used": self.count,
               "sha256": self.sha256, "warnings": list(self.warnings),
               "inputs": {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in self.arrays.items()},
               "labels": self.labels is not None}
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out

    def check_labels(self, num_classes: int) -> None:
        """Raise when class-index labels do not fit a model with ``num_classes`` outputs."""
        if self.labels is None:
            return
        lab = self.labels
        if lab.dtype.kind == "f" and not np.all(np.isfinite(lab) & (lab == np.round(lab))):
            raise DataError(f"{self.source}: labels are not whole class indices ({lab.dtype}).",
                            "Store labels as integer class indices, one per sample.")
        if lab.dtype.kind not in "iuf" or lab.ndim != 1:
            raise DataError(f"{self.source}: labels are {lab.dtype} {lab.shape}; class indices are expected.",
                            "Store labels as a 1-D integer array, one class index per sample.")
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{self.source}: labels range over {lo}..{hi} but the model has {num_classes} outputs.",
                "Check that label i means model output i (image folders number classes by sorted folder "
                "name) and that the data belongs to this model.")
        if self.classes is not None and len(self.classes) != num_classes:
            raise DataError(f"{self.source}: {len(self.classes)} class folders but the model has "
                            f"{num_classes} outputs.", "Give one subfolder per model class (empty ones too).")

    def save_npz(self, path: str | Path) -> None:
        """Write the samples (and labels) as an .npz this module reads back, atomically."""
        import io

        from edgeopt.core.fsutil import write_bytes_atomic

        buf = io.BytesIO()
        extra = {"labels": self.labels} if self.labels is not None else {}
        np.savez_compressed(buf, **self.arrays, **extra)
        write_bytes_atomic(Path(path), buf.getvalue())


def _check_batch_size(batch_size: int) -> None:
    if not is_int(batch_size) or batch_size < 1:
        raise UserInputError(f"Batch size {batch_size!r} is not a positive integer.", "Use 1 or more.")



# ================================================================================================
# load_dataset
# ================================================================================================

def load_dataset(cfg: DataConfig, spec: IOSpec, purpose: str = "calibration") -> Dataset:
    """Open ``cfg.source``, check it against ``spec``, take a seeded subset of ``cfg.size`` samples.

    Raises :class:`DataError` (naming the file and the fix) for unreadable or empty sources, NaN/Inf,
    shapes or dtypes the model does not take, wrong label counts and too few samples.
    """
    if purpose not in PURPOSES:
        raise UserInputError(f"Unknown data purpose {purpose!r}.", f"Use one of: {', '.join(PURPOSES)}.")
    min_n = cfg.min_for(purpose)
    if cfg.size is not None and cfg.size < min_n:
        raise UserInputError(f"[{purpose}] size = {cfg.size} is below min_samples = {min_n}.",
                             f"Raise size to at least {min_n}, or lower min_samples.")
    if cfg.input is not None and cfg.input not in {t.name for t in spec.inputs}:
        raise UserInputError(f"[{purpose}] input = {cfg.input!r} is not an input of the model.",
                             f"Use one of: {', '.join(t.name for t in spec.inputs)}.")
    src = open_source(cfg, spec, purpose)
    if src.total < min_n:
        raise DataError(
            f"The {purpose} data {src.where} holds {src.total} sample(s); at least {min_n} are needed"
            + (" for a stable INT8 calibration." if purpose == "calibration" else "."),
            f"Add samples (a few hundred are typical), or lower min_samples in [{purpose}] if you accept that.")
    warnings = list(src.warnings)
    n = src.total if cfg.size is None else min(cfg.size, src.total)
    if cfg.size is not None and src.total < cfg.size:
        warnings.append(f"{purpose}: asked for {cfg.size} samples but {src.where} holds only {src.total}; "
                        f"using {src.total}.")
    order = np.random.default_rng(cfg.seed).permutation(src.total)[:n]
    arrays, labels = src.take(order)
    arrays = conform(arrays, spec, src.where, lambda i: src.describe(int(order[i])))
    if labels is not None:
        check_label_count(labels, n, src.where, cfg.labels)
    return Dataset.from_arrays(arrays, labels, source=src.where, requested=cfg.size, warnings=warnings,
                               classes=src.classes, purpose=purpose)
