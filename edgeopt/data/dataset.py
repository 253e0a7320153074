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

import contextlib
import hashlib
import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt.errors import DataError, UserInputError, require
from edgeopt.core.spec import DTYPES, IOSpec, TensorSpec

PURPOSES = ("calibration", "evaluation", "training")
DEFAULT_MIN_SAMPLES = {"calibration": 10, "evaluation": 1, "training": 1}
DEFAULT_SIZE = 300
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
MAX_CALLABLE_SAMPLES = 100_000  # a generator that never ends is cut here (with a warning)

CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}
LAYOUTS = ("NCHW", "NHWC")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
_GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def import_pil(purpose: str = "read images"):
    return require("PIL.Image", "images", purpose)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _unknown_keys(d: Mapping, known, where: str) -> None:
    bad = sorted(set(d) - set(known))
    if bad:
        raise UserInputError(f"{where}: unknown key{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}.",
                             f"Use only: {', '.join(known)}.")


# ================================================================================================
# Preprocess
# ================================================================================================

@dataclass(frozen=True)
class Preprocess:
    """Image to one sample (no batch axis): convert, resize, center-crop, scale, normalise, lay out, cast.

    ``out = (pixels * scale - mean) / std``, with ``mean`` and ``std`` given per channel in the output
    channel order (after the RGB -> BGR flip). ``resize`` is the shorter side (aspect ratio kept, as
    torchvision's ``Resize(int)``) or ``[h, w]``; ``center_crop`` is ``[h, w]`` or one int for a square.
    ``letterbox`` (detectors): fit the image inside ``resize`` = ``[h, w]`` keeping its aspect ratio and pad
    the rest, centred, with ``pad_value`` (114, grey, as Ultralytics does). :meth:`geometry` says where an
    original pixel lands in the model's input, so detections can be mapped back.
    """

    resize: int | tuple[int, int] | None = None
    center_crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 1 / 255
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    interpolation: str = "bilinear"
    letterbox: bool = False
    pad_value: int = 114

    KEYS = ("resize", "center_crop", "mean", "std", "scale", "channel_order", "layout", "dtype", "interpolation",
            "letterbox", "pad_value")

    def __post_init__(self):
        where = "preprocess"
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass normalisation
        set_("resize", _size_pair(self.resize, f"{where}.resize", allow_int=True))
        crop = _size_pair(self.center_crop, f"{where}.center_crop", allow_int=True)
        set_("center_crop", (crop, crop) if isinstance(crop, int) else crop)
        if self.channel_order not in CHANNELS:
            raise UserInputError(f"{where}.channel_order is {self.channel_order!r}.",
                                 'Use "RGB", "BGR" or "L" (grayscale).')
        if self.layout not in LAYOUTS:
            raise UserInputError(f"{where}.layout is {self.layout!r}.", 'Use "NCHW" or "NHWC".')
        if self.dtype not in DTYPES or self.dtype == "bool":
            raise UserInputError(f"{where}.dtype is {self.dtype!r}.",
                                 f"Use one of: {', '.join(d for d in DTYPES if d != 'bool')}.")
        if self.interpolation not in INTERPOLATIONS:
            raise UserInputError(f"{where}.interpolation is {self.interpolation!r}.",
                                 f"Use one of: {', '.join(INTERPOLATIONS)}.")
        if not _is_number(self.scale) or not math.isfinite(self.scale) or self.scale <= 0:
            raise UserInputError(f"{where}.scale is {self.scale!r}.", "Use a positive number, for example 1/255.")
        set_("scale", float(self.scale))
        for key in ("mean", "std"):
            set_(key, self._per_channel(key, getattr(self, key)))
        if self.std is not None and any(s == 0 for s in self.std):
            raise UserInputError(f"{where}.std has a zero: {list(self.std)}.", "Every std must be non-zero.")
        if not isinstance(self.letterbox, bool):
            raise UserInputError(f"{where}.letterbox is {self.letterbox!r}.", "Use true or false.")
        if not _is_int(self.pad_value) or not 0 <= self.pad_value <= 255:
            raise UserInputError(f"{where}.pad_value is {self.pad_value!r}.", "Use a pixel value in 0..255.")
        if self.letterbox:
            if self.resize is None:
                raise UserInputError(f"{where}.letterbox needs the size to fit images into.",
                                     "Add resize = [height, width] (the model's input size).")
            if isinstance(self.resize, int):
                set_("resize", (self.resize, self.resize))

    def _per_channel(self, key: str, value):
        if value is None:
            return None
        if _is_number(value):
            value = [value]
        n = self.channels
        if (not isinstance(value, (list, tuple)) or len(value) not in (1, n)
                or not all(_is_number(v) and math.isfinite(v) for v in value)):
            raise UserInputError(f"preprocess.{key} is {value!r}; channel_order {self.channel_order!r} has "
                                 f"{n} channel(s).", f"Give {key} as a list of 1 or {n} finite numbers.")
        return tuple(float(v) for v in value)

    @property
    def channels(self) -> int:
        return CHANNELS[self.channel_order]

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {}
        for k in self.KEYS:
            v = getattr(self, k)
            if k in ("letterbox", "pad_value") and not self.letterbox:
                continue  # written only when used: older readers of the manifest stay valid
            if v is not None:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "preprocess") -> "Preprocess":
        if not isinstance(d, Mapping):
            raise UserInputError(f"{where} must be a table, got {type(d).__name__}.",
                                 f"Write [{where}] with keys such as resize, center_crop, mean, std.")
        _unknown_keys(d, cls.KEYS, where)
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    @classmethod
    def for_input(cls, t: TensorSpec) -> "Preprocess":
        """The implicit spec for an image folder without ``[*.preprocess]``: no resize or crop, layout and
        channel order from the input's shape, pixels scaled to [0, 1] for float inputs."""
        sample = t.shape[1:]
        if len(sample) == 3 and sample[0] in (1, 3):
            layout, c = "NCHW", sample[0]
        elif len(sample) == 3 and sample[2] in (1, 3):
            layout, c = "NHWC", sample[2]
        else:
            raise UserInputError(
                f"Cannot tell how images map onto input {t.name!r} {IOSpec.describe(t)}.",
                "Add a preprocess section with channel_order and layout (an image input is "
                "[N,C,H,W] or [N,H,W,C] with 1 or 3 channels).")
        floating = np.issubdtype(t.np_dtype, np.floating)
        return cls(channel_order="L" if c == 1 else "RGB", layout=layout, dtype=t.dtype,
                   scale=1 / 255 if floating else 1.0)

    # ---- apply --------------------------------------------------------------------------------
    def apply(self, image) -> np.ndarray:
        """One sample (no batch axis) from a PIL image, an HxW / HxWxC uint8 array (RGB order) or a path."""
        x = self.pixels(image).astype(np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return _to_dtype(np.ascontiguousarray(x), self.dtype)

    def pixels(self, image) -> np.ndarray:
        """HxWxC uint8 after channel conversion, resize and crop (C = 1 for "L", else 3 in RGB order)."""
        if isinstance(image, (str, Path)):
            return self._pil_pixels(open_image(Path(image)))
        if isinstance(image, np.ndarray):
            arr = _image_array(image)
            if self.resize is None and self.center_crop is None and arr.shape[2] == self.channels:
                return arr  # nothing to do: no Pillow needed
            img = import_pil().fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
            return self._pil_pixels(img)
        if not hasattr(image, "convert") or not hasattr(image, "size"):
            raise UserInputError(f"Cannot preprocess a {type(image).__name__}.",
                                 "Pass a PIL image, an HxWxC uint8 numpy array (RGB) or an image path.")
        return self._pil_pixels(image)

    def _pil_pixels(self, img) -> np.ndarray:
        mode = "L" if self.channel_order == "L" else "RGB"
        if img.mode != mode:
            img = img.convert(mode)
        if self.letterbox:
            img = self._letterbox(img)
        elif self.resize is not None:
            img = self._resize(img)
        if self.center_crop is not None:
            img = self._crop(img)
        arr = np.asarray(img)
        return arr[..., None] if arr.ndim == 2 else arr

    def _resize(self, img):
        w, h = img.size
        if isinstance(self.resize, int):  # shorter side, as torchvision.transforms.Resize(int)
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.resize, int(self.resize * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            size = (self.resize[1], self.resize[0])
        if size == (w, h):
            return img
        Image = import_pil()
        resample = getattr(getattr(Image, "Resampling", Image), self.interpolation.upper())
        return img.resize(size, resample)

    def _letterbox(self, img):
        (h, w), (nw, nh), (top, left) = self.resize, *self._letterbox_fit(img.size[1], img.size[0])
        Image = import_pil()
        if (nw, nh) != img.size:
            resample = getattr(getattr(Image, "Resampling", Image), self.interpolation.upper())
            img = img.resize((nw, nh), resample)
        fill = self.pad_value if img.mode == "L" else (self.pad_value,) * 3
        canvas = Image.new(img.mode, (w, h), fill)
        canvas.paste(img, (left, top))
        return canvas

    def _letterbox_fit(self, h0: int, w0: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(new width, new height) and (top, left) padding of an h0 x w0 image letterboxed into resize."""
        h, w = self.resize
        s = min(h / h0, w / w0)
        nw, nh = max(1, min(w, int(round(w0 * s)))), max(1, min(h, int(round(h0 * s))))
        return (nw, nh), ((h - nh) // 2, (w - nw) // 2)

    def geometry(self, original_hw: tuple[int, int]) -> tuple[float, float, float, float]:
        """Where an original pixel lands in the input: ``input_x = x * sx + dx`` and ``input_y = y * sy + dy``;
        returns (sy, sx, dy, dx) for an image of ``original_hw`` (height, width)."""
        h0, w0 = (int(v) for v in original_hw)
        if h0 < 1 or w0 < 1:
            raise UserInputError(f"original_size {original_hw!r} is not an image size.", "Give (height, width).")
        dy = dx = 0.0
        if self.letterbox:
            (nw, nh), (top, left) = self._letterbox_fit(h0, w0)
            sy, sx, dy, dx, h1, w1 = nh / h0, nw / w0, float(top), float(left), self.resize[0], self.resize[1]
        elif isinstance(self.resize, int):
            short, long = (w0, h0) if w0 <= h0 else (h0, w0)
            new_short, new_long = self.resize, int(self.resize * long / short)
            w1, h1 = (new_short, new_long) if w0 <= h0 else (new_long, new_short)
            sy, sx = h1 / h0, w1 / w0
        elif self.resize is not None:
            h1, w1 = self.resize
            sy, sx = h1 / h0, w1 / w0
        else:
            sy = sx = 1.0
            h1, w1 = h0, w0
        if self.center_crop is not None:
            ch, cw = self.center_crop
            dy -= int(round((h1 - ch) / 2.0))
            dx -= int(round((w1 - cw) / 2.0))
        return sy, sx, dy, dx

    def _crop(self, img):
        w, h = img.size
        ch, cw = self.center_crop
        if ch > h or cw > w:
            raise DataError(f"An image of {h}x{w} (HxW) is smaller than center_crop {ch}x{cw}.",
                            "Resize before cropping (preprocess.resize >= the crop) or use a smaller crop.")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return img.crop((left, top, left + cw, top + ch))


def _size_pair(value, where: str, allow_int: bool):
    if value is None:
        return None
    if _is_int(value) and allow_int:
        if value < 1:
            raise UserInputError(f"{where} is {value}.", "Use a positive size.")
        return int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value):
        return (int(value[0]), int(value[1]))
    raise UserInputError(f"{where} is {value!r}.", "Use one positive int or [height, width].")


def _to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    want = np.dtype(DTYPES[dtype])
    if want.kind in "iu":
        info = np.iinfo(want)
        x = np.clip(np.rint(x), info.min, info.max)
    return x.astype(want, copy=False)


def _image_array(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise UserInputError(f"Cannot preprocess an array of {image.dtype} {image.shape} as an image.",
                             "Pass an HxW or HxWxC (C = 1, 3 or 4, RGB order) uint8 array.")
    if image.ndim == 2:
        return image[..., None]
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[..., :3])
    return image


def open_image(path: Path):
    """Open and fully read an image, or raise a DataError naming the file."""
    Image = import_pil()
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"Cannot read the image {path}: {exc}.",
                        "Replace or remove the file (it is not a readable image).") from None


def _image_channels(img) -> int:
    """1 for grayscale images, 3 for colour ones (palette, RGBA, CMYK ... count as colour)."""
    return 1 if img.mode in _GRAY_MODES else 3


# ================================================================================================
# DataConfig
# ================================================================================================

@dataclass(frozen=True)
class DataConfig:
    """One ``[calibration]`` or ``[evaluation]`` section of a recipe."""

    source: str
    size: int | None = DEFAULT_SIZE  # None: all samples
    seed: int = 0
    min_samples: int | None = None  # None: 10 for calibration, 1 for evaluation
    labels: str = "labels"  # key of the labels array in an .npz or in a callable's dicts
    input: str | None = None  # which input an image folder or .npy feeds; default the first
    preprocess: Preprocess | None = None
    tokenizer: str | None = None  # local folder of a Hugging Face tokenizer (text sources)
    max_length: int | None = None  # tokens per text sample; default the input's fixed length or opt
    base_dir: Path | None = None  # relative paths are resolved against it

    KEYS = ("source", "size", "seed", "min_samples", "labels", "input", "preprocess", "tokenizer", "max_length")

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source.strip():
            raise UserInputError("A data section has no source.",
                                 'Set source = "data.npz" (or an image folder, .npy, .txt, module:function).')
        for key, low in (("size", 1), ("min_samples", 1), ("max_length", 1)):
            v = getattr(self, key)
            if v is not None and (not _is_int(v) or v < low):
                raise UserInputError(f"Data section: {key} is {v!r}.", f"Use an integer >= {low}.")
        if not _is_int(self.seed):
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
        _unknown_keys(d, cls.KEYS, f"[{section}]")
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
            _check_label_count(labels, n, source, "labels")
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
    if not _is_int(batch_size) or batch_size < 1:
        raise UserInputError(f"Batch size {batch_size!r} is not a positive integer.", "Use 1 or more.")


def _check_label_count(labels: np.ndarray, n: int, where: str, key: str) -> None:
    m = labels.shape[0] if labels.ndim else 0
    if m != n:
        raise DataError(f"{where}: {key!r} holds {m} labels but there are {n} samples.",
                        "Give exactly one label per sample, in sample order.")


# ================================================================================================
# load_dataset
# ================================================================================================

@dataclass
class _Source:
    """An opened source: how many samples it has and how to materialise a chosen subset of them."""

    where: str
    total: int
    take: Callable[[np.ndarray], tuple[dict[str, np.ndarray], np.ndarray | None]]
    describe: Callable[[int], str]  # sample index in the source -> words for an error message
    warnings: list[str] = field(default_factory=list)
    classes: list[str] | None = None


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
    src = _open_source(cfg, spec, purpose)
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
    arrays = _conform(arrays, spec, src.where, lambda i: src.describe(int(order[i])))
    if labels is not None:
        _check_label_count(labels, n, src.where, cfg.labels)
    return Dataset.from_arrays(arrays, labels, source=src.where, requested=cfg.size, warnings=warnings,
                               classes=src.classes, purpose=purpose)


def _open_source(cfg: DataConfig, spec: IOSpec, purpose: str) -> _Source:
    text = cfg.source.strip()
    path = cfg.resolve(text)
    if not path.exists():
        call = _parse_callable(text)
        if call is not None:
            return _callable_source(cfg, spec, purpose, *call)
        raise DataError(f"The {purpose} source {text!r} does not exist (looked for {path}).",
                        f"Fix source in [{purpose}]: an .npz, .npy or .txt file, an image folder, "
                        "package.module:function or path/file.py:function.")
    if path.is_dir():
        return _image_source(path, cfg, spec, purpose)
    openers = {".npz": _npz_source, ".npy": _npy_source, ".txt": _text_source}
    opener = openers.get(path.suffix.lower())
    if opener is None:
        raise DataError(f"The {purpose} source {path} is not a format edgeopt reads ({path.suffix or 'no suffix'}).",
                        "Use an .npz (keyed by input name), .npy, .txt (with tokenizer), an image folder, "
                        "or a Python callable module:function.")
    return opener(path, cfg, spec, purpose)


def _target_input(cfg: DataConfig, spec: IOSpec, what: str, purpose: str) -> TensorSpec:
    """The one input a single-input source (.npy, image folder) feeds."""
    if len(spec.inputs) > 1:
        names = [t.name for t in spec.inputs]
        raise DataError(f"The {purpose} source is {what}, which feeds one input, but the model takes {names}.",
                        "Use an .npz keyed by input name or a Python callable that yields a dict per batch.")
    t = spec.inputs[0]
    if cfg.input is not None and cfg.input != t.name:  # pragma: no cover - rejected in load_dataset
        raise UserInputError(f"input = {cfg.input!r} is not an input of the model.", f"Use {t.name!r}.")
    return t


# ---- arrays: .npz, .npy and callables ---------------------------------------------------------

def _array_source(arrays: dict[str, np.ndarray], labels: np.ndarray | None, where: str, cfg: DataConfig,
                  spec: IOSpec, purpose: str, warnings: list[str]) -> _Source:
    """Check all samples now (NaN/Inf, dtypes, shapes, label count); subsets are then plain indexing."""
    counts = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
    if None in counts.values():
        bad = [k for k, c in counts.items() if c is None]
        raise DataError(f"{where}: {bad} hold a single value, not samples on axis 0.",
                        "Stack the samples on axis 0 (shape [N, ...]).")
    if len(set(counts.values())) != 1:
        raise DataError(f"{where}: the inputs hold different numbers of samples: {counts}.",
                        "Give every input the same number of samples on axis 0, in the same order.")
    total = next(iter(counts.values()))
    if total == 0:
        raise DataError(f"The {purpose} data {where} holds no samples.", "Add samples on axis 0.")
    arrays = _conform(arrays, spec, where, lambda i: f"sample {i}")
    if labels is not None:
        _check_label_count(labels, total, where, cfg.labels)
        _check_finite(labels, cfg.labels, where, lambda i: f"sample {i}")

    def take(idx):
        picked = np.asarray(labels[idx]) if labels is not None else None
        return {k: np.asarray(v[idx]) for k, v in arrays.items()}, picked

    return _Source(where, total, take, lambda i: f"sample {i}", warnings)


def _split_keys(data: dict, spec: IOSpec, cfg: DataConfig, where: str, purpose: str, fix: str):
    names = [t.name for t in spec.inputs]
    missing = [n for n in names if n not in data]
    if missing:
        raise DataError(f"{where} lacks the input{'s' if len(missing) > 1 else ''} {missing} "
                        f"(it holds {sorted(data)}); the model takes {names}.", fix)
    ignored = sorted(k for k in data if k not in names and k != cfg.labels)
    warnings = [f"{purpose}: {where}: ignored arrays {ignored} (not inputs of the model)."] if ignored else []
    return {n: data[n] for n in names}, data.get(cfg.labels), warnings


def _npz_source(path: Path, cfg: DataConfig, spec: IOSpec, purpose: str) -> _Source:
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"Cannot read the {purpose} file {path}: {exc}.",
                        "Write it again with numpy.savez(path, input_name=array, labels=...); "
                        "object arrays are not accepted.") from None
    if not data:
        raise DataError(f"The {purpose} file {path} holds no arrays.",
                        "Write one array per model input, keyed by input name: numpy.savez(path, image=x).")
    names = ", ".join(f"{t.name}=..." for t in spec.inputs)
    arrays, labels, warnings = _split_keys(data, spec, cfg, str(path), purpose,
                                           f"Save one array per input, keyed by name: numpy.savez(path, {names}).")
    return _array_source(arrays, labels, str(path), cfg, spec, purpose, warnings)


def _npy_source(path: Path, cfg: DataConfig, spec: IOSpec, purpose: str) -> _Source:
    t = _target_input(cfg, spec, f"the single array {path.name}", purpose)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"Cannot read the {purpose} file {path}: {exc}.",
                        "Write it again with numpy.save(path, array) (numeric arrays only).") from None
    return _array_source({t.name: arr}, None, str(path), cfg, spec, purpose, [])


_CALLABLE_RE = re.compile(r"^(?P<target>.+):(?P<func>[A-Za-z_]\w*)$")
_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _parse_callable(text: str) -> tuple[str, str, str] | None:
    """``path/file.py:fn`` -> ("file", path, fn); ``pkg.mod:fn`` -> ("module", "pkg.mod", fn); else None."""
    m = _CALLABLE_RE.match(text)
    if not m:
        return None
    target = m["target"]
    if target.endswith(".py"):
        return "file", target, m["func"]
    if _MODULE_RE.match(target):
        return "module", target, m["func"]
    return None


@contextlib.contextmanager
def _on_sys_path(folder: Path | None):
    if folder is None or str(folder) in sys.path:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


def _import_callable(cfg: DataConfig, kind: str, target: str, func: str, purpose: str):
    where = f"{target}:{func}"
    fix = f"Check [{purpose}] source; the function must exist and import without errors."
    if kind == "file":
        path = cfg.resolve(target)
        if not path.is_file():
            raise DataError(f"The {purpose} source file {path} does not exist.", fix)
        name = "_edgeopt_data_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        try:
            with _on_sys_path(path.resolve().parent):
                spec.loader.exec_module(module)
        except Exception as exc:
            raise DataError(f"Importing {path} raised {type(exc).__name__}: {exc}.", fix) from exc
    else:
        try:
            with _on_sys_path(cfg.base_dir):
                module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise DataError(f"Cannot import the {purpose} module {target!r}: {exc}.",
                            "Install the package, put it on PYTHONPATH or beside the recipe, or use "
                            "path/file.py:function.") from exc
        except Exception as exc:
            raise DataError(f"Importing {target} raised {type(exc).__name__}: {exc}.", fix) from exc
    fn = getattr(module, func, None)
    if not callable(fn):
        raise DataError(f"{target} has no function {func!r}.", fix)
    return fn, where


def _user_items(fn, where: str):
    """Call the user's function and iterate its result, turning its exceptions into DataErrors."""
    fix = "Fix the function (run it alone to see the traceback); it must yield dicts of numpy arrays."
    try:
        result = fn()
    except Exception as exc:
        raise DataError(f"The data function {where} raised {type(exc).__name__}: {exc}.", fix) from exc
    if isinstance(result, Mapping):
        result = [result]
    try:
        it = iter(result)
    except TypeError:
        raise DataError(f"The data function {where} returned a {type(result).__name__}.",
                        "Return a list of dicts, or yield one dict (input name -> batch array) at a time.") from None
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise DataError(f"The data function {where} raised {type(exc).__name__}: {exc}.", fix) from exc
        yield item


def _callable_source(cfg: DataConfig, spec: IOSpec, purpose: str, kind: str, target: str, func: str) -> _Source:
    fn, where = _import_callable(cfg, kind, target, func, purpose)
    names = [t.name for t in spec.inputs]
    batches: list[dict[str, np.ndarray]] = []
    labels: list[np.ndarray] = []
    warnings: list[str] = []
    total = 0
    for b, item in enumerate(_user_items(fn, where)):
        if total >= MAX_CALLABLE_SAMPLES:
            warnings.append(f"{purpose}: {where} yielded more than {MAX_CALLABLE_SAMPLES} samples; "
                            "the rest were not read.")
            break
        if not isinstance(item, Mapping):
            raise DataError(f"{where}: batch {b} is a {type(item).__name__}, not a dict.",
                            "Yield dicts: {input name: array with a leading batch axis, 'labels': ...}.")
        batch, lab, warn = _split_keys(dict(item), spec, cfg, f"{where}: batch {b}", purpose,
                                       f"Yield a dict with every input: {names}.")
        if warn and not warnings:
            warnings.extend(warn)
        batch = {k: np.asarray(v) for k, v in batch.items()}
        if lab is not None:
            lab = np.asarray(lab)
        if b and (lab is None) != (not labels):
            raise DataError(f"{where}: batch {b} {'lacks' if lab is None else 'has'} {cfg.labels!r}, "
                            "unlike batch 0.", "Give labels in every batch or in none.")
        n = _batch_len(batch, where, b)
        if lab is not None:
            _check_label_count(lab, n, f"{where}: batch {b}", cfg.labels)
            labels.append(lab)
        if batches:
            _same_sample_shapes(batches[0], batch, where, b)
        batches.append(batch)
        total += n
    if not batches:
        raise DataError(f"The data function {where} yielded nothing.", "Yield at least one batch.")
    arrays = {k: np.concatenate([bt[k] for bt in batches]) for k in names}
    stacked = np.concatenate(labels) if labels else None
    return _array_source(arrays, stacked, where, cfg, spec, purpose, warnings)


def _batch_len(batch: dict[str, np.ndarray], where: str, b: int) -> int:
    lens = {k: (v.shape[0] if v.ndim else None) for k, v in batch.items()}
    if None in lens.values() or len(set(lens.values())) != 1:
        raise DataError(f"{where}: batch {b} has arrays of leading sizes {lens}.",
                        "Give every array in a batch the same leading batch axis.")
    return next(iter(lens.values()))


def _same_sample_shapes(first: dict, batch: dict, where: str, b: int) -> None:
    for k, v in batch.items():
        if v.shape[1:] != first[k].shape[1:]:
            raise DataError(f"{where}: {k!r} is {v.shape[1:]} per sample in batch {b} but "
                            f"{first[k].shape[1:]} in batch 0.",
                            "Give every batch the same per-sample shape (pad text to one length).")


# ---- images -----------------------------------------------------------------------------------

def _list_images(folder: Path, purpose: str):
    """(files, labels | None, classes | None, warnings) of a flat or class-per-subfolder image folder."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"Cannot read the {purpose} folder {folder}: {exc}.",
                        "Check the path and permissions.") from None
    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES  # noqa: E731
    subdirs = [p for p in entries if p.is_dir()]
    top = [p for p in entries if is_image(p)]
    skipped = [p for p in entries if p.is_file() and not is_image(p)]
    warnings, files, labels, classes = [], [], None, None
    per_class = {d.name: sorted(p for p in d.rglob("*") if is_image(p)
                                and not any(part.startswith(".") for part in p.relative_to(d).parts))
                 for d in subdirs}
    if any(per_class.values()):
        if top:
            raise DataError(f"The {purpose} folder {folder} mixes images ({top[0].name}, ...) with class "
                            "subfolders.", "Move every image into its class subfolder, or use a flat folder.")
        classes = sorted(per_class)
        labels_list = []
        for i, c in enumerate(classes):
            if not per_class[c]:
                warnings.append(f"{purpose}: class folder {c!r} in {folder} holds no images.")
            files.extend(per_class[c])
            labels_list.extend([i] * len(per_class[c]))
        labels = np.asarray(labels_list, dtype=np.int64)
    else:
        files = top
    if not files:
        raise DataError(f"The {purpose} folder {folder} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}).",
                        "Put images in it (flat, or one subfolder per class for evaluation), or point source "
                        "to an .npz file.")
    if skipped:
        warnings.append(f"{purpose}: skipped {len(skipped)} file(s) in {folder} that are not images "
                        f"({skipped[0].name}, ...).")
    return files, labels, classes, warnings


def _image_source(folder: Path, cfg: DataConfig, spec: IOSpec, purpose: str) -> _Source:
    t = _target_input(cfg, spec, f"the image folder {folder}", purpose)
    if len(t.shape) != 4:
        raise DataError(f"The {purpose} source is the image folder {folder}, but input {t.name!r} is "
                        f"{IOSpec.describe(t)}, not an image batch.",
                        "Images feed a 4-D input ([N,C,H,W] or [N,H,W,C]); use an .npz for other inputs.")
    pre = cfg.preprocess or Preprocess.for_input(t)
    _check_preprocess_dtype(pre, t, purpose)
    files, labels, classes, warnings = _list_images(folder, purpose)

    def rel(i: int) -> str:
        return files[i].relative_to(folder).as_posix()

    def take(idx):
        samples, first = [], None
        for i in idx:
            x = _load_image(files[i], rel(i), pre, t, spec, purpose, strict=cfg.preprocess is None)
            if first is None:
                first = (rel(i), x.shape)
            elif x.shape != first[1]:
                raise DataError(f"{folder}: image {rel(i)} gives a sample of shape {x.shape} but "
                                f"{first[0]} gives {first[1]}.",
                                f"Add resize and center_crop to [{purpose}.preprocess] so every image gets the "
                                "same size.")
            samples.append(x)
        return {t.name: np.stack(samples)}, (labels[idx] if labels is not None else None)

    return _Source(str(folder), len(files), take, lambda i: f"image {rel(i)}", warnings, classes)


def _check_preprocess_dtype(pre: Preprocess, t: TensorSpec, purpose: str) -> None:
    have, want = np.dtype(DTYPES[pre.dtype]), np.dtype(t.np_dtype)
    if have.kind == "f" and want.kind in "iub":
        raise UserInputError(f"[{purpose}.preprocess] dtype is {pre.dtype} but input {t.name!r} takes {t.dtype}.",
                             f'Set dtype = "{t.dtype}" and scale = 1 (and no mean/std) in [{purpose}.preprocess].')


def _load_image(path: Path, rel: str, pre: Preprocess, t: TensorSpec, spec: IOSpec, purpose: str,
                strict: bool) -> np.ndarray:
    img = open_image(path)
    raw_c = _image_channels(img)
    if strict and raw_c != pre.channels:
        kind = {1: "grayscale", 3: "colour"}
        raise DataError(f"Image {path} is {kind[raw_c]} ({img.mode}); input {t.name!r} {IOSpec.describe(t)} takes "
                        f"{pre.channels} channel(s).",
                        f"Convert the images, or add [{purpose}.preprocess] with channel_order = "
                        f"\"{'L' if pre.channels == 1 else 'RGB'}\" to convert them when loading.")
    x = pre.apply(img)
    _check_image_fit(x.shape, img.size, path, pre, t, spec, purpose)
    return x


def _check_image_fit(shape, raw_wh, path: Path, pre: Preprocess, t: TensorSpec, spec: IOSpec, purpose: str) -> None:
    c_axis, h_axis, w_axis = (0, 1, 2) if pre.layout == "NCHW" else (2, 0, 1)
    want = t.shape[1:]

    def fits(axis: int) -> bool:
        d, n = want[axis], shape[axis]
        return d == n if isinstance(d, int) else spec.dims[d].min <= n <= spec.dims[d].max

    def words(axis: int) -> str:
        d = want[axis]
        return str(d) if isinstance(d, int) else f"{spec.dims[d].min}..{spec.dims[d].max} ({d})"

    if not fits(c_axis):
        raise DataError(
            f"Image {path} gives {shape[c_axis]} channel(s) with channel_order {pre.channel_order!r} and layout "
            f"{pre.layout}; input {t.name!r} {IOSpec.describe(t)} takes {words(c_axis)} there.",
            f'In [{purpose}.preprocess] set channel_order ("L" for 1 channel, "RGB"/"BGR" for 3) and layout '
            "(NCHW or NHWC) to match the input.")
    if not (fits(h_axis) and fits(w_axis)):
        h, w = want[h_axis], want[w_axis]
        example = (f"resize = {h} and center_crop = [{h}, {w}]" if isinstance(h, int) and isinstance(w, int)
                   else "resize and center_crop within the range")
        raise DataError(
            f"Image {path} is {raw_wh[1]}x{raw_wh[0]} (HxW) and gives {shape[h_axis]}x{shape[w_axis]} after "
            f"preprocessing (resize={pre.resize}, center_crop={pre.center_crop}); input {t.name!r} "
            f"{IOSpec.describe(t)} takes {words(h_axis)}x{words(w_axis)}.",
            f"Add {example} to [{purpose}.preprocess], or resize the images.")


# ---- text -------------------------------------------------------------------------------------

def _text_source(path: Path, cfg: DataConfig, spec: IOSpec, purpose: str) -> _Source:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read the {purpose} text file {path}: {exc}.",
                        "Save it as UTF-8 text, one sample per line.") from None
    numbers = [i + 1 for i, ln in enumerate(lines) if ln]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(f"The {purpose} text file {path} holds no text.", "Write one sample per line.")
    tok = _load_tokenizer(cfg, purpose)
    max_length = cfg.max_length or _default_max_length(spec, purpose)

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
        return {k: np.asarray(v) for k, v in enc.items()}

    produced = encode(lines[:1])
    missing = [t.name for t in spec.inputs if t.name not in produced]
    if missing:
        raise DataError(f"The tokenizer in {cfg.tokenizer} produces {sorted(produced)}, but the model also "
                        f"takes {missing}.",
                        "Use the tokenizer the model was trained with, or a .npz/callable source that gives "
                        "every input.")
    names = [t.name for t in spec.inputs]
    ignored = sorted(set(produced) - set(names))
    warnings = [f"{purpose}: tokenizer outputs {ignored} are not model inputs; ignored."] if ignored else []

    def take(idx):
        enc = encode([lines[i] for i in idx])
        return {n: enc[n] for n in names}, None

    return _Source(str(path), len(lines), take, lambda i: f"line {numbers[i]}", warnings)


def _load_tokenizer(cfg: DataConfig, purpose: str):
    if not cfg.tokenizer:
        raise DataError(f"The {purpose} source {cfg.source} is text, but no tokenizer is set.",
                        f'Set tokenizer = "path/to/tokenizer_folder" in [{purpose}] (a folder written by '
                        "tokenizer.save_pretrained).")
    folder = cfg.resolve(cfg.tokenizer)
    if not folder.is_dir():
        raise DataError(f"The tokenizer folder {folder} does not exist.",
                        "Point tokenizer to a local folder written by tokenizer.save_pretrained(folder); "
                        "edgeopt does not download tokenizers.")
    transformers = require("transformers", "transformers", "tokenize text data")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise DataError(f"Cannot load the tokenizer from {folder}: {type(exc).__name__}: {exc}.",
                        "Save the tokenizer again with tokenizer.save_pretrained(folder).") from exc


def _default_max_length(spec: IOSpec, purpose: str) -> int:
    for t in spec.inputs:
        if len(t.shape) >= 2:
            d = t.shape[1]
            return d if isinstance(d, int) else spec.dims[d].opt
    raise UserInputError("Cannot tell the sequence length of the text inputs.",
                         f"Set max_length in [{purpose}].")


# ---- checks shared by every source --------------------------------------------------------------

def _conform(arrays: dict[str, np.ndarray], spec: IOSpec, where: str, describe: Callable[[int], str]) -> dict:
    """Cast to the spec's dtypes (safe casts only), check ranks and sizes, refuse NaN/Inf."""
    out, seen = {}, {}
    for t in spec.inputs:
        a = np.asarray(arrays[t.name])
        _check_finite(a, t.name, where, describe)
        a = _cast(a, t, where)
        _check_finite(a, t.name, where, describe, after_cast=True)
        _check_shape(a, t, spec, where, seen)
        out[t.name] = a
    return out


def _cast(a: np.ndarray, t: TensorSpec, where: str) -> np.ndarray:
    have, want = a.dtype, np.dtype(t.np_dtype)
    if have == want:
        return a
    fix = f"Save {t.name!r} as {t.dtype} (for example array.astype(numpy.{t.dtype}))."
    if have.kind not in "fiub":
        raise DataError(f"{where}: {t.name!r} is {have}, which is not numeric; the model takes {t.dtype}.", fix)
    if have.kind == "f" and want.kind in "iub":
        raise DataError(f"{where}: {t.name!r} is {have}; the model takes {t.dtype} and edgeopt does not round "
                        "floats to integers.", fix + " Check the values are whole numbers first.")
    if want.kind in "iub" and have.kind in "iu" and a.size:
        lo, hi = (0, 1) if want.kind == "b" else (np.iinfo(want).min, np.iinfo(want).max)
        amin, amax = int(a.min()), int(a.max())
        if amin < lo or amax > hi:
            raise DataError(f"{where}: {t.name!r} holds values {amin}..{amax} that do not fit {t.dtype}.", fix)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow into Inf is reported by the caller
        return a.astype(want)


def _check_finite(a: np.ndarray, key: str, where: str, describe: Callable[[int], str], after_cast: bool = False):
    if a.dtype.kind not in "fc" or a.size == 0:
        return
    bad = ~np.isfinite(a)
    if not bad.any():
        return
    per_sample = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim else np.array([True])
    first = int(np.argmax(per_sample))
    more = int(per_sample.sum()) - 1
    if after_cast:
        raise DataError(f"{where}: {key!r} overflows {a.dtype} at {describe(first)}"
                        + (f" (and {more} more samples)." if more else "."),
                        f"Scale the values into the range of {a.dtype}, or remove those samples.")
    raise DataError(f"{where}: {key!r} holds NaN or Inf at {describe(first)}"
                    + (f" (and {more} more samples)." if more else "."),
                    "Remove or repair those samples; NaN or Inf in calibration data breaks the INT8 scales.")


def _check_shape(a: np.ndarray, t: TensorSpec, spec: IOSpec, where: str, seen: dict) -> None:
    sample = t.shape[1:]
    want = "[" + ", ".join(str(d) for d in sample) + "]"
    fix = f"Store {t.name!r} as N samples of shape {want} stacked on axis 0 (the model takes {IOSpec.describe(t)})."
    if a.ndim != len(t.shape):
        raise DataError(f"{where}: {t.name!r} has shape {a.shape}; expected [N, {want[1:]} "
                        f"({a.ndim} axes instead of {len(t.shape)}).", fix)
    for axis, (d, n) in enumerate(zip(sample, a.shape[1:]), start=1):
        if isinstance(d, int) and d != n:
            raise DataError(f"{where}: {t.name!r} has shape {a.shape}; axis {axis} must be {d}.", fix)
        if isinstance(d, str):
            dim = spec.dims[d]
            if not dim.min <= n <= dim.max:
                raise DataError(f"{where}: {t.name!r} axis {axis} ({d}) is {n}, outside {dim.min}..{dim.max}.",
                                f"Keep {d} within {dim.min}..{dim.max} (pad or truncate), or widen [dims.{d}].")
            if seen.setdefault(d, (n, t.name))[0] != n:
                raise DataError(f"{where}: axis {d!r} is {seen[d][0]} in {seen[d][1]!r} but {n} in {t.name!r}.",
                                f"Give every input the same {d} size.")
