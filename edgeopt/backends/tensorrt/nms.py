"""Detectors on TensorRT: NMS as TensorRT's ``EfficientNMS_TRT`` plugin at the end of the graph.

A detector exported without its NMS (raw ``boxes`` [batch, anchors, 4] and per-class ``scores`` [batch, anchors,
classes], the YOLO-style export) gets TensorRT's standard NMS plugin appended. Its four outputs have a fixed size
(``num_detections`` [batch, 1], then ``max_output_boxes`` rows of boxes, scores and classes, zero-padded), which
edgeopt's runner takes, where ONNX ``NonMaxSuppression`` gives a data-dependent shape it refuses. The other choice
is NMS outside the graph: ship the raw outputs and decode them on the host (``core/detection``).

Only ``onnx`` is needed; ONNX Runtime cannot run the result (the plugin is TensorRT's), so the host checks the
model before this step.
"""

from __future__ import annotations

from pathlib import Path

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
        box_coding=int(bool(center_size_boxes))))
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
