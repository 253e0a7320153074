"""The on-device runtime runs on Python 3.10 (JetPack 6) and imports no torch, NNCF or OpenVINO.

Static: every module the device loads parses with Python 3.10's grammar. Dynamic: a fresh interpreter with
torch, nncf and openvino blocked (a meta-path finder that raises ImportError) imports the device path, takes
the device fingerprint and answers the remote agent, and none of them end up in sys.modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import edgeopt

PACKAGE = Path(edgeopt.__file__).resolve().parent
# What may run on a device is said by the folders: these packages (and the package root) are device-safe, and
# import-linter's contract in pyproject.toml keeps torch, the host pipeline and compression out of them.
DEVICE_PACKAGES = ("core", "config", "data", "backends", "device", "ship", "report")
BLOCKED = ("torch", "nncf", "openvino")


def _device_files() -> list[Path]:
    files = sorted(PACKAGE.glob("*.py"))
    for pkg in DEVICE_PACKAGES:
        files += sorted((PACKAGE / pkg).rglob("*.py"))
    return files


def test_the_required_device_modules_exist():
    names = {p.relative_to(PACKAGE).with_suffix("").as_posix() for p in _device_files()}
    for required in ("device/package/compile", "device/fingerprint", "device/remote/agent", "core/artifact", "core/profile", "core/parity", "core/reference",
                     "backends/tensorrt/backend", "backends/base", "ship/runtime"):
        assert required in names


@pytest.mark.parametrize("path", _device_files(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_parses_as_python_3_10(path):
    source = path.read_text()
    ast.parse(source, filename=str(path), feature_version=(3, 10))
    # tomllib is 3.11+: the device modules read TOML only through resources.load_toml (tomli on 3.10).
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if path.name != "resources.py":
            assert "tomllib" not in names, f"{path.name}:{node.lineno} imports tomllib (3.11+)"


BLOCKER = f"""
import importlib.abc, json, sys
BLOCKED = {BLOCKED!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: the on-device runtime must not import it")
        return None
sys.meta_path.insert(0, Block())
"""

DEVICE_PATH = BLOCKER + """
import io, contextlib
import edgeopt.device.package, edgeopt.core.artifact, edgeopt.core.profile, edgeopt.device.remote, edgeopt.core.parity, edgeopt.core.reference
import edgeopt.backends.tensorrt, edgeopt.backends.onnxruntime
from edgeopt.device.package import device_fingerprint
from edgeopt.device.remote import agent_main
fp = device_fingerprint()
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = agent_main(["agent", "hello", "{}"])
hello = json.loads(buf.getvalue().strip().splitlines()[-1].split(" ", 1)[1])
print(json.dumps({"rc": rc, "hello": hello, "fingerprint": fp,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_device_path_imports_without_torch_nncf_openvino(tmp_path):
    res = subprocess.run([sys.executable, "-c", DEVICE_PATH], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["loaded"] == []
    assert got["rc"] == 0 and got["hello"]["edgeopt_version"] == edgeopt.__version__
    assert got["fingerprint"]["python"]


def test_the_blocker_really_blocks(tmp_path):
    code = BLOCKER + "\ntry:\n    import torch\nexcept ImportError as e:\n    print('blocked', e)\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.stdout.startswith("blocked"), res.stdout + res.stderr


def test_compile_package_path_runs_an_ort_package_without_torch(tmp_path):
    """The full device path, end to end, for a CPU package: verify, compile, parity, profile (torch blocked)."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper

    from edgeopt.device.package import PackageSource, write_package_files
    from edgeopt.core.reference import save_reference
    from edgeopt.core.spec import Dim, IOSpec, TensorSpec
    from edgeopt.core.targets import get_target

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.linspace(-1, 1, 4, dtype=np.float32)[None]
    save_reference(tmp_path / "ref.npz", [{"x": x}], [{"y": np.maximum(x, 0)}])
    spec = IOSpec((TensorSpec("x", ("batch", 4)),), {"batch": Dim("batch", 1, 2, 8)}, ("y",))
    src = PackageSource(target=get_target("ort-cpu"), precision="fp32", spec=spec, model_kind="generic",
                        onnx_path=tmp_path / "m.onnx", reference_path=tmp_path / "ref.npz",
                        tolerance={"atol": 1e-4, "rtol": 1e-5, "min_cosine": 0.99999})
    pkg_dir = tmp_path / "ort-cpu-fp32"
    pkg_dir.mkdir()
    write_package_files(pkg_dir, src, src.key())
    code = BLOCKER + f"""
from edgeopt.device.package import compile_package
from edgeopt.report.progress import Reporter
rec = compile_package({str(pkg_dir)!r}, profile_batches=(1, 4), reporter=Reporter(quiet=True), duration_s=0.1)
print(json.dumps({{"status": rec["status"], "passed": rec["parity"]["passed"],
                  "batches": [r["batch"] for r in rec["latency"]],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"status": "ok", "passed": True, "batches": [1, 4], "loaded": []}
    done = json.loads((pkg_dir / "package.json").read_text())
    assert done["status"] == "ok" and done["device"]["python"] and (pkg_dir / "model.onnx").is_file()


def _python310() -> str | None:
    """A real Python 3.10 interpreter on this machine, if there is one (JetPack 6's Python)."""
    import os
    import shutil

    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    for cand in (shutil.which("python3.10"), "/usr/bin/python3.10", *sorted(map(str, root.glob("versions/3.10*/bin/python3.10")))):
        if not cand or not Path(cand).exists():
            continue
        try:
            res = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if res.stdout.strip() == "True":
            return cand
    return None


def test_a_real_python_3_10_compiles_the_device_modules_and_answers_the_agent(tmp_path):
    py = _python310()
    if py is None:
        pytest.skip("no Python 3.10 interpreter on this machine (the grammar check above still ran)")
    files = [str(p) for p in _device_files()]
    code = (f"import py_compile, sys\nfor i, f in enumerate({files!r}):\n"
            f"    py_compile.compile(f, cfile={str(tmp_path)!r} + f'/{{i}}.pyc', doraise=True)\n"
            f"sys.path.insert(0, {str(PACKAGE.parent)!r})\n"
            "from edgeopt.device.remote import agent_main\nsys.exit(agent_main(['agent', 'hello', '{}']))\n")
    res = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    hello = json.loads(res.stdout.strip().splitlines()[-1].split(" ", 1)[1])
    assert hello["python"].startswith("3.10.") and hello["edgeopt_version"] == edgeopt.__version__
