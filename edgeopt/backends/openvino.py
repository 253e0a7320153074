"""OpenVINO: Intel/AMD/ARM CPUs, Intel GPUs and NPUs. ONNX -> IR (xml + bin)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import CompileError
from ..spec import IOSpec
from ..targets import Target
from .base import Backend, CompileRequest, Runner

IR_FILE = "model.xml"
# The execution precision each artifact precision must run in. OpenVINO picks bf16 by itself on CPUs
# that have it, so an artifact labelled fp32 must say f32 explicitly.
EXEC_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None}


@lru_cache(maxsize=1)
def _core():
    import openvino as ov

    return ov.Core()


def device_capabilities(device: str) -> set[str]:
    try:
        return set(_core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - device absent
        return set()


class OvRunner(Runner):
    def __init__(self, xml: Path, spec: IOSpec, device: str, config: dict):
        super().__init__(spec)
        self.xml, self.device, self.config = xml, device, config
        self.compiled = self.request = None

    def _activate(self):
        core = _core()
        model = core.read_model(str(self.xml)) if isinstance(self.xml, (str, Path)) else self.xml  # or an ov.Model
        self.compiled = core.compile_model(model, self.device, self.config)
        self.request = self.compiled.create_infer_request()
        wanted = set(self.spec.outputs)
        # An OpenVINO port can carry several tensor names; prefer the one the model spec uses.
        self.outputs = [(next((n for n in sorted(o.get_names()) if n in wanted), o.get_any_name()), o)
                        for o in self.compiled.outputs]

    def _infer(self, feed):
        res = self.request.infer(feed)
        return {name: res[port].copy() for name, port in self.outputs}

    def _close(self):
        self.request = self.compiled = None

    @property
    def threads(self) -> int | None:
        try:
            return int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        except Exception:  # noqa: BLE001 - not every device reports threads
            return None

    def properties(self) -> dict:
        out = {}
        for key in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
            try:
                v = self.compiled.get_property(key)
                out[key] = v.to_string() if hasattr(v, "to_string") else str(v)
            except Exception:  # noqa: BLE001
                pass
        return out


class OpenVinoBackend(Backend):
    name = "openvino"
    module = "openvino"
    distribution = "openvino"
    extra = "openvino"

    def device_missing(self, target: Target) -> str | None:
        devices = _core().available_devices
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
        cfg = {"PERFORMANCE_HINT": options.get("performance_hint", "LATENCY")}
        if EXEC_PRECISION.get(precision):
            cfg["INFERENCE_PRECISION_HINT"] = EXEC_PRECISION[precision]
        if options.get("threads"):
            cfg["INFERENCE_NUM_THREADS"] = int(options["threads"])
        return cfg

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
            from ..compress import quantize_for_openvino

            model, meta = quantize_for_openvino(req, model)
        # save_model compresses weights to FP16 by default: only the fp16 artifact wants that.
        ov.save_model(model, str(xml), compress_to_fp16=(req.precision == "fp16"))
        config = self.runtime_config(req.target, req.precision, req.options)
        return {**meta, "model_file": IR_FILE, "device": req.target.device, "runtime_config": config,
                "weights": "fp16" if req.precision == "fp16" else ("int8" if req.precision == "int8" else "fp32")}

    def open(self, artifact_dir: Path, meta: dict, spec: IOSpec, target: Target, threads: int | None = None) -> Runner:
        self.require()
        config = dict(meta.get("runtime_config", {}))
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        return OvRunner(Path(artifact_dir) / meta.get("model_file", IR_FILE), spec, target.device, config)


BACKEND = OpenVinoBackend()
