"""Issue 22: the TensorRT plugin table checked per version by the preflight, the double as strict as TensorRT
(plugin creators by name/version/namespace per surface, their required attributes and types, real enum values,
``getPtr`` as cuda-python defines it, the plugin library's logger), and the environments a user has (no
cuda-python, cuda-python without a GPU, cuda-python 12 on a CUDA 13 driver, TensorRT without a GPU).

Verified against NVIDIA's sources (plugin/api/inferPlugin.cpp, efficientNMSPlugin.cpp, onnx-tensorrt's
FallbackPluginImporter, the headers' enum values) and the double; not against TensorRT or a GPU."""

from __future__ import annotations

import gc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

import trt_double  # noqa: E402
from trt_double import Device, DoubleViolation  # noqa: E402

from edgeopt.backends.tensorrt import builder as tbuild  # noqa: E402
from edgeopt.backends.tensorrt import cuda as tcuda  # noqa: E402
from edgeopt.backends.tensorrt import plan as tplan  # noqa: E402
from edgeopt.backends.tensorrt.lint import lint  # noqa: E402
from edgeopt.backends.tensorrt.nms import append_efficient_nms  # noqa: E402
from edgeopt.backends.tensorrt.plugins import PLUGINS, plugin_status  # noqa: E402
from edgeopt.core.targets import load_targets  # noqa: E402
from edgeopt.errors import CompileError, EdgeoptError  # noqa: E402
from test_trt_double import _device, conv_onnx, spec, target  # noqa: E402

REMOVED_IN_11 = ("BatchedNMS_TRT", "BatchedNMSDynamic_TRT", "NMS_TRT", "NMSDynamic_TRT", "EfficientNMS_ONNX_TRT",
                 "CoordConvAC", "CropAndResize", "Proposal", "Normalize_TRT")
NMS_ATTRS = dict(score_threshold=0.25, iou_threshold=0.5, max_output_boxes=10, background_class=-1,
                 score_activation=0, class_agnostic=0, box_coding=0)


@pytest.fixture(params=["10.3", "11.4"])
def trt(request):
    mod = trt_double.activate(request.param, _device(request.param))
    yield mod
    trt_double.deactivate()


def _f(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def plugin_model(path, op="EfficientNMS_TRT", scores_type=TensorProto.FLOAT, **attrs):
    """boxes [1, 50, 4] and scores [1, 50, 3] into one plugin node (the four EfficientNMS outputs)."""
    node = helper.make_node(op, ["boxes", "scores"], ["num", "det_boxes", "det_scores", "det_classes"],
                            name="nms", **attrs)
    graph = helper.make_graph([node], "g", [_f("boxes", [1, 50, 4]), _f("scores", [1, 50, 3], scores_type)],
                              [_f("num", [1, 1], TensorProto.INT32), _f("det_boxes", [1, 10, 4]),
                               _f("det_scores", [1, 10]), _f("det_classes", [1, 10], TensorProto.INT32)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def parse(trt, path):
    """Parse as edgeopt does (plugins registered first); (ok, first error text, logged messages)."""
    logger = tbuild._make_logger(trt)
    tbuild.init_plugins(trt)
    parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
    ok = parser.parse_from_file(str(path))
    return ok, (parser.get_error(0).desc() if parser.num_errors else ""), logger.messages


# ---- the plugin table and the preflight -------------------------------------------------------------------
@pytest.mark.parametrize("op", REMOVED_IN_11)
def test_the_preflight_refuses_each_removed_plugin_for_11_and_accepts_it_for_10_3(tmp_path, op):
    nano = load_targets()["jetson-orin-nano"]
    path = plugin_model(tmp_path / "m.onnx", op)
    old = lint(path, nano, tensorrt_version="10.3")
    assert old.ok and [f.code for f in old.findings] == ["plugin-operator"]
    new = lint(path, nano, tensorrt_version="11.4")
    (f,) = new.errors
    assert f.code == "plugin-removed" and f.node == "nms" and "removed in TensorRT 11.0" in f.message
    assert "Plugin not found" in f.message and f.fix


def test_plugin_versions_and_namespaces_are_checked(tmp_path):
    nano = load_targets()["jetson-orin-nano"]
    ok = lint(plugin_model(tmp_path / "ok.onnx", **NMS_ATTRS), nano, tensorrt_version="11.4")
    assert ok.ok and "deprecated since TensorRT 10.14" in ok.findings[0].message  # still registered in 11.x
    assert "deprecated" not in lint(tmp_path / "ok.onnx", nano, tensorrt_version="10.3").findings[0].message
    v2 = lint(plugin_model(tmp_path / "v2.onnx", plugin_version="2"), nano, tensorrt_version="10.3")
    assert [f.code for f in v2.errors] == ["plugin-no-such-version"] and "versions: 1" in v2.errors[0].message
    ns = lint(plugin_model(tmp_path / "ns.onnx", plugin_namespace="mine"), nano, tensorrt_version="10.3")
    assert [f.code for f in ns.errors] == ["plugin-namespace"]
    topk = lint(plugin_model(tmp_path / "topk.onnx", "TopkLastDim"), nano, tensorrt_version="10.3")
    assert [f.code for f in topk.errors] == ["plugin-not-yet"]
    assert lint(tmp_path / "topk.onnx", nano, tensorrt_version="11.4").ok
    legacy = lint(plugin_model(tmp_path / "cr.onnx", "CropAndResizeDynamic"), nano, tensorrt_version="11.4")
    assert 'plugin_version = "2"' in legacy.errors[0].fix  # version 1 went in 11.0; version 2 is there


def test_the_preflight_checks_efficient_nms_attributes_as_its_creator(tmp_path):
    nano = load_targets()["jetson-orin-nano"]
    assert lint(plugin_model(tmp_path / "ok.onnx", **NMS_ATTRS), nano).ok
    no_agnostic = {k: v for k, v in NMS_ATTRS.items() if k != "class_agnostic"}
    assert lint(plugin_model(tmp_path / "opt.onnx", **no_agnostic), nano).ok  # optional: a parser warning only
    bad = lint(plugin_model(tmp_path / "bad.onnx", **{**NMS_ATTRS, "score_threshold": 1, "box_coding": None}), nano)
    (f,) = bad.errors
    assert f.code == "plugin-attributes" and "score_threshold is INT, the creator takes FLOAT" in f.message
    assert "missing required attribute box_coding (INT)" in f.message


def test_the_table_agrees_with_the_doubles_registries():
    """Two transcriptions of inferPlugin.cpp made apart (edgeopt's table, the double's registries) agree."""
    from importlib import import_module

    for surface, trt_v in (("10.3", (10, 3)), ("11.4", (11, 4))):
        mod = trt_double.activate(surface)
        try:
            registered = import_module("tensorrt")._REGISTERED
        finally:
            trt_double.deactivate()
        ours = {key for key in PLUGINS if plugin_status(*key, trt_v)[0] in ("ok", "deprecated")}
        assert ours == registered, surface
        assert mod is not None


# ---- the double as strict as TensorRT -----------------------------------------------------------------------
def test_plugin_nodes_are_found_by_name_version_and_namespace_per_surface(trt, tmp_path):
    ok, err, _ = parse(trt, plugin_model(tmp_path / "ok.onnx", **NMS_ATTRS))
    assert ok, err
    for bad in ({"plugin_version": "2"}, {"plugin_namespace": "custom"}, {"plugin_version": 1}):
        ok, err, _ = parse(trt, plugin_model(tmp_path / "bad.onnx", **NMS_ATTRS, **bad))
        assert not ok and "Plugin not found" in err, bad  # an INT plugin_version reads as "" in onnx-tensorrt
    ok, err, _ = parse(trt, plugin_model(tmp_path / "batched.onnx", "BatchedNMS_TRT"))
    assert ok == trt.__version__.startswith("10")  # TensorRT 11 no longer registers it
    if not ok:
        assert "Plugin not found" in err


def test_efficient_nms_creator_checks_its_fields_as_the_real_one(trt, tmp_path):
    for drop in ("score_threshold", "max_output_boxes", "box_coding"):
        attrs = {k: v for k, v in NMS_ATTRS.items() if k != drop}
        ok, err, _ = parse(trt, plugin_model(tmp_path / "m.onnx", **attrs))
        assert not ok and f"Required attribute {drop} is missing" in err
    for bad in ({"score_threshold": 1}, {"max_output_boxes": 10.0}, {"iou_threshold": 0.0}, {"box_coding": 2}):
        ok, err, _ = parse(trt, plugin_model(tmp_path / "m.onnx", **{**NMS_ATTRS, **bad}))
        assert not ok and "Could not create plugin" in err, bad
    no_agnostic = {k: v for k, v in NMS_ATTRS.items() if k != "class_agnostic"}
    ok, _, logged = parse(trt, plugin_model(tmp_path / "m.onnx", **no_agnostic))
    assert ok and any("Attribute class_agnostic not found" in m for _, m in logged)


def test_edgeopts_nms_node_builds_without_a_warning_and_boxes_scores_must_share_a_type(trt, tmp_path):
    raw = helper.make_graph([helper.make_node("Identity", ["b"], ["boxes"]),
                             helper.make_node("Identity", ["s"], ["scores"])], "g",
                            [_f("b", [1, 50, 4]), _f("s", [1, 50, 3])],
                            [_f("boxes", [1, 50, 4]), _f("scores", [1, 50, 3])])
    model = helper.make_model(raw, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "raw.onnx"))
    append_efficient_nms(tmp_path / "raw.onnx", tmp_path / "nms.onnx", max_output_boxes=10)
    ok, err, logged = parse(trt, tmp_path / "nms.onnx")
    assert ok, err
    assert not [m for _, m in logged if "not found in plugin node" in m]  # item 4: every field given
    logger = tbuild._make_logger(trt)
    builder = trt.Builder(logger)
    mixed = plugin_model(tmp_path / "mixed.onnx", scores_type=TensorProto.FLOAT16, **NMS_ATTRS)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(mixed))
    assert builder.build_serialized_network(network, builder.create_builder_config()) is None
    assert "could not find any supported formats" in logger.messages[-1][1]


def test_enum_values_are_tensorrts_not_list_positions(trt):
    flags = trt.NetworkDefinitionCreationFlag
    assert int(trt.BuilderFlag.TF32) == 6 and int(trt.BuilderFlag.GPU_FALLBACK) == 3  # list positions: 7 and 4
    if trt.__version__.startswith("10"):
        assert int(flags.STRONGLY_TYPED) == 1 and int(trt.BuilderFlag.BF16) == 17
        assert tbuild._network_flags(trt, _plan(strong=True)) == 2
    else:
        assert int(flags.STRONGLY_TYPED) == 0 and not hasattr(trt.BuilderFlag, "FP16")
        assert tbuild._network_flags(trt, _plan(strong=True)) == 1
    assert int(trt.DataType.INT64) == 8 and int(trt.TensorIOMode.OUTPUT) == 2
    from cuda.bindings import runtime as rt

    assert int(rt.cudaError_t.cudaErrorInsufficientDriver) == 35
    assert int(rt.cudaMemcpyKind.cudaMemcpyDeviceToHost) == 2


def _plan(strong: bool):
    class P:
        strongly_typed = strong

    return P()


def test_getptr_is_the_storage_address_and_enqueueing_on_it_is_caught(trt, tmp_path, monkeypatch):
    """Item 2: the stream handle is int(stream) / get_cuda_native_handle(stream); a 'fix' with getPtr() enqueues
    on the address of the Python object's storage, which the double (as a GPU would not) refuses loudly."""
    from edgeopt.backends.base import CompileRequest
    from edgeopt.backends.tensorrt import backend as trtb

    mem = tcuda.cuda_memory()
    assert mem.stream_handle == int(mem.stream) and mem.stream.getPtr() != int(mem.stream)
    if trt.__version__.startswith("11"):  # cuda-bindings 13: edgeopt asks cuda.bindings.utils
        import cuda.bindings.utils as cbu

        seen = []
        real = cbu.get_cuda_native_handle
        monkeypatch.setattr(cbu, "get_cuda_native_handle", lambda obj: seen.append(obj) or real(obj))
        assert mem.stream_handle == int(mem.stream) and seen == [mem.stream]
    mem.close()
    src = conv_onnx(tmp_path / "model.onnx")
    out = tmp_path / "fp32"
    out.mkdir()
    req = CompileRequest(onnx_path=src, target=target(trt), precision="fp32", spec=spec(), out_dir=out,
                         cache_dir=tmp_path / "cache", options={})
    meta = trtb.BACKEND.compile(req)
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    with trtb.BACKEND.open(out, meta, spec(), req.target) as runner:
        assert runner.infer({"image": x})["logits"].shape[0] == 2
        monkeypatch.setattr(type(runner.mem), "stream_handle", property(lambda self: self.stream.getPtr()))
        with pytest.raises(DoubleViolation, match="never created"):
            runner.infer({"image": x})


def test_the_plugin_library_keeps_its_logger(trt, tmp_path):
    """Item 3: init_libnvinfer_plugins keeps a raw pointer to the logger; a function-local one is freed."""
    path = plugin_model(tmp_path / "m.onnx", **NMS_ATTRS)

    def register_with_a_local_logger():
        trt.init_libnvinfer_plugins(trt.Logger(), "")  # as edgeopt did before the fix

    register_with_a_local_logger()
    gc.collect()
    logger = trt.Logger()
    parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
    with pytest.raises(DoubleViolation, match="use after free"):
        parser.parse_from_file(str(path))
    tbuild.init_plugins(trt, trt.Logger())  # edgeopt's: the process-lifetime logger, whatever it is given
    gc.collect()
    assert parse(trt, path)[0]


# ---- the environments a user has: each with the message they get ---------------------------------------------
def test_no_cuda_python():
    try:
        trt_double.activate("10.3", cuda_layout="none")
        gpu, why = tcuda.probe_gpu()
        assert gpu is None and why == ("cuda-python is not installed to reach the GPU (pip install "
                                       "'edgeopt[tensorrt]' (cuda-python 12.x: JetPack 6, CUDA 12 drivers) or "
                                       "'edgeopt[tensorrt-cuda13]' (cuda-python 13.x: JetPack 7, CUDA 13 drivers))")
    finally:
        trt_double.deactivate()


def test_cuda_python_without_a_gpu_the_real_bindings_on_this_host():
    """The real cuda-bindings (torch from PyPI installs cuda-bindings 13 here) on a host without an NVIDIA driver."""
    pytest.importorskip("cuda.bindings.runtime")
    tcuda.probe_gpu.cache_clear()
    try:
        gpu, why = tcuda.probe_gpu()
        if gpu is not None:
            pytest.skip("this host has a usable NVIDIA GPU")
        assert why.startswith("cuda-python: ") and "JetPack 6" in why and "cuda-python>=12.6,<13" in why, why
        with pytest.raises(EdgeoptError, match="No usable NVIDIA GPU here") as info:
            tcuda.require_gpu()
        assert "device-compile" in info.value.fix
    finally:
        tcuda.probe_gpu.cache_clear()


def test_cuda_python_12_on_a_cuda_13_driver_works(tmp_path):
    """A CUDA 13 driver runs cuda-python 12's runtime (drivers are backward compatible): the GPU is found, the
    stream handle comes from int() (cuda-python 12.6 has no get_cuda_native_handle), an engine builds and runs."""
    try:
        trt = trt_double.activate("11.4", Device(driver_cuda=13000, dla_cores=2), cuda_layout="12.6")
        gpu, why = tcuda.probe_gpu()
        assert gpu is not None and why == "" and gpu["name"] == "Orin"
        with pytest.raises(ImportError):
            import cuda.bindings.utils  # noqa: F401
        mem = tcuda.cuda_memory()
        assert mem.stream_handle == int(mem.stream)
        mem.close()
        plan = tplan.build_plan(spec(), target(trt), "fp32", None, trt.__version__)
        engine, _, report = tbuild.build_engine(trt, conv_onnx(tmp_path / "m.onnx"), plan)
        assert engine and report["plugins_registered"] is True
    finally:
        trt_double.deactivate()


def test_tensorrt_present_without_a_gpu(tmp_path):
    try:
        trt = trt_double.activate("10.3", Device(driver_cuda=0))
        gpu, why = tcuda.probe_gpu()
        assert gpu is None and "CUDA driver version is insufficient" in why
        with pytest.raises(EdgeoptError, match="No usable NVIDIA GPU here"):
            tcuda.require_gpu()
        plan = tplan.build_plan(spec(), target(trt), "fp32", None, trt.__version__)
        with pytest.raises(CompileError, match="TensorRT could not start") as info:
            tbuild.build_engine(trt, conv_onnx(tmp_path / "m.onnx"), plan)
        assert "CUDA initialization failure" in info.value.problem and "on the device" in info.value.fix
    finally:
        trt_double.deactivate()


def test_the_install_hints_pin_what_pyproject_declares():
    """The pins the messages print are the extras' own (cuda-python 13.x: get_cuda_native_handle exists from
    13.0.0; 13.0.2 shipped with part of cuda.bindings.runtime disabled; <14 because int(handle) is slated to go)."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")

    from edgeopt.backends.tensorrt.install import CUDA_PYTHON_PIN

    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert CUDA_PYTHON_PIN["12"] in extras["tensorrt"] and CUDA_PYTHON_PIN["13"] in extras["tensorrt-cuda13"]
