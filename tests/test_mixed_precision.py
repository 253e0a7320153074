"""Mixed precision by measured sensitivity (compress/mixed.py): the fewest, most costly layers go back to float
when post-training INT8 misses the budget; a model with no INT8 left is never a result."""

import time

import numpy as np
import onnx
import pytest

from edgeopt.compress.mixed import keep_in_float, mixed_precision, quantized_layers, search
from edgeopt.config.recipe import recipe_from_dict
from edgeopt.pipeline.build import build
from edgeopt.report.progress import Reporter

from conftest import MODELS

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


def test_search_finds_the_fewest_layers_fewest_first():
    order = [f"l{i}" for i in range(20)]
    calls = []

    def judge(layers):  # within budget once the 6 costliest are in float
        calls.append(len(layers))
        return len(layers), {"within_budget": len(layers) >= 6, "why": "over"}

    out = search(order, judge, time.monotonic() + 60)
    assert out.float_layers == order[:6] and out.model == 6
    assert calls == [1, 2, 4, 8, 6, 5]  # doubling, then bisection between 4 (over) and 8 (within)
    # never within: None, and every try recorded
    none = search(order[:3], lambda layers: (None, {"within_budget": False, "why": "over"}), time.monotonic() + 60)
    assert none.float_layers is None and [t["float_layers"] for t in none.record["tried"]] == [1, 2, 3]
    # out of time: stops before trying
    late = search(order, judge, time.monotonic() - 1)
    assert late.float_layers is None and late.record["tried"] == []


def _outlier_models(tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny", MODELS / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    torch.onnx.export(tiny.outlier_channel(), torch.randn(1, 3, 16, 16), str(tmp_path / "f.onnx"),
                      input_names=["image"], output_names=["y"], dynamo=False)
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(24)]
    it = iter(feeds)

    class Reader:
        def get_next(self):
            return next(it, None)

    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return onnx.load(str(tmp_path / "f.onnx")), onnx.load(str(tmp_path / "q.onnx")), feeds


def _infer_for(model):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda feed: {"y": s.run(None, feed)[0]}


def test_the_layer_reading_the_outlier_tensor_goes_back_to_float(tmp_path):
    fp32, q, feeds = _outlier_models(tmp_path)
    layers = quantized_layers(q)
    assert [n for n in layers if n.endswith(("Conv", "Gemm"))] == ["/0/Conv", "/2/Conv", "/4/Conv", "/7/Gemm"]
    reference = [_infer_for(fp32)(f) for f in feeds]

    def judge(infer):
        a = np.concatenate([infer(f)["y"].ravel() for f in feeds])
        b = np.concatenate([r["y"].ravel() for r in reference])
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        return {"cosine": cos, "within_budget": cos >= 0.99, "why": f"cosine {cos:.3f}"}

    assert not judge(_infer_for(q))["within_budget"]  # plain post-training INT8 misses
    out = mixed_precision(q, fp32, _infer_for, feeds[:4], judge, 60)
    assert out.float_layers == ["/2/Conv"] and out.verdict["within_budget"]
    assert out.record["ranking"][0]["layer"] == "/2/Conv" and out.record["tried"][0]["float_layers"] == 1
    # the other layers stay quantized, the float one reads the tensor clipped to the quantizer's range
    assert set(quantized_layers(out.model)) == set(layers) - {"/2/Conv"}
    onnx.checker.check_model(out.model, full_check=True)
    assert sum(n.op_type == "Clip" for n in out.model.graph.node) == 1
    # every layer in float leaves no quantized layer, and its weights are the float model's own
    none = keep_in_float(q, fp32, layers)
    assert quantized_layers(none) == []
    w = {t.name: t for t in none.graph.initializer}
    conv = next(n for n in none.graph.node if n.name == "/2/Conv")
    fw = {t.name: t for t in fp32.graph.initializer}
    twin = next(n for n in fp32.graph.node if n.name == "/2/Conv")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(w[conv.input[1]]),
                                  onnx.numpy_helper.to_array(fw[twin.input[1]]))
    # a layer whose weights were quantized and folded back into float (no Q/DQ left on it) is still a layer
    # mixed precision can restore: its constants differ from the float model's
    folded = keep_in_float(q, None, ["/7/Gemm"])  # no float model: the dequantized (rounded) weights
    assert "/7/Gemm" not in quantized_layers(folded) and "/7/Gemm" in quantized_layers(folded, fp32)
    restored = keep_in_float(folded, fp32, ["/7/Gemm"])
    r_init = {t.name: t for t in restored.graph.initializer}
    gemm = next(n for n in restored.graph.node if n.name == "/7/Gemm")
    f_gemm = next(n for n in fp32.graph.node if n.name == "/7/Gemm")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(r_init[gemm.input[1]]),
                                  onnx.numpy_helper.to_array(fw[f_gemm.input[1]]))


def test_build_recovers_int8_by_mixed_precision(tmp_path):
    """Through `edgeopt build`: ONNX Runtime's only candidate misses the cosine budget, mixed precision meets
    it with one layer in float, and the artifact is recorded as such. With mixed precision off it is refused."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", image=rng.normal(size=(32, 3, 16, 16)).astype(np.float32))
    d = {
        "model": {"source": f"{MODELS / 'tiny.py'}:outlier_channel", "kind": "cnn"},
        "inputs": [{"name": "image", "shape": [1, 3, 16, 16]}],
        "targets": ["ort-cpu"], "precisions": ["int8"],
        "calibration": {"source": "calib.npz", "size": 32},
        # mixed precision alone (the stronger post-training options, tried before it, are tests/test_ptq_options.py's)
        "compression": {"candidates": ["ort-qdq-u8s8"], "min_cosine": 0.99, "accuracy_control": False,
                        "stronger_ptq": False},
        "task": {"type": "generic"},
        "profile": {"batches": [1], "duration_s": 0.2, "min_iterations": 5, "warmup": 2},
    }
    m = build(recipe_from_dict(d, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    a = m["artifacts"][0]
    assert a["status"] == "ok", a
    int8 = a["meta"]["int8"]
    assert int8["recipe"] == "ort-qdq-u8s8-mixed"
    plain, mixed = int8["candidates"]
    assert not plain["within_budget"] and mixed["within_budget"]
    # one layer back in float: the convolution reading the outlier tensor (the exporter names nodes its way)
    assert len(mixed["float_layers"]) == 1 and mixed["mixed_precision"]["float_layers"] == mixed["float_layers"]
    assert mixed["mixed_precision"]["ranking"][0]["layer"] == mixed["float_layers"][0]
    d["compression"]["mixed_precision"] = False
    m = build(recipe_from_dict(d, tmp_path), tmp_path / "off", reporter=Reporter(quiet=True))
    assert m["artifacts"][0]["status"] == "failed" and "accuracy budget" in m["artifacts"][0]["reason"]


def test_openvino_build_recovers_int8_by_mixed_precision(tmp_path):
    """OpenVINO: NNCF's INT8 of the outlier model misses the budget; mixed precision (NNCF's Q/DQ ONNX, its
    costliest nodes in float, compiled by OpenVINO) meets it with INT8 left."""
    pytest.importorskip("openvino")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", image=rng.normal(size=(32, 3, 16, 16)).astype(np.float32))
    d = {
        "model": {"source": f"{MODELS / 'tiny.py'}:outlier_channel", "kind": "cnn"},
        "inputs": [{"name": "image", "shape": [1, 3, 16, 16]}],
        "targets": ["openvino-cpu"], "precisions": ["int8"],
        "calibration": {"source": "calib.npz", "size": 32},
        "compression": {"min_cosine": 0.99, "accuracy_control": False, "stronger_ptq": False},
        "task": {"type": "generic"},
        "profile": {"batches": [1], "duration_s": 0.2, "min_iterations": 5, "warmup": 2},
    }
    m = build(recipe_from_dict(d, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    a = m["artifacts"][0]
    assert a["status"] == "ok", a
    int8 = a["meta"]["int8"]
    plain, mixed = int8["candidates"]
    assert not plain["within_budget"] and mixed["within_budget"] and int8["recipe"] == "nncf-ov-mixed"
    assert 1 <= len(mixed["float_layers"]) < mixed["mixed_precision"]["quantized_layers"]


def test_ranking_runs_fewer_feeds_rather_than_leave_layers_unranked(tmp_path, monkeypatch):
    """On a clock where every inference takes 1 s, ranking each layer on all 24 ranking feeds does not fit the
    ranking's share of the time limit: it runs fewer feeds (recorded, with why) and ranks every layer."""
    from types import SimpleNamespace

    import edgeopt.compress.mixed as mixed

    fp32, q, feeds = _outlier_models(tmp_path)
    layers = quantized_layers(q, fp32)
    clock = [0.0]
    monkeypatch.setattr(mixed, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def infer_for(model):
        run = _infer_for(model)

        def infer(feed):
            clock[0] += 1.0
            return run(feed)
        return infer

    def judge(infer):
        for f in feeds[:2]:
            infer(f)
        return {"within_budget": False, "why": "over"}

    # reference and one pass over all: 48 s; the ranking's share of the limit leaves 24 * len(layers) * 2/3 s
    limit = (48 + 24 * len(layers) * 2 / 3) / mixed.RANKING_SHARE
    logs = []
    out = mixed_precision(q, fp32, infer_for, feeds, judge, limit, logs.append)
    assert mixed.MIN_RANKING_FEEDS <= out.record["ranking_samples"] < len(feeds)
    assert "ranking_fewer_feeds" in out.record
    assert f"ranked {len(layers)} of {len(layers)} quantized layers" in " ".join(logs), logs
    # with time enough, every feed
    clock[0] = 0.0
    out = mixed_precision(q, fp32, infer_for, feeds, judge, 100 * limit)
    assert out.record["ranking_samples"] == len(feeds) and "ranking_fewer_feeds" not in out.record
