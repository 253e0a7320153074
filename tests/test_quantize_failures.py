"""A quantizer failing on a graph with control flow is a failed candidate whose message names the node(s),
says whether they sit inside an If/Loop body, and what to do; the build goes on and writes its manifest."""

import json

import numpy as np

from edgeopt.compress.failure import explain, index_graph, with_nodes


def _if_model(path, then_op="Relu"):
    """x -> Conv -> If(sum(x) > -1e9): then Conv -> Relu, else Conv -> Sigmoid. Every real sample takes the
    then branch, so no calibration sample ever runs the else body (as with a detector's empty-detections
    branch). Node names as the legacy exporter writes them inside If bodies (no scope)."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)

    def conv(name, inp, out, cin, cout):
        w = nh.from_array((rng.normal(size=(cout, cin, 3, 3)) * 0.3).astype(np.float32), name + "_w")
        b = nh.from_array(np.zeros(cout, np.float32), name + "_b")
        return h.make_node("Conv", [inp, w.name, b.name], [out], name=name, pads=[1, 1, 1, 1]), [w, b]

    def body(tag, conv_name, act, act_name):
        c, init = conv(conv_name, "f", f"{tag}_y0", 8, 4)
        a = h.make_node(act, [f"{tag}_y0"], [f"{tag}_y"], name=act_name)
        return h.make_graph([c, a], f"{tag}_body", [], [h.make_tensor_value_info(f"{tag}_y", T.FLOAT, [1, 4, 16, 16])],
                            initializer=init)

    n0, i0 = conv("/backbone/conv0", "x", "f", 3, 8)
    nodes = [n0, h.make_node("ReduceSum", ["x"], ["s"], name="/head/ReduceSum", keepdims=0),
             h.make_node("Greater", ["s", "low"], ["c"], name="/head/Greater"),
             h.make_node("If", ["c"], ["y"], name="/head/If_12", then_branch=body("t", "Conv_4371", then_op, "Unsqueeze_4373"),
                         else_branch=body("e", "Conv_4372", "Sigmoid", "Sigmoid_4374"))]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 16, 16])],
                     initializer=i0 + [nh.from_array(np.array(-1e9, np.float32), "low")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def test_nodes_named_in_a_quantizer_message_are_placed_inside_or_outside_control_flow(tmp_path):
    import onnx

    path = _if_model(tmp_path / "if.onnx")
    index = index_graph(onnx.load(str(path)))
    assert index["Unsqueeze_4373"].inside == (("/head/If_12", "If", "then_branch"),)
    assert index["e_y0"].name == "Conv_4372" and index["e_y0"].inside[0][2] == "else_branch"  # by tensor name too
    # NNCF's message for a node of an If body (as on torchvision's detectors)
    text, info = with_nodes("InternalError: Could not find a node Unsqueeze_4373 in NNCFGraph!", path)
    assert info["nodes"] == [{"name": "Unsqueeze_4373", "op": "Relu",
                              "inside": [{"node": "/head/If_12", "op": "If", "body": "then_branch"}]}]
    assert "inside the then_branch of If node /head/If_12" in text and "calibration samples that run it" in text
    # ORT's message for a node of the main graph: keep it in float
    text, info = with_nodes("Statistics were not collected for the node /backbone/conv0", path)
    assert info["nodes"][0]["inside"] is None and "in the main graph" in text
    assert 'float_nodes = ["/backbone/conv0"]' in text
    # No node named, but a calibration failure on a graph with control flow: the control flow is named
    text, info = with_nodes("ValidationError: Calibration dataset must not be empty.", path)
    assert "names no node" in text and "/head/If_12 (If, in the main graph)" in text
    # ONNX Runtime's percentile calibrator on tensors whose size varies (detections): said so, with the way out
    text, info = with_nodes("quantization failed: ValueError: setting an array element with a sequence. The "
                            "requested array has an inhomogeneous shape after 1 dimensions.", path)
    assert "size changes from sample to sample" in text and "ort-qdq-u8s8" in info["hint"] and "nodes" not in info
    # Nothing to add: an unrelated message, or a model without control flow
    assert explain("MemoryError: out of memory", path) == {}
    assert with_nodes("quantization failed: x", tmp_path / "missing.onnx") == ("quantization failed: x", {})


def test_openvino_int8_on_an_if_body_no_sample_runs_fails_with_the_node_and_the_build_goes_on(tmp_path):
    """NNCF (OpenVINO) quantizes each If body on the calibration samples that run it; the else body here is run
    by none, and NNCF gives up. The artifact fails with the If node named and a hint; ONNX Runtime's INT8 and
    the FP32 artifacts are built; the manifest is written."""
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    _if_model(tmp_path / "if.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.uniform(0, 1, (12, 3, 16, 16)).astype(np.float32))
    data = {"model": {"source": "if.onnx"}, "inputs": [{"name": "x", "shape": [1, 3, 16, 16]}],
            "calibration": {"source": "cal.npz"}, "targets": ["ort-cpu", "openvino-cpu"],
            "precisions": ["fp32", "int8"], "compression": {"max_drop": 100.0, "accuracy_control": False,
                                                            "candidates": ["ort-qdq-u8s8"], "min_cosine": 0.01},
            "profile": {"batches": [1], "duration_s": 0.05, "min_iterations": 2, "warmup": 1}}
    m = build(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    arts = {a["id"]: a for a in on_disk["artifacts"]}
    assert [a["id"] for a in on_disk["artifacts"]] == [a["id"] for a in m["artifacts"]]
    assert arts["ort-cpu-fp32"]["status"] == "ok" and arts["openvino-cpu-fp32"]["status"] == "ok"
    ov = arts["openvino-cpu-int8"]
    assert ov["status"] == "failed" and "Traceback" not in ov["reason"]
    assert "NNCF could not quantize" in ov["reason"] and "/head/If_12 (If" in ov["reason"], ov["reason"]
    assert "calibration samples that run it" in ov["reason"]


def test_float_nodes_are_left_out_of_int8_and_recorded(tmp_path):
    """[compression] float_nodes (names or name prefixes) keeps those nodes in float in the kept INT8 model."""
    import onnx

    from edgeopt.config.compression import CompressionConfig
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.errors import UserInputError
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    for bad in ([""], "not-a-list"):
        try:
            CompressionConfig.from_dict({"float_nodes": bad})
            raise AssertionError(f"accepted {bad!r}")
        except UserInputError as exc:
            assert "float_nodes" in str(exc)
    _if_model(tmp_path / "if.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.uniform(0, 1, (12, 3, 16, 16)).astype(np.float32))
    out = {}
    for name, nodes in (("plain", []), ("kept", ["/backbone/"])):
        data = {"model": {"source": "if.onnx"}, "inputs": [{"name": "x", "shape": [1, 3, 16, 16]}],
                "calibration": {"source": "cal.npz"}, "targets": ["ort-cpu"], "precisions": ["int8"],
                "compression": {"max_drop": 100.0, "accuracy_control": False, "candidates": ["ort-qdq-u8s8"],
                                "min_cosine": 0.01, "float_nodes": nodes},
                "profile": {"batches": [1], "duration_s": 0.05, "min_iterations": 2, "warmup": 1}}
        m = build(recipe_from_dict(data, tmp_path), tmp_path / name, reporter=Reporter(quiet=True))
        (a,) = m["artifacts"]
        assert a["status"] == "ok", a
        g = onnx.load(str(tmp_path / name / "ort-cpu-int8" / "model.onnx")).graph
        made_by = {o: n.op_type for n in g.node for o in n.output}
        conv = next(n for n in g.node if n.name == "/backbone/conv0")
        out[name] = ([made_by.get(i) for i in conv.input[:2]], a["meta"]["int8"]["candidates"][0])
    assert out["plain"][0] == ["DequantizeLinear", "DequantizeLinear"]  # quantized input and weight
    assert "DequantizeLinear" not in out["kept"][0]  # left in float
    assert out["kept"][1]["float_head"]["nodes"] == ["/backbone/conv0"]
