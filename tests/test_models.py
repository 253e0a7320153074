"""Other model kinds and sources: a transformer encoder, a detector, TorchScript, torch.export, ONNX."""

import json

import numpy as np

from edgeopt.pipeline.build import build
from edgeopt.config.recipe import recipe_from_dict
from edgeopt.report.progress import Reporter

from conftest import MODELS

FAST = {"batches": [1, 2], "duration_s": 0.2, "min_iterations": 5, "warmup": 2}


def _build(tmp_path, data, **kw):
    return build(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True), **kw)


def test_transformer_encoder_two_int64_inputs_dynamic_batch_and_sequence(tmp_path):
    from tiny import tiny_bert_folder

    folder = tiny_bert_folder(tmp_path / "bert")
    m = _build(tmp_path, {
        "model": {"source": f"hf:{folder}", "kind": "transformer"},
        "inputs": [{"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, 128]},
                   {"name": "attention_mask", "shape": ["batch", "seq"], "dtype": "int64", "range": [1, 2]}],
        "dims": {"batch": {"min": 1, "opt": 1, "max": 4}, "seq": {"min": 1, "opt": 16, "max": 32}},
        "targets": ["ort-cpu", "openvino-cpu"], "precisions": ["fp32"], "profile": FAST,
    })
    assert m["model"]["outputs"] == ["last_hidden_state", "pooler_output"]
    assert m["export"]["parity"]["passed"]
    for a in m["artifacts"]:
        assert a["status"] == "ok", a
        assert a["parity"]["max_abs"] < 1e-4
        assert [r["batch"] for r in a["latency"]] == [1, 2]
    # The artifact really takes other sequence lengths and batches than the ones exported with.
    from edgeopt.backends.artifact import open_artifact

    runner, _ = open_artifact(tmp_path / "out" / "ort-cpu-fp32")
    with runner:
        for b, s in ((1, 1), (3, 7), (4, 32)):
            out = runner.infer({"input_ids": np.ones((b, s), np.int64), "attention_mask": np.ones((b, s), np.int64)})
            assert out["last_hidden_state"].shape == (b, s, 32)


def test_detector_builds_with_the_exporter_fallback(tmp_path):
    m = _build(tmp_path, {
        "model": {"source": f"{MODELS / 'tiny.py'}:ssdlite", "kind": "detector"},
        "inputs": [{"name": "images", "shape": [1, 3, 320, 320], "range": [0, 1]}],
        "targets": ["ort-cpu", "openvino-cpu"], "precisions": ["fp32"],
        "profile": {"batches": [1], "duration_s": 0.2, "min_iterations": 3, "warmup": 1},
    })
    assert m["model"]["outputs"] == ["boxes", "scores", "labels"]
    e = m["export"]
    assert e["exporter"] in ("dynamo", "legacy") and e["parity"]["passed"]
    if e["exporter"] == "legacy":
        assert e["fallback_reason"]  # why the dynamo exporter was not used
    ref = np.load(tmp_path / "out" / "reference" / "reference.npz")
    assert ref["output/0/boxes"].shape[0] > 0  # real detections are compared, not empty lists
    for a in m["artifacts"]:
        assert a["status"] == "ok", a
        assert a["parity"]["passed"]


def _mlp_recipe(source, **model):
    return {"model": {"source": source, **model},
            "inputs": [{"name": "x", "shape": ["batch", 16]}], "dims": {"batch": {"min": 1, "opt": 1, "max": 8}},
            "targets": ["ort-cpu"], "precisions": ["fp32"], "profile": FAST}


def test_torchscript_torch_export_and_onnx_sources(tmp_path):
    import torch
    from tiny import mlp

    model = mlp().eval()
    x = torch.rand(2, 16)
    torch.jit.save(torch.jit.trace(model, x), tmp_path / "m.ts")
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},)),
                      tmp_path / "m.pt2")
    for name in ("m.ts", "m.pt2"):
        (tmp_path / "out").exists() and __import__("shutil").rmtree(tmp_path / "out")
        m = _build(tmp_path, _mlp_recipe(name))
        assert m["artifacts"][0]["status"] == "ok" and m["export"]["parity"]["passed"], name
        onnx = tmp_path / "out" / "export" / "model.onnx"
    # An existing ONNX file: export is skipped, the reference comes from the ONNX itself.
    __import__("shutil").copy(onnx, tmp_path / "given.onnx")
    __import__("shutil").rmtree(tmp_path / "out")
    m = _build(tmp_path, {**_mlp_recipe("given.onnx"), "outputs": []})
    assert m["export"]["exporter"].startswith("none") and m["reference"]["source"] == "onnx"
    assert m["artifacts"][0]["status"] == "ok"


def test_checkpoint_under_a_common_key_and_dataparallel_prefix(tmp_path):
    import torch
    from tiny import mlp

    state = {f"module.{k}": v for k, v in mlp().state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ck.pt")
    m = _build(tmp_path, _mlp_recipe(f"{MODELS / 'tiny.py'}:mlp", checkpoint="ck.pt"))
    assert m["artifacts"][0]["status"] == "ok"


def test_cli_model_flags_without_a_recipe(run_cli, tmp_path):
    code, out, err = run_cli("build", "--model", f"{MODELS / 'tiny.py'}:two_inputs", "--input", "a:float32[batch,4]",
                             "--input", "b:float32[batch,4]", "--dim", "batch=1:1:4", "-t", "ort-cpu", "-p", "fp32",
                             "-o", tmp_path / "o", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["model"]["outputs"] == ["sum", "diff"] and m["artifacts"][0]["status"] == "ok"
