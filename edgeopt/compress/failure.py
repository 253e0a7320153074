"""A quantizer's failure told per node: which ONNX nodes its message names, what they are, and whether they sit
inside an ``If``/``Loop``/``Scan`` body, with what to do about it.

NNCF and ONNX Runtime's quantizer name the node they tripped on (``Could not find a node Unsqueeze_4373 in
NNCFGraph``, ``Statistics were not collected for the node .../RoiAlign_1``) but not where it is. The legacy
exporter puts torchvision detectors' data-dependent branches into ``If`` bodies (nodes named ``Unsqueeze_4373``,
no scope), which quantizers do not see into; the message alone does not say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTROL_FLOW = ("If", "Loop", "Scan")
MAX_NAMED = 4  # nodes described in one message


@dataclass(frozen=True)
class NodePlace:
    name: str
    op: str
    inside: tuple[tuple[str, str, str], ...] = ()  # (control-flow node name, its op, body attribute), outermost first

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op,
                "inside": [{"node": n, "op": op, "body": body} for n, op, body in self.inside] or None}

    def describe(self) -> str:
        if not self.inside:
            return f"{self.name} ({self.op}, in the main graph)"
        where = " in ".join(f"the {body} of {op} node {n}" for n, op, body in reversed(self.inside))
        return f"{self.name} ({self.op}, inside {where})"


def index_graph(model) -> dict[str, NodePlace]:
    """Every node of an ONNX model by name, and by the names of the tensors it makes (OpenVINO and NNCF name
    operations after either), subgraph bodies included."""
    found: dict[str, NodePlace] = {}

    def walk(graph, inside):
        for i, node in enumerate(graph.node):
            place = NodePlace(node.name or f"{node.op_type}_{i}", node.op_type, inside)
            for key in (node.name, *node.output):
                if key and key not in found:
                    found[key] = place
            for attr in node.attribute:
                bodies = [attr.g] if attr.HasField("g") else list(attr.graphs)
                for body in bodies:
                    walk(body, (*inside, (place.name, node.op_type, attr.name)))

    walk(model.graph, ())
    return found


_VARIABLE_SHAPES = re.compile(r"inhomogeneous shape|setting an array element with a sequence")
_ABOUT_GRAPH = re.compile(r"calibrat|statistic|node|graph|subgraph|body|bodies|empty", re.I)
_TOKEN = re.compile(r"[A-Za-z0-9_./:\-\[\]]+")


def named_nodes(message: str, index: dict[str, NodePlace]) -> list[NodePlace]:
    """The nodes of ``index`` that ``message`` names, in the order it names them (each once)."""
    out: list[NodePlace] = []
    for token in _TOKEN.findall(message):
        for cand in (token, token.strip(".:-[]"), token.rstrip("!.,:;")):
            place = index.get(cand)
            if place is not None and place not in out:
                out.append(place)
                break
    return out


def empty_tensors(onnx_path, nodes: list[NodePlace], feeds: list[dict]) -> list[str]:
    """The inputs and outputs of ``nodes`` (main graph) that are empty (a 0-sized axis) on every one of
    ``feeds``, run on ONNX Runtime: a node no calibration sample gives data (an RoI level no box reaches)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    by_name = {n.name: n for n in model.graph.node}
    tensors = [t for p in nodes if not p.inside and p.name in by_name
               for t in (*by_name[p.name].input, *by_name[p.name].output) if t]
    known = {o.name for o in model.graph.output}
    for t in dict.fromkeys(tensors):
        if t not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    empty = set(tensors)
    for feed in feeds:
        got = dict(zip(names, sess.run(None, feed)))
        empty &= {t for t in tensors if t in got and 0 in getattr(got[t], "shape", (1,))}
    return [t for t in dict.fromkeys(tensors) if t in empty]


def explain(message: str, onnx_path, feeds: list[dict] | None = None) -> dict:
    """``{"nodes": [...], "text": str, "hint": str}`` for a quantizer's error ``message`` on the model at
    ``onnx_path``: the nodes it names and where they are; when it names none, the model's control-flow nodes
    (quantizers calibrate each If/Loop body on the samples that run it). Empty when there is nothing to say."""
    try:
        import onnx

        index = index_graph(onnx.load(str(onnx_path), load_external_data=False))
    except Exception:  # noqa: BLE001 - a diagnosis only: the failure stands as it is
        return {}
    if _VARIABLE_SHAPES.search(message):
        return {"text": "ONNX Runtime's histogram calibrators (percentile, entropy) stack each tensor's values over "
                        "the calibration samples and fail on a tensor whose size changes from sample to sample (a "
                        "detector's variable number of boxes)",
                "hint": "use a MinMax recipe (ort-qdq-u8s8) or nncf-qdq, which calibrate such graphs"}
    nodes = named_nodes(message, index)
    body = ("quantizers calibrate an If/Loop body only on the calibration samples that run it, and cannot "
            "calibrate one that none runs: give calibration samples that take every branch, export without that "
            "control flow (fixed input sizes, another exporter), or ship a float precision for this backend")
    if not nodes:
        flow = list({id(p): p for p in index.values() if p.op in CONTROL_FLOW}.values())
        if not flow or not _ABOUT_GRAPH.search(message):
            return {}
        text = ("the message names no node; the model has control flow: "
                + ", ".join(p.describe() for p in flow[:MAX_NAMED])
                + (f" and {len(flow) - MAX_NAMED} more" if len(flow) > MAX_NAMED else ""))
        return {"nodes": [p.to_dict() for p in flow[:MAX_NAMED]], "text": text, "hint": body}
    empty: list[str] = []
    if feeds and not any(n.inside for n in nodes):
        try:
            empty = empty_tensors(onnx_path, nodes[:MAX_NAMED], feeds)
        except Exception:  # noqa: BLE001 - a diagnosis only
            empty = []
    if any(n.inside for n in nodes):
        hint = body
    elif empty:
        hint = (f"its tensor(s) {', '.join(empty[:MAX_NAMED])} are empty on every calibration sample tried "
                f"({len(feeds)}), so there is nothing to calibrate there (an RoI pooling level that no box "
                "reaches, a branch no sample takes): give calibration samples that reach it, or use another "
                "INT8 recipe")
    else:
        hint = (f"keep it in float: [compression] float_nodes = [\"{nodes[0].name}\"] (a detector's post-processing "
                "stays in float with [model] kind = \"detector\" or [compression] float_head = \"on\")")
    text = "; ".join(("node " if i == 0 else "") + n.describe() for i, n in enumerate(nodes[:MAX_NAMED]))
    return {"nodes": [n.to_dict() for n in nodes[:MAX_NAMED]], "hint": hint, **({"empty": empty} if empty else {}),
            "text": text + (f" and {len(nodes) - MAX_NAMED} more" if len(nodes) > MAX_NAMED else "")}


def clip(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, cut to ``limit`` characters (node names are searched in the full text)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def with_nodes(message: str, onnx_path, full: str | None = None, feeds: list[dict] | None = None) -> tuple[str, dict]:
    """``message`` followed by where the nodes named in ``full`` (the whole error text; default ``message``)
    are, and the hint; and the details for the manifest. ``feeds``: a few calibration samples, to tell
    whether a named node gets any data."""
    info = explain(full or message, onnx_path, feeds)
    if not info:
        return message, {}
    return f"{message} -- {info['text']}; {info['hint']}", info
