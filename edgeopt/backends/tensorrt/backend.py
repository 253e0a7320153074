"""TensorRT: NVIDIA GPUs and Jetson (Orin, Thor). ONNX -> serialized engine, built on the device that runs it.

An engine is tied to the GPU and the TensorRT version that built it, so the build happens on the device.
What does not need TensorRT is plain Python and runs anywhere: the build plan (profiles, workspace,
optimization level, DLA, precision mode), the 10.x/11.x precision choice, the engine cache key and the
check that an engine matches this device. ``tensorrt`` and ``cuda-python`` are imported inside
functions only; this module imports on Python 3.10 without any of them.

Precision: TensorRT 10.x builds weakly typed networks with builder flags (FP16, BF16, INT8 + FP16 for a Q/DQ
model; deprecated from 10.12). TensorRT 11 removed those flags: networks are strongly typed, so the precision
comes from the ONNX itself (FP16: the ONNX converted to FP16 with FP32 inputs/outputs kept; INT8: Q/DQ).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgeopt.errors import BackendMissingError, CompileError, EdgeoptError, IntegrityError, UserInputError
from edgeopt.core.fsutil import onnx_digest, sha256_file, sha256_json, write_bytes_atomic, write_json_atomic
from edgeopt.core.spec import IOSpec
from edgeopt.core.untrusted import confined, load_json
from edgeopt.core.targets import PRECISIONS, Target
from edgeopt.backends.tensorrt.operators import parse_version
from edgeopt.backends.base import Backend, CompileRequest, Runner

ENGINE_FILE = "model.engine"
RECORD_FILE = "engine.json"
TIMING_CACHE_FILE = "timing.cache"
FP16_ONNX = "model_fp16.onnx"
RECORD_FORMAT = 1
# How edgeopt builds an engine (flags it sets or clears, plugins it registers). Part of the engine cache key:
# bump it whenever a change here changes the engine, so engines built by an older edgeopt are rebuilt.
# 2: TF32 cleared for fp32 builds; standard plugins registered; the board model in the key.
BUILD_RECIPE = 2
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default; 0..5
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")  # the board: "NVIDIA Jetson Orin Nano Developer Kit"
# cuda-python must match the CUDA of the driver: 13.x needs a CUDA 13 driver, which JetPack 6 does not have.
CUDA_PYTHON_PIN = {"12": "cuda-python>=12.6,<13", "13": "cuda-python>=13,<14"}
INSTALL_HINT = ("pip install 'edgeopt[tensorrt]' (cuda-python 12.x: JetPack 6, CUDA 12 drivers) or "
                "'edgeopt[tensorrt-cuda13]' (cuda-python 13.x: JetPack 7, CUDA 13 drivers)")
INSTALL_FIX = ("On Jetson, TensorRT comes with JetPack: use a venv made with --system-site-packages, then "
               f"{INSTALL_HINT}; on a PC: pip install tensorrt and the same edgeopt extra for its CUDA.")
REBUILD_FIX = ("Rebuild the engine on this device (`edgeopt device-compile PACKAGE` there): TensorRT engines only "
               "load on the GPU model and TensorRT version that built them.")


# ---- precision: the one place that knows TensorRT 10 from 11 ----------------------------------------
@dataclass(frozen=True)
class PrecisionConfig:
    """How a precision is expressed for one TensorRT version."""

    strongly_typed: bool
    builder_flags: tuple[str, ...]  # names of tensorrt.BuilderFlag members to set
    onnx: str  # the ONNX the parser must get: "fp32" | "fp16" (FP16 weights, FP32 I/O) | "qdq" (INT8 Q/DQ)
    note: str


def builder_config_choice(version: str, precision: str, strongly_typed: bool = False) -> PrecisionConfig:
    """Builder flags (TensorRT 10.x) or a strongly typed network (11.x, or 10.x on request) for ``precision``."""
    if precision not in PRECISIONS:
        raise UserInputError(f"Unknown precision {precision!r}.", f"Use one of: {', '.join(PRECISIONS)}.")
    major, minor = parse_version(version)
    if major < 10:
        raise UserInputError(f"TensorRT {version} is older than 10.0, which edgeopt needs.",
                             "Use JetPack 6.1 or newer (TensorRT 10.3), or install TensorRT 10+.")
    if major >= 11 or strongly_typed:
        if precision == "bf16":
            raise CompileError(f"bf16 on TensorRT {version} needs the network typed in BF16 in the ONNX, "
                               "which edgeopt does not produce.", "Use fp16 for this target (or TensorRT 10.x).")
        onnx = {"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[precision]
        why = "TensorRT 11 has no precision builder flags" if major >= 11 else "strongly_typed = true"
        return PrecisionConfig(True, (), onnx, f"strongly typed ({why}): the precision comes from the {onnx} ONNX")
    flags = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8", "FP16")}[precision]
    note = "weakly typed with builder flags" + (" (deprecated since TensorRT 10.12)" if minor >= 12 else "")
    if precision == "int8":
        note += "; INT8 from the Q/DQ nodes (explicit quantization), FP16 for the layers between them"
    return PrecisionConfig(False, flags, "qdq" if precision == "int8" else "fp32", note)


# ---- the build plan: pure data, derived from the spec and the target ---------------------------------
@dataclass(frozen=True)
class BuildPlan:
    tensorrt: str
    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    onnx: str
    profiles: dict = field(default_factory=dict)  # input -> {"min": [...], "opt": [...], "max": [...]}
    workspace_mb: int | None = None  # None: TensorRT's default (the device's memory)
    optimization_level: int = DEFAULT_OPT_LEVEL
    dla_core: int | None = None
    gpu_fallback: bool = True
    timing_cache: bool = True
    notes: tuple[str, ...] = ()
    tf32: bool = True  # TensorRT's default; cleared for fp32, whose tolerance is far below TF32's error


    @property
    def dynamic(self) -> bool:
        return any(p["min"] != p["max"] for p in self.profiles.values())

    def builder_options(self) -> dict:
        """What changes the engine, besides the ONNX, the device and the TensorRT version."""
        return {"strongly_typed": self.strongly_typed, "builder_flags": list(self.builder_flags),
                "onnx": self.onnx, "workspace_mb": self.workspace_mb,
                "optimization_level": self.optimization_level, "dla_core": self.dla_core,
                "gpu_fallback": self.gpu_fallback if self.dla_core is not None else None, "tf32": self.tf32}

    def to_dict(self) -> dict:
        return {"tensorrt": self.tensorrt, "precision": self.precision, "profiles": self.profiles,
                **self.builder_options(), "gpu_fallback": self.gpu_fallback, "timing_cache": self.timing_cache,
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict) -> "BuildPlan":
        return cls(tensorrt=d["tensorrt"], precision=d["precision"], strongly_typed=bool(d["strongly_typed"]),
                   builder_flags=tuple(d["builder_flags"]), onnx=d["onnx"], profiles=d["profiles"],
                   workspace_mb=d.get("workspace_mb"), optimization_level=int(d["optimization_level"]),
                   dla_core=d.get("dla_core"), gpu_fallback=bool(d.get("gpu_fallback", True)),
                   timing_cache=bool(d.get("timing_cache", True)), notes=tuple(d.get("notes", ())),
                   tf32=bool(d.get("tf32", d["precision"] != "fp32")))


def derive_profiles(spec: IOSpec) -> dict:
    """One optimization profile: per input, the min/opt/max shapes from the spec (fixed axes stay fixed)."""
    return {t.name: {w: list(spec.shape_of(t, which=w)) for w in ("min", "opt", "max")} for t in spec.inputs}


def build_plan(spec: IOSpec, target: Target, precision: str, options: dict | None = None,
               tensorrt_version: str | None = None) -> BuildPlan:
    """Everything the build will do, decided without TensorRT: for the device package and for ``compile``."""
    opts = {**target.options, **(options or {})}
    version = str(tensorrt_version or target.hardware.get("tensorrt") or "")
    if not version:
        raise UserInputError(f"Target {target.name!r} does not say which TensorRT version it runs.",
                             'Add tensorrt = "10.3" (for example) under [hardware] in its target file.')
    choice = builder_config_choice(version, precision, bool(opts.get("strongly_typed", False)))
    dla_core, dla_notes = _dla_choice(target, version, precision, opts)
    tf32 = _tf32(opts, precision)
    tf32_note = () if tf32 or precision != "fp32" else (
        "TF32 off: fp32 layers compute in full FP32 (TensorRT's TF32 default would miss the fp32 tolerance)",)
    return BuildPlan(
        tensorrt=version, precision=precision, strongly_typed=choice.strongly_typed,
        builder_flags=choice.builder_flags, onnx=choice.onnx, profiles=derive_profiles(spec),
        workspace_mb=_workspace_mb(opts), optimization_level=_opt_level(opts), dla_core=dla_core,
        gpu_fallback=bool(opts.get("gpu_fallback", True)), timing_cache=bool(opts.get("timing_cache", True)),
        notes=(choice.note, *dla_notes, *tf32_note), tf32=tf32)


def _tf32(opts: dict, precision: str) -> bool:
    """TF32 (10-bit mantissa) for FP32 matrix maths: TensorRT turns it on by default on Ampere and newer (Orin).
    fp32 turns it off (Polygraphy does the same) unless the target or recipe says ``tf32 = true``."""
    tf32 = opts.get("tf32")
    if tf32 is None:
        return precision != "fp32"
    if not isinstance(tf32, bool):
        raise UserInputError(f"tf32 must be true or false, got {tf32!r}.",
                             "tf32 = false keeps fp32 layers in full FP32 (the default for fp32).")
    return tf32


def _workspace_mb(opts: dict) -> int | None:
    mb = opts.get("workspace_mb")
    if mb in (None, 0):
        return None
    if not isinstance(mb, int) or mb < 0:
        raise UserInputError(f"workspace_mb must be a whole number of MiB, got {mb!r}.",
                             "For example workspace_mb = 1024 (0 = TensorRT's default).")
    return mb


def _opt_level(opts: dict) -> int:
    level = opts.get("builder_optimization_level", DEFAULT_OPT_LEVEL)
    if not isinstance(level, int) or not 0 <= level <= 5:
        raise UserInputError(f"builder_optimization_level must be 0..5, got {level!r}.",
                             "3 is TensorRT's default; lower builds faster, 4-5 search longer.")
    return level


def _dla_choice(target: Target, version: str, precision: str, opts: dict) -> tuple[int | None, tuple[str, ...]]:
    core = opts.get("dla_core")
    if core is None or int(core) < 0:
        return None, ()
    core, cores = int(core), int(target.hardware.get("dla_cores", 0) or 0)
    if core >= cores:
        raise UserInputError(f"DLA core {core} was asked for, but {target.name} has {cores} DLA core(s).",
                             "Set dla_core = -1 (GPU only)" + (f" or 0..{cores - 1}." if cores else "."))
    if precision not in ("fp16", "int8"):
        return None, (f"DLA runs fp16 and int8 only: the {precision} engine is built for the GPU",)
    return core, (f"DLA core {core}" + (" with GPU fallback" if opts.get("gpu_fallback", True) else ""),)


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


# ---- ONNX preparation ----------------------------------------------------------------------------------
def convert_to_fp16(src: Path, dst: Path, keep_io_types: bool = True) -> Path:
    """FP16 copy of an ONNX model with FP32 inputs/outputs kept: TensorRT 11's way to build fp16.

    Uses ``onnxruntime.transformers.float16.convert_float_to_float16`` (shipped inside onnxruntime).
    """
    from edgeopt.errors import require

    onnx = require("onnx", "tensorrt", "convert an ONNX model to FP16")
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise BackendMissingError("onnxruntime", "onnxruntime", "convert an ONNX model to FP16 for TensorRT 11") from exc
    model = onnx.load(str(src))
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    large = weight_bytes > 1_500_000_000
    converted = convert_float_to_float16(model, keep_io_types=keep_io_types, disable_shape_infer=large)
    _toposort(converted.graph)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if large:
        onnx.save(converted, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{dst.name}.data")
    else:
        onnx.save(converted, str(dst))
    return dst


def _node_inputs(node) -> set[str]:
    names = set(node.input)
    for attr in node.attribute:
        for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for sub in g.node:
                names |= _node_inputs(sub)
    return names


def _toposort(graph) -> None:
    """Reorder nodes topologically (the FP16 converter appends its I/O casts at the end), keeping order otherwise."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in _node_inputs(n) if x in producer and producer[x] != i} for i, n in enumerate(nodes)]
    order, done, remaining = [], set(), list(range(len(nodes)))
    while remaining:
        waiting = []
        for i in remaining:
            if deps[i] <= done:
                order.append(i)
                done.add(i)
            else:
                waiting.append(i)
        if len(waiting) == len(remaining):
            return  # a cycle: leave the graph as it is (TensorRT's parser sorts again)
        remaining = waiting
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def prepare_onnx(source: Path, plan: BuildPlan, work_dir: Path) -> Path:
    """The ONNX file the parser gets for ``plan``: as given, FP16-converted, or checked to carry Q/DQ."""
    from edgeopt.backends.tensorrt.lint import is_fp16_model, qdq_nodes

    if plan.onnx == "fp16" and not is_fp16_model(source):
        return convert_to_fp16(source, Path(work_dir) / FP16_ONNX)
    if plan.onnx == "qdq" and qdq_nodes(source) == 0:
        raise CompileError(f"int8 for TensorRT needs a Q/DQ ONNX model; {Path(source).name} has no "
                           "QuantizeLinear/DequantizeLinear nodes (edgeopt builds INT8 by explicit quantization only; TensorRT 11 has "
                           "no calibrator).",
                           "Compile the INT8 Q/DQ ONNX from the compression stage for this target "
                           "(signed INT8, zero point 0).")
    return Path(source)


# ---- the runtime: TensorRT, the GPU, device memory -----------------------------------------------------
def import_tensorrt():
    """``import tensorrt`` or a clear error (missing package, or libraries that do not load)."""
    if importlib.util.find_spec("tensorrt") is None:
        exc = BackendMissingError("tensorrt", "tensorrt", "build and run TensorRT engines")
        exc.fix = INSTALL_FIX
        raise exc
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise EdgeoptError(f"tensorrt is installed but its libraries do not load: {exc}",
                           "On Jetson use JetPack's TensorRT (a venv made with --system-site-packages); elsewhere "
                           "install the tensorrt wheel for this CUDA version and an NVIDIA driver.") from exc
    return trt


TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt_cu12", "tensorrt-cu13")
TENSORRT_DEB_PACKAGES = ("tensorrt", "libnvinfer10")  # JetPack installs TensorRT as .debs


def installed_tensorrt_version(deb_version=None) -> str | None:
    """The installed TensorRT's version, or None: its pip distribution (any CUDA flavour), else the module's
    ``__version__`` (JetPack's Python bindings), else, given ``deb_version`` (package name -> version or None),
    the Debian packages. Never raises."""
    from edgeopt.core.hostinfo import version_of

    for dist in TENSORRT_DISTRIBUTIONS:
        v = version_of(dist)
        if v:
            return v
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            return str(import_tensorrt().__version__)
        except Exception:  # noqa: BLE001 - present but its libraries do not load
            pass
    if deb_version is not None:
        for package in TENSORRT_DEB_PACKAGES:
            v = deb_version(package)
            if v:
                return v
    return None


def _cudart():
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (12.6 and newer; 13.x has nothing else), else the
    ``cuda.cudart`` module of older cuda-python."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6, cuda-bindings 12.8+/13.x
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python < 12.6
        return cudart
    except ImportError:
        return None


@lru_cache(maxsize=4)
def probe_gpu(device: int = 0) -> tuple[dict | None, str]:
    """({'name', 'compute_capability', 'memory_bytes', 'integrated', 'via'}, '') or (None, why not), through
    cuda-python's runtime API, which also holds the engine's device memory (``edgeopt[tensorrt]`` installs it)."""
    gpu, why = probe_cuda_python(device)
    return gpu, why or ("" if gpu else f"cuda-python is not installed to reach the GPU ({INSTALL_HINT})")


def probe_cuda_python(device: int) -> tuple[dict | None, str]:
    rt = _cudart()
    if rt is None:
        return None, ""
    err, prop = rt.cudaGetDeviceProperties(device)
    if int(err) != 0:
        text = _cuda_error_text(rt, err)
        if "insufficient" in text.lower():
            text += (" (no NVIDIA driver, or one older than the CUDA this cuda-python is built for: install the "
                     "cuda-python matching the CUDA of this JetPack/driver: pip install "
                     f"'{CUDA_PYTHON_PIN['12']}' on JetPack 6 (CUDA 12.6), '{CUDA_PYTHON_PIN['13']}' on JetPack 7)")
        return None, f"cuda-python: {text}"
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.split("\x00")[0].strip(), "compute_capability": f"{prop.major}.{prop.minor}",
            "memory_bytes": int(prop.totalGlobalMem), "integrated": bool(prop.integrated), "via": "cuda-python"}, ""


def _cuda_error_text(rt, err) -> str:
    try:
        return rt.cudaGetErrorString(err)[1].decode()
    except Exception:  # noqa: BLE001
        return str(err)


def _require_gpu() -> dict:
    gpu, why = probe_gpu()
    if gpu is None:
        raise EdgeoptError(f"No usable NVIDIA GPU here ({why}).",
                           "Build and run TensorRT engines on the device: `edgeopt device-compile PACKAGE` there, or "
                           "`--remote user@host`. On this host, `edgeopt build` makes a device package.")
    return gpu


class _CudaPythonMemory:
    """Device buffers, copies, a stream and timing events through cuda-python's runtime API (every call returns
    ``(err, value...)``; a non-zero ``err`` becomes an EdgeoptError)."""

    def __init__(self, rt):
        self.rt = rt
        self.stream = self._ok(rt.cudaStreamCreate())

    def _ok(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise EdgeoptError(f"CUDA call failed: {_cuda_error_text(self.rt, err)}",
                               "Check the GPU (nvidia-smi / tegrastats) and free memory, then retry.")
        return rest[0] if rest else None

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self._ok(self.rt.cudaFree(ptr))

    def h2d(self, ptr: int, arr: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kind, self.stream))

    def d2h(self, arr: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, kind, self.stream))

    def event(self):
        return self._ok(self.rt.cudaEventCreate())

    def record(self, ev) -> None:
        self._ok(self.rt.cudaEventRecord(ev, self.stream))

    def elapsed_ms(self, start, end) -> float:
        self._ok(self.rt.cudaEventSynchronize(end))
        return float(self._ok(self.rt.cudaEventElapsedTime(start, end)))

    def destroy_event(self, ev) -> None:
        self.rt.cudaEventDestroy(ev)

    def synchronize(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        self.rt.cudaStreamDestroy(self.stream)


def cuda_memory():
    """Device memory, a stream and timing events through cuda-python (the library :func:`probe_gpu` used)."""
    rt = _cudart()
    if rt is None:
        exc = BackendMissingError("cuda-python", "tensorrt", "allocate GPU memory for TensorRT")
        exc.fix = INSTALL_HINT
        raise exc
    return _CudaPythonMemory(rt)


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "min": float(a.min()), "max": float(a.max())}


class TrtRunner(Runner):
    """Deserialize, allocate, set shapes and addresses, ``execute_async_v3`` on a stream. One execution
    context and one set of buffers: concurrent calls take turns (``concurrent = False``)."""

    concurrent = False

    def __init__(self, artifact_dir: Path, meta: dict, spec: IOSpec):
        super().__init__(spec)
        self.dir, self.meta = Path(artifact_dir), meta
        self.engine_path = confined(self.dir, meta.get("model_file", ENGINE_FILE), "TensorRT engine file")
        self.dla_core = (meta.get("plan") or {}).get("dla_core")
        self.engine = self.context = self.mem = None
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _activate(self):
        trt = import_tensorrt()
        gpu = _require_gpu()
        record_path = confined(self.dir, self.meta.get("record_file", RECORD_FILE), "TensorRT engine record")
        if not record_path.is_file():
            raise IntegrityError(f"{record_path.name} is missing beside the engine; its origin cannot be checked.",
                                 REBUILD_FIX)
        check_engine_record(load_json(record_path, record_path.name, fix=REBUILD_FIX), trt.__version__, gpu,
                            self.engine_path, board_model())
        self.mem = cuda_memory()
        logger = trt.Logger(trt.Logger.WARNING)
        init_plugins(trt, logger)  # an engine with a plugin layer deserializes only once its creator is registered
        self.runtime = trt.Runtime(logger)
        if self.dla_core is not None:
            self.runtime.DLA_core = int(self.dla_core)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise IntegrityError(f"TensorRT {trt.__version__} could not deserialize {self.engine_path.name}.",
                                 REBUILD_FIX)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _np_dtype(trt, self.engine.get_tensor_dtype(n), n) for n in names}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self.buffers.get(name, (0, -1))
        if cap < nbytes:
            if cap >= 0:
                self.mem.free(ptr)
            ptr = self.mem.malloc(nbytes)
            self.buffers[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def _stage(self, feed: dict[str, np.ndarray]) -> tuple[list, dict[str, np.ndarray]]:
        """Set input shapes and addresses; allocate outputs. Returns (input copies, host outputs)."""
        copies = []
        for name in self.inputs:
            arr = np.ascontiguousarray(feed[name], dtype=self.dtypes[name])
            if not self.context.set_input_shape(name, arr.shape):
                raise UserInputError(f"Input {name!r} of shape {arr.shape} is outside the engine's profile.",
                                     "Use shapes within the min/max the engine was built for, or rebuild.")
            copies.append((self._buffer(name, arr.nbytes), arr))
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise CompileError(f"Output {name!r} has a data-dependent shape {shape}, which edgeopt's "
                                   "TensorRT runner does not support.", "Export the model with static output shapes.")
            outs[name] = np.empty(shape, dtype=self.dtypes[name])
            self._buffer(name, outs[name].nbytes)
        return copies, outs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.mem.stream_handle):
            raise EdgeoptError("TensorRT execution failed (execute_async_v3 returned False).",
                               "Run with the TensorRT log at VERBOSE to see why; check free GPU memory.")

    def _run(self, feed, events=None) -> dict[str, np.ndarray]:
        copies, outs = self._stage(feed)
        if events:
            self.mem.record(events[0])
        for ptr, arr in copies:
            self.mem.h2d(ptr, arr)
        if events:
            self.mem.record(events[1])
        self._execute()
        if events:
            self.mem.record(events[2])
        for name, arr in outs.items():
            self.mem.d2h(arr, self.buffers[name][0])
        if events:
            self.mem.record(events[3])
        self.mem.synchronize()
        return outs

    def _infer(self, feed):
        return self._run(feed)

    def time_inference(self, feed: dict[str, np.ndarray], iterations: int = 100, warmup: int = 10) -> dict:
        """Per-iteration milliseconds: GPU compute (CUDA events around execute) and end-to-end (H2D+compute+D2H)."""
        if not self.active:
            raise RuntimeError("time_inference called before activate(); use `with runner:`")
        self.spec.check_feed(feed)
        for _ in range(warmup):
            self._run(feed)
        events = [self.mem.event() for _ in range(4)]
        compute, e2e, host = [], [], []
        try:
            for _ in range(iterations):
                t0 = time.perf_counter()
                self._run(feed, events)
                host.append((time.perf_counter() - t0) * 1e3)
                compute.append(self.mem.elapsed_ms(events[1], events[2]))
                e2e.append(self.mem.elapsed_ms(events[0], events[3]))
        finally:
            for ev in events:
                self.mem.destroy_event(ev)
        return {"gpu_compute_ms": compute, "end_to_end_ms": e2e, "host_ms": host,
                "summary": {"gpu_compute_ms": _stats(compute), "end_to_end_ms": _stats(e2e), "host_ms": _stats(host)}}

    def _close(self):
        if self.mem is not None:
            for ptr, _ in self.buffers.values():
                self.mem.free(ptr)
            self.mem.close()
        self.buffers, self.context, self.engine, self.mem = {}, None, None, None


def _np_dtype(trt, dtype, name: str):
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise CompileError(f"Engine tensor {name!r} has type {dtype}, which numpy cannot hold.",
                           "Keep the model's inputs and outputs FP32 (keep_io_types).") from None


# ---- building ----------------------------------------------------------------------------------------
def _make_logger(trt):
    sev = trt.ILogger.Severity
    keep = (sev.INTERNAL_ERROR, sev.ERROR, sev.WARNING)

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):
            if severity in keep:
                self.messages.append((getattr(severity, "name", str(severity).split(".")[-1]), msg))

    return _Logger()


def parser_errors(parser) -> list[dict]:
    """TensorRT parser errors with the node they concern (index, name, operator)."""
    def call(err, attr):
        fn = getattr(err, attr, None)
        try:
            return fn() if callable(fn) else fn
        except Exception:  # noqa: BLE001 - older bindings lack some accessors
            return None

    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        out.append({"node": call(e, "node"), "node_name": call(e, "node_name"), "operator": call(e, "node_operator"),
                    "code": str(call(e, "code")), "desc": call(e, "desc")})
    return out


def _parse_error(onnx_path: Path, errors: list[dict]) -> CompileError:
    lines = []
    for e in errors[:5]:
        node = e["node_name"] or (f"#{e['node']}" if e["node"] not in (None, -1) else "the graph")
        op = f" ({e['operator']})" if e["operator"] else ""
        lines.append(f"node {node}{op}: {e['desc']}")
    return CompileError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(lines or ["no detail given"]),
                        "Run `edgeopt lint MODEL.onnx --target TARGET` for the fix for that node; rewrite or "
                        "replace the operator named.")


def _network_flags(trt, plan: BuildPlan) -> int:
    if not plan.strongly_typed:
        return 0  # explicit batch is the only mode since TensorRT 10
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0  # 11.x: always strongly typed; the flag is kept, ignored


def _set_profiles(trt, builder, network, config, plan: BuildPlan) -> None:
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        want = plan.profiles.get(tensor.name)
        if want is None:
            raise CompileError(f"The ONNX input {tensor.name!r} has no shapes in the build plan.",
                               "Declare every model input in the recipe's [[inputs]].")
        if getattr(tensor, "is_shape_tensor", False):
            raise CompileError(f"Input {tensor.name!r} is a shape tensor, which edgeopt does not build profiles for.",
                               "Export the model so that shapes are not inputs.")
        for axis, d in enumerate(shape):
            if d >= 0 and not (want["min"][axis] == want["max"][axis] == d):
                raise CompileError(f"Input {tensor.name!r} axis {axis} is fixed at {d} in the ONNX; the plan says "
                                   f"{want['min'][axis]}..{want['max'][axis]}.", "Make the spec match the export.")
        if any(d < 0 for d in shape):
            dynamic.append((tensor.name, want))
    if dynamic:
        profile = builder.create_optimization_profile()
        for name, want in dynamic:
            profile.set_shape(name, want["min"], want["opt"], want["max"])
        config.add_optimization_profile(profile)


def _set_dla(trt, builder, network, config, plan: BuildPlan) -> list[str]:
    """Point the build at the DLA core; return the layers that will run on the GPU instead."""
    if plan.dla_core is None:
        return []
    if builder.num_DLA_cores <= plan.dla_core:
        raise CompileError(f"DLA core {plan.dla_core} was asked for, but this device has {builder.num_DLA_cores} "
                           "DLA core(s).", "Set dla_core = -1 (GPU only) in the target options.")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(plan.dla_core)
    if plan.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    fallback = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not config.can_run_on_DLA(layer):
            fallback.append(layer.name)
    if fallback and not plan.gpu_fallback:
        raise CompileError(f"{len(fallback)} layer(s) cannot run on DLA: {', '.join(fallback[:8])}.",
                           "Allow GPU fallback (gpu_fallback = true) or build for the GPU.")
    return fallback


def _configure(trt, builder, network, config, plan: BuildPlan) -> list[str]:
    if plan.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    config.builder_optimization_level = plan.optimization_level
    for name in plan.builder_flags:
        flag = getattr(trt.BuilderFlag, name, None)  # FP16, BF16, INT8: gone in TensorRT 11
        if flag is None:
            raise CompileError(f"This TensorRT ({trt.__version__}) has no BuilderFlag.{name}.",
                               "Plan the build with the installed TensorRT version (edgeopt does so on the device).")
        config.set_flag(flag)
    _set_tf32(trt, config, plan)
    _set_profiles(trt, builder, network, config, plan)
    return _set_dla(trt, builder, network, config, plan)


def _set_tf32(trt, config, plan: BuildPlan) -> None:
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:
        return  # a TensorRT without TF32 computes fp32 in FP32
    if plan.tf32:
        config.set_flag(flag)
    else:
        config.clear_flag(flag)


def _tf32_used(trt, config) -> bool | None:
    flag = getattr(trt.BuilderFlag, "TF32", None)
    return None if flag is None else bool(config.get_flag(flag))


def _timing_cache(config, data: bytes | None) -> str:
    """Give the build a timing cache: the stored one where TensorRT takes it, else an empty one. Says which."""
    status = "new"
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # noqa: BLE001 - unreadable bytes: start afresh
            cache = None
        status = "loaded" if cache is not None else "unreadable: started afresh"
    if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
        cache, status = None, "from another device or TensorRT: started afresh"
    if cache is None:
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            return "off: TensorRT refused an empty timing cache"
    return status


def _serialized_timing_cache(config) -> bytes | None:
    cache = config.get_timing_cache()
    if cache is None:
        return None
    data = cache.serialize()
    return bytes(data) if data is not None else None


def init_plugins(trt, logger) -> bool:
    """Register TensorRT's standard plugins (EfficientNMS_TRT, ...): the parser falls back to them for operators
    it has no importer for, and an engine that uses one deserializes only once they are registered."""
    return bool(trt.init_libnvinfer_plugins(logger, ""))


def build_engine(trt, onnx_path: Path, plan: BuildPlan, timing_cache: bytes | None = None) -> tuple[bytes, bytes | None, dict]:
    """Parse and build. Returns (serialized engine, timing cache bytes, report)."""
    logger = _make_logger(trt)
    plugins = init_plugins(trt, logger)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise _parse_error(Path(onnx_path), parser_errors(parser))
    config = builder.create_builder_config()
    fallback = _configure(trt, builder, network, config, plan)
    cache_status = _timing_cache(config, timing_cache) if plan.timing_cache else "off"
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        errs = "; ".join(m for s, m in logger.messages if s in ("ERROR", "INTERNAL_ERROR"))[-800:]
        raise CompileError(f"TensorRT could not build the engine: {errs or 'no error message'}",
                           "If it ran out of memory, lower workspace_mb or builder_optimization_level, close other "
                           "processes (or add swap on Jetson); otherwise see the operator named above.")
    cache_bytes = None if cache_status.startswith("off") else _serialized_timing_cache(config)
    report = {"build_seconds": round(seconds, 2), "layers": network.num_layers, "dla_fallback_layers": fallback,
              "tf32": _tf32_used(trt, config), "timing_cache": cache_status, "plugins_registered": plugins,
              "builder_warnings": [m for s, m in logger.messages if s == "WARNING"][:50]}
    return bytes(serialized), cache_bytes, report


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


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


class TensorRTBackend(Backend):
    name = "tensorrt"
    module = "tensorrt"
    distribution = "tensorrt"
    builds_on_device = True  # an engine only runs on the GPU and TensorRT version that built it
    extra = "tensorrt"
    rebuild_note = "TensorRT engines load only on the GPU model and with the TensorRT version that built them."

    def artifact_fits_here(self, aid: str, meta: dict, built_version: str | None,
                           version: str | None) -> tuple[str | None, tuple[str, ...]]:
        gpu, why = probe_gpu()
        return tensorrt_mismatch(meta, version, gpu, why), ()

    def require(self):
        return import_tensorrt()

    def version(self) -> str | None:
        return installed_tensorrt_version()

    def install_hint(self) -> str:
        return INSTALL_HINT + "; TensorRT itself comes with JetPack (on a PC: pip install tensorrt)"

    def unavailable_reason(self, target: Target) -> str | None:
        if not self.installed():
            return f"tensorrt is not installed: {self.install_hint()}"
        return self.device_missing(target)

    def device_missing(self, target: Target) -> str | None:
        try:
            import_tensorrt()
        except EdgeoptError as exc:
            return exc.problem
        gpu, why = probe_gpu()
        if gpu is None:
            return f"no usable NVIDIA GPU here ({why}); build on the device or make a device package"
        return target_mismatch(target, gpu)

    def precisions_here(self, target: Target) -> tuple[str, ...]:
        return tuple(p for p in target.precisions if self.precision_unavailable(target, p) is None)

    def precision_unavailable(self, target: Target, precision: str) -> str | None:
        if precision not in target.precisions:
            return f"{target.name} does not offer {precision}"
        if precision != "bf16":
            return None
        version = self.version() or str(target.hardware.get("tensorrt", "10.0"))
        if parse_version(version) >= (11, 0):
            return "bf16 on TensorRT 11 needs a BF16-typed ONNX, which edgeopt does not produce"
        gpu, _ = probe_gpu()
        if gpu is not None and parse_version(gpu["compute_capability"]) < (8, 0):
            return f"{gpu['name']} (sm {gpu['compute_capability']}) has no bf16"
        return None

    def compile(self, req: CompileRequest) -> dict:
        trt = self.require()
        gpu = _require_gpu()
        version = trt.__version__
        plan = build_plan(req.spec, req.target, req.precision, req.options, version)
        out = Path(req.out_dir)
        work = out / ".work"
        try:
            return self._compile(trt, req, gpu, version, plan, out, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _compile(self, trt, req, gpu, version, plan, out, work) -> dict:
        from edgeopt.backends.tensorrt.lint import lint_or_raise

        source = prepare_onnx(Path(req.onnx_path), plan, work)
        report = lint_or_raise(source, req.target, req.spec, tensorrt_version=version)
        onnx_sha = onnx_digest(source)
        board = board_model()
        material = cache_material(onnx_sha, version, gpu["name"], gpu["compute_capability"], plan, board)
        key = sha256_json(material)
        cache_root = Path(req.cache_dir) / "tensorrt" if req.cache_dir else None
        hit = self._from_cache(cache_root, key, out)
        build = {"build_seconds": 0.0, "dla_fallback_layers": [], "builder_warnings": [], "tf32": plan.tf32,
                 "timing_cache": "not used (engine from the cache)"}
        if not hit:
            timing_path = (cache_root / f"timing-{_slug(gpu['name'])}-sm{gpu['compute_capability']}-trt{version}.cache"
                           if cache_root else None)
            timing_in = timing_path.read_bytes() if timing_path and timing_path.is_file() else None
            engine, timing, build = build_engine(trt, source, plan, timing_in)
            write_bytes_atomic(out / ENGINE_FILE, engine)
            if timing:
                write_bytes_atomic(out / TIMING_CACHE_FILE, timing)
                if timing_path:
                    write_bytes_atomic(timing_path, timing)
            record = engine_record(material, sha256_file(out / ENGINE_FILE),
                                   {"plan": plan.to_dict(), "dla_fallback_layers": build["dla_fallback_layers"],
                                    "tf32": build["tf32"], "timing_cache": build["timing_cache"]})
            write_json_atomic(out / RECORD_FILE, record)
            self._to_cache(cache_root, key, out)
        declared = str(req.target.hardware.get("tensorrt", ""))
        notes = list(plan.notes)
        if declared and parse_version(declared)[0] != parse_version(version)[0]:
            notes.append(f"the target declares TensorRT {declared}; this device has {version}")
        return {
            "model_file": ENGINE_FILE, "record_file": RECORD_FILE,
            "timing_cache_file": TIMING_CACHE_FILE if (out / TIMING_CACHE_FILE).is_file() else None,
            "tensorrt": version, "gpu": gpu["name"], "compute_capability": gpu["compute_capability"], "board": board,
            "build_recipe": BUILD_RECIPE, "plan": plan.to_dict(), "cache_key": key, "onnx_sha256": onnx_sha,
            "tf32": build["tf32"], "timing_cache": build["timing_cache"],
            "engine_cache": "hit" if hit else ("miss" if cache_root else "off"),
            "build_seconds": build["build_seconds"], "dla_fallback_layers": build["dla_fallback_layers"],
            "builder_warnings": build["builder_warnings"], "lint_warnings": [f.to_dict() for f in report.warnings],
            "notes": notes,
        }

    @staticmethod
    def _from_cache(cache_root: Path | None, key: str, out: Path) -> bool:
        if cache_root is None:
            return False
        entry = cache_root / "engines" / key
        engine, record = entry / ENGINE_FILE, entry / RECORD_FILE
        if not (engine.is_file() and record.is_file()):
            return False
        rec = json.loads(record.read_text())
        if rec.get("cache_key") != key or sha256_file(engine) != rec.get("engine_sha256"):
            return False  # damaged entry: rebuild (and overwrite it)
        for p in (engine, record, entry / TIMING_CACHE_FILE):
            if p.is_file():
                write_bytes_atomic(out / p.name, p.read_bytes())
        return True

    @staticmethod
    def _to_cache(cache_root: Path | None, key: str, out: Path) -> None:
        if cache_root is None:
            return
        entry = cache_root / "engines" / key
        for name in (ENGINE_FILE, TIMING_CACHE_FILE, RECORD_FILE):  # the record last: it marks the entry complete
            if (out / name).is_file():
                write_bytes_atomic(entry / name, (out / name).read_bytes())

    def open(self, artifact_dir: Path, meta: dict, spec: IOSpec, target: Target, threads: int | None = None) -> Runner:
        self.require()
        return TrtRunner(Path(artifact_dir), meta, spec)


BACKEND = TensorRTBackend()
