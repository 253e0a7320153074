"""Score a candidate against the FP32 model: the task metric where labels exist, output cosine always."""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgeopt.core.metrics import classification_accuracy, first_outputs
from edgeopt.core.parity import parity, tolerance_for


def score(infer: Callable[[dict], dict], req) -> dict:
    """``infer`` maps a feed to named outputs. Returns metric value, cosine vs FP32 and the verdict."""
    out: dict = {}
    if req.reference is not None:
        feeds, refs = req.reference
        rep = parity(refs, [infer(f) for f in feeds], tolerance_for("int8"), req.model_kind)
        out["cosine"] = rep["cosine"]
        out["max_abs"] = rep["max_abs"]
    if req.evaluation is not None and req.evaluation.labels is not None:
        out["accuracy"] = classification_accuracy(*first_outputs(infer, req.evaluation, req.spec))
    return judge(out, req)


def judge(result: dict, req) -> dict:
    cfg = req.compression
    reasons = []
    acc = result.get("accuracy")
    base = (req.fp32_metric or {}).get("value")
    if acc is not None and base is not None:
        drop = base - acc["value"]
        result["drop_points"] = drop * 100
        allowed = cfg.allowed_drop(base)
        if drop > allowed + 1e-12:
            reasons.append(f"accuracy drop {drop * 100:.2f} points > budget {allowed * 100:.2f}")
    elif result.get("cosine") is not None and result["cosine"] < cfg.min_cosine:
        reasons.append(f"cosine {result['cosine']:.4f} < {cfg.min_cosine}")
    result["within_budget"] = not reasons
    result["why"] = "; ".join(reasons) or None
    return result


def quick_latency(run: Callable[[], object], seconds: float) -> float:
    """Median batch-1 latency (ms) over ``seconds`` after a short warm-up: enough to rank candidates."""
    import time

    for _ in range(5):
        run()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))
