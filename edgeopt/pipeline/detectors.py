"""torchvision detectors without their NMS: the part of the model that TensorRT's ``EfficientNMS_TRT`` plugin (or
NMS on the host) finishes.

torchvision's SSD, SSDlite and RetinaNet end in a post-processing step (per-class score threshold, top-k, batched
NMS) whose ONNX export (``NonMaxSuppression``, ``TopK`` with a run-time K) has data-dependent shapes that
edgeopt's TensorRT runner refuses. :func:`pre_nms` wraps such a model into a module that stops before it:
``image [B, 3, H, W]`` (values in [0, 1], already at the size the model runs at) to ``boxes [B, N, 4]`` (x1, y1,
x2, y2 in input pixels: torchvision's ``BoxCoder`` decode of the head's regression against the model's anchors,
in float, clipped to the image) and ``scores [B, N, C]`` (softmax, class 0 the background, for SSD; sigmoid for
RetinaNet). Use it as the recipe's model factory with ``[task] format = "torchvision"``, ``background_class = 0``
(SSD) and ``[options.tensorrt] nms = "plugin"`` (or "outside").

torch and torchvision are imported inside functions.
"""

from __future__ import annotations

from edgeopt.errors import UserInputError, require


def pre_nms(model, image_size: tuple[int, int]):
    """``model`` (a torchvision SSD/SSDlite or RetinaNet in eval mode) without its post-processing, for images of
    ``image_size`` (height, width): the anchors for that size are computed once and kept as a constant."""
    torch = require("torch", "torch", "wrap a torchvision detector")
    from torchvision.models.detection.image_list import ImageList

    kind = type(model).__name__
    if kind not in ("SSD", "RetinaNet"):
        raise UserInputError(f"pre_nms takes torchvision's SSD, SSDlite or RetinaNet, not {kind}.",
                             "Export other detectors without NMS yourself: outputs boxes [B, N, 4] and per-class "
                             "scores [B, N, C].")
    h, w = (int(v) for v in image_size)

    class PreNMS(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.eval()
            t = model.transform
            self.register_buffer("mean", torch.tensor(t.image_mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(t.image_std, dtype=torch.float32).view(1, -1, 1, 1))
            self.size = (h, w)
            self.softmax = kind == "SSD"
            with torch.no_grad():
                x = torch.zeros(1, 3, h, w)
                feats = self._features(x)
                anchors = model.anchor_generator(ImageList(x, [(h, w)]), feats)[0]
            self.register_buffer("anchors", anchors.to(torch.float32))
            self.register_buffer("limit", torch.tensor([w, h, w, h], dtype=torch.float32))

        def _features(self, x):
            f = self.model.backbone((x - self.mean) / self.std)
            return list(f.values()) if isinstance(f, dict) else [f]

        def forward(self, image):
            out = self.model.head(self._features(image))
            reg, logits = out["bbox_regression"], out["cls_logits"]
            b, n = reg.shape[0], reg.shape[1]
            anchors = self.anchors.unsqueeze(0).expand(b, n, 4).reshape(-1, 4)
            boxes = self.model.box_coder.decode_single(reg.reshape(-1, 4), anchors).reshape(b, n, 4)
            boxes = torch.minimum(torch.clamp(boxes, min=0.0), self.limit)
            scores = torch.softmax(logits, dim=-1) if self.softmax else torch.sigmoid(logits)
            return boxes, scores

    return PreNMS()
