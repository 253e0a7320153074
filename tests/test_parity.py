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
