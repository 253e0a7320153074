"""Wall time of a 12-job sweep (3 models x 2 targets x fp32/int8 of the built-in example) on one node, against
the same 12 builds as sequential `edgeopt build` commands, and the scheduling overhead per job.

    python benchmarks/sweep_overhead.py [--out DIR] [--models 3]

Modes, each in its own fresh folder (no calibration cache shared between modes: EDGEOPT_CACHE_DIR per mode):
  builds      12 `edgeopt build -t T -p P` commands (the example) one after another (each its own process and export)
  sequential  `edgeopt sweep --sequential` (one process, one export per model, no Ray)
  ray         `edgeopt sweep` on the embedded local Ray with this machine's cores
  ray-1cpu    `edgeopt sweep` on a local Ray limited to 1 CPU: jobs one at a time, so
              overhead per job = (wall - Ray start - sum of in-worker job seconds - exports) / jobs

The figures depend on the machine and its load: the script prints the CPU and the load average beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["ort-cpu", "openvino-cpu"]
PRECISIONS = ["fp32", "int8"]
EDGEOPT = [sys.executable, "-m", "edgeopt"]


def cpu() -> str:
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "?"
    return f"{name}, {os.cpu_count()} cores"


def sweep_file(folder: Path, models: int) -> Path:
    lines = [f'name = "bench"', f"targets = {json.dumps(TARGETS)}", f"precisions = {json.dumps(PRECISIONS)}", ""]
    for i in range(models):
        lines += ["[[models]]", 'recipe = "example"', f'name = "digits-{i}"',
                  f"overrides = {{ profile = {{ batches = [1], duration_s = 0.5 }}, parity = {{ seed = {i} }} }}", ""]
    p = folder / "sweep.toml"
    p.write_text("\n".join(lines))
    return p


def timed(cmd, cwd: Path, env: dict) -> float:
    t = time.monotonic()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, timeout=3600)
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--modes", default="builds,sequential,ray,ray-1cpu")
    a = ap.parse_args()
    root = Path(a.out or tempfile.mkdtemp(prefix="edgeopt-sweep-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = {}
    for mode in a.modes.split(","):
        folder = root / mode
        folder.mkdir(exist_ok=True)
        env = {**os.environ, "EDGEOPT_CACHE_DIR": str(folder / "cache"), "RAY_ADDRESS": ""}
        f = sweep_file(folder, a.models)
        load = os.getloadavg()[0]
        if mode == "builds":
            wall = 0.0
            for i in range(a.models):
                for t in TARGETS:
                    for p in PRECISIONS:
                        wall += timed([*EDGEOPT, "build", "-t", t, "-p", p, "-o", f"m{i}-{t}-{p}"], folder, env)
            rows[mode] = {"wall_s": round(wall, 1), "load_before": load}
            continue
        cmd = [*EDGEOPT, "sweep", str(f), "-o", "out", "--json"] + (["--sequential"] if mode == "sequential" else [])
        if mode == "ray-1cpu":
            cmd += ["--cpus", "1"]
        t = time.monotonic()
        res = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - t
        if res.returncode != 0:
            rows[mode] = {"error": res.stderr[-500:]}
            continue
        s = json.loads(res.stdout)
        jobs = sum(j.get("seconds") or 0 for j in s["jobs"])
        exports = sum(e.get("seconds") or 0 for e in s.get("exports") or [])
        rows[mode] = {"wall_s": round(wall, 1), "jobs": len(s["jobs"]), "job_seconds": round(jobs, 1),
                      "export_seconds": round(exports, 1), "load_before": load}
        if mode == "ray-1cpu":
            rows[mode]["overhead_per_job_s"] = round((s["seconds"] - jobs - exports) / len(s["jobs"]), 2)
    print(json.dumps({"cpu": cpu(), "models": a.models, "jobs": a.models * 4, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
