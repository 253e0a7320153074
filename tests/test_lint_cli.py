"""`edgeopt lint` from the shell: exit codes and findings on the example's real ONNX."""

import json


def test_lint_cli_exit_codes(example_out, run_cli):
    out, _ = example_out
    onnx = out / "export" / "model.onnx"
    code, stdout, _ = run_cli("lint", onnx, "-t", "jetson-orin-nano", "--input", "image:float32[batch,1,8,8]",
                              "--dim", "batch=1:1:32", "--json")
    assert code == 0 and json.loads(stdout)["ok"]
    code, stdout, _ = run_cli("lint", onnx, "-t", "jetson-orin-nano")  # a dynamic batch without a range
    assert code == 1 and "dynamic-dim-no-range" in stdout
    code, _, stderr = run_cli("lint", onnx, "-t", "no-such-board")
    assert code == 2 and "Unknown target" in stderr


def _relu_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_lint_asks_the_target_backend_for_its_preflight(run_cli, tmp_path):
    """`edgeopt lint -t TARGET` is generic: a backend without a preflight says so (exit 0); TensorRT's runs, and
    --backend-version checks against another version of it."""
    import pytest

    pytest.importorskip("onnx")
    onnx = _relu_onnx(tmp_path / "relu.onnx")
    for target, backend in (("ort-cpu", "onnxruntime"), ("openvino-cpu", "openvino")):
        code, stdout, stderr = run_cli("lint", onnx, "-t", target)
        assert code == 0 and f"The {backend} backend of {target} has no preflight" in stdout, stderr
        code, stdout, _ = run_cli("lint", onnx, "-t", target, "--json")
        doc = json.loads(stdout)
        assert code == 0 and doc["preflight"] is None and doc["backend"] == backend and doc["ok"]
    code, stdout, _ = run_cli("lint", onnx, "-t", "jetson-orin-nano", "--input", "x:float32[batch,4]",
                              "--dim", "batch=1:1:8", "--backend-version", "11.4", "--json")
    doc = json.loads(stdout)
    assert code == 0 and doc["tensorrt"] == "11.4" and doc["ok"]
    code, stdout, _ = run_cli("lint", onnx, "-t", "jetson-orin-nano")  # no range for the dynamic batch
    assert code == 1 and "dynamic-dim-no-range" in stdout
