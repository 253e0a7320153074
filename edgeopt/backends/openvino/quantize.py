"""INT8 for OpenVINO: NNCF post-training quantization on the IR, preset and model type by model kind,
target device from the target file; NNCF accuracy control when the plain result is over budget."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgeopt.errors import CompileError
from edgeopt.compress import failure, head
from edgeopt.compress.cache import calibration_key, lookup, store
from edgeopt.compress.common import (
    calibration_feeds,
    config_of,
    nncf_device,
    nncf_model_type,
    nncf_module,
    nncf_preset,
    nncf_restorer,
    quiet_nncf,
)
from edgeopt.compress.guard import accuracy_control_drop, can_control_accuracy, score, task_validator, vs_text
from edgeopt.core.profile import race
from edgeopt.core.tasks import describe


NOISE = 0.05  # runtime settings whose quick timings are this close are a tie, won by the exact f32


def _measure(name, model, req, cfg, feed1, fp32_model=None, settings: bool = False) -> tuple[dict, dict | None]:
    """One quantized ov.Model timed in interleaved rounds against the FP32 model (both run as their artifacts
    will be), then scored by the guard. With ``settings``, the float remainder's inference precision is a
    candidate too: the device's default (bf16 on CPUs that have it) against f32, timed in the same rounds.
    Returns (the candidate's result, the runtime choice or None)."""
    from edgeopt.backends.openvino.runner import OvRunner, runtime_config

    default = runtime_config("int8", req.target.options)
    runners = {name: OvRunner(model, req.spec, req.target.device, default)}
    if fp32_model is not None:
        runners["fp32"] = OvRunner(fp32_model, req.spec, req.target.device, runtime_config("fp32", req.target.options))
    try:
        for r in runners.values():
            r.activate()
        hint = runners[name].properties().get("INFERENCE_PRECISION_HINT", "")
        f32 = f"{name} precision f32"
        if settings and "f32" not in hint.lower():
            runners[f32] = OvRunner(model, req.spec, req.target.device, {**default, "INFERENCE_PRECISION_HINT": "f32"})
            runners[f32].activate()
        timed = race({n: r.timed_call(feed1) for n, r in runners.items()}, cfg.timing_s,
                     baseline="fp32" if "fp32" in runners else None)
        result = {"candidate": name, **timed[name]}
        if "fp32" in timed:
            result["fp32_quick"] = timed["fp32"]
        choice = None
        if f32 in timed:
            d, f = timed[name]["latency_ms_b1"], timed[f32]["latency_ms_b1"]
            pick_f32 = f <= d * (1 + NOISE)
            choice = {"setting": "INFERENCE_PRECISION_HINT", "chosen": "f32" if pick_f32 else f"device default ({hint})",
                      "config": {**default, "INFERENCE_PRECISION_HINT": "f32"} if pick_f32 else default,
                      "figures": {f"default ({hint})": timed[name], "f32": timed[f32]},
                      "why": (f"the float remainder of the INT8 model ran {d:.3f} ms at batch 1 with the device default "
                              f"({hint}) and {f:.3f} ms with f32, timed in the same interleaved rounds; "
                              + ("f32 is faster or within 5% (a tie goes to the exact f32)" if pick_f32 else
                                 "the default is more than 5% faster"))}
            if pick_f32:
                result.update({k: v for k, v in timed[f32].items() if k != "unstable"})
        chosen = runners[f32] if choice and choice["chosen"] == "f32" else runners[name]
        result.update(score(lambda feed: chosen.infer(feed, check=False), req))
        return result, choice
    finally:
        for r in runners.values():
            r.close()


OV_HEAVY = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul",
            "Bias"}
OV_ALWAYS_FLOAT = {"NonMaxSuppression", "MulticlassNms", "MatrixNms", "NMSRotated", "ROIAlign", "ROIAlignRotated",
                   "ROIPooling", "PSROIPooling", "TopK", "If", "Loop", "TensorIterator",
                   "ExperimentalDetectronROIFeatureExtractor", "ExperimentalDetectronDetectionOutput",
                   "ExperimentalDetectronGenerateProposalsSingleImage", "DetectionOutput", "Proposal"}


def float_head(model) -> list[str]:
    """Friendly names of an ov.Model's post-processing (compress/head.py): NNCF's ignored scope."""
    from edgeopt.compress.head import walk_head

    heavy_types = OV_HEAVY - {"Bias"}

    def op(n) -> str:
        t = n.get_type_name()
        if t == "Add" and any(v.get_node().get_type_name() in heavy_types for v in n.input_values()):
            return "Bias"  # a layer's bias: part of the layer
        return t

    nodes = list(model.get_ordered_ops())
    found = walk_head(nodes, list(model.get_results()), lambda n: [v.get_node() for v in n.input_values()], op,
                      lambda n: n.get_friendly_name(), OV_HEAVY, OV_ALWAYS_FLOAT,
                      pass_through={"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert"})
    return [n.get_friendly_name() for n in found
            if n.get_type_name() not in ("Parameter", "Constant", "Result", "ShapeOf")]


def untangled(model):
    """``model`` with If/Loop bodies that own their constants. The ONNX frontend shares Constant nodes between
    the main graph and the bodies, where NNCF cannot build their graphs ("Could not find a node ... in
    NNCFGraph"); an IR written and read back holds separate copies."""
    import openvino as ov

    if not any(op.get_type_name() in ("If", "Loop", "TensorIterator") for op in model.get_ordered_ops()):
        return model
    with tempfile.TemporaryDirectory(prefix="edgeopt-ov-") as tmp:
        ov.save_model(model, f"{tmp}/model.xml", compress_to_fp16=False)
        import numpy as np

        xml = Path(tmp, "model.xml").read_text()
        weights = np.fromfile(Path(tmp, "model.bin"), dtype=np.uint8)  # in memory: the folder goes
        return ov.Core().read_model(xml, ov.Tensor(weights))


def _ov_infer(compiled_model):
    """A feed -> outputs function over the compiled model NNCF's accuracy control hands us."""
    names = [o.get_any_name() for o in compiled_model.outputs]

    def infer(feed):
        res = compiled_model(feed)
        return {n: res[o] for n, o in zip(names, compiled_model.outputs)}

    return infer


RANKING_SAMPLES = 32  # calibration samples mixed precision ranks layers on


def _mixed(req, cfg, feeds, kw, feed1, fp32_model):
    """Mixed precision (compress/mixed.py) for OpenVINO: NNCF's Q/DQ ONNX of the model (same preset, device and
    float head), its costliest nodes back in float, each try compiled by OpenVINO from the Q/DQ ONNX (Q/DQ pairs
    become FakeQuantize) and judged by the guard. Returns (result, ov.Model or None)."""
    import numpy as np
    import onnx
    import openvino as ov

    from edgeopt.compress.mixed import mixed_precision

    name = "nncf-ov-mixed"
    req.log(f"int8 over budget: mixed precision puts the nodes that cost most back in float (at most "
            f"{cfg.mixed_time_s:g} s)")
    core = ov.Core()
    with tempfile.TemporaryDirectory(prefix="edgeopt-ov-mixed-") as tmp:
        def to_ov(m):
            path = Path(tmp) / "try.onnx"
            onnx.save(m, str(path))
            return core.read_model(str(path))

        def infer_for(m):
            return _ov_infer(core.compile_model(to_ov(m), req.target.device))

        try:
            nncf = nncf_module()
            float_model = onnx.load(str(req.onnx_path))
            okw = dict(kw)
            exclude = (head.onnx_float_head_of(req.onnx_path) if head.wanted(req) else []) + head.named(
                [n.name for n in float_model.graph.node], head.float_nodes_of(req))
            okw["ignored_scope"] = nncf.IgnoredScope(names=exclude, validate=False) if exclude else None
            okw = {k: v for k, v in okw.items() if v is not None}
            qdq = nncf.quantize(float_model, nncf.Dataset(feeds), **okw)
            ranking, n = [], 0
            for f in feeds:
                ranking.append(f)
                n += int(np.asarray(next(iter(f.values()))).shape[0]) if req.spec.batch_dim else 1
                if n >= RANKING_SAMPLES:
                    break
            outcome = mixed_precision(qdq, float_model, infer_for, ranking, lambda infer: score(infer, req),
                                      cfg.mixed_time_s, req.log)
            if outcome.float_layers is None:
                why = outcome.record.get("why") or ("no choice of float layers met the budget in "
                                                    f"{outcome.record.get('seconds')} s")
                return {"candidate": name, "within_budget": False, "why": why, "mixed_precision": outcome.record}, None
            q = _detached(to_ov(outcome.model), tmp)
        except Exception as exc:  # noqa: BLE001 - the numbers so far stand
            text = " ".join(str(exc).split())
            return {"candidate": name, "within_budget": False,
                    "error": failure.with_nodes(text[:300], req.onnx_path, text)[0]}, None
    r, _ = _measure(name, q, req, cfg, feed1, fp32_model=fp32_model)
    r.update(mixed_precision=outcome.record, float_layers=outcome.float_layers, calibration_cache="off")
    if not any(op.get_type_name() == "FakeQuantize" for op in q.get_ops()):
        r.update(within_budget=False, why="mixed precision kept every layer in float: no INT8 left")
    return r, q


def _detached(model, folder):
    """``model`` saved as IR and read back into memory: nothing of it left in ``folder``'s files."""
    import numpy as np
    import openvino as ov

    ov.save_model(model, f"{folder}/mixed.xml", compress_to_fp16=False)
    xml = Path(folder, "mixed.xml").read_text()
    return ov.Core().read_model(xml, ov.Tensor(np.fromfile(Path(folder, "mixed.bin"), dtype=np.uint8)))


def quantize_for_openvino(req, model):
    """Returns (quantized ov.Model, metadata)."""
    import openvino as ov

    cfg = config_of(req)
    feeds = calibration_feeds(req, cfg.subset_size)
    model = untangled(model)
    nncf = nncf_module()
    quiet_nncf()
    preset, preset_name = nncf_preset(nncf, cfg, req.model_kind)
    kw = dict(preset=preset, target_device=nncf_device(nncf, req.target.device),
              subset_size=min(cfg.subset_size, len(feeds)), model_type=nncf_model_type(nncf, req.model_kind))
    params = {"subset": kw["subset_size"], "preset": preset_name, "device": req.target.device, "kind": req.model_kind}
    notes = {}
    extra = head.float_nodes_of(req)
    if head.wanted(req) or extra:
        exclude = float_head(model) if head.wanted(req) else []
        if extra:
            exclude += [n for n in head.named([op.get_friendly_name() for op in model.get_ordered_ops()], extra)
                        if n not in set(exclude)]
            params["float_nodes"] = list(extra)
        kw["ignored_scope"] = nncf.IgnoredScope(names=exclude, validate=False)
        params["float_head"] = head.VERSION
        notes["float_head"] = head.summary(exclude)
    key = calibration_key(req.onnx_key(), getattr(req.calibration, "sha256", None), "nncf-ov", params)
    feed1 = req.spec.random_feed(__import__("numpy").random.default_rng(0), batch=1 if req.spec.batch_dim else None)
    hit = lookup(key)
    if hit is not None:
        req.log(f"int8 nncf-ov: reusing calibration from the cache ({key[:12]})")
        q, cache = ov.Core().read_model(str(hit / "model.xml")), "hit"
    else:
        try:
            q = nncf.quantize(model, nncf.Dataset(feeds), **kw)
        except Exception as exc:  # noqa: BLE001 - NNCF's own errors (InternalError ...) are a failed candidate
            text = " ".join(str(exc).split())
            why, where = failure.with_nodes(f"NNCF could not quantize this model for OpenVINO: {type(exc).__name__}: "
                                            f"{text[:300]}", req.onnx_path, text, feeds[:4])
            raise CompileError(why, "Follow the hint after the message, or ship fp32 (or fp16) for OpenVINO." if where
                               else "Ship fp32 (or fp16) for OpenVINO, or report the model with this message.") from exc
        cache = "miss"
        with tempfile.TemporaryDirectory(prefix="edgeopt-ov-int8-") as tmp:
            ov.save_model(q, f"{tmp}/model.xml", compress_to_fp16=False)
            store(key, {"model.xml": Path(tmp) / "model.xml", "model.bin": Path(tmp) / "model.bin"})
    first, choice = _measure("nncf-ov", q, req, cfg, feed1, fp32_model=model, settings=True)
    results = [first | {"calibration_cache": cache} | notes]
    if choice:
        req.log(f"int8 nncf-ov runtime: {choice['setting']} {choice['chosen']}: {choice['why']}")
    req.log(f"int8 nncf-ov: {results[0]['latency_ms_b1']:.3f} ms at batch 1 ({vs_text(results[0])})" +
            (f", {describe(results[0]['accuracy'])}" if "accuracy" in results[0] else "") +
            (f", cosine {results[0]['cosine']:.4f}" if results[0].get("cosine") is not None else ""))
    if not results[0]["within_budget"] and cfg.mixed_precision:
        r, mq = _mixed(req, cfg, feeds, kw, feed1, model)
        results.append(r)
        if r.get("within_budget"):
            q = mq
    if not results[-1]["within_budget"] and cfg.accuracy_control and can_control_accuracy(req):
        req.log(f"int8 over budget ({results[0]['why']}): NNCF accuracy control keeps the most sensitive layers in float")
        try:
            q = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(feeds), nncf.Dataset(req.judge_set.feeds), task_validator(req, _ov_infer),
                max_drop=accuracy_control_drop(req, cfg), drop_type=nncf.DropType.ABSOLUTE, **kw,
                **nncf_restorer(cfg))
            ac, choice = _measure("nncf-ov-ac", q, req, cfg, feed1, fp32_model=model, settings=True)
            r = ac | {"calibration_cache": "off"} | notes
            if not any(op.get_type_name() == "FakeQuantize" for op in q.get_ops()):
                r.update(within_budget=False, why="accuracy control kept every layer in float: no INT8 left")
            results.append(r)
        except Exception as exc:  # noqa: BLE001 - accuracy control can give up; report the numbers
            text = " ".join(str(exc).split())
            results.append({"candidate": "nncf-ov-ac", "error": failure.with_nodes(text[:300], req.onnx_path, text)[0],
                            "within_budget": False})
    win = results[-1]
    if not win.get("within_budget"):
        raise CompileError(
            "No INT8 configuration for OpenVINO meets the accuracy budget: "
            + "; ".join(f"{r['candidate']}: {r.get('why') or r.get('error')}" for r in results),
            "Raise [compression] max_drop (or lower min_cosine), give more or better calibration data, or ship fp32.")
    return q, {"int8": {"recipe": win["candidate"], "preset": preset_name, "model_type": req.model_kind,
                        "target_device": req.target.device, "candidates": results, "runtime_choice": choice,
                        "calibration_samples": len(feeds), "compression": cfg.to_dict()}}
