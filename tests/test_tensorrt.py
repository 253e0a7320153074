"""TensorRT backend: what runs without TensorRT (plan, precision choice, cache key, engine match, FP16 ONNX)
is tested here for real; building and running engines is tested where TensorRT and an NVIDIA GPU exist."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

from edgeopt.backends import get_backend
from edgeopt.backends.tensorrt import backend as trtb
from edgeopt.backends.tensorrt import cuda as tcuda
from edgeopt.backends.tensorrt import install as tinst
from edgeopt.backends.tensorrt import plan as tplan
from edgeopt.backends.tensorrt import prepare as tprep
from edgeopt.backends.tensorrt import record as trec
from edgeopt.backends.base import CompileRequest
from edgeopt.errors import BackendMissingError, CompileError, EdgeoptError, IntegrityError, UserInputError
from edgeopt.core.fsutil import onnx_digest, sha256_file, sha256_json, write_json_atomic
from edgeopt.core.spec import Dim, IOSpec, TensorSpec
from edgeopt.core.targets import Target, load_targets

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
JETSON = ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-thor")
GPU = {"name": "Orin", "compute_capability": "8.7"}


@pytest.fixture(scope="module")
def targets() -> dict[str, Target]:
    return load_targets()


def image_spec(lo=1, opt=4, hi=16) -> IOSpec:
    return IOSpec((TensorSpec("image", ("batch", 3, 224, 224)),), {"batch": Dim("batch", lo, opt, hi)})


def text_spec() -> IOSpec:
    return IOSpec(
        (TensorSpec("input_ids", ("batch", "seq"), "int64"), TensorSpec("mask", ("batch", "seq"), "int64")),
        {"batch": Dim("batch", 1, 1, 8), "seq": Dim("seq", 16, 128, 512)},
    )


def with_options(t: Target, **options) -> Target:
    return dataclasses.replace(t, options={**t.options, **options})


def with_hardware(t: Target, **hardware) -> Target:
    return dataclasses.replace(t, hardware={**t.hardware, **hardware})


# ---- targets ------------------------------------------------------------------------------------------
def test_tensorrt_targets_load(targets):
    for name in (*JETSON, "nvidia-gpu"):
        t = targets[name]
        assert t.backend == "tensorrt" and t.device == "GPU"
        assert {"fp32", "fp16", "int8"} <= set(t.precisions)
        assert t.options["workspace_mb"] > 0 and t.options["builder_optimization_level"] == 3
        assert tplan.parse_version(t.hardware["tensorrt"]) >= (10, 3)
    hw = {n: targets[n].hardware for n in JETSON}
    assert [hw[n]["dla_cores"] for n in JETSON] == [0, 2, 2, 0]
    assert {hw[n]["tensorrt"] for n in JETSON[:3]} == {"10.3"} and hw["jetson-thor"]["tensorrt"] == "10.13"
    assert {hw[n]["python"] for n in JETSON[:3]} == {"3.10"} and hw["jetson-thor"]["python"] == "3.12"
    assert {hw[n]["cuda"] for n in JETSON[:3]} == {"12.6"}
    # Workspace sized for the board's memory.
    ws = [targets[n].options["workspace_mb"] for n in JETSON]
    assert ws == sorted(ws)
    assert get_backend("tensorrt") is trtb.BACKEND


def test_module_imports_without_the_runtime():
    b = trtb.BACKEND
    assert (b.name, b.module, b.distribution, b.extra) == ("tensorrt", "tensorrt", "tensorrt", "tensorrt")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the 'missing runtime' errors do not apply")
def test_without_tensorrt_everything_that_needs_it_says_so(tmp_path, targets):
    b, t = trtb.BACKEND, targets["jetson-orin-nano"]
    assert "tensorrt is not installed" in b.unavailable_reason(t)
    req = CompileRequest(onnx_path=tmp_path / "m.onnx", target=t, precision="fp16", spec=image_spec(), out_dir=tmp_path)
    with pytest.raises(BackendMissingError) as info:
        b.compile(req)
    assert "JetPack" in info.value.fix
    with pytest.raises(BackendMissingError):
        b.open(tmp_path, {}, image_spec(), t)


def test_gpu_probe_reports_a_reason_without_a_gpu():
    gpu, why = tcuda.probe_gpu()
    if gpu is not None:
        pytest.skip("an NVIDIA GPU is visible here")
    assert why  # for example "CUDA: CUDA driver version is insufficient ..." or "torch sees no CUDA device"
    with pytest.raises(EdgeoptError) as info:
        tcuda.require_gpu()
    assert "device package" in info.value.fix


# ---- precision: TensorRT 10.x builder flags vs 11.x strong typing -------------------------------------
@pytest.mark.parametrize("version", ["10.3", "10.3.0.30", "10.13", "10.13.3.9"])
def test_tensorrt_10_uses_builder_flags(version):
    c = tplan.builder_config_choice
    assert c(version, "fp32") == tplan.PrecisionConfig(False, (), "fp32", c(version, "fp32").note)
    assert (c(version, "fp16").strongly_typed, c(version, "fp16").builder_flags, c(version, "fp16").onnx) == (
        False, ("FP16",), "fp32")
    assert c(version, "bf16").builder_flags == ("BF16",)
    int8 = c(version, "int8")
    assert (int8.strongly_typed, int8.builder_flags, int8.onnx) == (False, ("INT8", "FP16"), "qdq")
    deprecated = "deprecated since TensorRT 10.12" in c(version, "fp16").note
    assert deprecated == version.startswith("10.13")


@pytest.mark.parametrize("version", ["11.4", "11.4.1", "11.0"])
def test_tensorrt_11_is_strongly_typed_without_flags(version):
    c = tplan.builder_config_choice
    for precision, onnx in (("fp32", "fp32"), ("fp16", "fp16"), ("int8", "qdq")):
        choice = c(version, precision)
        assert (choice.strongly_typed, choice.builder_flags, choice.onnx) == (True, (), onnx)
    with pytest.raises(CompileError):
        c(version, "bf16")


def test_precision_choice_edges():
    strong = tplan.builder_config_choice("10.13", "fp16", strongly_typed=True)
    assert (strong.strongly_typed, strong.builder_flags, strong.onnx) == (True, (), "fp16")
    with pytest.raises(UserInputError):
        tplan.builder_config_choice("8.6", "fp16")
    with pytest.raises(UserInputError):
        tplan.builder_config_choice("10.3", "fp8")


# ---- build plan: profiles, workspace, optimization level, DLA -----------------------------------------
def test_profiles_from_dynamic_axes():
    assert tplan.derive_profiles(image_spec(1, 4, 16)) == {
        "image": {"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [16, 3, 224, 224]}}
    p = tplan.derive_profiles(text_spec())
    assert p["input_ids"] == p["mask"] == {"min": [1, 16], "opt": [1, 128], "max": [8, 512]}


def test_fixed_shapes_give_a_fixed_profile(targets):
    spec = IOSpec((TensorSpec("image", (2, 3, 32, 32)),))
    plan = tplan.build_plan(spec, targets["jetson-orin-nano"], "fp16")
    assert plan.profiles["image"] == {"min": [2, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [2, 3, 32, 32]}
    assert not plan.dynamic and tplan.build_plan(image_spec(), targets["jetson-orin-nano"], "fp16").dynamic


def test_plan_for_jetson_targets(targets):
    plan = tplan.build_plan(image_spec(), targets["jetson-orin-nano"], "int8")
    assert plan.tensorrt == "10.3" and plan.workspace_mb == 1024 and plan.optimization_level == 3
    assert plan.builder_flags == ("INT8", "FP16") and plan.onnx == "qdq" and plan.dla_core is None
    thor = tplan.build_plan(image_spec(), targets["jetson-thor"], "fp16")
    assert thor.workspace_mb == 8192 and thor.builder_flags == ("FP16",)
    # The installed TensorRT decides on the device: 11.4 on Thor means strong typing.
    thor11 = tplan.build_plan(image_spec(), targets["jetson-thor"], "fp16", tensorrt_version="11.4.1")
    assert thor11.strongly_typed and thor11.builder_flags == () and thor11.onnx == "fp16"
    # CLI/recipe options overlay the target's.
    quick = tplan.build_plan(image_spec(), targets["jetson-orin-nano"], "fp16",
                            {"workspace_mb": 512, "builder_optimization_level": 1})
    assert (quick.workspace_mb, quick.optimization_level) == (512, 1)
    assert tplan.build_plan(image_spec(), targets["nvidia-gpu"], "fp16", {"workspace_mb": 0}).workspace_mb is None


def test_plan_dla(targets):
    nx = with_options(targets["jetson-orin-nx"], dla_core=1)
    plan = tplan.build_plan(image_spec(), nx, "int8")
    assert plan.dla_core == 1 and plan.gpu_fallback and any("DLA core 1" in n for n in plan.notes)
    fp32 = tplan.build_plan(image_spec(), nx, "fp32")
    assert fp32.dla_core is None and any("DLA runs fp16 and int8 only" in n for n in fp32.notes)
    assert tplan.build_plan(image_spec(), targets["jetson-orin-nx"], "fp16").dla_core is None  # dla_core = -1
    with pytest.raises(UserInputError, match="0 DLA core"):
        tplan.build_plan(image_spec(), with_options(targets["jetson-orin-nano"], dla_core=0), "fp16")
    with pytest.raises(UserInputError, match="2 DLA core"):
        tplan.build_plan(image_spec(), with_options(targets["jetson-agx-orin"], dla_core=2), "fp16")
    # Whether a TensorRT drives the DLA is the device's to say (num_DLA_cores), not a version table's.
    assert tplan.build_plan(image_spec(), nx, "fp16", tensorrt_version="10.15").dla_core == 1
    agx11 = with_options(targets["jetson-agx-orin"], dla_core=0)
    assert tplan.build_plan(image_spec(), agx11, "fp16", tensorrt_version="11.4.1").dla_core == 0


def test_plan_rejects_bad_options(targets):
    t = targets["jetson-orin-nano"]
    for bad in ({"workspace_mb": -1}, {"workspace_mb": "1G"}, {"builder_optimization_level": 9}):
        with pytest.raises(UserInputError):
            tplan.build_plan(image_spec(), t, "fp16", bad)
    with pytest.raises(UserInputError):
        tplan.build_plan(image_spec(), dataclasses.replace(t, hardware={}), "fp16")


def test_plan_round_trips(targets):
    plan = tplan.build_plan(text_spec(), with_options(targets["jetson-agx-orin"], dla_core=0), "fp16")
    d = json.loads(json.dumps(plan.to_dict()))
    assert tplan.BuildPlan.from_dict(d) == plan


# ---- engine cache key and the engine/device match ----------------------------------------------------
def _key(plan, onnx="a" * 64, trt="10.3.0.30", gpu="Orin", cc="8.7"):
    return trec.engine_cache_key(onnx, trt, gpu, cc, plan)


def test_cache_key_is_stable(targets):
    t = targets["jetson-orin-nx"]
    a = _key(tplan.build_plan(image_spec(), t, "fp16"))
    b = _key(tplan.build_plan(image_spec(), t, "fp16"))
    assert a == b and len(a) == 64
    # Notes and the timing-cache switch do not change what the engine is.
    plan = tplan.build_plan(image_spec(), t, "fp16")
    assert _key(dataclasses.replace(plan, notes=("x",), timing_cache=False)) == a


def test_cache_key_changes_with_each_ingredient(targets):
    t = targets["jetson-orin-nx"]
    base_plan = tplan.build_plan(image_spec(), t, "fp16")
    base = _key(base_plan)
    variants = {
        "onnx": _key(base_plan, onnx="b" * 64),
        "tensorrt": _key(base_plan, trt="10.3.0.31"),
        "gpu": _key(base_plan, gpu="Orin Nano"),
        "compute capability": _key(base_plan, cc="8.6"),
        "precision": _key(tplan.build_plan(image_spec(), t, "int8")),
        "shapes": _key(tplan.build_plan(image_spec(1, 4, 32), t, "fp16")),
        "opt shape": _key(tplan.build_plan(image_spec(1, 8, 16), t, "fp16")),
        "workspace": _key(tplan.build_plan(image_spec(), t, "fp16", {"workspace_mb": 1024})),
        "optimization level": _key(tplan.build_plan(image_spec(), t, "fp16", {"builder_optimization_level": 5})),
        "dla": _key(tplan.build_plan(image_spec(), t, "fp16", {"dla_core": 0})),
        "strong typing": _key(tplan.build_plan(image_spec(), t, "fp16", {"strongly_typed": True})),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)


def _record(tmp_path, plan, engine=b"engine-bytes"):
    path = tmp_path / trec.ENGINE_FILE
    path.write_bytes(engine)
    material = trec.cache_material("a" * 64, "10.3.0.30", GPU["name"], GPU["compute_capability"], plan)
    return trec.engine_record(material, sha256_file(path)), path


def test_engine_record_matches_only_its_device(tmp_path, targets):
    plan = tplan.build_plan(image_spec(), targets["jetson-orin-nx"], "fp16")
    record, engine = _record(tmp_path, plan)
    assert record["cache_key"] == _key(plan, trt="10.3.0.30")
    trec.check_engine_record(record, "10.3.0.30", GPU, engine)  # same device: fine
    with pytest.raises(IntegrityError, match="TensorRT 10.3.0.30; this device has 10.13"):
        trec.check_engine_record(record, "10.13.3.9", GPU, engine)
    with pytest.raises(IntegrityError, match="built for Orin"):
        trec.check_engine_record(record, "10.3.0.30", {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"})
    with pytest.raises(IntegrityError, match="sm 8.7"):
        trec.check_engine_record(record, "10.3.0.30", {"name": "Orin", "compute_capability": "8.6"})
    engine.write_bytes(b"another engine")
    with pytest.raises(IntegrityError, match="does not match the sha256"):
        trec.check_engine_record(record, "10.3.0.30", GPU, engine)
    tampered = {**record, "material": {**record["material"], "precision": "int8"}}
    with pytest.raises(IntegrityError, match="cache key"):
        trec.check_engine_record(tampered, "10.3.0.30", GPU)
    with pytest.raises(IntegrityError):
        trec.check_engine_record({}, "10.3.0.30", GPU)


def test_target_device_match(targets):
    nano, pc = targets["jetson-orin-nano"], targets["nvidia-gpu"]
    assert trec.target_mismatch(nano, {"name": "Orin", "compute_capability": "8.7"}) is None
    why = trec.target_mismatch(nano, {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"})
    assert "not the jetson-orin-nano device" in why
    assert trec.target_mismatch(pc, {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}) is None
    assert "older" in trec.target_mismatch(pc, {"name": "Tesla V100", "compute_capability": "7.0"})


# ---- ONNX preparation: the FP16 model TensorRT 11 builds from --------------------------------------------
def _conv_onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "B"),
             numpy_helper.from_array((rng.standard_normal((8, 5)) * 0.2).astype(np.float32), "M")]
    nodes = [helper.make_node("Conv", ["image", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "M"], ["m"], name="fc"),
             helper.make_node("Softmax", ["m"], ["probs"], axis=-1, name="softmax")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_fp16_conversion_keeps_fp32_io_and_runs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from edgeopt.backends.tensorrt.lint import is_fp16_model

    src = _conv_onnx(tmp_path / "model.onnx")
    dst = tprep.convert_to_fp16(src, tmp_path / "out" / "model_fp16.onnx")
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)  # valid, nodes in topological order again
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in (*model.graph.input, *model.graph.output)] == [
        onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    assert is_fp16_model(dst) and not is_fp16_model(src)
    x = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    out = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert out.dtype == np.float32 and out.shape == (2, 5)
    np.testing.assert_allclose(out, ref, atol=2e-3, rtol=1e-2)
    assert not np.array_equal(out, ref)  # it really computed in fp16


def test_prepare_onnx_by_plan(tmp_path, targets):
    src = _conv_onnx(tmp_path / "model.onnx")
    spec = IOSpec((TensorSpec("image", ("batch", 3, 16, 16)),), {"batch": Dim("batch", 1, 1, 4)})
    t = targets["jetson-thor"]
    fp32 = tplan.build_plan(spec, t, "fp32", tensorrt_version="11.4")
    assert tprep.prepare_onnx(src, fp32, tmp_path / "w") == src
    fp16 = tplan.build_plan(spec, t, "fp16", tensorrt_version="11.4")
    converted = tprep.prepare_onnx(src, fp16, tmp_path / "w")
    assert converted == tmp_path / "w" / tprep.FP16_ONNX and converted.is_file()
    assert tprep.prepare_onnx(converted, fp16, tmp_path / "w2") == converted  # already fp16: used as is
    int8 = tplan.build_plan(spec, t, "int8", tensorrt_version="11.4")
    with pytest.raises(CompileError, match="Q/DQ"):
        tprep.prepare_onnx(src, int8, tmp_path / "w")
    assert onnx_digest(src) == sha256_file(src)


# ---- on a device: TensorRT and an NVIDIA GPU ----------------------------------------------------------
def test_build_run_and_time_an_engine(tmp_path):
    trt = pytest.importorskip("tensorrt", reason="needs the TensorRT runtime (Jetson or an NVIDIA GPU host)")
    ort = pytest.importorskip("onnxruntime")
    gpu, why = tcuda.probe_gpu()
    if gpu is None:
        pytest.skip(f"needs an NVIDIA GPU: {why}")
    src = _conv_onnx(tmp_path / "model.onnx")
    spec = IOSpec((TensorSpec("image", ("batch", 3, 16, 16)),), {"batch": Dim("batch", 1, 2, 4)})
    target = Target.from_dict({"name": "here", "backend": "tensorrt", "device": "GPU",
                               "precisions": ["fp32", "fp16", "int8"], "options": {"workspace_mb": 256},
                               "hardware": {"tensorrt": trt.__version__,
                                            "compute_capability": gpu["compute_capability"]}})
    b = trtb.BACKEND
    assert b.unavailable_reason(target) is None
    x = np.random.default_rng(2).random((3, 3, 16, 16), dtype=np.float32)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    for precision, atol in (("fp32", 1e-4), ("fp16", 5e-3)):
        out_dir = tmp_path / precision
        out_dir.mkdir()
        req = CompileRequest(onnx_path=src, target=target, precision=precision, spec=spec, out_dir=out_dir,
                             cache_dir=tmp_path / "cache")
        meta = b.compile(req)
        assert (out_dir / trec.ENGINE_FILE).is_file() and meta["engine_cache"] == "miss"
        assert meta["tensorrt"] == trt.__version__ and meta["compute_capability"] == gpu["compute_capability"]
        assert b.compile(req)["engine_cache"] == "hit"
        with b.open(out_dir, meta, spec, target) as runner:
            out = runner.infer({"image": x})["probs"]
            np.testing.assert_allclose(out, ref, atol=atol)
            timing = runner.time_inference({"image": x}, iterations=5, warmup=2)
            assert len(timing["gpu_compute_ms"]) == len(timing["end_to_end_ms"]) == 5
            assert timing["summary"]["end_to_end_ms"]["median"] >= timing["summary"]["gpu_compute_ms"]["median"] > 0
    # An engine whose record names another device is refused before TensorRT sees it.
    record = json.loads((tmp_path / "fp32" / trec.RECORD_FILE).read_text())
    record["material"]["tensorrt"] = "0.0"
    record["cache_key"] = sha256_json(record["material"])
    write_json_atomic(tmp_path / "fp32" / trec.RECORD_FILE, record)
    with pytest.raises(IntegrityError):
        with b.open(tmp_path / "fp32", meta, spec, target):
            pass


# ---- first contact with a Jetson: the fixes of issue 10 ------------------------------------------------
def test_fp32_clears_tf32_and_says_so(targets):
    """TF32 (TensorRT's default on Ampere and newer, Orin included) is far outside fp32's 1e-4 tolerance."""
    t = targets["jetson-orin-nano"]
    fp32 = tplan.build_plan(image_spec(), t, "fp32")
    assert fp32.tf32 is False and any("TF32 off" in n for n in fp32.notes)
    assert fp32.builder_options()["tf32"] is False and fp32.to_dict()["tf32"] is False
    assert tplan.build_plan(image_spec(), t, "fp16").tf32 is True
    assert tplan.build_plan(image_spec(), t, "fp32", {"tf32": True}).tf32 is True
    with pytest.raises(UserInputError, match="tf32 must be true or false"):
        tplan.build_plan(image_spec(), t, "fp32", {"tf32": "yes"})
    # A plan written before the flag existed reads back with the same default.
    old = {k: v for k, v in fp32.to_dict().items() if k != "tf32"}
    assert tplan.BuildPlan.from_dict(old).tf32 is False


def test_cache_key_has_tf32_recipe_version_and_board(targets, monkeypatch):
    t = targets["jetson-orin-nx"]
    plan = tplan.build_plan(image_spec(), t, "fp32")
    base = _key(plan)
    assert _key(dataclasses.replace(plan, tf32=True)) != base
    nano = trec.engine_cache_key("a" * 64, "10.3.0.30", "Orin", "8.7", plan, "NVIDIA Jetson Orin Nano Developer Kit")
    agx = trec.engine_cache_key("a" * 64, "10.3.0.30", "Orin", "8.7", plan, "NVIDIA Jetson AGX Orin Developer Kit")
    assert len({base, nano, agx}) == 3
    assert trec.cache_material("a" * 64, "10.3.0.30", "Orin", "8.7", plan)["build_recipe"] == trec.BUILD_RECIPE >= 2
    monkeypatch.setattr(trec, "BUILD_RECIPE", trec.BUILD_RECIPE + 1)  # a fix to how engines are built: rebuild
    assert _key(plan) != base


def test_board_model_from_the_device_tree(tmp_path, monkeypatch):
    model = tmp_path / "model"
    monkeypatch.setattr(trec, "DEVICE_TREE_MODEL", model)
    assert trec.board_model() is None  # a PC has no device tree
    model.write_bytes(b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    assert trec.board_model() == "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"


def test_tensorrt_mismatch_reasons(monkeypatch, tmp_path):
    monkeypatch.setattr(trec, "DEVICE_TREE_MODEL", tmp_path / "none")
    meta = {"tensorrt": "10.3.0.30", "gpu": "Orin", "compute_capability": "8.7"}
    assert trec.tensorrt_mismatch(meta, "10.3.0.30", GPU) is None
    assert "lacks" in trec.tensorrt_mismatch({}, "10.3.0.30", GPU)
    assert "cannot identify" in trec.tensorrt_mismatch(meta, "10.3.0.30", None, "no driver")
    assert "built for Orin" in trec.tensorrt_mismatch(meta, "10.3.0.30", {"name": "Thor", "compute_capability": "11.0"})


def test_cuda_python_pin_is_the_same_everywhere():
    """Fix 2: `pip install 'edgeopt[tensorrt]'` must not pull cuda-python 13 (CUDA 13 driver) onto JetPack 6."""
    import tomllib
    from pathlib import Path

    from edgeopt.backends.doctor import doctor

    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert tinst.CUDA_PYTHON_PIN["12"] in extras["tensorrt"] and tinst.CUDA_PYTHON_PIN["13"] in extras["tensorrt-cuda13"]
    for text in (tinst.INSTALL_FIX, tinst.INSTALL_HINT, trtb.BACKEND.install_hint(),
                 doctor()["backends"]["tensorrt"]["install"]):
        assert "edgeopt[tensorrt]" in text and "edgeopt[tensorrt-cuda13]" in text and "JetPack 6" in text
    if not HAS_TRT:
        assert "edgeopt[tensorrt-cuda13]" in trtb.BACKEND.unavailable_reason(load_targets()["jetson-orin-nano"])


def test_toposort_keeps_subgraph_inputs_and_cycles():
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    branch = helper.make_graph([helper.make_node("Identity", ["late"], ["o"])], "b", [],
                               [helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [1])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch, name="if"),
                           helper.make_node("Relu", ["x"], ["late"], name="relu")], "g", [], [])
    tprep._toposort(g)
    assert [n.name for n in g.node] == ["relu", "if"]  # the If reads `late` inside its branches
    cyc = helper.make_graph([helper.make_node("Relu", ["b"], ["a"], name="n1"),
                             helper.make_node("Relu", ["a"], ["b"], name="n2")], "c", [], [])
    tprep._toposort(cyc)
    assert [n.name for n in cyc.node] == ["n1", "n2"]
