"""The Q/DQ ONNX that TensorRT's explicit quantization accepts: signed INT8, symmetric (zero point 0),
no overflow fix, biases left in float. Quantizes the exported FP32 ONNX, never a torch module (NNCF's
quantized torch modules export OpenVINO-only FakeQuantize nodes).

Recipe order: NNCF with ``preset=PERFORMANCE``, ``overflow_fix=DISABLE`` and signed activations; where NNCF
refuses that combination for the model, ONNX Runtime's static QDQ quantizer with s8 symmetric activations
and weights. Either result is checked: only signed INT8 Q/DQ with zero point 0 is written. The INT8 loop
(compress/int8.py) tries them in order, scores each on ONNX Runtime here and keeps the first within budget.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from edgeopt.compress.common import quiet_logging
from edgeopt.compress.head import named, onnx_float_head_of
from edgeopt.compress.quantizer import BaseQuantizer


def _nncf_trt(src: Path, dst: Path, feeds, kind: str, exclude=()) -> None:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, OverflowFix,
                                                       QuantizationParameters)

    from edgeopt.compress.common import nncf_model_type, quiet_nncf

    quiet_nncf()
    adv = AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE,
                                         activations_quantization_params=QuantizationParameters(signedness_to_force=True))
    scope = {"ignored_scope": nncf.IgnoredScope(names=list(exclude), validate=False)} if exclude else {}
    q = nncf.quantize(onnx.load(str(src)), nncf.Dataset(feeds), preset=nncf.QuantizationPreset.PERFORMANCE,
                      target_device=nncf.TargetDevice.ANY, subset_size=len(feeds),
                      model_type=nncf_model_type(nncf, kind), advanced_parameters=adv, **scope)
    onnx.save(q, str(dst))


def _ort_trt(src: Path, dst: Path, feeds, exclude=()) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeopt.compress.common import FeedReader

    quantize_static(str(src), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})


def qdq_problems(path: Path) -> list[str]:
    """Q/DQ nodes TensorRT would reject: not INT8, or a zero point other than 0."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(a.t) for n in m.graph.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    inits.update(consts)
    bad = []
    for n in m.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            continue  # no zero point: int8 0 by default only for QuantizeLinear without output_dtype
        if zp.dtype != np.int8:
            bad.append(f"{n.name}: zero point of type {zp.dtype} (TensorRT needs int8)")
        elif np.any(zp != 0):
            bad.append(f"{n.name}: zero point not 0")
    return bad


def signed_activations(model) -> int:
    """Each uint8 activation Q/DQ with zero point 0 (NNCF's unsigned activations after a ReLU: [0, 255 s])
    re-spelled as int8 with zero point 0 over the same range (scale 255 s / 127), in place: TensorRT's explicit
    quantization takes signed INT8 only. Those tensors lose one bit of resolution; the result is judged like any
    candidate. Returns how many (scale, zero point) pairs changed."""
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    init = {t.name: t for t in g.initializer}
    taken = set(init) | {o for n in g.node for o in n.output}
    changed: dict[tuple[str, str], tuple[str, str]] = {}
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3 or n.input[0] in init \
                or n.input[1] not in init or n.input[2] not in init:
            continue
        zp = numpy_helper.to_array(init[n.input[2]])
        if zp.dtype != np.uint8 or zp.any():
            continue
        pair = (n.input[1], n.input[2])
        if pair not in changed:
            stem, k = f"{n.input[1]}_signed", 0
            while stem in taken or stem + "_zero" in taken:
                k += 1
                stem = f"{n.input[1]}_signed{k}"
            taken.update((stem, stem + "_zero"))
            scale = numpy_helper.to_array(init[n.input[1]]).astype(np.float32) * np.float32(255.0 / 127.0)
            g.initializer.extend([numpy_helper.from_array(scale.astype(np.float32), stem),
                                  numpy_helper.from_array(np.zeros(zp.shape, np.int8), stem + "_zero")])
            changed[pair] = (stem, stem + "_zero")
        n.input[1], n.input[2] = changed[pair]
    used = {x for n in g.node for x in n.input}
    keep = [t for t in g.initializer if t.name in used or t.name in {o.name for o in g.output}]
    del g.initializer[:]
    g.initializer.extend(keep)
    return len(changed)


class TrtQuantizer(BaseQuantizer):
    """TensorRT's side of the INT8 loop (compress/quantizer.py): Q/DQ ONNX for a device package, in order (NNCF,
    then ONNX Runtime's quantizer), only Q/DQ TensorRT accepts. Not timed here (the engine is built on the
    device); scored on this host through ONNX Runtime."""

    name, title = "tensorrt", "TensorRT"
    versions = ("nncf", "onnxruntime", "onnx")
    timed = False

    def __init__(self, req, work: Path):
        self.req, self.work, self.onnx_path = req, Path(work), Path(req.onnx_path)

    def candidates(self, kind: str, cfg) -> tuple[str, ...]:
        return ("nncf-trt", "ort-qdq-s8s8-symmetric")

    def params(self, name: str) -> dict:
        return {}

    def float_nodes(self, name: str, keep_head: bool, names: tuple[str, ...]) -> list[str]:
        found = onnx_float_head_of(self.onnx_path) if keep_head else []
        if names:
            import onnx

            every = [n.name for n in onnx.load(str(self.onnx_path), load_external_data=False).graph.node]
            found += [n for n in named(every, names) if n not in set(found)]
        return found

    def quantize(self, name: str, feeds, exclude) -> tuple[Path, dict]:
        dst = self.work / f"{name}.onnx"
        with contextlib.redirect_stdout(None), quiet_logging():
            if name == "nncf-trt":
                _nncf_trt(self.onnx_path, dst, feeds, self.req.model_kind, exclude)
            else:
                _ort_trt(self.onnx_path, dst, feeds, exclude)
        problems = qdq_problems(dst)
        if problems:
            raise ValueError(f"it produced Q/DQ TensorRT rejects: {problems[:3]}")
        return dst, {}

    def save(self, model: Path, folder: Path) -> None:
        shutil.copy2(model, folder / "model.onnx")

    def load(self, folder: Path) -> Path:
        return folder / "model.onnx"

    def from_qdq(self, path: Path) -> Path:
        """A Q/DQ ONNX made by QAT (compress/qat.py) in the form TensorRT's explicit quantization takes: unsigned
        activations re-spelled signed (:func:`signed_activations`), every Q/DQ checked."""
        import onnx

        model = onnx.load(str(path))
        signed_activations(model)
        dst = self.work / "qat.onnx"
        onnx.save(model, str(dst))
        problems = qdq_problems(dst)
        if problems:
            raise ValueError(f"QAT's Q/DQ ONNX has Q/DQ TensorRT rejects: {problems[:3]}")
        return dst

    def open(self, model: Path):
        from edgeopt.backends.onnxruntime.runner import OrtRunner

        return OrtRunner(Path(model), self.req.spec, {})


def quantize_for_tensorrt(onnx_path, calibration, spec, out_path, model_kind: str = "generic", log=print,
                          judging=None, target=None) -> dict:
    """The INT8 Q/DQ ONNX of a TensorRT device package, through the INT8 loop (scored here on ONNX Runtime by
    ``judging``); written to ``out_path``."""
    from edgeopt.compress.int8 import Int8Request, run_int8

    req = Int8Request(Path(onnx_path), spec, calibration, judging, model_kind, target, log)
    with tempfile.TemporaryDirectory(prefix="edgeopt-trt-int8-") as tmp:
        model, meta = run_int8(TrtQuantizer(req, Path(tmp)), req)
        shutil.copy(model, out_path)
    int8 = meta["int8"]
    win = next(c for c in int8["candidates"] if c["candidate"] == int8["recipe"])
    int8.update({k: win[k] for k in ("calibration_cache", "float_head") if k in win})
    log(f"tensorrt int8: {int8['recipe']}")
    return meta
