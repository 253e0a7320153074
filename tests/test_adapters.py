"""PEFT adapters ([model] adapter): a LoRA trained here on a tiny BERT classifier and a tiny ViT, both built
for ONNX Runtime and OpenVINO from a recipe that names only the base folder and the adapter folder; every
artifact is checked against the adapted model as trained (unmerged), and the merge's own error is recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

FAST = 'batches = [1]\nduration_s = 0.1\nmin_iterations = 3\nwarmup = 1\n'


def _targets(model, *pairs):
    """The attention projections to adapt, by the names this transformers version gives them."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return next(list(p) for p in pairs if set(p) <= names)


def _train(model, inputs: dict, labels, steps: int = 8):
    """A few steps of LoRA training: enough to move lora_B (zero at init) and the head away from the base."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    for _ in range(steps):
        loss = model(**inputs, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def bert_lora(tmp_path):
    """A base folder (a tiny BERT sequence classifier with class names) and a LoRA adapter trained on it."""
    import peft
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3,
                     id2label={0: "negative", 1: "neutral", 2: "positive"},
                     label2id={"negative": 0, "neutral": 1, "positive": 2})
    base = BertForSequenceClassification(cfg).eval()
    base.save_pretrained(tmp_path / "base")
    targets = _targets(base, ("query", "value"), ("q_proj", "v_proj"))
    lora = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets))
    ids = torch.randint(0, 64, (16, 12))
    _train(lora, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 3, (16,)))
    lora.save_pretrained(tmp_path / "lora")
    return tmp_path / "base", tmp_path / "lora"


def vit_lora(tmp_path):
    import peft
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_labels=4)
    base = ViTForImageClassification(cfg).eval()
    base.save_pretrained(tmp_path / "vit")
    targets = _targets(base, ("q_proj", "v_proj"), ("query", "value"))
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                     modules_to_save=["classifier"]))
    _train(lora, {"pixel_values": torch.rand(16, 3, 32, 32)}, torch.randint(0, 4, (16,)))
    lora.save_pretrained(tmp_path / "vit-lora")
    return tmp_path / "vit", tmp_path / "vit-lora"


def _unmerged(base_cls, base, adapter, feed: dict):
    """The adapted model as trained, loaded here with peft alone: the figures the build must match."""
    import peft
    import torch

    with torch.inference_mode():
        m = peft.PeftModel.from_pretrained(base_cls.from_pretrained(base), str(adapter)).eval()
        plain = base_cls.from_pretrained(base).eval()
        args = {k: torch.from_numpy(v) for k, v in feed.items()}
        return m(**args).logits.numpy(), plain(**args).logits.numpy()


def _build(tmp_path, recipe: str):
    from edgeopt.config.recipe import load_recipe
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    (tmp_path / "recipe.toml").write_text(recipe)
    return build(load_recipe(tmp_path / "recipe.toml"), tmp_path / "out", reporter=Reporter(quiet=True))


def _check_against_unmerged(tmp_path, m, base_cls, base, adapter, inputs):
    ref = np.load(tmp_path / "out" / "reference" / "reference.npz")
    feed = {k: ref[f"input/0/{k}"] for k in inputs}
    want, plain = _unmerged(base_cls, base, adapter, feed)
    got = ref["output/0/logits"]
    np.testing.assert_allclose(got, want, atol=1e-5)  # the reference is the adapted model as trained
    assert np.abs(want - plain).max() > 1e-3  # and the adapter changed the model (the check can fail)
    assert m["export"]["parity"]["passed"]
    ad = m["model"]["adapter"]
    assert ad["type"] == "LORA" and ad["rank"] == 4 and ad["merged"] is True and ad["base"].endswith(base.name)
    assert ad["merge_error"]["max_abs"] < 1e-4 and ad["merge_error"]["min_cosine"] > 0.9999
    assert {a["target"] for a in m["artifacts"]} == {"ort-cpu", "openvino-cpu"}
    for a in m["artifacts"]:
        assert a["status"] == "ok", a
        assert a["parity"]["passed"]
    # The exported graph is the merged one: no LoRA branches left in it.
    import onnx

    g = onnx.load(str(tmp_path / "out" / "export" / "model.onnx"), load_external_data=False)
    assert not [i.name for i in g.graph.initializer if "lora" in i.name.lower()]


def test_lora_on_a_bert_classifier_builds_for_ort_and_openvino(tmp_path):
    """The README's adapter recipe, as written (a shorter profile), on a base and adapter trained here."""
    from transformers import BertForSequenceClassification

    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter
    from readme_flow import recipe

    base, adapter = bert_lora(tmp_path)
    data = recipe(0, profile={"batches": [1], "duration_s": 0.1, "min_iterations": 3, "warmup": 1})
    assert data["model"] == {"source": "hf:base", "adapter": "lora"}  # names only the base and the adapter
    m = build(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    _check_against_unmerged(tmp_path, m, BertForSequenceClassification, base, adapter,
                            ("input_ids", "attention_mask"))
    assert m["model"]["labels"] == ["negative", "neutral", "positive"]  # from the base's config.json
    assert m["model"]["adapter"]["task_type"] == "SEQ_CLS"


def test_lora_on_a_vit_builds_for_ort_and_openvino(tmp_path):
    from transformers import ViTForImageClassification

    base, adapter = vit_lora(tmp_path)
    m = _build(tmp_path, f'''targets = ["ort-cpu", "openvino-cpu"]
precisions = ["fp32"]

[model]
source = "hf:{base.name}"
adapter = "{adapter.name}"

[[inputs]]
name = "pixel_values"
shape = [1, 3, 32, 32]
range = [0.0, 1.0]

[profile]
{FAST}''')
    _check_against_unmerged(tmp_path, m, ViTForImageClassification, base, adapter, ("pixel_values",))
    assert m["model"]["labels"] is None  # transformers' LABEL_0.. are not class names
    assert m["model"]["adapter"]["modules_to_save"] == ["classifier"]


def test_bad_adapter_folder_is_a_clear_error(tmp_path, run_cli):
    from tiny import tiny_bert_folder

    folder = tiny_bert_folder(tmp_path / "bert")
    (tmp_path / "notanadapter").mkdir()
    (tmp_path / "r.toml").write_text(f'''[model]
source = "hf:{folder}"
adapter = "notanadapter"

[[inputs]]
name = "input_ids"
shape = [1, 8]
dtype = "int64"
range = [0, 100]
''')
    code, out, err = run_cli("build", tmp_path / "r.toml", "-o", tmp_path / "out", "-t", "ort-cpu", "-p", "fp32")
    assert code != 0
    assert "adapter_config.json" in err and "save_pretrained" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()
    (tmp_path / "notanadapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4,
                                                                              "target_modules": ["nope"]}))
    code, out, err = run_cli("build", tmp_path / "r.toml", "-o", tmp_path / "out", "-t", "ort-cpu", "-p", "fp32")
    assert code != 0 and "peft could not apply the adapter" in err and "Traceback" not in err


def test_a_list_of_adapters_builds_one_artifact_set_each(tmp_path, run_cli):
    import peft
    import torch
    from transformers import BertForSequenceClassification

    base, first = bert_lora(tmp_path)
    torch.manual_seed(1)  # a second adapter on the same base, trained on other data
    model = BertForSequenceClassification.from_pretrained(base)
    second = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                        target_modules=_targets(model, ("query",), ("q_proj",))))
    ids = torch.randint(0, 64, (16, 12))
    _train(second, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 3, (16,)))
    second.save_pretrained(tmp_path / "lora-b")
    (tmp_path / "r.toml").write_text(f'''[model]
source = "hf:base"
adapter = ["lora", "lora-b"]

[[inputs]]
name = "input_ids"
shape = [1, 12]
dtype = "int64"
range = [0, 64]

[[inputs]]
name = "attention_mask"
shape = [1, 12]
dtype = "int64"
range = [1, 2]

[profile]
{FAST}''')
    code, out, err = run_cli("build", tmp_path / "r.toml", "-o", tmp_path / "out", "-t", "ort-cpu", "-p", "fp32",
                             "--json")
    assert code == 0, err
    built = json.loads(out)["adapters"]
    assert sorted(built) == ["lora", "lora-b"]
    assert built["lora"]["model"]["adapter"]["rank"] == 4 and built["lora-b"]["model"]["adapter"]["rank"] == 2
    refs = [np.load(tmp_path / "out" / n / "reference" / "reference.npz")["output/0/logits"] for n in sorted(built)]
    assert np.abs(refs[0] - refs[1]).max() > 1e-3  # each set is its own adapter's model
    for n in built:
        assert json.loads((tmp_path / "out" / n / "manifest.json").read_text())["artifacts"][0]["status"] == "ok"
