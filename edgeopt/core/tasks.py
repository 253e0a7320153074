"""What a model is for, and how an artifact is judged by it. Numpy only (runs on devices too).

Every artifact is scored by its task's metric on real samples (the evaluation set, or real samples held out of
calibration), against labels when there are any, else against the FP32 model's own outputs on the same
samples. The INT8 guard, the INT8 parity gate, the table and ``edgeopt verify``'s self-test all use it.

- ``classification``: top-1 / top-5 with labels; without, the expected top-1 under the FP32 model's own
  probabilities (below), with top-1 agreement, top-5 overlap and flip counts beside it.
- ``embedding``: the pooled (mean over the attention mask, CLS, or an already pooled output), L2-normalised
  embedding; per-sample cosine with FP32 (min, p5, mean) and nearest-neighbour agreement.
- ``detection``: decoded detections -> mAP (see :mod:`edgeopt.core.detection`).
- ``segmentation``: per-pixel classes -> mIoU (see :mod:`edgeopt.core.segmentation`).
- ``generic``: each output judged on its own (never one cosine over concatenated outputs); a named mask input
  excludes padded positions.

A metric's ``value`` is a fraction in [0, 1], higher is better; budgets are in points (1 point = 0.01) for
the accuracy-like metrics and in cosine for the similarity-like ones (``budget = "points" | "cosine"``).

Judging without labels (classification). Top-1 agreement with FP32 counts every flip as an error, also the
near-ties FP32 itself is unsure about, so it overstates the loss of top-1 accuracy (on real CNNs post-training
INT8 agrees on ~90% of crops while the accuracy lost is well under a point). The unlabelled metric is instead
the *expected top-1 under FP32's probabilities*: with p = softmax(FP32 logits) per sample taken as soft labels,
a model's estimated accuracy is mean_i p_i[argmax(model_i)]; FP32's own is mean_i max p_i, and the drop is the
difference. A flip between two classes FP32 rates 0.30 / 0.29 costs 0.01 of a sample; a flip away from a class
FP32 rates 0.95 costs almost a whole one. If FP32 were calibrated this is an unbiased estimate of the change in
true top-1 (E[1{y = k}] = p[k]); the labelled benchmarks check it against true top-1.

Every drop comes with a paired bootstrap interval (resample the samples with replacement, recompute the FP32
and the candidate metric on the same resample; fixed seed), and :func:`judge` says how sure the verdict is:
``decision`` = ``within`` (the whole interval is within the budget), ``over`` (wholly over) or ``undecided``
(it straddles the budget). The verdict itself follows the point estimate (undecided within: kept, undecided
over: refused), so the guard is neither weaker nor stronger than before; an undecided one says how many
samples would decide (the interval's width scales as 1/sqrt(n)).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable

import numpy as np

from edgeopt.errors import DataError, UserInputError
from edgeopt.core import bootstrap
from edgeopt.core.checks import key, reject_unknown

TASK_TYPES = ("classification", "embedding", "detection", "segmentation", "generic")
BOOTSTRAP_RESAMPLES = bootstrap.RESAMPLES  # paired bootstrap of a drop (classification: cheap, vectorised)
BOOTSTRAP_SEED = bootstrap.SEED
INTERVAL_LEVEL = bootstrap.LEVEL
CONFIDENT = 0.5  # a "confident" flip costs this much of a sample or more: p_fp32[its top-1] - p_fp32[the new one]
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


def probabilities(x: np.ndarray) -> np.ndarray:
    """Per-row class probabilities: the rows themselves when they already are (non-negative, summing to 1),
    else the softmax of the logits (in float64)."""
    x = np.asarray(x, np.float64)
    if np.all(np.isfinite(x)) and np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return x
    x = np.nan_to_num(x, nan=-np.inf)
    z = x - np.max(np.where(np.isfinite(x), x, -1e300), axis=1, keepdims=True)
    e = np.exp(np.clip(z, -745, 0))
    return e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)


def paired_interval(ref: np.ndarray, got: np.ndarray, level: float = INTERVAL_LEVEL,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """The drop mean(ref) - mean(got) in points, with a paired percentile bootstrap interval over samples
    (:func:`edgeopt.core.bootstrap.paired_drop`). ``ref``/``got``: per-sample scores (1/0 correct, or expected
    correctness)."""
    from edgeopt.core.bootstrap import paired_drop

    ref, got = np.asarray(ref, np.float64).reshape(-1), np.asarray(got, np.float64).reshape(-1)
    d = (ref - got) * 100
    return paired_drop(float(np.mean(d)) if len(d) else 0.0, len(d), lambda idx: d[idx].mean(axis=1), level,
                       resamples, seed)


def expected_top1(logits: np.ndarray, ref_logits: np.ndarray, interval: bool = True) -> dict:
    """The unlabelled estimate: expected top-1 of ``logits`` under the FP32 model's probabilities (softmax of
    ``ref_logits``) as soft labels, FP32's own, the drop with its interval, and the flips (samples whose top-1
    moved): all of them, the confident ones (costing half a sample or more under FP32's probabilities) and
    FP32's highest confidence in a class a flip moved away from."""
    p = probabilities(ref_logits)
    n = p.shape[0]
    rows = np.arange(n)
    ref_top, got_top = np.argmax(ref_logits, axis=1), np.argmax(logits, axis=1)
    per_ref, per_got = p[rows, ref_top], p[rows, got_top]
    flipped = got_top != ref_top
    cost = (per_ref - per_got)[flipped]
    conf = per_ref[flipped]
    return {"expected_top1": float(np.mean(per_got)), "fp32_expected_top1": float(np.mean(per_ref)),
            "flips": int(flipped.sum()), "flips_confident": int(np.sum(cost >= CONFIDENT)),
            "flip_fp32_confidence_max": float(conf.max()) if conf.size else None,
            "drop_interval": paired_interval(per_ref, per_got, resamples=BOOTSTRAP_RESAMPLES if interval else 0)}


def classification(task: TaskConfig, got: Outputs, ref: Outputs | None, interval: bool = True) -> dict:
    name = _output_name(task, got)
    logits = got.stacked(name)
    if logits.ndim != 2:
        raise DataError(f"Cannot score a classifier: output {name!r} has shape {list(logits.shape)}, not "
                        "[batch, classes].", 'Set [task] output to the logits, or type = "generic".')
    order = np.argsort(-logits, axis=1)
    n = int(logits.shape[0])
    r = ref.stacked(name) if ref is not None else None
    if r is not None and r.shape != logits.shape:
        raise DataError(f"Cannot score a classifier: output {name!r} has shape {list(logits.shape)}, the FP32 "
                        f"model's {list(r.shape)}.", "Evaluate both on the same samples.")
    if got.labels is not None:
        labels = np.asarray(got.labels).reshape(-1)
        if labels.shape[0] != n:
            raise DataError(f"Cannot score a classifier: {n} outputs for {labels.shape[0]} labels.",
                            "Give one integer label per sample.")
        correct = order[:, 0] == labels
        top1 = float(np.mean(correct))
        out = {"metric": "top1", "label": "top-1", "value": top1, "top1": top1, "samples": n, "budget": "points"}
        if logits.shape[1] >= 5:
            out["top5"] = float(np.mean(np.any(order[:, :5] == labels[:, None], axis=1)))
        if r is not None and interval:  # the drop's interval, and what the judge would have said without labels
            out["drop_interval"] = paired_interval(np.argmax(r, axis=1) == labels, correct)
            est = expected_top1(logits, r)
            out["unlabelled"] = {"expected_top1": est["expected_top1"], "fp32_expected_top1": est["fp32_expected_top1"],
                                 "drop_points": est["drop_interval"]["drop_points"],
                                 "drop_interval": [est["drop_interval"]["low"], est["drop_interval"]["high"]],
                                 "top1_agreement": float(np.mean(order[:, 0] == np.argmax(r, axis=1))),
                                 "flips": est["flips"], "flips_confident": est["flips_confident"]}
        return out
    if r is None:
        raise DataError("No labels and no FP32 outputs to compare with.", "Give labels with the evaluation data.")
    rorder = np.argsort(-r, axis=1)
    agree = float(np.mean(order[:, 0] == rorder[:, 0]))
    est = expected_top1(logits, r, interval)
    out = {"metric": "expected_top1", "label": "est. top-1", "value": est["expected_top1"],
           "reference_value": est["fp32_expected_top1"], "samples": n, "budget": "points",
           "estimator": "expected top-1 under FP32's softmax probabilities (soft labels)",
           "top1_agreement": agree, "flips": est["flips"], "flips_confident": est["flips_confident"],
           "flip_fp32_confidence_max": est["flip_fp32_confidence_max"], "drop_interval": est["drop_interval"],
           **_cosines(_cos_rows(r, logits))}
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


def detection(task: TaskConfig, got: Outputs, ref: Outputs | None, interval: bool = True) -> dict:
    from edgeopt.core.detection import detection_metric

    return detection_metric(task, got, ref, interval)


def segmentation(task: TaskConfig, got: Outputs, ref: Outputs | None, interval: bool = True) -> dict:
    from edgeopt.core.segmentation import segmentation_metric

    return segmentation_metric(task, got, ref, interval)


METRICS: dict[str, Callable[[TaskConfig, Outputs, Outputs | None], dict]] = {
    "classification": classification, "embedding": embedding, "detection": detection,
    "segmentation": segmentation, "generic": generic}


def evaluate(task: TaskConfig, got: Outputs, ref: Outputs | None, interval: bool = True) -> dict:
    """The task's metric for ``got`` (labels in ``got.labels``; ``ref`` the FP32 outputs on the same feeds).
    ``interval``: with the drop's bootstrap interval where the metric has one (off for NNCF's many calls)."""
    if task.type not in METRICS:
        raise UserInputError(f"Task {task.type!r} is not resolved.", "Call TaskConfig.resolve first.")
    fn = METRICS[task.type]
    out = fn(task, got, ref, interval=interval) if task.type in ("classification", "detection", "segmentation") else fn(task, got, ref)
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


def samples_to_decide(drop: float, low: float, high: float, budget: float, n: int) -> int | None:
    """About how many samples would put the interval wholly on one side of the budget, the interval's
    half-width on the budget's side scaled by sqrt(n / n'); None when the drop sits on the budget."""
    half = (high - drop) if drop <= budget else (drop - low)
    gap = abs(budget - drop)
    if gap < 1e-9 or n < 1:
        return None
    return int(np.ceil(n * (half / gap) ** 2))


def decide(result: dict, budget_points: float) -> None:
    """``decision`` from the drop's interval against the budget: within | over | undecided (with the samples
    that would decide). Adds ``drop_low``/``drop_high`` (points) and ``decision_note``."""
    iv = result.get("drop_interval")
    drop = result["drop_points"]
    if not iv or iv.get("resamples", 0) == 0:  # no interval (one sample, or not asked for): the point alone
        result["decision"] = "within" if drop <= budget_points + 1e-9 else "over"
        result["decision_note"] = "no interval: decided by the point estimate alone"
        return
    # the interval is around the metric's own drop; the caller's drop (vs the build's FP32 figure) is the point
    shift = drop - iv["drop_points"]
    lo, hi = iv["low"] + shift, iv["high"] + shift
    result["drop_low"], result["drop_high"] = lo, hi
    pct = f"{iv['level'] * 100:.0f}%"
    if hi <= budget_points + 1e-9:
        result["decision"] = "within"
    elif lo > budget_points + 1e-9:
        result["decision"] = "over"
    else:
        result["decision"] = "undecided"
        need = samples_to_decide(drop, lo, hi, budget_points, iv["samples"])
        result["samples_to_decide"] = need
        result["decision_note"] = (
            f"undecided on {iv['samples']} samples: the {pct} interval {lo:.2f}..{hi:.2f} points straddles the "
            f"budget {budget_points:.2f}; " + (f"about {need} samples would decide" if need else
                                               "the drop sits on the budget"))


def drop_text(result: dict) -> str:
    """'drop 0.55 points (95% 0.12..1.02)', or '' without a drop."""
    if result.get("drop_points") is None:
        return ""
    level = (result.get("drop_interval") or {}).get("level", INTERVAL_LEVEL) * 100
    iv = f" ({level:.0f}% {result['drop_low']:.2f}..{result['drop_high']:.2f})" if "drop_low" in result else ""
    return f"drop {result['drop_points']:.2f} points{iv}"


def judge(result: dict, base: dict | None, max_drop_points: float, min_cosine: float) -> dict:
    """Compare a metric with the FP32 model's. Adds drop_points (points tasks), its interval and decision
    (:func:`decide`) and the verdict (within_budget, why).

    ``max_drop_points``: allowed drop in points for accuracy-like metrics (already relative-adjusted by the caller);
    ``min_cosine``: the floor for similarity-like metrics (their FP32 value is 1 by definition).
    The verdict follows the point estimate; ``decision`` says whether the interval confirms it."""
    reasons = []
    if result.get("budget") == "cosine":
        if result["value"] < min_cosine:
            reasons.append(f"{result['label']} {below(result['value'], min_cosine)} < {min_cosine}")
    else:
        if base is not None and result["metric"] == base.get("metric"):
            ref_value = base["value"]
        else:  # the metric's own FP32 figure (the unlabelled estimate), else a perfect 1
            ref_value = result.get("reference_value", 1.0)
        drop = (ref_value - result["value"]) * 100
        result["drop_points"] = drop
        result["budget_points"] = max_drop_points
        decide(result, max_drop_points)
        if drop > max_drop_points + 1e-9:
            sure = "" if result["decision"] == "over" else " (undecided: the interval reaches into the budget)"
            reasons.append(f"{result['label']} {drop_text(result)} > budget {max_drop_points:.2f}{sure}")
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
