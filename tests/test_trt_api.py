"""Every TensorRT and cuda-python name edgeopt touches exists in each supported version, and the test double
exposes nothing the real bindings lack.

The API surfaces (tests/data/trt_api/*.json) were extracted from the official binding wheels (TensorRT 10.3 and
11.4, cuda-python 12.6 and cuda-bindings 13.5) without importing them; see tests/data/trt_api/README.md.
edgeopt's code is read with ``ast``: attribute chains on the ``trt``/``tensorrt`` and cuda runtime module objects,
and on the TensorRT objects they return (types followed through assignments, method return types from the
JSON, and the parameter names edgeopt gives them), plus the keyword and positional arguments of each call.
A direct access must exist in every supported version; a feature-detected one (``getattr(x, "NAME", default)``,
``hasattr``) in at least one.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from trt_double import api

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "edgeopt" / "backends" / "tensorrt").glob("*.py"), *(ROOT / "edgeopt" / "device").glob("*.py")])
SUPPORTED = [("10.3", "12.6"), ("11.4", "13.5")]

MODULE_NAMES = {"trt": "trt", "tensorrt": "trt", "rt": "cuda", "cudart": "cuda"}
# Parameters edgeopt names after the TensorRT object they hold (functions that receive, not create, them).
PARAM_TYPES = {"builder": "Builder", "network": "INetworkDefinition", "config": "IBuilderConfig",
               "parser": "OnnxParser"}
CUDA_RETURNS = {"cudaGetDeviceProperties": (None, "cudaDeviceProp")}  # (err, prop)
BASES = {"Logger": "ILogger"}


class Surface:
    def __init__(self, trt: str, cuda: str):
        self.trt, self.cuda = api.trt_surface(trt), api.cuda_surface(cuda)
        self.rt = self.cuda["modules"]["cuda.bindings.runtime"]
        self.name = f"TensorRT {trt} / cuda-python {cuda}"

    # what a name on a typed value is: ("mod"|"class"|"enum"|"obj"|"func"|"member"|"prop", detail) or None
    def lookup(self, kind, detail, attr):
        t, r = self.trt, self.rt
        if attr.startswith("__") and attr.endswith("__"):
            return ("dunder", attr) if attr in ("__version__", "__init__") else None
        if kind == "mod" and detail == "trt":
            if attr in t["classes"]:
                return "class", attr
            if attr in t["enums"]:
                return "enum", attr
            if attr in t["functions"] or attr in t["python_wrappers"]:
                return "func", attr
            return None
        if kind == "mod" and detail == "cuda":
            if attr in r["functions"]:
                return "cudafunc", attr
            if attr in r["enums"]:
                return "cudaenum", attr
            if attr in r["classes"]:
                return "cudaclass", attr
            return None
        if kind in ("class", "obj"):
            cls = detail
            while cls:
                c = t["classes"].get(cls, {})
                nested = t["nested_enums"].get(f"{cls}.{attr}")
                if nested is not None:
                    return "enum", f"{cls}.{attr}"
                if attr in t["nested_enums"].get(f"{cls}.Severity", ()):
                    return "member", attr  # pybind11 export_values(): ILogger.WARNING
                if attr in c.get("methods", {}):
                    return "method", (cls, attr)
                if attr in c.get("properties", ()):
                    return "prop", (cls, attr)
                cls = BASES.get(cls)
            return None
        if kind == "enum":
            members = t["nested_enums"].get(detail) if "." in detail else t["enums"].get(detail)
            return ("member", attr) if attr in (members or ()) else None
        if kind == "cudaenum":
            return ("member", attr) if attr in r["enums"].get(detail, ()) else None
        if kind == "cudaobj":
            return ("prop", attr) if attr in r["classes"].get(detail, {}).get("properties", ()) else None
        return "unknown", None

    def call_result(self, target):
        kind, detail = target
        if kind == "class":
            return "obj", detail
        if kind == "method":
            cls, name = detail
            while cls:
                ret = self.trt["classes"].get(cls, {}).get("returns", {}).get(name)
                if ret:
                    return ("obj", ret) if ret in self.trt["classes"] else ("enumval", ret)
                cls = BASES.get(cls)
        if kind == "cudafunc" and detail in CUDA_RETURNS:
            return "cudatuple", detail
        return None

    def signatures(self, target) -> list[list[str]] | None:
        kind, detail = target
        if kind == "class":
            return self._overloads(detail, "__init__")
        if kind == "method":
            return self._overloads(*detail)
        if kind == "func":
            args = self.trt["functions"].get(detail, self.trt["python_wrappers"].get(detail))
            return [args]
        if kind == "cudafunc":
            return [self.rt["functions"][detail]["args"]]
        return None

    def _overloads(self, cls, name):
        while cls:
            o = self.trt["classes"].get(cls, {}).get("methods", {}).get(name)
            if o is not None:
                return o
            cls = BASES.get(cls)
        return None


class Finder(ast.NodeVisitor):
    """Walks one module; records (line, text, problem) for names and arguments the surface lacks."""

    def __init__(self, surface: Surface, soft_ok=None):
        self.s, self.problems, self.soft = surface, [], []
        self.scopes: list[dict] = [{}]
        self.self_types: dict[str, tuple] = {}

    # ---- types -----------------------------------------------------------------------------------------
    def type_of(self, node):
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope:
                    return scope[node.id]
            return None
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in self.self_types:
                return self.self_types[node.attr]
            base = self.type_of(node.value)
            if base is None or base[0] in ("unknown", "dunder", "member", "prop", "enumval", "cudatuple"):
                return None
            found = self.s.lookup(base[0], base[1], node.attr)
            if found is None:
                self.problems.append((node.lineno, ast.unparse(node), f"{node.attr!r} is not in {self.where(base)}"))
                return None
            if found[0] == "cudaclass":
                return found
            return found
        if isinstance(node, ast.Call):
            target = self.type_of(node.func)
            if target is None:
                return None
            self.check_args(node, target)
            return self.s.call_result(target)
        return None

    def where(self, base):
        kind, detail = base
        if kind == "mod":
            return f"the {detail} module of {self.s.name}"
        if isinstance(detail, tuple):
            detail = ".".join(detail)
        return f"{detail} ({self.s.name})"

    def check_args(self, call, target):
        sigs = self.s.signatures(target)
        if not sigs:
            return
        npos = len(call.args)
        kws = {k.arg for k in call.keywords if k.arg}
        if not any(npos <= len(a) and kws <= set(a[npos:]) for a in sigs):
            self.problems.append((call.lineno, ast.unparse(call)[:80],
                                  f"arguments fit no signature of {self.where(target)}: {sigs}"))

    # ---- scopes and assignments ----------------------------------------------------------------------------
    def visit_ClassDef(self, node):
        saved = self.self_types
        self.self_types = {}
        n, m = len(self.problems), len(self.soft)
        for item in node.body:  # first pass: what each self.X holds (types flow between methods)
            self.visit(item)
        del self.problems[n:], self.soft[m:]
        for item in node.body:
            self.visit(item)
        self.self_types = saved

    def _quiet_type(self, node):
        n = len(self.problems)
        t = self.type_of(node)
        del self.problems[n:]
        return t

    def _params(self, fn) -> dict:
        names = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)]
        scope = {}
        for n in names:
            if n in MODULE_NAMES:
                scope[n] = ("mod", MODULE_NAMES[n])
            elif n in PARAM_TYPES:
                scope[n] = ("obj", PARAM_TYPES[n])
        return scope

    def visit_FunctionDef(self, node):
        self.scopes.append(self._params(node))
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name == "tensorrt":
                self.scopes[-1][alias.asname or "tensorrt"] = ("mod", "trt")

    def visit_ImportFrom(self, node):
        for alias in node.names:
            if (node.module, alias.name) in (("cuda.bindings", "runtime"), ("cuda", "cudart")):
                self.scopes[-1][alias.asname or alias.name] = ("mod", "cuda")

    def visit_Assign(self, node):
        t = self._quiet_type(node.value)
        self.visit(node.value)  # the names and calls inside it (comprehensions, arguments ...)
        for tgt in node.targets:
            if isinstance(tgt, ast.Name):
                if t is not None and t[0] not in ("cudatuple",):
                    self.scopes[-1][tgt.id] = t
                elif tgt.id in self.scopes[-1] and t is None and tgt.id not in MODULE_NAMES:
                    del self.scopes[-1][tgt.id]
                elif t is None and tgt.id in MODULE_NAMES:
                    src = self._module_source(node.value)
                    self.scopes[-1][tgt.id] = ("mod", MODULE_NAMES[tgt.id]) if src else ("other", None)
            elif isinstance(tgt, ast.Tuple) and t is not None and t[0] == "cudatuple":
                for elt, cls in zip(tgt.elts, CUDA_RETURNS[t[1]]):
                    if isinstance(elt, ast.Name) and cls:
                        self.scopes[-1][elt.id] = ("cudaobj", cls)
            elif isinstance(tgt, ast.Tuple):
                for elt in tgt.elts:
                    if isinstance(elt, ast.Name) and elt.id in MODULE_NAMES:
                        self.scopes[-1][elt.id] = ("other", None)
            elif isinstance(tgt, ast.Attribute) and isinstance(tgt.value, ast.Name) and tgt.value.id == "self":
                if t is not None:
                    self.self_types[tgt.attr] = t
            else:
                self.type_of(tgt)

    @staticmethod
    def _module_source(value) -> bool:
        return isinstance(value, ast.Call) and ast.unparse(value.func) in ("import_tensorrt", "_cudart", "self.require")

    def visit_Attribute(self, node):
        self.type_of(node)

    def visit_Call(self, node):
        fn = ast.unparse(node.func)
        if fn in ("getattr", "hasattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            base = self.type_of(node.args[0])
            if base is not None and isinstance(node.args[1].value, str):
                found = self.s.lookup(base[0], base[1], node.args[1].value)
                soft = fn == "hasattr" or len(node.args) > 2
                entry = (node.lineno, ast.unparse(node), f"{node.args[1].value!r} is not in {self.where(base)}")
                if found is None:
                    (self.soft if soft else self.problems).append(entry)
            for a in node.args[2:]:
                self.visit(a)
            return
        if isinstance(node.func, ast.Name) and len(node.args) >= 2:
            # a helper called as helper(obj, "name"): edgeopt's parser_errors reads ParserError accessors so
            base = self.type_of(node.args[0])
            if base is not None and base[0] == "obj":
                for a in node.args[1:]:
                    if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.isidentifier():
                        if self.s.lookup(base[0], base[1], a.value) is None:
                            self.soft.append((node.lineno, ast.unparse(node), f"{a.value!r} is not in {self.where(base)}"))
        self.type_of(node)
        for a in (*node.args, *(k.value for k in node.keywords)):
            self.visit(a)
        if not isinstance(node.func, ast.Name):
            self.visit(node.func.value if isinstance(node.func, ast.Attribute) else node.func)

    def visit_For(self, node):
        self.generic_visit(node)


def scan(source: str, surface: Surface) -> tuple[list, list]:
    f = Finder(surface)
    f.visit(ast.parse(source))
    return sorted(set(f.problems)), sorted(set(f.soft))


def uses_of_parser_errors(source: str) -> set[str]:
    """The ParserError accessors parser_errors() looks up by name (call(e, "node") ...)."""
    tree = ast.parse(source)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "parser_errors")
    return {c.args[1].value for c in ast.walk(fn) if isinstance(c, ast.Call) and ast.unparse(c.func) == "call"
            and isinstance(c.args[1], ast.Constant)}


# ---- edgeopt against each supported version ---------------------------------------------------------------
@pytest.mark.parametrize("trt_v,cuda_v", SUPPORTED)
def test_edgeopt_touches_only_names_every_supported_version_has(trt_v, cuda_v):
    s = Surface(trt_v, cuda_v)
    hard = {}
    for path in SOURCES:
        problems, _ = scan(path.read_text(), s)
        if problems:
            hard[path.relative_to(ROOT).as_posix()] = problems
    assert not hard, f"{s.name}: {hard}"
    errors = uses_of_parser_errors((ROOT / "edgeopt/backends/tensorrt/builder.py").read_text())
    assert errors == {"node", "node_name", "node_operator", "code", "desc"}
    assert errors <= set(s.trt["classes"]["ParserError"]["methods"])


def test_feature_detected_names_exist_in_some_version():
    soft = None
    for trt_v, cuda_v in SUPPORTED:
        found = set()
        for path in SOURCES:
            found |= {(path.name, p[1], p[2].split(" is not in ")[0]) for p in scan(path.read_text(), Surface(trt_v, cuda_v))[1]}
        soft = found if soft is None else soft & found
    assert not soft, f"feature-detected names that no supported version has: {soft}"


def test_the_scan_sees_edgeopt_calls():
    """The scan really follows edgeopt's objects (a scan that saw nothing would pass everything)."""
    s = Surface("10.3", "12.6")
    seen = []
    orig = s.lookup

    def spy(kind, detail, attr):
        seen.append((kind, detail if not isinstance(detail, tuple) else detail[0], attr))
        return orig(kind, detail, attr)

    s.lookup = spy
    for path in SOURCES:  # each module on its own, as the check above scans them
        Finder(s).visit(ast.parse(path.read_text()))
    for expected in [("obj", "IBuilderConfig", "set_timing_cache"), ("obj", "IExecutionContext", "execute_async_v3"),
                     ("obj", "ICudaEngine", "get_tensor_mode"), ("mod", "trt", "init_libnvinfer_plugins"),
                     ("mod", "cuda", "cudaMemcpyAsync"), ("cudaobj", "cudaDeviceProp", "totalGlobalMem"),
                     ("cudaenum", "cudaMemcpyKind", "cudaMemcpyDeviceToHost"), ("obj", "ITensor", "is_shape_tensor"),
                     ("obj", "Runtime", "DLA_core"), ("enum", "ILogger.Severity", "WARNING"),
                     ("obj", "Builder", "num_DLA_cores"), ("obj", "ITimingCache", "serialize")]:
        assert expected in seen, expected


@pytest.mark.parametrize("snippet,version,needle", [
    ("def f(trt, config):\n    config.set_timing_cahce(config.create_timing_cache(b''), ignore_mismatch=False)\n",
     "10.3", "'set_timing_cahce' is not in IBuilderConfig"),
    ("def f(trt, config):\n    config.set_timing_cache(None, ignore_mismatches=False)\n", "10.3", "arguments fit no"),
    ("def f(trt):\n    return trt.BuilderFlag.TF33\n", "11.4", "'TF33' is not in BuilderFlag"),
    ("def f(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n", "11.4", "'FP16' is not in BuilderFlag"),
    ("def f(trt):\n    return trt.Builder(trt.Logger()).platform_has_fast_fp16\n", "11.4", "platform_has_fast_fp16"),
    ("def f(trt):\n    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)\n", "11.4", "EXPLICIT_BATCH"),
    ("def f(rt):\n    err, prop = rt.cudaGetDeviceProperties(0)\n    return prop.clockRate\n", "11.4", "clockRate"),
    ("def f(rt):\n    return rt.cudaMallocc(16)\n", "10.3", "cudaMallocc"),
    ("def f(trt):\n    e = trt.Runtime(trt.Logger()).deserialize_cuda_engine(b'')\n    return e.num_bindings\n", "10.3",
     "'num_bindings' is not in ICudaEngine"),
])
def test_a_misspelt_or_removed_name_fails_the_check(snippet, version, needle):
    s = Surface(version, "12.6" if version == "10.3" else "13.5")
    problems, _ = scan(snippet, s)
    assert any(needle in p[2] or needle in p[1] for p in problems), problems


def test_10_x_builder_flags_edgeopt_plans_exist_and_11_plans_none():
    from edgeopt.backends.tensorrt.plan import builder_config_choice

    flags10 = set(api.trt_surface("10.3")["enums"]["BuilderFlag"])
    for precision in ("fp32", "fp16", "bf16", "int8"):
        assert set(builder_config_choice("10.3", precision).builder_flags) <= flags10
    for precision in ("fp32", "fp16", "int8"):
        assert builder_config_choice("11.4", precision).builder_flags == ()


# ---- the double against the same files ----------------------------------------------------------------------
@pytest.mark.parametrize("trt_v", api.TRT_VERSIONS)
def test_the_double_exposes_only_real_names_with_real_signatures(trt_v):
    import trt_double

    try:
        trt = trt_double.activate(trt_v)
        surface = api.trt_surface(trt_v)
        names = [n for n in dir(trt) if not n.startswith("_")]
        for n in names:
            obj = getattr(trt, n)
            if inspect.ismodule(obj) or n == "annotations" or getattr(obj, "__module__", "tensorrt") != "tensorrt":
                continue
            assert n in surface["classes"] or n in surface["enums"] or n in surface["functions"] \
                or n in surface["python_wrappers"], f"tensorrt.{n} is not in TensorRT {trt_v}"
            if n in surface["enums"]:
                assert list(obj.__members__) == surface["enums"][n]  # pybind11's __members__ keeps aliases
                values = api.trt_enum_values(trt_v).get(n)
                if values is not None:  # TensorRT's values (NVIDIA's headers), never list positions
                    assert {m: int(v) for m, v in obj.__members__.items()} == values, n
            elif n in surface["classes"]:
                _check_class(obj, n, surface)
            else:
                args = surface["functions"].get(n, surface["python_wrappers"].get(n))
                assert list(inspect.signature(obj).parameters) == args, n
        assert [m.name for m in trt.ILogger.Severity] == surface["nested_enums"]["ILogger.Severity"]
    finally:
        trt_double.deactivate()


def _check_class(cls, name, surface):
    spec = surface["classes"][name]
    for attr, value in vars(cls).items():
        if attr.startswith("_") and attr != "__init__":
            continue
        if attr == "Severity" or attr in surface["nested_enums"]["ILogger.Severity"]:
            assert name in ("ILogger", "Logger"), f"{name}.{attr}"
            continue
        if isinstance(value, property):
            assert attr in spec["properties"], f"{name}.{attr} is not a property in the bindings"
        elif callable(value):
            assert attr in spec["methods"], f"{name}.{attr} is not a method in the bindings"
            if attr == "__init__" and not spec["methods"][attr]:
                continue  # not constructible from Python (TensorRT makes it): the double's constructor is internal
            params = [p for p in inspect.signature(value).parameters if p != "self"]
            assert params in spec["methods"][attr], f"{name}.{attr}{params} is none of {spec['methods'][attr]}"
        else:
            assert attr in spec["properties"] or attr in spec["methods"], f"{name}.{attr}"


@pytest.mark.parametrize("layout", ["12.6", "13.5"])
def test_the_cuda_double_matches_cuda_python(layout):
    import trt_double

    try:
        trt_double.activate("10.3" if layout == "12.6" else "11.4", trt_double.Device(driver_cuda=13000),
                            cuda_layout=layout)
        from cuda.bindings import runtime as rt

        surface = api.cuda_surface(layout)["modules"]["cuda.bindings.runtime"]
        for n in [n for n in dir(rt) if n.startswith("cuda")]:
            obj = getattr(rt, n)
            if n in surface["enums"]:
                assert {m.name for m in obj} <= set(surface["enums"][n]), n
            elif n in surface["classes"]:
                if n == "cudaDeviceProp":
                    fields = vars(rt.cudaGetDeviceProperties(0)[1])
                    assert set(fields) <= set(surface["classes"][n]["properties"])
            else:
                assert n in surface["functions"], f"cuda.bindings.runtime.{n} is not in cuda-python {layout}"
                assert list(inspect.signature(obj).parameters) == surface["functions"][n]["args"], n
                returns = surface["functions"][n].get("returns")
                if returns and n in ("cudaMalloc", "cudaStreamCreate", "cudaEventCreate", "cudaMemGetInfo",
                                     "cudaGetDeviceCount", "cudaDriverGetVersion", "cudaRuntimeGetVersion"):
                    got = obj(16) if n == "cudaMalloc" else obj()
                    assert isinstance(got, tuple) and len(got) == len(returns) and got[0] == rt.cudaError_t.cudaSuccess
    finally:
        trt_double.deactivate()
