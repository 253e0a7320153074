"""Small models for the tests (random weights; nothing is downloaded)."""

from __future__ import annotations


def mlp():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def other_mlp():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def not_a_module():
    return {"weights": [1, 2, 3]}


def two_inputs():
    import torch

    class Add(torch.nn.Module):
        def forward(self, a, b):
            return {"sum": a + b, "diff": a - b}

    return Add()


def unsupported_op():
    """A model whose forward uses an operator neither ONNX exporter handles."""
    import torch

    class Eig(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eig(x)[0].real

    return Eig()


def tiny_bert_folder(path):
    """A 2-layer BERT with random weights, saved as a local transformers folder."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).eval().save_pretrained(path)
    return path


def ssdlite():
    """SSDlite with random weights whose batch-norm statistics are calibrated on random images, so the
    detector gives spread-out scores and boxes (with plain random init every feature vanishes)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5, score_thresh=0.3, detections_per_img=10)
    with torch.no_grad():
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
        for _ in range(2):
            m.head(list(m.backbone(torch.rand(4, 3, 320, 320)).values()))
    return m.eval()


def hardswish_se():
    """A small MobileNetV3-style network: hard-swish activations and a squeeze-excitation block (whose
    ReduceMean and x * hard-sigmoid(x) ONNX Runtime leaves in float unless the graph is rewritten)."""
    import torch
    from torchvision.ops import SqueezeExcitation

    torch.manual_seed(0)
    nn = torch.nn
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 48, 1), nn.BatchNorm2d(48), nn.Hardswish(),
        nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.BatchNorm2d(48), nn.Hardswish(),
        SqueezeExcitation(48, 16, scale_activation=nn.Hardsigmoid),
        nn.Conv2d(48, 24, 1), nn.BatchNorm2d(24),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5))
    with torch.no_grad():  # batch-norm statistics from random images: spread-out activations
        m.train()
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = None
        m(torch.rand(16, 3, 32, 32))
    return m.eval()
