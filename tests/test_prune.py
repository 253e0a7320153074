"""Pruning on the built-in example: structured (torch-pruning) with recovery fine-tune, unstructured (NNCF)."""

import pytest

from edgeopt.pipeline.api import compress
from edgeopt.errors import UserInputError
from edgeopt.config.pruning import PruningConfig
from edgeopt.report.progress import Reporter


def test_structured_pruning_loses_accuracy_and_fine_tuning_recovers_it(tmp_path):
    m = compress(None, tmp_path / "o", targets=("ort-cpu",), precisions=("fp32",), prune="structured", ratio=0.5,
                 finetune_epochs=3, reporter=Reporter(quiet=True))
    p = m["pruning"]
    assert p["macs_after"] < 0.5 * p["macs_before"] and p["params_after"] < 0.5 * p["params_before"]
    assert p["accuracy_pruned"] < p["accuracy_before"] - 0.02  # the loss is real ...
    assert p["accuracy_finetuned"] >= p["accuracy_before"] - 0.01  # ... and the fine-tune recovers it
    assert (tmp_path / "o" / "pruned" / "model.pt2").is_file()
    a = m["artifacts"][0]
    assert a["status"] == "ok" and a["parity"]["passed"]
    assert abs(a["accuracy"]["value"] - p["accuracy_finetuned"]) < 0.005
    # The pruned program reloads without unpickling arbitrary objects and matches the ONNX artifact.
    import numpy as np
    import torch

    from edgeopt.backends.artifact import open_artifact

    prog = torch.export.load(str(tmp_path / "o" / "pruned" / "model.pt2")).module()
    x = np.random.default_rng(0).uniform(size=(2, 1, 8, 8)).astype(np.float32)
    runner, _ = open_artifact(tmp_path / "o" / "ort-cpu-fp32")
    with runner:
        onnx_out = runner.infer({"image": x})["logits"]
    assert np.allclose(prog(torch.from_numpy(x))[0].detach().numpy(), onnx_out, atol=1e-4)


def test_unstructured_pruning_reports_sparsity_and_says_there_is_no_speedup(tmp_path):
    m = compress(None, tmp_path / "o", targets=("ort-cpu",), precisions=("fp32",), prune="unstructured", ratio=0.5,
                 reporter=Reporter(quiet=True))
    p = m["pruning"]
    assert 0.45 <= p["sparsity"] <= 0.55
    assert p["macs_after"] == p["macs_before"]
    assert "no speed-up" in p["note"]
    assert m["artifacts"][0]["status"] == "ok"


def test_bad_pruning_options():
    with pytest.raises(UserInputError, match="ratio"):
        PruningConfig.from_dict({"ratio": 1.5})
    with pytest.raises(UserInputError, match="unknown keys"):
        PruningConfig.from_dict({"method": "structured", "amount": 0.3})
    with pytest.raises(UserInputError, match="finetune"):
        PruningConfig.from_dict({"finetune": {"epochs": 2}})
