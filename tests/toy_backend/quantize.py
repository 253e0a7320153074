"""The toy backend's INT8, through the quantizer interface alone (edgeopt/compress/quantizer.py): weights of the
Conv/MatMul/Gemm layers stored as int8, dequantized in the graph (per output channel or per tensor,
symmetric, dequantized by Cast and Mul), run by ONNX's reference evaluator. The INT8 loop caches, times, judges, picks and records it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgeopt.compress.head import named, onnx_float_head_of
from edgeopt.compress.quantizer import BaseQuantizer

LAYERS = {"Conv": 1, "MatMul": 1, "Gemm": 1}  # op -> index of its weight input


def quantize_weights(src: Path, dst: Path, per_channel: bool, exclude=()) -> int:
    """Write ``src`` with each layer's float weight initializer as int8 + its dequantization; returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    skip, done, new_nodes = set(exclude), 0, []
    for node in model.graph.node:
        idx = LAYERS.get(node.op_type)
        name = node.input[idx] if idx is not None and len(node.input) > idx else None
        if node.name in skip or name not in inits or inits[name].data_type != onnx.TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(inits[name])
        if w.ndim < 2:
            continue
        axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and any(
            a.name == "transB" and a.i for a in node.attribute)) else w.ndim - 1
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=reduce) if per_channel else np.abs(w).max().reshape(1)) / 127.0
        scale = np.maximum(scale, 1e-12).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / (scale.reshape(shape) if per_channel else scale)), -127, 127).astype(np.int8)
        model.graph.initializer.remove(inits[name])
        model.graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                        numpy_helper.from_array(scale.reshape(shape) if per_channel else scale[0],
                                                                name + "_scale")])
        # int8 -> float and times the scale: DequantizeLinear spelt in the two operators every evaluator has
        new_nodes += [helper.make_node("Cast", [name + "_int8"], [name + "_f"], to=onnx.TensorProto.FLOAT,
                                       name=name + "_cast"),
                      helper.make_node("Mul", [name + "_f", name + "_scale"], [name], name=name + "_dq")]
        done += 1
    for n in reversed(new_nodes):
        model.graph.node.insert(0, n)
    onnx.save(model, str(dst))
    return done


class ToyQuantizer(BaseQuantizer):
    name, title = "toy", "the toy backend"
    versions = ("onnx",)

    def __init__(self, req, work: Path):
        self.req, self.work, self.onnx_path = req, Path(work), Path(req.onnx_path)

    def candidates(self, kind, cfg):
        return ("toy-int8-per-channel", "toy-int8-per-tensor")

    def params(self, name):
        return {}

    def float_nodes(self, name, keep_head, names):
        import onnx

        found = onnx_float_head_of(self.onnx_path) if keep_head else []
        every = [n.name for n in onnx.load(str(self.onnx_path), load_external_data=False).graph.node]
        return found + [n for n in named(every, names) if n not in set(found)]

    def quantize(self, name, feeds, exclude):
        dst = self.work / f"{name}.onnx"
        count = quantize_weights(self.onnx_path, dst, name.endswith("per-channel"), exclude)
        return dst, {"int8_layers": count}

    def save(self, model, folder):
        shutil.copy2(model, folder / "model.onnx")

    def load(self, folder):
        return folder / "model.onnx"

    def int8_left(self, model) -> bool:
        import onnx

        m = onnx.load(str(model), load_external_data=False)
        return any(i.data_type == onnx.TensorProto.INT8 for i in m.graph.initializer)

    def open(self, model):
        from toy_backend import ToyRunner

        return ToyRunner(Path(model), self.req.spec)

    def open_fp32(self):
        return self.open(self.onnx_path)
