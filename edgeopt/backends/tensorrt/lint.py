"""TensorRT preflight: what a TensorRT target will reject, found on any machine with only ``onnx``.

``lint(path, target)`` reads the ONNX file (weights are not loaded) and checks it against the TensorRT
version the target runs (``target.hardware["tensorrt"]``): operators, Q/DQ form, dynamic axes without a
profile range, opset and IR version, INT64 inputs and weights, and the 2 GB protobuf limit. Every finding
names the node (or input) and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.errors import UserInputError, require
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.backends.base import Preflight
from edgeopt.backends.tensorrt.operators import (
    BASELINE,
    DATA_DEPENDENT,
    MIN_SM,
    NMS_PLUGINS,
    PARSER_VERSIONS,
    STANDARD_PLUGINS,
    is_plugin_name,
    operator_support,
    parse_version,
    parser_limits,
)
from edgeopt.backends.tensorrt.plugins import alternatives, field_problems, plugin_status

PROTOBUF_LIMIT = 2 * 1024**3  # bytes: a single ONNX protobuf cannot be larger
STANDARD_DOMAINS = ("", "ai.onnx")
PLUGIN_DOMAINS = ("trt.plugins", "trt")  # compared lower-case: "TRT" too
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    code: str
    node: str  # the node, graph input or initializer concerned; "" for the whole model
    message: str
    fix: str

    def to_dict(self) -> dict:
        return {"severity": self.severity, "code": self.code, "node": self.node, "message": self.message,
                "fix": self.fix}


@dataclass
class LintReport:
    onnx_path: str
    target: str
    tensorrt: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def to_dict(self) -> dict:
        return {"onnx": self.onnx_path, "target": self.target, "tensorrt": self.tensorrt, "ok": self.ok,
                "errors": len(self.errors), "warnings": len(self.warnings),
                "findings": [f.to_dict() for f in self.findings]}

    def summary(self) -> str:
        head = (f"TensorRT {self.tensorrt} preflight of {Path(self.onnx_path).name} for {self.target}: "
                f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        lines, fixes = [head], {}
        for f in self.findings:
            where = f" [{f.node}]" if f.node else ""
            lines.append(f"  {f.severity.upper()} {f.code}{where}: {f.message}")
            if f.fix in fixes:
                lines.append(f"    fix: as for {fixes[f.fix]} above")
            else:
                fixes[f.fix] = f.node or f.code
                lines.append(f"    fix: {f.fix}")
        return "\n".join(lines)


def lint(onnx_path: Path | str, target: Target, spec: IOSpec | None = None,
         tensorrt_version: str | None = None) -> LintReport:
    """Check an ONNX file against the TensorRT version of ``target`` (or ``tensorrt_version``)."""
    onnx = require("onnx", "tensorrt", "check an ONNX model for TensorRT")
    path = Path(onnx_path)
    trt_text = tensorrt_version or str(target.hardware.get("tensorrt", "") or "")
    if not trt_text:
        raise UserInputError(f"Target {target.name!r} does not say which TensorRT version it runs.",
                             'Add tensorrt = "10.3" (for example) under [hardware] in its target file.')
    try:
        version = parse_version(trt_text)
    except ValueError:
        raise UserInputError(f"Target {target.name!r}: cannot read TensorRT version {trt_text!r}.",
                             'Write it as MAJOR.MINOR, for example tensorrt = "10.3".') from None
    report = LintReport(str(path), target.name, trt_text)
    if not path.is_file():
        raise UserInputError(f"ONNX file not found: {path}.", "Check the path (run `edgeopt export` first).")
    if version < BASELINE:
        report.findings.append(Finding(
            "warning", "tensorrt-version-unchecked", "",
            f"TensorRT {trt_text} is older than the operator table edgeopt keeps (10.0 and newer).",
            "Check the model against docs/operators.md of that release by hand, or move to JetPack 6+."))
    size = path.stat().st_size
    if size >= PROTOBUF_LIMIT:
        report.findings.append(_over_2gb(path, size))
        return report
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        report.findings.append(Finding("error", "model-unreadable", "", f"onnx cannot read {path.name}: {exc}",
                                       "Re-export the model; the file is damaged or not ONNX."))
        return report
    graph = _Graph(model, path.parent)
    for check in (_check_versions, _check_operators, _check_qdq, _check_data_dependent, _check_inputs,
                  _check_int64_weights, _check_external_data, _check_dla):
        report.findings.extend(check(graph, version, target, spec))
    return report


# ---- the model, indexed once -------------------------------------------------------------------------
class _Graph:
    def __init__(self, model, base_dir: Path):
        self.model, self.base_dir = model, base_dir
        self.initializers = {t.name: t for t in _all_initializers(model.graph)}
        self.constants = dict(self.initializers)
        self.nodes = list(_walk_nodes(model))  # (node, display name)
        for node, _ in self.nodes:
            if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
                for attr in node.attribute:
                    if attr.name == "value" and node.output:
                        self.constants[node.output[0]] = attr.t
        self.consumers: dict[str, list] = {}
        for node, name in self.nodes:
            for inp in node.input:
                self.consumers.setdefault(inp, []).append((node, name))
        self.local_functions = {(f.domain, f.name) for f in model.functions}

    def opset(self, domain: str = "") -> int | None:
        for o in self.model.opset_import:
            if o.domain in (domain, "ai.onnx" if domain == "" else domain):
                return o.version
        return None

    def array(self, name: str):
        from onnx import numpy_helper

        return numpy_helper.to_array(self.constants[name], base_dir=str(self.base_dir))


def _all_initializers(graph):
    yield from graph.initializer
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _all_initializers(sub)


def _subgraphs(node):
    from onnx import AttributeProto

    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _walk_nodes(model):
    def walk(graph, prefix):
        for i, node in enumerate(graph.node):
            name = f"{prefix}{node.name or f'{node.op_type}#{i}'}"
            yield node, name
            for sub in _subgraphs(node):
                yield from walk(sub, f"{name}/")

    yield from walk(model.graph, "")
    for func in model.functions:
        for i, node in enumerate(func.node):
            yield node, f"{func.name}/{node.name or f'{node.op_type}#{i}'}"


# ---- checks: each returns a list of findings ---------------------------------------------------------
def _check_versions(g: _Graph, version, target, spec) -> list[Finding]:
    limits, out = parser_limits(version), []
    trt = f"{version[0]}.{version[1]}"
    opset = g.opset("")
    newest = max(row[2] for row in PARSER_VERSIONS)
    if opset is not None and opset > limits["max_opset"]:
        known = opset <= newest
        out.append(Finding(
            "warning" if known else "error", "opset-too-new", "",
            f"The model uses ONNX opset {opset}; TensorRT {trt} documents opsets {limits['min_opset']} to "
            f"{limits['max_opset']} (its parser is built against ONNX {limits['onnx']})"
            + ("; its parser warns and parses it, reading operators changed since with their older definition."
               if known else f", and no ONNX release TensorRT knows defines opset {opset}."),
            f"Export again with opset_version={limits['max_opset']} (torch.onnx.export), or convert with "
            f"onnx.version_converter.convert_version(model, {limits['max_opset']})."))
    elif opset is not None and opset < limits["min_opset"]:
        out.append(Finding("warning", "opset-too-old", "",
                           f"Opset {opset} is older than {limits['min_opset']}, the oldest TensorRT promises to parse.",
                           f"Export again with opset 17 or newer (at most {limits['max_opset']})."))
    ir = g.model.ir_version
    if ir > limits["max_ir"]:
        out.append(Finding(
            "warning", "ir-version-too-new", "",
            f"IR version {ir} is newer than {limits['max_ir']}, the newest ONNX {limits['onnx']} (TensorRT {trt}'s "
            "parser) knows; features added since are read wrong or not at all.",
            f"Set model.ir_version = {limits['max_ir']} before saving (safe when no newer IR feature is used)."))
    return out


def _check_operators(g: _Graph, version, target, spec) -> list[Finding]:
    out, trt = [], f"{version[0]}.{version[1]}"
    for node, name in g.nodes:
        if (node.domain, node.op_type) in g.local_functions:
            continue  # the parser expands model-local functions; their bodies are checked as nodes
        if node.domain.lower() in PLUGIN_DOMAINS or (
                is_plugin_name(node.op_type) and operator_support(node.op_type, version)[0] is None):
            out.append(_plugin_finding(node, name, version))
            continue
        if node.domain not in STANDARD_DOMAINS:
            out.append(Finding(
                "error", "custom-operator", name,
                f"{node.domain}::{node.op_type} is outside the ai.onnx operator set TensorRT parses; only a "
                "TensorRT plugin of that name would take it.",
                "Give TensorRT the exported ONNX, not one rewritten by ONNX Runtime's optimizer "
                "(com.microsoft fused ops), or register a TensorRT plugin for it."))
            continue
        supported, note = operator_support(node.op_type, version)
        if supported is None:
            out.append(Finding("error", "unknown-operator", name,
                               f"{node.op_type} is not in TensorRT {trt}'s ONNX operator list.",
                               "Export with an older opset, rewrite the operator with supported ones, "
                               "or provide a TensorRT plugin."))
        elif supported is False:
            out.append(Finding("error", "unsupported-operator", name,
                               f"{node.op_type} is not supported by TensorRT {trt}'s ONNX parser.", note))
        else:
            out.extend(_check_restrictions(g, node, name, version))
    return out


_ATTR_TYPES = {1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 6: "FLOATS", 7: "INTS", 8: "STRINGS"}


def _string_attr(node, key: str, default: str) -> str:
    for a in node.attribute:
        if a.name == key:
            return a.s.decode(errors="replace") if a.type == 3 else str(a.i if a.type == 2 else a.s)  # 3: STRING
    return default


def _plugin_finding(node, name: str, version=BASELINE) -> Finding:
    """A plugin node: looked up by TensorRT's parser as (op_type, plugin_version, plugin_namespace) in the plugin
    registry, which holds a version of a standard plugin only in the releases that register it (plugins.py)."""
    where = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
    trt = f"{version[0]}.{version[1]}"
    if node.op_type in STANDARD_PLUGINS:
        pv = _string_attr(node, "plugin_version", "1")
        ns = _string_attr(node, "plugin_namespace", "")
        status, why = plugin_status(node.op_type, pv, version)
        if ns:
            return Finding("error", "plugin-namespace", name,
                           f"{where} asks for plugin_namespace {ns!r}; TensorRT's standard plugins are registered "
                           "in the empty namespace (init_libnvinfer_plugins(logger, '')), so the parser will not "
                           "find it.", "Remove the plugin_namespace attribute (or set it to \"\").")
        if status in ("removed", "not-yet", "no-such-version"):
            return Finding("error", f"plugin-{status}", name,
                           f"{why}: TensorRT {trt}'s parser fails on this node (\"Plugin not found\").",
                           alternatives(node.op_type, version) + ".")
        kinds = {a.name: _ATTR_TYPES.get(a.type, str(a.type)) for a in node.attribute}
        problems = field_problems(node.op_type, pv, kinds)
        if problems:
            return Finding("error", "plugin-attributes", name,
                           f"{where}: {'; '.join(problems)}; its creator refuses the node (\"Could not create "
                           "plugin\").", "Give every attribute the plugin documents, with its type (floats as "
                           "FLOAT, integers as INT): edgeopt's nms = \"plugin\" writes a complete node.")
        note = f" Note: {why}." if status == "deprecated" else ""
        return Finding("warning", "plugin-operator", name,
                       f"{where} is not an ONNX operator: TensorRT's parser builds it from the plugin registry "
                       "(a standard TensorRT plugin, registered by edgeopt with init_libnvinfer_plugins)"
                       + ("; its outputs have a fixed size, which edgeopt's runner takes" if node.op_type in NMS_PLUGINS
                          else "") + ". ONNX Runtime cannot run it, so the host cannot check this graph's outputs."
                       + note,
                       "Nothing to do for TensorRT; keep a plugin-free export for host-side checks.")
    return Finding("warning", "plugin-operator", name,
                   f"{where} is a TensorRT plugin node; it builds only where that plugin is registered.",
                   "Make sure the plugin library is loaded on the device (trtexec --plugins / "
                   "ctypes.CDLL before building).")


def _check_restrictions(g: _Graph, node, name: str, version=BASELINE) -> list[Finding]:
    """The few operator restrictions that can be checked statically and commonly bite."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Resize" and "mode" in attrs and attrs["mode"].s == b"cubic":
        return [Finding("error", "operator-restriction", name,
                        "Resize with mode='cubic' is not supported by TensorRT (nearest and linear only).",
                        "Use bilinear interpolation in the model (for example interpolate(mode='bilinear')).")]
    if node.op_type == "Resize" and "antialias" in attrs and attrs["antialias"].i:
        return [Finding("error", "operator-restriction", name,
                        "Resize with antialias=1 is not supported by TensorRT.",
                        "Export without antialiasing (interpolate(..., antialias=False), the default).")]
    if node.op_type == "Pad" and len(node.input) > 3 and node.input[3] and version < (10, 4):
        return [Finding("error", "operator-restriction", name,
                        f"Pad with an axes input is supported from TensorRT 10.4; this target runs "
                        f"{version[0]}.{version[1]}.",
                        "Export with opset 17 or older semantics (pads for every axis, no axes input), or pad "
                        "with explicit zeros for the other axes.")]
    if node.op_type == "TopK" and "sorted" in attrs and attrs["sorted"].i == 0:
        return [Finding("error", "operator-restriction", name,
                        "TopK with sorted=0 is not supported by TensorRT (it returns sorted results only).",
                        "Export with sorted=True (torch.topk's default).")]
    if node.op_type == "TopK" and len(node.input) > 1 and node.input[1] not in g.constants:
        return [Finding("warning", "topk-runtime-k", name,
                        f"TopK's K ({node.input[1]!r}) is computed at run time: TensorRT takes it as a shape tensor "
                        "(computed from shapes, not from data) and at most 3840.",
                        "Make K a constant (for example min(K, anchors) computed at export), or keep it a shape "
                        "computation under 3840.")]
    if node.op_type == "If":
        ranks = [[len(o.type.tensor_type.shape.dim) if o.type.tensor_type.HasField("shape") else None
                  for o in attrs[b].g.output] for b in ("then_branch", "else_branch") if b in attrs]
        if len(ranks) == 2 and any(a is not None and b is not None and a != b for a, b in zip(*ranks)):
            return [Finding("error", "operator-restriction", name,
                            f"If's branches give outputs of different ranks ({ranks[0]} vs {ranks[1]}); TensorRT "
                            "needs the same rank from both.",
                            "Return tensors of the same rank from both branches (for example an empty [0, 4] box "
                            "tensor, not a scalar), or remove the branch at export.")]
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1] and node.output[1] in g.consumers:
        return [Finding("error", "operator-restriction", name,
                        "MaxPool's Indices output is used; TensorRT does not produce it.",
                        "Do not use return_indices=True / MaxUnpool in the exported model.")]
    return []


def _check_qdq(g: _Graph, version, target, spec) -> list[Finding]:
    out = []
    cc = target.hardware.get("compute_capability")
    sm = parse_version(str(cc)) if cc and str(cc)[:1].isdigit() else None
    for node, name in g.nodes:
        if node.op_type in QDQ_OPS and node.domain in STANDARD_DOMAINS:
            scale = node.input[1] if len(node.input) > 1 else ""
            if scale and scale not in g.constants:
                out.append(Finding("error", "qdq-scale-dynamic", name,
                                   f"{node.op_type}'s scale {scale!r} is computed at run time; TensorRT's explicit "
                                   "quantization needs a constant scale (an initializer).",
                                   "Quantize statically: calibrate once and store the scales as initializers."))
                continue
            found = _check_one_qdq(g, node, name)
            out.extend(found or _check_qdq_sm(g, node, name, sm, target))
    return out


def _check_qdq_sm(g: _Graph, node, name: str, sm, target) -> list[Finding]:
    zp = node.input[2] if len(node.input) > 2 else ""
    qtype = _quantized_type(g, node, zp) if (not zp or zp in g.constants) else None
    need = MIN_SM.get(qtype)
    if need is None or sm is None or sm >= need[0]:
        return []
    return [Finding("error", f"qdq-{need[1].lower()}-unsupported", name,
                    f"{node.op_type} in {need[1]}: TensorRT runs {need[1]} on sm {need[0][0]}.{need[0][1]} and newer; "
                    f"{target.name} is sm {sm[0]}.{sm[1]}.",
                    "Quantize to INT8 for this device (or build FP16).")]


_INT8, _UINT8, _INT32 = 3, 2, 6  # onnx.TensorProto.INT8 / UINT8 / INT32
_SIGNED_OK = {3, 17, 22, 23}  # INT8, FLOAT8E4M3FN, INT4, FLOAT4E2M1 (quantized types TensorRT takes)
_NNCF_FIX = ("Quantize for TensorRT: symmetric, signed INT8 activations (NNCF: preset=QuantizationPreset."
             "PERFORMANCE, advanced_parameters with overflow_fix=OverflowFix.DISABLE and activations "
             "signedness_to_force=True; ONNX Runtime: activation_type=QInt8, symmetric), quantizing the exported "
             "FP32 ONNX.")


def _check_one_qdq(g: _Graph, node, name: str) -> list[Finding]:
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if zp_name and zp_name not in g.constants:
        return [Finding("error", "qdq-zero-point-dynamic", name,
                        f"{node.op_type}'s zero point {zp_name!r} is computed at run time; TensorRT needs a "
                        "constant zero point of 0.", "Quantize statically (constant scale, zero point 0).")]
    qtype = _quantized_type(g, node, zp_name)
    if qtype is None:  # a QuantizeLinear without zero point or output_dtype: ONNX says UINT8
        return [Finding("warning", "qdq-zero-point-missing", name,
                        "QuantizeLinear has no zero point, so ONNX quantizes to UINT8; TensorRT quantizes to INT8 "
                        "instead, so results differ from the ONNX reference.",
                        "Give it an INT8 zero-point initializer of 0. " + _NNCF_FIX)]
    if qtype == _UINT8:
        what = f"the zero point {zp_name!r} is UINT8" if zp_name else "the quantized data is UINT8"
        return [_unsigned(name, node.op_type, what)]
    if qtype == _INT32:
        return [Finding("error", "qdq-int32", name,
                        f"{node.op_type} of INT32 data (a quantized bias, {node.input[0]!r}); TensorRT's quantized "
                        "types are INT8, FP8, INT4 and FP4 only.",
                        "Keep biases in float: ONNX Runtime quantize_static(..., extra_options={'QuantizeBias': "
                        "False}); NNCF leaves biases float.")]
    if qtype not in _SIGNED_OK:
        return [Finding("error", "qdq-type", name,
                        f"{node.op_type} quantizes to ONNX type {qtype}; TensorRT takes INT8 (or FP8/INT4/FP4).",
                        _NNCF_FIX)]
    return _nonzero_zero_point(g, node, name, zp_name) if zp_name else []


def _quantized_type(g: _Graph, node, zp_name: str) -> int | None:
    """The integer type a Q/DQ node works in: its zero point's, else output_dtype or the constant input's."""
    if zp_name:
        return g.constants[zp_name].data_type
    if node.op_type == "DequantizeLinear":
        source = g.constants.get(node.input[0]) if node.input else None
        return source.data_type if source is not None else _INT8  # its QuantizeLinear is checked itself
    output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    return output_dtype or None


def _nonzero_zero_point(g: _Graph, node, name: str, zp_name: str) -> list[Finding]:
    try:
        values = g.array(zp_name)
    except Exception:  # noqa: BLE001 - external data missing; reported by _check_external_data
        return []
    if values.size and (values.astype("float64") != 0).any():
        return [Finding("error", "qdq-zero-point-nonzero", name,
                        f"{node.op_type} has an asymmetric zero point ({zp_name!r} = {values.flatten()[:4].tolist()}); "
                        "TensorRT only takes zero point 0 (symmetric quantization).", _NNCF_FIX)]
    return []


def _unsigned(name: str, op: str, what: str) -> Finding:
    return Finding("error", "qdq-unsigned", name,
                   f"{op}: {what}. TensorRT's explicit quantization takes signed INT8 only; NNCF's and ONNX "
                   "Runtime's default activations are UINT8, which TensorRT rejects.", _NNCF_FIX)


def _check_inputs(g: _Graph, version, target, spec) -> list[Finding]:
    out = []
    inputs = [vi for vi in g.model.graph.input if vi.name not in g.initializers]
    for vi in inputs:
        out.extend(_check_input_dims(vi, spec))
        if vi.type.tensor_type.elem_type == 7:  # INT64
            out.append(Finding(
                "warning", "int64-input", vi.name,
                f"Input {vi.name!r} is INT64. TensorRT 10+ takes it as an INT64 binding, but INT64 is not "
                "supported by DLA nor by float layers (MatMul, Conv), and the copy is twice as large as INT32.",
                "Export the input as int32 when its values fit (token ids, indices), or keep int64 and feed "
                "int64 arrays."))
    if spec is not None:
        names = {vi.name for vi in inputs}
        for t in spec.inputs:
            if t.name not in names:
                out.append(Finding("error", "spec-input-missing", t.name,
                                   f"The spec declares input {t.name!r}, which the ONNX model does not have "
                                   f"(it has {sorted(names)}).", "Fix the input names in the recipe or spec."))
    return out


def _check_input_dims(vi, spec: IOSpec | None) -> list[Finding]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return [Finding("error", "dynamic-rank", vi.name, f"Input {vi.name!r} has no declared shape (unknown rank).",
                        "Export with a fixed rank and named dynamic axes (dynamic_shapes / dynamic_axes).")]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in tt.shape.dim]
    tspec = next((t for t in spec.inputs if t.name == vi.name), None) if spec is not None else None
    if spec is not None and tspec is None:
        return [Finding("error", "input-not-in-spec", vi.name,
                        f"Input {vi.name!r} of the ONNX model is not in the input spec, so it has no shapes "
                        "to build a TensorRT profile from.", f"Declare {vi.name!r} in the recipe's [[inputs]].")]
    if tspec is not None and len(tspec.shape) != len(dims):
        return [Finding("error", "shape-mismatch", vi.name,
                        f"Input {vi.name!r} has rank {len(dims)} in the ONNX model ({dims}) but rank "
                        f"{len(tspec.shape)} in the spec ({list(tspec.shape)}).", "Make the spec match the export.")]
    out = []
    for axis, d in enumerate(dims):
        declared = tspec.shape[axis] if tspec is not None else None
        if isinstance(d, int):
            out.extend(_fixed_axis(vi.name, axis, d, declared, spec))
        elif declared is None:
            out.append(Finding(
                "error", "dynamic-dim-no-range", vi.name,
                f"Axis {axis} ({d}) of input {vi.name!r} is dynamic, but no min/opt/max range is given: "
                "TensorRT needs an optimization profile for every dynamic axis.",
                f"Declare the range, for example [dims.{_dim_name(d)}] min = 1, opt = 1, max = 8 "
                f"(CLI: --dim {_dim_name(d)}=1:1:8), or export with a fixed size."))
    return out


def _fixed_axis(name: str, axis: int, size: int, declared, spec) -> list[Finding]:
    if declared is None or declared == size:
        return []
    if isinstance(declared, int):
        return [Finding("error", "shape-mismatch", name,
                        f"Axis {axis} of input {name!r} is fixed at {size} in the ONNX model; the spec says {declared}.",
                        f"Use {size} in the spec, or export with that axis dynamic.")]
    dim = spec.dims[declared]
    if dim.min == dim.max == size:
        return []
    return [Finding("error", "shape-mismatch", name,
                    f"Axis {axis} of input {name!r} is fixed at {size} in the ONNX model, but the spec gives it the "
                    f"range {declared} = {dim.min}..{dim.max}; TensorRT rejects a profile that differs from a fixed axis.",
                    f"Export with axis {axis} dynamic ({declared}), or fix the range to {size}.")]


def _dim_name(d: str) -> str:
    return d if d.isidentifier() else "batch"


def _check_int64_weights(g: _Graph, version, target, spec) -> list[Finding]:
    import numpy as np

    wide = []
    for name, t in g.initializers.items():
        if t.data_type != 7 or not t.dims or _is_external(t):
            continue
        users = g.consumers.get(name, [])
        if users and all(n.op_type == "Slice" for n, _ in users):
            continue  # INT64_MAX as a Slice end is the exporter's idiom for "to the end"; TensorRT clamps it
        if int(np.prod(t.dims)) > 1_000_000:
            continue
        try:
            arr = g.array(name)
        except Exception:  # noqa: BLE001 - unreadable constant: the parser will say so
            continue
        if arr.size and (arr.min() < INT32_MIN or arr.max() > INT32_MAX):
            wide.append((name, users[0][1] if users else name))
    if not wide:
        return []
    names = ", ".join(n for n, _ in wide[:5]) + (" ..." if len(wide) > 5 else "")
    return [Finding("warning", "int64-weights", wide[0][1],
                    f"INT64 constants with values outside the INT32 range ({names}); where TensorRT computes in "
                    "INT32 (shape arithmetic, DLA, older parsers) they are clamped.",
                    "Keep constants within INT32 range (for example clamp index constants before export), or check "
                    "the parity of the built engine.")]


def _check_data_dependent(g: _Graph, version, target, spec) -> list[Finding]:
    """NonZero / NonMaxSuppression: outputs whose shape depends on the data. TensorRT builds them; a graph output
    of such a shape is refused by edgeopt's runner (it allocates every output before running the engine)."""
    graph = g.model.graph
    source: dict[str, str] = {}  # tensor -> the data-dependent node it comes from
    names = {id(node): name for node, name in g.nodes}
    for node in graph.node:  # ONNX graphs are topologically sorted
        origin = names[id(node)] if node.op_type in DATA_DEPENDENT else next(
            (source[i] for i in node.input if i in source), None)
        if origin is not None:
            source.update({o: origin for o in node.output if o})
    ops = {names[id(n)]: n.op_type for n in graph.node}
    reach: dict[str, list[str]] = {}
    for o in graph.output:
        if o.name in source:
            reach.setdefault(source[o.name], []).append(o.name)
    nms = any(n.op_type == "NonMaxSuppression" for n in graph.node)
    fix = (("Run NMS outside the graph (export boxes and scores; edgeopt's detection task decodes them), or use "
            "TensorRT's EfficientNMS_TRT plugin, whose outputs have a fixed size (num_detections plus "
            "max_output_boxes padded rows)") if nms else
           "Keep output shapes independent of the data: mask instead of gathering (torch.where(mask, x, 0)) or "
           "pad to a fixed maximum count")
    out = []
    for node, name in g.nodes:
        if node.op_type not in DATA_DEPENDENT or name not in ops:
            continue
        if name in reach:
            out.append(Finding("error", "data-dependent-output", name,
                               f"{node.op_type} makes the shape of output(s) {', '.join(reach[name])} depend on the "
                               "data; TensorRT builds it, but edgeopt's TensorRT runner allocates outputs before "
                               "running and refuses it.", fix + "."))
        else:
            out.append(Finding("warning", "data-dependent-shape", name,
                               f"{node.op_type} has a data-dependent output shape inside the graph: TensorRT sizes it "
                               "at run time (no DLA, a synchronisation per run).", fix + "."))
    return out


def _is_external(t) -> bool:
    return t.data_location == 1  # onnx.TensorProto.EXTERNAL


def _check_external_data(g: _Graph, version, target, spec) -> list[Finding]:
    missing = {}
    for name, t in g.initializers.items():
        if _is_external(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            if not (g.base_dir / loc).is_file():
                missing.setdefault(loc, name)
    return [Finding("error", "external-data-missing", name,
                    f"Weights of {name!r} live in external file {loc!r}, which is not next to the model.",
                    "Keep the .onnx and its external data file(s) in the same folder (copy them together).")
            for loc, name in missing.items()]


def _check_dla(g: _Graph, version, target, spec) -> list[Finding]:
    core = target.options.get("dla_core")
    if core is None or int(core) < 0:
        return []
    cores = int(target.hardware.get("dla_cores", 0) or 0)
    if cores <= int(core):
        return [Finding("error", "dla-unavailable", "",
                        f"The target asks for DLA core {core}, but {target.name} has {cores} DLA core(s).",
                        "Remove dla_core from the target options (or set it to -1) to build for the GPU.")]
    return []  # whether a TensorRT release drives the DLA is the device's to say (Builder.num_DLA_cores)


def _over_2gb(path: Path, size: int) -> Finding:
    return Finding("error", "weights-over-2gb", "",
                   f"{path.name} is {size / 1024**3:.2f} GiB in one protobuf; ONNX files must stay under 2 GiB "
                   "(the protobuf limit), so neither onnx nor TensorRT can read it.",
                   "Save with external data: onnx.save(model, path, save_as_external_data=True, "
                   "all_tensors_to_one_file=True, location='model.onnx.data').")


def lint_or_raise(onnx_path: Path | str, target: Target, spec: IOSpec | None = None,
                  tensorrt_version: str | None = None) -> LintReport:
    """``lint`` that raises :class:`CompileError` listing the errors (warnings are returned)."""
    from edgeopt.errors import CompileError

    report = lint(onnx_path, target, spec, tensorrt_version)
    if not report.ok:
        details = "; ".join(f"{f.code} [{f.node}] {f.message}" for f in report.errors[:8])
        raise CompileError(f"TensorRT preflight found {len(report.errors)} error(s): {details}",
                           report.errors[0].fix + " (run `edgeopt lint` for the full list)")
    return report


def qdq_nodes(onnx_path: Path | str) -> int:
    """How many QuantizeLinear/DequantizeLinear nodes the model has (weights not loaded)."""
    onnx = require("onnx", "tensorrt", "inspect an ONNX model")
    model = onnx.load(str(onnx_path), load_external_data=False)
    return sum(1 for node, _ in _walk_nodes(model) if node.op_type in QDQ_OPS)


def is_fp16_model(onnx_path: Path | str) -> bool:
    """True when the graph computes in float16 (float16 weights or casts to float16)."""
    onnx = require("onnx", "tensorrt", "inspect an ONNX model")
    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(t.data_type == 10 for t in _all_initializers(model.graph)):
        return True
    return any(n.op_type == "Cast" and any(a.name == "to" and a.i == 10 for a in n.attribute)
               for n, _ in _walk_nodes(model))


class TensorRTPreflight(Preflight):
    """``edgeopt lint -t TARGET`` for TensorRT targets: :func:`lint` against the target's TensorRT version."""

    def run(self, model: Path, target: Target, spec: IOSpec | None, version: str | None = None) -> LintReport:
        return lint(model, target, spec, version)
