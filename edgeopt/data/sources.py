"""The data sources ``load_dataset`` opens: arrays (.npz, .npy), Python callables, image folders and text
files with a tokenizer; each is checked against the model's inputs before anything is built
(see :mod:`edgeopt.data.dataset`)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt.errors import DataError, UserInputError, require
from edgeopt.core.spec import DTYPES, IOSpec, TensorSpec
from edgeopt.data.preprocess import Preprocess, image_channels, open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
MAX_CALLABLE_SAMPLES = 100_000  # a generator that never ends is cut here (with a warning)


def check_label_count(labels: np.ndarray, n: int, where: str, key: str) -> None:
    m = labels.shape[0] if labels.ndim else 0
    if m != n:
        raise DataError(f"{where}: {key!r} holds {m} labels but there are {n} samples.",
                        "Give exactly one label per sample, in sample order.")



# ================================================================================================
# sources
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




def open_source(cfg, spec: IOSpec, purpose: str) -> _Source:
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


def _target_input(cfg, spec: IOSpec, what: str, purpose: str) -> TensorSpec:
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

def _array_source(arrays: dict[str, np.ndarray], labels: np.ndarray | None, where: str, cfg,
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
    arrays = conform(arrays, spec, where, lambda i: f"sample {i}")
    if labels is not None:
        check_label_count(labels, total, where, cfg.labels)
        _check_finite(labels, cfg.labels, where, lambda i: f"sample {i}")

    def take(idx):
        picked = np.asarray(labels[idx]) if labels is not None else None
        return {k: np.asarray(v[idx]) for k, v in arrays.items()}, picked

    return _Source(where, total, take, lambda i: f"sample {i}", warnings)


def _split_keys(data: dict, spec: IOSpec, cfg, where: str, purpose: str, fix: str):
    names = [t.name for t in spec.inputs]
    missing = [n for n in names if n not in data]
    if missing:
        raise DataError(f"{where} lacks the input{'s' if len(missing) > 1 else ''} {missing} "
                        f"(it holds {sorted(data)}); the model takes {names}.", fix)
    ignored = sorted(k for k in data if k not in names and k != cfg.labels)
    warnings = [f"{purpose}: {where}: ignored arrays {ignored} (not inputs of the model)."] if ignored else []
    return {n: data[n] for n in names}, data.get(cfg.labels), warnings


def _npz_source(path: Path, cfg, spec: IOSpec, purpose: str) -> _Source:
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


def _npy_source(path: Path, cfg, spec: IOSpec, purpose: str) -> _Source:
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


def _import_callable(cfg, kind: str, target: str, func: str, purpose: str):
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


def _callable_source(cfg, spec: IOSpec, purpose: str, kind: str, target: str, func: str) -> _Source:
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
            check_label_count(lab, n, f"{where}: batch {b}", cfg.labels)
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


def _image_source(folder: Path, cfg, spec: IOSpec, purpose: str) -> _Source:
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
    raw_c = image_channels(img)
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

def _text_source(path: Path, cfg, spec: IOSpec, purpose: str) -> _Source:
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


def _load_tokenizer(cfg, purpose: str):
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

def conform(arrays: dict[str, np.ndarray], spec: IOSpec, where: str, describe: Callable[[int], str]) -> dict:
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
