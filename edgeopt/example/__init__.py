"""The built-in example recipe: digits CNN, trained in the repo (see train.py)."""

from __future__ import annotations

from edgeopt.config.recipe import Recipe, recipe_from_dict
from edgeopt.core.resources import data_dir
from edgeopt.example.model import WEIGHTS


def example_dict() -> dict:
    data = data_dir("calibration") / "digits"
    return {
        "model": {"name": "digits-cnn", "source": "edgeopt.example.model:build", "checkpoint": str(WEIGHTS),
                  "kind": "cnn", "outputs": ["logits"], "labels": [str(d) for d in range(10)]},
        # scikit-learn's digits are 8x8 grayscale with values 0..16
        "preprocess": {"channel_order": "L", "scale": 1 / 16, "layout": "NCHW", "dtype": "float32"},
        "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32", "range": [0.0, 1.0]}],
        "dims": {"batch": {"min": 1, "opt": 1, "max": 32}},
        "precisions": ["fp32", "bf16", "int8"],
        "calibration": {"source": str(data / "calibration.npz"), "size": 300},
        "evaluation": {"source": str(data / "heldout.npz"), "size": None},
        "profile": {"batches": [1, 8], "duration_s": 1.0},
    }


def example_recipe() -> Recipe:
    return recipe_from_dict(example_dict(), data_dir("calibration"), "")
