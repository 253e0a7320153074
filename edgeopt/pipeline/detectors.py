"""torchvision detectors without their NMS: the part of the model that TensorRT's ``EfficientNMS_TRT`` plugin (or
NMS on the host) finishes.

torchvision's SSD, SSDlite and RetinaNet end in a post-processing step (per-class score threshold, top-k, batched
NMS) whose ONNX export (``NonMaxSuppression``, ``TopK`` with a run-time K) has data-dependent shapes that
edgeopt's TensorRT runner refuses. :func:`pre_nms` wraps such a model into a module that stops before it:
``image [B, 3, H, W]`` (values in [0, 1], already at the size the model runs at) to ``boxes [B, N, 4]`` (x1, y1,
x2, y2 in input pixels: torchvision's ``BoxCoder`` decode of the head's regression against the model's anchors,
in float, clipped to the image) and ``scores [B, N, C]`` (softmax, class 0 the background, for SSD; sigmoid for
RetinaNet; for FCOS the square root of sigmoid(class) x sigmoid(centre-ness), as its own post-processing scores).
Use it as the recipe's model factory with ``[task] format = "torchvision"``, ``background_class = 0`` (SSD) and
``[options.tensorrt] nms = "plugin"`` (or "outside").

A torchvision detector given as the recipe's model needs none of this by hand: :func:`prepare` recognises it
(SSD, SSDlite, RetinaNet, FCOS; Faster/Mask/Keypoint R-CNN) and exports it in the form the build's targets need
(:func:`edgeopt.pipeline.plan.detector_nms` asks each target's backend): the whole model, NMS in the graph, called
with a list of images; or, when a target wants NMS outside the graph, :func:`pre_nms` of it. The ``[task]`` keys
come from the model (format, background class, its own score/IoU thresholds and detections per image). The
R-CNNs select their region proposals with NMS inside the model, so they cannot end before "the" NMS: a target
that wants NMS outside the graph is refused for them, with what to do.

torch and torchvision are imported inside functions.
"""

from __future__ import annotations

from edgeopt.errors import UserInputError, require


def pre_nms(model, image_size: tuple[int, int]):
    """``model`` (a torchvision SSD/SSDlite, RetinaNet or FCOS in eval mode) without its post-processing, for images
    of ``image_size`` (height, width): the anchors for that size are computed once and kept as a constant."""
    torch = require("torch", "torch", "wrap a torchvision detector")
    from torchvision.models.detection.image_list import ImageList

    kind = torchvision_detector(model) or type(model).__name__
    if kind not in PRE_NMS:
        raise UserInputError(f"pre_nms takes torchvision's SSD, SSDlite, RetinaNet or FCOS, not {kind}.",
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
            self.kind = kind
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
            coder = self.model.box_coder
            decode = coder.decode_single if hasattr(coder, "decode_single") else coder.decode
            boxes = decode(reg.reshape(-1, 4), anchors).reshape(b, n, 4)
            boxes = torch.minimum(torch.clamp(boxes, min=0.0), self.limit)
            if self.kind == "SSD":
                scores = torch.softmax(logits, dim=-1)
            elif self.kind == "FCOS":
                scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(out["bbox_ctrness"]))
            else:
                scores = torch.sigmoid(logits)
            return boxes, scores

    return PreNMS()


PRE_NMS = ("SSD", "RetinaNet", "FCOS")  # one-stage: the head's boxes and per-class scores are NMS's whole input
TWO_STAGE = ("FasterRCNN", "MaskRCNN", "KeypointRCNN")  # region proposals chosen by NMS inside the model
PRE_NMS_OUTPUTS = ("boxes", "scores")


def torchvision_detector(model) -> str | None:
    """The torchvision detection class ``model`` is (or derives from): SSD (SSDlite too), RetinaNet, FCOS,
    FasterRCNN, MaskRCNN or KeypointRCNN; None for anything else."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("torchvision.models.detection.") and cls.__name__ in (*PRE_NMS, *TWO_STAGE):
            return cls.__name__
    return None


def _own_thresholds(model, kind: str) -> dict:
    """The model's own post-processing settings as ``[task]`` keys (the host's NMS then does what it did)."""
    src = model.roi_heads if kind in TWO_STAGE else model
    found = {"score_threshold": getattr(src, "score_thresh", None), "iou_threshold": getattr(src, "nms_thresh", None),
             "max_detections": getattr(src, "detections_per_img", None)}
    out = {}
    for k, v in found.items():
        if k == "max_detections" and isinstance(v, int) and 1 <= v <= 10000:
            out[k] = int(v)
        elif k != "max_detections" and isinstance(v, (int, float)) and 0 <= v <= 1:
            out[k] = float(v)
    return out


def image_size(spec) -> tuple[int, int]:
    """(height, width) of the one image input a torchvision detector takes (its size at ``opt``)."""
    images = [t for t in spec.inputs if len(t.shape) == 4]
    if len(spec.inputs) != 1 or not images:
        raise UserInputError(f"A torchvision detector takes one image input [batch, 3, height, width]; the recipe "
                             f"declares {[t.name for t in spec.inputs]}.",
                             'Declare one input: [[inputs]] name = "images" shape = [1, 3, 320, 320].')
    h, w = spec.shape_of(images[0], which="opt")[2:]
    return int(h), int(w)


def prepare(model, spec, nms: dict) -> tuple:
    """(the module to export, how to call it, what was decided) for a torchvision detector ``model`` (see
    :func:`torchvision_detector`), given where this build's NMS runs (``nms``: :func:`edgeopt.pipeline.plan.
    detector_nms`). What was decided: ``{"family", "nms", "why", "targets", "task"}`` (and ``"outputs"``
    without NMS), ``task`` being the ``[task]`` keys the model tells."""
    kind = torchvision_detector(model)
    where = nms.get("where", "graph")
    task = {"type": "detection", "format": "torchvision", **_own_thresholds(model, kind)}
    facts = {"family": kind, "nms": where, "why": nms.get("why", ""), "targets": list(nms.get("targets", ()))}
    if where == "graph":
        return model, "list", {**facts, "task": task}
    if kind in TWO_STAGE:
        raise UserInputError(
            f"torchvision's {kind} cannot be exported without its NMS, and the targets "
            f"{', '.join(facts['targets'])} want NMS outside the graph ({facts['why']}): it picks its region "
            "proposals with NMS inside the model, so no graph ends before a single final NMS.",
            f"Build it only for targets that run NMS in the graph (leave out {', '.join(facts['targets'])}), or use "
            "a one-stage detector (SSD, SSDlite, RetinaNet, FCOS) for those targets.")
    size = image_size(spec)
    task["background_class"] = 0 if kind == "SSD" else -1  # SSD's softmax has a "no object" class 0
    return pre_nms(model, size), "positional", {**facts, "outputs": list(PRE_NMS_OUTPUTS), "task": task,
                                                "image_size": list(size)}
