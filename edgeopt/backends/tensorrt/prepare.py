"""The ONNX the TensorRT parser gets for a build plan: as given, converted to FP16 (TensorRT 11's fp16), or checked
to carry Q/DQ nodes (int8)."""

from __future__ import annotations

from pathlib import Path

from edgeopt.errors import BackendMissingError, CompileError
from edgeopt.backends.tensorrt.plan import BuildPlan

FP16_ONNX = "model_fp16.onnx"


def convert_to_fp16(src: Path, dst: Path, keep_io_types: bool = True) -> Path:
    """FP16 copy of an ONNX model with FP32 inputs/outputs kept: TensorRT 11's way to build fp16.

    Uses ``onnxruntime.transformers.float16.convert_float_to_float16`` (shipped inside onnxruntime).
    """
    from edgeopt.errors import require

    onnx = require("onnx", "tensorrt", "convert an ONNX model to FP16")
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise BackendMissingError("onnxruntime", "onnxruntime", "convert an ONNX model to FP16 for TensorRT 11") from exc
    model = onnx.load(str(src))
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    large = weight_bytes > 1_500_000_000
    converted = convert_float_to_float16(model, keep_io_types=keep_io_types, disable_shape_infer=large)
    _toposort(converted.graph)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if large:
        onnx.save(converted, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{dst.name}.data")
    else:
        onnx.save(converted, str(dst))
    return dst


def _node_inputs(node) -> set[str]:
    names = set(node.input)
    for attr in node.attribute:
        for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for sub in g.node:
                names |= _node_inputs(sub)
    return names


def _toposort(graph) -> None:
    """Reorder nodes topologically (the FP16 converter appends its I/O casts at the end), keeping order otherwise."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in _node_inputs(n) if x in producer and producer[x] != i} for i, n in enumerate(nodes)]
    order, done, remaining = [], set(), list(range(len(nodes)))
    while remaining:
        waiting = []
        for i in remaining:
            if deps[i] <= done:
                order.append(i)
                done.add(i)
            else:
                waiting.append(i)
        if len(waiting) == len(remaining):
            return  # a cycle: leave the graph as it is (TensorRT's parser sorts again)
        remaining = waiting
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def prepare_onnx(source: Path, plan: BuildPlan, work_dir: Path) -> Path:
    """The ONNX file the parser gets for ``plan``: as given, FP16-converted, or checked to carry Q/DQ."""
    from edgeopt.backends.tensorrt.lint import is_fp16_model, qdq_nodes

    if plan.onnx == "fp16" and not is_fp16_model(source):
        return convert_to_fp16(source, Path(work_dir) / FP16_ONNX)
    if plan.onnx == "qdq" and qdq_nodes(source) == 0:
        raise CompileError(f"int8 for TensorRT needs a Q/DQ ONNX model; {Path(source).name} has no "
                           "QuantizeLinear/DequantizeLinear nodes (edgeopt builds INT8 by explicit quantization only; TensorRT 11 has "
                           "no calibrator).",
                           "Compile the INT8 Q/DQ ONNX from the compression stage for this target "
                           "(signed INT8, zero point 0).")
    return Path(source)
