"""Task metrics. Numpy only."""

from __future__ import annotations

import numpy as np

from .errors import DataError


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
