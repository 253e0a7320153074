"""INT8 that holds on detectors: the post-processing head stays in float, and the guard judges by mAP.

The tiny YOLO-like model (tests/models/tiny.py:yolo_head) concatenates boxes in pixels (0..640) with sigmoid
scores (0..1) into one output [1, 7, 400], the layout whose scores a u8 per-tensor scale rounds to 0."""

import pytest


@pytest.fixture(scope="module")
def yolo_onnx(tmp_path_factory):
    import torch
    from tiny import yolo_head

    path = tmp_path_factory.mktemp("yolo") / "yolo.onnx"
    torch.onnx.export(yolo_head(), torch.zeros(1, 3, 640, 640), str(path), input_names=["images"],
                      output_names=["output0"], dynamo=False)
    return path


def test_the_head_is_found_in_the_onnx_and_openvino_graphs(yolo_onnx):
    import onnx
    import openvino as ov

    from edgeopt.backends.openvino.quantize import float_head
    from edgeopt.compress.head import onnx_float_head

    m = onnx.load(str(yolo_onnx))
    head = set(onnx_float_head(m))
    ops = {n.name: n.op_type for n in m.graph.node}
    final = next(n for n in m.graph.node if n.output[0] == "output0")
    assert final.op_type == "Concat" and final.name in head  # the concatenation of boxes and scores
    assert sum(ops[n] == "Sigmoid" for n in head) == 2  # box and score sigmoids
    assert not any(ops[n] == "Conv" for n in head)  # every layer is still quantized
    assert "/features/features.2/Relu" not in head  # the backbone is not the head
    ov_head = float_head(ov.Core().read_model(str(yolo_onnx)))
    assert "output0" in ov_head and not any("Conv" in n and "Sigmoid" not in n for n in ov_head)


def test_a_softmax_fed_layer_is_post_processing():
    """Ultralytics' DFL: softmax over 16 bins, then a fixed 1x1 conv (the expectation): that conv is head."""
    from onnx import TensorProto, helper

    from edgeopt.compress.head import onnx_float_head

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 16, 1, 1], list(map(float, range(16))))
    w0 = helper.make_tensor("w0", TensorProto.FLOAT, [16, 3, 1, 1], [0.1] * 48)
    g = helper.make_graph([
        helper.make_node("Conv", ["x", "w0"], ["f"], name="features"),
        helper.make_node("Softmax", ["f"], ["p"], axis=1, name="softmax"),
        helper.make_node("Conv", ["p", "w"], ["y"], name="dfl"),
    ], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], [w, w0])
    assert onnx_float_head(helper.make_model(g)) == ["softmax", "dfl"]
