"""Compare an artifact's outputs with the reference (PyTorch) outputs. Numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeopt.core.checks import key, number


@dataclass(frozen=True)
class Tolerance:
    atol: float | None = key(check=number(0, 1e6), doc="max |a - b| allowed, plus rtol * max |reference|")
    rtol: float = key(check=number(0, 1e6), doc="relative part of the bound, times max |reference|")
    min_cosine: float = key(check=number(-1, 1), doc="the least cosine similarity of the outputs")
    # Detectors returning final detections (boxes, scores, labels): when they are not element-wise equal, the
    # most points of mAP50 and of mAP50:95 the artifact's detections may lose against the reference's (None:
    # element-wise only). Discrete selections (top-k, NMS, score thresholds) can pick another, equally valid
    # set of boxes on near-tied scores, where raw tensors cannot be compared.
    max_map_drop: float | None = key(None, check=number(0, 100), doc="detectors: the most points of mAP lost")

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "min_cosine": self.min_cosine, "max_map_drop": self.max_map_drop}


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-5, min_cosine=0.99999, max_map_drop=1.0),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999, max_map_drop=1.0),
    # bf16 keeps 8 bits of mantissa: errors grow with depth (random-weight ResNet-50: cosine 0.992, max abs
    # 0.3 of 2.1), so bf16, like int8, is judged by the cosine and by the task metric, not by an absolute bound.
    "bf16": Tolerance(atol=None, rtol=0.0, min_cosine=0.99, max_map_drop=1.0),
    # Parity samples are mostly random inputs, out of the data's distribution, where INT8 ranges clip; the
    # task metric on real data (the accuracy guard) is the int8 gate that matters, this one catches breakage.
    "int8": Tolerance(atol=None, rtol=0.0, min_cosine=0.98),
}


def tolerance_for(precision: str, overrides: dict | None = None) -> Tolerance:
    base = DEFAULT_TOLERANCES[precision]
    o = (overrides or {}).get(precision, {})
    return Tolerance(atol=o.get("atol", base.atol), rtol=o.get("rtol", base.rtol),
                     min_cosine=o.get("min_cosine", base.min_cosine),
                     max_map_drop=o.get("max_map_drop", base.max_map_drop))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare_arrays(ref: np.ndarray, got: np.ndarray) -> dict:
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return {"shape_ref": list(ref.shape), "shape_got": list(got.shape), "max_abs": float("inf"),
                "max_rel": float("inf"), "cosine": 0.0, "ref_max_abs": 0.0}
    if ref.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0, "ref_max_abs": 0.0}
    if not np.issubdtype(ref.dtype, np.floating):
        eq = float(np.mean(ref == got))
        diff = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))
        return {"max_abs": diff, "max_rel": diff, "cosine": eq, "ref_max_abs": float(np.max(np.abs(ref)))}
    r, g = ref.astype(np.float64), got.astype(np.float64)
    if not np.all(np.isfinite(g)):
        return {"max_abs": float("inf"), "max_rel": float("inf"), "cosine": 0.0, "ref_max_abs": 0.0, "non_finite": True}
    d = np.abs(r - g)
    return {"max_abs": float(d.max()), "max_rel": float((d / (np.abs(r) + 1e-6)).max()),
            "cosine": _cosine(r, g), "ref_max_abs": float(np.abs(r).max())}


def parity(refs: list[dict[str, np.ndarray]], gots: list[dict[str, np.ndarray]], tol: Tolerance,
           kind: str = "generic") -> dict:
    """Per output, worst case over all samples; ``passed`` applies the tolerance of the precision.

    For ``kind="detector"`` the detections are first aligned (see :func:`align_detections`); when they still
    differ (another number of detections, other boxes) and the outputs are final detections, the verdict is
    the detection agreement (see :func:`judge_detections`)."""
    per: dict[str, dict] = {}
    for ref, got in zip(refs, gots, strict=True):
        if kind == "detector":
            got = align_detections(ref, got)
        missing = set(ref) - set(got)
        if missing:
            return {"passed": False, "reason": f"outputs missing from the artifact: {sorted(missing)}",
                    "max_abs": None, "max_rel": None, "cosine": None, "outputs": {}, "samples": len(refs),
                    "tolerance": tol.to_dict()}
        for name, r in ref.items():
            g = got[name]
            w = per.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0, "ref_max_abs": 0.0})
            if kind == "detector" and _is_detection_output(name) and _count_differs(r, g):
                # Another number of detections: compared on the ones both have (in score order), and reported
                w["count_mismatch"] = f"{np.shape(r)[0]} detections vs {np.shape(g)[0]}"
                n = min(np.shape(r)[0], np.shape(g)[0])
                r, g = np.asarray(r)[:n], np.asarray(g)[:n]
            c = compare_arrays(r, g)
            for k in ("max_abs", "max_rel", "ref_max_abs"):
                w[k] = max(w[k], c[k])
            w["cosine"] = min(w["cosine"], c["cosine"])
            if "shape_ref" in c:
                w["shape_mismatch"] = f"{c['shape_ref']} vs {c['shape_got']}"
    reasons = []
    for name, w in per.items():
        if "count_mismatch" in w:  # not a broken output: another set of detections
            reasons.append(f"{name}: {w['count_mismatch']}")
        if "shape_mismatch" in w:
            reasons.append(f"{name}: shape {w['shape_mismatch']}")
            continue
        if tol.atol is not None and w["max_abs"] > tol.atol + tol.rtol * w["ref_max_abs"]:
            reasons.append(f"{name}: max abs error {w['max_abs']:.3g} > {tol.atol:g} + {tol.rtol:g} x {w['ref_max_abs']:.3g}")
        if w["cosine"] < tol.min_cosine:
            reasons.append(f"{name}: cosine {w['cosine']:.6f} < {tol.min_cosine}")
    rep = {
        "passed": not reasons,
        "reason": "; ".join(reasons) or None,
        "max_abs": max(w["max_abs"] for w in per.values()) if per else 0.0,
        "max_rel": max(w["max_rel"] for w in per.values()) if per else 0.0,
        "cosine": min(w["cosine"] for w in per.values()) if per else 1.0,
        "outputs": per,
        "samples": len(refs),
        "tolerance": tol.to_dict(),
    }
    if reasons and kind == "detector" and not any("shape_mismatch" in w or not np.isfinite(w["max_abs"])
                                                  for w in per.values()):
        judge_detections(rep, refs, gots, tol)
    return rep


def judge_detections(rep: dict, refs: list[dict], gots: list[dict], tol: Tolerance) -> None:
    """Judge a detector whose detections differ element-wise by what a user of the detections sees: the
    mAP50 and mAP50:95 of the artifact's detections against every detection of the reference, over all the
    samples (COCO evaluator). Within ``tol.max_map_drop`` points on both, the artifact passes; the element-wise
    figures stay in the report (``elementwise``). Leaves ``rep`` as it is when the outputs are not final
    detections (a raw head is compared element-wise) or the reference detects nothing."""
    from edgeopt.core.detection import agreement

    agree = agreement(refs, gots)
    if agree is None:
        return
    rep["detections"] = agree
    if tol.max_map_drop is None:
        return
    drop = max(agree["drop50"], agree["drop50_95"])
    rep["elementwise"] = rep["reason"]
    rep["judged_by"] = "detections"
    rep["passed"] = drop <= tol.max_map_drop + 1e-9
    rep["reason"] = None if rep["passed"] else (
        f"detections: mAP50 {agree['map50'] * 100:.2f}, mAP50:95 {agree['map50_95'] * 100:.2f} against the "
        f"reference's {agree['reference_detections']} detections on {agree['samples']} samples (drop "
        f"{agree['drop50']:.2f} / {agree['drop50_95']:.2f} points > {tol.max_map_drop:g}; element-wise: "
        f"{rep['elementwise']})")


def _count_differs(r, g) -> bool:
    r, g = np.shape(r), np.shape(g)
    return len(r) == len(g) >= 1 and r[0] != g[0] and r[1:] == g[1:]


def _is_detection_output(name: str) -> bool:
    return any(name == k or name.endswith("_" + k) for k in ("boxes", "scores", "labels"))


PARITY_SUMMARY_KEYS = ("max_abs", "max_rel", "cosine", "passed", "samples", "tolerance", "reason")
OPTIONAL_SUMMARY_KEYS = ("gate", "task_metric", "judged_by", "elementwise", "detections")


def parity_summary(rep: dict) -> dict:
    """The parity figures a record keeps (manifest, artifact report): the worst case, the verdict, per output,
    and the gate and task metric when the build judged the artifact on real data."""
    return {**{k: rep.get(k) for k in PARITY_SUMMARY_KEYS},
            "outputs": {n: dict(o) for n, o in (rep.get("outputs") or {}).items()},
            **{k: rep[k] for k in OPTIONAL_SUMMARY_KEYS if k in rep}}


def in_words(rep: dict) -> str:
    """What a passed parity check found, for progress lines: the worst element-wise error, or, for detectors
    judged by their detections, how well those reproduce the reference's."""
    if rep.get("judged_by") == "detections":
        d = rep["detections"]
        return (f"detections mAP50 {d['map50'] * 100:.2f}, mAP50:95 {d['map50_95'] * 100:.2f} against the reference's "
                f"(element-wise they differ: {rep['elementwise']})")
    return f"max abs {rep['max_abs']:.2e}, cosine {rep['cosine']:.6f}"


def figures(rep: dict) -> str:
    """The numbers of a parity report in one phrase, for error messages."""
    if rep.get("max_abs") is None:
        return f"{rep['samples']} samples"
    if rep.get("judged_by") == "detections":
        return f"{rep['samples']} samples"  # the reason has the detection figures and the element-wise ones
    return f"max abs {rep['max_abs']:.3g}, cosine {rep['cosine']:.6f}, {rep['samples']} samples"


def _detection_keys(out: dict) -> tuple[str, str, str] | None:
    def find(suffix):
        hits = [k for k in out if k == suffix or k.endswith("_" + suffix)]
        return hits[0] if len(hits) == 1 else None

    keys = find("boxes"), find("scores"), find("labels")
    return keys if all(keys) else None


def align_detections(ref: dict, got: dict, score_tol: float = 1e-3) -> dict:
    """Reorder a detector's (boxes, scores, labels) to match the reference's order.

    Detections whose scores are (nearly) tied come out of NMS/top-k in an order that the last float bit
    decides, so an element-wise comparison would fail on a correct artifact. Each reference detection is
    matched to an unused one with the same label, a score within ``score_tol`` and the nearest box; the
    aligned outputs are then compared element-wise as usual, so a wrong box still fails.
    """
    keys = _detection_keys(ref)
    if keys is None or any(k not in got for k in keys):
        return got
    kb, ks, kl = keys
    rb, rs, rl = (np.asarray(ref[k]) for k in keys)
    gb, gs, gl = (np.asarray(got[k]) for k in keys)
    if rb.shape != gb.shape or rs.shape != gs.shape or rs.ndim != 1:
        return got
    used = np.zeros(len(gs), dtype=bool)
    order = []
    for i in range(len(rs)):
        cand = np.flatnonzero(~used & (gl == rl[i]) & (np.abs(gs - rs[i]) <= score_tol))
        if cand.size == 0:
            return got  # no match: leave as is, the element-wise check reports it
        j = cand[np.argmin(np.abs(gb[cand] - rb[i]).max(axis=1))]
        used[j] = True
        order.append(j)
    order = np.asarray(order, dtype=np.int64)
    return {**got, kb: gb[order], ks: gs[order], kl: gl[order]}
