"""Benchmark models: torchvision architectures with random weights (nothing is downloaded).

Batch-norm statistics are re-estimated on random images so activations keep a realistic spread (with
freshly initialised statistics deep networks collapse to near-constant outputs, which would make INT8 look
better or worse than it is)."""

from __future__ import annotations

import numpy as np


def _calibrated(model, size=224):
    import torch

    with torch.no_grad():
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        for _ in range(2):
            model(torch.rand(8, 3, size, size))
    return model.eval()


def resnet18():
    import torch
    import torchvision

    torch.manual_seed(0)  # the same weights every run
    return _calibrated(torchvision.models.resnet18(weights=None))


def resnet50():
    import torch
    import torchvision

    torch.manual_seed(0)  # the same weights every run
    return _calibrated(torchvision.models.resnet50(weights=None))


def mobilenet_v3_large():
    import torch
    import torchvision

    torch.manual_seed(0)  # the same weights every run
    return _calibrated(torchvision.models.mobilenet_v3_large(weights=None))


def vit_b_16():
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vit_b_16(weights=None).eval()


def images(n: int = 64, size: int = 224):
    """Calibration images: uniform noise in [0, 1), the distribution the random-weight models were fitted on."""
    rng = np.random.default_rng(1)
    for i in range(0, n, 16):
        yield {"image": rng.uniform(size=(16, 3, size, size)).astype(np.float32)}
