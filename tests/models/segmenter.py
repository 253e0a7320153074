"""torchvision's LRASPP MobileNetV3-Large segmentation architecture with random weights (no PyPI package ships
trained LRASPP/DeepLab weights; torchvision's own are a download), batch-norm statistics estimated on object-like
images so its per-pixel classes vary across the image instead of collapsing to one class."""

SIZE = 64
CLASSES = 3


def lraspp():
    import torch
    import torchvision

    from tiny import rect_images

    torch.manual_seed(0)
    m = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                  num_classes=CLASSES)
    images = torch.from_numpy(rect_images(8, SIZE, seed=7))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None  # a cumulative average over the one batch below
        m.train()
        m(images)
    return m.eval()
