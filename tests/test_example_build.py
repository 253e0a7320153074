"""The built-in example end to end: export, ORT + OpenVINO artifacts, parity, accuracy, latency, manifest."""

import json

import pytest

from edgeopt.core.fsutil import sha256_file
from edgeopt.core.hostinfo import cpu_has
from edgeopt.core.manifest import load_manifest
from edgeopt.core.profile import ratios_withheld


def test_manifest_has_the_stable_keys(example_out):
    out, m = example_out
    for key in ("edgeopt_version", "created", "host", "model", "artifacts"):
        assert key in m
    assert m["model"]["name"] == "digits-cnn" and m["model"]["sha256"]
    assert m["model"]["inputs"][0]["name"] == "image" and m["model"]["outputs"] == ["logits"]
    assert m["host"]["cpu"]["model"] and "onnxruntime" in m["host"]["libraries"]
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(m, default=str))
    assert load_manifest(out).data["schema"] == "edgeopt.manifest/1"


def test_export_record(example_out):
    _, m = example_out
    e = m["export"]
    assert e["exporter"] in ("dynamo", "legacy") and e["opset"] == 18 and e["checker"] == "passed"
    assert e["parity"]["passed"] and e["parity"]["max_abs"] <= 1e-4


def test_every_expected_artifact_is_built_checked_and_profiled(example_out):
    out, m = example_out
    by_id = {a["id"]: a for a in m["artifacts"]}
    expected = {"ort-cpu-fp32", "openvino-cpu-fp32"} | ({"openvino-cpu-bf16"} if cpu_has("avx512_bf16") else set())
    assert expected <= set(by_id)
    for aid in expected:
        a = by_id[aid]
        assert a["status"] == "ok", a
        assert a["parity"]["passed"]
        if a["precision"] == "fp32":
            assert a["parity"]["max_abs"] <= 1e-4
        assert a["accuracy"]["metric"] == "top1" and a["accuracy"]["value"] > 0.95
        assert [row["batch"] for row in a["latency"]] == [1, 8]
        for row in a["latency"]:
            for k in ("median_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "throughput_per_s",
                      "iterations"):
                assert k in row
            assert 0 < row["min_ms"] <= row["median_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert a["files"] and all(sha256_file(out / f["path"]) == f["sha256"] for f in a["files"])
        if "speedup_withheld" in a:  # only when the machine was busy while timing
            assert a["speedup_withheld"] == ratios_withheld(m["timing"]) is not None
        else:
            assert set(a["speedup_vs_torch"]) == {"1", "8"}


def test_fp32_openvino_artifact_executes_in_f32(example_out):
    out, m = example_out
    a = next(a for a in m["artifacts"] if a["id"] == "openvino-cpu-fp32")
    assert a["meta"]["runtime_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    from edgeopt.backends.artifact import open_artifact

    runner, _ = open_artifact(out / "openvino-cpu-fp32")
    with runner:
        assert "f32" in runner.properties()["INFERENCE_PRECISION_HINT"]


def test_baseline_and_accuracy_of_the_torch_model(example_out):
    _, m = example_out
    assert m["baseline"]["name"] == "torch-eager-fp32" and m["baseline"]["accuracy"]["value"] > 0.95
    assert m["evaluation"]["used"] == 360


def test_rerun_reuses_valid_artifacts(example_out, tmp_path):
    """A second build into the same folder reuses the export and the compiled artifacts."""
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    out = tmp_path / "o"
    build(None, out, targets=("ort-cpu",), precisions=("fp32",), reporter=Reporter(quiet=True))
    first = sha256_file(out / "ort-cpu-fp32" / "model.onnx")
    m = build(None, out, targets=("ort-cpu",), precisions=("fp32",), reporter=Reporter(quiet=True))
    a = m["artifacts"][0]
    assert a.get("reused") is True and sha256_file(out / "ort-cpu-fp32" / "model.onnx") == first
    assert "Reusing the exported ONNX" in (out / "logs" / "build.log").read_text()
    # A tampered artifact is not reused: it is rebuilt.
    (out / "ort-cpu-fp32" / "model.onnx").write_bytes(b"garbage")
    m = build(None, out, targets=("ort-cpu",), precisions=("fp32",), reporter=Reporter(quiet=True))
    assert not m["artifacts"][0].get("reused") and sha256_file(out / "ort-cpu-fp32" / "model.onnx") != sha256_file(
        out / "logs" / "build.log")
    assert m["artifacts"][0]["status"] == "ok"


def test_interrupted_compile_leaves_nothing_half_written(tmp_path, monkeypatch):
    from edgeopt.backends import get_backend
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    backend = get_backend("onnxruntime")
    real = type(backend).compile

    def interrupted(self, req):
        real(self, req)
        raise KeyboardInterrupt

    monkeypatch.setattr(type(backend), "compile", interrupted)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        build(None, out, targets=("ort-cpu",), precisions=("fp32",), reporter=Reporter(quiet=True))
    assert not (out / "ort-cpu-fp32").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(type(backend), "compile", real)
    m = build(None, out, targets=("ort-cpu",), precisions=("fp32",), reporter=Reporter(quiet=True))
    assert m["artifacts"][0]["status"] == "ok"


def test_cli_build_json_and_table(run_cli, tmp_path):
    code, out, err = run_cli("build", "-o", tmp_path / "o", "-t", "ort-cpu", "-p", "fp32", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["artifacts"][0]["id"] == "ort-cpu-fp32" and m["artifacts"][0]["latency"]
    code, out, err = run_cli("profile", tmp_path / "o" / "ort-cpu-fp32", "--batch", "1,4", "--iterations", "30",
                             "--json")
    assert code == 0, err
    rows = json.loads(out)["artifacts"]["ort-cpu-fp32"]["rows"]
    assert [r["batch"] for r in rows] == [1, 4] and all(r["iterations"] == 30 for r in rows)
    code, out, err = run_cli("profile", tmp_path / "o", "--iterations", "20")
    assert code == 0 and "ort-cpu-fp32" in out
    code, out, _ = run_cli("targets", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["ort-cpu"]["runnable"] and not rows["openvino-npu"]["runnable"]
    assert "NPU" in rows["openvino-npu"]["status"]
    code, out, _ = run_cli("doctor", "--json")
    assert code == 0 and json.loads(out)["backends"]["onnxruntime"]["installed"]


def test_unlabelled_evaluation_reports_agreement_with_fp32(tmp_path):
    from edgeopt.pipeline.build import build
    from edgeopt.example import example_dict
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.report.progress import Reporter
    from edgeopt.core.resources import data_dir

    d = example_dict()
    d["evaluation"] = dict(d["calibration"])  # images without labels
    d["profile"] = {"batches": [1], "duration_s": 0.1, "min_iterations": 3}
    m = build(recipe_from_dict(d, data_dir("calibration")), tmp_path / "o", targets=("ort-cpu",),
              precisions=("fp32",), reporter=Reporter(quiet=True))
    acc = m["artifacts"][0]["accuracy"]
    assert acc["metric"] == "expected_top1" and acc["drop_points"] == 0.0 and acc["top1_agreement"] == 1.0
    assert acc["value"] == m["fp32_metric"]["value"] and acc["cosine"] > 0.99999
