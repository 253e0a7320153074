"""The judge without labels and with them: the expected top-1 under FP32's probabilities (near-ties are not
errors, confident flips are), the paired bootstrap interval of a drop and the decision rule built on it, and
the detection drop's interval (COCO matching once, re-accumulated per resample). Constructed outputs whose
answers are known; numpy only (pycocotools for detection)."""

from types import SimpleNamespace

import numpy as np
import pytest

from edgeopt.compress.guard import judge_candidate
from edgeopt.config.compression import CompressionConfig
from edgeopt.core.tasks import (Outputs, TaskConfig, decide, evaluate, judge, paired_interval, probabilities,
                                samples_to_decide)

CLS = TaskConfig(type="classification")


def _out(logits, labels=None):
    return Outputs([{"x": np.zeros((len(logits), 1), np.float32)}], [{"logits": np.asarray(logits, np.float32)}],
                   labels)


def _fp32_and_flips(n=400, near=0, confident=0, seed=0):
    """FP32 logits for ``n`` samples: most confident (one class far ahead), and a candidate that flips ``near``
    samples where FP32's top two are a near-tie and ``confident`` samples where FP32 is sure."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, 10)).astype(np.float32)
    top = rng.integers(0, 10, n)
    ref[np.arange(n), top] += 8.0  # p(top) ~ 0.99
    got = ref.copy()
    for i in range(near):  # FP32 near-tie between top and the next class; the candidate picks the other one
        other = (top[i] + 1) % 10
        ref[i, other] = ref[i, top[i]] - 0.01
        got[i] = ref[i]
        got[i, other] = ref[i, top[i]] + 0.01
    for i in range(near, near + confident):
        got[i, (top[i] + 1) % 10] = ref[i, top[i]] + 1.0
    return ref, got


def test_near_ties_are_not_counted_as_errors_and_confident_flips_are():
    ref, near = _fp32_and_flips(near=40)
    ref2, sure = _fp32_and_flips(confident=40)
    base = judge(evaluate(CLS, _out(ref), _out(ref)), None, 1.0, 0.99)
    a = judge(evaluate(CLS, _out(near), _out(ref)), base, 1.0, 0.99)
    b = judge(evaluate(CLS, _out(sure), _out(ref2)), judge(evaluate(CLS, _out(ref2), _out(ref2)), None, 1.0, 0.99),
              1.0, 0.99)
    # both agree with FP32 on 90% of samples: one agreement budget of 1 point would refuse both
    assert a["top1_agreement"] == b["top1_agreement"] == pytest.approx(0.9)
    assert a["flips"] == b["flips"] == 40
    assert a["flips_confident"] == 0 and b["flips_confident"] == 40
    assert a["metric"] == "expected_top1" and base["drop_points"] == 0.0
    assert abs(a["drop_points"]) < 0.1 and a["within_budget"] and a["decision"] == "within"
    assert b["drop_points"] > 9.0 and not b["within_budget"] and b["decision"] == "over"
    assert "est. top-1 drop" in b["why"] and "> budget 1.00" in b["why"]


def test_probabilities_take_logits_or_probabilities():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p = probabilities(logits)
    assert p.sum(axis=1) == pytest.approx([1, 1]) and p[1] == pytest.approx([1 / 3] * 3)
    assert np.allclose(probabilities(p), p)  # already probabilities: unchanged
    big = probabilities(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.all(np.isfinite(big)) and big[0, 0] == pytest.approx(1.0)


def test_paired_interval_is_seeded_covers_the_drop_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    ref = (rng.uniform(size=400) < 0.9).astype(float)
    got = ref.copy()
    got[:12] = 0.0  # 12 of 400 (those correct) turn wrong
    iv = paired_interval(ref, got)
    assert iv == paired_interval(ref, got)  # fixed seed: the same interval every time
    assert iv["low"] <= iv["drop_points"] <= iv["high"] and iv["low"] > 0
    assert iv["drop_points"] == pytest.approx((ref.sum() - got.sum()) / 4)
    big = paired_interval(np.tile(ref, 16), np.tile(got, 16))  # 16x the samples: about 1/4 the width
    ratio = (big["high"] - big["low"]) / (iv["high"] - iv["low"])
    assert 0.15 < ratio < 0.4
    same = paired_interval(ref, ref)  # identical models: no drop, no width
    assert same["low"] == same["high"] == same["drop_points"] == 0.0


def test_the_decision_rule_within_over_undecided_and_samples_to_decide():
    def judged(drop, low, high, n=200):
        r = {"drop_points": drop, "drop_interval": {"drop_points": drop, "low": low, "high": high, "level": 0.95,
                                                    "resamples": 1000, "samples": n}}
        decide(r, 1.0)
        return r

    assert judged(0.3, 0.1, 0.6)["decision"] == "within"
    assert judged(2.0, 1.4, 2.7)["decision"] == "over"
    u = judged(0.6, 0.1, 1.4)
    assert u["decision"] == "undecided" and "straddles the budget 1.00" in u["decision_note"]
    # the upper half-width 0.8 must shrink to the 0.4 gap: 4x the samples
    assert u["samples_to_decide"] == 800 == samples_to_decide(0.6, 0.1, 1.4, 1.0, 200)
    over = judged(1.3, 0.8, 1.9)  # over the budget, the interval reaching into it: refused, undecided
    assert over["decision"] == "undecided" and over["samples_to_decide"] == int(np.ceil(200 * (0.5 / 0.3) ** 2))
    assert samples_to_decide(1.0, 0.5, 1.5, 1.0, 200) is None  # on the budget: no sample count decides
    # the verdict follows the point estimate, the decision says how sure it is
    r = {"metric": "top1", "label": "top-1", "value": 0.887, "budget": "points",
         "drop_interval": {"drop_points": 1.3, "low": 0.8, "high": 1.9, "level": 0.95, "resamples": 1000,
                           "samples": 200}}
    out = judge(r, {"metric": "top1", "value": 0.9}, 1.0, 0.99)
    assert not out["within_budget"] and "undecided" in out["why"] and "(95% 0.80..1.90)" in out["why"]


def test_labelled_and_unlabelled_paths():
    ref, got = _fp32_and_flips(n=200, confident=10)
    labels = np.argmax(ref, axis=1)
    labels[:20] = (labels[:20] + 3) % 10  # FP32 wrong on 20: the 10 flips happen where FP32 was already wrong
    lab = evaluate(CLS, _out(got, labels), _out(ref, labels))
    assert lab["metric"] == "top1" and lab["value"] == pytest.approx(0.9)
    assert lab["drop_interval"]["drop_points"] == pytest.approx(0.0)  # true top-1 unchanged
    est = lab["unlabelled"]  # what the judge would have said without labels, recorded for validation
    assert est["drop_points"] > 4.0 and est["flips"] == 10 and est["top1_agreement"] == pytest.approx(0.95)
    unl = evaluate(CLS, _out(got), _out(ref))
    assert unl["metric"] == "expected_top1" and "unlabelled" not in unl
    assert unl["value"] == pytest.approx(est["expected_top1"])
    assert unl["reference_value"] == pytest.approx(est["fp32_expected_top1"])


def test_a_wrecked_int8_is_still_refused_with_and_without_labels():
    ref, _ = _fp32_and_flips(n=300)
    wrecked = np.random.default_rng(7).normal(size=ref.shape)  # outputs unrelated to FP32's
    labels = np.argmax(ref, axis=1)
    cfg = CompressionConfig()
    for lab in (None, labels):
        base = judge(evaluate(CLS, _out(ref, lab), _out(ref, lab)), None, 1.0, 0.99)
        req = SimpleNamespace(compression=cfg, fp32_metric=base)
        res = judge_candidate({"accuracy": evaluate(CLS, _out(wrecked, lab), _out(ref, lab))}, req)
        assert res["within_budget"] is False and res["accuracy"]["decision"] == "over"
        assert res["drop_points"] > 50


def test_detection_drop_has_an_interval_and_the_pseudo_label_threshold_sensitivity():
    pytest.importorskip("pycocotools")
    from edgeopt.core.detection import Detections, map50_resampled, matches50, mean_ap

    rng = np.random.default_rng(0)

    def image(k):
        xy = rng.uniform(0, 250, (k, 2))
        return {"boxes": np.c_[xy, xy + rng.uniform(20, 60, (k, 2))].astype(np.float32),
                "scores": rng.uniform(0.3, 1.0, k).astype(np.float32), "labels": rng.integers(0, 2, k)}

    refs = [image(3) for _ in range(12)]
    gots = [dict(o) for o in refs]
    for o in gots[:4]:  # four images lose their best box
        keep = np.argsort(-o["scores"])[1:]
        o.update(boxes=o["boxes"][keep], scores=o["scores"][keep], labels=o["labels"][keep])
    feeds = [{"images": np.zeros((1, 3, 320, 320), np.float32)} for _ in refs]
    task = TaskConfig(type="detection")
    r = evaluate(task, Outputs(feeds, gots), Outputs(feeds, refs))
    iv = r["drop_interval"]
    assert iv["drop_points"] == pytest.approx((1 - r["value"]) * 100) and iv["drop_points"] > 0
    assert iv["low"] <= iv["drop_points"] <= iv["high"]
    assert iv["low"] < iv["high"] and iv["samples"] == 12
    sens = {s["label_threshold"]: s for s in r["threshold_sensitivity"]}
    assert set(sens) == {0.1, 0.25, 0.5} and sens[0.25]["drop_points"] == pytest.approx(iv["drop_points"])
    assert sens[0.5]["ground_truth"] < sens[0.1]["ground_truth"]
    # the per-resample accumulation is COCO's: image 0 once and image 1 twice scores as that list does
    as_dets = [Detections(o["boxes"], o["scores"], o["labels"]) for o in refs]
    found = [Detections(o["boxes"], o["scores"], o["labels"]) for o in gots]
    m = matches50(as_dets, found, 100)
    w = np.zeros(12)
    w[0], w[1] = 1, 2
    want = mean_ap([as_dets[0], as_dets[1], as_dets[1]], [found[0], found[1], found[1]], 100)["map50"]
    assert map50_resampled(m, w) == pytest.approx(want)
