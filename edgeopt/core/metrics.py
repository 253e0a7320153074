"""Task metrics. Numpy only."""

from __future__ import annotations

import numpy as np

from edgeopt.errors import DataError


def eval_batch_size(spec) -> int:
    """Evaluation batch: 32, within the model's batch range."""
    lo, hi = spec.batch_range()
    return max(lo, min(hi, 32))


def first_outputs(infer, dataset, spec) -> tuple[np.ndarray, np.ndarray | None]:
    """The first output of ``infer`` over every sample of ``dataset`` (batched), and its labels."""
    outs, labels = [], []
    for feed, lab in dataset.batches(eval_batch_size(spec)):
        outs.append(next(iter(infer(feed).values())))
        labels.append(lab)
    return np.concatenate(outs), (np.concatenate(labels) if dataset.labels is not None else None)


def classification_accuracy(logits: np.ndarray, labels: np.ndarray) -> dict:
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise DataError(f"Cannot score a classifier: outputs of shape {logits.shape} for {labels.shape[0]} labels.",
                        "Give one integer label per sample, and evaluate a model whose first output is [batch, classes].")
    order = np.argsort(-logits, axis=1)
    top1 = float(np.mean(order[:, 0] == labels))
    out = {"metric": "top1", "value": top1, "top1": top1, "samples": int(labels.shape[0])}
    if logits.shape[1] >= 5:
        out["top5"] = float(np.mean(np.any(order[:, :5] == labels[:, None], axis=1)))
    return out


def agreement(outputs: np.ndarray, reference: np.ndarray) -> dict:
    """Without labels: how far an artifact's outputs agree with the FP32 reference model's."""
    from edgeopt.core.parity import compare_arrays

    outputs, reference = np.asarray(outputs), np.asarray(reference)
    c = compare_arrays(reference, outputs)
    out = {"metric": "agreement", "value": c["cosine"], "cosine": c["cosine"], "max_abs": c["max_abs"],
           "samples": int(reference.shape[0]) if reference.ndim else 1}
    if reference.ndim == 2 and reference.shape == outputs.shape:
        out["top1_agreement"] = float(np.mean(np.argmax(outputs, 1) == np.argmax(reference, 1)))
        out["value"] = out["top1_agreement"]
        out["metric"] = "top1_agreement"
    return out
