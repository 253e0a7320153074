"""The stronger post-training options (edgeopt/compress/ptq.py) measured beside the plain NNCF candidate on the
real benchmark models, each as an ordinary INT8 candidate of an `edgeopt build` (timed against FP32, judged by the
guard on the model's held-out data), whatever the plain candidate scored: what decides whether and where they
belong.

    python benchmarks/ptq_options.py --models mobilenet_v2_real yolov8_fall_real minilm_real --out DIR

Per model and backend it prints each candidate's task metric, its drop with the 95% interval and verdict under
the default budget, its quick speed-up over FP32 and its quantization seconds. The recovery steps are off here
(the point is the candidates side by side). Not a test; prints the CPU and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _build(name: str, out: Path, targets: list[str]) -> dict:
    import run

    from edgeopt.backends.onnxruntime import quantize as ortq
    from edgeopt.backends.openvino import quantize as ovq
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    # every NNCF candidate and its stronger variants side by side (the plain ORT recipes are measured by run.py)
    ortq.OrtQuantizer.candidates = lambda self, kind, cfg: (ortq.NNCF_QDQ, *self.stronger(kind))
    ovq.OvQuantizer.candidates = lambda self, kind, cfg: (ovq.NNCF_OV, *self.stronger(kind))
    recipe = run.recipe_for(name, 0.3, batches=[1])
    comp = replace(recipe.compression, mixed_precision=False, accuracy_control=False, stronger_ptq=False)
    recipe = replace(recipe, precisions=("fp32", "int8"), targets=tuple(targets), compression=comp)
    return build(recipe, out / name, force=True, reporter=Reporter(quiet=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2_real", "yolov8_fall_real", "minilm_real"])
    ap.add_argument("--targets", nargs="+", default=["ort-cpu", "openvino-cpu"])
    ap.add_argument("--out", default=str(HERE / "results" / "ptq-options"))
    args = ap.parse_args()

    from edgeopt.core.hostinfo import cpu_info

    info = cpu_info()
    print(f"CPU: {info.get('model') or info.get('arch')}, {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    out = Path(args.out)
    summary = {}
    for name in args.models:
        t0 = time.time()
        m = _build(name, out, args.targets)
        rows = []
        for a in m["artifacts"]:
            int8 = (a.get("meta") or {}).get("int8")
            if a["precision"] != "int8" or not int8:
                if a["precision"] == "int8":
                    rows.append({"artifact": a["id"], "status": a["status"], "reason": a.get("reason")})
                continue
            for c in int8["candidates"]:
                acc = c.get("accuracy") or {}
                rows.append({"artifact": a["id"], "candidate": c["candidate"], "value": acc.get("value"),
                             "label": acc.get("label"), "drop": acc.get("drop_points"), "low": acc.get("drop_low"),
                             "high": acc.get("drop_high"), "decision": acc.get("decision"),
                             "within": c.get("within_budget"), "vs_fp32": (c.get("vs_fp32") or {}).get("value"),
                             "quantize_s": c.get("quantize_s"), "error": c.get("error")})
        summary[name] = {"seconds": round(time.time() - t0, 1), "rows": rows}
        for r in rows:
            print(f"{name} | {json.dumps(r)}", flush=True)
        print(f"{name}: {summary[name]['seconds']} s; load average {os.getloadavg()[0]:.1f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"cpu": info.get("model"), **summary}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
