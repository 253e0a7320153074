"""Small in-place edits of an ONNX GraphProto that several graph rewrites share (protobuf only: no onnx import)."""

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
