"""Detection: decode a detector's outputs into boxes, scores and labels per image, and score them by mAP.

Numpy only at module level (runs on devices too); the COCO evaluator (pycocotools, extra ``detection``) is
imported when a metric is computed.

Two output formats (``[task] format``):

- ``torchvision``: the model already returns final detections, as torchvision's detectors do: ``boxes``
  ``[N, 4]`` (x1, y1, x2, y2 in input pixels), ``scores`` ``[N]`` and ``labels`` ``[N]`` per image. A model
  called with a list of images names them ``output_<i>_boxes`` ...; a padded batch ``[B, N, 4]`` / ``[B, N]``
  is read image by image. Output names come from ``[task] boxes/scores/labels`` (default boxes, scores,
  labels, matched as a name or a ``_name`` suffix).
- ``yolo``: a raw head ``[B, 4 + C, N]`` (cx, cy, w, h in input pixels, then C class scores), as Ultralytics'
  DetectionModel returns in eval mode and exports to ONNX; decoded on the host: best class per anchor,
  ``score_threshold``, per-class NMS at ``iou_threshold``, at most ``max_detections`` per image.
  ``[B, N, 4 + C]`` is accepted when N > 4 + C.

The metric is mAP@0.5 and mAP@0.5:0.95 (COCO evaluation, every IoU threshold 0.50..0.95, 101-point
interpolation, up to ``max_detections`` per image) against

- labels: ``[task] annotations``, a COCO JSON or a folder of YOLO txt files, for the evaluation samples in
  order, boxes in the model input's pixels (YOLO's normalised boxes are scaled to the input size); or
- the FP32 model's own detections on the same samples (pseudo-labels), those scoring at least
  ``label_threshold``. The FP32 model scores 1.0 against itself by construction, so a drop in points is
  how far an artifact's detections moved from FP32's.

Per-output score statistics (range, share of scores that are exactly 0) are reported beside the metric: a
quantized head whose class scores all became 0 is visible at a glance.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.core import bootstrap
from edgeopt.errors import DataError, UserInputError, require

MAX_NMS = 30000  # boxes entering NMS per image (highest scores first), as Ultralytics does
MAX_WH = 7680.0  # class offset for class-wise NMS in one pass
DEFAULT_LABEL_THRESHOLD = 0.25


@dataclass
class Detections:
    """One image's detections: boxes [n, 4] x1y1x2y2 float, scores [n] float, labels [n] int."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def keep(self, mask_or_index) -> Detections:
        return Detections(self.boxes[mask_or_index], self.scores[mask_or_index], self.labels[mask_or_index])

    def to_dict(self) -> dict:
        return {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}


# ------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------

def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float32)
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., 0:2] - half, b[..., 0:2] + half], axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [n, 4] with every box in ``b`` [m, 4] (x1y1x2y2): [n, m]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, best first, at most ``limit``."""
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(boxes, np.float64)
    keep = []
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        iou = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_yolo(head: np.ndarray, score_threshold: float, iou_threshold: float, max_detections: int,
                name: str = "output") -> list[Detections]:
    """A raw head [B, 4 + C, N] (or [B, N, 4 + C]) to one :class:`Detections` per image (class-wise NMS)."""
    head = np.asarray(head)
    if head.ndim != 3 or min(head.shape[1:]) < 5:
        raise DataError(f"Output {name!r} has shape {list(head.shape)}; a YOLO-style head is [batch, 4 + classes, "
                        "anchors].", '[task] format = "yolo" needs the raw head; name it with [task] output.')
    if head.shape[1] > head.shape[2]:  # [B, N, 4 + C]
        head = head.transpose(0, 2, 1)
    out = []
    for x in head.astype(np.float32):
        boxes, cls = x[:4].T, x[4:].T  # [N, 4], [N, C]
        labels = np.argmax(cls, axis=1)
        scores = cls[np.arange(cls.shape[0]), labels]
        ok = np.isfinite(scores) & (scores > score_threshold) & np.all(np.isfinite(boxes), axis=1)
        idx = np.flatnonzero(ok)
        if idx.size > MAX_NMS:
            idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_NMS]]
        b = xywh_to_xyxy(boxes[idx])
        s, lab = scores[idx], labels[idx].astype(np.int64)
        k = nms(b + (lab[:, None] * MAX_WH), s, iou_threshold, max_detections)
        out.append(Detections(b[k], s[k], lab[k]))
    return out


EFFICIENT_NMS_TOP = 4096  # TensorRT's EfficientNMS_TRT runs NMS over the 4096 best (anchor, class) pairs


def per_class_nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float,
                  max_detections: int, background_class: int = -1, class_agnostic: bool = False) -> Detections:
    """One image's pre-NMS outputs, boxes [N, 4] (x1y1x2y2) and per-class scores [N, C], to detections with the
    semantics of TensorRT's ``EfficientNMS_TRT`` plugin, so that NMS outside the graph (on the host) and NMS as
    that plugin give the same detections: every (box, class) pair scoring ``>= score_threshold`` (the background
    class excluded) is a candidate, the best 4096 by score enter a greedy NMS that drops a candidate whose IoU
    with a kept one of the same class (any class when ``class_agnostic``) is ``>= iou_threshold``, and at most
    ``max_detections`` are kept, best first. An anchor may so give detections of several classes."""
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.ndim != 2 or scores.shape[0] != boxes.shape[0]:
        raise DataError(f"Pre-NMS outputs of unexpected shapes: boxes {list(boxes.shape)}, scores "
                        f"{list(scores.shape)}.", "Boxes are [anchors, 4] and scores [anchors, classes] per image.")
    ok = np.isfinite(scores) & (scores >= score_threshold) & np.all(np.isfinite(boxes), axis=1)[:, None]
    if 0 <= background_class < scores.shape[1]:
        ok[:, background_class] = False
    idx, cls = np.nonzero(ok)
    s = scores[idx, cls]
    order = np.argsort(-s, kind="stable")[:EFFICIENT_NMS_TOP]
    idx, cls, s = idx[order], cls[order], s[order]
    lo, hi = np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])  # IoU on ordered corners
    b = np.concatenate([lo, hi], axis=1)[idx]
    alive = np.ones(idx.size, dtype=bool)
    keep: list[int] = []
    for i in range(idx.size):
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) == max_detections:
            break
        rest = np.arange(i + 1, idx.size)
        rest = rest[alive[rest] & ((cls[rest] == cls[i]) | bool(class_agnostic))]
        if rest.size:
            alive[rest[box_iou(b[i:i + 1], b[rest])[0] >= iou_threshold]] = False
    k = np.asarray(keep, dtype=np.int64)
    return Detections(boxes[idx[k]], s[k], cls[k].astype(np.int64))


def padded(dets: list[Detections], max_detections: int) -> dict[str, np.ndarray]:
    """Detections per image as the fixed-size outputs of ``EfficientNMS_TRT``: num_detections [B, 1] int32, then
    detection_boxes [B, max, 4], detection_scores [B, max] and detection_classes [B, max] int32, zero-padded."""
    n = len(dets)
    out = {"num_detections": np.zeros((n, 1), np.int32),
           "detection_boxes": np.zeros((n, max_detections, 4), np.float32),
           "detection_scores": np.zeros((n, max_detections), np.float32),
           "detection_classes": np.zeros((n, max_detections), np.int32)}
    for i, d in enumerate(dets):
        k = min(len(d), max_detections)
        out["num_detections"][i, 0] = k
        out["detection_boxes"][i, :k], out["detection_scores"][i, :k] = d.boxes[:k], d.scores[:k]
        out["detection_classes"][i, :k] = d.labels[:k]
    return out


def unpadded(out: dict[str, np.ndarray]) -> list[Detections] | None:
    """The detections in ``EfficientNMS_TRT``-style outputs (see :func:`padded`), or None when ``out`` has none."""
    names = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
    if not all(k in out for k in names):
        return None
    num, b, s, c = (np.asarray(out[k]) for k in names)
    images = []
    for i in range(num.shape[0]):
        k = int(num.reshape(num.shape[0], -1)[i, 0])
        images.append(Detections(b[i, :k].astype(np.float32), s[i, :k].astype(np.float32),
                                 np.rint(c[i, :k]).astype(np.int64)))
    return images


def _find(names: list[str], wanted: str) -> list[str]:
    return [k for k in names if k == wanted or k.endswith("_" + wanted)]


def _torchvision_images(task, out: dict[str, np.ndarray]) -> list[Detections]:
    kb, ks, kl = task.boxes or "boxes", task.scores or "scores", task.labels or "labels"
    names = list(out)
    if kb in out and ks in out and kl in out:
        groups = [(kb, ks, kl)]
    else:
        boxes = _find(names, kb)
        groups = []
        for b in boxes:
            prefix = b[: len(b) - len(kb)]
            if prefix + ks in out and prefix + kl in out:
                groups.append((b, prefix + ks, prefix + kl))
        if not groups:
            raise DataError(f"Cannot find the detections among the outputs {names}: expected {kb!r}, {ks!r} and "
                            f"{kl!r} (or names ending in _{kb} ...).",
                            "Name them with [task] boxes / scores / labels, or set [task] format = \"yolo\" for "
                            "a raw head.")

        def index(g):  # output_<i>_boxes: image i of a list call
            m = re.search(r"(\d+)_$", g[0][: len(g[0]) - len(kb)])
            return int(m.group(1)) if m else 0

        groups.sort(key=index)
    images = []
    for b_name, s_name, l_name in groups:
        b, s, lab = np.asarray(out[b_name]), np.asarray(out[s_name]), np.asarray(out[l_name])
        if b.ndim == 2 and s.ndim == 1:
            b, s, lab = b[None], s[None], lab.reshape(1, -1)
        if b.ndim != 3 or b.shape[-1] != 4 or s.shape != b.shape[:2] or lab.shape != s.shape:
            raise DataError(f"Detections of unexpected shapes: {b_name} {list(b.shape)}, {s_name} {list(s.shape)}, "
                            f"{l_name} {list(lab.shape)}.", "Boxes are [N, 4] (or [B, N, 4]), scores and labels "
                            "[N] (or [B, N]).")
        for i in range(b.shape[0]):
            images.append(Detections(b[i].astype(np.float32), s[i].astype(np.float32),
                                     np.rint(lab[i]).astype(np.int64)))
    return images


def _pre_nms(task, out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(boxes [B, N, 4], scores [B, N, C]) when ``out`` holds a detector's outputs before NMS, else None."""
    kb, ks = task.boxes or "boxes", task.scores or "scores"
    if kb not in out or ks not in out:
        return None
    b, s = np.asarray(out[kb]), np.asarray(out[ks])
    if b.ndim == 3 and b.shape[-1] == 4 and s.ndim == 3 and s.shape[:2] == b.shape[:2]:
        return b, s
    return None


def decode(task, outputs: list[dict[str, np.ndarray]]) -> list[Detections]:
    """Every image's detections over a list of per-batch outputs, in sample order."""
    images: list[Detections] = []
    for out in outputs:
        if task.format == "yolo":
            name = task.output or next(iter(out))
            if name not in out:
                raise DataError(f"The model has no output {name!r} (it has {sorted(out)}).",
                                "Name the raw head in [task] output.")
            images.extend(decode_yolo(out[name], task.score_threshold, task.iou_threshold, task.max_detections,
                                      name))
        elif unpadded(out) is not None:  # NMS as TensorRT's plugin: its fixed-size outputs
            for d in unpadded(out):
                d = d.keep(np.isfinite(d.scores) & (d.scores >= task.score_threshold))
                images.append(d.keep(np.argsort(-d.scores, kind="stable")[:task.max_detections]))
        elif _pre_nms(task, out) is not None:  # the graph ends before NMS: NMS here, as the plugin does it
            b, s = _pre_nms(task, out)
            images.extend(per_class_nms(b[i], s[i], task.score_threshold, task.iou_threshold, task.max_detections,
                                        task.background_class) for i in range(b.shape[0]))
        else:
            for d in _torchvision_images(task, out):
                d = d.keep(np.isfinite(d.scores) & (d.scores >= task.score_threshold))
                images.append(d.keep(np.argsort(-d.scores, kind="stable")[:task.max_detections]))
    return images


# ------------------------------------------------------------------------------------------------
# score statistics
# ------------------------------------------------------------------------------------------------

def _stats(a: np.ndarray) -> dict:
    a = np.asarray(a, np.float64).reshape(-1)
    if a.size == 0:
        return {"count": 0}
    finite = np.isfinite(a)
    f = a[finite]
    return {"count": int(a.size), "min": float(f.min()) if f.size else None,
            "max": float(f.max()) if f.size else None, "mean": float(f.mean()) if f.size else None,
            "zero_share": float(np.mean(a == 0)), "non_finite": int(a.size - f.size)}


def score_statistics(task, outputs: list[dict[str, np.ndarray]]) -> dict:
    """Per output: the range of the values and the share that are exactly 0 (class scores for a raw head)."""
    if not outputs:
        return {}
    stats = {}
    if task.format == "yolo":
        name = task.output or next(iter(outputs[0]))
        heads = [np.asarray(o[name]) for o in outputs if name in o]
        if heads and heads[0].ndim == 3:
            t = [h.transpose(0, 2, 1) if h.shape[1] > h.shape[2] else h for h in heads]
            stats[f"{name} (boxes)"] = _stats(np.concatenate([h[:, :4].reshape(-1) for h in t]))
            stats[f"{name} (class scores)"] = _stats(np.concatenate([h[:, 4:].reshape(-1) for h in t]))
        return stats
    ks = task.scores or "scores"
    for name in sorted({k for o in outputs for k in _find(list(o), ks)}):
        stats[name] = _stats(np.concatenate([np.asarray(o[name]).reshape(-1) for o in outputs if name in o]))
    return stats


# ------------------------------------------------------------------------------------------------
# ground truth
# ------------------------------------------------------------------------------------------------

def _input_hw(feeds: list[dict]) -> tuple[int, int] | None:
    """(H, W) of the first 4-D input (NCHW, or NHWC when the last axis is 1 or 3)."""
    for feed in feeds[:1]:
        for v in feed.values():
            s = np.shape(v)
            if len(s) == 4:
                return (s[1], s[2]) if s[3] in (1, 3) and s[1] not in (1, 3) else (s[2], s[3])
    return None


def load_annotations(path: str | Path, count: int, input_hw: tuple[int, int] | None) -> list[Detections]:
    """Ground truth for ``count`` samples, in order, in input pixels: a COCO JSON or a folder of YOLO txt files.

    COCO: the JSON's ``images`` in file order, each image's ``annotations`` (``bbox`` = x, y, w, h).
    YOLO: the folder's ``*.txt`` in sorted name order, one ``class cx cy w h`` line (normalised) per object."""
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.suffix == ".txt" and q.name != "classes.txt")
        if len(files) != count:
            raise DataError(f"{p} holds {len(files)} YOLO label files for {count} evaluation samples.",
                            "Give one .txt per evaluation image, named in the images' sorted order.")
        if input_hw is None:
            raise DataError("YOLO labels are normalised; the model has no image input to scale them to.",
                            "Give COCO JSON annotations in input pixels.")
        h, w = input_hw
        out = []
        for f in files:
            rows = []
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    vals = [float(v) for v in parts[:5]]
                except ValueError:
                    vals = []
                if len(vals) != 5 or not all(np.isfinite(vals)) or vals[0] < 0 or vals[0] != int(vals[0]):
                    raise DataError(f"{f}:{n}: {line.strip()[:80]!r} is not 'class cx cy w h'.",
                                    "Write one object per line: an integer class, then the normalised box.")
                rows.append(vals)
            a = np.asarray(rows, np.float32).reshape(-1, 5)
            boxes = xywh_to_xyxy(a[:, 1:5] * np.array([w, h, w, h], np.float32))
            out.append(Detections(boxes, np.ones(len(a), np.float32), a[:, 0].astype(np.int64)))
        return out
    if not p.is_file():
        raise UserInputError(f"[task] annotations {p} does not exist.",
                             "Give a COCO JSON file or a folder of YOLO txt files.")
    try:
        data = json.loads(p.read_text())
        images = [img["id"] for img in data["images"]]
        per: dict = {i: [] for i in images}
        for a in data.get("annotations", []):
            x, y, bw, bh = (float(v) for v in a["bbox"])
            if a["image_id"] in per:
                per[a["image_id"]].append((x, y, x + bw, y + bh, int(a["category_id"])))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{p} is not COCO detection JSON ({type(exc).__name__}: {str(exc)[:120]}).",
                        "Give images (with id) and annotations (image_id, category_id, bbox = x, y, w, h).") from None
    if len(images) != count:
        raise DataError(f"{p} lists {len(images)} images for {count} evaluation samples.",
                        "List the evaluation images, in the evaluation data's order.")
    out = []
    for i in images:
        a = np.asarray(per[i], np.float64).reshape(-1, 5)
        out.append(Detections(a[:, :4].astype(np.float32), np.ones(len(a), np.float32), a[:, 4].astype(np.int64)))
    return out


# ------------------------------------------------------------------------------------------------
# mAP
# ------------------------------------------------------------------------------------------------

def _evaluated(truth: list[Detections], found: list[Detections], max_detections: int,
               ignore: list[Detections] | None = None):
    """pycocotools' COCOeval of ``found`` against ``truth`` after evaluate() (per-image matching), or None
    when nothing was found. ``ignore``: regions per image where a detection counts neither way (COCO's crowd
    regions: a detection that matches no ground truth but one of them is left out)."""
    if len(truth) != len(found):
        raise DataError(f"{len(found)} images of detections for {len(truth)} images of ground truth.",
                        "Evaluate the same samples.")
    n_truth = sum(len(t) for t in truth)
    if n_truth == 0:
        raise DataError("There is no ground truth box on any evaluation sample, so mAP is undefined.",
                        "Give annotations, evaluation images with objects, or lower [task] label_threshold.")
    if sum(len(f) for f in found) == 0:
        return None
    require("pycocotools", "detection", "compute mAP")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = _categories(truth, found, ignore)
    gt = {"images": [{"id": i + 1} for i in range(len(truth))], "categories": [{"id": c + 1} for c in cats],
          "annotations": []}
    for crowd, dets in ((0, truth), (1, ignore or [])):
        for i, t in enumerate(dets):
            for b, c in zip(t.boxes.astype(np.float64), t.labels):
                w, h = float(b[2] - b[0]), float(b[3] - b[1])
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                          "category_id": int(c) + 1, "bbox": [float(b[0]), float(b[1]), w, h],
                                          "area": max(w, 0.0) * max(h, 0.0), "iscrowd": crowd})
    rows = [[i + 1, float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), float(s), int(c) + 1]
            for i, f in enumerate(found) for b, s, c in zip(f.boxes.astype(np.float64), f.scores, f.labels)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        dt = coco.loadRes(np.asarray(rows, np.float64))
        ev = COCOeval(coco, dt, "bbox")
        ev.params.maxDets = [1, 10, max(max_detections, 1)]
        ev.evaluate()
    return ev


def _categories(truth, found, ignore) -> list[int]:
    return sorted({int(c) for d in (*truth, *found, *(ignore or [])) for c in d.labels})


def mean_ap(truth: list[Detections], found: list[Detections], max_detections: int = 100,
            ignore: list[Detections] | None = None) -> dict:
    """COCO mAP@0.5 and mAP@0.5:0.95 of ``found`` against ``truth`` (one entry per image, same order);
    detections on ``ignore`` regions count neither way."""
    ev = _evaluated(truth, found, max_detections, ignore)
    if ev is None:
        return {"map50": 0.0, "map50_95": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    p = ev.eval["precision"][:, :, :, 0, -1]  # [iou, recall, class] at area "all", the largest maxDets

    def mean(x):
        x = x[x > -1]
        return float(np.mean(x)) if x.size else 0.0

    return {"map50": mean(p[0]), "map50_95": mean(p)}


def matches50(truth: list[Detections], found: list[Detections], max_detections: int = 100,
              ignore: list[Detections] | None = None) -> dict:
    """Per detection, COCO's matching at IoU 0.5 (each image matched on its own, as COCOeval does): what
    :func:`map50_resampled` needs to recompute mAP50 on any multiset of the images without matching again.
    Detections on ``ignore`` regions are left out."""
    n = len(truth)
    ev = _evaluated(truth, found, max_detections, ignore)
    cats = _categories(truth, found, ignore)
    gt = np.zeros((n, len(cats)), np.float64)
    index = {c: k for k, c in enumerate(cats)}
    for i, t in enumerate(truth):
        for c in t.labels:
            gt[i, index[int(c)]] += 1
    img, cat, score, tp = [], [], [], []
    if ev is not None:
        for e in ev.evalImgs:
            if e is None or list(e["aRng"]) != list(ev.params.areaRng[0]):
                continue
            keep = ~np.asarray(e["dtIgnore"][0], bool)
            m = np.asarray(e["dtMatches"][0])[keep] > 0
            s = np.asarray(e["dtScores"])[keep]
            img += [e["image_id"] - 1] * len(s)
            cat += [index[e["category_id"] - 1]] * len(s)
            score += list(s)
            tp += list(m)
    return {"gt": gt, "image": np.asarray(img, np.int64), "category": np.asarray(cat, np.int64),
            "score": np.asarray(score, np.float64), "tp": np.asarray(tp, bool)}


def map50_resampled(m: dict, weights: np.ndarray) -> float:
    """mAP50 (COCO's 101-point interpolation) of the images taken ``weights[i]`` times each, from
    :func:`matches50`; NaN when the resample has no ground truth."""
    rec_thrs = np.linspace(0.0, 1.0, 101)
    aps = []
    for k in range(m["gt"].shape[1]):
        npig = float(weights @ m["gt"][:, k])
        if npig == 0:
            continue
        sel = m["category"] == k
        w = weights[m["image"][sel]]
        order = np.argsort(-m["score"][sel], kind="mergesort")
        w, t = w[order], m["tp"][sel][order]
        nz = w > 0
        w, t = w[nz], t[nz]
        if w.size == 0:
            aps.append(0.0)
            continue
        tps, fps = np.cumsum(w * t), np.cumsum(w * ~t)
        rc, pr = tps / npig, tps / np.maximum(tps + fps, np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        inds = np.searchsorted(rc, rec_thrs, side="left")
        q = np.where(inds < len(pr), pr[np.minimum(inds, len(pr) - 1)], 0.0)
        aps.append(float(np.mean(q)))
    return float(np.mean(aps)) if aps else float("nan")


def pseudo_labels(dets: list[Detections], threshold: float) -> list[Detections]:
    return [d.keep(d.scores >= threshold) for d in dets]


# FP32's detections scoring just under the pseudo-label threshold are near-ties: INT8 moving one from 0.24 to 0.26
# is no error (it was nearly a label), so COCO's crowd treatment applies: a detection on one counts neither way.
# Measured on the real YOLOv8 (benchmarks/RESULTS.md): without it, INT8 whose every pseudo-label box it found at
# IoU >= 0.94 lost 2.5 mAP50 points to scores crossing 0.25; a candidate that really loses boxes still does.
IGNORE_BAND = 0.8  # FP32 detections in [IGNORE_BAND * threshold, threshold) are ignore regions


def ignore_regions(dets: list[Detections], threshold: float) -> list[Detections]:
    return [d.keep((d.scores >= IGNORE_BAND * threshold) & (d.scores < threshold)) for d in dets]


SENSITIVITY_THRESHOLDS = (0.1, 0.5)  # pseudo-label thresholds the drop is also reported at, beside label_threshold


def paired_map_interval(truth: list[Detections], found: list[Detections], ref_found: list[Detections],
                        max_detections: int, resamples: int = bootstrap.RESAMPLES, seed: int = bootstrap.SEED,
                        level: float = bootstrap.LEVEL, ignore: list[Detections] | None = None) -> dict:
    """The mAP50 drop of ``found`` from ``ref_found`` (both against ``truth``, ``ignore`` regions left out) in
    points, with a paired bootstrap interval over images: each resample of the images scores both on the same
    images (COCO's per-image matching is computed once, the accumulation redone per resample)."""
    a, b = (matches50(truth, d, max_detections, ignore) for d in (ref_found, found))
    n = len(truth)
    ones = np.ones(n)
    point = (map50_resampled(a, ones) - map50_resampled(b, ones)) * 100

    def drops_of(idx):  # a resample without ground truth says nothing (NaN)
        return [(map50_resampled(a, w) - map50_resampled(b, w)) * 100 for w in bootstrap.weights(idx, n)]

    return bootstrap.paired_drop(point, n, drops_of, level, resamples, seed)


def detection_metric(task, got, ref, interval: bool = True) -> dict:
    """The detection metric of ``got`` (a :class:`edgeopt.core.tasks.Outputs`) against labels or FP32 ``ref``.
    With ``ref`` (FP32's outputs on the same samples) and ``interval``: the drop's paired bootstrap interval
    and, against pseudo-labels, the drop at other label thresholds (how much the verdict leans on the one
    threshold chosen)."""
    found = decode(task, got.outputs)
    threshold = float(getattr(task, "label_threshold", DEFAULT_LABEL_THRESHOLD))
    ref_dets = decode(task, ref.outputs) if ref is not None else None
    ignore = None  # against FP32's detections: its near-threshold ones
    if task.annotations:
        truth = load_annotations(task.annotations, len(found), _input_hw(got.feeds))
        against = "labels"
    elif isinstance(got.labels, list) and all(isinstance(t, Detections) for t in got.labels):
        truth, against = got.labels, "labels"
    else:
        if ref is None:
            raise DataError("Detections are judged against labels or the FP32 model's detections; neither is here.",
                            "Give [task] annotations or evaluation data.")
        truth, against = pseudo_labels(ref_dets, threshold), "fp32"
        ignore = ignore_regions(ref_dets, threshold)
        if sum(len(t) for t in truth) == 0:
            raise DataError(f"The FP32 model detects nothing scoring {threshold} or more on the "
                            f"{len(truth)} evaluation samples, so there is nothing to compare detections with.",
                            "Evaluate on images with objects, give [task] annotations, or lower [task] "
                            "label_threshold.")
    ap = mean_ap(truth, found, task.max_detections, ignore)
    out = {"metric": "map50", "label": "mAP50", "value": ap["map50"], "map50": ap["map50"],
           "map50_95": ap["map50_95"], "budget": "points", "against": against, "samples": len(found),
           "detections": int(sum(len(f) for f in found)), "ground_truth": int(sum(len(t) for t in truth)),
           "format": task.format, "scores": score_statistics(task, got.outputs)}
    if against == "fp32":
        out["label_threshold"] = threshold
        out["ignored_below"] = {"from": IGNORE_BAND * threshold, "regions": int(sum(len(x) for x in ignore))}
    if ref_dets is None or not interval or len(ref_dets) != len(found):
        return out
    out["drop_interval"] = paired_map_interval(truth, found, ref_dets, task.max_detections, ignore=ignore)
    if against == "fp32":
        sens = []
        for t in sorted({*SENSITIVITY_THRESHOLDS, threshold}):
            tt = pseudo_labels(ref_dets, t)
            n_gt = int(sum(len(x) for x in tt))
            if n_gt == 0:
                sens.append({"label_threshold": t, "ground_truth": 0, "drop_points": None})
                continue
            band = ignore_regions(ref_dets, t)
            a, b = (map50_resampled(matches50(tt, d, task.max_detections, band), np.ones(len(tt)))
                    for d in (ref_dets, found))
            sens.append({"label_threshold": t, "ground_truth": n_gt, "drop_points": float((a - b) * 100)})
        out["threshold_sensitivity"] = sens
    return out


def agreement(refs: list[dict], gots: list[dict]) -> dict | None:
    """How well one model's final detections (torchvision-style outputs) reproduce another's on the same
    samples: COCO mAP50 and mAP50:95 of ``gots`` against every detection of ``refs`` as ground truth, over all
    the samples at once, and the drops from 100 in points. None when the outputs are not final detections (a
    raw head), the reference detects nothing, or the COCO evaluator is not installed."""
    from types import SimpleNamespace

    from edgeopt.errors import EdgeoptError

    # what decode() reads of a [task]: torchvision-style outputs under their usual names, every detection
    task = SimpleNamespace(format="torchvision", boxes=None, scores=None, labels=None, score_threshold=0.0,
                           max_detections=10000)
    try:
        truth, found = decode(task, refs), decode(task, gots)
    except EdgeoptError:
        return None
    n_truth = sum(len(t) for t in truth)
    if len(truth) != len(found) or n_truth == 0:
        return None
    most = max(len(d) for d in truth + found)
    try:
        ap = mean_ap(truth, found, max(most, 100))
    except EdgeoptError:  # pycocotools missing
        return None
    return {"map50": ap["map50"], "map50_95": ap["map50_95"], "drop50": (1.0 - ap["map50"]) * 100,
            "drop50_95": (1.0 - ap["map50_95"]) * 100, "samples": len(truth), "reference_detections": n_truth,
            "detections": int(sum(len(f) for f in found))}
