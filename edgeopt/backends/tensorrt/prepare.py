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


# ---- INT64 outputs -----------------------------------------------------------------------------------------
INT64_OUTPUTS_KEY = "edgeopt.int64_outputs"  # metadata_props: the outputs cast from INT64 to INT32, comma-separated
INT32_ONNX = "model_int32_outputs.onnx"
_INT64, _INT32 = 7, 6  # onnx.TensorProto.INT64, INT32


def int64_outputs(model) -> list[str]:
    """The outputs an ONNX ``model`` (ModelProto) already had cast from INT64 to INT32 by edgeopt."""
    for p in model.metadata_props:
        if p.key == INT64_OUTPUTS_KEY:
            return [n for n in p.value.split(",") if n]
    return []


def cast_int64_outputs(model) -> list[str]:
    """Cast every INT64 graph output of ``model`` (ModelProto, changed in place) to INT32 at the end of the graph;
    return their names (also recorded in the model's metadata, so the runner gives them back as int64).

    TensorRT 10.x supports INT64 only in a few layers and as a binding type it may refuse or compute in INT32
    (labels, indices, counts); an INT32 output is what every TensorRT version takes. The output keeps its name:
    its producer writes ``NAME__int64`` and a ``Cast`` (to INT32) writes ``NAME``. Values beyond the INT32 range
    would wrap: labels and indices fit.
    """
    from onnx import helper

    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    done = []
    for out in g.output:
        if out.type.tensor_type.elem_type != _INT64 or out.name not in producers:
            continue  # an INT64 input or initializer passed straight through stays as it is
        wide = f"{out.name}__int64"
        for n in g.node:
            for i, x in enumerate(n.output):
                if x == out.name:
                    n.output[i] = wide
            for i, x in enumerate(n.input):
                if x == out.name:
                    n.input[i] = wide
        g.node.append(helper.make_node("Cast", [wide], [out.name], to=_INT32, name=f"edgeopt_int32_{out.name}"))
        out.type.tensor_type.elem_type = _INT32
        done.append(out.name)
    if done:
        names = [*int64_outputs(model), *done]
        kept = [p for p in model.metadata_props if p.key != INT64_OUTPUTS_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        model.metadata_props.add(key=INT64_OUTPUTS_KEY, value=",".join(names))
    return done


def with_int32_outputs(source: Path, dst: Path) -> tuple[Path, list[str]]:
    """``source`` when it has no INT64 outputs (and the names cast earlier, from its metadata), else ``dst``: a copy
    with them cast to INT32 (:func:`cast_int64_outputs`)."""
    from edgeopt.errors import require

    onnx = require("onnx", "tensorrt", "cast INT64 outputs to INT32 for TensorRT")
    head = onnx.load(str(source), load_external_data=False)
    if not any(o.type.tensor_type.elem_type == _INT64 for o in head.graph.output):
        return Path(source), int64_outputs(head)
    model = onnx.load(str(source))
    cast_int64_outputs(model)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > 1_500_000_000:
        onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{dst.name}.data")
    else:
        onnx.save(model, str(dst))
    return dst, int64_outputs(model)
