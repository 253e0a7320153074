"""OpenVINO runtime settings chosen by measurement at build time: streams for feeds of several items.

The latency settings (one stream, every thread on one request) are what a batch-1 call wants. A batch of
several items may go faster split over several streams (the THROUGHPUT hint: the device picks the streams and
the threads per stream), one request per stream run at once. Both are timed on the same batch in the same
interleaved rounds; the streams win only when measurably faster, and the choice, its reason and the figures
go into the artifact (``meta.streams_choice``; ``meta.batch_runtime_config`` when streams won, which the
runner then uses for every feed of more than one item).
"""

from __future__ import annotations

NOISE = 0.05  # the streams must be more than this much faster, with the interval of the speed-up above 1
BATCH = 8  # the batch the settings are timed at (the model's largest if smaller)


def choose_streams(model, req, config: dict) -> dict | None:
    """Race the artifact's settings (``config``) against the THROUGHPUT hint's streams at batch ``BATCH``.
    None where there is nothing to choose: no batch axis, a largest batch of 1, a device that gives one
    stream, a target with a hint of its own (THROUGHPUT), or target option ``measure_runtime_settings = false``."""
    if not req.options.get("measure_runtime_settings", True) or not req.spec.batch_dim:
        return None
    if str(config.get("PERFORMANCE_HINT", "LATENCY")).upper() != "LATENCY":
        return None  # the target asks for its own streams: they stand
    batch = min(BATCH, req.spec.batch_range()[1])
    if batch < 2:
        return None
    import numpy as np

    from edgeopt.backends.openvino.runner import OvRunner
    from edgeopt.core.profile import ProfileConfig, speedup, time_interleaved

    tput = {k: v for k, v in config.items() if k != "NUM_STREAMS"} | {"PERFORMANCE_HINT": "THROUGHPUT"}
    one = OvRunner(model, req.spec, req.target.device, config)
    many = OvRunner(model, req.spec, req.target.device, config, batch_config=tput)
    try:
        one.activate()
        many.activate()
        if many.streams < 2:
            return None
        n = many.streams
        feed = req.spec.random_feed(np.random.default_rng(0), batch=batch)
        a, b = one.infer(feed, check=False), many.infer(feed, check=False)
        if many.streams < 2 or any(a[k].shape != b[k].shape or not np.allclose(a[k], b[k], rtol=1e-3, atol=1e-4)
                                   for k in a):
            return {"setting": "streams for batch > 1", "batch": batch, "chosen": "1 stream", "config": None,
                    "figures": {}, "why": f"the outputs of the batch split over {n} streams differ from one "
                                          "request's (outputs that do not follow the batch): not split"}
        seconds = getattr(getattr(req, "judging", None), "compression", None)
        seconds = getattr(seconds, "timing_s", None) or 0.4
        cfg = ProfileConfig(batches=(batch,), warmup=2, duration_s=seconds, rounds=5, min_iterations=5)
        names = ("1 stream", f"{n} streams")
        rows = time_interleaved({names[0]: one.timed_call(feed), names[1]: many.timed_call(feed)}, cfg, batch)
    finally:
        one.close()
        many.close()
    s = speedup(rows[names[0]], rows[names[1]])
    won = s["value"] > 1 + NOISE and (s["low"] or 0) > 1.0
    figs = {k: {"median_ms": round(r["median_ms"], 4), "throughput_per_s": round(r["throughput_per_s"], 2),
                "unstable": r["unstable"]} for k, r in rows.items()}
    iv = f" ({s['low']:.2f}-{s['high']:.2f})" if s["low"] is not None else ""
    return {"setting": "streams for batch > 1", "batch": batch, "chosen": names[1] if won else names[0],
            "config": tput if won else None, "figures": figs, "vs_1_stream": s,
            "why": (f"batch {batch} in the same interleaved rounds: 1 stream {rows[names[0]]['median_ms']:.3f} ms, "
                    f"{n} streams (THROUGHPUT hint, one request per stream) {rows[names[1]]['median_ms']:.3f} ms "
                    f"= {s['value']:.2f}x{iv}; the streams are taken when more than {NOISE:.0%} faster with "
                    "the interval above 1x")}
