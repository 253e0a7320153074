"""Device packages for TensorRT: the ONNX form the device's TensorRT parses (FP16, INT8 Q/DQ), the NMS choice,
the preflight, and the checks that the device compiling a package is the target's (an engine runs only on the GPU
and TensorRT version that built it)."""

from __future__ import annotations

import re
from pathlib import Path

from edgeopt.errors import BackendMissingError, EdgeoptError, UserInputError
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.backends.packaging import DevicePackaging
from edgeopt.backends.tensorrt.backend import BACKEND
from edgeopt.backends.tensorrt.builder import make_builder
from edgeopt.backends.tensorrt.cuda import probe_gpu
from edgeopt.backends.tensorrt.install import INSTALL_FIX, import_tensorrt
from edgeopt.backends.tensorrt.operators import parse_version
from edgeopt.backends.tensorrt.plan import build_plan
from edgeopt.backends.tensorrt.record import target_mismatch


class TensorRTPackaging(DevicePackaging):
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
            cores = int(make_builder(trt, trt.Logger(trt.Logger.WARNING)).num_DLA_cores)
            if int(dla) >= cores:
                raise UserInputError(f"{what} asks for DLA core {dla}; this device has {cores} DLA core(s).",
                                     "Set dla_core = -1 in the target (GPU only), or compile on a device with DLA (AGX "
                                     "Orin, Orin NX).")
        return {"backend": self.backend.name, "version": version, "gpu": gpu, "mismatch_forced": problems or None}


PACKAGING = TensorRTPackaging(BACKEND)
