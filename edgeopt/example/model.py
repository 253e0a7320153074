"""The built-in example: a small CNN for scikit-learn's 8x8 handwritten digits (10 classes)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).with_name("digits_cnn.pt")


def build():
    """Factory: the architecture with random weights (edgeopt applies the checkpoint)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.Conv2d(48, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
        nn.Conv2d(96, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(96, 192, 3, padding=1), nn.BatchNorm2d(192), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(192, 10),
    )
