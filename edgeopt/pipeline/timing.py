"""The profile stage: the PyTorch baseline and every ok artifact timed in interleaved rounds in one
run (speed-ups only from that run), and the flags on artifacts slower than torch eager or their FP32 sibling.
"""

from __future__ import annotations

import time
from edgeopt.core.artifact import artifact_id
from edgeopt.core.manifest import Manifest
from edgeopt.core.records import Status
from edgeopt.pipeline.context import BuildContext
from edgeopt.core.energy import note_power
from edgeopt.pipeline.judge import evaluate, torch_infer


BASELINE = "torch-eager-fp32"


def stage_profile(ctx: BuildContext, manifest: Manifest, records: list[dict]) -> None:
    """Time the PyTorch baseline and every artifact with status ok in interleaved rounds in this process,
    after a look at how busy the machine is; speed-ups come from this run only, with their intervals."""
    from edgeopt.backends.artifact import profile_together
    from edgeopt.core.profile import (cpu_mark, describe_load, machine_load, others_since, ratios_withheld,
                                      record_profile, timing_run)

    cfg = ctx.recipe.profile
    batches = [b for b in cfg.batches if _batch_ok(ctx.model.spec, b)]
    real = ctx.data.evaluation.arrays if ctx.data.evaluation is not None else None
    ok = [rec for rec in records if rec["status"] == Status.OK]
    with_baseline = cfg.baseline and ctx.model.module is not None
    load = machine_load()
    if load["busy"]:
        ctx.reporter.warn(f"The machine is busy: {describe_load(load)}. Timings will be noisy, and speed-ups "
                          "over PyTorch eager will not be shown (a busy machine slows it far more than the "
                          "runtimes); rerun `edgeopt build` on a quiet machine for them.")
    names = ([BASELINE] if with_baseline else []) + [rec["id"] for rec in ok]
    run = timing_run(cfg, names, load)
    manifest.data["timing"] = run
    ctx.reporter.step(f"Timing {', '.join(names)} in {cfg.rounds} interleaved rounds at batch "
                      f"{','.join(map(str, batches))}")
    with (_torch_baseline(ctx, batches, real) if with_baseline else _nothing()) as base:
        extra = {BASELINE: base["prepared"]} if base else {}
        mark = cpu_mark()
        results, failed = profile_together({rec["id"]: ctx.out / rec["id"] for rec in ok}, batches, cfg,
                                           cfg.threads, real, extra, log=ctx.reporter.info)
        run["machine_during"] = others_since(mark)
    note_power(run, results, ctx.reporter.warn)
    if with_baseline and not load["busy"] and ratios_withheld(run):
        ctx.reporter.warn(f"The machine got busy while timing: {ratios_withheld(run)}. Speed-ups over PyTorch "
                          "eager are not shown; rerun `edgeopt build` on a quiet machine for them.")
    baseline = None
    if base:
        prof = results[BASELINE]
        baseline = {"name": BASELINE, "torch": base["torch"], "threads": prof["threads"], "latency": prof["rows"],
                    "peak_rss_mb": prof["peak_rss_mb"], "accuracy": base["accuracy"], "timing_run": run["id"]}
        manifest.data["baseline"] = baseline
        _warn_unstable(ctx, BASELINE, prof["rows"])
    for rec in ok:
        if rec["id"] in failed:
            ctx.reporter.warn(f"{rec['id']}: not timed: {failed[rec['id']]}")
            for k in ("latency", "speedup_vs_torch", "speedup_interval", "timing_run"):
                rec.pop(k, None)
            continue
        record_profile(rec, results[rec["id"]], run, baseline["latency"] if baseline else None)
        _warn_unstable(ctx, rec["id"], rec["latency"])


def _warn_unstable(ctx: BuildContext, name: str, rows: list[dict]) -> None:
    unstable = [row["batch"] for row in rows if row.get("unstable")]
    if unstable:
        ctx.reporter.warn(f"{name}: timings unstable at batch {','.join(map(str, unstable))} (robust CV "
                          f"{max(row['robust_cv'] for row in rows) * 100:.0f}%, between rounds "
                          f"{max(row.get('round_cv', 0) for row in rows) * 100:.0f}%); is the machine busy?")


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def flag_slow(records: list[dict]) -> None:
    """An artifact slower than PyTorch eager (timed in the same run), and an INT8 artifact slower than its FP32
    sibling on the same target, are flagged, never shipped silently."""
    from edgeopt.report.tables import latency_at

    by_id = {r["id"]: r for r in records}
    for rec in records:
        rec.pop("flags", None)  # a reused record's flags came from older timings: judge the new ones only
        if rec["status"] != Status.OK:
            continue
        intervals = rec.get("speedup_interval") or {}
        for b, x in sorted((rec.get("speedup_vs_torch") or {}).items(), key=lambda kv: int(kv[0])):
            if x < 1.0:
                ci = intervals.get(b)
                rec.setdefault("flags", []).append(
                    f"slower than torch eager at batch {b} ({x:.2f}x" + (f", {ci[0]:.2f}-{ci[1]:.2f}" if ci else "") + ")")
        sibling = by_id.get(artifact_id(rec["target"], "fp32"))
        if rec["precision"] != "int8" or not sibling or sibling["status"] != Status.OK:
            continue
        for b in sorted({row["batch"] for row in rec.get("latency") or []}):
            mine, theirs = latency_at(rec, b), latency_at(sibling, b)
            if mine and theirs and mine["median_ms"] > theirs["median_ms"]:
                rec.setdefault("flags", []).append(
                    f"slower than fp32 sibling at batch {b} ({mine['median_ms']:.3f} vs {theirs['median_ms']:.3f} ms)")


def _batch_ok(spec, b: int) -> bool:
    lo, hi = spec.batch_range()
    return lo <= b <= hi


class _torch_baseline:
    """The PyTorch eager model as a timing contender (torch threads as the profile asks, inference mode for the
    whole run) and its accuracy on the evaluation data."""

    def __init__(self, ctx: BuildContext, batches, real):
        self.ctx, self.batches, self.real = ctx, batches, real

    def __enter__(self) -> dict:
        import torch

        from edgeopt.core.profile import feed_for_batch, peak_rss_mb, reset_peak_rss, rss_mb
        from edgeopt.data.torchfeed import to_torch

        ctx = self.ctx
        # the baseline row: the user's model as trained (before pruning; an adapter unmerged)
        module = ctx.pruned.original_module if ctx.pruned is not None else ctx.model.reference_module()
        if ctx.recipe.profile.threads:
            torch.set_num_threads(ctx.recipe.profile.threads)
        judging = ctx.judging
        accuracy = evaluate(torch_infer(module, ctx.model.spec), judging) if judging.outputs is not None else None
        self._mode = torch.inference_mode()
        self._mode.__enter__()
        reset_peak_rss()
        rss0 = rss_mb()
        calls, first = {}, {}
        for b in self.batches:
            args = to_torch(feed_for_batch(ctx.model.spec, b, self.real), ctx.model.spec)
            calls[b] = (lambda a: lambda: module(*a))(args)
            t0 = time.perf_counter()
            calls[b]()
            first[b] = (time.perf_counter() - t0) * 1000.0
        prepared = {"calls": calls, "first_ms": first, "load_s": None, "threads": torch.get_num_threads(),
                    "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0}
        return {"prepared": prepared, "torch": torch.__version__, "accuracy": accuracy}

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False
