"""TensorRT: NVIDIA GPUs and Jetson (Orin, Thor). ONNX -> serialized engine, built on the device that runs it.

An engine is tied to the GPU and the TensorRT version that built it, so the build happens on the device. This
module holds the :class:`Backend` (what edgeopt's pipeline asks of TensorRT: plan, preflight, compile with the
engine cache, open a runner); the pieces live beside it:

- ``plan``: the build plan and the 10.x/11.x precision choice (plain data, no TensorRT);
- ``record``: the engine cache key, the engine record and the checks that an engine may load here;
- ``prepare``: the ONNX the parser gets (FP16 conversion for TensorRT 11, Q/DQ check);
- ``builder``: parse, configure (flags, TF32, profiles, DLA, timing cache) and build;
- ``runner``: deserialize and run an engine; ``cuda``: cuda-python (GPU probe, device memory);
- ``install``: ``import tensorrt``, its version, install hints.

``tensorrt`` and ``cuda-python`` are imported inside functions only; all of these import without them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgeopt.errors import EdgeoptError
from edgeopt.core.fsutil import onnx_digest, sha256_file, sha256_json, write_bytes_atomic, write_json_atomic
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.config.options import Option
from edgeopt.core.checks import boolean, choice, integer
from edgeopt.backends.base import Backend, CompileRequest, Runner
from edgeopt.backends.tensorrt.builder import build_engine
from edgeopt.backends.tensorrt.cuda import probe_gpu, require_gpu
from edgeopt.backends.tensorrt.install import INSTALL_HINT, import_tensorrt, installed_tensorrt_version
from edgeopt.backends.tensorrt.operators import parse_version
from edgeopt.backends.tensorrt.plan import build_plan
from edgeopt.backends.tensorrt.prepare import INT32_ONNX, prepare_onnx, with_int32_outputs
from edgeopt.backends.tensorrt.record import (BUILD_RECIPE, ENGINE_FILE, RECORD_FILE, TIMING_CACHE_FILE, board_model,
                                              cache_material, engine_record, target_mismatch, tensorrt_mismatch)
from edgeopt.backends.tensorrt.runner import TrtRunner


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


class TensorRTBackend(Backend):
    name = "tensorrt"
    module = "tensorrt"
    distribution = "tensorrt"
    builds_on_device = True  # an engine only runs on the GPU and TensorRT version that built it
    extra = "tensorrt"
    libraries = ("tensorrt", "cuda-python")
    options = (
        Option("workspace_mb", "builder workspace in MiB (0: TensorRT's default)", integer(0, 1 << 24)),
        Option("builder_optimization_level", "0-5; 3 is TensorRT's default, lower builds faster", integer(0, 5)),
        Option("timing_cache", "reuse edgeopt's timing cache (default true)", boolean),
        Option("tf32", "TF32 for fp32 layers (unset: off for fp32, on otherwise)", boolean),
        Option("dla_core", "-1: GPU only; 0 or 1: fp16/int8 on that DLA core", integer(-1, 15)),
        Option("gpu_fallback", "layers DLA cannot run fall back to the GPU (default true)", boolean),
        Option("strongly_typed", "a strongly typed network (types from the ONNX)", boolean),
        Option("nms", "a detector's NMS in a device package: plugin (EfficientNMS_TRT) | outside",
               choice("plugin", "outside")),
        Option("host_check", "a package whose FP16/INT8 ONNX misses the reference on the host: fail | warn",
               choice("fail", "warn")),
    )
    rebuild_note = "TensorRT engines load only on the GPU model and with the TensorRT version that built them."

    def detector_nms(self, target: Target) -> tuple[str, str]:
        """Always outside the exported graph: ONNX ``NonMaxSuppression``'s data-dependent output shape is refused
        by edgeopt's TensorRT runner; the package appends ``EfficientNMS_TRT`` (``nms = "plugin"``, the default) or
        leaves NMS to the application (``nms = "outside"``)."""
        where = "as EfficientNMS_TRT" if target.options.get("nms", "plugin") == "plugin" else "outside the engine"
        return "outside", f"TensorRT ({target.name}) runs a detector's NMS {where}, not ONNX NonMaxSuppression"

    def artifact_fits_here(self, aid: str, meta: dict, built_version: str | None,
                           version: str | None) -> tuple[str | None, tuple[str, ...]]:
        gpu, why = probe_gpu()
        return tensorrt_mismatch(meta, version, gpu, why), ()

    def require(self):
        return import_tensorrt()

    def preflight(self):
        from edgeopt.backends.tensorrt.lint import TensorRTPreflight

        return TensorRTPreflight()

    def device_facts(self, deb_version) -> dict:
        """TensorRT's version (JetPack's .debs included) and the GPU as cuda-python sees it (no torch)."""
        from edgeopt.backends.tensorrt.cuda import probe_cuda_python

        facts = {"tensorrt": installed_tensorrt_version(deb_version=deb_version)}
        try:
            gpu, _ = probe_cuda_python(0)
        except Exception:  # noqa: BLE001 - a fingerprint never fails
            gpu = None
        return {**facts, "gpu": gpu} if gpu else facts

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
        gpu = require_gpu()
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
        source, int64 = with_int32_outputs(source, work / INT32_ONNX)  # TensorRT 10.x: INT64 outputs as INT32
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
            "int64_outputs": int64,
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
