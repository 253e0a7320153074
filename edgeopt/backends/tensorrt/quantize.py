"""The Q/DQ ONNX that TensorRT's explicit quantization accepts: signed INT8, symmetric (zero point 0),
no overflow fix, biases left in float. Quantizes the exported FP32 ONNX, never a torch module (NNCF's
quantized torch modules export OpenVINO-only FakeQuantize nodes).

Recipe order: NNCF with ``preset=PERFORMANCE``, ``overflow_fix=DISABLE`` and signed activations; where NNCF
refuses that combination for the model, ONNX Runtime's static QDQ quantizer with s8 symmetric activations
and weights. Either result is checked: only signed INT8 Q/DQ with zero point 0 is written.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from edgeopt.errors import CompileError
from edgeopt.core.fsutil import sha256_file
from edgeopt.compress.cache import calibration_key, lookup, store
from edgeopt.backends import library_names
from edgeopt.compress.common import quiet_logging
from edgeopt.compress.head import float_head_for, summary


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


def quantize_for_tensorrt(onnx_path, calibration, spec, out_path, model_kind: str = "generic", log=print) -> dict:
    if calibration is None:
        raise CompileError("TensorRT int8 needs calibration data, and the recipe gives none.",
                           "Add [calibration] source = \"...\" to the recipe.")
    feeds = list(calibration)[:300]
    exclude = float_head_for(onnx_path, model_kind)  # a detector's post-processing stays in float
    key = calibration_key(sha256_file(onnx_path), getattr(calibration, "sha256", None), "tensorrt-qdq",
                          {"subset": len(feeds), "kind": model_kind, **({"float_head": len(exclude)} if exclude else {})},
                          library_names())
    hit = lookup(key)
    if hit is not None:
        log(f"tensorrt int8: reusing calibration from the cache ({key[:12]})")
        shutil.copy(hit / "model.onnx", out_path)
        recipe = (hit / "RECIPE").read_text().strip() if (hit / "RECIPE").exists() else "cached"
        return {"int8": {"recipe": recipe, "calibration_cache": "hit", "calibration_samples": len(feeds)}}
    notes = []
    with tempfile.TemporaryDirectory(prefix="edgeopt-trt-int8-") as tmp:
        dst = Path(tmp) / "model.onnx"
        recipe = None
        for name, fn in (("nncf-trt", lambda: _nncf_trt(Path(onnx_path), dst, feeds, model_kind, exclude)),
                         ("ort-qdq-s8s8-symmetric", lambda: _ort_trt(Path(onnx_path), dst, feeds, exclude))):
            try:
                with contextlib.redirect_stdout(None), quiet_logging():
                    fn()
            except Exception as exc:  # noqa: BLE001 - try the next recipe, say why
                notes.append(f"{name} failed: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            problems = qdq_problems(dst)
            if problems:
                notes.append(f"{name} produced Q/DQ TensorRT rejects: {problems[:3]}")
                continue
            recipe = name
            break
        if recipe is None:
            raise CompileError("No INT8 recipe produced a Q/DQ model TensorRT accepts: " + " | ".join(notes),
                               "Ship fp16 for this model, or report it with the notes above.")
        (Path(tmp) / "RECIPE").write_text(recipe + "\n")
        store(key, {"model.onnx": dst, "RECIPE": Path(tmp) / "RECIPE"})
        shutil.copy(dst, out_path)
    log(f"tensorrt int8: {recipe}" + (f" ({'; '.join(notes)})" if notes else ""))
    return {"int8": {"recipe": recipe, "calibration_cache": "miss", "notes": notes, "calibration_samples": len(feeds),
                     **({"float_head": summary(exclude)} if exclude else {})}}
