"""OpenVINO reading a Q/DQ ONNX (mixed precision's tries, QAT's export): signed asymmetric activations are
re-spelled unsigned, exactly, because OpenVINO compiles the signed spelling of some patterns wrongly (found on the
real YOLOv8: NNCF's ONNX Q/DQ of it had class scores near 0 in OpenVINO, right in ONNX Runtime)."""

import copy

import numpy as np
import pytest

pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgeopt.backends.openvino.quantize import read_qdq  # noqa: E402
from edgeopt.core.onnxgraph import activations_to_u8  # noqa: E402


def _c2f_like(channels: int = 8):
    """YOLOv8's C2f pattern as NNCF quantizes it: a Q/DQ tensor (zero point -120) split in two, one half through a
    conv (int8 weights) added back, the sum Q/DQ'd with the same scale and zero point, all three concatenated."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    c = channels
    inits = [numpy_helper.from_array(np.array(0.07, np.float32), "s"), numpy_helper.from_array(np.array(-120, np.int8), "z"),
             numpy_helper.from_array((rng.normal(size=(2 * c, 3, 3, 3)) * 0.5).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.integers(-127, 127, size=(c, c, 3, 3)).astype(np.int8), "w1q"),
             numpy_helper.from_array(np.full(c, 0.002, np.float32), "w1s"),
             numpy_helper.from_array(np.zeros(c, np.int8), "w1z")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c0"], ["sg"]), helper.make_node("Mul", ["c0", "sg"], ["silu"]),
             helper.make_node("QuantizeLinear", ["silu", "s", "z"], ["q0"]),
             helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"]),
             helper.make_node("Split", ["d0"], ["a", "b"], axis=1, num_outputs=2),
             helper.make_node("DequantizeLinear", ["w1q", "w1s", "w1z"], ["w1"], axis=0),
             helper.make_node("Conv", ["b", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "c1"], ["add"]),
             helper.make_node("QuantizeLinear", ["add", "s", "z"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"]),
             helper.make_node("Concat", ["a", "b", "d1"], ["y"], axis=1)]
    g = helper.make_graph(nodes, "c2f", [helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 3 * c, 32, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def _ort(m, feed):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_activations_to_u8_is_the_same_function():
    m = _c2f_like()
    u = copy.deepcopy(m)
    assert activations_to_u8(u) == 2  # both activation tensors (their four Q/DQ nodes shared one zero point)
    zps = {n.input[2] for n in u.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    init = {t.name: onnx.numpy_helper.to_array(t) for t in u.graph.initializer}
    assert {str(init[z].dtype) for z in zps} == {"uint8", "int8"}  # activations uint8 (8), the weights' int8 0 kept
    assert any(init[z].dtype == np.uint8 and int(init[z]) == 8 for z in zps)
    feed = {"x": (np.random.default_rng(1).normal(size=(1, 3, 32, 32)) * 3).astype(np.float32)}
    np.testing.assert_array_equal(_ort(m, feed), _ort(u, feed))
    assert activations_to_u8(u) == 0  # nothing left to re-spell


def test_openvino_reads_a_signed_qdq_model_as_onnx_runtime_runs_it(tmp_path):
    import openvino as ov

    m = _c2f_like(16)
    path = tmp_path / "qdq.onnx"
    onnx.save(m, str(path))
    feed = {"x": (np.random.default_rng(2).normal(size=(1, 3, 32, 32)) * 3).astype(np.float32)}
    want = _ort(m, feed)
    compiled = ov.Core().compile_model(read_qdq(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = next(iter(compiled(feed).values()))
    # one quantization step of slack for rounding ties that differ between the two runtimes
    assert np.abs(got - want).max() / np.abs(want).max() < 0.02, np.abs(got - want).max()
