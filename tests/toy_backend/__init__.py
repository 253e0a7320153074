"""A toy backend that lives outside edgeopt: it 'compiles' by copying the ONNX and runs it with ONNX's own
reference evaluator (pure Python); its INT8 (int8 weights, quantize.py) goes through edgeopt's INT8 loop by the
quantizer interface alone. It exists to show that a backend is one folder plus one registry line."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeopt.backends.base import Backend, CompileRequest, Runner
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target

MODEL_FILE = "toy.onnx"


class ToyRunner(Runner):
    def __init__(self, path: Path, spec: IOSpec):
        super().__init__(spec)
        self.path = path

    def _activate(self) -> None:
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(str(self.path))

    def _infer(self, feed):
        outs = self.evaluator.run(None, feed)
        return dict(zip(self.spec.outputs, outs))


class ToyBackend(Backend):
    name = "toy"
    module = "onnx"
    distribution = "onnx"
    extra = "torch"

    def compile(self, req: CompileRequest) -> dict:
        meta = {}
        if req.precision == "int8":  # through edgeopt's INT8 loop, with this backend's quantizer
            import tempfile

            from edgeopt.compress.int8 import run_int8
            from toy_backend.quantize import ToyQuantizer

            with tempfile.TemporaryDirectory(prefix="toy-int8-") as tmp:
                model, meta = run_int8(ToyQuantizer(req, Path(tmp)), req)
                shutil.copyfile(model, Path(req.out_dir) / MODEL_FILE)
        else:
            shutil.copyfile(req.onnx_path, Path(req.out_dir) / MODEL_FILE)
        return {**meta, "model_file": MODEL_FILE, "evaluator": "onnx.reference"}

    def open(self, artifact_dir: Path, meta: dict, spec: IOSpec, target: Target, threads: int | None = None) -> Runner:
        from edgeopt.core.untrusted import confined

        return ToyRunner(confined(Path(artifact_dir), meta["model_file"], "toy model file"), spec)


BACKEND = ToyBackend()
