"""Score a candidate against the FP32 model: the task metric where labels exist, output cosine always."""

from __future__ import annotations

from typing import Callable

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


def vs_text(r: dict, baseline: str = "fp32") -> str:
    """``1.31x fp32 (1.20-1.45)``, or "" without a figure."""
    s = r.get(f"vs_{baseline}")
    if not s:
        return ""
    return f"{s['value']:.2f}x {baseline}" + (f" ({s['low']:.2f}-{s['high']:.2f})" if s.get("low") is not None else "")
