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
