"""edgeopt's profiler against OpenVINO's own benchmark_app, on the same IR with the same settings.

    python benchmarks/profiler_vs_benchmark_app.py                  # ResNet-18 FP32 and INT8, 3 pairs each
    python benchmarks/profiler_vs_benchmark_app.py --pairs 5 --seconds 10

Builds ResNet-18 (torchvision architecture, random weights) for openvino-cpu in FP32 and INT8 (reused when
already built), then for each artifact times interleaved pairs: edgeopt's profiler (profile_artifact, the
runner's timed call) and `benchmark_app` (batch 1, 1 stream (what edgeopt's latency hint gives), 1 request, the artifact's
inference precision, the same thread count), the order alternating per pair. The figure is edgeopt's median
over benchmark_app's median, per pair; the target is a median ratio within 0.95-1.05. The machine's load
before and after is printed and recorded: on a shared machine, compare the ratio, not the milliseconds.
Writes benchmarks/results/profiler-vs-benchmark_app-<date>.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def build_resnet18(out: Path):
    from dataclasses import replace

    from run import recipe_for

    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    r = recipe_for("resnet18", 1.0)
    r = replace(r, targets=("openvino-cpu",), precisions=("fp32", "int8"))
    return build(r, out, reporter=Reporter(quiet=True), profile=False)


def benchmark_app(xml: Path, config: dict, threads: int, seconds: float) -> float:
    """benchmark_app's median latency (ms) at batch 1 with ``config``'s inference precision."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-b", "1", "-hint", "none", "-nstreams", "1", "-nireq", "1",
           "-nthreads", str(threads), "-t", str(max(1, round(seconds)))]
    if config.get("INFERENCE_PRECISION_HINT"):
        cmd += ["-infer_precision", str(config["INFERENCE_PRECISION_HINT"])]
    with tempfile.TemporaryDirectory(prefix="edgeopt-bapp-") as home:  # nothing into the real HOME
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=home, env={**os.environ, "HOME": home},
                             timeout=seconds * 10 + 120)
    if res.returncode:
        raise RuntimeError(f"benchmark_app failed: {res.stdout[-1500:]}{res.stderr[-1500:]}")
    found = re.search(r"Median:\s+([\d.]+)\s*ms", res.stdout)
    if not found:
        raise RuntimeError(f"no median in benchmark_app's output: {res.stdout[-1500:]}")
    return float(found.group(1))


def edgeopt_median(folder: Path, threads: int, seconds: float) -> float:
    from edgeopt.backends.artifact import profile_artifact
    from edgeopt.core.profile import ProfileConfig

    cfg = ProfileConfig(batches=(1,), warmup_s=1.0, duration_s=seconds, rounds=5)
    return profile_artifact(folder, (1,), cfg, threads=threads)["rows"][0]["median_ms"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds of each side of a pair")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    from edgeopt.core.profile import describe_load, machine_load

    out = Path(args.out)
    m = build_resnet18(out / "builds" / "resnet18-openvino")
    before = machine_load(1.0)
    print(f"machine before: {describe_load(before)}", flush=True)
    results = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
               "seconds": args.seconds, "machine_before": before, "artifacts": {}}
    for a in m["artifacts"]:
        if a["status"] != "ok":
            continue
        folder = out / "builds" / "resnet18-openvino" / a["id"]
        config = a["meta"]["runtime_config"]
        pairs = []
        for i in range(args.pairs):
            order = ("edgeopt", "benchmark_app") if i % 2 == 0 else ("benchmark_app", "edgeopt")
            got = {}
            for who in order:
                got[who] = (edgeopt_median(folder, args.threads, args.seconds) if who == "edgeopt" else
                            benchmark_app(folder / "model.xml", config, args.threads, args.seconds))
            ratio = got["edgeopt"] / got["benchmark_app"]
            pairs.append({**got, "ratio": round(ratio, 4), "order": list(order)})
            print(f"{a['id']} pair {i + 1}: edgeopt {got['edgeopt']:.3f} ms, benchmark_app {got['benchmark_app']:.3f} ms,"
                  f" ratio {ratio:.3f}", flush=True)
        med = float(np.median([p["ratio"] for p in pairs]))
        results["artifacts"][a["id"]] = {"config": config, "pairs": pairs, "median_ratio": round(med, 4),
                                         "within_5pct": 0.95 <= med <= 1.05}
        print(f"{a['id']}: median ratio {med:.3f} ({'within' if 0.95 <= med <= 1.05 else 'outside'} 0.95-1.05)",
              flush=True)
    results["machine_after"] = machine_load(1.0)
    print(f"machine after: {describe_load(results['machine_after'])}")
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    (out / f"profiler-vs-benchmark_app-{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    t0 = time.time()
    code = main()
    print(f"{time.time() - t0:.0f} s")
    raise SystemExit(code)
