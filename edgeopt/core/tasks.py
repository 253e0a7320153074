"""What a model is for, and how an artifact is judged by it. Numpy only (runs on devices too).

Every artifact is scored by its task's metric on real samples (the evaluation set, or real samples held out of
calibration), against labels when there are any, else against the FP32 model's own outputs on the same
samples. The INT8 guard, the INT8 parity gate, the table and ``edgeopt verify``'s self-test all use it.

- ``classification``: top-1 / top-5 with labels; without, top-1 agreement and top-5 overlap with FP32.
- ``embedding``: the pooled (mean over the attention mask, CLS, or an already pooled output), L2-normalised
  embedding; per-sample cosine with FP32 (min, p5, mean) and nearest-neighbour agreement.
- ``detection``: decoded detections -> mAP (see :mod:`edgeopt.core.detection`).
- ``segmentation``: per-pixel classes -> mIoU (see :mod:`edgeopt.core.segmentation`).
- ``generic``: each output judged on its own (never one cosine over concatenated outputs); a named mask input
  excludes padded positions.

A metric's ``value`` is a fraction in [0, 1], higher is better; budgets are in points (1 point = 0.01) for
the accuracy-like metrics and in cosine for the similarity-like ones (``budget = "points" | "cosine"``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable

import numpy as np

from edgeopt.errors import DataError, UserInputError
from edgeopt.core.checks import key, reject_unknown

TASK_TYPES = ("classification", "embedding", "detection", "segmentation", "generic")
POOLINGS = ("mean", "cls", "none")


@dataclass(frozen=True)
class TaskConfig:
    """``[task]`` of a recipe."""

    type: str = key("auto", doc="classification | embedding | detection | segmentation | generic | auto (from [model] "
                    "kind and outputs)")
    output: str | None = key(None, doc='the output judged (default: the first; generic: all)')
    pooling: str = key("mean", doc='embedding: mean (over the mask) | cls | none (the output is already pooled)')
    mask_input: str | None = key(None,
                                 doc='the attention-mask input (default: an integer input whose name has "mask")')
    # detection (edgeopt.core.detection)
    format: str = key("auto", doc='torchvision (boxes/scores/labels outputs) | yolo (raw head [B, 4+C, N]) | auto (from '
                      "the outputs' shapes)")
    boxes: str | None = key(None, doc='torchvision-style output names (default: boxes, scores, labels)')
    scores: str | None = key(None, doc="the scores output (default: scores)")
    labels: str | None = key(None, doc="the labels output (default: labels)")
    score_threshold: float = key(0.001, doc='detections kept for mAP')
    iou_threshold: float = key(0.7, doc='NMS for raw heads')
    max_detections: int = key(300, doc="detections per image kept, 1 to 10000")
    label_threshold: float = key(0.25,
                                 doc="without annotations: FP32's detections scoring this or more are the labels")
    annotations: str | None = key(None, doc="COCO JSON or a folder of YOLO txt files; default: FP32's detections")
    background_class: int = key(-1, doc='per-class scores before NMS: the "no object" class (torchvision SSD: 0), '
                                "or -1")

    def __post_init__(self):
        if self.type not in (*TASK_TYPES, "auto"):
            raise UserInputError(f"[task] type {self.type!r} is unknown.", f"Use one of: {', '.join(TASK_TYPES)}.")
        if self.pooling not in POOLINGS:
            raise UserInputError(f"[task] pooling {self.pooling!r} is unknown.", f"Use one of: {', '.join(POOLINGS)}.")
        if self.format not in ("torchvision", "yolo", "auto"):
            raise UserInputError(f"[task] format {self.format!r} is unknown.", "Use torchvision or yolo.")
        for name in ("score_threshold", "iou_threshold", "label_threshold"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise UserInputError(f"[task] {name} = {v!r} is not a number in [0, 1].", f"For example {name} = 0.5.")
        if not isinstance(self.max_detections, int) or isinstance(self.max_detections, bool) \
                or not 1 <= self.max_detections <= 10000:
            raise UserInputError(f"[task] max_detections = {self.max_detections!r} is not in 1..10000.",
                                 "For example max_detections = 300.")
        if not isinstance(self.background_class, int) or isinstance(self.background_class, bool) \
                or not -1 <= self.background_class <= 100_000:
            raise UserInputError(f"[task] background_class = {self.background_class!r} is not a class index or -1.",
                                 "For example background_class = 0 (torchvision's SSD), or -1 for none.")
        for name in ("output", "mask_input", "boxes", "scores", "labels", "annotations"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v or len(v) > 4096):
                raise UserInputError(f"[task] {name} must be a non-empty string.", f"Write {name} = \"...\".")

    @classmethod
    def from_dict(cls, data: dict | None) -> "TaskConfig":
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise UserInputError("[task] must be a table.", 'Write [task] with type = "classification" (or another).')
        reject_unknown("task", data, cls)
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserInputError(f"[task] is invalid: {exc}.", "See the README's Tasks section.") from None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def resolve(self, kind: str, output_shapes: dict[str, tuple], has_labels: bool) -> "TaskConfig":
        """``auto`` made concrete from the model kind and the FP32 outputs' shapes (batch axis included)."""
        from dataclasses import replace

        t = self._resolve_type(kind, output_shapes, has_labels)
        if t.type == "detection" and t.format == "auto":  # a raw YOLO head tells by its shape
            t = replace(t, format=detection_format(t, output_shapes))
        return t

    def _resolve_type(self, kind: str, output_shapes: dict[str, tuple], has_labels: bool) -> "TaskConfig":
        from dataclasses import replace

        if self.type != "auto":
            return self
        first = next(iter(output_shapes.values()), ())
        if kind == "detector":
            return replace(self, type="detection")
        if kind == "cnn" or has_labels or len(first) == 2:
            return replace(self, type="classification")
        if kind == "transformer" and len(first) == 3:
            return replace(self, type="embedding")
        return replace(self, type="generic")


def detection_format(task: TaskConfig, output_shapes: dict[str, tuple]) -> str:
    """``yolo`` when the judged output is one raw head ``[B, 4 + C, N]`` (or ``[B, N, 4 + C]``) and no output is
    named like torchvision's boxes/scores; else ``torchvision``."""
    if not output_shapes:
        return "torchvision"
    name = task.output if task.output in output_shapes else next(iter(output_shapes))
    shape = tuple(output_shapes[name])
    named = any(k in n.lower() for n in output_shapes for k in ("box", "score"))
    return "yolo" if len(shape) == 3 and min(shape[1:]) >= 5 and not named else "torchvision"


# ------------------------------------------------------------------------------------------------
# running a model over real samples
# ------------------------------------------------------------------------------------------------

@dataclass
class Outputs:
    """One model's outputs over a list of real feeds (one dict per batch), with those feeds and their labels."""

    feeds: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None

    def stacked(self, name: str) -> np.ndarray:
        try:
            return np.concatenate([np.asarray(o[name]) for o in self.outputs])
        except KeyError:
            raise DataError(f"The model has no output {name!r} (it has {sorted(self.outputs[0])}).",
                            "Name an existing output in [task] output.") from None
        except ValueError as exc:
            raise DataError(f"Output {name!r} has different shapes across batches: {exc}.",
                            "Evaluate with a fixed sequence length / image size, or batch 1.") from None

    def names(self) -> list[str]:
        return list(self.outputs[0]) if self.outputs else []


def run_over(infer: Callable[[dict], dict], feeds: Iterable[dict], labels: np.ndarray | None = None) -> Outputs:
    feeds = list(feeds)
    return Outputs(feeds=feeds, outputs=[infer(f) for f in feeds], labels=labels)


def dataset_feeds(dataset, batch: int) -> tuple[list[dict], np.ndarray | None]:
    """A dataset as batched feeds and its labels (None without)."""
    feeds, labels = [], []
    for feed, lab in dataset.batches(batch):
        feeds.append(feed)
        labels.append(lab)
    return feeds, (np.concatenate(labels) if dataset.labels is not None else None)


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------

def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.sum(a * b, axis=1) / (na * nb)
    c = np.where(both_zero, 1.0, np.nan_to_num(c, nan=0.0))
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        c = np.where(np.all(np.isfinite(b), axis=1) & np.all(np.isfinite(a), axis=1), c, 0.0)
    return c


def _summary(c: np.ndarray) -> dict:
    return {"min": float(np.min(c)), "p5": float(np.percentile(c, 5)), "mean": float(np.mean(c))}


def _cosines(c: np.ndarray) -> dict:
    """Per-sample cosines as record fields: cosine (the mean), cosine_min, cosine_p5."""
    s = _summary(c)
    return {"cosine": s["mean"], "cosine_min": s["min"], "cosine_p5": s["p5"]}


def _output_name(task: TaskConfig, got: Outputs) -> str:
    return task.output or got.names()[0]


def classification(task: TaskConfig, got: Outputs, ref: Outputs | None) -> dict:
    name = _output_name(task, got)
    logits = got.stacked(name)
    if logits.ndim != 2:
        raise DataError(f"Cannot score a classifier: output {name!r} has shape {list(logits.shape)}, not "
                        "[batch, classes].", 'Set [task] output to the logits, or type = "generic".')
    order = np.argsort(-logits, axis=1)
    n = int(logits.shape[0])
    if got.labels is not None:
        labels = np.asarray(got.labels).reshape(-1)
        if labels.shape[0] != n:
            raise DataError(f"Cannot score a classifier: {n} outputs for {labels.shape[0]} labels.",
                            "Give one integer label per sample.")
        top1 = float(np.mean(order[:, 0] == labels))
        out = {"metric": "top1", "label": "top-1", "value": top1, "top1": top1, "samples": n, "budget": "points"}
        if logits.shape[1] >= 5:
            out["top5"] = float(np.mean(np.any(order[:, :5] == labels[:, None], axis=1)))
        return out
    if ref is None:
        raise DataError("No labels and no FP32 outputs to compare with.", "Give labels with the evaluation data.")
    r = ref.stacked(name)
    rorder = np.argsort(-r, axis=1)
    agree = float(np.mean(order[:, 0] == rorder[:, 0]))
    out = {"metric": "top1_agreement", "label": "agree", "value": agree, "top1_agreement": agree, "samples": n,
           "budget": "points", **_cosines(_cos_rows(r, logits))}
    if logits.shape[1] >= 5:
        k = 5
        overlap = [len(set(order[i, :k]) & set(rorder[i, :k])) / k for i in range(n)]
        out["top5_overlap"] = float(np.mean(overlap))
    return out


def _mask_for(task: TaskConfig, feeds: list[dict]) -> str | None:
    if task.mask_input:
        if task.mask_input not in feeds[0]:
            raise DataError(f"[task] mask_input {task.mask_input!r} is not an input (inputs: {sorted(feeds[0])}).",
                            "Name the attention-mask input.")
        return task.mask_input
    for k, v in feeds[0].items():
        if "mask" in k.lower() and np.issubdtype(np.asarray(v).dtype, np.integer):
            return k
    return None


def pooled(task: TaskConfig, out: Outputs) -> np.ndarray:
    """The L2-normalised embeddings of ``out`` as the recipe's pooling makes them: [samples, dim]."""
    name = _output_name(task, out)
    h = out.stacked(name).astype(np.float64)
    if task.pooling == "none" or h.ndim == 2:
        e = h.reshape(h.shape[0], -1)
    elif task.pooling == "cls":
        e = h[:, 0]
    else:
        mask_name = _mask_for(task, out.feeds)
        if mask_name is None:
            e = h.mean(axis=1)
        else:
            m = np.concatenate([np.asarray(f[mask_name]) for f in out.feeds]).astype(np.float64)
            if m.shape != h.shape[:2]:
                raise DataError(f"The mask {mask_name!r} has shape {list(m.shape)}; output {name!r} has "
                                f"{list(h.shape)}.", "Pool an output shaped [batch, sequence, hidden].")
            e = (h * m[..., None]).sum(axis=1) / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norm == 0, 1.0, norm)


def _nearest(e: np.ndarray) -> np.ndarray:
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return np.argmax(s, axis=1)


def embedding(task: TaskConfig, got: Outputs, ref: Outputs | None) -> dict:
    if ref is None:
        raise DataError("An embedding is judged against the FP32 model's embeddings, which are missing.",
                        "Give evaluation (or calibration) data.")
    e, r = pooled(task, got), pooled(task, ref)
    c = np.sum(e * r, axis=1)
    out = {"metric": "embedding_cosine", "label": "emb cos", "value": float(np.mean(c)), **_cosines(c),
           "samples": int(len(c)), "budget": "cosine", "pooling": task.pooling}
    if len(c) >= 3:
        out["nn_agreement"] = float(np.mean(_nearest(e) == _nearest(r)))
    return out


def generic(task: TaskConfig, got: Outputs, ref: Outputs | None) -> dict:
    if ref is None:
        raise DataError("Outputs are judged against the FP32 model's, which are missing.", "Give evaluation data.")
    mask_name = _mask_for(task, got.feeds) if task.mask_input else None
    per = {}
    for name in ([task.output] if task.output else ref.names()):
        a, b = ref.stacked(name), got.stacked(name)
        if a.shape != b.shape:
            per[name] = {"min": 0.0, "p5": 0.0, "mean": 0.0, "shape_ref": list(a.shape), "shape_got": list(b.shape)}
            continue
        if not np.issubdtype(a.dtype, np.floating):
            eq = float(np.mean(a == b))
            per[name] = {"min": eq, "p5": eq, "mean": eq}
            continue
        if mask_name is not None:
            m = np.concatenate([np.asarray(f[mask_name]) for f in got.feeds]).astype(bool)
            if a.shape[:2] == m.shape:
                a, b = a * m.reshape(m.shape + (1,) * (a.ndim - 2)), b * m.reshape(m.shape + (1,) * (b.ndim - 2))
        per[name] = _summary(_cos_rows(a, b))
    worst = min(per, key=lambda k: per[k]["mean"])
    return {"metric": "output_cosine", "label": "cos", "value": per[worst]["mean"], "outputs": per, "worst": worst,
            "samples": int(sum(next(iter(o.values())).shape[0] if np.ndim(next(iter(o.values()))) else 1
                               for o in got.outputs)),
            "budget": "cosine"}


def detection(task: TaskConfig, got: Outputs, ref: Outputs | None) -> dict:
    from edgeopt.core.detection import detection_metric

    return detection_metric(task, got, ref)


def segmentation(task: TaskConfig, got: Outputs, ref: Outputs | None) -> dict:
    from edgeopt.core.segmentation import segmentation_metric

    return segmentation_metric(task, got, ref)


METRICS: dict[str, Callable[[TaskConfig, Outputs, Outputs | None], dict]] = {
    "classification": classification, "embedding": embedding, "detection": detection,
    "segmentation": segmentation, "generic": generic}


def evaluate(task: TaskConfig, got: Outputs, ref: Outputs | None) -> dict:
    """The task's metric for ``got`` (labels in ``got.labels``; ``ref`` the FP32 outputs on the same feeds)."""
    if task.type not in METRICS:
        raise UserInputError(f"Task {task.type!r} is not resolved.", "Call TaskConfig.resolve first.")
    out = METRICS[task.type](task, got, ref)
    out["task"] = task.type
    return out


def below(value: float, bound: float, digits: int = 4) -> str:
    """``value`` (< ``bound``) with enough decimals that it does not print as ``bound`` or above it
    (0.99996 against 0.9999999 is "0.99996", not "1.0000")."""
    for d in range(digits, 10):
        text = f"{value:.{d}f}"
        if float(text) < bound:
            return text
    return repr(value)


def judge(result: dict, base: dict | None, max_drop_points: float, min_cosine: float) -> dict:
    """Compare a metric with the FP32 model's. Adds drop_points (points tasks) and the verdict (within_budget, why).

    ``max_drop_points``: allowed drop in points for accuracy-like metrics (already relative-adjusted by the caller);
    ``min_cosine``: the floor for similarity-like metrics (their FP32 value is 1 by definition)."""
    reasons = []
    if result.get("budget") == "cosine":
        if result["value"] < min_cosine:
            reasons.append(f"{result['label']} {below(result['value'], min_cosine)} < {min_cosine}")
    else:
        ref_value = 1.0 if base is None or result["metric"] != base.get("metric") else base["value"]
        drop = (ref_value - result["value"]) * 100
        result["drop_points"] = drop
        if drop > max_drop_points + 1e-9:
            reasons.append(f"{result['label']} drop {drop:.2f} points > budget {max_drop_points:.2f}")
    result["within_budget"] = not reasons
    result["why"] = "; ".join(reasons) or None
    return result


def describe(result: dict | None) -> str:
    """One short figure for progress lines: 'top-1 98.89%', 'agree 97.50%', 'emb cos 0.9971', 'mAP50 81.2%'."""
    if not result:
        return ""
    if result.get("budget") == "cosine":
        return f"{result['label']} {result['value']:.4f}"
    return f"{result['label']} {result['value'] * 100:.2f}%"
