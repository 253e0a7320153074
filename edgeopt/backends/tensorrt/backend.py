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
import re
import shutil
from pathlib import Path

from edgeopt.errors import BackendMissingError, EdgeoptError, UserInputError
from edgeopt.core.fsutil import onnx_digest, sha256_file, sha256_json, write_bytes_atomic, write_json_atomic
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.backends.base import Backend, CompileRequest, Runner
from edgeopt.backends.tensorrt.builder import build_engine
from edgeopt.backends.tensorrt.cuda import probe_gpu, require_gpu
from edgeopt.backends.tensorrt.install import INSTALL_FIX, INSTALL_HINT, import_tensorrt, installed_tensorrt_version
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

    device_build_why = "TensorRT engines are built on the device that runs them"
    device_build_note = ("TensorRT engines only load on the GPU model and TensorRT version that built them, so the "
                         "engine is built on the device.")

    def package_plan(self, spec: IOSpec, target: Target, precision: str) -> tuple[str, object | None]:
        version = str(target.hardware.get("tensorrt") or "")
        if not version:
            raise UserInputError(f"Target {target.name!r} does not say which TensorRT version it runs.",
                                 'Add tensorrt = "10.3" (for example) under [hardware] in its target file.')
        plan = build_plan(spec, target, precision, dict(target.options), version)
        return plan.onnx, plan

    def package_onnx(self, form: str, onnx_path: Path, dst: Path, src, log) -> dict:
        """FP16 (FP32 inputs/outputs kept), or INT8 Q/DQ (signed, zero point 0) calibrated on the recipe's data."""
        if form == "fp16":
            from edgeopt.backends.tensorrt.prepare import convert_to_fp16

            log(f"{src.id}: converting the ONNX to FP16 (FP32 inputs/outputs kept) for TensorRT "
                f"{src.target.hardware.get('tensorrt')}")
            convert_to_fp16(onnx_path, dst)
            return {}
        if form != "qdq":
            return super().package_onnx(form, onnx_path, dst, src, log)
        if src.calibration is None:
            raise UserInputError(
                f"{src.id} needs an INT8 Q/DQ model, which is calibrated on data, and the recipe gives no calibration "
                "data.", "Add a [calibration] section to the recipe (and int8 to its precisions), or drop int8 for "
                "this target.")
        try:
            from edgeopt.backends.tensorrt.quantize import quantize_for_tensorrt
        except ImportError as exc:
            raise BackendMissingError("edgeopt.compress (the compression stage)", "nncf",
                                      f"quantize {src.id} to INT8 Q/DQ") from exc
        log(f"{src.id}: quantizing to INT8 Q/DQ for TensorRT (signed INT8, zero point 0)")
        return {"quantization": quantize_for_tensorrt(onnx_path, src.calibration, src.spec, dst, src.model_kind,
                                                      log=log, judging=src.judging, target=src.target)}

    def package_graph(self, onnx_path: Path, target: Target, task, detector: bool) -> dict | None:
        """A detector's NMS as chosen (``nms`` option: the plugin, or outside the engine) and INT64 outputs cast
        to INT32 (see :mod:`edgeopt.backends.tensorrt.nms`)."""
        from edgeopt.backends.tensorrt.nms import rewrite_for_tensorrt

        return rewrite_for_tensorrt(onnx_path, task, dict(target.options), detector)

    def package_reference(self, outputs: dict, graph: dict) -> dict:
        from edgeopt.backends.tensorrt.nms import expected_outputs

        return expected_outputs(outputs, graph)

    def package_host_onnx(self, onnx_path: Path, graph: dict | None, work_dir: Path) -> Path:
        """Without the NMS plugin (TensorRT's, which ONNX Runtime lacks): the raw head the host's task decodes."""
        from edgeopt.backends.tensorrt.nms import without_plugin

        return without_plugin(onnx_path, graph, Path(work_dir) / "host_model.onnx")

    def package_preflight(self, onnx_path: Path, target: Target, spec: IOSpec, plan):
        from edgeopt.backends.tensorrt.lint import lint

        return lint(onnx_path, target, spec, tensorrt_version=plan.tensorrt)

    def device_requirements(self, cuda: str | None = None) -> list[str]:
        """TensorRT itself comes with JetPack; its Python side needs onnx and cuda-python of the device's CUDA."""
        cuda = str(cuda or "")
        return ["onnx", f"cuda-python=={cuda}.*" if re.fullmatch(r"\d+\.\d+", cuda) else "cuda-python"]

    def device_wheel_extra(self) -> str:
        return ""  # JetPack provides TensorRT (a venv with --system-site-packages sees it)

    def check_device(self, target: Target, what: str, run_there: str, force: bool = False) -> dict:
        try:
            trt = import_tensorrt()
        except BackendMissingError as exc:
            err = BackendMissingError("tensorrt", "tensorrt", f"build {what}")
            err.problem = f"{what} needs TensorRT and an NVIDIA GPU to build its engine: tensorrt is not installed here."
            err.fix = f"{run_there} {INSTALL_FIX}"
            err.args = (err.problem,)
            raise err from exc
        except EdgeoptError as exc:
            raise EdgeoptError(f"{what} needs TensorRT and an NVIDIA GPU: {exc.problem}",
                               f"{run_there} {exc.fix or ''}".strip()) from exc
        gpu, why = probe_gpu()
        if gpu is None:
            raise EdgeoptError(f"{what} needs an NVIDIA GPU to build its TensorRT engine; none is usable here ({why}).",
                               run_there)
        version = str(trt.__version__)
        declared = str(target.hardware.get("tensorrt") or "")
        problems = []
        mismatch = target_mismatch(target, gpu)
        if mismatch:
            problems.append(mismatch)
        if declared and parse_version(declared)[0] != parse_version(version)[0]:
            problems.append(f"the target declares TensorRT {declared} (JetPack {target.hardware.get('jetpack', '?')}); "
                            f"this device has TensorRT {version}")
        if problems and not force:
            raise UserInputError(f"This device is not the {target.name} device: " + "; ".join(problems) + ".",
                                 "Compile a package made for this device's target (`edgeopt targets`; jetson-thor for "
                                 "JetPack 7), or pass --force to build here anyway (the engine runs only on this device).")
        dla = target.options.get("dla_core")
        if dla is not None and int(dla) >= 0:
            cores = int(trt.Builder(trt.Logger(trt.Logger.WARNING)).num_DLA_cores)
            if int(dla) >= cores:
                raise UserInputError(f"{what} asks for DLA core {dla}; this device has {cores} DLA core(s).",
                                     "Set dla_core = -1 in the target (GPU only), or compile on a device with DLA (AGX "
                                     "Orin, Orin NX).")
        return {"backend": self.name, "version": version, "gpu": gpu, "mismatch_forced": problems or None}

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
