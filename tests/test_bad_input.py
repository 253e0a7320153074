"""Every bad input of the spine: a clear error with a fix, a non-zero exit, and no partial output."""

import argparse
import os
import subprocess
import sys
from pathlib import Path


from conftest import MODELS, write

TINY = MODELS / "tiny.py"
MLP = ["--input", "x:float32[batch,16]", "--dim", "batch=1:1:4", "-t", "ort-cpu", "-p", "fp32"]


def assert_refused(result, out: Path, *needles, code=None):
    exit_code, stdout, stderr = result
    assert exit_code != 0, stdout
    if code is not None:
        assert exit_code == code
    assert "error:" in stderr and "fix:" in stderr, stderr
    for n in needles:
        assert n in stderr, stderr
    assert "Traceback" not in stderr
    assert not (out / "manifest.json").exists()
    assert not (out / "ort-cpu-fp32").exists()


def test_factory_that_does_not_exist(run_cli, tmp_path):
    out = tmp_path / "o"
    assert_refused(run_cli("build", "--model", f"{TINY}:nope", *MLP, "-o", out), out, "no callable 'nope'", "mlp")
    assert_refused(run_cli("build", "--model", f"{tmp_path}/missing.py:f", *MLP, "-o", out), out, "does not exist")
    assert_refused(run_cli("build", "--model", "no_such_package.models:f", *MLP, "-o", out), out, "Cannot import")


def test_factory_that_returns_no_module(run_cli, tmp_path):
    out = tmp_path / "o"
    assert_refused(run_cli("build", "--model", f"{TINY}:not_a_module", *MLP, "-o", out), out, "not a torch.nn.Module")


def test_checkpoint_that_does_not_match_names_the_keys(run_cli, tmp_path):
    import torch
    from tiny import other_mlp

    torch.save(other_mlp().state_dict(), tmp_path / "other.pt")
    torch.save({"state_dict": {"extra.weight": torch.zeros(1)}}, tmp_path / "wrong.pt")
    out = tmp_path / "o"
    assert_refused(run_cli("build", "--model", f"{TINY}:mlp", "--checkpoint", tmp_path / "other.pt", *MLP, "-o", out),
                   out, "Shape mismatches: 1.weight")
    assert_refused(run_cli("build", "--model", f"{TINY}:mlp", "--checkpoint", tmp_path / "wrong.pt", *MLP, "-o", out),
                   out, "Missing keys: 1.weight", "Unexpected keys: extra.weight")


def test_pickled_checkpoint_needs_explicit_opt_in(run_cli, tmp_path):
    import torch
    from tiny import mlp

    torch.save({"state_dict": mlp().state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pt")
    out = tmp_path / "o"
    assert_refused(run_cli("build", "--model", f"{TINY}:mlp", "--checkpoint", tmp_path / "pickled.pt", *MLP, "-o", out),
                   out, "arbitrary code", "--allow-pickle")
    code, _, err = run_cli("build", "--model", f"{TINY}:mlp", "--checkpoint", tmp_path / "pickled.pt", "--allow-pickle",
                           *MLP, "-o", out)
    assert code == 0, err


def test_input_spec_that_the_model_does_not_accept(run_cli, tmp_path):
    out = tmp_path / "o"
    bad = ["--input", "x:float32[batch,3,7]", "--dim", "batch=1:1:4", "-t", "ort-cpu", "-p", "fp32"]
    assert_refused(run_cli("build", "--model", f"{TINY}:mlp", *bad, "-o", out), out,
                   "does not accept the declared inputs", "x: float32[batch,3,7]")


def test_unknown_target_and_precision(run_cli, tmp_path):
    out = tmp_path / "o"
    assert_refused(run_cli("build", "-t", "raspberry-pi-9", "-o", out), out, "Unknown target 'raspberry-pi-9'",
                   "ort-cpu", code=2)
    assert not out.exists()
    assert_refused(run_cli("build", "-t", "ort-cpu", "-p", "fp8", "-o", out), out, "Unknown precision 'fp8'", code=2)
    assert_refused(run_cli("build", "-t", "ort-cpu", "-p", "bf16", "-o", out), out, "does not offer bf16", code=2)


def test_backend_not_installed(tmp_path):
    """A real interpreter in which `openvino` cannot be imported (as if it were not installed)."""
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'openvino' or name.startswith('openvino.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgeopt.cli import main\n"
        "main()\n"
    )
    out = tmp_path / "o"
    env = {**os.environ, "EDGEOPT_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-c", blocker, "build", "-t", "openvino-cpu", "-o", str(out)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert_refused((res.returncode, res.stdout, res.stderr), out, "openvino is not installed",
                   "pip install 'edgeopt[openvino]'", code=3)
    res = subprocess.run([sys.executable, "-c", blocker, "targets", "--json"], capture_output=True, text=True, env=env,
                         timeout=120)
    rows = {r["name"]: r for r in __import__("json").loads(res.stdout)}
    assert not rows["openvino-cpu"]["runnable"] and "pip install 'edgeopt[openvino]'" in rows["openvino-cpu"]["status"]
    assert rows["ort-cpu"]["runnable"]
    # With no backend at all, the default build says what to install.
    both = blocker.replace("if name == 'openvino' or name.startswith('openvino.')",
                           "if name.split('.')[0] in ('openvino', 'onnxruntime')")
    res = subprocess.run([sys.executable, "-c", both, "build", "-o", str(out)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert_refused((res.returncode, res.stdout, res.stderr), out, "onnxruntime and openvino are not installed",
                   "pip install 'edgeopt[onnxruntime,openvino,torch]'", code=3)


def test_export_that_fails_names_the_operator(run_cli, tmp_path):
    out = tmp_path / "o"
    res = run_cli("build", "--model", f"{TINY}:unsupported_op", "--input", "x:float32[2,3,3]", "-t", "ort-cpu",
                  "-p", "fp32", "-o", out)
    assert_refused(res, out, "aten::linalg_eig", code=4)
    assert not (out / "export").exists()


def test_output_folder_holding_something_else(run_cli, tmp_path):
    out = tmp_path / "o"
    write(out / "thesis.tex", "do not delete")
    assert_refused(run_cli("build", "-t", "ort-cpu", "-p", "fp32", "-o", out), out, "not an edgeopt output", "--force")
    assert (out / "thesis.tex").read_text() == "do not delete"
    code, _, err = run_cli("build", "-t", "ort-cpu", "-p", "fp32", "-o", out, "--force")
    assert code == 0, err
    assert (out / "thesis.tex").exists() and (out / "manifest.json").exists()


def test_recipe_typos_and_bad_values(run_cli, tmp_path):
    out = tmp_path / "o"
    r = write(tmp_path / "r.toml", f'[model]\nsource = "{TINY}:mlp"\nkindd = "cnn"\n[[inputs]]\nname = "x"\nshape = [1, 16]\n')
    assert_refused(run_cli("build", r, "-o", out), out, "unknown keys ['kindd']")
    r = write(tmp_path / "r2.toml", "[model\n")
    assert_refused(run_cli("build", r, "-o", out), out, "not valid TOML")
    assert_refused(run_cli("build", tmp_path / "none.toml", "-o", out), out, "not found")


def test_corrupt_or_truncated_onnx(run_cli, tmp_path, example_out):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"garbage")
    out = tmp_path / "o"
    assert_refused(run_cli("build", "--model", bad, "--input", "x:float32[1,4]", "-t", "ort-cpu", "-p", "fp32",
                           "-o", out), out, "not a valid ONNX model", code=2)
    src, _ = example_out
    onnx_bytes = (src / "export" / "model.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    assert_refused(run_cli("build", "--model", tmp_path / "trunc.onnx", "--input", "image:float32[batch,1,8,8]",
                           "--dim", "batch=1:1:4", "-t", "ort-cpu", "-p", "fp32", "-o", out), out,
                   "not a valid ONNX model", code=2)
    # A truncated file inside a built artifact: profiling it is refused, not a traceback.
    import shutil

    art = tmp_path / "art"
    shutil.copytree(src / "ort-cpu-fp32", art)
    model = art / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    code, _, err = run_cli("profile", art, "--iterations", "3")
    assert code == 7 and "could not be loaded" in err and "Traceback" not in err
