"""Detectors on TensorRT: where NMS runs (``nms = "plugin" | "outside"``), and the graph edgeopt hands TensorRT.

A detector exported without its NMS (raw ``boxes`` [batch, anchors, 4] and per-class ``scores`` [batch, anchors,
classes], the YOLO-style export) gets TensorRT's standard NMS plugin appended. Its four outputs have a fixed size
(``num_detections`` [batch, 1], then ``max_output_boxes`` rows of boxes, scores and classes, zero-padded), which
edgeopt's runner takes, where ONNX ``NonMaxSuppression`` gives a data-dependent shape it refuses. The other choice
is NMS outside the graph (``nms = "outside"``): the engine ends before NMS and the host or the application decodes
its raw outputs (``core/detection``: :func:`~edgeopt.core.detection.decode_yolo` for a YOLO head,
:func:`~edgeopt.core.detection.per_class_nms` for boxes + per-class scores, the plugin's semantics).

:func:`rewrite_for_tensorrt` makes a device package's ONNX what TensorRT gets: the NMS choice for a detector,
INT64 outputs cast to INT32; :func:`expected_outputs` turns the reference outputs into what that graph gives.

Only ``onnx`` is needed; ONNX Runtime cannot run the result (the plugin is TensorRT's), so the host checks the
model before this step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.errors import UserInputError, require

PLUGIN = "EfficientNMS_TRT"
PLUGIN_DOMAIN = "TRT"
OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


def append_efficient_nms(src: Path | str, dst: Path | str, *, boxes: str = "boxes", scores: str = "scores",
                         max_output_boxes: int = 100, score_threshold: float = 0.25, iou_threshold: float = 0.45,
                         center_size_boxes: bool = False, score_activation: bool = False,
                         background_class: int = -1) -> Path:
    """Write ``dst``: ``src`` with ``EfficientNMS_TRT`` on its ``boxes`` and ``scores`` outputs, whose four
    fixed-size outputs replace them (other outputs are kept)."""
    onnx = require("onnx", "tensorrt", "add TensorRT's NMS plugin to a detector")
    from onnx import TensorProto, helper

    if not 0 < int(max_output_boxes) <= 4096:
        raise UserInputError(f"max_output_boxes must be 1..4096, got {max_output_boxes}.",
                             "100 is the usual value (COCO evaluation keeps 100 detections per image).")
    if not (0.0 <= score_threshold <= 1.0 and 0.0 < iou_threshold <= 1.0):
        raise UserInputError(f"Thresholds out of range: score {score_threshold}, IoU {iou_threshold}.",
                             "Use 0 <= score_threshold <= 1 and 0 < iou_threshold <= 1.")
    model = onnx.load(str(src))
    graph = model.graph
    outs = {o.name: o for o in graph.output}
    for name, rank_last in ((boxes, 4), (scores, None)):
        if name not in outs:
            raise UserInputError(f"The model has no output {name!r} (it has {sorted(outs)}).",
                                 "Export the detector without NMS, with raw boxes [batch, anchors, 4] and scores "
                                 "[batch, anchors, classes] outputs, and name them here.")
        dims = outs[name].type.tensor_type.shape.dim
        if len(dims) != 3 or (rank_last and dims[2].HasField("dim_value") and dims[2].dim_value != rank_last):
            raise UserInputError(f"Output {name!r} must be [batch, anchors, {rank_last or 'classes'}].",
                                 "Reshape the head's outputs to that layout before exporting.")
    batch = outs[boxes].type.tensor_type.shape.dim[0]
    b = batch.dim_value if batch.HasField("dim_value") else (batch.dim_param or "batch")
    n = int(max_output_boxes)
    graph.node.append(helper.make_node(
        PLUGIN, [boxes, scores], list(OUTPUTS), name="efficient_nms", domain=PLUGIN_DOMAIN, plugin_version="1",
        background_class=int(background_class), max_output_boxes=n, score_threshold=float(score_threshold),
        iou_threshold=float(iou_threshold), score_activation=int(bool(score_activation)),
        class_agnostic=0, box_coding=int(bool(center_size_boxes))))  # every field the creator lists: no warning
    kept = [o for o in graph.output if o.name not in (boxes, scores)]
    del graph.output[:]
    graph.output.extend([*kept,
                         helper.make_tensor_value_info(OUTPUTS[0], TensorProto.INT32, [b, 1]),
                         helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, [b, n, 4]),
                         helper.make_tensor_value_info(OUTPUTS[2], TensorProto.FLOAT, [b, n]),
                         helper.make_tensor_value_info(OUTPUTS[3], TensorProto.INT32, [b, n])])
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


# ---- the NMS choice for a detector packaged for TensorRT ------------------------------------------------------
NMS_CHOICES = ("plugin", "outside")
INT64_MAX = 2**63 - 1


def nms_option(options: dict) -> str | None:
    """The target's (or recipe's) ``nms`` option: "plugin", "outside" or None (not given)."""
    choice = options.get("nms")
    if choice is None:
        return None
    if choice not in NMS_CHOICES:
        raise UserInputError(f"nms = {choice!r} is not a choice TensorRT targets offer.",
                             'Use nms = "plugin" (EfficientNMS_TRT in the engine) or "outside" (the engine ends '
                             "before NMS; the host decodes).")
    return choice


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def raw_head(model, task) -> dict | None:
    """Which outputs of ``model`` (ModelProto) are a detector's before NMS, from ``[task]``: a YOLO head
    ``{"layout": "yolo", "head": NAME, "anchors_last": bool}`` or ``{"layout": "boxes_scores", "boxes", "scores"}``
    (boxes [B, N, 4] x1y1x2y2, per-class scores [B, N, C]); None when the graph has neither (final detections)."""
    outs = {o.name: o for o in model.graph.output}
    if task.format == "yolo":
        name = task.output or model.graph.output[0].name
        if name not in outs or len(_dims(outs[name])) != 3:
            return None
        _, a, b = _dims(outs[name])
        anchors_last = not (isinstance(a, int) and isinstance(b, int) and a > b)  # [B, 4 + C, N] unless N < 4 + C
        return {"layout": "yolo", "head": name, "anchors_last": anchors_last}
    kb, ks = task.boxes or "boxes", task.scores or "scores"
    if kb in outs and ks in outs and len(_dims(outs[kb])) == 3 and len(_dims(outs[ks])) == 3:
        return {"layout": "boxes_scores", "boxes": kb, "scores": ks}
    return None


def _yolo_to_boxes_scores(model, head: str, anchors_last: bool) -> tuple[str, str]:
    """Append Transpose/Slice nodes: the head [B, 4 + C, N] to boxes [B, N, 4] (centre-size) and scores [B, N, C]."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    taken = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}

    def fresh(name):
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    boxes, scores = fresh("boxes"), fresh("scores")
    rows = head
    if anchors_last:
        rows = fresh(f"{head}_anchors")
        g.node.append(helper.make_node("Transpose", [head], [rows], perm=[0, 2, 1], name=fresh("edgeopt_nms_anchors")))
    consts = {k: fresh(f"edgeopt_nms_{k}") for k in ("zero", "four", "end", "axis")}
    for k, v in (("zero", 0), ("four", 4), ("end", INT64_MAX), ("axis", 2)):
        g.initializer.append(numpy_helper.from_array(np.array([v], np.int64), consts[k]))
    g.node.append(helper.make_node("Slice", [rows, consts["zero"], consts["four"], consts["axis"]], [boxes],
                                   name=fresh("edgeopt_nms_boxes")))
    g.node.append(helper.make_node("Slice", [rows, consts["four"], consts["end"], consts["axis"]], [scores],
                                   name=fresh("edgeopt_nms_scores")))
    out = next(o for o in g.output if o.name == head)
    b, a, c = _dims(out)
    n, k = (c, a) if anchors_last else (a, c)
    k = k - 4 if isinstance(k, int) else None
    kept = [o for o in g.output if o.name != head]
    del g.output[:]
    g.output.extend([*kept, helper.make_tensor_value_info(boxes, TensorProto.FLOAT, [b, n, 4]),
                     helper.make_tensor_value_info(scores, TensorProto.FLOAT, [b, n, k])])
    return boxes, scores


def rewrite_for_tensorrt(onnx_path: Path, task, options: dict, detector: bool) -> dict | None:
    """Make the ONNX at ``onnx_path`` (rewritten in place) the graph TensorRT gets; return what was done:
    ``{"nms": {...} | None, "int64_outputs": [...], "outputs": [...]}``, or None when nothing changed.

    For a detector (``detector``: the task is detection; other models ignore ``nms``) the ``nms`` option decides: "plugin" (the default when
    the graph ends before NMS) appends ``EfficientNMS_TRT`` with ``[task]``'s score_threshold, iou_threshold,
    max_detections and background_class; "outside" keeps the graph as it is, which must then end before NMS.
    INT64 outputs are then cast to INT32 (:func:`~edgeopt.backends.tensorrt.prepare.cast_int64_outputs`)."""
    onnx = require("onnx", "tensorrt", "prepare a detector for TensorRT")
    from edgeopt.backends.tensorrt.prepare import cast_int64_outputs

    choice = nms_option(options)
    model = onnx.load(str(onnx_path), load_external_data=False)
    if not detector and not any(o.type.tensor_type.elem_type == 7 for o in model.graph.output):
        return None  # nothing to change: no NMS to place (``nms`` concerns detectors only), no INT64 output
    model = onnx.load(str(onnx_path))
    record: dict = {"nms": None}
    if detector:
        head = raw_head(model, task)
        has_nms = any(n.op_type == "NonMaxSuppression" for n in model.graph.node)
        if head is None or has_nms:
            if choice is not None:
                raise UserInputError(
                    f"nms = {choice!r} needs a detector exported without its NMS, and this graph "
                    + ("has a NonMaxSuppression node." if has_nms else "has no raw boxes and per-class scores outputs."),
                    "Export the part before NMS: a YOLO-style raw head ([task] format = \"yolo\"), or boxes [B, N, 4] "
                    "and per-class scores [B, N, C] named by [task] boxes / scores (a torchvision SSD, SSDlite, "
                    "RetinaNet or FCOS given as the model is exported so by itself; by hand: "
                    "edgeopt.pipeline.detectors.pre_nms).")
        else:
            choice = choice or "plugin"
            record["nms"] = {"where": choice, **head}
            if choice == "plugin":
                if head["layout"] == "yolo":
                    boxes, scores = _yolo_to_boxes_scores(model, head["head"], head["anchors_last"])
                    coding, background = 1, -1
                else:
                    boxes, scores, coding, background = head["boxes"], head["scores"], 0, task.background_class
                params = {"max_output_boxes": int(task.max_detections), "score_threshold": float(task.score_threshold),
                          "iou_threshold": float(task.iou_threshold), "center_size_boxes": bool(coding),
                          "background_class": int(background)}
                record["nms"].update(plugin=PLUGIN, outputs=list(OUTPUTS), **params)
                onnx.save(model, str(onnx_path))
                append_efficient_nms(onnx_path, onnx_path, boxes=boxes, scores=scores, **params)
                model = onnx.load(str(onnx_path))
    record["int64_outputs"] = cast_int64_outputs(model)
    if record["nms"] is None and not record["int64_outputs"]:
        return None
    onnx.save(model, str(onnx_path))
    record["outputs"] = [o.name for o in model.graph.output]
    return record


def expected_outputs(outputs: dict[str, np.ndarray], record: dict) -> dict:
    """The reference outputs of the model before the rewrite turned into those of the rewritten graph: the NMS
    plugin's four outputs computed on the host (:func:`edgeopt.core.detection.per_class_nms`, the plugin's
    semantics) in place of the raw head; other outputs as they are."""
    nms = record.get("nms") or {}
    if nms.get("where") != "plugin":
        return dict(outputs)
    from edgeopt.core.detection import padded, per_class_nms, xywh_to_xyxy

    out = dict(outputs)
    if nms["layout"] == "yolo":
        head = np.asarray(out.pop(nms["head"]), np.float32)
        rows = head.transpose(0, 2, 1) if nms["anchors_last"] else head  # [B, N, 4 + C]
        boxes, scores = xywh_to_xyxy(rows[..., :4]), rows[..., 4:]
    else:
        boxes, scores = np.asarray(out.pop(nms["boxes"]), np.float32), np.asarray(out.pop(nms["scores"]), np.float32)
    dets = [per_class_nms(boxes[i], scores[i], nms["score_threshold"], nms["iou_threshold"], nms["max_output_boxes"],
                          nms["background_class"]) for i in range(boxes.shape[0])]
    return {**out, **padded(dets, nms["max_output_boxes"])}


def without_plugin(onnx_path: Path, record: dict | None, dst: Path) -> Path:
    """The rewritten ONNX made runnable on ONNX Runtime (for the host's scoring of a package): ``dst``, the graph
    with ``EfficientNMS_TRT`` removed and the raw outputs it replaced given back under their names (their
    producers are still in the graph), or ``onnx_path`` itself when the graph has no plugin."""
    nms = (record or {}).get("nms") or {}
    if nms.get("where") != "plugin":
        return Path(onnx_path)
    onnx = require("onnx", "tensorrt", "score a TensorRT package's ONNX on ONNX Runtime")
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    for n in [n for n in g.node if n.op_type == PLUGIN]:
        g.node.remove(n)
    kept = [o for o in g.output if o.name not in OUTPUTS]
    raw = [nms["head"]] if nms.get("layout") == "yolo" else [nms["boxes"], nms["scores"]]
    del g.output[:]
    g.output.extend([*kept, *(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in raw)])
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst
