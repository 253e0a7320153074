"""ONNX Runtime runner: a session over model.onnx with the target's options, and run_onnx for one-off checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeopt.errors import CompileError
from edgeopt.core.spec import IOSpec
from edgeopt.core.untrusted import cap_threads
from edgeopt.backends.base import Runner
from edgeopt.backends.reference import HostReference

LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


MODEL_FILE = "model.onnx"
ORT_TYPES = {"float": "f32", "float16": "f16", "bfloat16": "bf16", "uint8": "u8", "int8": "i8", "int32": "i32",
             "int64": "i64", "bool": "bool", "double": "f64"}


def session_options(ort, options: dict, level_key: str = "graph_optimization_level", default: str = "all"):
    so = ort.SessionOptions()
    level = options.get(level_key, default)
    if level not in LEVELS:
        raise CompileError(f"Unknown ONNX Runtime optimization level {level!r}.", f"Use one of {list(LEVELS)}.")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    threads = cap_threads(options.get("intra_op_threads", 0), "intra_op_threads")
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = cap_threads(options.get("inter_op_threads", 1) or 1, "inter_op_threads")
    so.log_severity_level = 3
    return so


class OrtRunner(Runner):
    def __init__(self, model_path: Path, spec: IOSpec, options: dict):
        super().__init__(spec)
        self.model_path, self.options, self.session = model_path, options, None

    def _activate(self):
        import onnxruntime as ort

        so = session_options(ort, self.options)
        self.session = ort.InferenceSession(str(self.model_path), so, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _infer(self, feed):
        outs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outs))

    def timed_call(self, feed):
        """As ONNX Runtime's perf test runs it: inputs and preallocated outputs bound once (IO binding),
        so a call is the session run alone. Outputs whose shape changes between runs are left to ORT."""
        if not self.active:
            raise RuntimeError("OrtRunner.timed_call called before activate(); use `with runner:`")
        session = self.session
        io = session.io_binding()
        arrays = {name: np.ascontiguousarray(arr) for name, arr in feed.items()}
        for name, arr in arrays.items():
            io.bind_cpu_input(name, arr)
        buffers = [np.empty_like(o) for o in session.run(self.output_names, arrays)]
        for name, buf in zip(self.output_names, buffers):
            io.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        try:
            session.run_with_iobinding(io)
        except Exception:  # noqa: BLE001 - data-dependent output shapes (detectors): ORT allocates them
            io.clear_binding_outputs()
            for name in self.output_names:
                io.bind_output(name, "cpu")

        def call(io=io, keep=(arrays, buffers)):
            session.run_with_iobinding(io)

        return call

    def layer_profile(self, feed, runs: int, workdir: Path) -> dict | None:
        """ONNX Runtime's profiler (session option enable_profiling) on a session of its own: each node's
        kernel time, its operator and the element type of its first input (what the kernel ran in; an int8
        QLinearConv reads uint8). The trace JSON is written into ``workdir`` and kept there."""
        import json

        import onnxruntime as ort

        from edgeopt.core.profile import summarize_layers

        so = session_options(ort, self.options)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(workdir) / "onnxruntime-profile")
        sess = ort.InferenceSession(str(self.model_path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(self.output_names, feed)
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text())
        model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[1:]
        per_run = [dict() for _ in model_runs]
        kinds = {}
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            i = next((i for i, (a, b) in enumerate(model_runs) if a <= e["ts"] <= b), None)
            if i is None:
                continue  # the untimed first run
            name = e["name"][: -len("_kernel_time")]
            args = e.get("args", {})
            first = (args.get("input_type_shape") or [{}])[0]
            kinds[name] = (args.get("op_name", "?"), ORT_TYPES.get(next(iter(first), "?"), next(iter(first), "?")))
            per_run[i][name] = per_run[i].get(name, 0.0) + e["dur"] / 1000.0
        out = summarize_layers(per_run, kinds, "onnxruntime profiler (kernel time)",
                               [(b - a) / 1000.0 for a, b in model_runs])
        out["trace"] = trace.name
        return out

    def _close(self):
        self.session = None

    @property
    def threads(self) -> int:
        n = cap_threads(self.options.get("intra_op_threads", 0))
        return n or physical_cores()


def physical_cores() -> int:
    """ONNX Runtime's default intra-op pool size: the physical cores this process may use."""
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "physical id":
                    phys = v.strip()
                elif k == "core id":
                    core = v.strip()
                elif not line.strip() and core is not None:
                    cores.add((phys, core))
                    phys = core = None
        allowed = len(os.sched_getaffinity(0))
        return max(1, min(len(cores) or allowed, allowed))
    except (OSError, AttributeError):
        return os.cpu_count() or 1


def run_onnx(path: Path, feeds: list[dict[str, np.ndarray]], spec: IOSpec | None = None) -> list[dict[str, np.ndarray]]:
    """Run an ONNX file on ORT without graph changes (the exporter's own parity check)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, f))) for f in feeds]


class OrtReference(HostReference):
    """ONNX Runtime's CPU provider as the host's reference executor (see :mod:`edgeopt.backends.reference`)."""

    name = distribution = "onnxruntime"
    extra = "onnxruntime"

    def installed(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("onnxruntime") is not None

    def run(self, onnx_path: Path, feeds: list[dict[str, np.ndarray]], *,
            optimize: bool = True) -> list[dict[str, np.ndarray]]:
        if optimize:
            return run_onnx(onnx_path, feeds)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return [dict(zip(names, sess.run(names, f))) for f in feeds]
