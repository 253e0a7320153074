"""Ultralytics checkpoints (``[model] source = "best.pt"``, as Ultralytics training writes them): no factory file.

An Ultralytics ``.pt`` is a full pickle (the model object itself), so it is read only when the recipe trusts it
(``[model] allow_pickle = true``), as any pickled checkpoint. From it come the model (the EMA weights when the
checkpoint still holds them, in float, Conv+BN fused as Ultralytics runs it), its task (``detect``: the raw head
``[B, 4 + C, N]``, cx, cy, w, h in input pixels then C class scores: ``[task] format = "yolo"``; ``classify``:
class probabilities), its class names and the image size it was trained at. Needs torch; ultralytics itself
must be importable for the unpickling (``pip install ultralytics``).
"""

from __future__ import annotations

from pathlib import Path

from edgeopt.errors import ModelLoadError, UserInputError

TASKS = {"detect": ("detector", "detection", "yolo"), "classify": ("cnn", "classification", None)}
CLASS_TASKS = {"DetectionModel": "detect", "ClassificationModel": "classify", "SegmentationModel": "segment",
               "PoseModel": "pose", "OBBModel": "obb", "WorldModel": "detect"}


def is_checkpoint(obj) -> bool:
    """An Ultralytics training checkpoint: a dict whose ``model`` (or ``ema``) is an Ultralytics module."""
    if not isinstance(obj, dict):
        return False
    return any(type(obj.get(k)).__module__.startswith("ultralytics.") for k in ("ema", "model"))


def _names(model) -> list[str]:
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        try:
            return [str(names[k])[:1000] for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            return []
    if isinstance(names, (list, tuple)):
        return [str(n)[:1000] for n in names]
    return []


def _imgsz(ckpt: dict, model) -> list[int] | None:
    for args in (ckpt.get("train_args"), getattr(model, "args", None)):
        v = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
        if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536:
            return [v, v]
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and 0 < x <= 65536 for x in v):
            return [int(v[0]), int(v[1])]
    return None


def inputs_of(ckpt: dict, path: Path) -> tuple[list[dict], dict]:
    """([[inputs]], [preprocess]) as Ultralytics feeds the checkpoint's model: one RGB image ``images`` [1, 3, H,
    W] in 0..1 at the size it was trained at; a detector's photos letterboxed into it (grey 114 padding), a
    classifier's resized by the shorter side and centre-cropped (Ultralytics' ``classify_transforms``)."""
    net = ckpt.get("ema") or ckpt.get("model")
    size = _imgsz(ckpt, net)
    if size is None:
        raise UserInputError(f"{path} does not record the image size its model was trained at, and the recipe "
                             "declares no [[inputs]].", 'Declare [[inputs]] name = "images" shape = [1, 3, 640, 640].')
    h, w = size
    task = getattr(net, "task", None) or CLASS_TASKS.get(type(net).__name__)
    pre = {"resize": [h, w], "letterbox": True} if task == "detect" else {"resize": min(h, w), "center_crop": [h, w]}
    return [{"name": "images", "shape": [1, 3, h, w], "range": [0.0, 1.0]}], pre


def load_checkpoint(ckpt: dict, path: Path):
    """(flat-ready module returning the head's first output, facts read from the checkpoint)."""
    import torch

    net = ckpt.get("ema") or ckpt.get("model")
    task = getattr(net, "task", None) or CLASS_TASKS.get(type(net).__name__)
    if task not in TASKS:
        raise UserInputError(f"{path} is an Ultralytics {task or type(net).__name__} checkpoint; edgeopt judges "
                             f"Ultralytics {' and '.join(TASKS)} checkpoints.",
                             "Export this model to ONNX with Ultralytics (model.export(format='onnx')) and give the "
                             ".onnx file as [model] source, with [task] type = \"generic\".")
    try:
        net = net.float()
        if hasattr(net, "fuse"):
            net = net.fuse(verbose=False) if "verbose" in net.fuse.__code__.co_varnames else net.fuse()
        net = net.eval()
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: the Ultralytics model cannot be prepared for inference: {exc}",
                             "Check that the installed ultralytics is the version that trained it.") from exc
    stride = getattr(net, "stride", None)
    stride = int(torch.as_tensor(stride).max()) if stride is not None else None

    class Head(torch.nn.Module):
        """The model's first output: the raw head (detect) or the class probabilities (classify)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            out = self.inner(images)
            return out[0] if isinstance(out, (list, tuple)) else out

    kind, task_type, fmt = TASKS[task]
    facts = {"format": "ultralytics", "task": task, "classes": _names(net), "imgsz": _imgsz(ckpt, net),
             "stride": stride, "ultralytics_version": str(ckpt.get("version"))[:64] if ckpt.get("version") else None,
             "weights": "ema" if ckpt.get("ema") is not None else "model",
             "kind": kind, "task_type": task_type, "head_format": fmt}
    return Head(net).eval(), facts


def check_input_size(facts: dict, spec) -> list[str]:
    """The declared image size against the checkpoint's: an error when the stride does not divide it, a note
    when it differs from the size the model was trained at."""
    images = [t for t in spec.inputs if len(t.shape) == 4]
    if not images:
        raise UserInputError("An Ultralytics model takes images [batch, 3, height, width]; no such input is declared.",
                             'Declare [[inputs]] name = "images" shape = [1, 3, 640, 640].')
    h, w = (spec.shape_of(images[0], which="opt")[2:])
    notes = []
    s = facts.get("stride")
    if s and (h % s or w % s):
        raise UserInputError(f"The input size {h}x{w} is not a multiple of the model's stride {s}.",
                             f"Use a size divisible by {s}, e.g. the size it was trained at "
                             f"({'x'.join(map(str, facts['imgsz'] or [640, 640]))}).")
    if facts.get("imgsz") and [h, w] != facts["imgsz"]:
        notes.append(f"The model was trained at {facts['imgsz'][0]}x{facts['imgsz'][1]}; the recipe builds it for "
                     f"{h}x{w}.")
    return notes
