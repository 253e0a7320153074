"""The INT8 loop (compress/int8.py) on its own, with the toy backend's quantizer (tests/toy_backend): recovery
steps get the loop's state, and what they make is timed, judged and recorded like any candidate."""

import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.compress.int8 import Int8Request, NothingMeetsBudget, run_int8
from edgeopt.compress.judging import Judging
from edgeopt.compress.quantizer import Candidate
from edgeopt.config.compression import CompressionConfig
from edgeopt.core.spec import IOSpec, TensorSpec

pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).parent))


def _model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w2"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "w"),
                               numpy_helper.from_array(rng.normal(size=(64, 5)).astype(np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class KeepInFloat:
    """A recovery step: the first candidate again with ``nodes`` left in float."""

    name = "keep in float"

    def __init__(self, nodes):
        self.nodes, self.seen = nodes, None

    def applies(self, state) -> bool:
        return True

    def run(self, state):
        self.seen = [r["candidate"] for r in state.results]
        model, notes = state.quantizer.quantize("toy-int8-per-channel", state.feeds, self.nodes)
        return [Candidate("toy-keep-float", model, {**notes, "calibration_cache": "off"}, recovered=True)]


def toy_request(tmp_path, min_cosine):
    """An INT8 request for the toy model, judged by output cosine against the toy backend's FP32 runs."""
    from toy_backend import ToyRunner

    spec = IOSpec((TensorSpec("x", (1, 2, 4, 4)),), outputs=("y",))
    src = _model(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)} for _ in range(6)]
    with ToyRunner(src, spec) as fp32:
        refs = [fp32.infer(f) for f in feeds]
    judging = Judging(CompressionConfig(min_cosine=min_cosine, timing_s=0.02), (feeds, refs))
    return Int8Request(src, spec, feeds, judging, "cnn", log=lambda *_: None)


def _run(tmp_path, min_cosine, steps, quantizer=None):
    from toy_backend.quantize import ToyQuantizer

    req = toy_request(tmp_path, min_cosine)
    return run_int8((quantizer or ToyQuantizer)(req, tmp_path), req, steps=steps)


def test_recovery_steps_run_only_when_the_budget_is_missed(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    step = KeepInFloat(["conv", "mm"])
    _, meta = _run(tmp_path, 0.9, [step])
    assert step.seen is None and meta["int8"]["recipe"].startswith("toy-int8")
    assert all("vs_fp32" in c and c["cosine"] > 0.9 for c in meta["int8"]["candidates"])
    # Over budget (an exact cosine is asked): the step gets what was tried, and its candidate is judged too;
    # with every layer in float it is held to have no INT8 left, and nothing is shipped.
    with pytest.raises(NothingMeetsBudget) as err:
        _run(tmp_path, 1.0, [step])
    assert step.seen == ["toy-int8-per-channel", "toy-int8-per-tensor"]
    text = str(err.value)
    assert "toy-keep-float" in text and "no INT8 left" in text and "toy-int8-per-tensor: cosine" in text, text


def test_a_setting_chosen_for_speed_that_loses_the_budget_gives_way_to_the_exact_one(tmp_path, monkeypatch):
    """A quantizer whose default runtime setting is faster but lossier (OpenVINO's bf16 float remainder): the loop
    judges the exact setting too when the chosen one is over budget, and ships that one, saying why."""
    from toy_backend import ToyRunner
    from toy_backend.quantize import ToyQuantizer

    class Lossy(ToyRunner):  # the "fast" setting: its outputs carry an error no INT8 recipe caused
        def _infer(self, feed):
            out = super()._infer(feed)
            return {k: v + np.float32(0.5) * np.abs(v).mean() * np.sign(np.arange(v.size).reshape(v.shape) % 2 - 0.5)
                    for k, v in out.items()}

    class TwoSettings(ToyQuantizer):
        def variants(self, name, model, runner):
            return {f"{name} exact": ToyRunner(Path(model), self.req.spec)}

        def open(self, model):
            return Lossy(Path(model), self.req.spec)

        def open_fp32(self):
            return ToyRunner(self.onnx_path, self.req.spec)

        def choose(self, name, timed):
            return {"setting": "precision", "chosen": "fast", "why": "faster"}, name

        def exact(self, name, timed):
            return {"setting": "precision", "chosen": "exact", "why": "exact"}, f"{name} exact"

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    _, meta = _run(tmp_path, 0.99, [], TwoSettings)
    rec = meta["int8"]
    assert rec["runtime_choice"]["chosen"] == "exact", rec["runtime_choice"]
    assert "over budget with the faster setting (cosine" in rec["runtime_choice"]["why"]
    win = next(c for c in rec["candidates"] if c["candidate"] == rec["recipe"])
    assert win["within_budget"] and win["cosine"] > 0.99
    # without the exact setting the same candidates are refused: the lossy setting alone is over budget
    TwoSettings.exact = lambda self, name, timed: None
    with pytest.raises(NothingMeetsBudget):
        _run(tmp_path, 0.99, [], TwoSettings)
