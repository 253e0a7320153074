"""``edgeopt init``: a commented starter recipe for a given model and data folder.

The recipe is text (comments included) built from what can be read without running the model: the image
size and channel count of the data, the folder layout (train / val / calib subfolders, or one subfolder per
class), and the options given. It is parsed back before it is written, so ``edgeopt init`` never writes a
recipe ``edgeopt build`` would refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeopt.errors import UserInputError

SPLITS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "test", "eval"),
          "calib": ("calib", "calibration")}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_splits(data: Path) -> dict[str, Path]:
    """{"train"?, "val"?, "calib"?} from DATA's subfolders; a folder of class subfolders alone is "val"."""
    if not data.is_dir():
        raise UserInputError(f"--data {data} is not a folder.",
                             "Give a folder of images: one subfolder per class, or train/ and val/ subfolders.")
    subs = {p.name.lower(): p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")}
    found = {k: subs[n] for k, names in SPLITS.items() for n in names if n in subs}
    if not found:
        found = {"val": data}
    if not any(_images(p) for p in found.values()):
        raise UserInputError(f"--data {data} holds no images.",
                             "Put images in it: one subfolder per class, or train/ and val/ subfolders.")
    return found


def image_shape(folder: Path) -> tuple[int, int, int, bool]:
    """(channels, height, width, all the same size) of the images in ``folder``."""
    from edgeopt.data.dataset import import_pil

    Image = import_pil("read the data's image sizes")
    sizes, modes = set(), set()
    for p in _images(folder)[:200]:
        with Image.open(p) as im:
            sizes.add(im.size)
            modes.add(im.mode)
    w, h = sorted(sizes)[0]
    channels = 1 if modes <= {"L", "1", "I;16", "I"} else 3
    return channels, h, w, len(sizes) == 1


def _q(s: str) -> str:
    return json.dumps(str(s))


def starter_recipe(model: str, data: str | Path, checkpoint: str | None = None, input_spec: str | None = None,
                   preprocess: str | None = None, kind: str = "cnn", name: str | None = None,
                   base: Path | None = None) -> str:
    """The recipe text. Paths are written relative to ``base`` (the recipe's folder) where possible."""
    from edgeopt.core.spec import parse_input_arg
    from edgeopt.data.presets import IMAGENET_MEAN, IMAGENET_STD

    base = (base or Path.cwd()).resolve()
    data = Path(data)
    splits = find_splits(data)

    def rel(p) -> str:
        p = Path(p).resolve()
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return p.as_posix()

    sample = splits.get("val") or splits.get("calib") or splits["train"]
    c, h, w, same = image_shape(sample)
    if input_spec:
        t = parse_input_arg(input_spec)
        shape = list(t.shape)
        iname, dtype = t.name, t.dtype
    else:
        iname, dtype, shape = "image", "float32", ["batch", c, h, w]
    if preprocess is None:
        preprocess = "none" if same and not input_spec else "imagenet"
    ih, iw = (shape[2], shape[3]) if len(shape) == 4 and isinstance(shape[1], int) and shape[1] in (1, 3) else (h, w)
    ic = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else c
    label = name or Path(model.partition(":")[0]).stem
    model_path = model.partition(":")
    src = f"{rel(model_path[0])}{':' + model_path[2] if model_path[1] else ''}" if Path(model_path[0]).exists() else model
    L = []
    L += ["# edgeopt recipe, written by `edgeopt init`. Build it with:  edgeopt build THIS_FILE -o out",
          "# Every key is explained in the README (\"The recipe\") and calibration/README.md.", "",
          "# Top-level keys go before the first [section] (TOML puts later keys into that section).",
          "# targets = [\"ort-cpu\", \"openvino-cpu\"]   # default: every target that runs here (edgeopt targets)",
          "precisions = [\"fp32\", \"int8\"]           # fp32 fp16 bf16 int8", "",
          "[model]", f"name = {_q(label)}",
          f"source = {_q(src)}          # file.py:factory | module:factory | model.onnx | model.pt2 | hf:FOLDER"]
    L += [f"checkpoint = {_q(rel(checkpoint) if Path(checkpoint).exists() else checkpoint)}"] if checkpoint else \
         ["# checkpoint = \"finetuned.pt\"          # state_dict for the factory's model"]
    L += [f"kind = {_q(kind)}                        # cnn | transformer | detector | generic",
          "outputs = [\"logits\"]                  # names of the model's outputs, in order (default output, output_1, ...)",
          "# allow_pickle = true                  # only for checkpoints you trust", "",
          "[[inputs]]", f"name = {_q(iname)}",
          f"shape = {json.dumps(shape)}   # strings are dynamic axes, declared under [dims]",
          f"dtype = {_q(dtype)}", "range = [0.0, 1.0]                     # values of random parity samples", ""]
    dyn = [d for d in shape if isinstance(d, str)]
    for d in dyn:
        L += [f"[dims.{d}]", "min = 1", "opt = 1", "max = 32", ""]
    pre = ["# How images become the input: out = (pixels * scale - mean) / std, per channel"]
    order = "RGB" if ic == 3 else "L"
    if preprocess == "imagenet":
        pre += [f"resize = {int(round(min(ih, iw) / 0.875))}                          # shorter side",
                f"center_crop = [{ih}, {iw}]",
                f"mean = {json.dumps(IMAGENET_MEAN if ic == 3 else IMAGENET_MEAN[:1])}",
                f"std = {json.dumps(IMAGENET_STD if ic == 3 else IMAGENET_STD[:1])}"]
    elif preprocess == "resize":
        pre += [f"resize = [{ih}, {iw}]"]
    else:
        pre += [f"# resize = {int(round(min(ih, iw) / 0.875))}", f"# center_crop = [{ih}, {iw}]",
                "# mean = [0.485, 0.456, 0.406]", "# std = [0.229, 0.224, 0.225]"]
    pre += [f"channel_order = {_q(order)}                # RGB | BGR | L", "scale = 0.00392156862745098      # 1/255"]
    calib = splits.get("calib") or splits.get("train") or splits["val"]
    L += ["[calibration]                          # INT8 calibration samples (labels are not needed)",
          f"source = {_q(rel(calib))}", "size = 300",
          "[calibration.preprocess]               # also shipped in bundles: model.preprocess(\"cat.jpg\")", *pre, ""]
    if "val" in splits:
        L += ["[evaluation]                           # one subfolder per class -> top-1 for every artifact",
              f"source = {_q(rel(splits['val']))}", "size = \"all\"", "[evaluation.preprocess]", *pre[1:], ""]
    L += ["[compression]", "max_drop = 1.0                         # INT8 budget: points of top-1 vs FP32", ""]
    train = splits.get("train")
    L += ["# Pruning with a recovery fine-tune (edgeopt compress THIS_FILE --prune structured ...):",
          "# [pruning]", "# method = \"structured\"", "# ratio = 0.5", "# [pruning.finetune]",
          f"# source = {_q(rel(train)) if train else _q('train/')}   # images in class subfolders, preprocessed as above",
          "# epochs = 3", "",
          "[profile]", "batches = [1, 8]"]
    text = "\n".join(L) + "\n"
    _check(text, base)
    return text


def _check(text: str, base: Path) -> None:
    """Parse the text back as a recipe (never write one `edgeopt build` refuses)."""
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.core.resources import import_tomllib

    recipe_from_dict(import_tomllib().loads(text), base)
