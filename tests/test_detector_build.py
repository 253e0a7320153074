"""torchvision's SSDlite (random weights, 160x160 inside the model) and Faster R-CNN (320x320) through
`edgeopt build` with ONNX Runtime (and OpenVINO), FP32 and INT8: every INT8 candidate is judged by mAP or fails
with its reason; no traceback; the manifest is written."""

import json

import numpy as np
import pytest

from conftest import MODELS

FAST = {"batches": [1], "duration_s": 0.1, "min_iterations": 3, "warmup": 1}


def _build(tmp_path, factory, size=160, **extra):
    from tiny import rect_images

    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    np.savez(tmp_path / "cal.npz", images=rect_images(10, size, seed=100))
    np.savez(tmp_path / "ev.npz", images=rect_images(4, size, seed=200))
    data = {"model": {"source": f"{MODELS / 'tiny.py'}:{factory}", "kind": "detector", "call": "list"},
            "inputs": [{"name": "images", "shape": [1, 3, size, size]}],
            "task": {"type": "detection"},
            "calibration": {"source": str(tmp_path / "cal.npz")}, "evaluation": {"source": str(tmp_path / "ev.npz")},
            "compression": {"max_drop": 30.0, "accuracy_control": False, "candidates": ["ort-qdq-u8s8"]},
            "targets": ["ort-cpu", "openvino-cpu"], "precisions": ["fp32", "int8"], "profile": FAST, **extra}
    m = build(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"] == m["artifacts"]
    return m


def _check(m):
    e = m["export"]
    assert e["parity"]["passed"] and e["exporter"] in ("dynamo", "legacy")
    arts = {a["id"]: a for a in m["artifacts"]}
    for fp32 in ("ort-cpu-fp32", "openvino-cpu-fp32"):
        assert arts[fp32]["status"] == "ok", arts[fp32]
        assert arts[fp32]["accuracy"]["metric"] == "map50"
    for int8 in ("ort-cpu-int8", "openvino-cpu-int8"):
        a = arts[int8]
        assert a["status"] in ("ok", "failed"), a
        if a["status"] == "failed":
            assert a["reason"] and "Traceback" not in a["reason"]
            continue
        for c in a["meta"]["int8"]["candidates"]:
            assert ("accuracy" in c and c["accuracy"]["metric"] == "map50") or c.get("error") or c.get("skipped"), c
            assert c["within_budget"] or c["why"], c
            if "accuracy" in c:
                assert c["float_head"]["count"] > 0  # the post-processing stayed in float
        assert a["accuracy"]["metric"] == "map50" and a["accuracy"]["value"] >= 0.7
    return arts


@pytest.mark.slow
def test_ssdlite_fp32_and_int8_on_both_backends(tmp_path):
    _check(_build(tmp_path, "ssdlite160"))


@pytest.mark.slow
def test_faster_rcnn_export_is_judged_by_its_detections(tmp_path):
    """With random weights, Faster R-CNN's RPN logits carry about 1e-3 of float rounding (its activations reach
    thousands), enough to flip which proposals its top-k and NMS keep: on some CPUs ONNX Runtime's detections
    are another set than PyTorch's, on others (an AVX-512 VNNI Xeon) they agree. Which one happens is the
    CPU's rounding, so the test takes either: refused, the reason is measured (mAP against PyTorch's
    detections, and PyTorch's own drift under rounding-level noise) and, allowed explicitly, it builds;
    accepted, it was judged within the tolerance it names. The INT8 candidates are judged by mAP or fail
    naming the node (an RoI pooling level no box reaches)."""
    from edgeopt.errors import ParityError

    one = {"targets": ["ort-cpu"], "compression": {"max_drop": 30.0, "accuracy_control": False,
                                                    "candidates": ["ort-qdq-u8s8", "nncf-qdq"]}}
    allowed = 1.0  # the fp32 default
    try:
        m = _build(tmp_path, "frcnn", size=320, **one)
    except ParityError as err:
        text = str(err)
        assert "detections differ from PyTorch's" in text and "mAP50" in text and "element-wise" in text, text
        assert "rounding-level noise" in text and "max_map_drop" in text, text
        allowed = 10.0
        m = _build(tmp_path, "frcnn", size=320, parity={"tolerances": {"fp32": {"max_map_drop": allowed}}}, **one)
    p = m["export"]["parity"]
    assert p["passed"] and p["tolerance"]["max_map_drop"] == allowed, p
    if p.get("judged_by") == "detections":  # not element-wise equal: within the mAP allowance
        assert p["elementwise"] and 100.0 - allowed <= p["detections"]["map50"] * 100 <= 100.0, p
    arts = {a["id"]: a for a in m["artifacts"]}
    assert arts["ort-cpu-fp32"]["status"] == "ok", arts["ort-cpu-fp32"]
    # The device-side self-test holds the FP32 artifact to the same tolerance, and says how it judged it
    from conftest import invoke_cli

    code, out, err = invoke_cli("verify", tmp_path / "out", "--target", "ort-cpu")
    assert code == 0, err
    assert "ort-cpu-fp32" in out and "self-test passed" in out, out
    a = arts["ort-cpu-int8"]
    assert a["status"] in ("ok", "failed") and "Traceback" not in (a.get("reason") or "")
    cands = {c["candidate"]: c for c in a["meta"]["int8"]["candidates"]} if a["status"] == "ok" else None
    if a["status"] == "failed":  # every candidate is in the reason, with its figure or its error
        assert "ort-qdq-u8s8: mAP50 drop" in a["reason"], a["reason"]
        assert "nncf-qdq: quantization failed" in a["reason"] and "RoiAlign" in a["reason"], a["reason"]
        assert "empty on every calibration sample" in a["reason"], a["reason"]
    else:
        assert all("accuracy" in c or c.get("error") for c in cands.values()), cands
