"""Hugging Face classifiers (hf:FOLDER written by save_pretrained): the head and the class names come from the
folder's config.json, the task is classification."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

FAST = {"batches": [1], "duration_s": 0.1, "min_iterations": 3, "warmup": 1}


def _bert_classifier(path):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32, num_labels=2, id2label={0: "spam", 1: "ham"},
                     label2id={"spam": 0, "ham": 1})
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    return path


def test_sequence_classifier_folder_builds_with_its_head_and_labels(tmp_path):
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    folder = _bert_classifier(tmp_path / "clf")
    ids = np.random.default_rng(0).integers(0, 64, (12, 10))
    np.savez(tmp_path / "ev.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    m = build(recipe_from_dict({
        "model": {"source": f"hf:{folder}"},
        "inputs": [{"name": "input_ids", "shape": [1, 10], "dtype": "int64", "range": [0, 64]},
                   {"name": "attention_mask", "shape": [1, 10], "dtype": "int64", "range": [1, 2]}],
        "evaluation": {"source": str(tmp_path / "ev.npz")},
        "targets": ["ort-cpu"], "precisions": ["fp32"], "profile": FAST,
    }, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    assert m["model"]["outputs"] == ["logits"]  # the classification head, not the bare encoder
    assert m["model"]["labels"] == ["spam", "ham"]
    assert m["task"]["config"]["type"] == "classification"
    assert m["fp32_metric"]["metric"] == "expected_top1"  # no labels: FP32's own probabilities (issue 20)
    assert m["artifacts"][0]["status"] == "ok", m["artifacts"][0]


def test_image_classifier_folder_loads_its_head(tmp_path):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from edgeopt.config.recipe import ModelConfig
    from edgeopt.core.spec import IOSpec, tensor_from_dict
    from edgeopt.pipeline.intake import load_model

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64, num_labels=3,
                                        id2label={0: "cat", 1: "dog", 2: "bird"},
                                        label2id={"cat": 0, "dog": 1, "bird": 2})).save_pretrained(tmp_path / "vit")
    spec = IOSpec(inputs=(tensor_from_dict({"name": "pixel_values", "shape": [1, 3, 32, 32]}),))
    m = load_model(ModelConfig(source=f"hf:{tmp_path / 'vit'}"), spec, f"hf:{tmp_path / 'vit'}")
    assert m.spec.outputs == ("logits",) and m.labels == ("cat", "dog", "bird")
    with torch.no_grad():
        assert m.module(torch.rand(1, 3, 32, 32))[0].shape == (1, 3)
