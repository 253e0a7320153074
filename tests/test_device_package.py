"""Device packages: `edgeopt build --target jetson-orin-nano` on a host without TensorRT writes, per precision,
a complete package (ONNX, build plan, preflight, reference data, instructions) with status "not built here";
finishing it needs the device, and saying so changes nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgeopt import __version__
from edgeopt.core.records import Status
from edgeopt.device.package import (
    INSTRUCTIONS,
    PACKAGE_JSON,
    PACKAGE_ONNX,
    compile_package,
    device_fingerprint,
    package_from_out,
    parse_jetson_clocks,
    parse_nvpmodel,
    parse_tegra_release,
    read_package,
    verify_package_files,
    write_device_package,
)
from edgeopt.errors import BackendMissingError, IntegrityError
from edgeopt.core.fsutil import sha256_file

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
PRECISIONS = ("fp32", "fp16")


from conftest import invoke_cli as _cli  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`edgeopt build -t jetson-orin-nano -p fp32 -p fp16` through the CLI, on this machine (no TensorRT)."""
    out = tmp_path_factory.mktemp("jetson") / "out"
    code, stdout, stderr = _cli("-q", "build", "-o", out, "-t", "jetson-orin-nano", "-p", "fp32", "-p", "fp16", "--json")
    assert code == 0, stderr
    return out, json.loads(stdout)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (sha256_file(p), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- what the build writes -----------------------------------------------------------------------------
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the build makes engines, not packages")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_build_writes_a_complete_device_package(built, precision):
    out, manifest = built
    aid = f"jetson-orin-nano-{precision}"
    rec = next(a for a in manifest["artifacts"] if a["id"] == aid)
    assert rec["status"] == Status.NOT_BUILT_HERE and rec["backend"] == "tensorrt"
    assert "device-compile" in rec["reason"] and "--remote" in rec["reason"] and "Jetson Orin Nano" in rec["reason"]
    folder = out / aid
    for name in (PACKAGE_JSON, "artifact.json", PACKAGE_ONNX, "build_plan.json", "lint.json", "reference.npz", INSTRUCTIONS):
        assert (folder / name).is_file(), name
    # Every file is in the manifest record with its sha256.
    listed = {f["path"]: f["sha256"] for f in rec["files"]}
    assert set(listed) == {f"{aid}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file()}
    assert all(sha256_file(out / p) == h for p, h in listed.items())

    pkg = read_package(folder)
    verify_package_files(folder, pkg)
    assert (pkg["id"], pkg["target"], pkg["precision"], pkg["status"]) == (aid, "jetson-orin-nano", precision, Status.NOT_BUILT_HERE)
    assert pkg["declared"]["tensorrt"] == "10.3" and pkg["declared"]["jetpack"] == "6.2"
    # TensorRT 10.x: fp16 is the FP32 ONNX plus the FP16 builder flag.
    assert pkg["onnx"]["form"] == "fp32"
    assert sha256_file(folder / PACKAGE_ONNX) == sha256_file(out / "export" / "model.onnx")
    # The preflight ran for TensorRT 10.3 and passed; its result is in the package and the manifest.
    lint = json.loads((folder / "lint.json").read_text())
    assert lint["ok"] and lint["tensorrt"] == "10.3" and lint["onnx"] == PACKAGE_ONNX
    assert rec["package"]["lint"]["ok"] and pkg["lint"]["errors"] == 0
    # The build plan has the profile ranges of the recipe's dynamic batch (1..32, opt 1).
    plan = json.loads((folder / "build_plan.json").read_text())
    assert plan["profiles"] == {"image": {"min": [1, 1, 8, 8], "opt": [1, 1, 8, 8], "max": [32, 1, 8, 8]}}
    assert plan["tensorrt"] == "10.3" and plan["workspace_mb"] == 1024 and plan["optimization_level"] == 3
    assert plan["builder_flags"] == (["FP16"] if precision == "fp16" else []) and plan["strongly_typed"] is False
    assert plan["dla_core"] is None
    # Reference data with the tolerance of the precision.
    assert sha256_file(folder / "reference.npz") == sha256_file(out / "reference" / "reference.npz")
    assert pkg["reference"]["tolerance"]["atol"] == (1e-2 if precision == "fp16" else 1e-4)
    assert pkg["reference"]["samples"] >= 3
    # artifact.json follows the artifact conventions.
    art = json.loads((folder / "artifact.json").read_text())
    assert (art["id"], art["backend"], art["precision"]) == (aid, "tensorrt", precision)
    assert art["target"]["name"] == "jetson-orin-nano" and art["target"]["hardware"]["tensorrt"] == "10.3"
    assert art["spec"]["inputs"][0]["name"] == "image" and art["meta"]["status"] == Status.NOT_BUILT_HERE
    # How to finish on the device.
    text = (folder / INSTRUCTIONS).read_text()
    for needle in (f"pip install edgeopt-{__version__}-py3-none-any.whl", "--system-site-packages",
                   f"edgeopt device-compile {aid}", f"edgeopt device-compile OUT/{aid} --remote user@device",
                   "edgeopt remote setup user@device", "cuda-python==12.6.*", "TensorRT 10.3"):
        assert needle in text, needle


def test_compile_here_says_which_device_and_changes_nothing(built):
    if HAS_TRT:
        pytest.skip("TensorRT is installed here")
    out, _ = built
    folder = out / "jetson-orin-nano-fp16"
    before = _snapshot(folder)
    with pytest.raises(BackendMissingError) as e:
        compile_package(folder)
    assert "needs TensorRT and an NVIDIA GPU" in e.value.problem
    assert "Jetson Orin Nano" in e.value.fix and "--remote" in e.value.fix and "JetPack" in e.value.fix
    assert _snapshot(folder) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    code, _, stderr = _cli("device-compile", folder)
    assert code == 3 and "needs TensorRT and an NVIDIA GPU" in stderr and "fix:" in stderr
    assert _snapshot(folder) == before


def test_a_damaged_package_is_refused(built, tmp_path):
    import shutil

    out, _ = built
    copy = tmp_path / "pkg"
    shutil.copytree(out / "jetson-orin-nano-fp32", copy)
    verify_package_files(copy, read_package(copy))
    (copy / PACKAGE_ONNX).write_bytes((copy / PACKAGE_ONNX).read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        verify_package_files(copy, read_package(copy))
    shutil.copyfile(out / "jetson-orin-nano-fp32" / PACKAGE_ONNX, copy / PACKAGE_ONNX)
    verify_package_files(copy, read_package(copy))
    (copy / "reference.npz").unlink()
    with pytest.raises(IntegrityError, match="lacks reference.npz"):
        verify_package_files(copy, read_package(copy))


def test_tensorrt_11_package_carries_the_fp16_onnx(built, tmp_path):
    """TensorRT 11 has no FP16 flag: the package's ONNX is FP16 with FP32 inputs/outputs, and it still matches."""
    ort = pytest.importorskip("onnxruntime")
    from edgeopt.backends.tensorrt.lint import is_fp16_model
    from edgeopt.core.parity import parity, tolerance_for
    from edgeopt.core.reference import load_reference
    from edgeopt.core.resources import data_dir

    out, _ = built
    toml = (data_dir("targets") / "jetson-thor.toml").read_text()
    toml = toml.replace('name = "jetson-thor"', 'name = "thor-trt11"').replace('tensorrt = "10.13"', 'tensorrt = "11.4"')
    target = tmp_path / "thor-trt11.toml"
    target.write_text(toml)
    pkg = package_from_out(out, str(target), "fp16", tmp_path / "thor-trt11-fp16")
    folder = tmp_path / "thor-trt11-fp16"
    assert pkg["onnx"]["form"] == "fp16" and is_fp16_model(folder / PACKAGE_ONNX)
    plan = json.loads((folder / "build_plan.json").read_text())
    assert plan["strongly_typed"] and plan["builder_flags"] == [] and plan["tensorrt"] == "11.4"
    assert pkg["lint"]["ok"]
    feeds, refs = load_reference(folder / "reference.npz")
    sess = ort.InferenceSession(str(folder / PACKAGE_ONNX), providers=["CPUExecutionProvider"])
    got = [dict(zip([o.name for o in sess.get_outputs()], sess.run(None, f))) for f in feeds]
    assert all(v.dtype == np.float32 for g in got for v in g.values())
    assert parity(refs, got, tolerance_for("fp16"))["passed"]


# ---- failures: recorded, nothing half-written ----------------------------------------------------------
def _tiny_ctx(tmp_path, opset: int = 17):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edgeopt.example import example_recipe
    from edgeopt.core.reference import REFERENCE_FILE, save_reference
    from edgeopt.report.progress import Reporter
    from edgeopt.core.spec import Dim, IOSpec, TensorSpec

    out = tmp_path / "out"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    (out / "export").mkdir(parents=True)
    onnx.save(model, str(out / "export" / "model.onnx"))
    spec = IOSpec((TensorSpec("x", ("batch", 4)),), {"batch": Dim("batch", 1, 2, 8)}, ("y",))
    x = np.linspace(-1, 1, 4, dtype=np.float32)[None]
    save_reference(out / REFERENCE_FILE, [{"x": x}], [{"y": np.maximum(x, 0)}])
    return SimpleNamespace(out=out, onnx_path=out / "export" / "model.onnx", spec=spec, recipe=example_recipe(),
                           reporter=Reporter(quiet=True))


def _write(ctx, plan, folder=None) -> dict:
    """The device package of ``plan`` as the build's package stage writes it: from a PackageSource alone."""
    from edgeopt.core.parity import tolerance_for
    from edgeopt.core.reference import REFERENCE_FILE
    from edgeopt.device.package import PackageSource

    src = PackageSource(target=plan.target, precision=plan.precision, spec=ctx.spec, model_kind="generic",
                        onnx_path=ctx.onnx_path, reference_path=ctx.out / REFERENCE_FILE,
                        tolerance=tolerance_for(plan.precision, ctx.recipe.parity.tolerances).to_dict(),
                        compression=ctx.recipe.compression, task=ctx.recipe.task,
                        model={"name": "tiny", "kind": "generic"}, why_not_here=plan.reason)
    return write_device_package(src, folder or ctx.out / plan.id, _rec(plan), ctx.out, ctx.reporter)


def _plan(target: str, precision: str):
    from edgeopt.pipeline.build import Plan
    from edgeopt.core.targets import get_target

    return Plan(get_target(target), precision, status=Status.NOT_BUILT_HERE, reason="tensorrt is not installed")


def _rec(plan):
    return {"id": plan.id, "target": plan.target.name, "backend": plan.target.backend, "device": plan.target.device,
            "precision": plan.precision}


def test_preflight_errors_fail_the_record_and_write_nothing(tmp_path):
    ctx = _tiny_ctx(tmp_path, opset=99)
    plan = _plan("jetson-orin-nano", "fp16")
    folder = ctx.out / plan.id
    (folder).mkdir()
    (folder / PACKAGE_JSON).write_text("{}")  # an older package there would be stale next to a failed record
    rec = _write(ctx, plan, folder)
    assert rec["status"] == "failed" and rec["files"] == []
    assert "opset-too-new" in rec["reason"] and "lint" in rec["fix"]
    assert rec["lint"]["ok"] is False and rec["lint"]["findings"][0]["code"] == "opset-too-new"
    assert not folder.exists() and not [p for p in ctx.out.iterdir() if p.name.startswith(".staging")]


def test_int8_without_calibration_data_fails_clearly(tmp_path):
    ctx = _tiny_ctx(tmp_path)
    plan = _plan("jetson-orin-nano", "int8")
    rec = _write(ctx, plan)
    assert rec["status"] == "failed" and "calibration" in rec["reason"] and "[calibration]" in rec["fix"]
    assert not (ctx.out / plan.id).exists()


def test_tiny_package_is_reused_when_nothing_changed(tmp_path):
    ctx = _tiny_ctx(tmp_path)
    plan = _plan("jetson-orin-nano", "fp32")
    first = _write(ctx, plan)
    assert first["status"] == Status.NOT_BUILT_HERE and "reused" not in first
    again = _write(ctx, plan)
    assert again["reused"] and again["key"] == first["key"] and again["files"] == first["files"]
    plan16 = _plan("jetson-orin-nano", "fp16")
    assert _write(ctx, plan16)["key"] != first["key"]


# ---- the device fingerprint ----------------------------------------------------------------------------
def test_fingerprint_never_fails_and_parses_jetson_tools():
    fp = device_fingerprint()
    for key in ("l4t", "jetpack", "tensorrt", "gpu", "nvpmodel", "jetson_clocks", "temperatures_c", "python"):
        assert key in fp
    assert fp["python"] and fp["edgeopt"] == __version__
    json.dumps(fp)
    assert parse_tegra_release("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64") == "36.4.3"
    assert parse_tegra_release("# R35 (release), REVISION: 5, GCID: 1") == "35.5.0"
    assert parse_tegra_release("garbage") is None
    assert parse_nvpmodel("NV Power Mode: 15W\n0\n") == {"name": "15W", "id": 0}
    assert parse_nvpmodel("") is None
    clocks = parse_jetson_clocks(
        "SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano Developer Kit\n"
        "Online CPUs: 0-5\n"
        "cpu0: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: C1=0\n"
        "cpu1: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: C1=0\n"
        "GPU MinFreq=624750000 MaxFreq=624750000 CurrentFreq=624750000\n"
        "EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1\n")
    assert clocks["active"] is True and clocks["cpu_pinned"] is True and clocks["gpu"]["max_hz"] == 624750000
    assert clocks["emc"]["current_hz"] == 3199000000


def test_int8_package_carries_a_signed_qdq_onnx_that_passes_the_preflight(built, tmp_path):
    """With calibration data, the int8 package holds the compression stage's Q/DQ ONNX (signed INT8, zero point 0),
    checked by the TensorRT 10.3 preflight and, as an early warning, on ONNX Runtime here."""
    pytest.importorskip("onnxruntime")
    from edgeopt.data.dataset import load_dataset
    from edgeopt.device.package import PackageSource, write_package_files
    from edgeopt.example import example_recipe
    from edgeopt.backends.tensorrt.lint import qdq_nodes
    from edgeopt.core.parity import tolerance_for
    from edgeopt.core.targets import get_target

    try:
        import edgeopt.compress  # noqa: F401
    except ImportError:
        pytest.skip("the compression stage (edgeopt.compress) is not here")
    out, _ = built
    r = example_recipe()
    src = PackageSource(target=get_target("jetson-orin-nano"), precision="int8", spec=r.spec, model_kind="cnn",
                        onnx_path=out / "export" / "model.onnx", reference_path=out / "reference" / "reference.npz",
                        tolerance=tolerance_for("int8").to_dict(),
                        calibration=load_dataset(r.calibration, r.spec, purpose="calibration"))
    folder = tmp_path / "jetson-orin-nano-int8"
    folder.mkdir()
    pkg = write_package_files(folder, src, src.key())
    assert pkg["onnx"]["form"] == "qdq" and qdq_nodes(folder / PACKAGE_ONNX) > 0
    assert pkg["lint"]["ok"] and pkg["lint"]["errors"] == 0
    plan = json.loads((folder / "build_plan.json").read_text())
    assert plan["builder_flags"] == ["INT8", "FP16"] and plan["onnx"] == "qdq"
    assert pkg["onnx"]["host_check"]["passed"] and pkg["onnx"]["quantization"]
    verify_package_files(folder, read_package(folder))


def _overflow_ctx(tmp_path):
    """y = relu(x) * 70000: the FP16 ONNX (TensorRT 11's fp16 form) clamps the constant to 65504, 6 % off."""
    ctx = _tiny_ctx(tmp_path)
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edgeopt.core.reference import REFERENCE_FILE, save_reference

    k = numpy_helper.from_array(np.array([70000.0], np.float32), "k")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                               helper.make_node("Mul", ["r", "k"], ["y"], name="scale")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(ctx.onnx_path))
    x = np.linspace(-1, 1, 4, dtype=np.float32)[None]
    save_reference(ctx.out / REFERENCE_FILE, [{"x": x}], [{"y": np.maximum(x, 0) * 70000}])
    return ctx


def _trt11_target(tmp_path, **options) -> str:
    from edgeopt.core.resources import data_dir

    toml = (data_dir("targets") / "jetson-thor.toml").read_text()
    toml = toml.replace('name = "jetson-thor"', 'name = "thor-trt11"').replace('tensorrt = "10.13"', 'tensorrt = "11.4"')
    for k, v in options.items():
        toml = toml.replace("[options]\n", f"[options]\n{k} = {json.dumps(v)}\n")
    path = tmp_path / f"thor-trt11-{len(options)}.toml"
    path.write_text(toml)
    return str(path)


def test_a_package_whose_host_check_fails_fails_unless_kept(tmp_path):
    """The converted ONNX already misses the reference on ONNX Runtime here: the record is failed (the build exits
    non-zero) and no package is left, unless the target says host_check = "warn"."""
    pytest.importorskip("onnxruntime")
    ctx = _overflow_ctx(tmp_path)
    plan = _plan(_trt11_target(tmp_path), "fp16")
    rec = _write(ctx, plan)
    assert rec["status"] == "failed" and rec["files"] == [] and not (ctx.out / plan.id).exists()
    assert "misses the reference outputs on ONNX Runtime here" in rec["reason"] and "cosine" in rec["reason"]
    assert rec["host_check"]["passed"] is False and 'host_check = "warn"' in rec["fix"]
    kept = _plan(_trt11_target(tmp_path, host_check="warn"), "fp16")
    rec = _write(ctx, kept)
    assert rec["status"] == Status.NOT_BUILT_HERE and rec["package"]["onnx"]["host_check"]["passed"] is False
    assert read_package(ctx.out / kept.id)["onnx"]["form"] == "fp16"
