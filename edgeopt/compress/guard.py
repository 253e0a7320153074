"""Score a candidate against the FP32 model by the task's metric on real samples; output cosine on the parity
samples is reported beside it (and is the gate only when the build has no real data)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgeopt.core.parity import parity, tolerance_for
from edgeopt.core.tasks import Outputs, below, evaluate, judge, run_over
from edgeopt.errors import DataError


def score(infer: Callable[[dict], dict], req) -> dict:
    """THE scoring of an INT8 candidate (every backend's, every recovery step's): ``infer`` maps a feed to named
    outputs; ``req`` is a :class:`~edgeopt.compress.judging.Judging`. Returns the task metric, cosine vs FP32
    and the verdict (``within_budget``, ``why``)."""
    out: dict = {}
    if req.reference is not None:
        feeds, refs = req.reference
        rep = parity(refs, [infer(f) for f in feeds], tolerance_for("int8"), req.model_kind)
        out["cosine"] = rep["cosine"]
        out["max_abs"] = rep["max_abs"]
    if req.judge_set is not None and req.task is not None:
        got = run_over(infer, req.judge_set.feeds, req.judge_set.labels)
        out["accuracy"] = evaluate(req.task, got, req.judge_set)
    return judge_candidate(out, req)


def judge_candidate(result: dict, req) -> dict:
    """The verdict: the task metric within [compression]'s budget (max_drop points, or min_cosine for
    similarity metrics); with no real data, the parity cosine against min_cosine."""
    cfg = req.compression
    acc = result.get("accuracy")
    if acc is not None:
        base = req.fp32_metric or {}
        judge(acc, base, cfg.allowed_drop(base.get("value", 1.0)) * 100, cfg.min_cosine)
        result["within_budget"], result["why"] = acc["within_budget"], acc["why"]
        if "drop_points" in acc:
            result["drop_points"] = acc["drop_points"]
        return result
    reasons = []
    if result.get("cosine") is not None and result["cosine"] < cfg.min_cosine:
        reasons.append(f"cosine {below(result['cosine'], cfg.min_cosine)} < {cfg.min_cosine} (no real data: judged "
                       "on random inputs)")
    result["within_budget"] = not reasons
    result["why"] = "; ".join(reasons) or None
    return result


def can_control_accuracy(req) -> bool:
    """NNCF's accuracy control needs real samples and the FP32 figure to hold the task metric to."""
    return req.judge_set is not None and req.task is not None and req.fp32_metric is not None


def accuracy_control_drop(req, cfg) -> float:
    """The absolute drop NNCF may allow, in metric units: the points budget, or 1 - min_cosine for cosine tasks."""
    base = req.fp32_metric or {}
    if base.get("budget") == "cosine":
        return max(0.0, base.get("value", 1.0) - cfg.min_cosine)
    return cfg.allowed_drop(base.get("value", 1.0))


def task_validator(req, infer_for: Callable[[object], Callable[[dict], dict]]):
    """NNCF's validation function: the task metric of a model on the judge set's feeds (any subset of them,
    as NNCF's accuracy control asks for), with or without labels."""
    js: Outputs = req.judge_set
    index = {id(f): i for i, f in enumerate(js.feeds)}
    sizes = [int(np.asarray(next(iter(f.values()))).shape[0]) if req.spec.batch_dim else 1 for f in js.feeds]
    starts = np.concatenate([[0], np.cumsum(sizes)])

    def validate(model, data) -> float:
        items = list(data)
        idx = [index[id(f)] for f in items]
        infer = infer_for(model)
        labels = None
        if js.labels is not None:
            labels = np.concatenate([js.labels[starts[i]:starts[i + 1]] for i in idx])
        got = run_over(infer, [js.feeds[i] for i in idx], labels)
        ref = Outputs([js.feeds[i] for i in idx], [js.outputs[i] for i in idx], labels)
        try:
            return float(evaluate(req.task, got, ref, interval=False)["value"])
        except DataError:
            # NNCF ranks layers on one sample at a time. A detector judged against FP32's own detections has
            # nothing to compare on an image where FP32 finds nothing: that sample scores as FP32 does. On the
            # whole judge set the error stands (the build already refuses such a set before quantizing).
            if len(idx) == len(js.feeds) or req.task.type != "detection" or req.task.annotations \
                    or js.labels is not None:
                raise
            return float((req.fp32_metric or {}).get("value", 1.0))

    return validate


def vs_text(r: dict, baseline: str = "fp32") -> str:
    """``1.31x fp32 (1.20-1.45)``, or "" without a figure."""
    s = r.get(f"vs_{baseline}")
    if not s:
        return ""
    return f"{s['value']:.2f}x {baseline}" + (f" ({s['low']:.2f}-{s['high']:.2f})" if s.get("low") is not None else "")
