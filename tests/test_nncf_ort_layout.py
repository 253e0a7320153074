"""NNCF's Q/DQ ONNX re-laid out so ONNX Runtime's CPU kernels fuse every convolution (rewrite.py): the
rewrite changes types only (same values) and turns the float convolutions into QLinearConv."""

import collections

import numpy as np
import onnx
import pytest

from edgeopt.backends.onnxruntime.rewrite import nncf_for_onnxruntime

ort = pytest.importorskip("onnxruntime")
nncf = pytest.importorskip("nncf")
torch = pytest.importorskip("torch")


def _exported(m, path):
    """``m`` with batch-norm statistics of random inputs, exported to ONNX at ``path`` (input x, output y)."""
    with torch.no_grad():
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
        m(torch.randn(16, 3, 24, 24))
    torch.onnx.export(m.eval(), torch.randn(1, 3, 24, 24), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    return onnx.load(str(path))


def _inverted_residuals(path):
    """Two MobileNetV2 blocks (ReLU6, depthwise, a residual Add) and a Linear after Flatten."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    torch.manual_seed(0)
    nn = torch.nn
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                      InvertedResidual(16, 16, 1, 4), InvertedResidual(16, 24, 2, 4), InvertedResidual(24, 24, 1, 4),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    return _exported(m, path)


def _quantized(tmp_path):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    model = _inverted_residuals(tmp_path / "float.onnx")
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(1, 3, 24, 24)).astype(np.float32)} for _ in range(16)]
    return nncf.quantize(model, nncf.Dataset(feeds), preset=nncf.QuantizationPreset.PERFORMANCE,
                         target_device=nncf.TargetDevice.CPU, subset_size=16,
                         advanced_parameters=AdvancedQuantizationParameters(
                             activations_quantization_params=QuantizationParameters(per_channel=False)))


def _run(model, x, optimize=True):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def _optimized_ops(model, tmp_path):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_nncf_qdq_fuses_every_convolution_after_the_rewrite(tmp_path):
    x = np.random.default_rng(2).normal(size=(1, 3, 24, 24)).astype(np.float32)
    q = _quantized(tmp_path)
    before_ops = _optimized_ops(q, tmp_path)
    convs = sum(n.op_type == "Conv" for n in q.graph.node)
    # NNCF's layout: s8 after the residual Add, u8 after ReLU6; ONNX Runtime leaves the mixed ones in float.
    assert before_ops["QLinearConv"] < convs
    reference = _run(q, x, optimize=False)
    changes = nncf_for_onnxruntime(q)
    onnx.checker.check_model(q, full_check=True)
    assert changes["int8 activations as uint8"] >= 2 and changes["float layers' weights folded"] == 1  # the Linear
    # Exactly the same values as NNCF's model, computed node by node.
    np.testing.assert_allclose(_run(q, x, optimize=False), reference, rtol=1e-6, atol=1e-6)
    ops = _optimized_ops(q, tmp_path)
    assert ops["QLinearConv"] == convs and "Conv" not in ops and "FusedConv" not in ops
    # weights stay int8; only activations moved to u8
    init = {t.name: t for t in q.graph.initializer}
    weights = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init]
    assert weights and all(init[n.input[0]].data_type == onnx.TensorProto.INT8 for n in weights)


def test_the_rewrite_leaves_u8_and_float_graphs_alone(tmp_path):
    model = _inverted_residuals(tmp_path / "float.onnx")
    assert nncf_for_onnxruntime(model) == {"int8 activations as uint8": 0, "float layers' weights folded": 0}


def _silu_blocks(path):
    """Three YOLOv8-style Conv + BatchNorm + SiLU blocks and a 1x1 head conv."""
    torch.manual_seed(0)
    nn = torch.nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.SiLU()]

    m = nn.Sequential(*block(3, 16), *block(16, 16), *block(16, 24), nn.Conv2d(24, 6, 1))
    return _exported(m, path)


def test_convolutions_before_a_silu_fuse_once_their_outputs_are_quantized(tmp_path):
    from edgeopt.backends.onnxruntime.rewrite import quantize_outputs, unfused_convolutions

    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(1, 3, 24, 24)).astype(np.float32)} for _ in range(16)]
    q = nncf.quantize(_silu_blocks(tmp_path / "float.onnx"), nncf.Dataset(feeds), target_device=nncf.TargetDevice.CPU,
                      subset_size=16, preset=nncf.QuantizationPreset.MIXED,
                      advanced_parameters=AdvancedQuantizationParameters(
                          activations_quantization_params=QuantizationParameters(per_channel=False)))
    nncf_for_onnxruntime(q)
    # NNCF quantizes each SiLU's output, not the convolution's: ONNX Runtime fuses none of those convolutions
    unfused = unfused_convolutions(q)
    assert len(unfused) >= 2 and _optimized_ops(q, tmp_path)["QLinearConv"] == 0
    x = rng.normal(size=(1, 3, 24, 24)).astype(np.float32)
    before = _run(q, x)
    assert quantize_outputs(q, feeds) == len(unfused)
    onnx.checker.check_model(q, full_check=True)
    assert not unfused_convolutions(q)
    assert _optimized_ops(q, tmp_path)["QLinearConv"] == len(unfused)
    # one more rounding per layer: close to the model it was made from, judged like any candidate in a build
    after = _run(q, x)
    cos = float((before * after).sum() / np.linalg.norm(before) / np.linalg.norm(after))
    assert cos > 0.99, cos
    assert quantize_outputs(q, feeds) == 0  # nothing left to quantize
