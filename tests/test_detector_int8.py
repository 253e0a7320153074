"""INT8 that holds on detectors: the post-processing head stays in float, and the guard judges by mAP.

The tiny YOLO-like model (tests/models/tiny.py:yolo_head) concatenates boxes in pixels (0..640) with sigmoid
scores (0..1) into one output [1, 7, 400], the layout whose scores a u8 per-tensor scale rounds to 0."""

import json

import numpy as np
import pytest

from conftest import MODELS

FAST = {"batches": [1], "duration_s": 0.1, "min_iterations": 3, "warmup": 1}


@pytest.fixture(scope="module")
def yolo_onnx(tmp_path_factory):
    import torch
    from tiny import yolo_head

    path = tmp_path_factory.mktemp("yolo") / "yolo.onnx"
    torch.onnx.export(yolo_head(), torch.zeros(1, 3, 640, 640), str(path), input_names=["images"],
                      output_names=["output0"], dynamo=False)
    return path


def test_the_head_is_found_in_the_onnx_and_openvino_graphs(yolo_onnx):
    import onnx
    import openvino as ov

    from edgeopt.backends.openvino.quantize import float_head
    from edgeopt.compress.head import onnx_float_head

    m = onnx.load(str(yolo_onnx))
    head = set(onnx_float_head(m))
    ops = {n.name: n.op_type for n in m.graph.node}
    final = next(n for n in m.graph.node if n.output[0] == "output0")
    assert final.op_type == "Concat" and final.name in head  # the concatenation of boxes and scores
    assert sum(ops[n] == "Sigmoid" for n in head) == 2  # box and score sigmoids
    assert not any(ops[n] == "Conv" for n in head)  # every layer is still quantized
    assert "/features/features.2/Relu" not in head  # the backbone is not the head
    ov_head = float_head(ov.Core().read_model(str(yolo_onnx)))
    assert "output0" in ov_head and not any("Conv" in n and "Sigmoid" not in n for n in ov_head)


def test_a_softmax_fed_layer_is_post_processing():
    """Ultralytics' DFL: softmax over 16 bins, then a fixed 1x1 conv (the expectation): that conv is head."""
    from onnx import TensorProto, helper

    from edgeopt.compress.head import onnx_float_head

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 16, 1, 1], list(map(float, range(16))))
    w0 = helper.make_tensor("w0", TensorProto.FLOAT, [16, 3, 1, 1], [0.1] * 48)
    g = helper.make_graph([
        helper.make_node("Conv", ["x", "w0"], ["f"], name="features"),
        helper.make_node("Softmax", ["f"], ["p"], axis=1, name="softmax"),
        helper.make_node("Conv", ["p", "w"], ["y"], name="dfl"),
    ], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], [w, w0])
    assert onnx_float_head(helper.make_model(g)) == ["softmax", "dfl"]
def _recipe(tmp_path, **compression):
    from tiny import rect_images

    np.savez(tmp_path / "cal.npz", images=rect_images(16, seed=100))
    np.savez(tmp_path / "ev.npz", images=rect_images(12, seed=200))
    return {
        "model": {"source": f"{MODELS / 'tiny.py'}:yolo_head", "kind": "detector"},
        "inputs": [{"name": "images", "shape": [1, 3, 640, 640]}],
        "task": {"type": "detection", "format": "yolo"},
        "calibration": {"source": str(tmp_path / "cal.npz")},
        "evaluation": {"source": str(tmp_path / "ev.npz")},
        "compression": {"max_drop": 30.0, "accuracy_control": False, **compression},
        "targets": ["ort-cpu"], "precisions": ["fp32", "int8"], "profile": FAST,
    }


def _build(tmp_path, data):
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    return build(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))


def _int8(manifest, target="ort-cpu"):
    return next(a for a in manifest["artifacts"] if a["id"] == f"{target}-int8")


@pytest.mark.slow
def test_u8_per_tensor_qdq_over_boxes_and_scores_is_refused(tmp_path):
    """The exact failure: the whole graph in u8 per tensor zeroes every class score; cosine on the
    concatenated output stays ~1, the detection metric says 0 and the guard refuses it."""
    m = _build(tmp_path, _recipe(tmp_path, float_head="off", candidates=["ort-qdq-u8s8"]))
    a = _int8(m)
    assert a["status"] == "failed", a
    assert "ort-qdq-u8s8: mAP50 drop 100.00 points" in a["reason"]  # every score is 0: nothing detected
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert not (tmp_path / "out" / "ort-cpu-int8").exists()


@pytest.mark.slow
def test_the_float_head_keeps_the_scores(tmp_path):
    m = _build(tmp_path, _recipe(tmp_path))
    a = _int8(m)
    assert a["status"] == "ok", a
    int8 = a["meta"]["int8"]
    win = next(c for c in int8["candidates"] if c["candidate"] == int8["recipe"])
    assert win["float_head"]["count"] > 10 and win["accuracy"]["metric"] == "map50"
    # vs FP32's detections (pseudo-labels) on held-out images; a random-weight toy loses more than a trained
    # detector would, but keeps most of its detections where the whole-graph u8 recipe keeps none
    assert win["accuracy"]["value"] >= 0.6
    out = m["model"]["outputs"][0]
    assert win["accuracy"]["scores"][f"{out} (class scores)"]["zero_share"] < 0.01
    # The artifact itself: scores spread over 0..1 like FP32's
    from edgeopt.backends.artifact import open_artifact
    from tiny import rect_images

    runner, _ = open_artifact(tmp_path / "out" / "ort-cpu-int8")
    with runner:
        y = runner.infer({"images": rect_images(1, seed=5)})[out]
    assert y[0, 4:].max() > 0.5 and np.mean(y[0, 4:] == 0) < 0.01
    json.dumps(m)  # the manifest is plain JSON


def test_the_tensorrt_qdq_package_leaves_the_head_in_float(yolo_onnx, tmp_path):
    """TensorRT's signed symmetric Q/DQ over the concatenation would zero the scores the same way."""
    import onnx
    import onnxruntime as ort
    from tiny import rect_images

    from edgeopt.backends.tensorrt.quantize import qdq_problems, quantize_for_tensorrt
    from edgeopt.core.spec import IOSpec, TensorSpec

    spec = IOSpec((TensorSpec("images", (1, 3, 640, 640)),), outputs=("output0",))
    feeds = [{"images": rect_images(1, seed=300 + i)} for i in range(8)]
    meta = quantize_for_tensorrt(yolo_onnx, feeds, spec, tmp_path / "q.onnx", model_kind="detector", log=lambda *a: None)
    assert meta["int8"]["float_head"]["count"] > 10 and not qdq_problems(tmp_path / "q.onnx")
    m = onnx.load(str(tmp_path / "q.onnx"))
    producers = {o: n for n in m.graph.node for o in n.output}
    final = producers["output0"]
    assert final.op_type == "Concat" and all(producers[i].op_type != "DequantizeLinear" for i in final.input)
    assert sum(n.op_type == "QuantizeLinear" for n in m.graph.node) > 3  # the layers are quantized
    y = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    ref = ort.InferenceSession(str(yolo_onnx), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    assert np.mean(y[0, 4:] == 0) < 0.01  # scores survive
    assert np.mean(np.abs(y[0, 4:] - ref[0, 4:])) < 0.05 * max(float(ref[0, 4:].max()), 0.1)


def test_accuracy_control_ranks_on_images_where_fp32_finds_nothing(tmp_path):
    """NNCF's accuracy control scores one image at a time; on a blank image FP32 detects nothing, so there are
    no pseudo-labels to compare with. That image scores as FP32 does: the candidate gets its mAP, not an error."""
    from tiny import rect_images

    data = _recipe(tmp_path, candidates=["nncf-qdq"], max_drop=0.0, accuracy_control=True, ac_max_iterations=1,
                   ac_ranking_subset=8)
    images = np.concatenate([rect_images(6, seed=200), np.zeros((2, 3, 640, 640), np.float32)])
    np.savez(tmp_path / "ev.npz", images=images)
    a = _int8(_build(tmp_path, data))
    cands = a["meta"]["int8"]["candidates"] if a["status"] == "ok" else []
    text = a.get("reason") or json.dumps(cands)
    assert "detects nothing" not in text, text
    assert "nncf-qdq-ac: mAP50" in text or any(c["candidate"] == "nncf-qdq-ac" and "accuracy" in c for c in cands), text
