"""Named image preprocessing presets for the CLI (``--preprocess``) and ``edgeopt init``.

A preset becomes an ordinary ``[*.preprocess]`` table sized for the model's image input; numpy only.
"""

from __future__ import annotations

from edgeopt.errors import UserInputError

PRESETS = ("none", "resize", "imagenet")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def image_size(spec, input_name: str | None = None) -> tuple[int, int, int, str] | None:
    """(channels, height, width, layout) of an image-like input (rank 4, fixed C/H/W), else None."""
    t = next((t for t in spec.inputs if input_name in (None, t.name)), None)
    if t is None or len(t.shape) != 4 or not t.dtype.startswith(("float", "uint8")):
        return None
    _, a, b, c = t.shape
    if isinstance(a, int) and a in (1, 3) and isinstance(b, int) and isinstance(c, int):
        return a, b, c, "NCHW"
    if isinstance(c, int) and c in (1, 3) and isinstance(a, int) and isinstance(b, int):
        return c, a, b, "NHWC"
    return None


def preset(name: str, spec, input_name: str | None = None) -> dict | None:
    """The preprocessing table of preset ``name`` for the model's (first) image input.

    - ``none``: images must already have the input's size (pixels scaled to 0..1);
    - ``resize``: resized to the input's height and width, scaled to 0..1;
    - ``imagenet``: torchvision's classification recipe: shorter side to size/0.875, center crop, RGB,
      ImageNet mean and std.
    """
    if name not in PRESETS:
        raise UserInputError(f"Unknown preprocessing preset {name!r}.", f"Use one of: {', '.join(PRESETS)}.")
    if name == "none":
        return None
    size = image_size(spec, input_name)
    if size is None:
        raise UserInputError(f"--preprocess {name} needs an image input shaped [batch, C, H, W] or [batch, H, W, C] "
                             "with fixed C (1 or 3), H and W.",
                             "Declare it with --input, e.g. --input image:float32[batch,3,224,224], or write the "
                             "[calibration.preprocess] table in a recipe (edgeopt init writes one).")
    c, h, w, layout = size
    out: dict = {"channel_order": "RGB" if c == 3 else "L", "layout": layout}
    if name == "resize":
        out["resize"] = [h, w]
        return out
    out.update({"resize": int(round(min(h, w) / 0.875)), "center_crop": [h, w],
                "mean": IMAGENET_MEAN if c == 3 else IMAGENET_MEAN[:1],
                "std": IMAGENET_STD if c == 3 else IMAGENET_STD[:1]})
    return out
