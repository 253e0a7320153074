"""The build plan: everything an engine build will do, decided without TensorRT (plain data, for the device
package and for ``compile``): optimization profiles, workspace, optimization level, DLA, TF32 and the precision.

Precision: TensorRT 10.x builds weakly typed networks with builder flags (FP16, BF16, INT8 + FP16 for a Q/DQ
model; deprecated from 10.12). TensorRT 11 removed those flags: networks are strongly typed, so the precision
comes from the ONNX itself (FP16: the ONNX converted to FP16 with FP32 inputs/outputs kept; INT8: Q/DQ).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeopt.errors import CompileError, UserInputError
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import PRECISIONS, Target
from edgeopt.backends.tensorrt.operators import parse_version

DEFAULT_OPT_LEVEL = 3  # TensorRT's own default; 0..5


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
