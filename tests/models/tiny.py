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


def yolo_head(classes: int = 3):
    """A tiny YOLO-like detector at 640x640: conv features, then a raw head [B, 4 + C, N] that concatenates
    boxes in input pixels (cx, cy, w, h in 0..640) with sigmoid class scores (0..1), as Ultralytics' eval
    output does. One u8 per-tensor scale over that concatenation rounds every score to 0."""
    import torch

    nn = torch.nn

    class TinyYolo(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(  # 640 -> 20 x 20 cells, stride 32
                nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 16, 4, stride=4), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 2, stride=2), nn.BatchNorm2d(32), nn.ReLU())
            self.box = nn.Conv2d(32, 4, 1)
            self.cls = nn.Conv2d(32, classes, 1)
            gy, gx = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
            self.register_buffer("grid", torch.stack([gx, gy]).reshape(1, 2, 400))

        def forward(self, images):
            f = self.features(images)
            b = self.box(f).flatten(2).sigmoid()  # [B, 4, N]
            xy = (self.grid + b[:, :2] * 2 - 0.5) * 32.0
            wh = (b[:, 2:] * 2) ** 2 * 24.0  # up to 96 px
            scores = self.cls(f).flatten(2).sigmoid()
            return torch.cat([xy, wh, scores], 1)

    torch.manual_seed(0)
    m = TinyYolo()
    images = torch.from_numpy(rect_images(8, seed=99))
    with torch.no_grad():  # batch-norm statistics from object-like images: features that vary
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = None
        m.features(images)
        m.eval()
        # class logits spread to mean -4, std 1.5: a few confident cells per image
        z = m.cls(m.features(images)).transpose(0, 1).reshape(classes, -1)
        mu, sd = z.mean(1), z.std(1)
        m.cls.weight.mul_((1.5 / sd).reshape(-1, 1, 1, 1))
        m.cls.bias.copy_((m.cls.bias - mu) * 1.5 / sd - 4)
    return m


def rect_images(n: int, size: int = 640, seed: int = 0):
    """``n`` images [n, 3, size, size] in 0..1: a dark background with 1..4 bright rectangles (objects)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.1, (n, 3, size, size)).astype(np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 5)):
            h, w = rng.integers(size // 10, size // 3, 2)
            y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
            x[i, :, y0:y0 + h, x0:x0 + w] = rng.uniform(0.3, 1.0, (3, 1, 1))
    return x


def frcnn():
    """Faster R-CNN MobileNetV3-Large-320-FPN with random weights (batch-norm statistics calibrated on
    object-like images, as ssdlite), 5 classes, at 320x320, the detections scoring 0.6 or more (no cut at a
    count, where near-tied scores of a random model pick different boxes in PyTorch and ONNX Runtime)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5, box_score_thresh=0.6, box_detections_per_img=100,
        min_size=320, max_size=320)
    with torch.no_grad():
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
        m.backbone(torch.from_numpy(rect_images(4, 320, seed=98)))
        m.eval()
        # Random heads give logits and box deltas in the hundreds: saturated scores and boxes clipped to the
        # border, all ties. Scale each prediction layer to a moderate spread (std: scores 1.5, deltas 0.3).
        layers = {m.roi_heads.box_predictor.cls_score: 1.5, m.roi_heads.box_predictor.bbox_pred: 0.3,
                  m.rpn.head.cls_logits: 1.5, m.rpn.head.bbox_pred: 0.3}
        seen = {}
        hooks = [layer.register_forward_hook(lambda mod, i, o: seen.setdefault(mod, o.std().item()) and None)
                 for layer in layers]
        m(list(torch.from_numpy(rect_images(2, 320, seed=97))))
        for h in hooks:
            h.remove()
        for layer, want in layers.items():
            layer.weight.mul_(want / seen[layer])
            layer.bias.mul_(want / seen[layer])
    return m


def ssdlite160():
    """:func:`ssdlite` with images resized to 160x160 inside the model (a quarter of the work)."""
    m = ssdlite()
    m.transform.min_size, m.transform.max_size, m.transform.fixed_size = (160,), 160, (160, 160)
    return m


def outlier_channel():
    """A CNN whose first convolution has one output channel 1000x larger than the others, which the second
    mostly ignores: one scale per activation tensor rounds the other channels to nothing, so post-training
    INT8 loses the output, and keeping the second convolution (the one reading that tensor) in float restores it."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        for layer in (m[2], m[4], m[7]):
            layer.bias.zero_()
        m[0].bias.zero_()
        m[0].bias[0] = 1000.0  # channel 0: about 1000 everywhere
        m[2].weight[:, 0] = 0.0  # and nothing downstream reads it
    return m.eval()


TINY_DET_SIZE = 64


def _tiny_backbone(fpn: bool):
    """Two feature maps (stride 4 and 8, 32 channels) as torchvision's detectors take them (``fpn``: declaring
    ``out_channels``, as RetinaNet, FCOS and Faster R-CNN want; SSD measures them)."""
    from collections import OrderedDict

    import torch

    nn = torch.nn

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
            if fpn:
                self.out_channels = 32

        def forward(self, x):
            a = self.a(x)
            return OrderedDict([("0", a), ("1", self.b(a))])

    return Backbone()


def tiny_ssd():
    """torchvision's SSD with a two-level 32-channel backbone, 4 classes (0: background), 64x64, random weights."""
    import torch
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    torch.manual_seed(0)
    anchors = DefaultBoxGenerator([[2], [2]], min_ratio=0.2, max_ratio=0.9)
    m = SSD(_tiny_backbone(False), anchors, (TINY_DET_SIZE, TINY_DET_SIZE), num_classes=4, score_thresh=0.2,
            nms_thresh=0.5, detections_per_img=20, topk_candidates=100)
    return m.eval()


def _anchors(levels: int, per_level: int):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    ratios = (0.5, 1.0, 2.0)[:per_level]
    return AnchorGenerator(tuple((16 * 2 ** i,) for i in range(levels)), (ratios,) * levels)


def _spread_scores(head) -> None:
    """Class logits spread around 0: torchvision starts them at a 1% prior from std-0.01 convolutions, so every
    random-weight box would score about the same, and none above a threshold."""
    import torch

    with torch.no_grad():
        for mod in head.modules():
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight)
                mod.bias.zero_()
        head.cls_logits.weight.mul_(3.0)


def _one_stage(cls, anchors_per_place: int):
    """torchvision's one-stage ``cls`` (RetinaNet, FCOS) on the tiny backbone, 3 classes, images kept at 64x64,
    random weights with spread-out scores and box regressions biased so random boxes keep some area (FCOS's
    distances to the box sides ReLU to 0 otherwise)."""
    import torch

    torch.manual_seed(0)
    m = cls(_tiny_backbone(True), num_classes=3, anchor_generator=_anchors(2, anchors_per_place),
            min_size=TINY_DET_SIZE, max_size=TINY_DET_SIZE, score_thresh=0.2, nms_thresh=0.5, detections_per_img=20)
    _spread_scores(m.head.classification_head)
    with torch.no_grad():
        m.head.regression_head.bbox_reg.bias.fill_(0.5)
    return m.eval()


def tiny_retinanet():
    from torchvision.models.detection import RetinaNet

    return _one_stage(RetinaNet, 3)


def tiny_fcos():
    from torchvision.models.detection import FCOS

    return _one_stage(FCOS, 1)


def tiny_frcnn():
    """torchvision's Faster R-CNN on the tiny backbone's first level, 3 classes, 64x64, random weights."""
    import torch
    from torchvision.models.detection import FasterRCNN
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    m = FasterRCNN(_tiny_backbone(True), num_classes=3, rpn_anchor_generator=_anchors(2, 3),
                   box_roi_pool=MultiScaleRoIAlign(["0", "1"], 7, 2), min_size=TINY_DET_SIZE,
                   max_size=TINY_DET_SIZE)
    return m.eval()


def digits_outlier(outlier: float = 700.0):
    """The built-in digits CNN (trained weights) with an extra first-layer channel that is ``outlier`` everywhere
    and that the model drops before its second convolution: FP32 is the example's own, while one scale for the
    whole activation tensor (the quantizer sits before the slice) rounds the real channels coarsely, so
    post-training INT8 loses top-1. Nothing trainable reads that channel, so training under quantization (QAT)
    adapts the weights to the grid without learning from it."""
    import torch

    from edgeopt.example.model import WEIGHTS, build

    nn = torch.nn

    class DropFirstChannel(nn.Module):
        def forward(self, x):  # a Split: every quantizer (NNCF's torch, ONNX, OpenVINO) looks through it
            return torch.split(x, [1, 48], dim=1)[1]

    m = build()
    m.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    conv1, bn1 = nn.Conv2d(1, 49, 3, padding=1), nn.BatchNorm2d(49)
    with torch.no_grad():
        conv1.weight.zero_()
        conv1.bias.zero_()
        conv1.weight[1:] = m[0].weight
        conv1.bias[1:] = m[0].bias
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn1, name)[1:] = getattr(m[1], name)
        bn1.bias[0] = outlier
    return nn.Sequential(conv1, bn1, nn.ReLU(), DropFirstChannel(), *list(m)[3:]).eval()

