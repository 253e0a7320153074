"""The layout: no import cycle, the import-linter contracts hold, and a backend is one folder plus one registry line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgeopt

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).parent / "toy_backend"


def test_the_package_has_no_import_cycle():
    """Every import statement (module level or inside functions) counts: the graph of edgeopt's modules is acyclic."""
    import ast

    pkg = Path(edgeopt.__file__).resolve().parent
    mods = {}
    for p in pkg.rglob("*.py"):
        rel = p.relative_to(pkg.parent).with_suffix("")
        mods[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    graph = {}
    for name, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if m in mods}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{p}: relative import (write edgeopt.…)"
        graph[name] = deps - {name}
    # a package's __init__ importing its own submodules is not a cycle edge back to it
    seen, stack, cycles = set(), [], []

    def visit(v):
        if v in stack:
            cycles.append(stack[stack.index(v):] + [v])
            return
        if v in seen:
            return
        seen.add(v)
        stack.append(v)
        for w in sorted(graph[v]):
            if not (w != v and v.startswith(w + ".") and mods[w].name == "__init__.py" and graph[w] & {v}):
                visit(w)
        stack.pop()

    for v in sorted(graph):
        visit(v)
    assert not cycles, cycles[:3]


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install 'edgeopt[dev]')")
    res = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "BROKEN" not in res.stdout and res.stdout.count("KEPT") >= 2


def test_a_backend_from_outside_the_package_builds_the_example(tmp_path, monkeypatch):
    """One folder (tests/toy_backend) plus one registry line: the example builds, checks and profiles with it."""
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from edgeopt.backends import REGISTRY, get_backend
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    monkeypatch.syspath_prepend(str(TOY.parent))
    monkeypatch.setitem(REGISTRY, "toy", "toy_backend")  # the one line
    assert get_backend("toy").name == "toy"
    m = build(None, tmp_path / "out", targets=[str(TOY / "toy-cpu.toml")], precisions=["fp32"],
              reporter=Reporter(quiet=True))
    (a,) = [a for a in m["artifacts"] if a["id"] == "toy-cpu-fp32"]
    assert a["status"] == "ok", a
    assert a["backend"] == "toy" and a["meta"]["evaluator"] == "onnx.reference"
    assert a["parity"]["passed"] and a["parity"]["max_abs"] <= 1e-4
    assert a["accuracy"]["value"] > 0.95
    assert a["latency"] and a["latency"][0]["median_ms"] > 0
    assert (tmp_path / "out" / "toy-cpu-fp32" / "toy.onnx").is_file()


def test_a_backend_from_outside_the_package_builds_int8_through_the_loop(tmp_path, monkeypatch):
    """The toy backend's INT8 is its quantizer alone (tests/toy_backend/quantize.py): the INT8 loop calibrates
    through the cache, times each candidate against FP32, judges it by the task metric and records the pick."""
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from edgeopt.backends import REGISTRY
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(TOY.parent))
    monkeypatch.setitem(REGISTRY, "toy", "toy_backend")
    for run in ("a", "b"):
        m = build(None, tmp_path / run, targets=[str(TOY / "toy-cpu.toml")], precisions=["int8"],
                  reporter=Reporter(quiet=True), profile=False)
        (a,) = [a for a in m["artifacts"] if a["id"] == "toy-cpu-int8"]
        assert a["status"] == "ok", a
        int8 = a["meta"]["int8"]
        cands = {c["candidate"]: c for c in int8["candidates"]}
        assert set(cands) == {"toy-int8-per-channel", "toy-int8-per-tensor"} and int8["recipe"] in cands
        for c in cands.values():  # timed against FP32 in the same rounds, judged by the task metric
            assert c["vs_fp32"]["low"] <= c["vs_fp32"]["value"] <= c["vs_fp32"]["high"], c
            assert c["accuracy"]["metric"] == "top1" and c["int8_layers"] > 0 and "within_budget" in c
            assert c["calibration_cache"] == ("miss" if run == "a" else "hit")
        assert int8["fp32_quick"]["latency_ms_b1"] > 0 and int8["calibration_samples"] > 0
        assert (m["fp32_metric"]["value"] - a["accuracy"]["value"]) * 100 <= 1.0
    import onnx

    model = onnx.load(str(tmp_path / "b" / "toy-cpu-int8" / "toy.onnx"))
    assert any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)


def _modules() -> dict[str, Path]:
    pkg = Path(edgeopt.__file__).resolve().parent
    return {str(p.relative_to(pkg.parent)): p for p in sorted(pkg.rglob("*.py"))}


def test_no_private_name_is_imported_across_modules():
    """``from edgeopt.x import _name`` couples a module to another's internals: what is shared is public."""
    import ast

    found = []
    for rel, p in _modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeopt"):
                found += [f"{rel}:{node.lineno} {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_no_module_outside_a_backend_folder_branches_on_a_backend_name():
    """Adding a backend is one folder plus one registry line: nothing else compares with a backend's name
    (``target.backend == "tensorrt"``); modules ask the backend (``builds_on_device``, ``device_requirements()``,
    ``check_device()``, ``details()``...). Data keys (``fp["tensorrt"]``) are not branches and are allowed."""
    import ast

    from edgeopt.backends import REGISTRY

    names = set(REGISTRY)
    found = []
    for rel, p in _modules().items():
        parts = Path(rel).parts
        if parts[:2] == ("edgeopt", "backends") and len(parts) > 3 and parts[2] in names:
            continue  # inside edgeopt/backends/<name>/
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            for side in (node.left, *node.comparators):
                consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                found += [f"{rel}:{node.lineno} compares with {c.value!r}" for c in consts
                          if isinstance(c, ast.Constant) and c.value in names]
    assert not found, found


def test_no_module_is_shadowed_by_a_package_of_the_same_name():
    # A merge once brought back ship/bundle.py beside the ship/bundle/ package that replaced it: Python imports
    # the package, so edits to the module were silently dead code.
    pkg = Path(edgeopt.__file__).resolve().parent
    shadowed = [str(p.relative_to(ROOT)) for p in pkg.rglob("*.py") if p.with_suffix("").is_dir()]
    assert not shadowed, f"modules shadowed by a package of the same name: {shadowed}"


PIPELINE_MAX_LINES = 300


def test_the_build_is_stage_modules_none_over_300_lines():
    """``pipeline/build.py`` composes stages, each in its own module: no file of the pipeline grows into a
    grab-bag again."""
    pkg = Path(edgeopt.__file__).resolve().parent / "pipeline"
    long = {p.name: n for p in sorted(pkg.glob("*.py")) if (n := len(p.read_text().splitlines())) > PIPELINE_MAX_LINES}
    assert not long, f"pipeline modules over {PIPELINE_MAX_LINES} lines (split them by stage): {long}"
    build = (pkg / "build.py").read_text()
    for stage in ("intake", "export", "compile", "judge", "timing", "record"):
        assert f"from edgeopt.pipeline.{stage} import" in build, stage


def _annotation(node) -> str:
    import ast

    return ast.unparse(node) if node is not None else ""


def test_the_build_context_and_stage_results_are_typed():
    """Every field of the build's context and of each stage's result has a real type (no ``object``, no
    ``Any``), and the stage results are frozen: a stage returns its result, it never sets another's fields."""
    import ast
    import dataclasses

    from edgeopt.pipeline import context

    tree = ast.parse(Path(context.__file__).read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for name in ("BuildContext", "BuildData", "Exported", "Judging", "Pruned", "LoadedModel", "Plan"):
        fields = [n for n in classes[name].body if isinstance(n, ast.AnnAssign)]
        assert fields, name
        loose = [f"{name}.{f.target.id}: {_annotation(f.annotation)}" for f in fields
                 if {"object", "Any"} & set(_annotation(f.annotation).replace("|", " ").split())]
        assert not loose, loose
    for name in ("BuildContext", "BuildData", "Exported", "Judging", "Pruned"):
        assert getattr(context, name).__dataclass_params__.frozen, name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(context, name).__new__(getattr(context, name)), "x", 1)


def test_device_packages_read_only_the_typed_input_they_declare():
    """device/package is below the pipeline: it is written from a PackageSource (its own typed input), never
    from the pipeline's context read by attribute name, and names no pipeline module, even for typing."""
    import ast
    import dataclasses
    import inspect

    from edgeopt.device.package import PackageSource, write_device_package, write_package_files

    device = Path(edgeopt.__file__).resolve().parent / "device"
    for p in sorted(device.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("edgeopt.pipeline"), f"{p}:{node.lineno}"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = {a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs}
                assert not names & {"ctx", "context", "build"}, f"{p}:{node.lineno} {node.name} takes a context"
    for fn in (write_device_package, write_package_files):
        params = inspect.signature(fn).parameters.values()
        assert all(q.annotation is not inspect.Parameter.empty for q in params), fn.__name__
        assert any(q.annotation in ("PackageSource", PackageSource) for q in params), fn.__name__
    fields = dataclasses.fields(PackageSource)
    assert PackageSource.__dataclass_params__.frozen and fields
    assert all(f.type and "object" not in str(f.type) and "Any" not in str(f.type) for f in fields)


def test_the_pipeline_reaches_the_host_reference_through_the_registry():
    """Parity, the FP32 judge set and scoring run on the host's reference executor, which the registry names:
    no module of the pipeline or of device/package imports a concrete backend's modules."""
    import ast

    from edgeopt.backends import REGISTRY, host_reference

    root = Path(edgeopt.__file__).resolve().parent
    found = []
    for folder in (root / "pipeline", root / "device" / "package"):
        for p in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(p.read_text())):
                mods = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                        else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                found += [f"{p.relative_to(root)}:{node.lineno} {m}" for m in mods
                          if any(m == f"edgeopt.backends.{n}" or m.startswith(f"edgeopt.backends.{n}.")
                                 for n in REGISTRY)]
    assert not found, found
    ref = host_reference()
    assert ref.name in REGISTRY and ref.installed()
