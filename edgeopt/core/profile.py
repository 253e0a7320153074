"""Profiler: in-process timing with warm-up, fixed count or duration, full statistics. Numpy only.

Used on devices too (no torch). The PyTorch eager baseline row comes from :func:`time_callable` fed a
torch closure by the build stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgeopt.errors import UserInputError

@dataclass(frozen=True)
class ProfileConfig:
    batches: tuple[int, ...] = (1, 8)
    warmup: int = 10  # iterations, or
    warmup_s: float | None = None  # seconds
    iterations: int | None = None  # fixed count, or
    duration_s: float = 1.5  # seconds of timed runs (at least min_iterations)
    min_iterations: int = 20
    threads: int | None = None  # None: each backend's default, recorded
    baseline: bool = True  # profile the PyTorch eager model as the baseline row

    def __post_init__(self):
        if not self.batches or any(int(b) < 1 for b in self.batches):
            raise UserInputError(f"Batch sizes must be >= 1, got {list(self.batches)}.", "For example batches = [1, 8].")


UNSTABLE_CV = 0.15  # robust coefficient of variation above which a run is flagged as noisy


def _read_status(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux >= 4.0), so a peak is per artifact."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float | None:
    return _read_status("VmRSS")


def peak_rss_mb() -> float | None:
    peak = _read_status("VmHWM")
    if peak is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return peak


def statistics(times_ms: list[float], batch: int) -> dict:
    t = np.asarray(times_ms, dtype=np.float64)
    mean = float(t.mean())
    std = float(t.std(ddof=1)) if t.size > 1 else 0.0
    med = float(np.median(t))
    return {
        "batch": batch,
        "iterations": int(t.size),
        "min_ms": float(t.min()),
        "mean_ms": mean,
        "median_ms": med,
        "p90_ms": float(np.percentile(t, 90)),
        "p95_ms": float(np.percentile(t, 95)),
        "p99_ms": float(np.percentile(t, 99)),
        "max_ms": float(t.max()),
        "std_ms": std,
        "cv": std / mean if mean > 0 else 0.0,
        # std/mean is dominated by a few scheduler spikes on sub-millisecond runs; 1.4826 x MAD / median is
        # the same figure for a normal distribution and is what flags a run as unstable.
        "robust_cv": float(1.4826 * np.median(np.abs(t - med)) / med) if med > 0 else 0.0,
        "throughput_per_s": batch * 1000.0 / med if med > 0 else 0.0,
    }


def time_callable(fn: Callable[[], object], cfg: ProfileConfig, batch: int) -> dict:
    """Warm up, then time ``fn`` for a fixed count or for ``duration_s`` (at least ``min_iterations``)."""
    t0 = time.perf_counter()
    fn()
    first_ms = (time.perf_counter() - t0) * 1000.0
    if cfg.warmup_s:
        end = time.perf_counter() + cfg.warmup_s
        while time.perf_counter() < end:
            fn()
    else:
        for _ in range(max(0, cfg.warmup)):
            fn()
    times: list[float] = []
    deadline = time.perf_counter() + cfg.duration_s
    while True:
        s = time.perf_counter()
        fn()
        times.append((time.perf_counter() - s) * 1000.0)
        if cfg.iterations is not None:
            if len(times) >= cfg.iterations:
                break
        elif len(times) >= cfg.min_iterations and time.perf_counter() >= deadline:
            break
    row = statistics(times, batch)
    row["first_inference_ms"] = first_ms
    row["unstable"] = row["robust_cv"] > UNSTABLE_CV
    return row


def feed_for_batch(spec, batch: int, real: dict[str, np.ndarray] | None = None, seed: int = 0) -> dict:
    """Real samples where given (repeated to fill the batch), else random within the declared ranges."""
    if real:
        out = {}
        for t in spec.inputs:
            arr = real[t.name]
            reps = int(np.ceil(batch / arr.shape[0]))
            out[t.name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:batch])
        return out
    return spec.random_feed(np.random.default_rng(seed), batch=batch)


def profile_runner(runner, spec, batches, cfg: ProfileConfig, real: dict | None = None) -> dict:
    """Open ``runner`` (timing the load), then time each batch size. Peak RSS is per artifact."""
    reset_peak_rss()
    rss0 = rss_mb()
    runner.activate()
    rows = []
    for b in batches:
        feed = feed_for_batch(spec, b, real)
        spec.check_feed(feed, "profile")
        rows.append(time_callable(lambda: runner.infer(feed, check=False), cfg, b))
    return {
        "load_s": runner.load_seconds,
        "threads": runner.threads,
        "rss_before_mb": rss0,
        "peak_rss_mb": peak_rss_mb(),
        "rows": rows,
    }



def record_profile(rec: dict, prof: dict) -> None:
    """Put a profile's figures into an artifact's manifest record."""
    rec["latency"] = prof["rows"]
    rec.update({k: prof[k] for k in ("load_s", "threads", "peak_rss_mb")})
