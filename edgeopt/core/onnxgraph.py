"""Small in-place edits of an ONNX graph that several graph rewrites and backends share."""

from __future__ import annotations


def drop_nodes(graph, dropped: set[int]) -> None:
    """Remove the nodes whose ``id()`` is in ``dropped``, keeping the others in order."""
    keep = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(keep)


def drop_unused_initializers(graph) -> None:
    """Remove the initializers no node reads and no graph output names."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def fresh_name(base: str, taken: set) -> str:
    """``base``, or ``base_1``, ``base_2`` ...: the first not in ``taken`` (which it joins)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def activations_to_u8(model) -> int:
    """Each int8 activation Q/DQ pair (QuantizeLinear over a computed tensor, its users all DequantizeLinear with
    the same zero point) re-spelled as uint8 with the zero point moved by 128: the same values exactly. In place;
    returns how many tensors. Weights (Q/DQ over an initializer) keep int8. ONNX Runtime's QLinear kernels pair u8
    activations with s8 weights (backends/onnxruntime/rewrite.py); OpenVINO compiles some signed spellings wrongly
    (backends/openvino/quantize.py)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    users: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    taken = set(init) | {o for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    changed = set()
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in init or len(node.input) < 3:
            continue
        zero = init.get(node.input[2])
        dqs = users.get(node.output[0]) or []
        if zero is None or zero.data_type != TensorProto.INT8 or not dqs or node.output[0] in outputs or any(
                d.op_type != "DequantizeLinear" or d.input[0] != node.output[0] or len(d.input) < 3
                or d.input[2] != node.input[2] for d in dqs):
            continue
        name = fresh_name("edgeopt_u8_zero", taken)
        moved = (numpy_helper.to_array(zero).astype(np.int16) + 128).astype(np.uint8)
        graph.initializer.append(numpy_helper.from_array(moved, name))
        node.input[2] = name
        for d in dqs:
            d.input[2] = name
        changed.add(node.output[0])
    # Shape inference recorded the old element type of the quantized tensors: drop those records.
    keep = [v for v in graph.value_info if v.name not in changed]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    drop_unused_initializers(graph)
    return len(changed)
