"""edgeopt's profiler against OpenVINO's own benchmark_app, on the same IR with the same settings.

    python benchmarks/profiler_vs_benchmark_app.py                  # ResNet-18 FP32 and INT8, 6 pairs each
    python benchmarks/profiler_vs_benchmark_app.py --pairs 8 --seconds 5

Builds ResNet-18 (torchvision architecture, random weights) for openvino-cpu in FP32 and INT8 (reused when
already built), then for each artifact times interleaved pairs: edgeopt's profiler (profile_artifact, the
runner's timed call) and `benchmark_app` with exactly the settings edgeopt compiles with (the artifact's
runtime_config plus the thread count, passed as `-load_config`, so the same hint, streams, threads and
inference precision; `-b 1` fixes the input shape as edgeopt's runner does for a shape it keeps running;
1 request), the order alternating per pair. Both report a median over every timed inference: benchmark_app
the runtime's own per-request latency, edgeopt the wall clock around start + wait. The figure is edgeopt's
median over benchmark_app's, per pair; the target is a median ratio within 0.95-1.05. The compiled models'
properties on both sides are compared and recorded, and the machine's load before and after: on a shared
machine compare the ratio, not the milliseconds. The halves of a pair are a process start apart, so a busy
machine moves them apart; two checks in one process follow: benchmark_app's own measurement loop
(openvino.tools.benchmark's Benchmark) paired with edgeopt's profiler a second apart (--inprocess), and the
sources of a gap, calls alternated one by one (--calls): Python's clock against the runtime's, and the
dynamic-batch model against the fixed-shape one. Each median ratio comes with a bootstrap interval over its
pairs. Writes benchmarks/results/profiler-vs-benchmark_app-<date>.json. Not a test.
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


PROPS = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT",
         "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")


def benchmark_app(xml: Path, config: dict, seconds: float) -> tuple[float, dict]:
    """benchmark_app's median latency (ms) at batch 1 with exactly ``config``, and the compiled model's
    properties as it prints them."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    with tempfile.TemporaryDirectory(prefix="edgeopt-bapp-") as home:  # nothing into the real HOME
        conf = Path(home, "config.json")
        conf.write_text(json.dumps({"CPU": {k: str(v) for k, v in config.items()}}))
        cmd = [exe, "-m", str(xml), "-d", "CPU", "-b", "1", "-nireq", "1", "-load_config", str(conf),
               "-t", str(max(1, round(seconds)))]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=home, env={**os.environ, "HOME": home},
                             timeout=seconds * 10 + 120)
    if res.returncode:
        raise RuntimeError(f"benchmark_app failed: {res.stdout[-1500:]}{res.stderr[-1500:]}")
    found = re.search(r"Median:\s+([\d.]+)\s*ms", res.stdout)
    if not found:
        raise RuntimeError(f"no median in benchmark_app's output: {res.stdout[-1500:]}")
    props = {}
    for key in PROPS:
        m = re.search(rf"^\[ INFO \]\s+{key}: (.+)$", res.stdout, re.M)
        if m:
            props[key] = m.group(1).strip()
    return float(found.group(1)), props


def edgeopt_median(folder: Path, threads: int, seconds: float) -> tuple[float, dict]:
    """edgeopt's median at batch 1 (its profiler, as a build times an artifact) and the compiled model's
    properties."""
    from edgeopt.backends.artifact import open_artifact
    from edgeopt.core.profile import ProfileConfig, profile_runner

    cfg = ProfileConfig(batches=(1,), warmup_s=1.0, duration_s=seconds, rounds=5)
    runner, _ = open_artifact(folder, threads=threads)
    try:
        row = profile_runner(runner, runner.spec, (1,), cfg)["rows"][0]
        props = {}
        for key in PROPS:
            v = runner.compiled.get_property(key)
            props[key] = v.to_string() if hasattr(v, "to_string") else str(v)
    finally:
        runner.close()
    return row["median_ms"], props


def same_settings(ours: dict, theirs: dict) -> list[str]:
    """The properties both report that differ (benchmark_app prints types as <Type: 'float32'>)."""
    norm = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}

    def clean(v: str) -> str:
        m = re.search(r"<Type: '(\w+)'>", v)
        return norm.get(m.group(1), m.group(1)) if m else v.split(".")[-1]

    return [f"{k}: edgeopt {ours[k]}, benchmark_app {theirs[k]}" for k in ours
            if k in theirs and clean(ours[k]) != clean(theirs[k])]


def gap_sources(folder: Path, threads: int, calls: int) -> dict:
    """Where a difference could come from, in one process with the calls alternated one by one (so the
    machine's load hits all alike): edgeopt's timed call (the model compiled for the fixed batch-1 shape), the
    same call on the model as loaded (dynamic batch: what the runner timed before it kept fixed-shape models),
    and the runtime's own clock of edgeopt's call (``request.latency``: what benchmark_app reports)."""
    import openvino as ov

    from edgeopt.backends.artifact import open_artifact
    from edgeopt.core.profile import feed_for_batch

    runner, _ = open_artifact(folder, threads=threads)
    with runner:
        feed = feed_for_batch(runner.spec, 1)
        fixed = runner.timed_call(feed)
        dynamic = runner.compiled.create_infer_request()
        for name, arr in feed.items():
            dynamic.set_tensor(name, ov.Tensor(arr, shared_memory=True))

        def as_loaded():
            dynamic.start_async()
            dynamic.wait()

        for _ in range(5):
            fixed()
            as_loaded()
        t = {"fixed_shape": [], "runtime_clock": [], "dynamic_shape": []}
        for i in range(calls):
            for who, fn in ((("fixed_shape", fixed), ("dynamic_shape", as_loaded)) if i % 2 else
                            (("dynamic_shape", as_loaded), ("fixed_shape", fixed))):
                s = time.perf_counter()
                fn()
                t[who].append((time.perf_counter() - s) * 1000.0)
                if who == "fixed_shape":
                    t["runtime_clock"].append(fixed.request.latency)
    a = {k: np.asarray(v) for k, v in t.items()}
    return {"calls": calls, **{f"{k}_median_ms": round(float(np.median(v)), 4) for k, v in a.items()},
            "dynamic_over_fixed": round(float(np.median(a["dynamic_shape"]) / np.median(a["fixed_shape"])), 4),
            "dynamic_over_fixed_paired": round(float(np.median(a["dynamic_shape"] / a["fixed_shape"])), 4),
            "python_overhead_us": round(float(np.median(a["fixed_shape"] - a["runtime_clock"])) * 1000.0, 1),
            "python_over_runtime_clock": round(float(np.median(a["fixed_shape"] / a["runtime_clock"])), 5)}


def inprocess_pairs(folder: Path, config: dict, threads: int, rounds: int, seconds: float) -> dict:
    """benchmark_app's own measurement loop (``Benchmark.async_inference_only`` from openvino.tools.benchmark,
    on a model it reads, reshapes to batch 1 and compiles with ``config`` as benchmark_app does, one request in
    an AsyncInferQueue) against edgeopt's profiler (``time_interleaved`` on the runner's timed call), in one
    process, ``seconds`` each, alternating ``rounds`` times: a pair's halves are a second apart, not a
    process start apart, so a busy machine moves both alike."""
    import openvino as ov
    from openvino.tools.benchmark.benchmark import Benchmark, percentile

    from edgeopt.backends.artifact import open_artifact
    from edgeopt.core.profile import ProfileConfig, feed_for_batch, time_interleaved

    class OneItem:  # benchmark_app's data queue, inputs set once (its inference-only mode)
        def get_next_batch_size(self):
            return 1

    bench = Benchmark("CPU", number_infer_requests=1, duration_seconds=max(1, round(seconds)), api_type="async",
                      inference_only=True)
    runner, _ = open_artifact(folder, threads=threads)
    with runner:
        feed = feed_for_batch(runner.spec, 1)
        ours = runner.timed_call(feed)
        model = ov.Core().read_model(str(folder / "model.xml"))
        model.reshape({model.input(n): list(a.shape) for n, a in feed.items()})
        compiled = bench.core.compile_model(model, "CPU", {k: str(v) for k, v in config.items()})
        queue = ov.AsyncInferQueue(compiled, 1)
        for n, a in feed.items():
            queue[0].set_tensor(n, ov.Tensor(a))
        queue.start_async()
        queue.wait_all()
        cfg = ProfileConfig(batches=(1,), warmup=3, duration_s=seconds, rounds=1, min_iterations=5)
        pairs = []
        for i in range(rounds):
            got = {}
            for who in (("edgeopt", "benchmark_app") if i % 2 == 0 else ("benchmark_app", "edgeopt")):
                if who == "edgeopt":
                    got[who] = time_interleaved({"e": ours}, cfg, 1)["e"]["median_ms"]
                else:
                    times, _, _ = bench.async_inference_only(queue, OneItem())
                    got[who] = percentile(times, 50)
            pairs.append({**got, "ratio": round(got["edgeopt"] / got["benchmark_app"], 4)})
    ratios = [p["ratio"] for p in pairs]
    return {"rounds": rounds, "seconds": seconds, "pairs": pairs, "median_ratio": round(float(np.median(ratios)), 4),
            "median_ratio_interval": list(median_interval(ratios))}


def median_interval(ratios: list[float], confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the median of the pairs' ratios."""
    r = np.asarray(ratios)
    idx = np.random.default_rng(seed).integers(0, r.size, size=(2000, r.size))
    lo, hi = np.percentile(np.median(r[idx], axis=1), [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return round(float(lo), 4), round(float(hi), 4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds of each side of a pair")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--builds", default=None, help="where the ResNet-18 build is kept (default OUT/builds)")
    ap.add_argument("--calls", type=int, default=200, help="alternated calls of the in-process gap check (0: none)")
    ap.add_argument("--inprocess", type=int, default=16,
                    help="pairs of benchmark_app's own loop and edgeopt's profiler in one process (0: none)")
    args = ap.parse_args(argv)

    from edgeopt.core.profile import describe_load, machine_load

    out = Path(args.out)
    builds = Path(args.builds) if args.builds else out / "builds"
    m = build_resnet18(builds / "resnet18-openvino")
    before = machine_load(1.0)
    print(f"machine before: {describe_load(before)}", flush=True)
    results = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
               "seconds": args.seconds, "machine_before": before, "artifacts": {}}
    for a in m["artifacts"]:
        if a["status"] != "ok":
            continue
        folder = builds / "resnet18-openvino" / a["id"]
        config = {**a["meta"]["runtime_config"], "INFERENCE_NUM_THREADS": args.threads}
        pairs, props = [], {}
        for i in range(args.pairs):
            order = ("edgeopt", "benchmark_app") if i % 2 == 0 else ("benchmark_app", "edgeopt")
            got = {}
            for who in order:
                got[who], props[who] = (edgeopt_median(folder, args.threads, args.seconds) if who == "edgeopt" else
                                        benchmark_app(folder / "model.xml", config, args.seconds))
            ratio = got["edgeopt"] / got["benchmark_app"]
            pairs.append({**got, "ratio": round(ratio, 4), "order": list(order)})
            print(f"{a['id']} pair {i + 1}: edgeopt {got['edgeopt']:.3f} ms, benchmark_app {got['benchmark_app']:.3f} ms,"
                  f" ratio {ratio:.3f}", flush=True)
        med = float(np.median([p["ratio"] for p in pairs]))
        lo, hi = median_interval([p["ratio"] for p in pairs])
        differ = same_settings(props["edgeopt"], props["benchmark_app"])
        results["artifacts"][a["id"]] = {"config": config, "properties": props, "settings_differ": differ,
                                         "pairs": pairs, "median_ratio": round(med, 4),
                                         "median_ratio_interval": [lo, hi], "within_5pct": 0.95 <= med <= 1.05}
        if args.inprocess:
            inp = results["artifacts"][a["id"]]["in_process"] = inprocess_pairs(folder, config, args.threads,
                                                                              args.inprocess, 1.0)
            print(f"{a['id']}: benchmark_app's loop in this process, {args.inprocess} pairs of 1 s: median ratio "
                  f"{inp['median_ratio']:.3f}, 95% interval {inp['median_ratio_interval'][0]:.3f}-"
                  f"{inp['median_ratio_interval'][1]:.3f} (pairs {min(p['ratio'] for p in inp['pairs']):.3f}-"
                  f"{max(p['ratio'] for p in inp['pairs']):.3f})", flush=True)
        if args.calls:
            src = results["artifacts"][a["id"]]["sources"] = gap_sources(folder, args.threads, args.calls)
            print(f"{a['id']}: {args.calls} alternated calls in one process: fixed shape {src['fixed_shape_median_ms']:.3f} ms,"
                  f" dynamic batch {src['dynamic_shape_median_ms']:.3f} ms ({src['dynamic_over_fixed']:.3f}x, paired "
                  f"{src['dynamic_over_fixed_paired']:.3f}x); Python's clock over the runtime's "
                  f"{src['python_over_runtime_clock']:.4f} ({src['python_overhead_us']:.0f} us a call)", flush=True)
        print(f"{a['id']}: compiled with " + ", ".join(f"{k} {v}" for k, v in props["edgeopt"].items())
              + ("; DIFFERENT from benchmark_app's: " + "; ".join(differ) if differ else
                 "; benchmark_app's the same"), flush=True)
        print(f"{a['id']}: median ratio {med:.3f}, 95% interval {lo:.3f}-{hi:.3f} over {len(pairs)} pairs "
              f"({'within' if 0.95 <= med <= 1.05 else 'outside'} 0.95-1.05)", flush=True)
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
