"""A detector's post-processing stays in float: find it in the graph, so every INT8 recipe can leave it out.

A detector's outputs are made by a head that mixes values of very different ranges: boxes in pixels (0..640)
concatenated with sigmoid scores (0..1), anchors, strides, exponentials, a distribution's expectation (DFL),
NMS and RoI pooling. One INT8 scale over such a tensor wipes out the small values (a u8 per-tensor scale over
0..640 rounds every score in 0..1 to 0). Ultralytics keeps its head's post-processing in float for OpenVINO
INT8; so does edgeopt, for every backend: the quantizers are told to leave these nodes alone (NNCF's
ignored scope, ONNX Runtime's ``nodes_to_exclude``), and the nodes left out are recorded.

The head is found from the graph, with no model-specific names: walking back from every output through
everything that is not a compute layer (Conv, MatMul, Gemm), stopping at the last compute layers, which are
quantized as usual. A compute layer fed by a Softmax (the DFL's expectation over bins) is post-processing
too, and so is every NMS, RoI pooling, TopK and control-flow node anywhere in the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

HEAVY = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
ALWAYS_FLOAT = {"NonMaxSuppression", "RoiAlign", "MaxRoiPool", "TopK", "If", "Loop", "Scan"}
PASS_THROUGH = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
MODES = ("auto", "on", "off")
VERSION = 1  # part of the calibration-cache key of every recipe that leaves the head in float


def wanted(req) -> bool:
    """Whether the INT8 recipes of ``req`` (a CompileRequest) keep the post-processing in float."""
    cfg = getattr(req, "compression", None)
    return wanted_for(getattr(req, "model_kind", None), getattr(getattr(req, "task", None), "type", None),
                      getattr(cfg, "float_head", "auto") if cfg is not None else "auto")


def wanted_for(kind: str | None, task_type: str | None = None, mode: str = "auto") -> bool:
    """``[compression] float_head`` ("on" | "off"), by default ("auto") for detectors: ``[model] kind =
    "detector"`` or ``[task] type = "detection"``."""
    if mode in ("on", "off"):
        return mode == "on"
    return kind == "detector" or task_type == "detection"


def float_head_for(onnx_path, kind: str | None, task_type: str | None = None, mode: str = "auto") -> list[str]:
    """The ONNX nodes to leave in float for this model (none unless :func:`wanted_for`)."""
    return onnx_float_head_of(onnx_path) if wanted_for(kind, task_type, mode) else []


def walk_head(nodes: Iterable, outputs: Iterable, inputs: Callable[[object], list], op: Callable[[object], str],
              key: Callable[[object], Hashable], heavy: set[str], always: set[str], softmax: str = "Softmax",
              pass_through: set[str] = PASS_THROUGH) -> list:
    """The head of any graph: the nodes reached walking back from ``outputs`` (the nodes making the graph's
    outputs) without crossing a ``heavy`` node (one fed by a ``softmax``, through ``pass_through`` nodes, is
    crossed), plus every node whose type is in ``always``. In ``nodes`` order."""

    def fed_by_softmax(n) -> bool:
        for _ in range(8):
            ins = inputs(n)
            if not ins:
                return False
            n = ins[0]
            if op(n) == softmax:
                return True
            if op(n) not in pass_through:
                return False
        return False

    head: set = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        k = key(n)
        if k in head:
            continue
        if op(n) in heavy and not fed_by_softmax(n):
            continue
        head.add(k)
        stack.extend(inputs(n))
    return [n for n in nodes if key(n) in head or op(n) in always]


def onnx_float_head(model) -> list[str]:
    """Names of the nodes of an ONNX model's post-processing (see the module's docstring), in graph order."""
    graph = model.graph
    nodes = list(graph.node)
    producers = {o: n for n in nodes for o in n.output if o}
    found = walk_head(nodes, [producers[o.name] for o in graph.output if o.name in producers],
                      lambda n: [producers[i] for i in n.input if i in producers], lambda n: n.op_type,
                      lambda n: tuple(n.output), HEAVY, ALWAYS_FLOAT)
    return [n.name for n in found if n.name and n.op_type != "Constant"]


def onnx_float_head_of(path) -> list[str]:
    import onnx

    return onnx_float_head(onnx.load(str(path), load_external_data=False))


def named(names: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The ``names`` that ``[compression] float_nodes`` (``wanted``: names or name prefixes) picks, in order."""
    wanted = tuple(wanted)
    return [n for n in names if n and n.startswith(wanted)] if wanted else []


def float_nodes_of(req) -> tuple[str, ...]:
    """``[compression] float_nodes`` of a CompileRequest (empty without a compression section)."""
    cfg = getattr(req, "compression", None)
    return tuple(getattr(cfg, "float_nodes", ()) or ())


def summary(nodes: list[str], limit: int = 40) -> dict:
    """What the manifest records: how many nodes stayed in float, and their names (the first ``limit``)."""
    return {"count": len(nodes), "nodes": list(nodes[:limit]), "more": max(0, len(nodes) - limit)}
