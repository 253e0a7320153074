"""Small metric helpers (the task metrics are in :mod:`edgeopt.core.tasks`). Numpy only."""

from __future__ import annotations

import numpy as np



def eval_batch_size(spec) -> int:
    """Evaluation batch: 32, within the model's batch range."""
    lo, hi = spec.batch_range()
    return max(lo, min(hi, 32))


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
