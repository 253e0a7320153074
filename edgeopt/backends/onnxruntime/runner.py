"""ONNX Runtime runner: a session over model.onnx with the target's options, and run_onnx for one-off checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeopt.errors import CompileError
from edgeopt.core.spec import IOSpec
from edgeopt.backends.base import Runner

LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


MODEL_FILE = "model.onnx"


def session_options(ort, options: dict, level_key: str = "graph_optimization_level", default: str = "all"):
    so = ort.SessionOptions()
    level = options.get(level_key, default)
    if level not in LEVELS:
        raise CompileError(f"Unknown ONNX Runtime optimization level {level!r}.", f"Use one of {list(LEVELS)}.")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    threads = int(options.get("intra_op_threads", 0) or 0)
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = int(options.get("inter_op_threads", 1) or 1)
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

    def _close(self):
        self.session = None

    @property
    def threads(self) -> int:
        n = int(self.options.get("intra_op_threads", 0) or 0)
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


def run_onnx(path: Path, feeds: list[dict[str, np.ndarray]], spec: IOSpec) -> list[dict[str, np.ndarray]]:
    """Run an ONNX file on ORT without graph changes (the exporter's own parity check)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, f))) for f in feeds]
