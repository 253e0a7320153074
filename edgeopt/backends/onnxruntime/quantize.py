"""INT8 for ONNX Runtime: try the QDQ recipes that matter, measure speed and accuracy of each, keep the
fastest within the accuracy budget, and record why it won.

Measured on a 2-core AVX-512-VNNI CPU: u8 activations + s8 per-channel weights is the fast recipe for CNNs;
ORT's s8-activation default can be slower than FP32 (ORT fuses fewer nodes), and NNCF's QDQ graph is re-laid
out for ORT's kernels (per-tensor u8 activations: rewrite.nncf_for_onnxruntime) without which it was 0.4x FP32; models with
hard-swish and squeeze-excitation (MobileNetV3) need the same recipe on a rewritten graph ("-fused", see
rewrite.py) to beat FP32; dynamic weight-only quantization is often the right choice for transformers.
Nothing is assumed: every candidate is timed and scored.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from edgeopt.errors import CompileError
from edgeopt.core.fsutil import working_dir
from edgeopt.compress import INT8_RECIPES_VERSION, failure, head
from edgeopt.compress.cache import calibration_key, lookup, store
from edgeopt.compress.common import (
    FeedReader,
    calibration_feeds,
    config_of,
    nncf_model_type,
    nncf_module,
    nncf_preset,
    nncf_restorer,
    preset_name,
    quiet_logging,
    quiet_nncf,
)
from edgeopt.compress.guard import accuracy_control_drop, can_control_accuracy, score, task_validator, vs_text
from edgeopt.core.profile import race
from edgeopt.core.tasks import describe

DEFAULTS = {
    "transformer": ("ort-dynamic", "ort-qdq-u8s8", "nncf-qdq"),
    # MinMax ranges clip nothing and so waste resolution on outliers: real-weight CNNs lose top-1 with them that
    # percentile ranges (or NNCF's) keep, at the same speed (the same u8/s8 QDQ layout).
    "cnn": ("ort-qdq-u8s8", "ort-qdq-u8s8-percentile", "ort-qdq-u8s8-fused", "nncf-qdq"),
    "detector": ("ort-qdq-u8s8", "ort-qdq-u8s8-fused", "nncf-qdq"),
    "generic": ("ort-qdq-u8s8", "ort-qdq-u8s8-fused", "nncf-qdq", "ort-dynamic"),
}


def _preprocess(src: Path, work: Path) -> Path:
    """Shape inference + graph clean-up ONNX Runtime recommends before quantization; skipped if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = work / "pre.onnx"
    if dst.exists():
        return dst
    try:
        # Symbolic shape inference saves temporary models into the working directory: keep them in ours.
        with contextlib.redirect_stdout(None), working_dir(work):
            quant_pre_process(str(Path(src).resolve()), str(dst.resolve()), skip_symbolic_shape=False)
        return dst
    except Exception:  # noqa: BLE001 - large or unusual graphs: quantize the model as exported
        return src


NNCF_LAYOUT = "per-tensor activations, u8, float layers folded"  # rewrite.nncf_for_onnxruntime; cache key


CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")  # CPU features whose int8 dot products add in 32 bits


def reduce_range(cfg) -> tuple[bool, str]:
    """Whether the static recipes quantize weights to 7 bits, and why. ONNX Runtime's u8 x s8 kernels on x86
    CPUs without VNNI (AVX2, AVX-512F) add pairs of products in 16 bits (VPMADDUBSW), which saturates with full
    8-bit weights; its documentation's remedy is reduce_range. Measured on a real-weight MobileNetV2 (AVX2,
    top-1 agreement with FP32 on 200 photo crops): MinMax 55.5% -> 63.0%, percentile 69.5% -> 74.0%."""
    from edgeopt.core.hostinfo import cpu_info

    if cfg.reduce_range != "auto":
        return cfg.reduce_range == "on", f'[compression] reduce_range = "{cfg.reduce_range}"'
    info = cpu_info()
    has = [f for f in VNNI if f in info["flags"]]
    if info["arch"] in ("x86_64", "AMD64", "i386", "i686") and not has:
        return True, ("this x86 CPU has no VNNI: ONNX Runtime's u8 x s8 kernels add pairs of products in 16 bits "
                      "and saturate with full 8-bit weights, so weights get 7 bits")
    return False, f"this CPU has {has[0]}: no saturation" if has else f"{info['arch']}: no 16-bit pair sums"


def _ort_static(src, dst, feeds, activation: str, symmetric: bool, method: str = "minmax", exclude=(),
                reduce: bool = False):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    quantize_static(str(src), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce,
                    calibrate_method=getattr(CalibrationMethod, CALIBRATION[method]),
                    nodes_to_exclude=list(exclude), extra_options=extra)


def _ort_dynamic(src, dst, exclude=()):
    """Weights per output channel: on a real all-MiniLM-L6-v2 (AVX2) per-tensor weights gave a mean-pooled
    embedding cosine of 0.962 vs FP32 on 200 held-out sentences, per-channel 0.992, at the same speed; 7-bit
    weights did not help here (0.878 per-tensor, 0.991 per-channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm", "Attention", "LSTM", "GRU"],
                     nodes_to_exclude=list(exclude))


FEEDS_TRIED = 4  # calibration samples a failure's diagnosis runs


def _clip(exc: BaseException, limit: int = 200) -> str:
    """An exception's text, cut to ``limit`` characters (the node names it holds are searched in full first)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _float_head(req, src) -> list[str]:
    """The nodes of a detector's post-processing in ``src``, left in float by every recipe (compress/head.py),
    and those ``[compression] float_nodes`` names."""
    found = head.onnx_float_head_of(src) if head.wanted(req) else []
    extra = head.float_nodes_of(req)
    if extra:
        import onnx

        names = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node]
        found += [n for n in head.named(names, extra) if n not in set(found)]
    return found


def _nncf_qdq(src, dst, feeds, req, cfg, accuracy_control=False, exclude=()):
    import onnx

    nncf = nncf_module()
    quiet_nncf()
    preset, _ = nncf_preset(nncf, cfg, req.model_kind)
    model = onnx.load(str(src))
    calib = nncf.Dataset(feeds)
    kw = dict(preset=preset, target_device=nncf.TargetDevice.CPU, subset_size=min(cfg.subset_size, len(feeds)),
              model_type=nncf_model_type(nncf, req.model_kind))
    if exclude:
        kw["ignored_scope"] = nncf.IgnoredScope(names=list(exclude), validate=False)
    # One scale per activation tensor: ONNX Runtime's QLinearConv takes no per-channel input (rewrite.py).
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    adv = AdvancedQuantizationParameters(activations_quantization_params=QuantizationParameters(per_channel=False))
    if accuracy_control:
        q = nncf.quantize_with_accuracy_control(
            model, calib, nncf.Dataset(req.judge_set.feeds), task_validator(req, _onnx_infer),
            max_drop=accuracy_control_drop(req, cfg), drop_type=nncf.DropType.ABSOLUTE, **kw, **nncf_restorer(cfg),
            advanced_quantization_parameters=adv)
    else:
        q = nncf.quantize(model, calib, **kw, advanced_parameters=adv)
    from edgeopt.backends.onnxruntime.rewrite import nncf_for_onnxruntime

    nncf_for_onnxruntime(q)
    onnx.save(q, str(dst))


def _onnx_infer(model):
    """A feed -> outputs function over an in-memory ONNX model (NNCF's accuracy control hands us those)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: dict(zip(names, sess.run(names, feed)))


def _runner(path: Path, req):
    """An activated ONNX Runtime runner with the target's options: candidates run as the artifact will."""
    from edgeopt.backends.onnxruntime.runner import OrtRunner

    runner = OrtRunner(Path(path), req.spec, req.target.options)
    runner.activate()
    return runner


def _measure(paths: dict[str, Path], req, cfg, feed1) -> dict[str, dict]:
    """Every candidate of ``paths`` (and "fp32", the unquantized model) timed together in interleaved rounds,
    then scored by the guard. Returns name -> result (fp32: its timing only). A candidate ONNX Runtime cannot
    load, run or score fails alone: its result says why."""
    runners, results = {}, {}

    def failed(name, exc):
        why, where = failure.with_nodes(f"running it failed: {type(exc).__name__}: {_clip(exc)}",
                                        paths.get(name, req.onnx_path), str(exc))
        results[name] = {"candidate": name, "error": why, "within_budget": False, "why": why,
                         **({"nodes": where["nodes"]} if where else {})}

    try:
        runners["fp32"] = _runner(req.onnx_path, req)
        calls = {"fp32": runners["fp32"].timed_call(feed1)}
        for name, path in paths.items():
            try:
                runners[name] = _runner(path, req)
                calls[name] = runners[name].timed_call(feed1)
            except Exception as exc:  # noqa: BLE001 - ORT raises its own types
                failed(name, exc)
        timed = race(calls, cfg.timing_s, baseline="fp32")
        for name in calls:
            if name == "fp32":
                results[name] = {"candidate": name, **timed[name]}
                continue
            try:
                results[name] = {"candidate": name, **timed[name],
                                 **score(lambda feed, r=runners[name]: r.infer(feed, check=False), req)}
            except Exception as exc:  # noqa: BLE001 - scoring runs the model on real data
                failed(name, exc)
        return results
    finally:
        for r in runners.values():
            r.close()


def quantize_for_onnxruntime(req, out_path: Path) -> dict:
    cfg = config_of(req)
    feeds = calibration_feeds(req, cfg.subset_size)
    candidates = cfg.candidates or DEFAULTS.get(req.model_kind, DEFAULTS["generic"])
    onnx_sha = req.onnx_key()  # with its external data files
    feed1 = req.spec.random_feed(__import__("numpy").random.default_rng(0), batch=1 if req.spec.batch_dim else None)
    reduce, reduce_why = reduce_range(cfg)
    req.log(f"int8: static recipes quantize weights to {7 if reduce else 8} bits ({reduce_why})")
    results, paths = [], {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-int8-") as tmp:
        work = Path(tmp)
        notes_of = {}
        for name in candidates:
            path, cache, notes = _candidate(name, req, cfg, feeds, work, onnx_sha, reduce)
            if path is None:
                outcome = "skipped" if cache.startswith("skipped") else "error"
                results.append({"candidate": name, outcome: cache, "within_budget": False, "why": cache})
                continue
            paths[name] = path
            notes_of[name] = {"calibration_cache": cache, **notes}
        measured = _measure(paths, req, cfg, feed1)
        fp32 = measured.pop("fp32")
        for name, r in measured.items():
            r.update(notes_of[name])
            if "error" in r:
                req.log(f"int8 candidate {name}: {r['error']}")
                results.append(r)
                continue
            req.log(f"int8 candidate {name}: {r['latency_ms_b1']:.3f} ms at batch 1 (fp32 {fp32['latency_ms_b1']:.3f}; "
                    f"{vs_text(r)}), " + _fig(r) + ("" if r["within_budget"] else f" -- over budget: {r['why']}"))
            results.append(r)
        results.sort(key=lambda r: candidates.index(r["candidate"]))
        within = [r for r in results if r.get("within_budget")]
        if not within and cfg.mixed_precision:
            r = _mixed(results, paths, req, cfg, feeds, work, feed1)
            if r is not None:
                results.append(r)
                within = [r] if r["within_budget"] else []
        if not within and cfg.accuracy_control and can_control_accuracy(req):
            req.log("no int8 candidate meets the budget: NNCF accuracy control keeps the most sensitive layers in float")
            path = work / "nncf-qdq-ac.onnx"
            try:
                src = _preprocess(req.onnx_path, work)
                exclude = _float_head(req, src)
                _nncf_qdq(src, path, feeds, req, cfg, accuracy_control=True, exclude=exclude)
                r = _measure({"nncf-qdq-ac": path}, req, cfg, feed1)["nncf-qdq-ac"]
                r["float_layers"] = float_layers(path)
                if exclude:
                    r["float_head"] = head.summary(exclude)
                if len(r["float_layers"]) >= compute_layer_count(path):
                    r.update(within_budget=False, why="accuracy control kept every layer in float: no INT8 left")
                r["calibration_cache"] = "off"
                results.append(r)
                paths["nncf-qdq-ac"] = path
                within = [r] if r["within_budget"] else []
            except Exception as exc:  # noqa: BLE001 - accuracy control can give up; the numbers above stand
                results.append({"candidate": "nncf-qdq-ac", "within_budget": False,
                                "error": failure.with_nodes(_clip(exc, 300), req.onnx_path, str(exc))[0]})
        if not within:
            raise CompileError(
                "No INT8 recipe for ONNX Runtime meets the accuracy budget: "
                + "; ".join(f"{r['candidate']}: {r.get('why') or r.get('error')}" for r in results),
                "Raise [compression] max_drop (or lower min_cosine), give more or better calibration data, or ship fp32.")
        win = pick(within)
        shutil.copy(paths[win["candidate"]], out_path)
    others = [r["candidate"] for r in within if r is not win]
    why = (f"fastest at batch 1 of the candidates within budget ({', '.join([win['candidate'], *others])}; "
           f"timings within {NOISE:.0%} count as a tie, won by the more accurate)")
    if win["latency_ms_b1"] >= fp32["latency_ms_b1"]:
        why += f"; note: not faster than fp32 here ({win['latency_ms_b1']:.3f} vs {fp32['latency_ms_b1']:.3f} ms)"
    return {"int8": {"recipe": win["candidate"], "why": why, "candidates": results, "fp32_quick": fp32,
                     "reduce_range": {"static_recipes": reduce, "why": reduce_why},
                     "calibration_samples": len(feeds), "compression": cfg.to_dict()}}


RANKING_SAMPLES = 32  # calibration samples mixed precision ranks layers on


def _mixed(results, paths, req, cfg, feeds, work: Path, feed1) -> dict | None:
    """Mixed precision (compress/mixed.py) on the most accurate candidate that ran: the fewest layers that cost
    most back in float until the guard accepts it. Returns its measured result, or None when nothing ran."""
    import onnx

    from edgeopt.compress.mixed import mixed_precision

    ran = [r for r in results if r["candidate"] in paths and "error" not in r
           and (r.get("accuracy") or r.get("cosine") is not None)]
    if not ran:
        return None
    base = max(ran, key=lambda r: ((r.get("accuracy") or {}).get("value", 0.0), r.get("cosine") or 0.0))
    name = f"{base['candidate']}-mixed"
    req.log(f"no int8 candidate meets the budget: mixed precision puts the layers of {base['candidate']} that "
            f"cost most back in float (at most {cfg.mixed_time_s:g} s)")
    try:
        qdq = onnx.load(str(paths[base["candidate"]]))
        twin = onnx.load(str(_preprocess(req.onnx_path, work)))
        ranking, n = [], 0
        for f in feeds:
            ranking.append(f)
            n += int(__import__("numpy").asarray(next(iter(f.values()))).shape[0]) if req.spec.batch_dim else 1
            if n >= RANKING_SAMPLES:
                break
        outcome = mixed_precision(qdq, twin, _onnx_infer, ranking, lambda infer: score(infer, req),
                                  cfg.mixed_time_s, req.log)
    except Exception as exc:  # noqa: BLE001 - the numbers so far stand
        return {"candidate": name, "within_budget": False,
                "error": failure.with_nodes(_clip(exc, 300), req.onnx_path, str(exc))[0]}
    if outcome.float_layers is None:
        why = outcome.record.get("why") or ("no choice of float layers met the budget in "
                                            f"{outcome.record.get('seconds')} s")
        return {"candidate": name, "within_budget": False, "why": why, "mixed_precision": outcome.record}
    path = work / f"{name}.onnx"
    onnx.save(outcome.model, str(path))
    r = _measure({name: path}, req, cfg, feed1)[name]
    r.update(mixed_precision=outcome.record, float_layers=float_layers(path), calibration_cache="off")
    if len(r["float_layers"]) >= compute_layer_count(path):
        r.update(within_budget=False, why="mixed precision kept every layer in float: no INT8 left")
    paths[name] = path
    return r


NOISE = 0.05  # quick timings closer than this are a tie: the more accurate candidate wins it


def pick(within: list[dict]) -> dict:
    """The fastest candidate, unless another is within timing noise of it and more accurate."""
    fastest = min(r["latency_ms_b1"] for r in within)
    close = [r for r in within if r["latency_ms_b1"] <= fastest * (1 + NOISE)]
    return max(close, key=lambda r: ((r.get("accuracy") or {}).get("value", 0.0), r.get("cosine") or 0.0,
                                     -r["latency_ms_b1"]))


def _fig(r: dict) -> str:
    parts = []
    if "accuracy" in r:
        parts.append(describe(r["accuracy"]))
    if r.get("cosine") is not None:
        parts.append(f"cosine {r['cosine']:.4f}")
    return ", ".join(parts)


def _candidate(name, req, cfg, feeds, work: Path, onnx_sha: str, reduce: bool):
    """(path, "hit"|"miss", notes) or (None, why, {}) for one recipe, through the calibration cache; ``reduce``:
    the static recipes' 7-bit weights (:func:`reduce_range`).

    ``notes`` holds what the recipe changed besides quantizing (the graph rewrites of the "-fused" recipe)."""
    fused = name == "ort-qdq-u8s8-fused"
    params = {"subset": len(feeds), "kind": req.model_kind, "preset": preset_name(cfg, req.model_kind)}
    if name.startswith("ort-qdq"):
        params["reduce_range"] = reduce
    if name == "ort-dynamic":
        params["weights"] = "per-channel"
    if name == "nncf-qdq":
        params["layout"] = NNCF_LAYOUT
    if fused:
        params["rewrites"] = INT8_RECIPES_VERSION
    float_head = head.wanted(req) or bool(head.float_nodes_of(req))
    if float_head:
        params["float_head"] = head.VERSION
    if head.float_nodes_of(req):
        params["float_nodes"] = list(head.float_nodes_of(req))
    key = calibration_key(onnx_sha, getattr(req.calibration, "sha256", None), name, params)
    hit = lookup(key)
    if hit is not None:
        req.log(f"int8 candidate {name}: reusing calibration from the cache ({key[:12]})")
        notes = hit / "notes.json"
        return hit / "model.onnx", "hit", json.loads(notes.read_text()) if notes.is_file() else {}
    dst = work / f"{name}.onnx"
    src = _preprocess(req.onnx_path, work)
    notes = {}
    try:
        if fused:
            src, notes["rewrites"] = _prepared(src, work)
            if not any(notes["rewrites"].values()):
                return None, "skipped: nothing in this graph for its rewrites to change", {}
        exclude = _float_head(req, src)
        if float_head:
            notes["float_head"] = head.summary(exclude)
        with contextlib.redirect_stdout(None), quiet_logging():
            if name in ("ort-qdq-u8s8", "ort-qdq-u8s8-fused"):
                _ort_static(src, dst, feeds, "u8", symmetric=False, exclude=exclude, reduce=reduce)
                if fused:
                    _int8_hard_swish(dst, notes["rewrites"])
            elif name in ("ort-qdq-u8s8-percentile", "ort-qdq-u8s8-entropy"):
                _ort_static(src, dst, feeds, "u8", symmetric=False, method=name.rsplit("-", 1)[1], exclude=exclude,
                            reduce=reduce)
            elif name == "ort-qdq-s8s8":
                _ort_static(src, dst, feeds, "s8", symmetric=True, exclude=exclude, reduce=reduce)
            elif name == "ort-dynamic":
                _ort_dynamic(src, dst, exclude)
            elif name == "nncf-qdq":
                _nncf_qdq(src, dst, feeds, req, cfg, exclude=exclude)
    except Exception as exc:  # noqa: BLE001 - one failing recipe does not stop the others
        return None, failure.with_nodes(f"quantization failed: {type(exc).__name__}: {_clip(exc)}", src,
                                        str(exc), feeds[:FEEDS_TRIED])[0], {}
    (work / f"{name}.notes.json").write_text(json.dumps(notes))
    store(key, {"model.onnx": dst, "notes.json": work / f"{name}.notes.json"})
    return dst, "miss", notes


def _prepared(src: Path, work: Path) -> tuple[Path, dict]:
    """The pre-processed model with the exact float rewrites of rewrite.prepare_for_int8, and their counts."""
    import onnx

    from edgeopt.backends.onnxruntime.rewrite import prepare_for_int8

    model = onnx.load(str(src))
    counts = prepare_for_int8(model)
    dst = work / "pre-fused.onnx"
    onnx.save(model, str(dst))
    return dst, counts


def _int8_hard_swish(path: Path, rewrites: dict) -> None:
    import onnx

    from edgeopt.backends.onnxruntime.rewrite import hard_swish_in_int8

    model = onnx.load(str(path))
    rewrites["HardSwish in int8 (QLinearAdd + QLinearMul)"] = hard_swish_in_int8(model)
    onnx.save(model, str(path))


def compute_layer_count(path: Path) -> int:
    """Conv/MatMul/Gemm nodes: the layers INT8 is for."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return sum(n.op_type in ("Conv", "MatMul", "Gemm") for n in m.graph.node)


def float_layers(path: Path) -> list[str]:
    """Conv/MatMul/Gemm nodes whose inputs are not dequantized: the layers kept in float."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    return [n.name for n in m.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
            and producers.get(n.input[0]) != "DequantizeLinear"]
