"""The TensorRT path end to end against the TensorRT/CUDA test double (tests/trt_double/), under the TensorRT 10.3
(cuda-python 12.6) and 11.4 (cuda-python 13.x) surfaces: build_engine, the runner, the engine and timing caches,
DLA fallback, dynamic shapes, plugins, the GPU probe and device-compile of a package.

What passes here is verified against the double, not against TensorRT or a GPU (see tests/trt_double/__init__.py
for what the double can and cannot say)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import trt_double
from trt_double import Device, state

from edgeopt.backends import get_packaging
from edgeopt.backends.base import CompileRequest
from edgeopt.backends.tensorrt import backend as trtb
from edgeopt.backends.tensorrt import builder as tbuild
from edgeopt.backends.tensorrt import cuda as tcuda
from edgeopt.backends.tensorrt import install as tinst
from edgeopt.backends.tensorrt import plan as tplan
from edgeopt.backends.tensorrt import record as trec
from edgeopt.backends.tensorrt import runner as trun
from edgeopt.core.fsutil import sha256_file
from edgeopt.core.spec import Dim, IOSpec, TensorSpec
from edgeopt.core.targets import Target
from edgeopt.errors import CompileError, EdgeoptError, IntegrityError, UserInputError

AGX = "NVIDIA Jetson AGX Orin Developer Kit"
NANO = "NVIDIA Jetson Orin Nano Developer Kit"


def _device(surface: str, **kw) -> Device:
    # JetPack 6 (TensorRT 10.3) has a CUDA 12.6 driver; TensorRT 11 ships with CUDA 13 drivers.
    return Device(**{"dla_cores": 2, "driver_cuda": 13000 if surface.startswith("11") else 12060, **kw})


@pytest.fixture(params=["10.3", "11.4"])
def trt(request, tmp_path, monkeypatch):
    board = tmp_path / "device-tree-model"
    board.write_bytes(AGX.encode() + b"\x00")
    monkeypatch.setattr(trec, "DEVICE_TREE_MODEL", board)
    mod = trt_double.activate(request.param, _device(request.param))
    yield mod
    trt_double.deactivate()


def set_board(text: str) -> None:
    trec.DEVICE_TREE_MODEL.write_bytes(text.encode() + b"\x00")


# ---- models -------------------------------------------------------------------------------------------
def conv_onnx(path: Path, extra_nodes=(), outputs=None, batch="batch") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "B"),
             numpy_helper.from_array((rng.standard_normal((8, 5)) * 0.5).astype(np.float32), "M")]
    nodes = [helper.make_node("Conv", ["image", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "M"], ["logits"], name="fc"), *extra_nodes]
    outputs = outputs or [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def spec(lo=1, opt=2, hi=4) -> IOSpec:
    return IOSpec((TensorSpec("image", ("batch", 3, 16, 16)),), {"batch": Dim("batch", lo, opt, hi)})


def target(trt, **options) -> Target:
    return Target.from_dict({"name": "agx", "backend": "tensorrt", "device": "GPU",
                             "precisions": ["fp32", "fp16", "bf16", "int8"],
                             "options": {"workspace_mb": 256, **options},
                             "hardware": {"tensorrt": trt.__version__[:4], "compute_capability": "8.7",
                                          "dla_cores": 2}})


def reference(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


def compile_to(trt, tmp_path, src, precision, name=None, **options):
    out = tmp_path / (name or precision)
    out.mkdir()
    req = CompileRequest(onnx_path=src, target=target(trt, **options), precision=precision, spec=spec(),
                         out_dir=out, cache_dir=tmp_path / "cache", options=options)
    return out, trtb.BACKEND.compile(req), req


X = np.random.default_rng(2).random((3, 3, 16, 16), dtype=np.float32)


# ---- build, run, time -----------------------------------------------------------------------------------
def test_build_run_and_time_fp32_and_fp16(trt, tmp_path):
    src = conv_onnx(tmp_path / "model.onnx")
    ref = reference(src, X)
    for precision, atol in (("fp32", 1e-5), ("fp16", 1e-2)):
        out, meta, req = compile_to(trt, tmp_path, src, precision)
        assert meta["engine_cache"] == "miss" and (out / trec.ENGINE_FILE).is_file()
        assert meta["tensorrt"] == trt.__version__ and meta["board"] == AGX and meta["build_recipe"] == trec.BUILD_RECIPE
        assert meta["tf32"] is (precision != "fp32")  # fix 1: TF32 cleared for fp32, and recorded
        record = json.loads((out / trec.RECORD_FILE).read_text())
        assert record["material"]["builder"]["tf32"] is (precision != "fp32") and record["tf32"] == meta["tf32"]
        with trtb.BACKEND.open(out, meta, req.spec, req.target) as runner:
            got = runner.infer({"image": X})["logits"]
            assert got.dtype == np.float32 and got.shape == (3, 5)
            np.testing.assert_allclose(got, ref, atol=atol)
            if precision == "fp16":
                assert not np.array_equal(got, ref)  # it computed in fp16
            timing = runner.time_inference({"image": X}, iterations=3, warmup=1)
            assert len(timing["gpu_compute_ms"]) == len(timing["end_to_end_ms"]) == len(timing["host_ms"]) == 3
            s = timing["summary"]
            assert s["end_to_end_ms"]["median"] >= s["gpu_compute_ms"]["median"] > 0
        assert not state.device.allocations  # the runner freed every device buffer


def test_tf32_would_miss_the_fp32_tolerance(trt, tmp_path):
    """Why fix 1 matters: with TensorRT's TF32 default, the fp32 engine is off by far more than fp32's 1e-4."""
    src = conv_onnx(tmp_path / "model.onnx")
    ref = reference(src, X)
    out, meta, req = compile_to(trt, tmp_path, src, "fp32", tf32=True)
    assert meta["tf32"] is True and meta["plan"]["tf32"] is True
    off, _, _ = compile_to(trt, tmp_path, src, "fp32", name="off")
    assert meta["cache_key"] != off["cache_key"] if isinstance(off, dict) else True
    with trtb.BACKEND.open(out, meta, req.spec, req.target) as runner:
        err = np.abs(runner.infer({"image": X})["logits"] - ref).max()
    assert err > 1e-4


def test_engine_cache_hit_and_board_in_the_key(trt, tmp_path):
    src = conv_onnx(tmp_path / "model.onnx")
    _, first, _ = compile_to(trt, tmp_path, src, "fp16", name="a")
    _, again, _ = compile_to(trt, tmp_path, src, "fp16", name="b")
    assert again["engine_cache"] == "hit" and again["cache_key"] == first["cache_key"]
    set_board(NANO)  # same GPU name and sm 8.7: only the board tells an Orin Nano from an AGX Orin (fix 6)
    out, nano, req = compile_to(trt, tmp_path, src, "fp16", name="c")
    assert nano["engine_cache"] == "miss" and nano["cache_key"] != first["cache_key"] and nano["board"] == NANO
    set_board(AGX)
    with pytest.raises(IntegrityError, match="built on a " + NANO):
        trtb.BACKEND.open(out, nano, req.spec, req.target).__enter__()
    assert "this board is a " + AGX in trec.tensorrt_mismatch(nano, trt.__version__, tcuda.probe_gpu()[0])


def test_timing_cache_is_kept_checked_and_reused(trt, tmp_path):
    src = conv_onnx(tmp_path / "model.onnx")
    out, first, _ = compile_to(trt, tmp_path, src, "fp16")
    assert first["timing_cache"] == "new" and (out / trec.TIMING_CACHE_FILE).is_file()
    layers = int(state.device.log[-1].split()[-2])  # 5, and 7 with the casts of TensorRT 11's FP16 ONNX
    assert state.device.log[-1] == f"tactic timing: {layers} of {layers} layers" and layers >= 5
    # Another engine of the same layers on this device: the stored cache is loaded and nothing is timed again.
    _, second, _ = compile_to(trt, tmp_path, src, "fp16", name="second", workspace_mb=128)
    assert second["timing_cache"] == "loaded" and second["engine_cache"] == "miss"
    assert state.device.log[-1] == f"tactic timing: 0 of {layers} layers"
    cache_files = list((tmp_path / "cache" / "tensorrt").glob("timing-*.cache"))
    assert len(cache_files) == 1
    # A damaged cache and one from another device are replaced by a fresh one (set_timing_cache's result checked).
    cache_files[0].write_bytes(b"garbage")
    _, third, _ = compile_to(trt, tmp_path, src, "fp32", name="third", builder_optimization_level=2)
    assert third["timing_cache"] == "unreadable: started afresh"
    body = json.loads(cache_files[0].read_bytes()[len(trt._CACHE_MAGIC):])
    body["device"] = ["NVIDIA GeForce RTX 4090", "8.9"]
    cache_files[0].write_bytes(trt._CACHE_MAGIC + json.dumps(body).encode())
    _, fourth, _ = compile_to(trt, tmp_path, src, "fp32", name="fourth", builder_optimization_level=1)
    assert fourth["timing_cache"] == "from another device or TensorRT: started afresh"
    # No timing cache set: get_timing_cache() is None and nothing is written.
    config = trt.Builder(trt.Logger()).create_builder_config()
    assert config.get_timing_cache() is None and tbuild._serialized_timing_cache(config) is None
    _, off, _ = compile_to(trt, tmp_path, src, "fp32", name="off", timing_cache=False, builder_optimization_level=0)
    assert off["timing_cache"] == "off" and off["timing_cache_file"] is None


def test_dynamic_shapes_and_profile_limits(trt, tmp_path):
    src = conv_onnx(tmp_path / "model.onnx")
    out, meta, req = compile_to(trt, tmp_path, src, "fp32")
    with trtb.BACKEND.open(out, meta, req.spec, req.target) as runner:
        for n in (1, 4, 2):  # grows, then reuses the larger buffers
            np.testing.assert_allclose(runner.infer({"image": X[:1].repeat(n, 0)})["logits"],
                                       reference(src, X[:1].repeat(n, 0)), atol=1e-5)
        assert runner.buffers["image"][1] == 4 * 3 * 16 * 16 * 4
        with pytest.raises(UserInputError, match="outside the engine's profile"):
            runner._run({"image": np.zeros((5, 3, 16, 16), np.float32)})


def test_dla_with_gpu_fallback(trt, tmp_path):
    src = conv_onnx(tmp_path / "model.onnx")
    out, meta, req = compile_to(trt, tmp_path, src, "fp16", dla_core=1)
    assert meta["plan"]["dla_core"] == 1
    fallback = meta["dla_fallback_layers"]  # conv and relu run on the DLA (11.x: the FP16 ONNX's casts fall back)
    assert {"gap", "flatten", "fc"} <= set(fallback) and not {"conv", "relu"} & set(fallback)
    with trtb.BACKEND.open(out, meta, req.spec, req.target) as runner:
        np.testing.assert_allclose(runner.infer({"image": X})["logits"], reference(src, X), atol=1e-2)
    with pytest.raises(CompileError, match=f"{len(fallback)} layer"):
        compile_to(trt, tmp_path, src, "fp16", name="strict", dla_core=1, gpu_fallback=False)
    state.device.dla_cores = 1  # an Orin NX 8GB: one DLA core
    plan = tplan.build_plan(spec(), target(trt, dla_core=1), "fp16", {"dla_core": 1}, trt.__version__)
    with pytest.raises(CompileError, match="has 1 DLA core"):
        tbuild.build_engine(trt, src, plan)


def test_plugins_are_registered_before_parsing_and_loading(trt, tmp_path):
    """Fix 4: a plugin node parses, and a plugin engine deserializes, only after init_libnvinfer_plugins."""
    from onnx import TensorProto, helper

    nms = helper.make_node("EfficientNMS_TRT", ["logits", "logits"], ["num_detections"], name="nms", domain="",
                           score_threshold=0.25, iou_threshold=0.5, max_output_boxes=10, background_class=-1,
                           score_activation=0, class_agnostic=0, box_coding=0)
    src = conv_onnx(tmp_path / "model.onnx", [nms],
                    [helper.make_tensor_value_info("num_detections", TensorProto.INT32, ["batch", 1])])
    plan = tplan.build_plan(spec(), target(trt), "fp16", None, trt.__version__)
    logger = trt.Logger()
    parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)  # as edgeopt did before the fix
    assert not parser.parse_from_file(str(src)) and "Plugin not found" in parser.get_error(0).desc()
    engine, _, report = tbuild.build_engine(trt, src, plan)
    assert report["plugins_registered"] is True
    out = tmp_path / "plugin"
    out.mkdir()
    (out / trec.ENGINE_FILE).write_bytes(engine)
    gpu = tcuda.probe_gpu()[0]
    material = trec.cache_material("x", trt.__version__, gpu["name"], gpu["compute_capability"], plan, AGX)
    (out / trec.RECORD_FILE).write_text(json.dumps(trec.engine_record(material, sha256_file(out / trec.ENGINE_FILE))))
    state.plugins_registered = False  # a fresh process on the device: the runner must register them itself
    runner = trtb.BACKEND.open(out, {"plan": plan.to_dict()}, spec(), target(trt))
    with runner:
        assert runner.engine is not None and state.plugins_registered


def test_parse_and_build_errors_name_the_cause(trt, tmp_path):
    from onnx import helper

    bad = conv_onnx(tmp_path / "bad.onnx", [helper.make_node("Unique", ["logits"], ["u"], name="uniq")])
    plan = tplan.build_plan(spec(), target(trt), "fp32", None, trt.__version__)
    with pytest.raises(CompileError, match=r"node uniq \(Unique\)") as info:
        tbuild.build_engine(trt, bad, plan)
    assert "edgeopt lint" in info.value.fix
    src = conv_onnx(tmp_path / "model.onnx")
    # A weakly typed plan (10.x flags) given to a strongly typed network: TensorRT refuses to build.
    mixed = tplan.BuildPlan(**{**plan.__dict__, "strongly_typed": True,
                              "builder_flags": ("FP16",) if hasattr(trt.BuilderFlag, "FP16") else ()})
    if hasattr(trt.BuilderFlag, "FP16"):
        with pytest.raises(CompileError, match="strongly typed"):
            tbuild.build_engine(trt, src, mixed)
    else:  # TensorRT 11: the flag itself is gone (feature-detected, never an AttributeError)
        old = tplan.BuildPlan(**{**plan.__dict__, "builder_flags": ("FP16",)})
        with pytest.raises(CompileError, match="has no BuilderFlag.FP16"):
            tbuild.build_engine(trt, src, old)
    fixed = tplan.BuildPlan(**{**plan.__dict__, "profiles": {"image": {w: [2, 3, 16, 16] for w in ("min", "opt", "max")}}})
    static = conv_onnx(tmp_path / "static.onnx", batch=1)
    with pytest.raises(CompileError, match="fixed at 1"):
        tbuild.build_engine(trt, static, fixed)
    with pytest.raises(CompileError, match="no shapes in the build plan"):
        tbuild.build_engine(trt, src, tplan.BuildPlan(**{**plan.__dict__, "profiles": {}}))


def test_data_dependent_outputs_are_refused_before_the_build_and_by_the_runner(trt, tmp_path):
    from onnx import TensorProto, helper

    nz = helper.make_node("NonZero", ["logits"], ["idx"], name="nonzero")
    src = conv_onnx(tmp_path / "model.onnx", [nz], [helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "n"])])
    with pytest.raises(CompileError, match=r"data-dependent-output \[nonzero\]"):
        compile_to(trt, tmp_path, src, "fp32")  # the preflight says so before any build on the device
    assert not any(line.startswith("tactic timing") for line in state.device.log)
    # An engine built anyway (TensorRT itself builds it) is refused by the runner, which allocates outputs first.
    plan = tplan.build_plan(spec(), target(trt), "fp32", None, trt.__version__)
    engine, _, _ = tbuild.build_engine(trt, src, plan)
    out = tmp_path / "built"
    out.mkdir()
    (out / trec.ENGINE_FILE).write_bytes(engine)
    gpu = tcuda.probe_gpu()[0]
    material = trec.cache_material("x", trt.__version__, gpu["name"], gpu["compute_capability"], plan, AGX)
    (out / trec.RECORD_FILE).write_text(json.dumps(trec.engine_record(material, sha256_file(out / trec.ENGINE_FILE))))
    with trtb.BACKEND.open(out, {"plan": plan.to_dict()}, spec(), target(trt)) as runner:
        with pytest.raises(CompileError, match="data-dependent shape"):
            runner.infer({"image": X})


def test_engines_load_only_where_they_were_built(trt, tmp_path):
    src = conv_onnx(tmp_path / "model.onnx")
    out, meta, req = compile_to(trt, tmp_path, src, "fp32")
    (out / trec.RECORD_FILE).rename(tmp_path / "record.json")
    with pytest.raises(IntegrityError, match="missing beside the engine"):
        trtb.BACKEND.open(out, meta, req.spec, req.target).__enter__()
    (tmp_path / "record.json").rename(out / trec.RECORD_FILE)
    # An engine whose bytes TensorRT refuses (here: another TensorRT's plan under a valid record).
    other = trt._ENGINE_MAGIC + (out / trec.ENGINE_FILE).read_bytes()[len(trt._ENGINE_MAGIC):].replace(
        trt.__version__.encode(), (trt.__version__[:-2] + "99").encode(), 1)
    (out / trec.ENGINE_FILE).write_bytes(other)
    record = json.loads((out / trec.RECORD_FILE).read_text())
    record["engine_sha256"] = sha256_file(out / trec.ENGINE_FILE)
    (out / trec.RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(IntegrityError, match="could not deserialize"):
        trtb.BACKEND.open(out, meta, req.spec, req.target).__enter__()
    assert trtb.BACKEND.artifact_fits_here("a", meta, None, trt.__version__) == (None, ())
    assert "TensorRT 0.1" in trtb.BACKEND.artifact_fits_here("a", meta, None, "0.1")[0]


# ---- the GPU probe, cuda-python versions and device memory -------------------------------------------------
def test_backend_here(trt, tmp_path):
    b, t = trtb.BACKEND, target(trt)
    assert b.version() == trt.__version__ and b.unavailable_reason(t) is None
    assert b.precisions_here(t) == (("fp32", "fp16", "bf16", "int8") if trt.__version__.startswith("10")
                                    else ("fp32", "fp16", "int8"))
    other = Target.from_dict({**t.to_dict(), "hardware": {**t.hardware, "compute_capability": "8.9"}})
    assert "not the agx device" in b.unavailable_reason(other)
    assert b.precision_unavailable(t, "fp8") == "agx does not offer fp8"
    state.device.cc = (7, 5)
    tcuda.probe_gpu.cache_clear()
    if trt.__version__.startswith("10"):
        assert "has no bf16" in b.precision_unavailable(t, "bf16")


def test_probe_without_a_usable_gpu(trt, monkeypatch):
    state.device.driver_cuda = 11040  # a driver older than this cuda-python
    tcuda.probe_gpu.cache_clear()
    gpu, why = tcuda.probe_gpu()
    assert gpu is None and "insufficient" in why and "cuda-python>=12.6,<13" in why
    with pytest.raises(EdgeoptError, match="No usable NVIDIA GPU"):
        tcuda.require_gpu()
    assert "no usable NVIDIA GPU" in trtb.BACKEND.device_missing(target(state_trt()))


def state_trt():
    import tensorrt

    return tensorrt


def test_cuda_python_13_on_a_jetpack_6_driver_finds_no_gpu(tmp_path):
    """Fix 2: what `pip install 'edgeopt[tensorrt]'` gave before (cuda-python 13 on JetPack 6's CUDA 12.6)."""
    try:
        trt_double.activate("10.3", Device(driver_cuda=12060), cuda_layout="13.5")
        gpu, why = tcuda.probe_gpu()
        assert gpu is None and "CUDA driver version is insufficient" in why and "JetPack 6" in why
    finally:
        trt_double.deactivate()
    try:
        trt_double.activate("10.3", Device(driver_cuda=12060), cuda_layout="legacy")  # only cuda.cudart
        assert tcuda._cudart().__name__ == "cuda.cudart" and tcuda.probe_gpu()[0]["name"] == "Orin"
    finally:
        trt_double.deactivate()


def test_device_memory_errors_are_clear(trt):
    mem = tcuda.cuda_memory()
    ptr = mem.malloc(16)
    with pytest.raises(EdgeoptError, match="CUDA call failed: out of memory"):
        mem.malloc(state.device.memory * 2)
    with pytest.raises(EdgeoptError, match="invalid argument"):
        mem.h2d(ptr, np.zeros(8, np.float32))  # 32 bytes into a 16-byte buffer
    mem.free(ptr)
    mem.close()
    assert not state.device.allocations


def test_without_cuda_python_or_with_broken_tensorrt_libraries(tmp_path):
    try:
        trt_double.activate("10.3", cuda_layout="none")
        gpu, why = tcuda.probe_gpu()
        assert gpu is None and "cuda-python is not installed" in why and "edgeopt[tensorrt]" in why
        with pytest.raises(EdgeoptError) as info:
            tcuda.cuda_memory()
        assert "cuda-python>=" not in info.value.fix and "edgeopt[tensorrt]" in info.value.fix
    finally:
        trt_double.deactivate()
    try:
        trt_double.activate("10.3", broken_libs=True)
        with pytest.raises(EdgeoptError, match="libraries do not load") as info:
            tinst.import_tensorrt()
        assert "--system-site-packages" in info.value.fix
        assert trtb.BACKEND.version() is None
        assert "libnvinfer" in trtb.BACKEND.device_missing(Target.from_dict(
            {"name": "x", "backend": "tensorrt", "device": "GPU", "precisions": ["fp32"]}))
    finally:
        trt_double.deactivate()


def test_runner_and_build_edges(trt, tmp_path):
    from onnx import TensorProto, helper

    src = conv_onnx(tmp_path / "model.onnx")
    out, meta, req = compile_to(trt, tmp_path, src, "fp32")
    runner = trtb.BACKEND.open(out, meta, req.spec, req.target)
    with pytest.raises(RuntimeError, match="before activate"):
        runner.time_inference({"image": X})
    with runner:
        runner.context = runner.engine.create_execution_context()  # no shapes, no addresses: TensorRT says False
        with pytest.raises(EdgeoptError, match="execute_async_v3 returned False"):
            runner._execute()
    with pytest.raises(CompileError, match="numpy cannot hold"):
        trun._np_dtype(trt, trt.DataType.BF16, "x")
    # An input TensorRT reads as a shape (a Reshape's target shape) has no profile edgeopt can derive.
    shape_in = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]), shape_in],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])])
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "reshape.onnx"))
    plan = tplan.build_plan(IOSpec((TensorSpec("x", (2, 3)), TensorSpec("shape", (2,), "int64"))), target(trt),
                           "fp32", None, trt.__version__)
    with pytest.raises(CompileError, match="shape tensor"):
        tbuild.build_engine(trt, tmp_path / "reshape.onnx", plan)


def test_compile_notes_and_engine_cache_edges(trt, tmp_path):
    src = conv_onnx(tmp_path / "model.onnx")
    declared = "11.4" if trt.__version__.startswith("10") else "10.3"
    t = Target.from_dict({**target(trt).to_dict(), "hardware": {**target(trt).hardware, "tensorrt": declared}})
    out = tmp_path / "nocache"
    out.mkdir()
    meta = trtb.BACKEND.compile(CompileRequest(onnx_path=src, target=t, precision="fp32", spec=spec(), out_dir=out))
    assert meta["engine_cache"] == "off" and f"the target declares TensorRT {declared}" in meta["notes"][-1]
    _, first, _ = compile_to(trt, tmp_path, src, "fp32", name="a")
    entry = tmp_path / "cache" / "tensorrt" / "engines" / first["cache_key"]
    (entry / trec.ENGINE_FILE).write_bytes(b"damaged")
    _, again, _ = compile_to(trt, tmp_path, src, "fp32", name="b")
    assert again["engine_cache"] == "miss" and sha256_file(entry / trec.ENGINE_FILE) != sha256_file(src)
    _, third, _ = compile_to(trt, tmp_path, src, "fp32", name="c")
    assert third["engine_cache"] == "hit"


# ---- device packages: `edgeopt device-compile` on the (emulated) device -------------------------------------
def _package(tmp_path, trt, precision: str) -> Path:
    """A device package as `edgeopt build` writes it for the Jetson target of this TensorRT surface."""
    from edgeopt.core.parity import tolerance_for
    from edgeopt.core.reference import save_reference
    from edgeopt.core.resources import data_dir
    from edgeopt.core.targets import get_target
    from edgeopt.device.package import PackageSource, write_package_files

    if trt.__version__.startswith("10"):
        t = get_target("jetson-orin-nano")
    else:  # a Thor with JetPack 7.2 (TensorRT 11.4)
        toml = (data_dir("targets") / "jetson-thor.toml").read_text()
        path = tmp_path / "thor-trt11.toml"
        path.write_text(toml.replace('name = "jetson-thor"', 'name = "thor-trt11"')
                        .replace('tensorrt = "10.13"', 'tensorrt = "11.4"'))
        t = get_target(str(path))
        state.device.name, state.device.cc = "NVIDIA Thor", (11, 0)
        tcuda.probe_gpu.cache_clear()
    src = conv_onnx(tmp_path / "model.onnx")
    feeds = [{"image": X[:1]}, {"image": X[:2]}]
    save_reference(tmp_path / "reference.npz", feeds, [{"logits": reference(src, f["image"])} for f in feeds])
    source = PackageSource(target=t, precision=precision, spec=spec(), model_kind="cnn", onnx_path=src,
                           reference_path=tmp_path / "reference.npz", tolerance=tolerance_for(precision).to_dict())
    folder = tmp_path / "out" / source.id
    folder.mkdir(parents=True)
    write_package_files(folder, source, source.key())
    return folder


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_device_compile_a_package(trt, tmp_path, precision):
    from edgeopt.device.package import PACKAGE_JSON, REPORT_JSON, compile_package, read_package

    set_board(NANO)
    folder = _package(tmp_path, trt, precision)
    res = compile_package(folder, duration_s=0.05, cache_dir=tmp_path / "cache")
    assert res["status"] == "ok" and res["parity"]["passed"]
    pkg = read_package(folder)
    assert pkg["status"] == "ok" and pkg["result"]["parity"]["passed"]
    report = json.loads((folder / REPORT_JSON).read_text())
    assert report["meta"]["tf32"] is (precision != "fp32") and report["meta"]["board"] == NANO
    assert report["device"]["gpu"]["via"] == "cuda-python" and report["device"]["tensorrt"] == trt.__version__
    assert (folder / trec.ENGINE_FILE).is_file() and json.loads((folder / PACKAGE_JSON).read_text())["status"] == "ok"
    assert set(res["gpu_timing"]["1"]) == {"gpu_compute_ms", "end_to_end_ms", "host_ms"}


def test_device_compile_dot_inside_the_package(trt, tmp_path, monkeypatch):
    """Fix 3: `edgeopt device-compile .` from inside the package used to fail at the final rename (EBUSY)."""
    from conftest import invoke_cli
    from edgeopt.device.package import read_package

    folder = _package(tmp_path, trt, "fp32")
    monkeypatch.chdir(folder)
    code, _, stderr = invoke_cli("device-compile", ".", "--duration", "0.05")
    assert code == 0, stderr
    assert read_package(folder)["status"] == "ok" and (folder / trec.ENGINE_FILE).is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".staging")]


# ---- a YOLO-style detector with NMS as TensorRT's EfficientNMS_TRT plugin -----------------------------------
def yolo_onnx(path: Path, classes: int = 3) -> Path:
    """image [1,3,16,16] -> 16 anchors: boxes [1,16,4] (centre, size in pixels), scores [1,16,classes] (sigmoid)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((4 + classes, 3, 4, 4)) * 0.8).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([1, 4 + classes, 16], np.int64), "flat"),
             numpy_helper.from_array(np.array([4, classes], np.int64), "split"),
             numpy_helper.from_array(np.array([16.0], np.float32), "px")]
    nodes = [helper.make_node("Conv", ["image", "W"], ["c"], strides=[4, 4], name="head"),
             helper.make_node("Reshape", ["c", "flat"], ["r"], name="flatten"),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1], name="anchors"),
             helper.make_node("Split", ["t", "split"], ["raw_boxes", "logits"], axis=2, name="split"),
             helper.make_node("Sigmoid", ["raw_boxes"], ["unit_boxes"], name="box_act"),
             helper.make_node("Mul", ["unit_boxes", "px"], ["boxes"], name="box_px"),
             helper.make_node("Sigmoid", ["logits"], ["scores"], name="score_act")]
    graph = helper.make_graph(nodes, "yolo", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 16, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 16, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _torchvision_nms(boxes, scores, score_thr, iou_thr, max_out):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    b = torch.from_numpy(boxes[0])
    corners = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
    idx, cls = np.nonzero(scores[0] >= score_thr)
    s = torch.from_numpy(scores[0][idx, cls])
    keep = tv.ops.batched_nms(corners[idx], s, torch.from_numpy(cls), iou_thr)[:max_out].numpy()
    return idx[keep], cls[keep], scores[0][idx[keep], cls[keep]]


def test_a_detector_with_the_nms_plugin_builds_and_runs(trt, tmp_path):
    from edgeopt.backends.tensorrt.lint import lint
    from edgeopt.backends.tensorrt.nms import OUTPUTS, append_efficient_nms
    from edgeopt.core.targets import get_target

    raw = yolo_onnx(tmp_path / "raw.onnx")
    src = append_efficient_nms(raw, tmp_path / "nms.onnx", max_output_boxes=5, score_threshold=0.3,
                               iou_threshold=0.5, center_size_boxes=True)
    report = lint(src, get_target("jetson-orin-nano"), tensorrt_version=trt.__version__)
    assert report.ok and [f.code for f in report.findings] == ["plugin-operator"]
    x = np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)
    import onnxruntime as ort

    boxes, scores = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"]).run(["boxes", "scores"],
                                                                                          {"image": x})
    want_idx, want_cls, want_scores = _torchvision_nms(boxes, scores, 0.3, 0.5, 5)
    sp = IOSpec((TensorSpec("image", (1, 3, 16, 16)),))
    out = tmp_path / "engine"
    out.mkdir()
    req = CompileRequest(onnx_path=src, target=target(trt), precision="fp32", spec=sp, out_dir=out,
                         cache_dir=tmp_path / "cache")
    meta = trtb.BACKEND.compile(req)
    with trtb.BACKEND.open(out, meta, sp, req.target) as runner:
        got = runner.infer({"image": x})
    num, det_boxes, det_scores, det_classes = (got[k] for k in OUTPUTS)
    assert num.dtype == np.int32 and det_boxes.shape == (1, 5, 4) and det_classes.shape == (1, 5)
    n = int(num[0, 0])
    assert n == len(want_idx) and n > 1  # the same detections as torchvision's batched_nms
    np.testing.assert_allclose(det_scores[0, :n], want_scores, rtol=1e-5)
    np.testing.assert_array_equal(det_classes[0, :n], want_cls)
    b = boxes[0][want_idx]  # centre-size in; the plugin always gives corners
    np.testing.assert_allclose(det_boxes[0, :n], np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1),
                               rtol=1e-5)
    assert not det_boxes[0, n:].any() and not det_scores[0, n:].any()  # fixed size, zero-padded


def test_append_efficient_nms_checks_its_input(tmp_path):
    from edgeopt.backends.tensorrt.nms import append_efficient_nms

    raw = yolo_onnx(tmp_path / "raw.onnx")
    with pytest.raises(UserInputError, match="no output 'bbox'"):
        append_efficient_nms(raw, tmp_path / "x.onnx", boxes="bbox")
    with pytest.raises(UserInputError, match="max_output_boxes"):
        append_efficient_nms(raw, tmp_path / "x.onnx", max_output_boxes=0)
    with pytest.raises(UserInputError, match="Thresholds"):
        append_efficient_nms(raw, tmp_path / "x.onnx", iou_threshold=0)
    with pytest.raises(UserInputError, match=r"\[batch, anchors, 4\]"):
        append_efficient_nms(raw, tmp_path / "x.onnx", boxes="scores", scores="boxes")


def test_the_double_catches_what_a_gpu_would_punish(trt, tmp_path):
    """The double is strict where TensorRT and CUDA are: each misuse below fails here as it would on a device."""
    from cuda.bindings import runtime as rt
    from trt_double import DoubleViolation

    src = conv_onnx(tmp_path / "model.onnx")
    out, meta, req = compile_to(trt, tmp_path, src, "fp32")
    with trtb.BACKEND.open(out, meta, req.spec, req.target) as runner:
        ctx = runner.engine.create_execution_context()
        host = np.zeros(3 * 3 * 16 * 16, np.float32)
        with pytest.raises(DoubleViolation, match="not a device pointer"):
            ctx.set_tensor_address("image", host.ctypes.data)
        err, ptr = rt.cudaMalloc(16)
        rt.cudaFree(ptr)
        with pytest.raises(DoubleViolation, match="not device memory"):
            ctx.set_tensor_address("image", ptr)  # freed: allocate before setting the address
        assert ctx.set_input_shape("image", (9, 3, 16, 16)) is False  # outside the profile
        assert ctx.execute_async_v3(runner.mem.stream_handle) is False  # no shapes, no addresses
        # Work queued on a stream is done only once the stream is synchronized.
        err, dev = rt.cudaMalloc(16)
        back = np.zeros(4, np.float32)
        rt.cudaMemcpyAsync(dev, np.arange(4, dtype=np.float32).ctypes.data, 16,
                           rt.cudaMemcpyKind.cudaMemcpyHostToDevice, runner.mem.stream)
        rt.cudaMemcpyAsync(back.ctypes.data, dev, 16, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, runner.mem.stream)
        assert not back.any()
        rt.cudaStreamSynchronize(runner.mem.stream)
        np.testing.assert_array_equal(back, np.arange(4))
        assert rt.cudaMemcpyAsync(dev, back.ctypes.data, 32, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                  runner.mem.stream)[0] == rt.cudaError_t.cudaErrorInvalidValue  # past the end
        rt.cudaFree(dev)
    with pytest.raises(TypeError, match="ILogger.__init__"):
        class Bad(trt.ILogger):
            def __init__(self):  # forgets trt.ILogger.__init__(self)
                pass

            def log(self, severity, msg):
                pass

        trt.Builder(Bad())
    empty = trt.Builder(trt.Logger())
    assert empty.build_serialized_network(empty.create_network(0), empty.create_builder_config()) is None


# ---- device-compile's check that this is the target's device ---------------------------------------------------------
def test_check_device_says_what_is_wrong_and_force_overrides_a_mismatch(trt, tmp_path):
    b, what, there = get_packaging("tensorrt"), "pkg-fp16", "Run it on the device."
    found = b.check_device(target(trt, dla_core=1), what, there)
    assert found["version"] == trt.__version__ and found["gpu"]["name"] == "Orin" and found["mismatch_forced"] is None
    with pytest.raises(UserInputError, match="DLA core 2; this device has 2") as e:  # 2 cores: 0 and 1
        b.check_device(target(trt, dla_core=2), what, there)
    assert "dla_core = -1" in e.value.fix
    other_major = "11.4" if trt.__version__.startswith("10") else "10.3"
    wrong = Target.from_dict({**target(trt).to_dict(), "hardware": {"tensorrt": other_major, "jetpack": "x",
                                                                   "compute_capability": "8.9"}})
    with pytest.raises(UserInputError) as e:
        b.check_device(wrong, what, there)
    assert "not the agx device" in e.value.problem and "sm 8.9" in e.value.problem
    assert f"declares TensorRT {other_major}" in e.value.problem and "--force" in e.value.fix
    forced = b.check_device(wrong, what, there, force=True)
    assert len(forced["mismatch_forced"]) == 2
    assert b.device_wheel_extra() == "" and b.device_requirements("12.6") == ["onnx", "cuda-python==12.6.*"]
    with pytest.raises(UserInputError, match="does not say which TensorRT"):
        b.package_plan(spec(), Target.from_dict({**target(trt).to_dict(), "hardware": {}}), "fp16")
    state.device.driver_cuda = 11040  # a driver too old for this cuda-python: no usable GPU
    tcuda.probe_gpu.cache_clear()
    with pytest.raises(EdgeoptError, match="needs an NVIDIA GPU to build its TensorRT engine") as e:
        b.check_device(target(trt), what, there)
    assert e.value.fix == there


def test_check_device_without_tensorrt_or_with_broken_libraries(tmp_path):
    from edgeopt.errors import BackendMissingError

    t = Target.from_dict({"name": "agx", "backend": "tensorrt", "device": "GPU", "precisions": ["fp16"],
                          "hardware": {"tensorrt": "10.3"}})
    with pytest.raises(BackendMissingError) as e:  # no tensorrt at all here
        get_packaging("tensorrt").check_device(t, "pkg-fp16", "Run it on the Jetson.")
    assert "tensorrt is not installed here" in e.value.problem and e.value.fix.startswith("Run it on the Jetson.")
    assert tinst.installed_tensorrt_version() is None
    debs = {"libnvinfer10": "10.3.0.30-1+cuda12.5"}
    assert tinst.installed_tensorrt_version(deb_version=debs.get) == "10.3.0.30-1+cuda12.5"  # JetPack's .debs
    try:
        trt_double.activate("10.3", broken_libs=True)
        with pytest.raises(EdgeoptError, match="needs TensorRT and an NVIDIA GPU: tensorrt is installed but") as e:
            get_packaging("tensorrt").check_device(t, "pkg-fp16", "Run it on the Jetson.")
        assert e.value.fix.startswith("Run it on the Jetson.")
        assert tinst.installed_tensorrt_version(deb_version=debs.get) == "10.3.0.30-1+cuda12.5"
    finally:
        trt_double.deactivate()


def test_a_plan_for_another_tensorrt_and_bindings_without_an_accessor(trt, tmp_path):
    import dataclasses

    if trt.__version__.startswith("11"):  # a TensorRT 10.x plan (FP16 builder flag) on TensorRT 11: no such flag
        plan = tplan.build_plan(spec(), target(trt), "fp16", tensorrt_version="10.3")
        with pytest.raises(CompileError, match="has no BuilderFlag.FP16"):
            tbuild.build_engine(trt, conv_onnx(tmp_path / "m.onnx"), plan)
    else:
        plan = dataclasses.replace(tplan.build_plan(spec(), target(trt), "fp16"), builder_flags=("STRICT_NANS",))
        with pytest.raises(CompileError, match="has no BuilderFlag.STRICT_NANS"):  # an 11.x flag on 10.3
            tbuild.build_engine(trt, conv_onnx(tmp_path / "m.onnx"), plan)

    class OldError:  # bindings whose ParserError lacks an accessor (it raises), or has it as a plain attribute
        desc = "Unsupported operator"

        def node(self):
            raise AttributeError("node")

    class Parser:
        num_errors = 1

        def get_error(self, i):
            return OldError()

    assert tbuild.parser_errors(Parser()) == [{"node": None, "node_name": None, "operator": None, "code": "None",
                                               "desc": "Unsupported operator"}]
