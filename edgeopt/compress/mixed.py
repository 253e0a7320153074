"""Mixed precision by measured sensitivity: when no INT8 candidate meets the accuracy budget, put back in float
the fewest layers that cost most, measured, not guessed.

1. Rank: every quantized node (layer) of the best candidate is kept alone in float and the model's output error
   against FP32 (relative squared error over all outputs) is measured on a small ranking set; the layers
   whose float copy removes most error come first.
2. Search, fewest first: the first 1, 2, 4, 8 ... ranked layers are put back in float and the candidate is
   judged by the guard (the task metric on the judge set, the same verdict as every candidate) until one is
   within budget; then bisection finds the fewest in between that are.
3. Bounded: everything stops at the time limit, and a model with every layer back in float is never a result.

For Q/DQ ONNX models (ONNX Runtime's recipes, NNCF's Q/DQ ONNX, TensorRT's explicit Q/DQ) a layer goes back to
float by editing the graph (:func:`keep_in_float`): its weights come from the FP32 model, its activation input
skips its QuantizeLinear/DequantizeLinear pair, and every other layer keeps its calibration, so each try costs a
graph edit and an evaluation, not a calibration. Other backends hand :func:`search` their own way of building a
model with given layers in float ([compression] float_nodes / NNCF's ignored scope).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgeopt.core.onnxgraph import fresh_name

RANKING_SHARE = 0.6  # of the time limit, at most, for ranking


@dataclass
class Outcome:
    """What the search found: the layers left in float (None: nothing within budget in time), the model built
    with them, the verdict that accepted it, and the record for the manifest."""

    float_layers: list[str] | None
    model: Any = None
    verdict: dict | None = None
    record: dict = field(default_factory=dict)


def relative_error(outputs: list[dict], reference: list[dict]) -> float:
    """Sum over samples and outputs of squared error, over the reference's squared norm (0: identical)."""
    num = den = 0.0
    for got, ref in zip(outputs, reference):
        for name, r in ref.items():
            r = np.asarray(r, np.float64)
            g = np.asarray(got[name], np.float64)
            if g.shape != r.shape:
                return float("inf")
            num += float(np.sum((g - r) ** 2))
            den += float(np.sum(r ** 2))
    return num / den if den > 0 else num


def rank(layers: list[str], error_of: Callable[[list[str]], float], deadline: float) -> tuple[list[tuple], float]:
    """``layers`` ordered by how much output error keeping each alone in float removes (most first), with the
    error of each, and the error with none in float. Layers not reached before ``deadline`` (time.monotonic())
    keep their order at the end."""
    base = error_of([])
    scored, rest = [], []
    for name in layers:
        if time.monotonic() > deadline:
            rest.append((name, None))
            continue
        scored.append((name, error_of([name])))
    scored.sort(key=lambda t: t[1])
    return scored + rest, base


def search(order: list[str], judge: Callable[[list[str]], tuple[Any, dict]], deadline: float,
           log: Callable[[str], None] = lambda s: None) -> Outcome:
    """The fewest layers of ``order`` (most costly first) to keep in float for ``judge`` to accept: ``judge(layers)``
    builds and judges the model with ``layers`` in float and returns (model, verdict); verdict["within_budget"].
    Tries 1, 2, 4 ... then bisects; never all of ``order`` when it holds every quantized layer (the caller
    passes every layer it may put back)."""
    tried: list[dict] = []
    best: tuple[int, Any, dict] | None = None

    def attempt(k: int) -> bool:
        nonlocal best
        model, verdict = judge(order[:k])
        ok = bool(verdict.get("within_budget"))
        tried.append({"float_layers": k, "within_budget": ok,
                      **({"value": verdict["accuracy"]["value"]} if verdict.get("accuracy") else {}),
                      **({"cosine": verdict["cosine"]} if verdict.get("cosine") is not None else {})})
        log(f"mixed precision: {k} layer(s) in float -> " + ("within budget" if ok else f"over: {verdict.get('why')}"))
        if ok and (best is None or k < best[0]):
            best = (k, model, verdict)
        return ok

    low, high, k = 0, None, 1  # low: most layers known to fail; high: fewest known to pass
    while k <= len(order):
        if time.monotonic() > deadline:
            break
        if attempt(k):
            high = k
            break
        low = k
        k = min(k * 2, len(order)) if k < len(order) else len(order) + 1
    while high is not None and high - low > 1 and time.monotonic() <= deadline:
        mid = (low + high) // 2
        if attempt(mid):
            high = mid
        else:
            low = mid
    record = {"tried": tried}
    if best is None:
        return Outcome(None, record=record)
    return Outcome(list(order[:best[0]]), best[1], best[2], record)


# ------------------------------------------------------------------------------------------------
# The INT8 loop's recovery step (compress/recovery.py)
# ------------------------------------------------------------------------------------------------

@dataclass
class MixedInput:
    """What a quantizer hands mixed precision (its optional ``mixed_input(state)``; None: nothing to start
    from): the recovered candidate's name, the Q/DQ ONNX to start from, its float twin (node names match),
    ``infer_for(model)`` running an in-memory ONNX model as the backend will, and ``adopt(model)``, which
    makes the result the backend's model."""

    name: str
    qdq: Any
    float_model: Any
    infer_for: Callable[[Any], Callable[[dict], dict]]
    adopt: Callable[[Any], Any]


RANKING_SAMPLES = 32  # calibration samples the ranking runs
MIN_RANKING_FEEDS = 4  # fewest feeds the ranking runs when every layer would not be ranked in time with all of them


def ranking_feeds(feeds: list[dict], batched: bool, samples: int = RANKING_SAMPLES) -> list[dict]:
    """The first calibration feeds holding at least ``samples`` samples."""
    out, n = [], 0
    for f in feeds:
        out.append(f)
        n += int(np.asarray(next(iter(f.values()))).shape[0]) if batched and f else 1
        if n >= samples:
            break
    return out


class MixedPrecision:
    """Recovery step: the fewest, most costly layers back in float (see above), bounded by [compression]
    mixed_time_s. Runs for quantizers with ``mixed_input``; [compression] mixed_precision = false turns it off."""

    name = "mixed precision"

    def applies(self, state) -> bool:
        return bool(state.judging.compression.mixed_precision) and hasattr(state.quantizer, "mixed_input")

    def run(self, state) -> list:
        from edgeopt.compress.failure import clip
        from edgeopt.compress.quantizer import Candidate

        cfg = state.judging.compression
        name = "mixed"
        try:
            inp = state.quantizer.mixed_input(state)
            if inp is None:
                return []
            name = inp.name
            state.log(f"no int8 candidate meets the budget: mixed precision puts the nodes that cost most back in "
                      f"float (at most {cfg.mixed_time_s:g} s)")
            spec = getattr(getattr(state.quantizer, "req", None), "spec", None)
            feeds = ranking_feeds(state.feeds, bool(getattr(spec, "batch_dim", True)))
            outcome = mixed_precision(inp.qdq, inp.float_model, inp.infer_for, feeds, state.judge, cfg.mixed_time_s,
                                      state.log)
            if outcome.float_layers is None:
                why = outcome.record.get("why") or (
                    f"no choice of float layers met the budget in {outcome.record.get('seconds')} s")
                state.log(f"int8 candidate {name}: {why}")
                state.results.append({"candidate": name, "within_budget": False, "why": why,
                                      "mixed_precision": outcome.record})
                return []
            model = inp.adopt(outcome.model)
        except Exception as exc:  # noqa: BLE001 - the numbers so far stand
            state.fail(name, clip(exc), str(exc))
            return []
        notes = {"calibration_cache": "off", "float_layers": outcome.float_layers, "mixed_precision": outcome.record}
        # what the candidate it started from kept in float (a detector's post-processing) stays in float
        base = name[:-len("-mixed")] if name.endswith("-mixed") else None
        head_note = next((r["float_head"] for r in state.results if r.get("candidate") == base and "float_head" in r),
                         None)
        if head_note is not None:
            notes["float_head"] = head_note
        return [Candidate(name, model, notes, recovered=True)]


# ------------------------------------------------------------------------------------------------
# Q/DQ ONNX graphs
# ------------------------------------------------------------------------------------------------

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def quantized_layers(model, float_model=None) -> list[str]:
    """The nodes of a Q/DQ ONNX model that run quantized (an input of theirs comes out of a DequantizeLinear):
    the compute layers (Conv, Gemm, MatMul) and the others ONNX Runtime runs in INT8 (a residual Add, a pool).
    Each is a unit mixed precision may put back in float: on the real MobileNetV2 with every convolution in
    float, the quantized residual Adds alone still cost 6.5 points of top-1 agreement with FP32. With
    ``float_model``, also the nodes whose constants differ from their float twin's (weights quantized and folded
    back into float: ONNX Runtime's layout of NNCF's classifier). In graph order."""
    producer = {o: n for n in model.graph.node for o in n.output}
    rounded = _rounded_constants(model, float_model) if float_model is not None else set()
    return [n.name for n in model.graph.node if n.op_type not in QDQ_OPS and n.name and (n.name in rounded or any(
        getattr(producer.get(i), "op_type", None) == "DequantizeLinear" for i in n.input))]


def _rounded_constants(model, float_model) -> set[str]:
    """Names of the nodes of ``model`` with an initializer input of the same shape as, but not equal to, their
    float twin's."""
    from onnx import numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    fl_init = {t.name: t for t in float_model.graph.initializer}
    twins = {n.name: n for n in float_model.graph.node if n.name}
    out = set()
    for n in model.graph.node:
        twin = twins.get(n.name)
        if twin is None or n.op_type != twin.op_type:
            continue
        for a, b in zip(n.input, twin.input):
            if a in init and b in fl_init and tuple(init[a].dims) == tuple(fl_init[b].dims) and not np.array_equal(
                    numpy_helper.to_array(init[a]), numpy_helper.to_array(fl_init[b])):
                out.add(n.name)
                break
    return out


def keep_in_float(qdq, float_model, names) -> Any:
    """A copy of the Q/DQ ONNX model ``qdq`` with the nodes ``names`` in float: their constant inputs (weights,
    bias) taken from the same-named node of ``float_model`` (dequantized when it has none), their computed
    inputs taken before their QuantizeLinear/DequantizeLinear pair, clipped to its range. Other layers are
    untouched; Q/DQ nodes and initializers nothing uses any more are dropped."""
    from onnx import numpy_helper

    out = copy.deepcopy(qdq)
    g = out.graph
    init = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    fl_nodes = {n.name: n for n in float_model.graph.node if n.name} if float_model is not None else {}
    fl_init = {t.name: t for t in float_model.graph.initializer} if float_model is not None else {}
    wanted = set(names)
    clipped: dict[str, str] = {}
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    for node in g.node:
        if node.name not in wanted:
            continue
        twin = fl_nodes.get(node.name)
        for i, inp in enumerate(node.input):
            dq = producer.get(inp)
            src = twin.input[i] if twin is not None and i < len(twin.input) else None
            if inp in init and src in fl_init and tuple(init[inp].dims) == tuple(fl_init[src].dims):
                tensor = copy.deepcopy(fl_init[src])  # a constant quantized and folded back: the float one
                tensor.name = fresh_name(f"{node.name}_float_{i}", taken)
                g.initializer.append(tensor)
                node.input[i] = tensor.name
                continue
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in init:  # a quantized constant: the float model's, else its dequantized value
                src = twin.input[i] if twin is not None and i < len(twin.input) else None
                if src in fl_init:
                    tensor = copy.deepcopy(fl_init[src])
                else:
                    tensor = numpy_helper.from_array(_dequantized(dq, init))
                name = fresh_name(f"{node.name}_float_{i}", taken)
                tensor.name = name
                g.initializer.append(tensor)
                node.input[i] = name
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                if q.output[0] not in clipped:
                    clipped[q.output[0]] = _saturation(g, q, init, taken)
                node.input[i] = clipped[q.output[0]]
    if clipped:
        _insert_in_order(g)
    _prune(g)
    return out


def _saturation(g, q, init, taken) -> str:
    """The tensor a float layer reads instead of DQ(Q(x)): x clipped to the quantizer's range, without the
    rounding. Quantizers also stand for the activation they replaced (ONNX Runtime folds a ReLU or ReLU6 before
    a QuantizeLinear into its range), so x alone would lose it. A per-channel quantizer: x as it is."""
    from onnx import helper, numpy_helper

    scale = numpy_helper.to_array(init[q.input[1]]) if q.input[1] in init else None
    zero = (numpy_helper.to_array(init[q.input[2]]) if len(q.input) > 2 and q.input[2] in init
            else np.zeros((), np.uint8))
    if scale is None or scale.size != 1 or zero.size != 1 or zero.dtype not in (np.uint8, np.int8):
        return q.input[0]
    info = np.iinfo(zero.dtype)
    lo = (float(info.min) - float(zero.ravel()[0])) * float(scale.ravel()[0])
    hi = (float(info.max) - float(zero.ravel()[0])) * float(scale.ravel()[0])
    base = fresh_name(f"{q.name or q.output[0]}_float", taken)
    g.initializer.extend([numpy_helper.from_array(np.array(lo, np.float32), base + "_lo"),
                          numpy_helper.from_array(np.array(hi, np.float32), base + "_hi")])
    g.node.append(helper.make_node("Clip", [q.input[0], base + "_lo", base + "_hi"], [base], name=base))
    return base


def _insert_in_order(g) -> None:
    """Topological order again after appending nodes (ONNX requires it)."""
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or an outer-scope input: keep the rest as it was
            ordered.extend(rest)
            break
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def _dequantized(dq, init) -> np.ndarray:
    from onnx import numpy_helper

    q = numpy_helper.to_array(init[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(init[dq.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(init[dq.input[2]]).astype(np.float64)
            if len(dq.input) > 2 and dq.input[2] in init else np.zeros_like(scale))
    if scale.ndim == 1 and scale.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _prune(g) -> None:
    """Drop nodes whose outputs nothing reads (Q/DQ pairs a float layer no longer uses), then unused
    initializers."""
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        keep = [n for n in g.node if any(o in used for o in n.output)]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | outputs
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


def mixed_precision(qdq, float_model, infer_for: Callable[[Any], Callable[[dict], dict]], ranking_feeds: list[dict],
                    judge: Callable[[Callable[[dict], dict]], dict], time_limit_s: float,
                    log: Callable[[str], None] = lambda s: None) -> Outcome:
    """Mixed precision of a Q/DQ ONNX model (see the module's text). ``infer_for(model)``: a feed -> outputs
    function running an in-memory ONNX model; ``ranking_feeds``: the samples the ranking runs (FP32's outputs
    on them are the reference); ``judge(infer)``: the guard's verdict on a candidate."""
    start = time.monotonic()
    deadline = start + time_limit_s
    layers = quantized_layers(qdq, float_model)
    if len(layers) < 2:
        return Outcome(None, record={"why": f"{len(layers)} quantized layer(s): nothing to choose from"})
    ref_infer = infer_for(float_model)
    reference = [ref_infer(f) for f in ranking_feeds]
    use = [len(ranking_feeds)]  # the first feeds the ranking runs

    def error_of(names):
        infer = infer_for(keep_in_float(qdq, float_model, names) if names else qdq)
        return relative_error([infer(f) for f in ranking_feeds[:use[0]]], reference[:use[0]])

    # The ranking may use most of the time, not all: the search needs some (unranked layers come last). A layer
    # left unranked is worse than one ranked on fewer samples: when one pass over every ranking feed (what each
    # layer costs) times the layers exceeds the ranking's time, fewer feeds are used. On the real YOLOv8 at
    # 640x640 (OpenVINO, 2 busy cores) ranking on every calibration feed reached 51 of its 93 layers in 367 s.
    ranking_end = start + RANKING_SHARE * time_limit_s
    t = time.monotonic()
    error_of([])
    per_layer = time.monotonic() - t
    left = ranking_end - time.monotonic()
    fewer = None
    if per_layer * len(layers) > left and len(ranking_feeds) > MIN_RANKING_FEEDS:
        use[0] = max(MIN_RANKING_FEEDS, int(len(ranking_feeds) * left / (per_layer * len(layers))))
        fewer = (f"{use[0]} of {len(ranking_feeds)} feeds: one pass over all took {per_layer:.1f} s, "
                 f"{len(layers)} layers in {max(left, 0):.0f} s")
        if use[0] < len(ranking_feeds):
            log(f"mixed precision: ranking on {fewer}")
    ranked, base = rank(layers, error_of, ranking_end)
    log(f"mixed precision: ranked {sum(e is not None for _, e in ranked)} of {len(layers)} quantized layers in "
        f"{time.monotonic() - start:.1f} s (output error with none in float {base:.3g})")

    def try_float(names):
        model = keep_in_float(qdq, float_model, names)
        return model, judge(infer_for(model))

    # At most all but one: a model with no INT8 left is not an INT8 result (the caller checks the compute layers).
    outcome = search([n for n, _ in ranked][:len(layers) - 1], try_float, deadline, log)
    outcome.record.update({
        "quantized_layers": len(layers), "ranking_samples": use[0], "error_none_float": base,
        **({"ranking_fewer_feeds": fewer} if fewer and use[0] < len(ranking_feeds) else {}),
        "ranking": [{"layer": n, "error_alone_float": e} for n, e in ranked[:10]],
        "seconds": round(time.monotonic() - start, 1), "time_limit_s": time_limit_s,
        "timed_out": time.monotonic() > deadline})
    if outcome.float_layers is not None:
        outcome.record["float_layers"] = outcome.float_layers
    return outcome
