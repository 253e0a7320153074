"""A toy backend that lives outside edgeopt: it 'compiles' by copying the ONNX and runs it with ONNX's own
reference evaluator (pure Python). It exists to show that a backend is one folder plus one registry line."""

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
        shutil.copyfile(req.onnx_path, Path(req.out_dir) / MODEL_FILE)
        return {"model_file": MODEL_FILE, "evaluator": "onnx.reference"}

    def open(self, artifact_dir: Path, meta: dict, spec: IOSpec, target: Target, threads: int | None = None) -> Runner:
        from edgeopt.core.untrusted import confined

        return ToyRunner(confined(Path(artifact_dir), meta["model_file"], "toy model file"), spec)


BACKEND = ToyBackend()
