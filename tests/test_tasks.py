"""Every artifact is judged by its task's metric on real samples: classification, embedding, generic."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.core.tasks import Outputs, TaskConfig, evaluate, judge, pooled
from edgeopt.errors import DataError, UserInputError


def _padded_batch(rng, n=6, seq=10, hidden=8):
    lengths = rng.integers(2, seq, size=n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, 100, size=(n, seq)) * mask
    h = rng.normal(size=(n, seq, hidden)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask}, h


def test_embedding_mean_pooling_ignores_padded_positions():
    rng = np.random.default_rng(0)
    feed, h = _padded_batch(rng)
    pad = (feed["attention_mask"] == 0)[..., None]
    wrecked_padding = np.where(pad, 1e3, h).astype(np.float32)  # only padded positions differ
    ref = Outputs([feed], [{"last_hidden_state": h}])
    got = Outputs([feed], [{"last_hidden_state": wrecked_padding}])
    r = evaluate(TaskConfig(type="embedding"), got, ref)
    assert r["metric"] == "embedding_cosine" and r["value"] == pytest.approx(1.0) and r["cosine_min"] > 0.999999
    assert r["nn_agreement"] == 1.0 and r["samples"] == 6
    # the same outputs judged without the mask (one cosine over everything) would call them different
    flat = evaluate(TaskConfig(type="generic"), got, ref)
    assert flat["value"] < 0.5
    # and with the mask named, generic judging excludes the padding too
    assert evaluate(TaskConfig(type="generic", mask_input="attention_mask"), got, ref)["value"] == pytest.approx(1.0)


def test_embedding_judged_per_sample_not_on_average_only():
    rng = np.random.default_rng(1)
    feed, h = _padded_batch(rng, n=8)
    got_h = h.copy()
    got_h[3] = -h[3]  # one sentence's embedding destroyed
    r = evaluate(TaskConfig(type="embedding"), Outputs([feed], [{"h": got_h}]), Outputs([feed], [{"h": h}]))
    assert r["cosine_min"] < 0.5 < r["value"] < 1.0
    assert judge(r, None, 1.0, 0.99)["within_budget"] is False
    assert "emb cos" in r["why"]


def test_embedding_pooling_choices():
    rng = np.random.default_rng(2)
    feed, h = _padded_batch(rng, n=3)
    out = Outputs([feed], [{"h": h, "pooled": h[:, 0] * 2}])
    cls = pooled(TaskConfig(type="embedding", pooling="cls"), out)
    assert np.allclose(cls, h[:, 0] / np.linalg.norm(h[:, 0], axis=1, keepdims=True))
    named = pooled(TaskConfig(type="embedding", output="pooled", pooling="none"), out)
    assert np.allclose(named, cls)
    with pytest.raises(DataError, match="mask_input 'nope'"):
        pooled(TaskConfig(type="embedding", mask_input="nope"), out)


def test_classification_with_labels_and_without():
    logits = np.array([[3, 1, 0, 0, 0, 0], [0, 3, 1, 0, 0, 0], [0, 0, 0, 3, 1, 0], [1, 0, 0, 0, 0, 3]], np.float32)
    feed = {"x": np.zeros((4, 2), np.float32)}
    labels = np.array([0, 1, 2, 5])
    r = evaluate(TaskConfig(type="classification"), Outputs([feed], [{"logits": logits}], labels), None)
    assert r["metric"] == "top1" and r["value"] == 0.75 and r["top5"] == 1.0
    swapped = logits.copy()
    swapped[0] = [1, 3, 0, 0, 0, 0]
    a = evaluate(TaskConfig(type="classification"), Outputs([feed], [{"logits": swapped}]),
                 Outputs([feed], [{"logits": logits}]))
    # without labels: the expected top-1 under FP32's probabilities; agreement and flips beside it
    assert a["metric"] == "expected_top1" and a["top1_agreement"] == 0.75 and a["top5_overlap"] == 1.0
    assert a["flips"] == 1 and a["flips_confident"] == 1  # FP32 gave the class it moved away from 0.75
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    judged = judge(a, None, 1.0, 0.99)  # no FP32 record: the metric's own FP32 figure
    assert judged["drop_points"] == pytest.approx((p[0] - p[1]) / 4 * 100) and not judged["within_budget"]
    ok = judge(dict(r), {"metric": "top1", "value": 0.76}, 1.0, 0.99)
    assert ok["drop_points"] == pytest.approx(1.0) and ok["within_budget"]


def test_generic_judges_each_output_on_its_own():
    rng = np.random.default_rng(3)
    feed = {"x": rng.normal(size=(5, 4)).astype(np.float32)}
    big = rng.normal(size=(5, 100)).astype(np.float32) * 100
    small = rng.uniform(size=(5, 3)).astype(np.float32)
    ref = Outputs([feed], [{"boxes": big, "scores": small}])
    got = Outputs([feed], [{"boxes": big, "scores": np.zeros_like(small)}])
    r = evaluate(TaskConfig(type="generic"), got, ref)
    # one cosine over both outputs concatenated would be ~1.0 (the big one dominates); per output it is 0
    both = np.concatenate([big.ravel(), small.ravel()]), np.concatenate([big.ravel(), np.zeros(small.size)])
    assert np.dot(*both) / np.linalg.norm(both[0]) / np.linalg.norm(both[1]) > 0.9999
    assert r["worst"] == "scores" and r["value"] == 0.0 and r["outputs"]["boxes"]["mean"] == pytest.approx(1.0)


def test_auto_task_from_kind_and_outputs():
    t = TaskConfig()
    assert t.resolve("cnn", {"logits": (2, 10)}, False).type == "classification"
    assert t.resolve("transformer", {"last_hidden_state": (2, 16, 32)}, False).type == "embedding"
    assert t.resolve("transformer", {"logits": (2, 5)}, False).type == "classification"
    assert t.resolve("detector", {"boxes": (10, 4)}, False).type == "detection"
    assert t.resolve("generic", {"y": (2, 3, 4)}, False).type == "generic"
    assert TaskConfig(type="embedding").resolve("cnn", {"y": (2, 3)}, True).type == "embedding"


@pytest.mark.parametrize("data, match", [
    ({"type": "regression"}, "type 'regression' is unknown"),
    ({"pooling": "max"}, "pooling 'max' is unknown"),
    ({"typo": 1}, "unknown keys"),
    ({"score_threshold": 2}, "score_threshold"),
    ({"output": 5}, "output must be a non-empty string"),
])
def test_bad_task_sections_are_clear_errors(data, match):
    with pytest.raises(UserInputError, match=match):
        TaskConfig.from_dict(data)


def _bert_data(path, n, seq, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq, size=n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    ids = (rng.integers(1, 128, size=(n, seq)) * mask).astype(np.int64)
    np.savez(path, input_ids=ids, attention_mask=mask)
    return ids, mask


def test_encoder_int8_is_judged_on_pooled_embeddings_of_the_evaluation_set(tmp_path):
    """A tiny BERT with padded sentences: the INT8 guard and the artifact's figure are the mean-pooled embedding
    cosine over the evaluation set (padding excluded), not the flattened hidden states of the parity samples."""
    from tiny import tiny_bert_folder

    from edgeopt.backends.artifact import open_artifact
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.core.tasks import pooled
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    folder = tiny_bert_folder(tmp_path / "bert")
    _bert_data(tmp_path / "calib.npz", 48, 16, 0)
    ids, mask = _bert_data(tmp_path / "eval.npz", 24, 16, 1)
    m = build(recipe_from_dict({
        "model": {"source": f"hf:{folder}", "kind": "transformer"},
        "inputs": [{"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, 128]},
                   {"name": "attention_mask", "shape": ["batch", "seq"], "dtype": "int64", "range": [1, 2]}],
        "dims": {"batch": {"min": 1, "opt": 1, "max": 4}, "seq": {"min": 1, "opt": 16, "max": 32}},
        "targets": ["ort-cpu", "openvino-cpu"], "precisions": ["fp32", "int8"],
        "profile": {"batches": [1], "duration_s": 0.05, "min_iterations": 3, "warmup": 1},
        "calibration": {"source": str(tmp_path / "calib.npz")},
        "evaluation": {"source": str(tmp_path / "eval.npz")},
        "compression": {"min_cosine": 0.9},
    }, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    task = m["task"]
    assert task["config"]["type"] == "embedding" and task["source"] == "evaluation" and task["samples"] == 24
    assert m["fp32_metric"]["metric"] == "embedding_cosine" and m["fp32_metric"]["value"] == pytest.approx(1.0)
    ref = {"input_ids": ids, "attention_mask": mask}
    fp32 = {}
    for a in m["artifacts"]:
        acc = a["accuracy"]
        assert acc["metric"] == "embedding_cosine" and acc["samples"] == 24, a["id"]
        assert a["status"] == ("ok" if acc["value"] >= 0.9 else "failed"), a
        runner, _ = open_artifact(tmp_path / "out" / a["id"])
        with runner:
            outs = [runner.infer({k: v[i:i + 4] for k, v in ref.items()}) for i in range(0, 24, 4)]
        e = pooled(TaskConfig(type="embedding"), Outputs([{k: v[i:i + 4] for k, v in ref.items()}
                                                         for i in range(0, 24, 4)], outs))
        if a["precision"] == "fp32":
            fp32[a["target"]] = e
            continue
        # the recorded figure is what the artifact really does on the evaluation sentences, padding excluded
        want = np.sum(e * fp32[a["target"]], axis=1)
        assert acc["value"] == pytest.approx(float(want.mean()), abs=2e-3)
        assert acc["cosine_min"] == pytest.approx(float(want.min()), abs=2e-3)
        for cand in a["meta"]["int8"]["candidates"]:
            if "accuracy" in cand:
                assert cand["accuracy"]["metric"] == "embedding_cosine" and cand["accuracy"]["samples"] == 24


def test_without_evaluation_data_artifacts_are_judged_on_held_out_calibration_samples(tmp_path):
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.core.resources import data_dir
    from edgeopt.example import example_dict
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    d = example_dict()
    d.pop("evaluation")
    d["profile"] = {"batches": [1], "duration_s": 0.05, "min_iterations": 3, "warmup": 1}
    m = build(recipe_from_dict(d, data_dir("calibration")), tmp_path / "o", targets=("ort-cpu",),
              precisions=("int8",), reporter=Reporter(quiet=True))
    assert m["task"]["source"] == "held out of calibration"
    held = m["task"]["samples"]
    assert held == 60 and m["calibration"]["used"] == 240  # 300 requested: the last fifth is never calibrated on
    assert "held out" not in m["calibration"]["source"]
    (a,) = m["artifacts"]
    assert a["accuracy"]["samples"] == held and a["accuracy"]["metric"] in ("top1", "expected_top1")


def test_a_text_bundle_goes_from_a_sentence_to_an_embedding_without_torch(tmp_path):
    """The build ships the model's tokenizer.json; the torch-free runtime tokenizes, runs and pools."""
    import subprocess
    import sys

    tokenizers = pytest.importorskip("tokenizers")
    from tiny import tiny_bert_folder

    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter
    from edgeopt.ship.bundle import bundle

    folder = tiny_bert_folder(tmp_path / "bert")
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate("the cat sat on a mat dog ran".split())}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    _bert_data(tmp_path / "eval.npz", 8, 12, 2)
    m = build(recipe_from_dict({
        "model": {"source": f"hf:{folder}", "kind": "transformer"},
        "inputs": [{"name": "input_ids", "shape": ["batch", 12], "dtype": "int64", "range": [0, 10]},
                   {"name": "attention_mask", "shape": ["batch", 12], "dtype": "int64", "range": [1, 2]}],
        "dims": {"batch": {"min": 1, "opt": 1, "max": 4}},
        "targets": ["ort-cpu"], "precisions": ["fp32"],
        "profile": {"batches": [1], "duration_s": 0.05, "min_iterations": 3, "warmup": 1},
        "evaluation": {"source": str(tmp_path / "eval.npz")},
    }, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    assert m["model"]["tokenizer"]["max_length"] == 12 and (tmp_path / "out" / "reference" / "tokenizer.json").is_file()
    path = bundle(tmp_path / "out", tmp_path / "text")
    code = f"""
import sys, json
import edgeopt
from edgeopt.errors import EdgeoptError
m = edgeopt.load({str(path)!r}, cache_dir={str(tmp_path / "cache")!r})
feed = m.preprocess("the cat sat on the mat")
e = m.embed(["the cat sat", "a dog ran", "the cat sat"])
fed = m.embed(m.preprocess(["the cat sat", "a dog ran"]))  # the feed preprocess made: the same embeddings
try:
    m.tokenize(feed)  # a dict iterates as its keys: it must not be tokenized as the sentences "input_ids", ...
    refused = ""
except EdgeoptError as exc:
    refused = str(exc)
print(json.dumps({{"ids": feed["input_ids"].tolist(), "mask": feed["attention_mask"].tolist(),
                  "shape": list(e.shape), "norms": [float((r * r).sum()) for r in e],
                  "same": float((e[0] * e[2]).sum()), "fed": float(abs(fed - e[:2]).max()), "refused": refused,
                  "torch": "torch" in sys.modules}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    import json

    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["ids"] == [[2, 3, 4, 5, 2, 7, 0, 0, 0, 0, 0, 0]] and got["mask"] == [[1] * 6 + [0] * 6]
    assert got["shape"] == [3, 32] and all(abs(n - 1) < 1e-5 for n in got["norms"])
    assert got["same"] == pytest.approx(1.0, abs=1e-5) and got["torch"] is False
    assert got["fed"] < 1e-6 and "a sentence or a list of sentences" in got["refused"]


def test_a_value_below_its_bound_never_prints_as_the_bound():
    """A reason reads "cos 1.0000 < 0.9999999" when 0.99996 is rounded to 4 places: the value must print below."""
    from edgeopt.core.tasks import below

    assert below(0.9, 0.99) == "0.9000"
    assert below(0.99996, 0.9999999) == "0.99996"
    assert float(below(0.98999, 0.99)) < 0.99
