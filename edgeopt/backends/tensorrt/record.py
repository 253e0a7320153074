"""The engine cache key and the record kept beside an engine (engine.json): what an engine was built from and on,
and the checks that an engine may load here (same TensorRT, GPU and board; intact bytes)."""

from __future__ import annotations

from pathlib import Path

from edgeopt.errors import IntegrityError
from edgeopt.core.fsutil import sha256_file, sha256_json
from edgeopt.core.targets import Target
from edgeopt.backends.tensorrt.operators import parse_version
from edgeopt.backends.tensorrt.plan import BuildPlan

ENGINE_FILE = "model.engine"
RECORD_FILE = "engine.json"
TIMING_CACHE_FILE = "timing.cache"
FP16_ONNX = "model_fp16.onnx"
RECORD_FORMAT = 1
# How edgeopt builds an engine (flags it sets or clears, plugins it registers). Part of the engine cache key:
# bump it whenever a change here changes the engine, so engines built by an older edgeopt are rebuilt.
# 2: TF32 cleared for fp32 builds; standard plugins registered; the board model in the key.
BUILD_RECIPE = 2
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")  # the board: "NVIDIA Jetson Orin Nano Developer Kit"
REBUILD_FIX = ("Rebuild the engine on this device (`edgeopt device-compile PACKAGE` there): TensorRT engines only "
               "load on the GPU model and TensorRT version that built them.")


# ---- engine cache key and the engine record kept beside the engine ------------------------------------
def board_model() -> str | None:
    """The board this runs on, from the device tree ("NVIDIA Jetson Orin Nano Developer Kit"); None on a PC.

    Orin Nano, Orin NX and AGX Orin all report the GPU "Orin", sm 8.7, but differ in SMs, clocks and memory,
    so an engine tuned on one is not the engine for another: the board is part of the engine cache key.
    """
    try:
        text = DEVICE_TREE_MODEL.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    return text.replace("\x00", "").strip() or None


def cache_material(onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability: str,
                   plan: BuildPlan, board: str | None = None) -> dict:
    return {"onnx_sha256": onnx_sha256, "tensorrt": tensorrt_version, "gpu": gpu_name,
            "compute_capability": str(compute_capability), "board": board, "build_recipe": BUILD_RECIPE,
            "precision": plan.precision, "profiles": plan.profiles, "builder": plan.builder_options()}


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability: str,
                     plan: BuildPlan, board: str | None = None) -> str:
    """sha256 over everything that makes an engine what it is."""
    return sha256_json(cache_material(onnx_sha256, tensorrt_version, gpu_name, compute_capability, plan, board))


def engine_record(material: dict, engine_sha256: str, extra: dict | None = None) -> dict:
    return {"format": RECORD_FORMAT, "cache_key": sha256_json(material), "material": material,
            "engine_sha256": engine_sha256, **(extra or {})}


def check_engine_record(record: dict, tensorrt_version: str, gpu: dict, engine_path: Path | None = None,
                        board: str | None = None) -> None:
    """Raise :class:`IntegrityError` unless the engine was built here: same TensorRT, same GPU and board, intact."""
    material = record.get("material") or {}
    if record.get("format") != RECORD_FORMAT or sha256_json(material) != record.get("cache_key"):
        raise IntegrityError("The engine record (engine.json) is missing or does not match its cache key.",
                             REBUILD_FIX)
    built_trt, built_gpu = material.get("tensorrt"), material.get("gpu")
    built_cc = str(material.get("compute_capability"))
    if built_trt != tensorrt_version:
        raise IntegrityError(f"The engine was built with TensorRT {built_trt}; this device has {tensorrt_version}.",
                             REBUILD_FIX)
    if built_gpu != gpu["name"] or built_cc != str(gpu["compute_capability"]):
        raise IntegrityError(f"The engine was built for {built_gpu} (sm {built_cc}); this GPU is {gpu['name']} "
                             f"(sm {gpu['compute_capability']}).", REBUILD_FIX)
    built_board = material.get("board")
    if built_board and board and built_board != board:
        raise IntegrityError(f"The engine was built on a {built_board}; this board is a {board}.", REBUILD_FIX)
    if engine_path is not None and sha256_file(engine_path) != record.get("engine_sha256"):
        raise IntegrityError(f"{Path(engine_path).name} does not match the sha256 recorded when it was built.",
                             REBUILD_FIX)


def target_mismatch(target: Target, gpu: dict) -> str | None:
    """Why this GPU is not the target's device (engines are not portable), or None."""
    want = target.hardware.get("compute_capability")
    have = str(gpu["compute_capability"])
    if want and str(want) != have:
        return (f"this GPU is {gpu['name']} (sm {have}), not the {target.name} device (sm {want}); "
                "build the engine on that device")
    low = target.hardware.get("min_compute_capability")
    if low and parse_version(have) < parse_version(str(low)):
        return f"this GPU {gpu['name']} (sm {have}) is older than the sm {low} that {target.name} needs"
    return None


def tensorrt_mismatch(meta: dict, tensorrt_version: str | None, gpu: dict | None, gpu_why: str = "") -> str | None:
    """Why a TensorRT engine built as recorded in ``meta`` cannot load here, or None. Engines load only
    with the TensorRT version and on the GPU model (compute capability) that built them."""
    built_trt, built_gpu, built_cc = meta.get("tensorrt"), meta.get("gpu"), meta.get("compute_capability")
    if not built_trt or not built_gpu or not built_cc:
        return "the engine's record lacks the TensorRT version, GPU or compute capability it was built with"
    if str(built_trt) != str(tensorrt_version):
        return f"the engine was built with TensorRT {built_trt}; this device has TensorRT {tensorrt_version or 'unknown'}"
    if gpu is None:
        return f"cannot identify this device's GPU ({gpu_why or 'no GPU found'}) to compare with {built_gpu} (sm {built_cc})"
    if str(gpu.get("name")) != str(built_gpu) or str(gpu.get("compute_capability")) != str(built_cc):
        return (f"the engine was built for {built_gpu} (sm {built_cc}); this GPU is {gpu.get('name')} "
                f"(sm {gpu.get('compute_capability')})")
    built_board, board = meta.get("board"), board_model()
    if built_board and board and built_board != board:
        return f"the engine was built on a {built_board}; this board is a {board}"
    return None
