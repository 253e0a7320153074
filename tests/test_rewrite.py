"""Graph rewrites that keep hard-swish and squeeze-excitation in INT8 on ONNX Runtime (compress/rewrite.py)."""

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.pipeline.build import build
from edgeopt.backends.onnxruntime.rewrite import hard_swish_in_int8, prepare_for_int8
from edgeopt.config.recipe import recipe_from_dict
from edgeopt.report.progress import Reporter

from conftest import MODELS

ort = pytest.importorskip("onnxruntime")


def _se_block(hard_sigmoid_alpha=1 / 6, mean_axes=(-1, -2), keepdims=1):
    """x -> Conv -> h = x*HardSigmoid(x) -> h * HardSigmoid(Conv(ReduceMean(h))), the pattern ONNX Runtime's
    pre-processing leaves in a MobileNetV3 block."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32), "w2")
    axes = numpy_helper.from_array(np.array(mean_axes, np.int64), "axes")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("HardSigmoid", ["c"], ["c_sig"], alpha=hard_sigmoid_alpha, beta=0.5),
        helper.make_node("Mul", ["c", "c_sig"], ["h"]),
        helper.make_node("ReduceMean", ["h", "axes"], ["m"], keepdims=keepdims),
        helper.make_node("Conv", ["m", "w2"], ["s"]),
        helper.make_node("HardSigmoid", ["s"], ["s_sig"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["h", "s_sig"], ["se"]),
        helper.make_node("Conv", ["se", "w2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w1, w2, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def test_float_rewrites_are_exact():
    x = np.random.default_rng(1).normal(0, 2, (1, 4, 16, 16)).astype(np.float32)
    model = _se_block()
    before = _run(model, x)
    counts = prepare_for_int8(model)
    onnx.checker.check_model(model, full_check=True)
    assert counts == {"ReduceMean->GlobalAveragePool": 1, "x*HardSigmoid(x)->HardSwish": 1}
    ops = _ops(model)
    assert ops["HardSwish"] == 1 and ops["GlobalAveragePool"] == 1 and "ReduceMean" not in ops
    assert ops["HardSigmoid"] == 1  # the excitation's gate multiplies another tensor: not a hard-swish
    assert "axes" not in {t.name for t in model.graph.initializer}  # no dangling initializer is left
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{"hard_sigmoid_alpha": 0.2}, {"mean_axes": (1,)}, {"keepdims": 0}])
def test_lookalikes_are_left_alone(kw):
    model = _se_block(**kw)
    counts = prepare_for_int8(model)
    changed = {"hard_sigmoid_alpha": "x*HardSigmoid(x)->HardSwish"}.get(next(iter(kw)), "ReduceMean->GlobalAveragePool")
    assert counts[changed] == 0


def _quantize(model, tmp_path, name, activations="u8"):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(2)
    feeds = iter([{"x": rng.normal(0, 2, (1, 4, 16, 16)).astype(np.float32)} for _ in range(16)])

    class Reader:
        def get_next(self):
            return next(feeds, None)

    src, dst = tmp_path / f"{name}-float.onnx", tmp_path / f"{name}-int8.onnx"
    onnx.save(model, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8, per_channel=True)
    return onnx.load(str(dst))


def _optimized_ops(model, tmp_path):
    """The operators ONNX Runtime really runs, after its QDQ fusions."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return _ops(onnx.load(str(tmp_path / "optimized.onnx")))


@pytest.mark.parametrize("activations", ["u8", "s8"])
def test_hard_swish_runs_in_int8_kernels(tmp_path, activations):
    x = np.random.default_rng(3).normal(0, 2, (1, 4, 16, 16)).astype(np.float32)
    reference = _run(_se_block(), x)
    plain = _quantize(_se_block(), tmp_path, "plain", activations)
    model = _se_block()
    prepare_for_int8(model)
    fused = _quantize(model, tmp_path, "fused", activations)
    assert hard_swish_in_int8(fused) == 1
    onnx.checker.check_model(fused, full_check=True)
    assert "HardSwish" not in _ops(fused)
    if activations == "u8":  # ORT's CPU kernels fuse QDQ Add/Mul for u8 activations only (s8 stays float)
        ops = _optimized_ops(fused, tmp_path)
        # The hard-swish and the squeeze run as INT8 kernels; only the excitation's tiny gate stays in float.
        assert ops["QLinearAdd"] >= 1 and ops["QLinearMul"] >= 2 and ops["QLinearGlobalAveragePool"] == 1
        assert "ReduceMean" not in ops and "HardSwish" not in ops and ops["HardSigmoid"] <= 1
        assert _optimized_ops(plain, tmp_path)["HardSigmoid"] == 2  # without the rewrites both stay in float

    def cosine(a, b):
        return float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))

    # Same accuracy class as the plain recipe: the hard-sigmoid is quantized to 1/255 steps.
    assert cosine(_run(fused, x), reference) >= 0.99
    assert cosine(_run(fused, x), reference) >= cosine(_run(plain, x), reference) - 0.01


def test_fused_candidate_in_a_build_records_its_rewrites(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", image=rng.uniform(0, 1, (32, 3, 32, 32)).astype(np.float32))
    recipe = recipe_from_dict({
        "model": {"source": f"{MODELS / 'tiny.py'}:hardswish_se", "kind": "cnn"},
        "inputs": [{"name": "image", "shape": [1, 3, 32, 32], "range": [0, 1]}],
        "targets": ["ort-cpu"], "precisions": ["int8"],
        "calibration": {"source": "calib.npz", "size": 32},
        "compression": {"candidates": ["ort-qdq-u8s8", "ort-qdq-u8s8-fused"], "min_cosine": 0.95},
        "task": {"type": "generic"},  # random weights, 6 held-out samples: judged by the output cosine
        "profile": {"batches": [1], "duration_s": 0.2, "min_iterations": 5, "warmup": 2},
    }, tmp_path)
    m = build(recipe, tmp_path / "out", reporter=Reporter(quiet=True))
    a = m["artifacts"][0]
    assert a["status"] == "ok", a
    cands = {c["candidate"]: c for c in a["meta"]["int8"]["candidates"]}
    fused = cands["ort-qdq-u8s8-fused"]
    # The squeeze and the final AdaptiveAvgPool2d(1) both export as ReduceMean; three hard-swishes.
    assert fused["rewrites"] == {"ReduceMean->GlobalAveragePool": 2, "x*HardSigmoid(x)->HardSwish": 3,
                                 "HardSwish in int8 (QLinearAdd + QLinearMul)": 3}
    # measured and judged like every candidate (whether it is within budget depends on this CPU's INT8 kernels:
    # on ONNX Runtime 1.32 here its QLinearAdd/QLinearMul hard-swish can miss the cosine the guard asks for)
    assert "latency_ms_b1" in fused and (fused["within_budget"] or fused["why"])
    assert "rewrites" not in cands["ort-qdq-u8s8"]
    # Built again elsewhere: the calibration cache serves the rewritten model and what was rewritten.
    again = build(recipe, tmp_path / "again", reporter=Reporter(quiet=True))["artifacts"][0]["meta"]["int8"]
    hit = next(c for c in again["candidates"] if c["candidate"] == "ort-qdq-u8s8-fused")
    assert hit["calibration_cache"] == "hit" and hit["rewrites"] == fused["rewrites"]


def test_fused_candidate_is_skipped_when_there_is_nothing_to_rewrite(tmp_path):
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32))
    recipe = recipe_from_dict({
        "model": {"source": f"{MODELS / 'tiny.py'}:mlp"}, "inputs": [{"name": "x", "shape": [1, 16]}],
        "targets": ["ort-cpu"], "precisions": ["int8"], "calibration": {"source": "calib.npz", "size": 16},
        "compression": {"candidates": ["ort-qdq-u8s8-fused", "ort-qdq-u8s8"], "min_cosine": 0.9},
        "task": {"type": "generic"},
        "profile": {"batches": [1], "duration_s": 0.2, "min_iterations": 5, "warmup": 2},
    }, tmp_path)
    a = build(recipe, tmp_path / "out", reporter=Reporter(quiet=True))["artifacts"][0]
    assert a["status"] == "ok", a
    first, second = a["meta"]["int8"]["candidates"]
    assert first["candidate"] == "ort-qdq-u8s8-fused" and first["skipped"].startswith("skipped: nothing")
    assert not first["within_budget"] and a["meta"]["int8"]["recipe"] == second["candidate"] == "ort-qdq-u8s8"
