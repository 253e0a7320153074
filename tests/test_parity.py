import numpy as np

from edgeopt.core.parity import align_detections, parity, tolerance_for


def test_fp32_tolerance_passes_tiny_error_and_fails_large():
    ref = [{"y": np.linspace(-1, 1, 50, dtype=np.float32)}]
    ok = parity(ref, [{"y": ref[0]["y"] + 1e-6}], tolerance_for("fp32"))
    assert ok["passed"] and ok["max_abs"] < 2e-6 and ok["cosine"] > 0.99999
    bad = parity(ref, [{"y": ref[0]["y"] + 1e-3}], tolerance_for("fp32"))
    assert not bad["passed"] and "max abs error" in bad["reason"]


def test_shape_mismatch_and_missing_outputs_fail():
    ref = [{"y": np.zeros((2, 3), np.float32)}]
    assert not parity(ref, [{"y": np.zeros((3, 3), np.float32)}], tolerance_for("fp32"))["passed"]
    assert "missing" in parity(ref, [{"z": np.zeros((2, 3), np.float32)}], tolerance_for("fp32"))["reason"]


def test_int8_uses_cosine_only():
    rng = np.random.default_rng(0)
    y = rng.normal(size=1000).astype(np.float32)
    assert parity([{"y": y}], [{"y": y + rng.normal(scale=0.05, size=1000).astype(np.float32)}],
                  tolerance_for("int8"))["passed"]
    assert not parity([{"y": y}], [{"y": rng.normal(size=1000).astype(np.float32)}], tolerance_for("int8"))["passed"]


def test_detections_with_tied_scores_are_aligned_but_wrong_boxes_still_fail():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]], np.float32)
    ref = {"boxes": boxes, "scores": np.array([0.9, 0.9, 0.5], np.float32), "labels": np.array([1, 1, 2])}
    swapped = {"boxes": boxes[[1, 0, 2]], "scores": ref["scores"][[1, 0, 2]], "labels": ref["labels"][[1, 0, 2]]}
    assert parity([ref], [swapped], tolerance_for("fp32"), kind="detector")["passed"]
    assert not parity([ref], [swapped], tolerance_for("fp32"))["passed"]
    wrong = {**swapped, "boxes": swapped["boxes"] + 3}
    assert not parity([ref], [wrong], tolerance_for("fp32"), kind="detector")["passed"]
    assert align_detections({"y": 1}, {"y": 2}) == {"y": 2}


def test_agreement_without_labels():
    from edgeopt.core.metrics import agreement

    ref = np.eye(4, dtype=np.float32)
    same = agreement(ref.copy(), ref)
    assert same["metric"] == "top1_agreement" and same["value"] == 1.0 and same["cosine"] > 0.9999
    flipped = agreement(ref[::-1].copy(), ref)
    assert flipped["top1_agreement"] == 0.0


def _dets(n, seed=0, size=320):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size - 60, (n, 2))
    wh = rng.uniform(20, 60, (n, 2))
    scores = np.sort(rng.uniform(0.3, 1.0, n))[::-1]
    return {"boxes": np.hstack([xy, xy + wh]).astype(np.float32), "scores": scores.astype(np.float32),
            "labels": rng.integers(1, 4, n).astype(np.int64)}


def _keep(d, idx):
    return {k: v[idx] for k, v in d.items()}


def test_detectors_whose_detections_differ_are_judged_by_map_against_the_reference():
    refs = [_dets(20, seed=s) for s in range(3)]
    # Another set on one sample: its lowest-scoring detection is missing
    other = _keep(refs[1], np.arange(19))
    gots = [refs[0], other, refs[2]]
    rep = parity(refs, gots, tolerance_for("fp32"), kind="detector")
    assert rep["judged_by"] == "detections" and "detections vs" in rep["elementwise"]
    d = rep["detections"]
    assert d["reference_detections"] == 60 and d["detections"] == 59 and 0 < d["drop50"] < 5
    assert rep["passed"] is (max(d["drop50"], d["drop50_95"]) <= 1.0)
    loose = parity(refs, gots, tolerance_for("fp32", {"fp32": {"max_map_drop": 5.0}}), kind="detector")
    assert loose["passed"] and loose["reason"] is None and np.isfinite(loose["max_abs"])
    assert "shape" not in (parity(refs, gots, tolerance_for("fp32"), kind="detector")["reason"] or "")


def test_a_real_mismatch_of_detections_still_fails():
    refs = [_dets(20, seed=s) for s in range(3)]
    tol = tolerance_for("fp32", {"fp32": {"max_map_drop": 5.0}})
    half = [_keep(r, np.arange(10)) for r in refs]  # half of the detections lost
    rep = parity(refs, half, tol, kind="detector")
    assert not rep["passed"] and rep["reason"].startswith("detections: mAP50") and rep["detections"]["drop50"] > 40
    # every box off by 4 px (an export bug): still overlapping at IoU 0.5, but mAP50:95 tells
    shifted = [{**r, "boxes": r["boxes"] + 4} for r in refs]
    rep = parity(refs, shifted, tol, kind="detector")
    assert rep["detections"]["drop50"] <= 5 and rep["detections"]["drop50_95"] > 5 and not rep["passed"]
    # labels swapped
    relabelled = [{**r, "labels": r["labels"] % 3 + 1} for r in refs]
    assert not parity(refs, relabelled, tol, kind="detector")["passed"]
    # non-finite outputs are never judged by detections
    nan = [{**r, "scores": np.full_like(r["scores"], np.nan)} for r in refs]
    rep = parity(refs, nan, tol, kind="detector")
    assert not rep["passed"] and "judged_by" not in rep


def test_raw_heads_and_int8_keep_the_element_wise_verdict():
    rng = np.random.default_rng(0)
    head = rng.uniform(0, 1, (1, 7, 50)).astype(np.float32)
    rep = parity([{"output0": head}], [{"output0": head + 0.01}], tolerance_for("fp32"), kind="detector")
    assert not rep["passed"] and "detections" not in rep
    refs = [_dets(20, seed=s) for s in range(2)]
    gots = [refs[0], _keep(refs[1], np.arange(19))]
    rep = parity(refs, gots, tolerance_for("int8"), kind="detector")
    assert "detections" in rep and "judged_by" not in rep  # int8: the task metric on real data is the gate
    assert "shape" not in rep["reason"]  # another number of detections is not a broken output
