"""Semantic segmentation: per-pixel classes, judged by mIoU. Numpy only (runs on devices too).

The model's output (``[task] output``, default the first) is either per-class scores ``[B, C, H, W]`` (logits or
probabilities: the mask is their argmax over C) or a mask ``[B, H, W]`` of class indices. The metric:

- with label masks (the evaluation data's labels, ``[N, H, W]`` class indices; ``255`` or negative pixels are
  ignored): ``miou``, the mean over classes of intersection / union accumulated over every pixel of every
  sample (classes absent from both prediction and labels are left out), plus the pixel accuracy;
- without labels: ``miou_fp32``, the same against the FP32 model's own masks.

Both are fractions in [0, 1] judged in points (``budget = "points"``): INT8 is guarded by mIoU points. With the
FP32 outputs on the same samples the drop also gets a paired bootstrap interval over images
(:func:`paired_miou_interval`), so the build's decision (within / over / undecided) is the interval's, as for
classification and detection.
:func:`to_original` maps a mask back onto the original image for the device runtime's ``postprocess()``.
"""

from __future__ import annotations

import numpy as np

from edgeopt.core import bootstrap
from edgeopt.errors import DataError

IGNORE = 255  # label pixels that count for no class (VOC's boundary value)


def masks(scores: np.ndarray, name: str = "output") -> np.ndarray:
    """``[B, C, H, W]`` scores -> ``[B, H, W]`` class indices (a ``[B, H, W]`` mask passes through)."""
    a = np.asarray(scores)
    if a.ndim == 3 and a.dtype.kind in "iu":
        return a.astype(np.int64)
    if a.ndim != 4 or a.shape[1] < 1:
        raise DataError(f"Cannot score segmentation: output {name!r} has shape {list(a.shape)}, not [batch, "
                        "classes, height, width].", "Set [task] output to the per-pixel class scores.")
    return np.argmax(np.nan_to_num(a.astype(np.float32), nan=-np.inf), axis=1).astype(np.int64)


def confusion(pred: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """``[classes, classes]`` pixel counts (rows: truth, columns: prediction), ignored pixels left out."""
    t, p = truth.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
    ok = (t >= 0) & (t < classes) & (t != IGNORE)
    return np.bincount(t[ok] * classes + np.clip(p[ok], 0, classes - 1), minlength=classes * classes).reshape(
        classes, classes)


def _iou_rows(conf: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU of each row of ``[k, classes * classes]`` (weighted) pixel counts, and which classes are
    present (in prediction or truth) in each row."""
    c = conf.reshape(-1, classes, classes).astype(np.float64)
    inter = np.diagonal(c, axis1=1, axis2=2)
    union = c.sum(1) + c.sum(2) - inter
    present = union > 0
    return np.where(present, inter / np.maximum(union, 1e-12), 0.0), present


def _miou_rows(conf: np.ndarray, classes: int) -> np.ndarray:
    """mIoU of each row: the mean IoU over the classes present in it (1 where none is)."""
    iou, present = _iou_rows(conf, classes)
    n = present.sum(1)
    return np.where(n > 0, iou.sum(1) / np.maximum(n, 1), 1.0)


def miou(conf: np.ndarray) -> dict:
    """mIoU, per-class IoU (None for classes in neither) and pixel accuracy from a confusion matrix."""
    classes = conf.shape[0]
    iou, present = (a[0] for a in _iou_rows(conf.reshape(1, -1), classes))
    total = conf.sum()
    return {"miou": float(_miou_rows(conf.reshape(1, -1), classes)[0]),
            "iou": [float(v) if p else None for v, p in zip(iou, present)],
            "pixel_accuracy": float(np.trace(conf) / total) if total else 1.0, "pixels": int(total)}


def per_sample_confusion(pred: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """``[n, classes * classes]`` pixel counts, one confusion matrix per sample (flattened)."""
    return np.stack([confusion(p, t, classes).reshape(-1) for p, t in zip(pred, truth)]) if len(pred) else \
        np.zeros((0, classes * classes), np.int64)


def paired_miou_interval(ref_conf: np.ndarray, got_conf: np.ndarray, classes: int,
                         resamples: int = bootstrap.RESAMPLES, seed: int = bootstrap.SEED,
                         level: float = bootstrap.LEVEL) -> dict:
    """The mIoU drop of ``got`` from ``ref`` in points, with a paired percentile bootstrap interval over samples:
    each resample of the images weights both models' per-image confusion matrices (``[n, classes * classes]``,
    against the same truth) the same way, and mIoU is recomputed from the weighted sums."""
    n = len(ref_conf)
    ones = np.ones((1, n))
    point = float((_miou_rows(ones @ ref_conf, classes) - _miou_rows(ones @ got_conf, classes))[0] * 100)

    def drops_of(idx):
        w = bootstrap.weights(idx, n)
        return (_miou_rows(w @ ref_conf, classes) - _miou_rows(w @ got_conf, classes)) * 100

    return bootstrap.paired_drop(point, n, drops_of, level, resamples, seed)


def segmentation_metric(task, got, ref, interval: bool = True) -> dict:
    """The task metric (see the module docstring) of ``got`` (an :class:`edgeopt.core.tasks.Outputs`). With
    ``ref`` (FP32's outputs on the same samples) and ``interval``: the drop's paired bootstrap interval."""
    name = task.output or got.names()[0]
    scores = got.stacked(name)
    pred = masks(scores, name)
    classes = int(scores.shape[1]) if scores.ndim == 4 else int(pred.max()) + 1
    ref_pred = masks(ref.stacked(name), name) if ref is not None else None
    if got.labels is not None:
        truth = np.asarray(got.labels)
        if truth.shape != pred.shape:
            raise DataError(f"Cannot score segmentation: the label masks are {list(truth.shape)}, the model's masks "
                            f"{list(pred.shape)}.", "Give one label mask [height, width] per sample, at the size "
                                                    "of the model's output, class indices (255: ignored).")
        if truth.dtype.kind == "f" and not np.all(np.isfinite(truth) & (truth == np.round(truth))):
            raise DataError("The label masks are not whole class indices.", "Store them as integers.")
        truth = truth.astype(np.int64)
        res = miou(confusion(pred, truth, classes))
        metric, label = "miou", "mIoU"
    else:
        if ref is None:
            raise DataError("No label masks and no FP32 outputs to compare with.",
                            "Give label masks with the evaluation data.")
        truth = ref_pred
        res = miou(confusion(pred, truth, classes))
        metric, label = "miou_fp32", "mIoU vs FP32"
    out = {"metric": metric, "label": label, "value": res["miou"], metric: res["miou"],
           "pixel_accuracy": res["pixel_accuracy"], "iou": res["iou"], "classes": classes,
           "samples": int(pred.shape[0]), "budget": "points"}
    if ref_pred is not None and interval and ref_pred.shape == pred.shape:
        out["drop_interval"] = paired_miou_interval(per_sample_confusion(ref_pred, truth, classes),
                                                    per_sample_confusion(pred, truth, classes), classes)
    return out


def to_original(mask: np.ndarray, original_hw, geometry, input_hw) -> np.ndarray:
    """A mask ``[h, w]`` (at the model's output size) -> ``[H0, W0]`` on the original image: each original pixel
    takes the class at the place the preprocessing put it (``geometry``: ``(sy, sx, dy, dx)`` with
    ``input = original * s + d``), nearest neighbour; pixels the preprocessing cropped away get :data:`IGNORE`."""
    h0, w0 = (int(v) for v in original_hw)
    sy, sx, dy, dx = geometry
    ih, iw = input_hw
    mh, mw = mask.shape
    ys = ((np.arange(h0) + 0.5) * sy + dy) * (mh / ih)  # centre of each original pixel, in mask pixels
    xs = ((np.arange(w0) + 0.5) * sx + dx) * (mw / iw)
    yi, xi = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    out = np.full((h0, w0), IGNORE, dtype=np.int64)
    oky, okx = (yi >= 0) & (yi < mh), (xi >= 0) & (xi < mw)
    out[np.ix_(oky, okx)] = mask[np.ix_(yi[oky], xi[okx])]
    return out
