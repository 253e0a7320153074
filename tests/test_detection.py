"""The detection metric: decoding (torchvision-style outputs, YOLO-style raw heads + NMS) and COCO mAP, on
hand-made boxes whose answer is known."""

import json

import numpy as np
import pytest

from edgeopt.core.detection import Detections, decode, decode_yolo, mean_ap, nms
from edgeopt.core.tasks import Outputs, TaskConfig, evaluate
from edgeopt.errors import DataError

TV = TaskConfig(type="detection")
YOLO = TaskConfig(type="detection", format="yolo")


def _tv(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "labels": np.asarray(labels, np.int64)}


IMAGES = [  # two images, three objects of two classes
    _tv([[10, 10, 50, 60], [100, 120, 180, 200]], [0.9, 0.8], [1, 2]),
    _tv([[30, 40, 90, 70]], [0.7], [1]),
]


def _outputs(outs):
    return Outputs(feeds=[{"images": np.zeros((1, 3, 320, 320), np.float32)} for _ in outs], outputs=outs)


def test_torchvision_perfect_match_is_one_and_shifted_boxes_score_lower():
    ref = _outputs(IMAGES)
    r = evaluate(TV, ref, ref)
    assert r["metric"] == "map50" and r["budget"] == "points" and r["against"] == "fp32"
    assert r["value"] == pytest.approx(1.0) and r["map50_95"] == pytest.approx(1.0)
    assert r["samples"] == 2 and r["ground_truth"] == 3
    # Shift every box by 30% of its width: IoU ~0.54 passes 0.5 but fails the stricter thresholds.
    shifted = [{**o, "boxes": o["boxes"] + np.array([1, 0, 1, 0], np.float32) * 0.3 * (o["boxes"][:, 2:3] -
                                                                                         o["boxes"][:, 0:1])}
               for o in IMAGES]
    s = evaluate(TV, _outputs(shifted), ref)
    assert s["map50"] == pytest.approx(1.0) and s["map50_95"] < 0.4
    # Far off: nothing matches.
    far = [{**o, "boxes": o["boxes"] + 400} for o in IMAGES]
    assert evaluate(TV, _outputs(far), ref)["value"] == 0.0
    # A wrong class is a miss, not a match.
    wrong = [{**o, "labels": o["labels"] + 1} for o in IMAGES]
    assert evaluate(TV, _outputs(wrong), ref)["value"] < 0.5


def test_all_scores_zero_scores_zero_and_the_statistics_say_why():
    ref = _outputs(IMAGES)
    zero = [{**o, "scores": np.zeros_like(o["scores"])} for o in IMAGES]
    r = evaluate(TV, _outputs(zero), ref)
    assert r["value"] == 0.0 and r["detections"] == 0
    assert r["scores"]["scores"]["zero_share"] == 1.0
    assert evaluate(TV, ref, ref)["scores"]["scores"]["zero_share"] == 0.0


def test_list_call_outputs_and_padded_batches_are_read_image_by_image():
    flat = {f"output_{i}_{k}": v for i, o in enumerate(IMAGES) for k, v in o.items()}
    assert [len(d) for d in decode(TV, [flat])] == [2, 1]
    padded = {"boxes": np.stack([IMAGES[0]["boxes"], np.pad(IMAGES[1]["boxes"], ((0, 1), (0, 0)))]),
              "scores": np.stack([IMAGES[0]["scores"], np.pad(IMAGES[1]["scores"], (0, 1))]),
              "labels": np.stack([IMAGES[0]["labels"], np.pad(IMAGES[1]["labels"], (0, 1))])}
    dets = decode(TV, [padded])
    assert [len(d) for d in dets] == [2, 1]  # the zero-score padding is below score_threshold
    np.testing.assert_allclose(dets[1].boxes, IMAGES[1]["boxes"])
    with pytest.raises(DataError, match="Cannot find the detections"):
        decode(TV, [{"logits": np.zeros((1, 3))}])


def _yolo_head(objects, classes=3, anchors=64, rng=None):
    """[1, 4 + C, N]: every object repeated on 3 anchors with jittered boxes and lower scores (NMS removes
    the copies); the other anchors are background with scores 0.0005."""
    rng = rng or np.random.default_rng(0)
    head = np.zeros((4 + classes, anchors), np.float32)
    head[:4] = rng.uniform(10, 300, (4, anchors))
    head[4:] = 0.0005
    a = 0
    for cx, cy, w, h, c, s in objects:
        for k in range(3):
            head[:4, a] = (cx + k, cy - k, w, h)
            head[4 + c, a] = s - 0.1 * k
            a += 1
    return head[None]


OBJECTS = [(100, 100, 60, 40, 0, 0.9), (300, 200, 100, 120, 2, 0.8), (110, 105, 60, 40, 1, 0.6)]


def test_yolo_decode_keeps_one_box_per_object_per_class():
    dets = decode_yolo(_yolo_head(OBJECTS), 0.001, 0.7, 300)[0]
    assert len(dets) == 3  # copies suppressed; the overlapping object of another class survives
    np.testing.assert_array_equal(dets.labels, [0, 2, 1])
    np.testing.assert_allclose(dets.boxes[0], [70, 80, 130, 120])
    np.testing.assert_allclose(dets.scores, [0.9, 0.8, 0.6], rtol=1e-6)
    # [B, N, 4 + C] is read the same
    again = decode_yolo(_yolo_head(OBJECTS).transpose(0, 2, 1), 0.001, 0.7, 300)[0]
    np.testing.assert_array_equal(again.boxes, dets.boxes)
    assert len(decode_yolo(_yolo_head(OBJECTS), 0.001, 0.7, 2)[0]) == 2  # max_detections


def test_nms_matches_a_brute_force_reading():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (200, 2))], axis=1)
    scores = rng.uniform(size=200)
    keep = nms(boxes, scores, 0.5, 1000)
    from edgeopt.core.detection import box_iou

    iou = box_iou(boxes[keep], boxes[keep])
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.5  # kept boxes never overlap more than the threshold
    dropped = np.setdiff1d(np.arange(200), keep)
    # every dropped box overlaps a kept one that scores higher
    assert all(np.any((box_iou(boxes[i:i + 1], boxes[keep])[0] > 0.5) & (scores[keep] > scores[i])) for i in dropped)


def test_yolo_head_scores_zeroed_by_quantization_give_zero_map():
    ref = _outputs([{"output0": _yolo_head(OBJECTS)}])
    assert evaluate(YOLO, ref, ref)["value"] == pytest.approx(1.0)
    broken = _yolo_head(OBJECTS)
    broken[:, 4:] = 0.0  # what a u8 per-tensor scale over 0..640 boxes does to 0..1 scores
    r = evaluate(YOLO, _outputs([{"output0": broken}]), ref)
    assert r["value"] == 0.0 and r["map50_95"] == 0.0
    assert r["scores"]["output0 (class scores)"]["zero_share"] == 1.0
    assert r["scores"]["output0 (boxes)"]["max"] > 100


def test_pseudo_labels_need_fp32_detections():
    nothing = _outputs([_tv([[1, 1, 5, 5]], [0.1], [0])])  # below label_threshold 0.25
    with pytest.raises(DataError, match="detects nothing"):
        evaluate(TV, nothing, nothing)
    lower = TaskConfig(type="detection", label_threshold=0.05)
    assert evaluate(lower, nothing, nothing)["value"] == pytest.approx(1.0)


def test_coco_json_and_yolo_txt_annotations(tmp_path):
    coco = {"images": [{"id": 7}, {"id": 3}], "categories": [{"id": 1}, {"id": 2}],
            "annotations": [{"image_id": 7, "category_id": 1, "bbox": [10, 10, 40, 50]},
                            {"image_id": 7, "category_id": 2, "bbox": [100, 120, 80, 80]},
                            {"image_id": 3, "category_id": 1, "bbox": [30, 40, 60, 30]}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    task = TaskConfig(type="detection", annotations=str(tmp_path / "gt.json"))
    r = evaluate(task, _outputs(IMAGES), None)
    assert r["against"] == "labels" and r["value"] == pytest.approx(1.0)
    # YOLO txt: normalised cx cy w h of a 320x320 input
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text("1 0.09375 0.109375 0.125 0.15625\n2 0.4375 0.5 0.25 0.25\n")
    (labels / "b.txt").write_text("1 0.1875 0.171875 0.1875 0.09375\n")
    task = TaskConfig(type="detection", annotations=str(labels))
    assert evaluate(task, _outputs(IMAGES), None)["value"] == pytest.approx(1.0)
    (labels / "b.txt").write_text("1 nonsense\n")
    with pytest.raises(DataError, match="class cx cy w h"):
        evaluate(task, _outputs(IMAGES), None)
    with pytest.raises(DataError, match="3 evaluation samples"):
        evaluate(TaskConfig(type="detection", annotations=str(tmp_path / "gt.json")),
                 _outputs(IMAGES + IMAGES[:1]), None)


def test_mean_ap_counts_missed_objects():
    truth = [Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.ones(2, np.float32),
                        np.zeros(2, np.int64))]
    half = [Detections(np.array([[0, 0, 10, 10]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64))]
    assert mean_ap(truth, half)["map50"] == pytest.approx(0.5, abs=0.01)


def test_fp32_detections_just_under_the_label_threshold_are_ignored_not_errors():
    """Against FP32's detections, one FP32 scored just under label_threshold (a near-tie) that a candidate scores
    just over it is no error (COCO's crowd treatment); a confident box FP32 never found, or a label box lost,
    still costs points."""
    from edgeopt.core.detection import IGNORE_BAND

    t = 0.25
    task = TaskConfig(type="detection", format="torchvision", label_threshold=t)
    near = IGNORE_BAND * t + 0.01  # in the band: FP32 nearly called it an object
    fp32 = [_tv([[10, 10, 50, 60], [200, 200, 260, 250]], [0.3, near], [1, 1]),
            _tv([[30, 40, 90, 70]], [0.9], [1])]
    # the near-tie crosses the threshold and now outranks the real label: a flip of ranks, not a lost object
    crossed = [_tv([[10, 10, 50, 60], [200, 200, 260, 250]], [0.27, 0.28], [1, 1]), fp32[1]]
    r = evaluate(task, _outputs(crossed), _outputs(fp32))
    assert r["value"] == pytest.approx(1.0) and r["ignored_below"]["regions"] == 1
    assert r["drop_interval"]["drop_points"] == pytest.approx(0.0, abs=1e-9)
    # a confident box where FP32 had nothing at all is a false positive above a label: it costs points
    spurious = [_tv([[10, 10, 50, 60], [120, 10, 160, 60]], [0.27, 0.28], [1, 1]), fp32[1]]
    assert evaluate(task, _outputs(spurious), _outputs(fp32))["value"] < 0.9
    # a label box lost still costs points
    lost = [_tv([[200, 200, 260, 250]], [near], [1]), fp32[1]]
    assert evaluate(task, _outputs(lost), _outputs(fp32))["value"] < 0.6
