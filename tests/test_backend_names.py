"""No backend name outside ``edgeopt/backends/``: no import of a concrete backend or its framework, no hand-kept
list of backend names, no framework probed by name. Whatever needs "every backend" asks the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import edgeopt
from edgeopt.backends import REGISTRY, backends

PKG = Path(edgeopt.__file__).resolve().parent
ROOT = PKG.parent

# Files other #19 work is changing (their imports of ONNX Runtime go with it); each entry names what remains.
PENDING = {
    "edgeopt/compress/failure.py": "ONNX Runtime's error types in the INT8 loop (int8loop)",
}


def _names() -> tuple[set[str], set[str]]:
    """(backend names, their frameworks' import names)."""
    return set(REGISTRY), {b.module for b in backends()}


def backend_name_uses(source: str, names: set[str], modules: set[str]) -> list[str]:
    """Where ``source`` imports a concrete backend or framework, lists two or more backend names, or probes a
    framework by name (``find_spec("onnxruntime")``)."""
    found = []
    concrete = {f"edgeopt.backends.{n}" for n in names}
    words = names | modules
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            mods = []
        for m in mods:
            if m.split(".")[0] in modules or any(m == c or m.startswith(c + ".") for c in concrete):
                found.append(f"{node.lineno}: imports {m}")
                break
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            listed = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in words]
            if len(listed) >= 2:
                found.append(f"{node.lineno}: lists {listed}")
        if isinstance(node, ast.Call) and any(isinstance(a, ast.Constant) and a.value in modules for a in node.args):
            fn = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if fn in ("find_spec", "import_module", "version_of", "version", "__import__"):
                found.append(f"{node.lineno}: probes {[a.value for a in node.args if isinstance(a, ast.Constant)]}")
    return found


def test_the_check_finds_what_it_forbids():
    names, modules = {"onnxruntime", "openvino"}, {"onnxruntime", "openvino"}
    bad = ("import onnxruntime as ort\nfrom edgeopt.backends.openvino.runner import x\n"
           "LIBS = ('onnxruntime', 'nncf', 'openvino')\nimportlib.util.find_spec('onnxruntime')\n")
    assert len(backend_name_uses(bad, names, modules)) == 4
    ok = "from edgeopt.backends import get_backend\nfp.get('openvino')\nKEYS = ('model', 'openvino', 'cuda')\n"
    assert backend_name_uses(ok, names, modules) == []


def test_no_backend_name_outside_the_backends_folder():
    names, modules = _names()
    found = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if rel.startswith("edgeopt/backends/") or rel in PENDING:
            continue
        found += [f"{rel}:{hit}" for hit in backend_name_uses(p.read_text(), names, modules)]
    assert not found, found


def test_pending_files_still_need_their_exception():
    """An entry of PENDING whose file no longer names a backend is removed (the list only shrinks)."""
    names, modules = _names()
    stale = [rel for rel in PENDING
             if (ROOT / rel).is_file() and not backend_name_uses((ROOT / rel).read_text(), names, modules)]
    assert not stale, f"remove from PENDING: {stale}"


def test_the_import_contract_forbids_every_registered_backend():
    from edgeopt.core.resources import import_tomllib

    conf = import_tomllib().loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in conf if c["type"] == "forbidden" and "edgeopt.cli" in c.get("source_modules", [])
                   and any(m.startswith("edgeopt.backends.") for m in c["forbidden_modules"])]
    assert set(contract["forbidden_modules"]) == {f"edgeopt.backends.{n}" for n in REGISTRY}
    layers = next(c for c in conf if c["type"] == "layers")["layers"]
    assert set(contract["source_modules"]) == set(layers) - {"edgeopt.backends"}


def test_device_packaging_is_its_own_interface():
    """``Backend`` compiles, opens, runs and describes itself; packaging for another device is DevicePackaging,
    which only TensorRT implements itself (the others get the default: the FP32 ONNX, compiled there)."""
    from edgeopt.backends import Backend, DevicePackaging, get_packaging

    moved = ("package_plan", "package_onnx", "package_graph", "package_reference", "package_host_onnx",
             "package_preflight", "device_requirements", "device_wheel_extra", "check_device", "device_build_why")
    assert not [m for m in moved if hasattr(Backend, m)]
    assert all(hasattr(DevicePackaging, m) for m in moved)
    own = {n for n in REGISTRY if type(get_packaging(n)) is not DevicePackaging}
    assert own == {n for n in REGISTRY if get_packaging(n).backend.builds_on_device}
    for n in REGISTRY:
        p = get_packaging(n)
        assert p.name == n and p.device_requirements() and isinstance(p.device_wheel_extra(), str)
