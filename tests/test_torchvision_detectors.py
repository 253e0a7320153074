"""torchvision detectors given as the model, no helper named in the recipe (issue 23): recognised, exported in
the form the build's targets ask their backends for (NMS in the graph for ONNX Runtime and OpenVINO; without it
when a target wants NMS outside: TensorRT's plugin, an application's own NMS), the [task] keys read from the
model, the choice in the log and the manifest. Tiny random-weight SSD, RetinaNet, FCOS and Faster R-CNN at 64x64
(tests/models/tiny.py), FP32 only, no timing."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MODELS

pytest.importorskip("torchvision")
SIZE = 64
PRE_NMS = [("tiny_ssd", "SSD", 0), ("tiny_retinanet", "RetinaNet", -1), ("tiny_fcos", "FCOS", -1)]


def _recipe(tmp_path, factory: str, targets: list[str], **extra) -> dict:
    from tiny import rect_images

    np.savez(tmp_path / "ev.npz", images=rect_images(4, SIZE, seed=200))
    return {"model": {"source": f"{MODELS / 'tiny.py'}:{factory}"},
            "inputs": [{"name": "images", "shape": [1, 3, SIZE, SIZE]}],
            "evaluation": {"source": "ev.npz"}, "targets": targets, "precisions": ["fp32"], **extra}


def _build(tmp_path, data: dict) -> dict:
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    return build(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True), profile=False)


def _nms_nodes(tmp_path) -> int:
    """NonMaxSuppression nodes in the exported ONNX, in If/Loop bodies too (torchvision's sits in an If)."""
    import onnx

    def count(graph) -> int:
        return sum((n.op_type == "NonMaxSuppression") + sum(count(a.g) for a in n.attribute if a.type == a.GRAPH)
                   for n in graph.node)

    return count(onnx.load(str(tmp_path / "out" / "export" / "model.onnx")).graph)


def _judged_by_map(m: dict, targets=("ort-cpu", "openvino-cpu")) -> None:
    assert m["export"]["parity"]["passed"]
    assert m["fp32_metric"]["metric"] == "map50" and m["fp32_metric"]["detections"] > 0
    arts = {a["target"]: a for a in m["artifacts"]}
    for t in targets:
        assert arts[t]["status"] == "ok", arts[t]
        assert arts[t]["accuracy"]["metric"] == "map50", arts[t]


def test_nms_stays_in_the_graph_for_onnx_runtime_and_openvino(tmp_path):
    """No call, kind or [task] in the recipe: the SSD is called with a list of images, exported whole (ONNX
    NonMaxSuppression in the graph), judged by mAP50 as torchvision's final detections."""
    m = _build(tmp_path, _recipe(tmp_path, "tiny_ssd", ["ort-cpu", "openvino-cpu"]))
    d = m["model"]["detector"]
    assert (d["family"], d["nms"], d["targets"]) == ("SSD", "graph", [])
    assert m["model"]["kind"] == "detector" and m["model"]["outputs"] == ["boxes", "scores", "labels"]
    task = m["task"]["config"]
    assert (task["type"], task["format"]) == ("detection", "torchvision")
    # The model's own post-processing settings (tiny_ssd: 0.2, 0.5, 20), not [task]'s defaults
    assert (task["score_threshold"], task["iou_threshold"], task["max_detections"]) == (0.2, 0.5, 20)
    assert _nms_nodes(tmp_path) > 0
    _judged_by_map(m)
    log = (tmp_path / "out" / "logs" / "build.log").read_text()
    assert "torchvision SSD detector: exported whole, NMS in the graph" in log
    assert 'format = "torchvision"' in log and "(not in the recipe; from the model)" in log


def test_readme_recipe_a_tensorrt_target_takes_nms_out_of_the_graph(tmp_path):
    """The README's torchvision recipe (a factory and its fine-tuned state_dict; no call, kind or [task]) at
    64x64, FP32, the tiny SSD: the Jetson target (packaged here, built on the device) wants NMS outside the
    graph, so the one ONNX ends before NMS (boxes, per-class scores); ONNX Runtime and OpenVINO are compiled from
    it and judged with the host's NMS; the package's graph ends in EfficientNMS_TRT with the model's background
    class and thresholds."""
    import torch

    import tiny
    from edgeopt.device.package import read_package
    from readme_flow import recipe

    (tmp_path / "detector.py").write_text(f"import sys\nsys.path.insert(0, {str(MODELS)!r})\n"
                                          "from tiny import tiny_ssd as build\n")
    torch.save(tiny.tiny_ssd().state_dict(), tmp_path / "ssdlite.pt")
    np.savez(tmp_path / "ev.npz", images=tiny.rect_images(4, SIZE, seed=200))
    data = recipe(3, precisions=["fp32"], inputs=[{"name": "images", "shape": [1, 3, SIZE, SIZE], "range": [0.0, 1.0]}],
                  calibration={"source": "ev.npz"}, evaluation={"source": "ev.npz"})
    assert data["model"] == {"source": "detector.py:build", "checkpoint": "ssdlite.pt"} and "task" not in data
    assert "jetson-orin-nano" in data["targets"]
    m = _build(tmp_path, data)
    d = m["model"]["detector"]
    assert (d["family"], d["nms"], d["targets"]) == ("SSD", "outside", ["jetson-orin-nano"])
    assert "EfficientNMS_TRT" in d["why"]
    assert m["model"]["outputs"] == ["boxes", "scores"] and _nms_nodes(tmp_path) == 0
    task = m["task"]["config"]
    assert (task["format"], task["background_class"], task["score_threshold"]) == ("torchvision", 0, 0.2)
    _judged_by_map(m)
    log = (tmp_path / "out" / "logs" / "build.log").read_text()
    assert "torchvision SSD detector: exported without its NMS (boxes, per-class scores) for jetson-orin-nano" in log
    nms = read_package(tmp_path / "out" / "jetson-orin-nano-fp32")["onnx"]["graph"]["nms"]
    assert (nms["where"], nms["background_class"], nms["score_threshold"], nms["max_output_boxes"]) == \
        ("plugin", 0, 0.2, 20)


def test_nms_outside_the_graph_when_the_recipe_says_so(tmp_path):
    """``[options.openvino-cpu] nms = "outside"`` (the application runs NMS): FCOS is exported without its NMS
    for both targets; the recipe's own [task] key wins over the model's. (RetinaNet's graph without NMS: the
    test below.)"""
    m = _build(tmp_path, _recipe(tmp_path, "tiny_fcos", ["ort-cpu", "openvino-cpu"], task={"score_threshold": 0.3},
                                 options={"openvino-cpu": {"nms": "outside"}}))
    d = m["model"]["detector"]
    assert (d["family"], d["nms"], d["targets"]) == ("FCOS", "outside", ["openvino-cpu"])
    assert 'nms = "outside"' in d["why"]
    assert m["model"]["outputs"] == ["boxes", "scores"] and _nms_nodes(tmp_path) == 0
    task = m["task"]["config"]
    assert (task["format"], task["background_class"]) == ("torchvision", -1)
    assert task["score_threshold"] == 0.3 and "score_threshold" not in d["task_filled"]  # the recipe's
    assert (task["iou_threshold"], task["max_detections"]) == (0.5, 20)  # the model's
    _judged_by_map(m)


@pytest.mark.parametrize("factory,family,background", PRE_NMS)
def test_host_nms_of_the_graph_without_nms_gives_the_models_own_detections(factory, family, background):
    """What the targets that want NMS outside get is the model without its post-processing: the host's NMS (the
    plugin's semantics) with the model's own thresholds finds the detections the whole model finds."""
    import torch

    import tiny
    from edgeopt.config.recipe import ModelConfig
    from edgeopt.core.detection import per_class_nms
    from edgeopt.core.spec import IOSpec, TensorSpec
    from edgeopt.pipeline.intake import load_model

    spec = IOSpec((TensorSpec("images", (2, 3, SIZE, SIZE)),))
    loaded = load_model(ModelConfig(source=f"{MODELS / 'tiny.py'}:{factory}"), spec, f"{MODELS / 'tiny.py'}:{factory}",
                        nms={"where": "outside", "why": "test", "targets": ["t"]})
    t = loaded.detector["task"]
    assert loaded.spec.outputs == ("boxes", "scores") and t["background_class"] == background
    x = torch.from_numpy(tiny.rect_images(2, SIZE, seed=7))
    model = getattr(tiny, factory)()
    with torch.no_grad():
        boxes, scores = loaded.module(x)
        whole = model(list(x))
    for i, own in enumerate(whole):
        got = per_class_nms(boxes[i].numpy(), scores[i].numpy(), t["score_threshold"], t["iou_threshold"],
                            t["max_detections"], background)
        assert len(got.scores) == len(own["scores"]) > 0
        order = np.argsort(-got.scores, kind="stable")
        np.testing.assert_allclose(got.scores[order], own["scores"].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.boxes[order], own["boxes"].numpy(), rtol=1e-4, atol=1e-3)
        assert np.array_equal(got.labels[order], own["labels"].numpy())


def test_faster_rcnn_is_recognised_and_refused_where_nms_must_leave_the_graph(tmp_path, run_cli):
    """Faster R-CNN picks its region proposals with NMS inside the model: it loads for targets that run NMS in
    the graph (called with a list of images), and a target that wants NMS outside is refused before anything is
    written, saying why and what to do."""
    from edgeopt.config.recipe import ModelConfig
    from edgeopt.core.spec import IOSpec, TensorSpec
    from edgeopt.pipeline.intake import load_model

    source = f"{MODELS / 'tiny.py'}:tiny_frcnn"
    loaded = load_model(ModelConfig(source=source), IOSpec((TensorSpec("images", (1, 3, SIZE, SIZE)),)), source)
    assert (loaded.detector["family"], loaded.detector["nms"], loaded.kind) == ("FasterRCNN", "graph", "detector")
    assert loaded.spec.outputs == ("boxes", "labels", "scores") == tuple(loaded.detector["outputs"])
    (tmp_path / "recipe.toml").write_text(f'''targets = ["ort-cpu", "jetson-orin-nano"]
precisions = ["fp32"]

[model]
source = "{source}"

[[inputs]]
name = "images"
shape = [1, 3, {SIZE}, {SIZE}]
''')
    code, out, err = run_cli("build", tmp_path / "recipe.toml", "-o", tmp_path / "out")
    assert code != 0 and "Traceback" not in err
    assert "FasterRCNN cannot be exported without its NMS" in err and "jetson-orin-nano" in err, err
    assert "one-stage detector" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_targets_backends_say_where_nms_runs(tmp_path):
    """Asked through the backend interface, per planned target: ONNX Runtime and OpenVINO keep NMS in the
    graph unless the target's (or recipe's) ``nms = "outside"``; TensorRT always wants it outside."""
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.errors import UserInputError
    from edgeopt.pipeline.plan import detector_nms, plan_artifacts

    def where(targets, options=None):
        data = _recipe(tmp_path, "tiny_ssd", targets, options=options or {})
        return detector_nms(plan_artifacts(recipe_from_dict(data, tmp_path)))

    assert where(["ort-cpu", "openvino-cpu"])["where"] == "graph"
    trt = where(["ort-cpu", "jetson-orin-nano"])
    assert (trt["where"], trt["targets"]) == ("outside", ["jetson-orin-nano"]) and "TensorRT" in trt["why"]
    own = where(["ort-cpu", "openvino-cpu"], {"onnxruntime": {"nms": "outside"}})
    assert (own["where"], own["targets"]) == ("outside", ["ort-cpu"])
    with pytest.raises(UserInputError, match="nms"):
        where(["ort-cpu"], {"onnxruntime": {"nms": "inside"}})


def test_edgeopt_export_asks_the_recipes_targets_and_takes_a_dynamic_batch(tmp_path):
    """``edgeopt export`` makes the ONNX the build of the recipe's targets would (a Jetson target: RetinaNet
    without its NMS); a graph without NMS takes a dynamic batch, which the whole model's list call cannot."""
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.api import export
    from edgeopt.report.progress import Reporter

    data = _recipe(tmp_path, "tiny_retinanet", ["ort-cpu", "jetson-orin-nano"])
    data.update(inputs=[{"name": "images", "shape": ["batch", 3, SIZE, SIZE]}], dims={"batch": {"min": 1, "max": 4}})
    m = export(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    assert (m["model"]["detector"]["nms"], m["model"]["outputs"]) == ("outside", ["boxes", "scores"])
    assert m["export"]["parity"]["passed"] and _nms_nodes(tmp_path) == 0
