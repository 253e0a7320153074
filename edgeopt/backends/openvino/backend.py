"""OpenVINO: Intel/AMD/ARM CPUs, Intel GPUs and NPUs. ONNX -> IR (xml + bin)."""

from __future__ import annotations

from pathlib import Path

import re

from edgeopt.errors import CompileError, IntegrityError
from edgeopt.core.untrusted import check_settings, confined, int_in, one_of, printable
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.config.options import Option
from edgeopt.core.checks import boolean, choice, integer
from edgeopt.backends.base import NMS_OPTION, Backend, CompileRequest, Runner

from edgeopt.backends.openvino.runner import IR_FILE, OvRunner, device_capabilities, ov_core, runtime_config


# What an artifact's runtime_config may hold: the settings runtime_config() writes, nothing that names a path.
RUNTIME_SETTINGS = {
    "PERFORMANCE_HINT": one_of("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"),
    "INFERENCE_PRECISION_HINT": one_of("f32", "bf16", "f16"),
    "INFERENCE_NUM_THREADS": int_in(0, 4096),
    "NUM_STREAMS": int_in(0, 4096),
}
_DEVICE_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[0-9]+)?$")


class OpenVinoBackend(Backend):
    name = "openvino"
    module = "openvino"
    distribution = "openvino"
    extra = "openvino"
    libraries = ("openvino",)
    options = (
        Option("performance_hint", "OpenVINO's PERFORMANCE_HINT: LATENCY | THROUGHPUT | CUMULATIVE_THROUGHPUT",
               choice("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")),
        Option("threads", "INFERENCE_NUM_THREADS (0: OpenVINO's choice)", integer(0, 4096)),
        Option("measure_runtime_settings", "time the runtime settings and record the faster (default true)",
               boolean),
        NMS_OPTION,
    )

    def details(self) -> dict:
        try:
            import openvino as ov

            core = ov.Core()
            return {"devices": {d: core.get_property(d, "FULL_DEVICE_NAME") for d in core.available_devices}}
        except Exception as exc:  # noqa: BLE001
            return {"devices_error": str(exc)}

    def device_missing(self, target: Target) -> str | None:
        devices = ov_core().available_devices
        if not any(d.split(".")[0] == target.device for d in devices):
            return f"no OpenVINO {target.device} device here (found: {', '.join(devices) or 'none'})"
        return None

    def precisions_here(self, target: Target) -> tuple[str, ...]:
        caps = device_capabilities(target.device)
        out = []
        for p in target.precisions:
            if p == "bf16" and "BF16" not in caps:
                continue
            if p == "fp16" and "FP16" not in caps:
                continue
            out.append(p)
        return tuple(out)

    def precision_unavailable(self, target: Target, precision: str) -> str | None:
        if precision in self.precisions_here(target):
            return None
        caps = ", ".join(sorted(device_capabilities(target.device))) or "none reported"
        return f"the {target.device} here cannot execute {precision} (capabilities: {caps})"

    def runtime_config(self, target: Target, precision: str, options: dict) -> dict:
        return runtime_config(precision, options)

    def compile(self, req: CompileRequest) -> dict:
        ov = self.require()
        xml = Path(req.out_dir) / IR_FILE
        try:
            model = ov.convert_model(str(req.onnx_path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises generic errors
            raise CompileError(f"OpenVINO could not convert the ONNX model: {exc}",
                               "Check the operator named above against OpenVINO's supported ONNX operators.") from exc
        meta = {}
        if req.precision == "int8":
            from edgeopt.backends.openvino.quantize import quantize_for_openvino

            model, meta = quantize_for_openvino(req, model)
        # save_model compresses weights to FP16 by default: only the fp16 artifact wants that.
        ov.save_model(model, str(xml), compress_to_fp16=(req.precision == "fp16"))
        config = self.runtime_config(req.target, req.precision, req.options)
        choice = (meta.get("int8") or {}).get("runtime_choice")
        if choice:  # measured while quantizing: the settings the artifact runs with, and why
            config = dict(choice["config"])
        from edgeopt.backends.openvino.settings import choose_streams

        streams = choose_streams(model, req, config)
        if streams:  # feeds of several items: split over streams only where that measured faster
            meta["streams_choice"] = streams
            req.log(f"openvino runtime: {streams['setting']}: {streams['chosen']}: {streams['why']}")
            if streams["config"]:
                meta["batch_runtime_config"] = dict(streams["config"])
        return {**meta, "model_file": IR_FILE, "device": req.target.device, "runtime_config": config,
                "weights": "fp16" if req.precision == "fp16" else ("int8" if req.precision == "int8" else "fp32")}

    def open(self, artifact_dir: Path, meta: dict, spec: IOSpec, target: Target, threads: int | None = None) -> Runner:
        self.require()
        # artifact.json is untrusted (it may come from a bundle): settings from an allow-list, no paths
        # (CACHE_DIR and the like), the model file inside the artifact folder.
        config = check_settings(meta.get("runtime_config"), RUNTIME_SETTINGS, "OpenVINO runtime setting")
        batch_config = (check_settings(meta["batch_runtime_config"], RUNTIME_SETTINGS, "OpenVINO runtime setting")
                        if meta.get("batch_runtime_config") else None)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
            if batch_config:
                batch_config["INFERENCE_NUM_THREADS"] = threads
        xml = confined(Path(artifact_dir), meta.get("model_file", IR_FILE), "OpenVINO model file")
        if not _DEVICE_RE.match(str(target.device)):
            raise IntegrityError(f"Refused OpenVINO device {printable(target.device, 80)!r}: not a device name.",
                                 "Rebuild the artifact (or get the bundle again from its source).")
        return OvRunner(xml, spec, target.device, config, batch_config)


BACKEND = OpenVinoBackend()
