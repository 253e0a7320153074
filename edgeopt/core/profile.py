"""Profiler: in-process timing with warm-up, fixed count or duration, full statistics. Numpy only.

Used on devices too (no torch). Several contenders (the PyTorch eager baseline, which the build stage
passes in as a torch closure, and every artifact) are timed in interleaved rounds in one process
(:func:`time_interleaved`), so a busy minute hurts them all alike; a speed-up comes with a bootstrap
interval over those rounds (:func:`speedup`). :func:`machine_load` says how busy the machine was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgeopt.errors import UserInputError
from edgeopt.core.checks import boolean, integer, key, list_of, number

@dataclass(frozen=True)
class ProfileConfig:
    batches: tuple[int, ...] = key((1, 8), check=list_of(integer(1, 65536), 1, 64), doc="batch sizes profiled")
    warmup: int = key(10, check=integer(0, 100_000), doc="untimed iterations first, or")
    warmup_s: float | None = key(None, check=number(0, 600), doc="seconds of untimed runs first")
    iterations: int | None = key(None, check=integer(1, 1_000_000), doc="a fixed count of timed runs, or")
    duration_s: float = key(1.5, check=number(0, 3600, above=True),
                            doc="seconds of timed runs (at least min_iterations)")
    min_iterations: int = key(20, check=integer(1, 1_000_000), doc="timed runs at least")
    threads: int | None = key(None, check=integer(0, 1024), doc="threads (default: each backend's own, recorded)")
    baseline: bool = key(True, check=boolean, doc="profile the PyTorch eager model as the baseline row")
    rounds: int = key(10, check=integer(1, 1000),
                      doc="interleaved rounds: each contender gets duration_s (or iterations) split over them")

    def __post_init__(self):
        if not self.batches or any(int(b) < 1 for b in self.batches):
            raise UserInputError(f"Batch sizes must be >= 1, got {list(self.batches)}.", "For example batches = [1, 8].")
        if int(self.rounds) < 1:
            raise UserInputError(f"rounds must be >= 1, got {self.rounds}.", "For example rounds = 10.")


UNSTABLE_CV = 0.15  # robust coefficient of variation above which a run is flagged as noisy
UNSTABLE_ROUND_CV = 0.10  # the same over the rounds' medians: the speed drifted between rounds


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


def prepare_runner(runner, spec, batches, real: dict | None = None, rss_base: float | None = None) -> dict:
    """Activate ``runner`` (timing the load) and make its timed call at each batch size, running each once
    (the first-inference time). Peak RSS: the process as it was before any contender was loaded
    (``rss_base``) plus what loading this one and a first run at each batch added."""
    reset_peak_rss()
    rss0 = rss_mb()
    runner.activate()
    calls, first = {}, {}
    for b in batches:
        feed = feed_for_batch(spec, b, real)
        spec.check_feed(feed, "profile")
        call = runner.timed_call(feed)
        t0 = time.perf_counter()
        call()
        first[b] = (time.perf_counter() - t0) * 1000.0
        calls[b] = call
    peak = peak_rss_mb()
    added = peak - rss0 if peak is not None and rss0 is not None else None
    base = rss0 if rss_base is None else rss_base
    return {"calls": calls, "first_ms": first, "load_s": runner.load_seconds, "threads": runner.threads,
            "rss_before_mb": rss0, "rss_added_mb": added,
            "peak_rss_mb": (base + added) if base is not None and added is not None else peak}


def time_prepared(prepared: dict[str, dict], batches, cfg: ProfileConfig, meter="auto") -> dict[str, dict]:
    """Time prepared contenders (:func:`prepare_runner`, or {"calls": {batch: fn}}) interleaved at each batch.
    Returns name -> {rows, load_s, threads, peak_rss_mb, power, ...}. ``meter``: an energy meter
    (:mod:`edgeopt.core.energy`), "auto" for the board's own where readable, or None: each row then carries
    ``energy`` (average power, mJ per inference) and ``power`` says the source and the power mode."""
    from edgeopt.core.energy import open_meter, power_context

    meter = open_meter() if meter == "auto" else meter
    rows: dict[str, list] = {n: [] for n in prepared}
    with meter if meter is not None else _no_meter():
        for b in batches:
            calls = {n: p["calls"][b] for n, p in prepared.items() if b in p["calls"]}
            timed = time_interleaved(calls, cfg, b, {n: prepared[n].get("first_ms", {}).get(b) for n in calls},
                                     meter=meter)
            for n, row in timed.items():
                rows[n].append(row)
    power = power_context(meter) if meter is not None else None
    return {n: {**{k: v for k, v in p.items() if k not in ("calls", "first_ms")}, "rows": rows[n], "power": power}
            for n, p in prepared.items()}


class _no_meter:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def profile_runner(runner, spec, batches, cfg: ProfileConfig, real: dict | None = None, meter="auto") -> dict:
    """Open ``runner`` (timing the load), then time each batch size (rounds, one contender)."""
    prepared = prepare_runner(runner, spec, batches, real)
    return time_prepared({"artifact": prepared}, batches, cfg, meter)["artifact"]


def record_profile(rec: dict, prof: dict, run: dict | None = None, base_rows: list | None = None) -> None:
    """Put a profile's figures into an artifact's manifest record: its latency rows, the run they come from,
    and the speed-up over ``base_rows`` (the baseline timed in the same run) with its interval. Figures of an
    earlier run (a ratio against another baseline) are dropped, never kept beside new ones."""
    rec["latency"] = prof["rows"]
    rec.update({k: prof[k] for k in ("load_s", "threads", "peak_rss_mb")})
    if run is not None and prof.get("power"):
        run["energy"] = prof["power"]  # the source and the power mode of the run's energy figures
    for k in ("speedup_vs_torch", "speedup_interval", "timing_run", "speedup_withheld"):
        rec.pop(k, None)
    if run is not None:
        rec["timing_run"] = run["id"]
    withheld = ratios_withheld(run)
    if base_rows and withheld:
        rec["speedup_withheld"] = withheld
    elif base_rows:
        base = {row["batch"]: row for row in base_rows}
        ratios = {str(row["batch"]): speedup(base[row["batch"]], row, run["confidence"] if run else 0.95)
                  for row in prof["rows"] if row["batch"] in base}
        rec["speedup_vs_torch"] = {b: round(r["value"], 3) for b, r in ratios.items() if r}
        rec["speedup_interval"] = {b: [r["low"], r["high"]] for b, r in ratios.items() if r and r["low"] is not None}


def timing_run(cfg: ProfileConfig, contenders: list[str], machine: dict | None) -> dict:
    """The manifest's record of one interleaved timing run: rows carry its id, and only rows of one run are
    compared."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    return {"id": f"{now.strftime('%Y%m%dT%H%M%S.%f')}-{os.getpid()}", "method": "interleaved rounds",
            "rounds": cfg.rounds, "contenders": contenders, "confidence": 0.95,
            "interval": "paired bootstrap over rounds (2000 resamples, seed 0)", "machine": machine}


# ------------------------------------------------------------------------------------------------
# interleaved rounds
# ------------------------------------------------------------------------------------------------

def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """A B C, B C A, C A B, ...: every contender takes every place in a round equally often."""
    n = len(names)
    return [names[r % n:] + names[:r % n] for r in range(rounds)] if n else []


def _robust_cv(x: np.ndarray) -> float:
    med = float(np.median(x))
    return float(1.4826 * np.median(np.abs(x - med)) / med) if med > 0 else 0.0


def _warm(fn: Callable[[], object], cfg: ProfileConfig) -> list[float]:
    """Warm-up calls (a count, or seconds); their times (ms) size the rounds."""
    times: list[float] = []
    end = time.perf_counter() + cfg.warmup_s if cfg.warmup_s else None
    while True:
        s = time.perf_counter()
        fn()
        times.append((time.perf_counter() - s) * 1000.0)
        if (time.perf_counter() >= end) if end is not None else len(times) >= max(1, cfg.warmup):
            return times


def time_interleaved(calls: dict[str, Callable[[], object]], cfg: ProfileConfig, batch: int,
                     first_ms: dict[str, float] | None = None, meter=None) -> dict[str, dict]:
    """Time every call in ``calls`` in interleaved rounds (order rotated per round) after each has warmed up.

    Each contender gets ``cfg.duration_s`` of timed runs (at least ``min_iterations``), or exactly
    ``cfg.iterations``, split evenly over ``cfg.rounds`` rounds; a round of a cheap contender starts with one
    untimed call (another backend's threads may still hold the cores). Rows carry the usual statistics over
    every timed run, plus each round's median (``round_medians``, what :func:`speedup` resamples) and the
    robust CV of those medians (``round_cv``: the speed drifted between rounds). With an energy ``meter``, each
    contender's timed blocks are its windows of the power readings: rows get ``energy`` (average mW over them, mJ
    per call and per inference) where the meter saw them.
    """
    names = list(calls)
    warm = {n: _warm(calls[n], cfg) for n in names}
    per_call = {n: float(np.median(w)) for n, w in warm.items()}
    rounds = int(cfg.rounds)
    if cfg.iterations is not None:
        rounds = max(1, min(rounds, int(cfg.iterations)))
        counts = {n: [cfg.iterations // rounds + (1 if r < cfg.iterations % rounds else 0) for r in range(rounds)]
                  for n in names}
    else:
        counts = {}
        for n in names:
            k = max(1, int(np.ceil(cfg.duration_s * 1000.0 / rounds / max(per_call[n], 1e-6))))
            k = max(k, int(np.ceil(cfg.min_iterations / rounds)))
            counts[n] = [k] * rounds
    times: dict[str, list[float]] = {n: [] for n in names}
    medians: dict[str, list[float]] = {n: [] for n in names}
    spans: dict[str, list] = {n: [] for n in names}
    for r, order in enumerate(round_orders(names, rounds)):
        for n in order:
            fn, k = calls[n], counts[n][r]
            if k > 2:
                fn()  # settle: not timed
            mine = []
            before = meter.stamp() if meter is not None else None
            for _ in range(k):
                s = time.perf_counter()
                fn()
                mine.append((time.perf_counter() - s) * 1000.0)
            if meter is not None:
                spans[n].append((before, meter.stamp()))
            times[n] += mine
            medians[n].append(float(np.median(mine)))
    rows = {}
    for n in names:
        row = statistics(times[n], batch)
        first = (first_ms or {}).get(n)
        row["first_inference_ms"] = warm[n][0] if first is None else first
        row["rounds"] = rounds
        row["round_medians"] = [round(m, 6) for m in medians[n]]
        row["round_cv"] = _robust_cv(np.asarray(medians[n])) if rounds > 1 else 0.0
        row["unstable"] = row["robust_cv"] > UNSTABLE_CV or row["round_cv"] > UNSTABLE_ROUND_CV
        if meter is not None:
            row["energy"] = _energy_row(meter.energy(spans[n], len(times[n])), batch)
        rows[n] = row
    return rows


def _energy_row(figures: dict | None, batch: int) -> dict | None:
    """A meter's figures for one contender at one batch size, with mJ per inference (per item of the batch)."""
    if not figures:
        return None
    return {**figures, "mj_per_inference": round(figures["mj_per_call"] / batch, 4)}


def speedup(base: dict, row: dict, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict | None:
    """``base``'s median over ``row``'s (how many times faster ``row`` is), with a bootstrap interval.

    Only rows timed in the same interleaved run pair up: round i of both ran in the same minute, so the
    rounds are resampled together (a paired bootstrap, seeded: the same figures give the same interval).
    Returns {value, low, high, confidence, rounds}; low/high are None with fewer than 3 rounds.
    """
    if not base or not row or not row.get("median_ms"):
        return None
    value = base["median_ms"] / row["median_ms"]
    b = np.asarray(base.get("round_medians") or [], dtype=np.float64)
    a = np.asarray(row.get("round_medians") or [], dtype=np.float64)
    out = {"value": round(value, 4), "low": None, "high": None, "confidence": confidence, "rounds": int(a.size)}
    if a.size != b.size or a.size < 3 or np.any(a <= 0):
        return out
    idx = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    ratios = np.median(b[idx], axis=1) / np.median(a[idx], axis=1)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    # The interval is about the same statistic as the point (medians of all runs vs of round medians):
    # widen it to hold the point rather than print a point outside its own interval.
    out["low"], out["high"] = round(float(min(lo, value)), 4), round(float(max(hi, value)), 4)
    return out


def race(calls: dict[str, Callable[[], object]], seconds: float, baseline: str | None = None) -> dict[str, dict]:
    """Quick batch-1 timing of candidates, interleaved in rounds in this process (the build's profiler's
    method, shorter: ``seconds`` per candidate over 5 rounds). Returns name -> {latency_ms_b1, unstable,
    and with ``baseline`` the speed-up over it with its interval (``vs_<baseline>``)}: enough to rank them."""
    cfg = ProfileConfig(batches=(1,), warmup=5, duration_s=seconds, rounds=5, min_iterations=10)
    rows = time_interleaved(calls, cfg, batch=1)
    out = {}
    for name, row in rows.items():
        r = {"latency_ms_b1": round(row["median_ms"], 4), "unstable": row["unstable"]}
        if baseline and name != baseline:
            r[f"vs_{baseline}"] = speedup(rows[baseline], row)
        out[name] = r
    return out


# ------------------------------------------------------------------------------------------------
# how busy is the machine
# ------------------------------------------------------------------------------------------------

def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


def _process_jiffies() -> dict[int, tuple[str, int]]:
    """pid -> (command name, utime + stime jiffies) for every process we can read."""
    out = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.find("(") + 1:raw.rfind(")")]
        fields = raw[raw.rfind(")") + 2:].split()
        try:
            out[pid] = (name, int(fields[11]) + int(fields[12]))
        except (IndexError, ValueError):
            continue
    return out


def _cpu_mhz() -> dict | None:
    """Current and maximum CPU frequency where the kernel shows it (cpufreq), else /proc/cpuinfo's MHz."""
    cur, top = [], []
    base = "/sys/devices/system/cpu"
    try:
        cpus = sorted(d for d in os.listdir(base) if d.startswith("cpu") and d[3:].isdigit())
    except OSError:
        cpus = []
    for c in cpus:
        try:
            with open(f"{base}/{c}/cpufreq/scaling_cur_freq") as f:
                cur.append(int(f.read()) / 1000.0)
            with open(f"{base}/{c}/cpufreq/cpuinfo_max_freq") as f:
                top.append(int(f.read()) / 1000.0)
        except (OSError, ValueError):
            continue
    if cur:
        return {"current_mhz": round(float(np.mean(cur)), 1), "max_mhz": round(float(max(top)), 1) if top else None,
                "source": "cpufreq"}
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.lower().startswith("cpu mhz")]
    except (OSError, ValueError, IndexError):
        mhz = []
    return {"current_mhz": round(float(np.mean(mhz)), 1), "max_mhz": None, "source": "/proc/cpuinfo"} if mhz else None


BUSY_SHARE = 0.25  # other processes using more than this share of the CPUs: timings are not to be trusted


def machine_load(sample_s: float = 0.5, top: int = 5) -> dict:
    """How busy the machine is right now: load average, the CPU time other processes used over
    ``sample_s`` (as a number of CPUs, and the ``top`` busiest of them), and the CPU frequency where readable.
    ``busy`` is True when others used more than a quarter of the CPUs this process may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    info: dict = {"cpus": cpus, "sample_s": sample_s}
    try:
        with open("/proc/loadavg") as f:
            la = f.read().split()
        info["loadavg"] = [float(x) for x in la[:3]]
    except (OSError, ValueError):
        info["loadavg"] = None
    j0, p0, t0 = _cpu_jiffies(), _process_jiffies(), time.perf_counter()
    time.sleep(sample_s)
    j1, p1, t1 = _cpu_jiffies(), _process_jiffies(), time.perf_counter()
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    me = os.getpid()
    others = []
    for pid, (name, jif) in p1.items():
        if pid == me or pid not in p0:
            continue
        used = (jif - p0[pid][1]) / hz / (t1 - t0)
        if used > 0.02:
            others.append({"pid": pid, "name": name, "cpus": round(used, 2)})
    others.sort(key=lambda o: -o["cpus"])
    info["other_processes"] = others[:top]
    if j0 and j1 and j1[1] > j0[1]:
        mine = (p1.get(me, ("", 0))[1] - p0.get(me, ("", 0))[1]) / hz / (t1 - t0)
        total_cpus = os.cpu_count() or cpus
        busy = (j1[0] - j0[0]) / (j1[1] - j0[1]) * total_cpus
        info["others_cpus"] = round(max(0.0, busy - mine), 2)
    else:
        info["others_cpus"] = round(sum(o["cpus"] for o in others), 2) if others else None
    info["frequency"] = _cpu_mhz()
    info["busy"] = bool(info["others_cpus"] is not None and info["others_cpus"] > BUSY_SHARE * cpus)
    return info


def cpu_mark() -> tuple | None:
    """A mark to measure, later, how much CPU other processes took meanwhile (:func:`others_since`)."""
    j = _cpu_jiffies()
    if j is None:
        return None
    t = os.times()
    return j, t.user + t.system, time.perf_counter()


def others_since(mark: tuple | None) -> dict | None:
    """How busy the machine was since ``mark`` (:func:`cpu_mark`): the CPUs other processes used on average
    over the whole span (all CPUs' busy time minus this process's), and whether that makes it busy.
    A hog that starts after the look before timing is seen here."""
    j1 = _cpu_jiffies()
    if mark is None or j1 is None:
        return None
    (j0, mine0, t0), t1 = mark, os.times()
    span = time.perf_counter() - t0
    if span <= 0 or j1[1] <= j0[1]:
        return None
    total_cpus = os.cpu_count() or 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = total_cpus
    system = (j1[0] - j0[0]) / (j1[1] - j0[1]) * total_cpus
    mine = (t1.user + t1.system - mine0) / span
    others = round(max(0.0, system - mine), 2)
    return {"span_s": round(span, 1), "others_cpus": others, "cpus": cpus, "busy": others > BUSY_SHARE * cpus}


def ratios_withheld(run: dict | None) -> str | None:
    """Why a timing run's speed-ups over PyTorch eager are not to be quoted, or None. A busy machine slows
    PyTorch eager far more than ONNX Runtime or OpenVINO (measured: 20x more under two CPU hogs), a bias that
    no interval over the run's rounds can hold, so the ratios of a run timed while others used the CPUs
    (before it, or during it) are withheld; the latencies stay, marked."""
    if not run:
        return None
    before, during = run.get("machine") or {}, run.get("machine_during") or {}
    if before.get("busy") or during.get("busy"):
        used = max(before.get("others_cpus") or 0, during.get("others_cpus") or 0)
        return (f"the machine was busy while timing (other processes used {used} of "
                f"{before.get('cpus') or during.get('cpus')} CPUs)")
    return None


def describe_load(info: dict) -> str:
    """One line for a warning: what else was running."""
    top = ", ".join(f"{o['name']} {o['cpus']:.1f}" for o in info.get("other_processes", [])[:3])
    la = info.get("loadavg")
    return (f"other processes used {info.get('others_cpus')} of {info.get('cpus')} CPUs"
            + (f" ({top})" if top else "") + (f", load average {la[0]:.2f}" if la else ""))


# ------------------------------------------------------------------------------------------------
# per-layer profiles
# ------------------------------------------------------------------------------------------------

def summarize_layers(per_run: list[dict[str, float]], kinds: dict[str, tuple[str, str]], source: str,
                     total_ms: list[float] | None = None, top: int = 25) -> dict:
    """Per-layer times of several runs (layer -> ms, one dict per run) -> the profile the manifest keeps:
    each layer's median time with its operator type and the precision it ran in (``kinds``: layer ->
    (type, precision)), slowest first (``top`` of them), and the same summed by (type, precision)."""
    names = sorted({n for run in per_run for n in run})
    med = {n: float(np.median([run.get(n, 0.0) for run in per_run])) for n in names}
    layer_sum = sum(med.values())
    total = float(np.median(total_ms)) if total_ms else layer_sum
    layers = sorted(({"name": n, "type": kinds[n][0], "precision": kinds[n][1], "ms": round(med[n], 5),
                      "share": round(med[n] / layer_sum, 4) if layer_sum else 0.0} for n in names),
                    key=lambda r: -r["ms"])
    by_type: dict[tuple[str, str], dict] = {}
    for r in layers:
        t = by_type.setdefault((r["type"], r["precision"]), {"type": r["type"], "precision": r["precision"],
                                                            "ms": 0.0, "count": 0})
        t["ms"] += r["ms"]
        t["count"] += 1
    types = sorted(by_type.values(), key=lambda r: -r["ms"])
    for t in types:
        t["ms"] = round(t["ms"], 5)
        t["share"] = round(t["ms"] / layer_sum, 4) if layer_sum else 0.0
    return {"source": source, "runs": len(per_run), "total_ms": round(total, 5), "layers_ms": round(layer_sum, 5),
            "layer_count": len(layers), "layers": layers[:top], "by_type": types}
