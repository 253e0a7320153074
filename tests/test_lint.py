"""The TensorRT preflight: small ONNX models built with onnx.helper, checked against the Jetson targets."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeopt.backends.tensorrt import lint as lint_mod  # noqa: E402
from edgeopt.errors import CompileError, UserInputError  # noqa: E402
from edgeopt.backends.tensorrt.lint import lint, lint_or_raise  # noqa: E402
from edgeopt.core.spec import Dim, IOSpec, TensorSpec  # noqa: E402
from edgeopt.core.targets import Target, load_targets  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def nano() -> Target:
    return load_targets()["jetson-orin-nano"]


@pytest.fixture(scope="module")
def thor() -> Target:
    return load_targets()["jetson-thor"]


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=17, ir=9, name="m.onnx", check=True):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    if check:
        onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_model(tmp_path, shape=(1, 3, 8, 8), opset=17, **kw):
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c"], ["y"], name="relu1")]
    out_shape = [shape[0], 4, shape[2], shape[3]]
    return _save(tmp_path, nodes, [_f("x", list(shape))], [_f("y", out_shape)], [w], opset=opset, **kw)


def qdq_model(tmp_path, act_type, act_zp=0, opset=17):
    """x -> Q/DQ (activation) -> Conv(W = DQ(int8 weights)) -> y: the shape of an NNCF/ORT QDQ export."""
    act_zp_arr = np.array(act_zp, dtype=np.uint8 if act_type == "uint8" else np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "act_scale"),
        numpy_helper.from_array(act_zp_arr, "act_zp"),
        numpy_helper.from_array(RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "act_scale", "act_zp"], ["xq"], name="x_quantize"),
        helper.make_node("DequantizeLinear", ["xq", "act_scale", "act_zp"], ["xdq"], name="x_dequantize"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0, name="w_dequantize"),
        helper.make_node("Conv", ["xdq", "w"], ["y"], pads=[1, 1, 1, 1], name="conv1"),
    ]
    return _save(tmp_path, nodes, [_f("x", [1, 3, 8, 8])], [_f("y", [1, 4, 8, 8])], inits, opset=opset,
                 name=f"qdq_{act_type}_{act_zp}.onnx")


def _codes(report):
    return {f.code for f in report.findings}


def test_clean_model_passes(tmp_path, nano):
    report = lint(conv_model(tmp_path), nano)
    assert report.ok and report.findings == [], report.summary()
    d = report.to_dict()
    assert d["ok"] is True and d["tensorrt"] == "10.3" and d["target"] == "jetson-orin-nano"


def test_ort_runs_the_qdq_models(tmp_path):
    """The test models are valid QDQ graphs (ONNX Runtime executes both)."""
    ort = pytest.importorskip("onnxruntime")
    x = RNG.random((1, 3, 8, 8), dtype=np.float32)
    for path in (qdq_model(tmp_path, "uint8"), qdq_model(tmp_path, "int8")):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert sess.run(None, {"x": x})[0].shape == (1, 4, 8, 8)


def test_unsigned_activation_qdq_is_an_error(tmp_path, nano):
    report = lint(qdq_model(tmp_path, "uint8", act_zp=0), nano)
    assert not report.ok
    unsigned = [f for f in report.errors if f.code == "qdq-unsigned"]
    assert {f.node for f in unsigned} == {"x_quantize", "x_dequantize"}
    assert all("signedness_to_force" in f.fix for f in unsigned)
    assert "w_dequantize" not in {f.node for f in report.findings}  # signed int8 weights, zero point 0


def test_nncf_style_asymmetric_uint8_is_an_error(tmp_path, nano):
    report = lint(qdq_model(tmp_path, "uint8", act_zp=128), nano)
    assert "qdq-unsigned" in _codes(report) and not report.ok


def test_signed_int8_zero_point_0_passes(tmp_path, nano):
    report = lint(qdq_model(tmp_path, "int8", act_zp=0), nano)
    assert report.ok, report.summary()
    assert not [f for f in report.findings if f.code.startswith("qdq")]


def test_signed_but_asymmetric_is_an_error(tmp_path, nano):
    report = lint(qdq_model(tmp_path, "int8", act_zp=5), nano)
    assert [f.node for f in report.errors if f.code == "qdq-zero-point-nonzero"] == ["x_quantize", "x_dequantize"]


def test_unsupported_operator_names_node_and_fix(tmp_path, nano):
    nodes = [helper.make_node("Unique", ["x"], ["y"], name="dedupe")]
    path = _save(tmp_path, nodes, [_f("x", [6])], [_f("y", ["n"])])
    report = lint(path, nano)
    (f,) = [f for f in report.errors if f.code == "unsupported-operator"]
    assert f.node == "dedupe" and "Unique" in f.message and f.fix


def test_integer_quantized_operator_suggests_qdq(tmp_path, nano):
    nodes = [helper.make_node("MatMulInteger", ["a", "b"], ["y"], name="mmi")]
    ins = [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 2]),
           helper.make_tensor_value_info("b", TensorProto.UINT8, [2, 2])]
    path = _save(tmp_path, nodes, ins, [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 2])])
    (f,) = [f for f in lint(path, nano).errors if f.node == "mmi"]
    assert f.code == "unsupported-operator" and "QDQ" in f.fix


def test_operator_added_after_the_targets_version(tmp_path, nano, thor):
    """HannWindow: supported from TensorRT 10.4, so an error for JetPack 6 (10.3), fine for Thor (10.13)."""
    size = numpy_helper.from_array(np.array(16, np.int64), "size")
    nodes = [helper.make_node("HannWindow", ["size"], ["y"], name="window")]
    path = _save(tmp_path, nodes, [], [_f("y", [16])], [size])
    f = [f for f in lint(path, nano).errors if f.node == "window"]
    assert f and f[0].code == "unsupported-operator" and "10.4" in f[0].fix
    assert lint(path, thor).ok


def test_unknown_and_custom_domain_operators(tmp_path, nano):
    nodes = [helper.make_node("FusedConv", ["x"], ["h"], domain="com.microsoft", name="ort_fused"),
             helper.make_node("Swoosh", ["h"], ["y"], name="mystery")]
    graph = helper.make_graph(nodes, "g", [_f("x", [1])], [_f("y", [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "c.onnx"))
    found = {f.node: f.code for f in lint(tmp_path / "c.onnx", nano).errors}
    assert found == {"ort_fused": "custom-operator", "mystery": "unknown-operator"}


def test_local_function_is_expanded_not_flagged(tmp_path, nano):
    fn = helper.make_function("local", "MyRelu", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("MyRelu", ["x"], ["y"], domain="local", name="call")], "g",
                              [_f("x", [1])], [_f("y", [1])])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17),
                                                                    helper.make_opsetid("local", 1)])
    onnx.save(model, str(tmp_path / "f.onnx"))
    assert lint(tmp_path / "f.onnx", nano).ok


def test_dynamic_dim_without_range(tmp_path, nano):
    path = conv_model(tmp_path, shape=("batch", 3, 8, 8))
    report = lint(path, nano)
    (f,) = report.errors
    assert f.code == "dynamic-dim-no-range" and f.node == "x" and "batch" in f.message and "--dim batch=" in f.fix


def test_dynamic_dim_with_a_range_or_fixed_in_spec_passes(tmp_path, nano):
    path = conv_model(tmp_path, shape=("batch", 3, 8, 8))
    ranged = IOSpec((TensorSpec("x", ("batch", 3, 8, 8)),), {"batch": Dim("batch", 1, 4, 16)})
    assert lint(path, nano, ranged).ok
    fixed = IOSpec((TensorSpec("x", (2, 3, 8, 8)),))
    assert lint(path, nano, fixed).ok


def test_spec_that_does_not_match_the_export(tmp_path, nano):
    path = conv_model(tmp_path, shape=(1, 3, 8, 8))
    ranged = IOSpec((TensorSpec("x", ("batch", 3, 8, 8)),), {"batch": Dim("batch", 1, 4, 16)})
    assert [f.code for f in lint(path, nano, ranged).errors] == ["shape-mismatch"]
    wrong_rank = IOSpec((TensorSpec("x", (1, 3, 8)),))
    assert [f.code for f in lint(path, nano, wrong_rank).errors] == ["shape-mismatch"]
    other = IOSpec((TensorSpec("image", (1, 3, 8, 8)),))
    assert {f.code for f in lint(path, nano, other).errors} == {"input-not-in-spec", "spec-input-missing"}


def test_opset_newer_than_the_parser_is_a_warning(tmp_path, nano, thor):
    """onnx-tensorrt warns about an opset newer than it documents and parses the model: a warning, not an error."""
    path = conv_model(tmp_path, opset=21, ir=10)
    report = lint(path, nano)
    (f,) = report.warnings
    assert report.ok and f.code == "opset-too-new" and "20" in f.message and "opset_version=20" in f.fix
    assert "warns and parses" in f.message
    assert lint(path, thor).findings == []  # TensorRT 10.13 parses opset 23
    unknown = conv_model(tmp_path, opset=99, ir=10, check=False, name="o99.onnx")
    (f,) = lint(unknown, nano).errors  # no ONNX release TensorRT knows has opset 99
    assert f.code == "opset-too-new" and "no ONNX release" in f.message


def test_ir_version_too_new_is_a_warning(tmp_path, nano):
    path = conv_model(tmp_path, ir=11, check=False)
    report = lint(path, nano)
    assert report.ok and [f.code for f in report.warnings] == ["ir-version-too-new"]


def test_int64_input_and_wide_int64_weights_warn(tmp_path, nano):
    big = numpy_helper.from_array(np.array([2**40], np.int64), "big")
    ends = numpy_helper.from_array(np.array([2**62], np.int64), "ends")
    starts = numpy_helper.from_array(np.array([0], np.int64), "starts")
    nodes = [helper.make_node("Add", ["ids", "big"], ["s"], name="offset"),
             helper.make_node("Slice", ["s", "starts", "ends"], ["y"], name="tail")]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [4])
    path = _save(tmp_path, nodes, [ids], [helper.make_tensor_value_info("y", TensorProto.INT64, [4])],
                 [big, ends, starts])
    report = lint(path, nano)
    assert report.ok
    by_code = {f.code: f for f in report.warnings}
    assert set(by_code) == {"int64-input", "int64-weights"}
    assert by_code["int64-input"].node == "ids"
    assert by_code["int64-weights"].node == "offset" and "big" in by_code["int64-weights"].message  # not 'ends'


def test_missing_external_data(tmp_path, nano):
    w = numpy_helper.from_array(RNG.standard_normal((64, 64)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [_f("x", [1, 64])], [_f("y", [1, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    assert lint(tmp_path / "ext.onnx", nano).ok
    (tmp_path / "ext.onnx.data").unlink()
    (f,) = lint(tmp_path / "ext.onnx", nano).errors
    assert f.code == "external-data-missing" and f.node == "W"


def test_over_2gb_protobuf(tmp_path, nano, monkeypatch):
    monkeypatch.setattr(lint_mod, "PROTOBUF_LIMIT", 100)  # a 2 GiB file is too big for a unit test
    (f,) = lint(conv_model(tmp_path), nano).errors
    assert f.code == "weights-over-2gb" and "save_as_external_data=True" in f.fix


def test_resize_cubic_is_a_restriction(tmp_path, nano):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic", name="up")]
    path = _save(tmp_path, nodes, [_f("x", [1, 1, 4, 4])], [_f("y", [1, 1, 8, 8])], [scales])
    (f,) = lint(path, nano).errors
    assert f.code == "operator-restriction" and f.node == "up"


def test_dla_request_on_a_board_without_dla(tmp_path, nano):
    data = {**nano.to_dict(), "options": {**nano.options, "dla_core": 0}}
    (f,) = lint(conv_model(tmp_path), Target.from_dict(data)).errors
    assert f.code == "dla-unavailable"


def test_version_override_and_missing_version(tmp_path, nano):
    path = conv_model(tmp_path, opset=21, ir=10)
    assert lint(path, nano, tensorrt_version="10.13.3.9").ok
    bare = Target.from_dict({"name": "x", "backend": "tensorrt", "device": "GPU", "precisions": ["fp16"]})
    with pytest.raises(UserInputError):
        lint(path, bare)


def test_lint_or_raise_and_summary(tmp_path, nano):
    path = qdq_model(tmp_path, "uint8")
    with pytest.raises(CompileError) as info:
        lint_or_raise(path, nano)
    assert "qdq-unsigned" in str(info.value)
    text = lint(path, nano).summary()
    assert "x_quantize" in text and "fix:" in text
    for f in lint(path, nano).findings:
        assert f.severity in ("error", "warning") and f.code and f.message and f.fix
        assert set(f.to_dict()) == {"severity", "code", "node", "message", "fix"}


def test_helpers_qdq_and_fp16_detection(tmp_path):
    assert lint_mod.qdq_nodes(qdq_model(tmp_path, "int8")) == 3
    assert lint_mod.qdq_nodes(conv_model(tmp_path)) == 0
    assert lint_mod.is_fp16_model(conv_model(tmp_path)) is False


def test_int32_bias_dequantize_is_an_error(tmp_path, nano):
    """ONNX Runtime's default QDQ quantizes Conv biases to INT32, which TensorRT has no quantized type for."""
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.arange(4, dtype=np.int32), "b_q"),
             numpy_helper.from_array(np.full(4, 1e-3, np.float32), "b_scale"),
             numpy_helper.from_array(np.zeros(4, np.int32), "b_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="bias_dq"),
             helper.make_node("Conv", ["x", "W", "b"], ["y"], pads=[1, 1, 1, 1], name="conv1")]
    path = _save(tmp_path, nodes, [_f("x", [1, 3, 8, 8])], [_f("y", [1, 4, 8, 8])], inits)
    (f,) = lint(path, nano).errors
    assert (f.code, f.node) == ("qdq-int32", "bias_dq") and "QuantizeBias" in f.fix


def test_quantize_without_zero_point(tmp_path, nano):
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s")]
    q = helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q_default")
    dq = helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="dq")
    path = _save(tmp_path, [q, dq], [_f("x", [4])], [_f("y", [4])], inits)
    report = lint(path, nano)
    assert report.ok and [(f.code, f.node) for f in report.warnings] == [("qdq-zero-point-missing", "q_default")]
    q21 = helper.make_node("QuantizeLinear", ["x", "s"], ["q"], output_dtype=TensorProto.INT8, name="q_int8")
    path = _save(tmp_path, [q21, dq], [_f("x", [4])], [_f("y", [4])], inits, opset=21, ir=10, name="q21.onnx")
    assert lint(path, nano, tensorrt_version="10.13").findings == []


def _two_conv_model(tmp_path):
    inits = [numpy_helper.from_array((RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "W1"),
             numpy_helper.from_array((RNG.standard_normal((4, 8, 3, 3)) * 0.3).astype(np.float32), "W2")]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    return _save(tmp_path, nodes, [_f("x", [1, 3, 16, 16])], [_f("y", [1, 4, 16, 16])], inits, name="two.onnx")


def test_real_quantizers_nncf_default_fails_tensorrt_recipe_passes(tmp_path, nano):
    """NNCF's default INT8 (unsigned activations after ReLU) is flagged; ONNX Runtime's TensorRT-style QDQ
    (signed, symmetric, float biases) passes."""
    nncf = pytest.importorskip("nncf")
    quant = pytest.importorskip("onnxruntime.quantization")
    src = _two_conv_model(tmp_path)
    samples = [{"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    default = nncf.quantize(onnx.load(str(src)), nncf.Dataset(samples), subset_size=8)
    onnx.save(default, str(tmp_path / "nncf_default.onnx"))
    report = lint(tmp_path / "nncf_default.onnx", nano)
    assert "qdq-unsigned" in report.codes() and not report.ok

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    quant.quantize_static(str(src), str(tmp_path / "ort_trt.onnx"), Reader(), quant_format=quant.QuantFormat.QDQ,
                          activation_type=quant.QuantType.QInt8, weight_type=quant.QuantType.QInt8, per_channel=True,
                          extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    report = lint(tmp_path / "ort_trt.onnx", nano)
    assert report.ok and lint_mod.qdq_nodes(tmp_path / "ort_trt.onnx") > 0, report.summary()


# ---- the probe set of issue 10: what TensorRT really takes or refuses -------------------------------------
@pytest.fixture(scope="module")
def agx() -> Target:
    return load_targets()["jetson-agx-orin"]


def _boxes_model(tmp_path, op, domain="", name="nms.onnx", **attrs):
    nodes = [helper.make_node(op, ["boxes", "scores"], ["num", "det_boxes"], domain=domain, name="nms", **attrs)]
    ins = [_f("boxes", [1, 100, 4]), _f("scores", [1, 100, 3])]
    outs = [helper.make_tensor_value_info("num", TensorProto.INT32, [1, 1]), _f("det_boxes", [1, 10, 4])]
    graph = helper.make_graph(nodes, "g", ins, outs)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save(model, str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize("domain", ["", "TRT", "trt"])
def test_standard_plugin_nodes_are_warnings_not_errors(tmp_path, nano, domain):
    report = lint(_boxes_model(tmp_path, "EfficientNMS_TRT", domain, max_output_boxes=10, score_threshold=0.25,
                               iou_threshold=0.5, background_class=-1, score_activation=0, box_coding=0), nano)
    (f,) = report.findings
    assert report.ok and (f.severity, f.code, f.node) == ("warning", "plugin-operator", "nms")
    assert "plugin registry" in f.message and "fixed size" in f.message
    custom = lint(_boxes_model(tmp_path, "MyDecoder_TRT", name="custom.onnx"), nano)
    assert custom.ok and "plugin library" in custom.findings[0].fix


def test_fp8_qdq_needs_sm_89(tmp_path, nano, thor):
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q_fp8"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq_fp8")]
    path = _save(tmp_path, nodes, [_f("x", [4])], [_f("y", [4])], inits, opset=19)
    errors = lint(path, nano).errors  # Orin: sm 8.7
    assert [(f.code, f.node) for f in errors] == [("qdq-fp8-unsupported", "q_fp8"), ("qdq-fp8-unsupported", "dq_fp8")]
    assert "sm 8.9" in errors[0].message and "INT8" in errors[0].fix
    assert lint(path, thor).ok  # Thor: sm 11.0


def test_qdq_scale_computed_at_run_time_is_an_error(tmp_path, nano):
    inits = [numpy_helper.from_array(np.array(127.0, np.float32), "qmax"),
             numpy_helper.from_array(np.array(0, np.int8), "zp")]
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("ReduceMax", ["a"], ["m"], keepdims=0),
             helper.make_node("Div", ["m", "qmax"], ["s"], name="scale"),
             helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q_dyn"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq_dyn")]
    path = _save(tmp_path, nodes, [_f("x", [4])], [_f("y", [4])], inits)
    assert [(f.code, f.node) for f in lint(path, nano).errors] == [("qdq-scale-dynamic", "q_dyn"),
                                                                   ("qdq-scale-dynamic", "dq_dyn")]


def test_resize_antialias_is_an_error(tmp_path, nano):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1, name="resize")
    path = _save(tmp_path, [node], [_f("x", [1, 1, 4, 4])], [_f("y", [1, 1, 8, 8])], [scales], opset=18)
    (f,) = lint(path, nano).errors
    assert (f.code, f.node) == ("operator-restriction", "resize") and "antialias" in f.message


def test_pad_with_axes_needs_tensorrt_10_4(tmp_path, nano, thor):
    inits = [numpy_helper.from_array(np.array([1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], name="pad")
    path = _save(tmp_path, [node], [_f("x", [2, 4])], [_f("y", [2, 6])], inits, opset=18)
    (f,) = lint(path, nano).errors
    assert (f.code, f.node) == ("operator-restriction", "pad") and "10.4" in f.message
    assert lint(path, thor).ok
    no_axes = _save(tmp_path, [helper.make_node("Pad", ["x", "pads4"], ["y"], name="pad")], [_f("x", [2, 4])],
                    [_f("y", [2, 6])], [numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "pads4")],
                    name="pad4.onnx")
    assert lint(no_axes, nano).ok


def test_topk_unsorted_is_an_error(tmp_path, nano):
    k = numpy_helper.from_array(np.array([3], np.int64), "k")
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], sorted=0, name="topk")
    outs = [_f("v", [1, 3]), helper.make_tensor_value_info("i", TensorProto.INT64, [1, 3])]
    path = _save(tmp_path, [node], [_f("x", [1, 10])], outs, [k])
    (f,) = lint(path, nano).errors
    assert (f.code, f.node) == ("operator-restriction", "topk") and "sorted=True" in f.fix


def test_data_dependent_shapes_are_named_with_the_fix(tmp_path, nano):
    nodes = [helper.make_node("NonZero", ["x"], ["idx"], name="nonzero"),
             helper.make_node("Transpose", ["idx"], ["y"], name="t")]
    path = _save(tmp_path, nodes, [_f("x", [4, 4])], [helper.make_tensor_value_info("y", TensorProto.INT64, ["n", 2])])
    (f,) = lint(path, nano).errors
    assert (f.code, f.node) == ("data-dependent-output", "nonzero") and "edgeopt's TensorRT runner" in f.message
    assert "torch.where" in f.fix
    inits = [numpy_helper.from_array(np.array([10], np.int64), "max_out")]
    nms = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out"], ["sel"], name="nms")
    path = _save(tmp_path, [nms], [_f("boxes", [1, 100, 4]), _f("scores", [1, 1, 100])],
                 [helper.make_tensor_value_info("sel", TensorProto.INT64, ["n", 3])], inits, name="nms.onnx")
    (f,) = lint(path, nano).errors
    assert f.code == "data-dependent-output" and "EfficientNMS_TRT" in f.fix and "outside the graph" in f.fix
    # Inside the graph only (no output's shape depends on it): TensorRT sizes it at run time, a warning.
    nodes = [helper.make_node("NonZero", ["x"], ["idx"], name="nonzero"),
             helper.make_node("Shape", ["x"], ["y"], name="shape")]
    path = _save(tmp_path, nodes, [_f("x", [4, 4])], [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
                 name="inner.onnx")
    report = lint(path, nano)
    assert report.ok and [(f.code, f.node) for f in report.warnings] == [("data-dependent-shape", "nonzero")]


def test_swish_is_in_tensorrt_11_only(tmp_path, nano):
    node = helper.make_node("Swish", ["x"], ["y"], name="swish")
    path = _save(tmp_path, [node], [_f("x", [4])], [_f("y", [4])], opset=24, ir=11)
    assert lint(path, nano, tensorrt_version="11.4").ok
    (f,) = lint(path, nano, tensorrt_version="10.15").errors
    assert f.code == "unsupported-operator" and "11.0" in f.fix


def test_dla_is_the_devices_not_the_versions(tmp_path, agx):
    dla = Target.from_dict({**agx.to_dict(), "options": {**agx.options, "dla_core": 1}})
    for version in ("10.3", "10.15", "11.1", "11.4"):
        assert lint(conv_model(tmp_path), dla, tensorrt_version=version).ok, version
    three = Target.from_dict({**agx.to_dict(), "options": {**agx.options, "dla_core": 2}})
    assert [f.code for f in lint(conv_model(tmp_path), three).errors] == ["dla-unavailable"]


def test_summary_prints_each_fix_once(tmp_path, nano):
    nodes = [helper.make_node("Unique", ["x"], [f"u{i}"], name=f"uniq{i}") for i in range(3)]
    outs = [_f(f"u{i}", ["n"]) for i in range(3)]
    text = lint(_save(tmp_path, nodes, [_f("x", [6])], outs), nano).summary()
    fix = lint_mod.operator_support("Unique", (10, 3))[1]
    assert text.count(fix) == 1 and text.count("fix: as for uniq0 above") == 2
    assert all(f"[uniq{i}]" in text for i in range(3))


def test_topk_with_a_run_time_k_and_if_branches_of_different_ranks(tmp_path, nano):
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("TopK", ["x", "s"], ["v", "i"], name="topk")]
    outs = [_f("v", [1, 10]), helper.make_tensor_value_info("i", TensorProto.INT64, [1, 10])]
    report = lint(_save(tmp_path, nodes, [_f("x", [10])], outs), nano)
    assert report.ok and [(f.code, f.node) for f in report.warnings] == [("topk-runtime-k", "topk")]
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [], [_f("t", [2, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["c"], ["e"])], "else", [], [_f("e", [4])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="branch")
    ins = [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _f("a", [2, 4]), _f("c", [4])]
    path = _save(tmp_path, [node], ins, [_f("y", None)], name="if.onnx", check=False)
    (f,) = lint(path, nano).errors
    assert (f.code, f.node) == ("operator-restriction", "branch") and "same rank" in f.message
