"""Preprocess: how an image becomes a model input (resize, crop, layout, scale), and the small helpers it
shares with the data loader. Numpy and the standard library at module level: the on-device runtime uses it and
needs Pillow only when it resizes, crops or converts images."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.errors import DataError, UserInputError, require
from edgeopt.core.checks import PAIR, PER_CHANNEL, boolean, either, integer, key, keys_of, number, text
from edgeopt.core.spec import DTYPES, IOSpec, TensorSpec
from edgeopt.core.untrusted import printable



CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}
LAYOUTS = ("NCHW", "NHWC")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
_GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def import_pil(purpose: str = "read images"):
    return require("PIL.Image", "images", purpose)


def is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def unknown_keys(d: Mapping, known, where: str) -> None:
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

    resize: int | tuple[int, int] | None = key(
        None, check=either(integer(1, 65536), PAIR, want="an integer or [height, width] from 1 to 65536"),
        doc="the shorter side (aspect ratio kept), or [height, width]")
    center_crop: tuple[int, int] | None = key(
        None, check=either(integer(1, 65536), PAIR, want="an integer or [height, width] from 1 to 65536"),
        doc="[height, width], or one size for a square")
    mean: tuple[float, ...] | None = key(None, check=PER_CHANNEL, doc="per channel, in the output channel order")
    std: tuple[float, ...] | None = key(None, check=PER_CHANNEL, doc="per channel, in the output channel order")
    scale: float = key(1 / 255, check=number(0, None, above=True), doc="pixels are multiplied by it first")
    channel_order: str = key("RGB", check=text(8), doc="RGB | BGR | L")
    layout: str = key("NCHW", check=text(8), doc="NCHW | NHWC")
    dtype: str = key("float32", check=text(16), doc="the input's dtype")
    interpolation: str = key("bilinear", check=text(16), doc="resize filter: nearest | bilinear | bicubic | lanczos")
    letterbox: bool = key(False, check=boolean, doc="detectors: fit inside resize = [h, w], pad the rest")
    pad_value: int = key(114, check=integer(0, 255), doc="letterbox padding (114, grey, as Ultralytics)")

    KEYS = ()  # set below the class: its recipe keys, in order

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
        if not is_int(self.pad_value) or not 0 <= self.pad_value <= 255:
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
        unknown_keys(d, cls.KEYS, where)
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
        _check_image_size(size[1], size[0], "the resized image")  # a shorter side on a very long image
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
    if is_int(value) and allow_int:
        if value < 1:
            raise UserInputError(f"{where} is {value}.", "Use a positive size.")
        _check_image_size(int(value), int(value), where)
        return int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) and v >= 1 for v in value):
        _check_image_size(int(value[0]), int(value[1]), where)
        return (int(value[0]), int(value[1]))
    raise UserInputError(f"{where} is {printable(repr(value), 80)}.", "Use one positive int or [height, width].")


def _check_image_size(h: int, w: int, where: str) -> None:
    """A resize or crop within the named limits MAX_IMAGE_SIDE and MAX_IMAGE_PIXELS (a manifest saying
    [60000, 60000] cost 3.7 GB and a MemoryError)."""
    from edgeopt.core.bounded import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

    if max(h, w) > MAX_IMAGE_SIDE or h * w > MAX_IMAGE_PIXELS:
        raise UserInputError(f"{where} is [{h}, {w}]: over the limits MAX_IMAGE_SIDE = {MAX_IMAGE_SIDE} and "
                             f"MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} ({h * w} pixels).",
                             "Use the model's input size (a few hundred pixels a side).")


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


def image_channels(img) -> int:
    """1 for grayscale images, 3 for colour ones (palette, RGBA, CMYK ... count as colour)."""
    return 1 if img.mode in _GRAY_MODES else 3


Preprocess.KEYS = tuple(keys_of(Preprocess))
