"""Detectors and INT64 outputs on TensorRT, against the TensorRT/CUDA double (tests/trt_double/), under the 10.3 and
11.4 surfaces: NMS as TensorRT's EfficientNMS_TRT plugin or outside the engine (the recipe's ``nms`` option), INT64
outputs cast to INT32 and given back as int64, device packages of a YOLO-style head and of torchvision's SSDlite
(exported without its NMS) built and run by the double, their detections checked against edgeopt's host NMS.

What passes here is verified against the double (its EfficientNMS_TRT is a numpy implementation of the plugin's
documented semantics, written apart from edgeopt's), not against TensorRT or a Jetson."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import trt_double  # noqa: E402
from test_trt_double import AGX, NANO, X, _device, conv_onnx, set_board, spec, target  # noqa: E402
from trt_double import state  # noqa: E402

from edgeopt.backends import get_packaging  # noqa: E402
from edgeopt.backends.base import CompileRequest  # noqa: E402
from edgeopt.backends.tensorrt import backend as trtb  # noqa: E402
from edgeopt.backends.tensorrt import cuda as tcuda  # noqa: E402
from edgeopt.backends.tensorrt import record as trec  # noqa: E402
from edgeopt.backends.tensorrt.nms import OUTPUTS, PLUGIN  # noqa: E402
from edgeopt.core.detection import per_class_nms, unpadded, xywh_to_xyxy  # noqa: E402
from edgeopt.core.spec import IOSpec, TensorSpec  # noqa: E402
from edgeopt.core.tasks import TaskConfig  # noqa: E402
from edgeopt.errors import UserInputError  # noqa: E402


@pytest.fixture(params=["10.3", "11.4"])
def trt(request, tmp_path, monkeypatch):
    """The double for the TensorRT 10.3 and 11.4 surfaces (as in test_trt_double.py), on an AGX Orin board."""
    board = tmp_path / "device-tree-model"
    board.write_bytes(AGX.encode() + b"\x00")
    monkeypatch.setattr(trec, "DEVICE_TREE_MODEL", board)
    mod = trt_double.activate(request.param, _device(request.param))
    yield mod
    trt_double.deactivate()


def ort_run(path: Path, feed: dict) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def jetson(trt, tmp_path, **options):
    """The Jetson target of this surface (Orin Nano for 10.3; a Thor with TensorRT 11.4 for 11.4), with options."""
    import dataclasses

    from edgeopt.core.resources import data_dir
    from edgeopt.core.targets import get_target

    if trt.__version__.startswith("10"):
        t = get_target("jetson-orin-nano")
    else:
        toml = (data_dir("targets") / "jetson-thor.toml").read_text()
        path = tmp_path / "thor-trt11.toml"
        path.write_text(toml.replace('name = "jetson-thor"', 'name = "thor-trt11"')
                        .replace('tensorrt = "10.13"', 'tensorrt = "11.4"'))
        t = get_target(str(path))
        state.device.name, state.device.cc = "NVIDIA Thor", (11, 0)
        tcuda.probe_gpu.cache_clear()
    return dataclasses.replace(t, options={**t.options, **options})


def package(tmp_path, t, onnx_path: Path, sp: IOSpec, feeds: list[dict], task: TaskConfig, kind="detector",
            precision="fp32") -> Path:
    """A device package as `edgeopt build` writes it (reference outputs from ONNX Runtime on the exported ONNX)."""
    from edgeopt.core.parity import tolerance_for
    from edgeopt.core.reference import save_reference
    from edgeopt.device.package import PackageSource, write_package_files

    save_reference(tmp_path / "reference.npz", feeds, [ort_run(onnx_path, f) for f in feeds])
    source = PackageSource(target=t, precision=precision, spec=sp, model_kind=kind, onnx_path=onnx_path,
                           reference_path=tmp_path / "reference.npz", tolerance=tolerance_for(precision).to_dict(),
                           task=task)
    folder = tmp_path / "out" / source.id
    folder.mkdir(parents=True)
    write_package_files(folder, source, source.key())
    return folder


def run_package(folder: Path, feed: dict, tmp_path) -> dict:
    """device-compile the package on the (emulated) device, then run its engine once."""
    from edgeopt.backends.artifact import open_artifact
    from edgeopt.device.package import compile_package

    res = compile_package(folder, duration_s=0.05, cache_dir=tmp_path / "cache")
    assert res["status"] == "ok" and res["parity"]["passed"], res.get("parity")
    runner, _ = open_artifact(folder)
    with runner:
        return runner.infer(feed)


def assert_same_detections(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g) == len(w)
        np.testing.assert_array_equal(g.labels, w.labels)
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.boxes, w.boxes, rtol=1e-5, atol=1e-4)


# ---- a YOLO-style raw head [B, 4 + C, N] -------------------------------------------------------------------------
def yolo_head_onnx(path: Path, classes: int = 3) -> Path:
    """image [1, 3, 16, 16] -> head [1, 4 + classes, 16]: cx, cy, w, h in pixels, then sigmoid class scores."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    scale = np.array([16, 16, 8, 8] + [1] * classes, np.float32).reshape(1, -1, 1)
    inits = [numpy_helper.from_array((rng.standard_normal((4 + classes, 3, 4, 4)) * 0.8).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([1, 4 + classes, 16], np.int64), "flat"),
             numpy_helper.from_array(scale, "scale")]
    nodes = [helper.make_node("Conv", ["image", "W"], ["c"], strides=[4, 4], name="head"),
             helper.make_node("Reshape", ["c", "flat"], ["r"], name="flatten"),
             helper.make_node("Sigmoid", ["r"], ["s"], name="act"),
             helper.make_node("Mul", ["s", "scale"], ["output0"], name="to_pixels")]
    graph = helper.make_graph(nodes, "yolo-head", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + classes, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


YOLO_TASK = TaskConfig(type="detection", format="yolo", score_threshold=0.3, iou_threshold=0.5, max_detections=8)
YOLO_SPEC = IOSpec((TensorSpec("image", (1, 3, 16, 16)),))


def host_yolo_nms(head: np.ndarray, task: TaskConfig):
    """edgeopt's host NMS (the plugin's semantics) of the raw head, image by image."""
    rows = head.transpose(0, 2, 1)
    return [per_class_nms(xywh_to_xyxy(r[:, :4]), r[:, 4:], task.score_threshold, task.iou_threshold,
                          task.max_detections) for r in rows]


def test_a_yolo_style_detector_packaged_for_jetson_with_the_nms_plugin(trt, tmp_path):
    """Done-when of #10: built for the Jetson target with NMS as a plugin, passes the preflight, and the double
    builds and runs its engine; the engine's detections are edgeopt's host NMS of the same raw head."""
    from edgeopt.device.package import PACKAGE_ONNX, read_package
    import onnx

    set_board(NANO)
    raw = yolo_head_onnx(tmp_path / "yolo.onnx")
    feeds = [{"image": X[i:i + 1]} for i in range(2)]
    folder = package(tmp_path, jetson(trt, tmp_path), raw, YOLO_SPEC, feeds, YOLO_TASK)
    pkg = read_package(folder)
    nms = pkg["onnx"]["graph"]["nms"]
    assert nms["where"] == "plugin" and nms["layout"] == "yolo" and nms["center_size_boxes"] is True
    assert nms["max_output_boxes"] == 8 and nms["score_threshold"] == 0.3
    assert pkg["lint"]["errors"] == 0 and [f["code"] for f in pkg["lint"]["findings"]] == ["plugin-operator"]
    graph = onnx.load(str(folder / PACKAGE_ONNX)).graph
    assert [o.name for o in graph.output] == list(OUTPUTS) and graph.node[-1].op_type == PLUGIN
    got = run_package(folder, feeds[1], tmp_path)
    assert set(got) == set(OUTPUTS) and got["num_detections"].dtype == np.int32
    want = host_yolo_nms(ort_run(raw, feeds[1])["output0"], YOLO_TASK)
    assert len(want[0]) >= 2  # a real NMS case: several detections kept, some suppressed
    assert_same_detections(unpadded(got), want)
    assert not got["detection_scores"][0, len(want[0]):].any()  # zero-padded to max_output_boxes


def test_nms_outside_leaves_the_raw_head_for_the_host(trt, tmp_path):
    from edgeopt.core.detection import decode
    from edgeopt.device.package import read_package

    set_board(NANO)
    raw = yolo_head_onnx(tmp_path / "yolo.onnx")
    feeds = [{"image": X[:1]}]
    folder = package(tmp_path, jetson(trt, tmp_path, nms="outside"), raw, YOLO_SPEC, feeds, YOLO_TASK)
    assert read_package(folder)["onnx"]["graph"]["nms"]["where"] == "outside"
    got = run_package(folder, feeds[0], tmp_path)
    ref = ort_run(raw, feeds[0])
    assert set(got) == {"output0"}
    np.testing.assert_allclose(got["output0"], ref["output0"], rtol=1e-5, atol=1e-5)
    assert_same_detections(decode(YOLO_TASK, [got]), decode(YOLO_TASK, [ref]))  # the host's decode + NMS


# ---- torchvision SSDlite320 MobileNetV3, exported without its NMS ----------------------------------------------
SSD_SIZE = 96


@pytest.fixture(scope="module")
def ssd_onnx(tmp_path_factory):
    """SSDlite320 MobileNetV3 (random weights, 5 classes) at 96x96, exported up to NMS by edgeopt's pre_nms."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    from edgeopt.pipeline.detectors import pre_nms

    torch.manual_seed(0)
    model = tv.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    for m in model.modules():  # torchvision's init leaves random-weight activations ~1e-14: scores would all tie
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    for m in model.head.classification_head.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data *= 0.15
    model.eval()
    wrapped = pre_nms(model, (SSD_SIZE, SSD_SIZE)).eval()
    path = tmp_path_factory.mktemp("ssd") / "ssdlite_pre_nms.onnx"
    x = torch.rand(1, 3, SSD_SIZE, SSD_SIZE)
    with torch.no_grad():
        torch.onnx.export(wrapped, (x,), str(path), input_names=["image"], output_names=["boxes", "scores"],
                          opset_version=17, dynamo=False)
    return path


SSD_TASK = TaskConfig(type="detection", format="torchvision", score_threshold=0.3, iou_threshold=0.45,
                      max_detections=20, background_class=0)


def test_torchvision_ssdlite_packaged_for_jetson_with_the_nms_plugin(trt, tmp_path, ssd_onnx):
    """Done-when of #10 for a torchvision detector: SSDlite's backbone, head and BoxCoder decode in the graph,
    EfficientNMS_TRT after them (background class 0); the engine's detections are edgeopt's host NMS of the same
    raw outputs."""
    from edgeopt.device.package import read_package

    set_board(NANO)
    sp = IOSpec((TensorSpec("image", (1, 3, SSD_SIZE, SSD_SIZE)),))
    rng = np.random.default_rng(4)
    feeds = [{"image": rng.random((1, 3, SSD_SIZE, SSD_SIZE), dtype=np.float32)}]
    folder = package(tmp_path, jetson(trt, tmp_path), ssd_onnx, sp, feeds, SSD_TASK)
    pkg = read_package(folder)
    nms = pkg["onnx"]["graph"]["nms"]
    assert (nms["where"], nms["layout"], nms["background_class"], nms["center_size_boxes"]) == \
        ("plugin", "boxes_scores", 0, False)
    assert pkg["lint"]["errors"] == 0
    got = run_package(folder, feeds[0], tmp_path)
    raw = ort_run(ssd_onnx, feeds[0])
    want = [per_class_nms(raw["boxes"][0], raw["scores"][0], 0.3, 0.45, 20, background_class=0)]
    assert 2 <= len(want[0]) and not np.any(want[0].labels == 0)
    assert_same_detections(unpadded(got), want)
    # The same detections as edgeopt's host path would decode with NMS outside the graph.
    from edgeopt.core.detection import decode

    assert_same_detections(decode(SSD_TASK, [raw]), want)


# ---- the double's EfficientNMS_TRT against edgeopt's host NMS, and the plugin's documented edges --------------
def test_the_doubles_efficient_nms_and_edgeopts_host_nms_agree():
    """Two implementations written apart (the double's, from the plugin's documentation and kernels; edgeopt's
    host NMS) agree over class-wise and class-agnostic NMS, sigmoid activation, both box codings and a background
    class; and the plugin's edges hold in both."""
    fake = trt_double.activate("10.3")
    try:
        rng = np.random.default_rng(9)
        for agnostic, activation, coding, bg in [(0, 0, 0, -1), (0, 1, 1, 0), (1, 0, 1, 2)]:
            centre = rng.random((2, 60, 2), dtype=np.float32) * 50
            size = rng.random((2, 60, 2), dtype=np.float32) * 20 + 2
            boxes = np.concatenate([centre, size], -1) if coding else np.concatenate([centre, centre + size], -1)
            raw = rng.standard_normal((2, 60, 4)).astype(np.float32)
            attrs = dict(max_output_boxes=15, score_threshold=0.6, iou_threshold=0.3, background_class=bg,
                         score_activation=activation, box_coding=coding, class_agnostic=agnostic)
            num, b, s, c = fake._efficient_nms(attrs, boxes, raw)
            scores = 1 / (1 + np.exp(-raw)) if activation else raw
            corners = xywh_to_xyxy(boxes) if coding else boxes
            for i in range(2):
                want = per_class_nms(corners[i], scores[i], 0.6, 0.3, 15, bg, class_agnostic=bool(agnostic))
                got = unpadded({"num_detections": num, "detection_boxes": b, "detection_scores": s,
                                "detection_classes": c})[i]
                assert_same_detections([got], [want])
                assert len(want) > 3 and (bg < 0 or not np.any(want.labels == bg))
        # IoU exactly at the threshold suppresses (the kernel drops IoU >= iou_threshold); a score exactly at the
        # threshold is kept (>=); boxes come out in corner coding.
        two = np.array([[[0, 0, 2, 1], [1, 0, 3, 1], [10, 10, 12, 12]]], np.float32)  # IoU(0, 1) = 1/3
        sc = np.array([[[0.9], [0.8], [0.5]]], np.float32)
        num, b, s, c = fake._efficient_nms(dict(max_output_boxes=4, score_threshold=0.5, iou_threshold=1 / 3), two, sc)
        assert int(num[0, 0]) == 2 and s[0, :2].tolist() == pytest.approx([0.9, 0.5])
        d = per_class_nms(two[0], sc[0], 0.5, 1 / 3, 4)
        assert d.scores.tolist() == pytest.approx([0.9, 0.5])
        num, b, s, c = fake._efficient_nms(dict(max_output_boxes=4, score_threshold=0.5, iou_threshold=0.34,
                                                box_coding=1), np.array([[[5, 5, 2, 4]]], np.float32), sc[:, :1])
        assert b[0, 0].tolist() == [4, 3, 6, 7]
    finally:
        trt_double.deactivate()


# ---- INT64 outputs ----------------------------------------------------------------------------------------------
def argmax_onnx(path: Path) -> Path:
    """conv_onnx's model plus an INT64 output: label = ArgMax(logits)."""
    import onnx
    from onnx import TensorProto, helper

    src = conv_onnx(path)
    model = onnx.load(str(src))
    model.graph.node.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0, name="argmax"))
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]))
    onnx.save(model, str(path))
    return path


def test_int64_outputs_are_cast_to_int32_for_tensorrt_and_given_back_as_int64(trt, tmp_path):
    import onnx

    from edgeopt.backends.tensorrt.prepare import INT64_OUTPUTS_KEY, cast_int64_outputs, with_int32_outputs

    src = argmax_onnx(tmp_path / "model.onnx")
    out = tmp_path / "engine"
    out.mkdir()
    req = CompileRequest(onnx_path=src, target=target(trt), precision="fp32", spec=spec(), out_dir=out,
                         cache_dir=tmp_path / "cache")
    meta = trtb.BACKEND.compile(req)
    assert meta["int64_outputs"] == ["label"]
    with trtb.BACKEND.open(out, meta, req.spec, req.target) as runner:
        assert runner.dtypes["label"] == np.int32  # what the engine holds
        got = runner.infer({"image": X[:2]})
    ref = ort_run(src, {"image": X[:2]})
    assert got["label"].dtype == np.int64 and ref["label"].dtype == np.int64
    np.testing.assert_array_equal(got["label"], ref["label"])
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=1e-4, atol=1e-4)
    # The cast model: INT32 output under the same name, the names in its metadata; casting again changes nothing.
    dst, names = with_int32_outputs(src, tmp_path / "cast.onnx")
    assert dst == tmp_path / "cast.onnx" and names == ["label"]
    model = onnx.load(str(dst))
    assert {o.name: o.type.tensor_type.elem_type for o in model.graph.output} == {"logits": 1, "label": 6}
    assert {p.key: p.value for p in model.metadata_props}[INT64_OUTPUTS_KEY] == "label"
    assert cast_int64_outputs(model) == [] and with_int32_outputs(dst, tmp_path / "again.onnx") == (dst, ["label"])
    np.testing.assert_array_equal(ort_run(dst, {"image": X[:2]})["label"], ref["label"])


def test_a_package_with_an_int64_output_records_the_cast_and_passes_on_the_device(trt, tmp_path):
    from edgeopt.device.package import read_package

    set_board(NANO)
    src = argmax_onnx(tmp_path / "model.onnx")
    feeds = [{"image": X[:1]}, {"image": X[:2]}]
    folder = package(tmp_path, jetson(trt, tmp_path), src, spec(), feeds, TaskConfig(), kind="cnn")
    graph = read_package(folder)["onnx"]["graph"]
    assert graph["int64_outputs"] == ["label"] and graph["nms"] is None and graph["outputs"] == ["logits", "label"]
    got = run_package(folder, feeds[1], tmp_path)
    assert got["label"].dtype == np.int64
    np.testing.assert_array_equal(got["label"], ort_run(src, feeds[1])["label"])
    report = json.loads((folder / "device_report.json").read_text())
    assert report["meta"]["int64_outputs"] == ["label"]


# ---- the choice and its errors ---------------------------------------------------------------------------------
def test_nms_choice_errors_are_clear(tmp_path):
    from onnx import TensorProto, helper
    import onnx

    from edgeopt.backends.tensorrt.nms import nms_option, rewrite_for_tensorrt

    assert nms_option({}) is None and nms_option({"nms": "outside"}) == "outside"
    with pytest.raises(UserInputError, match="nms = 'inside'"):
        nms_option({"nms": "inside"})
    # A detector that already ends in ONNX NonMaxSuppression (torchvision's full export): explicit choice -> error
    # naming the fix; no choice -> left to the preflight, which names the node.
    g = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"], name="nms")], "full",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 8, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, 8])],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, ["n", 3])])
    path = tmp_path / "full.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    task = TaskConfig(type="detection")
    with pytest.raises(UserInputError, match="NonMaxSuppression node") as e:
        rewrite_for_tensorrt(path, task, {"nms": "plugin"}, True)
    assert "pre_nms" in e.value.fix
    rec = rewrite_for_tensorrt(path, task, {}, True)
    assert rec["nms"] is None and rec["int64_outputs"] == ["sel"]
    # Not a detector: nothing to do (an `nms` set for every TensorRT target does not concern a classifier).
    assert rewrite_for_tensorrt(yolo_head_onnx(tmp_path / "y.onnx"), TaskConfig(), {"nms": "plugin"}, False) is None


def test_recipe_options_reach_the_targets(tmp_path):
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.core.targets import get_target
    from edgeopt.pipeline.build import plan_artifacts

    base = {"model": {"source": "m.onnx", "kind": "detector"}, "inputs": [{"name": "image", "shape": [1, 3, 16, 16]}],
            "task": {"type": "detection", "format": "yolo"}}
    r = recipe_from_dict({**base, "options": {"tensorrt": {"nms": "outside", "workspace_mb": 512},
                                              "jetson-orin-nano": {"nms": "plugin"}}}, tmp_path)
    nano, nx, cpu = (r.target_options(get_target(n)) for n in ("jetson-orin-nano", "jetson-orin-nx", "ort-cpu"))
    assert nano.options["nms"] == "plugin" and nano.options["workspace_mb"] == 512  # the target's own wins
    assert nx.options["nms"] == "outside" and "nms" not in cpu.options
    assert nano.options["builder_optimization_level"] == 3  # the target file's options stay
    plans = plan_artifacts(r, ("jetson-orin-nano",), ("fp32",))
    assert plans[0].target.options["nms"] == "plugin"
    with pytest.raises(UserInputError, match="jetson-orin-nanoo"):
        plan_artifacts(recipe_from_dict({**base, "options": {"jetson-orin-nanoo": {"nms": "plugin"}}}, tmp_path),
                       ("jetson-orin-nano",), ("fp32",))
    for bad in ({"tensorrt": {"nms": ["plugin"]}}, {"tensorrt": "plugin"}, {"tensorrt": {"nms": float("nan")}}):
        with pytest.raises(UserInputError, match="options"):
            recipe_from_dict({**base, "options": bad}, tmp_path)
    with pytest.raises(UserInputError, match="background_class"):
        TaskConfig(background_class=-2)


# ---- the remote flow over loopback SSH with a TensorRT target ----------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def _python_with_the_double(tmp_path: Path, surface: str) -> str:
    """A "device Python": this Python with this checkout's edgeopt and, through a sitecustomize, the TensorRT/CUDA
    double active in every process it starts (as JetPack's TensorRT would be on a Jetson)."""
    import os
    import sys

    site = tmp_path / "double-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "import trt_double\n"
        f"trt_double.activate({surface!r}, trt_double.Device(dla_cores=0, driver_cuda=12060))\n")
    wrapper = tmp_path / "python-with-trt-double"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={site}:{ROOT} exec {sys.executable} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return str(wrapper)


def test_remote_device_compile_and_profile_of_a_jetson_detector_package(tmp_path):
    """package (a YOLO-style detector with the NMS plugin, jetson-orin-nano) -> `device-compile --remote` over SSH to
    a loopback "device" whose Python has the double -> engine built and checked there -> results here -> profile
    there; the engine that came back runs here (same double, same emulated GPU) with the host NMS's detections."""
    import shutil as sh

    from edgeopt.backends.artifact import open_artifact
    from edgeopt.core.targets import get_target
    from edgeopt.device.package import read_package

    if not Path("/usr/sbin/sshd").exists() or sh.which("ssh") is None or sh.which("ssh-keygen") is None:
        pytest.skip("needs the OpenSSH server and client")
    from test_remote import DEVICE, Sshd
    from edgeopt.device.remote import remote_compile, remote_profile

    raw = yolo_head_onnx(tmp_path / "yolo.onnx")
    feeds = [{"image": X[i:i + 1]} for i in range(2)]
    folder = package(tmp_path, get_target("jetson-orin-nano"), raw, YOLO_SPEC, feeds, YOLO_TASK)
    assert read_package(folder)["status"] == "not built here"
    (tmp_path / "sshd").mkdir()
    server = Sshd(tmp_path / "sshd").start()
    try:
        opts = {"ssh_config": str(server.config), "remote_dir": str(tmp_path / "device" / "edgeopt-remote"),
                "remote_python": _python_with_the_double(tmp_path, "10.3"), "connect_timeout": 10}
        res = remote_compile([DEVICE], folder, profile_batches=(1,), duration_s=0.1, **opts)
        host = res["hosts"][DEVICE]
        assert res["ok"] and host["ok"], host
        art = host["artifacts"][read_package(folder)["id"]]
        assert art["status"] == "ok" and art["parity"]["passed"] and art["latency"][0]["batch"] == 1
        built = Path(art["path"])
        report = json.loads((built / "device_report.json").read_text())
        assert report["meta"]["tensorrt"] == "10.3.0.30" and report["meta"]["gpu"] == "Orin"
        assert report["meta"]["plan"]["tf32"] is False and (built / trec.ENGINE_FILE).is_file()
        assert read_package(built)["status"] == "ok"
        prof = remote_profile([DEVICE], built, batches=(1,), duration_s=0.1, **opts)
        rows = prof["hosts"][DEVICE]["artifacts"][read_package(folder)["id"]]["rows"]
        assert prof["ok"] and rows[0]["batch"] == 1 and rows[0]["median_ms"] > 0
    finally:
        server.stop()
    trt_double.activate("10.3", trt_double.Device(dla_cores=0, driver_cuda=12060))
    try:
        runner, _ = open_artifact(built)
        with runner:
            got = runner.infer(feeds[0])
        assert_same_detections(unpadded(got), host_yolo_nms(ort_run(raw, feeds[0])["output0"], YOLO_TASK))
    finally:
        trt_double.deactivate()


# ---- a package whose host check fails: failed in the table and the manifest, exit 5, unless kept -----------------
def test_cli_build_fails_a_package_whose_host_check_fails_unless_the_recipe_keeps_it(tmp_path):
    """y = relu(x) * 70000 for TensorRT 11 fp16: the FP16 ONNX clamps the constant to 65504 and misses the reference
    on ONNX Runtime here. `edgeopt build` shows the artifact failed, records why, writes no package and exits 5;
    the recipe's [options.TARGET] host_check = "warn" keeps the package (exit 0)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from conftest import invoke_cli
    from edgeopt.core.resources import data_dir

    k = numpy_helper.from_array(np.array([70000.0], np.float32), "k")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                               helper.make_node("Mul", ["r", "k"], ["y"], name="scale")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "model.onnx"))
    toml = (data_dir("targets") / "jetson-thor.toml").read_text()
    (tmp_path / "thor-trt11.toml").write_text(toml.replace('name = "jetson-thor"', 'name = "thor-trt11"')
                                              .replace('tensorrt = "10.13"', 'tensorrt = "11.4"'))
    recipe = f'''targets = ["{tmp_path / 'thor-trt11.toml'}"]
precisions = ["fp16"]

[model]
source = "model.onnx"

[[inputs]]
name = "x"
shape = ["batch", 4]
range = [1.0, 2.0]

[dims.batch]
min = 1
opt = 1
max = 2
'''
    (tmp_path / "recipe.toml").write_text(recipe)
    code, stdout, stderr = invoke_cli("build", tmp_path / "recipe.toml", "-o", tmp_path / "out", "--json")
    assert code == 5, stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rec = next(a for a in m["artifacts"] if a["id"] == "thor-trt11-fp16")
    assert rec["status"] == "failed" and "misses the reference outputs on ONNX Runtime here" in rec["reason"]
    assert rec["host_check"]["passed"] is False and 'host_check = "warn"' in rec["fix"]
    assert not (tmp_path / "out" / "thor-trt11-fp16").exists()
    assert "1 artifact(s) failed: thor-trt11-fp16" in stderr
    code, stdout, _ = invoke_cli("build", tmp_path / "recipe.toml", "-o", tmp_path / "out-table")
    row = next(line for line in stdout.splitlines() if "thor-trt11" in line and "fp16" in line)
    assert code == 5 and "FAILED" in row  # the table's row says so
    (tmp_path / "recipe.toml").write_text(recipe + '\n[options.thor-trt11]\nhost_check = "warn"\n')
    code, stdout, stderr = invoke_cli("build", tmp_path / "recipe.toml", "-o", tmp_path / "out2", "--json")
    assert code == 0, stderr
    rec = next(a for a in json.loads((tmp_path / "out2" / "manifest.json").read_text())["artifacts"]
               if a["id"] == "thor-trt11-fp16")
    assert rec["status"] == "not built here" and rec["package"]["onnx"]["host_check"]["passed"] is False


# ---- `edgeopt build` for jetson-orin-nano: the recipe's NMS choice reaches the device package -------------------
def test_edgeopt_build_of_a_yolo_detector_for_jetson_with_the_nms_plugin(tmp_path, monkeypatch):
    """The pipeline end to end: `edgeopt build` (host, no TensorRT) exports a YOLO-style detector, writes the
    jetson-orin-nano device package with EfficientNMS_TRT (the recipe's [options.tensorrt] nms = "plugin"),
    which passes the preflight; the double then builds and runs its engine: parity with the package's reference
    and the detections of edgeopt's host NMS on the PyTorch model's raw head."""
    pytest.importorskip("torch")
    from conftest import MODELS
    from tiny import rect_images

    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.core.reference import REFERENCE_FILE, load_reference
    from edgeopt.device.package import PACKAGE_ONNX, read_package
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter
    import onnx

    np.savez(tmp_path / "ev.npz", images=rect_images(2, 640, seed=200))
    task = {"type": "detection", "format": "yolo", "score_threshold": 0.25, "iou_threshold": 0.5,
            "max_detections": 30}
    data = {"model": {"source": f"{MODELS / 'tiny.py'}:yolo_head", "kind": "detector"},
            "inputs": [{"name": "images", "shape": [1, 3, 640, 640]}], "task": task,
            "evaluation": {"source": str(tmp_path / "ev.npz")}, "targets": ["jetson-orin-nano"],
            "precisions": ["fp32"], "options": {"tensorrt": {"nms": "plugin"}}}
    m = build(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    rec = next(a for a in m["artifacts"] if a["id"] == "jetson-orin-nano-fp32")
    assert rec["status"] == "not built here", rec
    nms = rec["package"]["onnx"]["graph"]["nms"]
    assert nms["where"] == "plugin" and nms["layout"] == "yolo" and nms["max_output_boxes"] == 30
    assert rec["package"]["lint"]["errors"] == 0
    folder = tmp_path / "out" / "jetson-orin-nano-fp32"
    assert onnx.load(str(folder / PACKAGE_ONNX)).graph.node[-1].op_type == PLUGIN
    assert read_package(folder)["status"] == "not built here"
    feeds, raw = load_reference(tmp_path / "out" / REFERENCE_FILE)  # the PyTorch model's raw head
    trt_double.activate("10.3", trt_double.Device(dla_cores=0, driver_cuda=12060))
    try:
        got = run_package(folder, feeds[0], tmp_path)
    finally:
        trt_double.deactivate()
    head = next(iter(raw[0].values()))
    want = host_yolo_nms(head, TaskConfig(**task))
    assert len(want[0]) >= 1
    assert_same_detections(unpadded(got), want)


def test_the_host_scores_a_plugin_package_on_its_raw_outputs(tmp_path):
    """ONNX Runtime has no EfficientNMS_TRT: the host's scoring of a package (the INT8 budget before it ships) runs
    the package's graph without the plugin, whose raw outputs are the model's (a YOLO head; boxes and scores)."""
    import shutil as sh

    from test_trt_double import yolo_onnx

    from edgeopt.backends.tensorrt.nms import rewrite_for_tensorrt

    for raw, task, names in [(yolo_head_onnx(tmp_path / "head.onnx"), YOLO_TASK, ["output0"]),
                             (yolo_onnx(tmp_path / "bs.onnx"), TaskConfig(type="detection"), ["boxes", "scores"])]:
        pkg = tmp_path / f"pkg-{raw.name}"
        sh.copyfile(raw, pkg)
        graph = rewrite_for_tensorrt(pkg, task, {}, True)
        assert graph["nms"]["where"] == "plugin"
        host = get_packaging("tensorrt").package_host_onnx(pkg, graph, tmp_path / raw.stem)
        assert host != pkg
        feed = {"image": X[:1]}
        got, want = ort_run(host, feed), ort_run(raw, feed)
        for n in names:
            np.testing.assert_allclose(got[n], want[n], rtol=1e-6)
        assert get_packaging("tensorrt").package_host_onnx(raw, None, tmp_path / "none") == raw  # no plugin: as it is
