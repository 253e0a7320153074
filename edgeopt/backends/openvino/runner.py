"""OpenVINO runner: a compiled model on the target device with the runtime settings recorded in the artifact."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgeopt.core.spec import IOSpec
from edgeopt.backends.base import Runner

IR_FILE = "model.xml"


EXEC_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None}


@lru_cache(maxsize=1)
def ov_core():
    import openvino as ov

    return ov.Core()


def device_capabilities(device: str) -> set[str]:
    try:
        return set(ov_core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - device absent
        return set()


OV_PRECISIONS = {"FP32": "f32", "F32": "f32", "BF16": "bf16", "FP16": "f16", "F16": "f16", "I8": "i8", "U8": "u8",
                 "I32": "i32", "I64": "i64", "U1": "u1", "I4": "i4", "U4": "u4"}


def ov_precision(exec_type: str) -> str:
    """The precision of an OpenVINO kernel from its exec type (``brgconv_avx512_I8`` -> i8)."""
    tail = exec_type.rsplit("_", 1)[-1].upper()
    return OV_PRECISIONS.get(tail, tail.lower() or "?")


class OvRunner(Runner):
    """An OpenVINO compiled model. Thread-safe: an infer request holds one call's inputs and outputs, so
    each concurrent ``infer`` takes its own request from a pool (created on demand, kept for reuse); the
    compiled model itself is shared."""

    def __init__(self, xml: Path, spec: IOSpec, device: str, config: dict):
        super().__init__(spec)
        self.xml, self.device, self.config = xml, device, config
        self.compiled = None
        self._idle: list = []  # infer requests no call is using
        self._pool_lock = threading.Lock()

    def _activate(self):
        core = ov_core()
        model = core.read_model(str(self.xml)) if isinstance(self.xml, (str, Path)) else self.xml  # or an ov.Model
        self.compiled = core.compile_model(model, self.device, self.config)
        self._idle = [self.compiled.create_infer_request()]
        wanted = set(self.spec.outputs)
        # An OpenVINO port can carry several tensor names; prefer the one the model spec uses.
        self.outputs = [(next((n for n in sorted(o.get_names()) if n in wanted), o.get_any_name()), o)
                        for o in self.compiled.outputs]

    def _take_request(self):
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
            compiled = self.compiled
        if compiled is None:
            raise RuntimeError("OvRunner.infer called after close()")
        return compiled.create_infer_request()

    def _give_back(self, request) -> None:
        with self._pool_lock:
            if self.compiled is not None:
                self._idle.append(request)

    def _infer(self, feed):
        request = self._take_request()
        try:
            # Inputs are read in place (no copy); outputs are views of the request's buffers, copied once
            # before the request is reused.
            res = request.infer(feed, share_inputs=True, share_outputs=True)
            return {name: res[port].copy() for name, port in self.outputs}
        finally:
            self._give_back(request)

    def timed_call(self, feed):
        """As benchmark_app runs it: a request of its own with the inputs set once (shared, not copied),
        started and waited for; outputs stay in the request."""
        import openvino as ov

        if not self.active:
            raise RuntimeError("OvRunner.timed_call called before activate(); use `with runner:`")
        request = self.compiled.create_infer_request()
        for name, arr in feed.items():
            request.set_tensor(name, ov.Tensor(np.ascontiguousarray(arr), shared_memory=True))

        def call():
            request.start_async()
            request.wait()

        return call

    def layer_profile(self, feed, runs: int, workdir: Path) -> dict | None:
        """OpenVINO's performance counters (PERF_COUNT) on a compiled model of its own, with the artifact's
        settings: each executed layer's real time, its type and the precision its kernel ran in (the suffix
        of the exec type: jit_avx512_I8, brgconv_avx512_BF16 ...). Nothing is written."""
        from edgeopt.core.profile import summarize_layers

        core = ov_core()
        model = core.read_model(str(self.xml)) if isinstance(self.xml, (str, Path)) else self.xml
        compiled = core.compile_model(model, self.device, {**self.config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        request.infer(feed)
        per_run, kinds, totals = [], {}, []
        for _ in range(runs):
            request.infer(feed, share_inputs=True, share_outputs=True)
            run = {}
            for info in request.get_profiling_info():
                if str(info.status).split(".")[-1] != "EXECUTED":
                    continue
                exec_type = str(info.exec_type)
                kinds[info.node_name] = (str(info.node_type), ov_precision(exec_type))
                run[info.node_name] = run.get(info.node_name, 0.0) + info.real_time.total_seconds() * 1000.0
            per_run.append(run)
            totals.append(request.latency)
        return summarize_layers(per_run, kinds, "openvino performance counters (real time)", totals)

    def _close(self):
        with self._pool_lock:
            self._idle = []
            self.compiled = None

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


def runtime_config(precision: str, options: dict) -> dict:
    """The OpenVINO compile settings an artifact of ``precision`` runs with, from the target's options."""
    cfg = {"PERFORMANCE_HINT": options.get("performance_hint", "LATENCY")}
    if EXEC_PRECISION.get(precision):
        cfg["INFERENCE_PRECISION_HINT"] = EXEC_PRECISION[precision]
    if options.get("threads"):
        cfg["INFERENCE_NUM_THREADS"] = int(options["threads"])
    return cfg
