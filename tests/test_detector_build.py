"""torchvision's SSDlite (random weights, 160x160 inside the model) through `edgeopt build`
with ONNX Runtime and OpenVINO, FP32 and INT8: every INT8 candidate is judged by mAP or fails with its
reason; no traceback; the manifest is written."""

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
