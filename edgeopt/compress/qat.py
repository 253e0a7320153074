"""Quantization-aware training (QAT): the INT8 stage's recovery step after mixed precision ([qat] in the recipe).

NNCF quantizes the PyTorch model (fake quantizers initialised from the calibration samples, the preset of the
model kind), the quantized model is trained with the task loss on the user's labelled training data (the one
training loop, :func:`edgeopt.compress.prune.finetune`, batch-norm statistics frozen), stopped between batches at
[qat] time_s, and stripped to PyTorch's own fake quantizers, which export as an ONNX QuantizeLinear /
DequantizeLinear graph. Every backend's quantizer adopts that Q/DQ ONNX (its optional ``from_qdq``); the INT8
loop times and judges it like any other candidate, so a QAT result that misses the budget is refused.

The torch model and the training data are the build's (the pipeline): the loop is handed a *QAT source*
(:class:`QatSource`, on :class:`~edgeopt.compress.judging.Judging`) that trains once per build and returns the
Q/DQ ONNX every backend reuses (the pipeline keeps it in the calibration cache).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from edgeopt.compress.common import nncf_model_type, nncf_module, nncf_preset, quiet_nncf
from edgeopt.compress.failure import clip
from edgeopt.compress.quantizer import Candidate
from edgeopt.core.onnxgraph import drop_nodes, drop_unused_initializers

VERSION = 2  # what QAT does (loop, stripping, export): part of its cache key


@dataclass(frozen=True)
class QatResult:
    """The Q/DQ ONNX QAT produced and what it did (the manifest's record)."""

    path: Path
    record: dict


class QatSource(Protocol):
    """What the pipeline hands the INT8 loop: ``source(log)`` trains (once per build; later calls return the same
    result or raise the same error) and returns the Q/DQ ONNX."""

    def __call__(self, log: Callable[[str], None]) -> QatResult: ...

    def record(self) -> dict | None:
        """The manifest's ``qat`` record: what QAT did or why it failed; None when it was not called."""


class Qat:
    """Recovery step: the build's QAT result as a candidate of this backend (a quantizer with ``from_qdq``)."""

    name = "quantization-aware training"

    def applies(self, state) -> bool:
        return getattr(state.judging, "qat", None) is not None and hasattr(state.quantizer, "from_qdq")

    def run(self, state) -> list[Candidate]:
        state.log("no int8 candidate meets the budget: quantization-aware training ([qat]) on the labelled "
                  "training data")
        try:
            res = state.judging.qat(state.log)
            model = state.quantizer.from_qdq(res.path)
        except Exception as exc:  # noqa: BLE001 - QAT can fail (data, export); the numbers so far stand
            state.fail("qat", f"quantization-aware training failed: {clip(exc)}", str(exc))
            return []
        return [Candidate("qat", model, {"calibration_cache": res.record.get("cache", "off"), "qat": res.record},
                          recovered=True)]


CALIBRATION_BATCH = 32  # samples per NNCF statistics call: one at a time cost 124 s for 300 digits on 2 busy cores


def _batched(feeds: list[dict], spec) -> list[dict]:
    """The calibration feeds (one sample each when the model has a batch axis) in batches of CALIBRATION_BATCH."""
    import numpy as np

    if not spec.batch_dim or not feeds:
        return feeds
    return [{k: np.concatenate([f[k] for f in feeds[i:i + CALIBRATION_BATCH]]) for k in feeds[0]}
            for i in range(0, len(feeds), CALIBRATION_BATCH)]


class _EagerReference:
    """NNCF's own torch reference of its fake-quantize kernels (forward, backward), run eagerly."""

    def __init__(self):
        from nncf.torch.quantization.reference import ReferenceBackendType, ReferenceQuantize

        ref = ReferenceQuantize(ReferenceBackendType.TORCH)
        self.Quantize_forward, self.Quantize_backward = ref.forward, ref.backward


def _per_tensor_activations():
    """One scale per activation tensor. NNCF's CPU preset quantizes depthwise convolutions' inputs per channel,
    which ONNX Runtime's QLinearConv cannot take (and TensorRT's explicit quantization neither): on the real
    MobileNetV2 fine-tuned on digits the QAT graph had 17 such quantizers and ONNX Runtime ran it at 0.06x FP32.
    ONNX Runtime's own NNCF candidate asks for the same (backends/onnxruntime/quantize.py)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    return AdvancedQuantizationParameters(activations_quantization_params=QuantizationParameters(per_channel=False))


def eager_kernels() -> str:
    """Make NNCF's fake quantizers run its torch reference eagerly on CPU, and say which kernels run.

    NNCF 3.4 compiles a C++ extension on the first fake-quantize call (torch.utils.cpp_extension; a 60 s limit,
    NNCF_EXTENSION_LOAD_TIMEOUT, past which it raises instead of falling back) and otherwise falls back on its
    reference wrapped in torch.compile: both cost minutes on 2 busy cores before the first batch. The eager
    reference is the same arithmetic (NNCF's ReferenceQuantize), starts at once and is what the tests and
    benchmarks here ran. An extension already loaded in this process is kept."""
    from nncf.torch.quantization import extensions

    ns = extensions.QuantizedFunctionsCPU
    if getattr(ns, "_loaded_namespace", "unknown") is None:
        ns._loaded_namespace = _EagerReference()
        return "NNCF torch reference, eager"
    return "as loaded by NNCF"


def quantization_aware_training(module, spec, calibration: list[dict], train, cfg, compression, kind: str,
                                log: Callable[[str], None] = print, deadline: float | None = None):
    """QAT of a copy of ``module`` (the flat torch module): returns (the stripped module, with PyTorch fake
    quantizers, and the record). ``calibration``: the calibration feeds; ``train``: a labelled Dataset; ``cfg``:
    QatConfig; ``compression``: CompressionConfig (preset, subset_size); ``deadline``: time.monotonic() at which
    training stops (default now + cfg.time_s)."""
    from edgeopt.compress.prune import finetune
    from edgeopt.data.torchfeed import to_torch

    start = time.monotonic()
    deadline = start + cfg.time_s if deadline is None else deadline
    nncf = nncf_module()
    quiet_nncf()
    kernels = eager_kernels()
    preset, preset_name = nncf_preset(nncf, compression, kind)
    feeds = calibration[:compression.subset_size]
    batches = _batched(feeds, spec)
    model = copy.deepcopy(module).eval()
    q = nncf.quantize(model, nncf.Dataset([to_torch(f, spec) for f in batches]), preset=preset,
                      target_device=nncf.TargetDevice.CPU, subset_size=len(batches),
                      model_type=nncf_model_type(nncf, kind), advanced_parameters=_per_tensor_activations())
    init_s = time.monotonic() - start
    log(f"qat: NNCF quantized the torch model in {init_s:.1f} s; training on {train.count} labelled samples")
    done = finetune(q, train, spec, cfg, log, section="qat", deadline=deadline, freeze_batchnorm=True)
    train_s = time.monotonic() - start - init_s
    stripped = nncf.strip(q, do_copy=False, strip_format=nncf.StripFormat.NATIVE,
                          example_input=to_torch(feeds[0], spec))
    record = {"preset": preset_name, "kernels": kernels, "calibration_samples": len(feeds),
              "train_samples": train.count, "init_s": round(init_s, 2), "train_s": round(train_s, 2),
              "epochs": cfg.epochs, **done, "batchnorm": "statistics frozen (eval mode) while training"}
    return stripped.eval(), record


# ------------------------------------------------------------------------------------------------
# The exported Q/DQ ONNX, tidied into the form post-training Q/DQ graphs have (NNCF's, ONNX Runtime's): weights
# stored quantized, batch norms folded. All exact: the export check compares the result with the torch model.
# ------------------------------------------------------------------------------------------------

def tidy_qdq(model) -> dict[str, int]:
    """In place, on PyTorch's export of fake quantizers: Identity copies of constants read directly; a
    QuantizeLinear over a float weight replaced by the quantized weight (what it computes on every call); a
    BatchNormalization after a convolution whose weight is a per-output-channel DequantizeLinear (zero point 0)
    folded into that weight's scales and the bias (with BN apart, no runtime fuses the convolution into INT8).
    Returns how many of each."""
    return {"constant copies read directly": _identities(model.graph),
            "weights stored quantized": _quantized_weights(model.graph),
            "batch norms folded into Q/DQ convolutions": _fold_batchnorms(model.graph)}


def _identities(g) -> int:
    init = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    alias = {n.output[0]: n.input[0] for n in g.node
             if n.op_type == "Identity" and n.input[0] in init and n.output[0] not in outputs}
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in alias:
                n.input[i] = alias[x]
    keep = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del g.node[:]
    g.node.extend(keep)
    return len(alias)


def _axis(node, default: int = 1) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), default)


def _per_axis(a, ndim: int, axis: int):
    if a.ndim == 1 and a.size > 1:
        shape = [1] * ndim
        shape[axis] = -1
        return a.reshape(shape)
    return a


def _quantized_weights(g) -> int:
    import numpy as np
    from onnx import numpy_helper

    init = {t.name: t for t in g.initializer}
    keep, count = [], 0
    for n in g.node:
        if not (n.op_type == "QuantizeLinear" and len(n.input) == 3 and all(x in init for x in n.input)
                and init[n.input[0]].data_type == 1):
            keep.append(n)
            continue
        w = numpy_helper.to_array(init[n.input[0]]).astype(np.float32)
        zp = numpy_helper.to_array(init[n.input[2]])
        axis = _axis(n) % max(w.ndim, 1)
        scale = _per_axis(numpy_helper.to_array(init[n.input[1]]).astype(np.float32), w.ndim, axis)
        info = np.iinfo(zp.dtype)
        # QuantizeLinear: saturate(round_half_to_even(x / scale) + zero_point); np.rint rounds half to even
        q = np.clip(np.rint(w / scale) + _per_axis(zp, w.ndim, axis).astype(np.float32), info.min, info.max)
        g.initializer.append(numpy_helper.from_array(q.astype(zp.dtype), n.output[0]))
        count += 1
    del g.node[:]
    g.node.extend(keep)
    drop_unused_initializers(g)
    return count


def _fold_batchnorms(g) -> int:
    import numpy as np
    from onnx import numpy_helper

    init = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            users.setdefault(x, []).append(n)
    outputs = {o.name for o in g.output}
    arr = lambda name: numpy_helper.to_array(init[name]).astype(np.float64)  # noqa: E731
    dropped, count = set(), 0
    for bn in g.node:
        conv = producer.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or len(users.get(conv.output[0], [])) != 1 \
                or conv.output[0] in outputs or not all(x in init for x in bn.input[1:5]):
            continue
        dq = producer.get(conv.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(users.get(dq.output[0], [])) != 1 \
                or not all(x in init for x in dq.input[:3]) or _axis(dq) != 0:
            continue
        gamma, beta, mean, var = (arr(x) for x in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = gamma / np.sqrt(var + eps)
        scale, zp = arr(dq.input[1]), numpy_helper.to_array(init[dq.input[2]])
        if scale.shape != k.shape or np.any(zp != 0) or np.any(k <= 0):
            continue  # a negative factor would flip the weights' signs: left as it is
        bias = arr(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros_like(k)
        stem = f"{conv.name or conv.output[0]}_bn_folded"
        g.initializer.extend([numpy_helper.from_array((scale * k).astype(np.float32), stem + "_scale"),
                              numpy_helper.from_array(((bias - mean) * k + beta).astype(np.float32), stem + "_bias")])
        dq.input[1] = stem + "_scale"
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = stem + "_bias"
        conv.output[0] = bn.output[0]
        dropped.add(id(bn))
        count += 1
    drop_nodes(g, dropped)
    drop_unused_initializers(g)
    return count

