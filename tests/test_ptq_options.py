"""The stronger post-training options (compress/ptq.py): a recovery step that runs only when no plain candidate
met the budget, tries NNCF with one option changed (full bias correction; SmoothQuant's alpha for transformers)
on ONNX Runtime and OpenVINO, records what each changed, and hands each to the same guard as every candidate."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgeopt.compress import ptq
from edgeopt.compress.int8 import Int8Request, NothingMeetsBudget, run_int8
from edgeopt.compress.judging import Judging
from edgeopt.config.compression import CompressionConfig
from edgeopt.core.spec import IOSpec, TensorSpec

onnx = pytest.importorskip("onnx")
pytest.importorskip("nncf")
sys.path.insert(0, str(Path(__file__).parent))


class Spy(ptq.StrongerPtq):
    """The step as the loop runs it, keeping the loop's state to look at after a refusal."""

    def __init__(self):
        self.state = self.ran = None

    def run(self, state):
        self.state, self.ran = state, [r["candidate"] for r in state.results]
        return super().run(state)


def _cnn(tmp_path):
    """A small CNN with biases (random weights, seeded) as ONNX, its spec and 16 calibration feeds."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(m, torch.randn(1, 3, 16, 16), str(path), input_names=["image"], output_names=["y"],
                      dynamo=False)
    io = IOSpec((TensorSpec("image", (1, 3, 16, 16)),), outputs=("y",))
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(16)]
    return path, io, feeds


def _request(path, io, feeds, refs, **cfg):
    judging = Judging(CompressionConfig(timing_s=0.02, mixed_precision=False, accuracy_control=False, **cfg),
                      (feeds[:6], refs))
    target = SimpleNamespace(name="t", device="CPU", options={})
    return Int8Request(path, io, feeds, judging, "cnn", target=target, log=lambda *_: None)


def _ort(tmp_path, monkeypatch, **cfg):
    ort = pytest.importorskip("onnxruntime")
    from edgeopt.backends.onnxruntime.quantize import OrtQuantizer

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    path, io, feeds = _cnn(tmp_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [{"y": sess.run(None, f)[0]} for f in feeds[:6]]
    req = _request(path, io, feeds, refs, **{"candidates": ("nncf-qdq",), **cfg})
    (tmp_path / "work").mkdir(exist_ok=True)
    return OrtQuantizer(req, tmp_path / "work"), req


def test_the_options_are_offered_by_model_kind_and_key_the_cache():
    assert ptq.names_for("nncf-ov", "cnn") == ("nncf-ov-bc",)
    assert ptq.names_for("nncf-qdq", "detector") == ("nncf-qdq-bc",)
    assert ptq.names_for("nncf-qdq", "transformer") == ("nncf-qdq-sq50",)
    assert ptq.option_of("nncf-qdq") is None and ptq.base_of("nncf-ov-sq50") == "nncf-ov"
    kw = ptq.nncf_arguments(ptq.option_of("nncf-ov-bc"), {"subset_size": 8})
    assert kw == {"subset_size": 8, "fast_bias_correction": False}
    sq = ptq.nncf_arguments(ptq.option_of("nncf-qdq-sq50"), {})["advanced_parameters"].smooth_quant_alphas
    assert (sq.matmul, sq.convolution) == (0.5, -1)
    assert ptq.params_for("nncf-qdq") == {} and ptq.params_for("nncf-qdq-bc") != ptq.params_for("nncf-qdq-sq50")


def test_onnxruntime_step_runs_only_when_the_budget_is_missed(tmp_path, monkeypatch):
    """Within budget, the step never runs; over it (an exact cosine is asked), NNCF's recipe with full bias
    correction is quantized (its own cache key), timed, judged by the guard and refused like any candidate, with
    what it changed in its record."""
    q, req = _ort(tmp_path, monkeypatch, min_cosine=0.5)
    step = Spy()
    _, meta = run_int8(q, req, steps=[step])
    assert step.ran is None and [c["candidate"] for c in meta["int8"]["candidates"]] == ["nncf-qdq"]

    q, req = _ort(tmp_path, monkeypatch, min_cosine=1.0)
    step = Spy()
    with pytest.raises(NothingMeetsBudget) as err:
        run_int8(q, req, steps=[step])
    assert step.ran == ["nncf-qdq"]
    plain, bc = step.state.results
    assert bc["candidate"] == "nncf-qdq-bc" and bc["ptq_option"]["settings"] == {"fast_bias_correction": False}
    assert bc["within_budget"] is False and bc["cosine"] < 1.0 and "cosine" in bc["why"]
    assert "vs_fp32" in bc and bc["calibration_cache"] == "miss" and bc["quantize_s"] >= 0
    assert "nncf-qdq-bc: cosine" in str(err.value)
    assert q.params("nncf-qdq-bc") != q.params("nncf-qdq")
    # full bias correction moved the biases the fast one set: the two models differ in their constants
    a, b = (onnx.load(str(step.state.models[n])) for n in ("nncf-qdq", "nncf-qdq-bc"))
    init_a = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    init_b = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    assert any(k in init_a and init_a[k].shape == v.shape and not np.array_equal(init_a[k], v)
               for k, v in init_b.items())
    # again: both from the calibration cache
    q, req = _ort(tmp_path, monkeypatch, min_cosine=1.0)
    step = Spy()
    with pytest.raises(NothingMeetsBudget):
        run_int8(q, req, steps=[step])
    assert [r["calibration_cache"] for r in step.state.results] == ["hit", "hit"]
    # turned off: nothing tried
    q, req = _ort(tmp_path, monkeypatch, min_cosine=1.0, stronger_ptq=False)
    step = Spy()
    with pytest.raises(NothingMeetsBudget):
        run_int8(q, req, steps=[step])
    assert step.ran is None
    # a recipe that names its candidates without NNCF's gets no other recipe
    q, req = _ort(tmp_path, monkeypatch, min_cosine=1.0, candidates=("ort-qdq-u8s8",))
    step = Spy()
    with pytest.raises(NothingMeetsBudget):
        run_int8(q, req, steps=[step])
    assert step.ran is None


def test_openvino_step_tries_full_bias_correction(tmp_path, monkeypatch):
    ov = pytest.importorskip("openvino")
    from edgeopt.backends.openvino.quantize import OvQuantizer

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    path, io, feeds = _cnn(tmp_path)
    model = ov.Core().read_model(str(path))
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    refs = [{"y": compiled(f)[0]} for f in feeds[:6]]
    req = _request(path, io, feeds, refs, min_cosine=1.0)
    step = Spy()
    with pytest.raises(NothingMeetsBudget) as err:
        run_int8(OvQuantizer(req, model), req, steps=[step])
    assert step.ran == ["nncf-ov"]
    bc = step.state.results[-1]
    assert bc["candidate"] == "nncf-ov-bc" and bc["ptq_option"]["option"] == "bc"
    assert bc["within_budget"] is False and bc["cosine"] < 1.0 and "nncf-ov-bc: cosine" in str(err.value)
    assert any(op.get_type_name() == "FakeQuantize" for op in step.state.models["nncf-ov-bc"].get_ops())


def test_openvino_mixed_precision_falls_back_when_nncf_onnx_cannot_make_the_best_option(tmp_path, monkeypatch):
    """OpenVINO's mixed precision starts from NNCF's Q/DQ ONNX made with the most accurate candidate's option; where
    NNCF's ONNX backend cannot make it (its full bias correction fails on an LRASPP head's output: two corrected
    convolutions summed), the next candidate's option is used, not the whole step lost."""
    ov = pytest.importorskip("openvino")
    from edgeopt.backends.openvino.quantize import OvQuantizer

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    path, io, feeds = _cnn(tmp_path)
    model = ov.Core().read_model(str(path))
    req = _request(path, io, feeds, [{"y": np.zeros((1, 4), np.float32)}] * 6, min_cosine=1.0)
    q = OvQuantizer(req, model)
    real, asked = q.nncf.quantize, []

    def quantize(m, data, **kw):
        asked.append(kw.get("fast_bias_correction", True))
        if kw.get("fast_bias_correction") is False:
            raise RuntimeError("Failed to find node output or a constant initializer producing output: conv2d_54.")
        return real(m, data, **kw)

    monkeypatch.setattr(q.nncf, "quantize", quantize)
    logs = []
    state = SimpleNamespace(feeds=feeds, log=logs.append, models={"nncf-ov": object(), "nncf-ov-bc": object()},
                            results=[{"candidate": "nncf-ov", "accuracy": {"value": 0.9}},
                                     {"candidate": "nncf-ov-bc", "accuracy": {"value": 0.95}}])
    inp = q.mixed_input(state)
    assert asked == [False, True] and inp.name == "nncf-ov-mixed"
    assert any("nncf-ov-bc could not be made" in m for m in logs)
    assert any(n.op_type == "QuantizeLinear" for n in inp.qdq.graph.node)
    # nothing NNCF can make: the error is the step's
    monkeypatch.setattr(q.nncf, "quantize", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(RuntimeError, match="no"):
        q.mixed_input(state)


def test_a_stronger_candidate_within_budget_is_picked(tmp_path, monkeypatch):
    """Through the loop with the toy backend: the plain candidate is wrecked (weights negated) and refused by the
    guard; the step's candidate meets the budget and ships, both recorded."""
    from test_int8_loop import toy_request
    from toy_backend.quantize import ToyQuantizer

    class Toy(ToyQuantizer):
        def candidates(self, kind, cfg):
            return ("toy-wrecked",)

        def stronger(self, kind):  # "-bc": a stronger variant of the recipe tried (compress/ptq.py)
            return ("toy-wrecked-bc",)

        def quantize(self, name, feeds, exclude):
            if name == "toy-wrecked-bc":  # a sound quantization
                return super().quantize("toy-int8-per-channel", feeds, exclude)
            dst, notes = super().quantize(name, feeds, exclude)
            if name == "toy-wrecked":
                m = onnx.load(str(dst))
                for t in m.graph.initializer:
                    if t.name.endswith("_int8"):
                        t.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(t), t.name))
                onnx.save(m, str(dst))
            return dst, notes

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    req = toy_request(tmp_path, 0.9)
    step = Spy()
    _, meta = run_int8(Toy(req, tmp_path), req, steps=[step])
    wrecked, strong = meta["int8"]["candidates"]
    assert step.ran == ["toy-wrecked"] and not wrecked["within_budget"]
    assert strong["within_budget"] and meta["int8"]["recipe"] == "toy-wrecked-bc"
