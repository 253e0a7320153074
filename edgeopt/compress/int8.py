"""The INT8 stage, written once for every backend (as NNCF's algorithms own their control flow and ask a small
backend object for the framework's steps):

candidates -> cached calibration -> quantize -> time against FP32 -> judge by the task metric -> recovery steps
when the budget is missed -> pick -> record.

The backend hands :func:`run_int8` a quantizer (:mod:`edgeopt.compress.quantizer`); recovery steps are
:mod:`edgeopt.compress.recovery`'s; every candidate is scored by :func:`edgeopt.compress.guard.score`.
Nothing is assumed: every candidate is timed and scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgeopt.compress import failure, head
from edgeopt.compress.failure import clip
from edgeopt.compress.cache import calibration_key, lookup, notes_of, store
from edgeopt.compress.common import calibration_feeds
from edgeopt.compress.guard import score, vs_text
from edgeopt.compress.judging import Judging, judging_of
from edgeopt.compress.quantizer import Candidate, Skip
from edgeopt.core.profile import race
from edgeopt.core.tasks import describe
from edgeopt.errors import CompileError

NOISE = 0.05  # quick timings closer than this are a tie: the more accurate candidate wins it
FEEDS_TRIED = 4  # calibration samples a failure's diagnosis runs


@dataclass
class LoopState:
    """What the loop knows, handed to each recovery step."""

    quantizer: Any
    judging: Judging
    feeds: list[dict]  # the calibration feeds (the one sample budget: [compression] subset_size)
    onnx_key: str
    calibration_sha256: str | None
    log: Callable[[str], None]
    feed1: dict = field(default_factory=dict)  # what candidates are timed on
    results: list[dict] = field(default_factory=list)  # every candidate tried so far, as recorded
    models: dict = field(default_factory=dict)  # candidate name -> its quantized model (judged ones)
    choices: dict = field(default_factory=dict)  # candidate name -> its runtime choice (quantizer.choose)
    fp32: dict | None = None  # the FP32 model's quick timing

    @property
    def within(self) -> list[dict]:
        return [r for r in self.results if r.get("within_budget")]

    def judge(self, infer: Callable[[dict], dict]) -> dict:
        return score(infer, self.judging)

    def make(self, name: str) -> Candidate | None:
        """One candidate by name through the calibration cache (:func:`make`): what recovery steps call."""
        return make(self, name)

    def fail(self, name: str, message: str, full: str | None = None, path=None, feeds: list | None = None) -> dict:
        """Record a candidate that could not be made or run, with the nodes the error names explained."""
        why, where = failure.with_nodes(message, path or self.quantizer.onnx_path, full, feeds)
        r = {"candidate": name, "error": why, "within_budget": False, "why": why,
             **({"nodes": where["nodes"]} if where.get("nodes") else {})}
        self.log(f"int8 candidate {name}: {why}")
        self.results.append(r)
        return r


@dataclass
class Int8Request:
    """What :func:`run_int8` reads of a request, for callers without a CompileRequest (device packages):
    a CompileRequest has the same attributes."""

    onnx_path: Any
    spec: Any
    calibration: Any
    judging: Judging | None = None
    model_kind: str = "generic"
    target: Any = None
    log: Callable[[str], None] = print
    onnx_sha256: str | None = None

    def onnx_key(self) -> str:
        from edgeopt.core.fsutil import onnx_digest

        return self.onnx_sha256 or onnx_digest(self.onnx_path)


def run_int8(quantizer, req, steps=None) -> tuple[Any, dict]:
    """INT8 for ``req`` (a CompileRequest: onnx_path, onnx_key(), spec, model_kind, calibration, judging, log)
    through ``quantizer``. Returns (the winner's model, ``{"int8": record}``); raises CompileError when no
    candidate meets the accuracy budget. ``steps``: recovery steps (default ``recovery.DEFAULT_STEPS``)."""
    from edgeopt.compress.recovery import DEFAULT_STEPS

    judging = judging_of(req)
    cfg = judging.compression
    feeds = calibration_feeds(req, cfg.subset_size)
    spec = req.spec
    state = LoopState(quantizer, judging, feeds, req.onnx_key(), getattr(req.calibration, "sha256", None), req.log,
                      spec.random_feed(np.random.default_rng(0), batch=1 if spec.batch_dim else None))
    names = tuple(quantizer.candidates(judging.model_kind, cfg))
    if quantizer.timed:  # every candidate raced in the same rounds
        measure(state, [c for c in (make(state, n) for n in names) if c is not None])
    else:  # in order, until one is within budget
        for n in names:
            c = make(state, n)
            measure(state, [c] if c is not None else [])
            if state.within:
                break
    state.results.sort(key=lambda r: names.index(r["candidate"]) if r["candidate"] in names else len(names))
    for step in DEFAULT_STEPS if steps is None else steps:
        if state.within:
            break
        if step.applies(state):
            measure(state, step.run(state))
    return finish(state)


def make(state: LoopState, name: str) -> Candidate | None:
    """One candidate through the calibration cache: from the cache, or quantized (and stored); None when it
    was skipped or failed (its result is recorded)."""
    q, j = state.quantizer, state.judging
    cfg = j.compression
    keep_head = head.wanted_for(j.model_kind, getattr(j.task, "type", None), cfg.float_head)
    extra = tuple(cfg.float_nodes or ())
    params = {"subset": len(state.feeds), "kind": j.model_kind, **q.params(name)}
    if keep_head or extra:
        params["float_head"] = head.VERSION
    if extra:
        params["float_nodes"] = list(extra)
    key = calibration_key(state.onnx_key, state.calibration_sha256, f"{q.name}:{name}", params, q.versions)
    hit = lookup(key)
    if hit is not None:
        state.log(f"int8 candidate {name}: reusing calibration from the cache ({key[:12]})")
        return Candidate(name, q.load(hit), {"calibration_cache": "hit", **notes_of(hit)})
    try:
        exclude = q.float_nodes(name, keep_head, extra) if keep_head or extra else []
        t0 = time.monotonic()
        model, notes = q.quantize(name, state.feeds, exclude)
        # what quantizing it cost (a cache hit keeps the figure of the run that made it)
        notes = {**notes, "quantize_s": round(time.monotonic() - t0, 1)}
    except Skip as s:
        why = f"skipped: {s}"
        state.results.append({"candidate": name, "skipped": why, "within_budget": False, "why": why})
        return None
    except Exception as exc:  # noqa: BLE001 - one failing candidate does not stop the others
        state.fail(name, f"{q.failure}: {type(exc).__name__}: {clip(exc)}", str(exc), feeds=state.feeds[:FEEDS_TRIED])
        return None
    if keep_head or extra:
        notes["float_head"] = head.summary(exclude)
    store(key, lambda folder: q.save(model, folder), notes)
    return Candidate(name, model, {"calibration_cache": "miss", **notes})


def measure(state: LoopState, cands: list[Candidate]) -> None:
    """Time ``cands`` together with FP32 (and their runtime variants) in interleaved rounds, then judge each;
    a candidate that cannot load, run or be scored fails alone, saying why."""
    q, cfg = state.quantizer, state.judging.compression
    if not cands:
        return
    runners: dict = {}
    try:
        calls = {}
        if q.timed:
            runners["fp32"] = q.open_fp32()
            runners["fp32"].activate()
            calls["fp32"] = runners["fp32"].timed_call(state.feed1)
        live = []
        for c in cands:
            try:
                runners[c.name] = q.open(c.model)
                runners[c.name].activate()
                calls[c.name] = runners[c.name].timed_call(state.feed1)
                for label, v in (q.variants(c.name, c.model, runners[c.name]) if q.timed else {}).items():
                    runners[label] = v
                    v.activate()
                    calls[label] = v.timed_call(state.feed1)
                live.append(c)
            except Exception as exc:  # noqa: BLE001 - each framework raises its own types
                state.fail(c.name, f"running it failed: {type(exc).__name__}: {clip(exc, 200)}", str(exc),
                           path=_path_of(c.model))
        timed = race(calls, cfg.timing_s, baseline="fp32") if q.timed and live else {}
        if "fp32" in timed and state.fp32 is None:
            state.fp32 = {"candidate": "fp32", **timed["fp32"]}
        for c in live:
            try:
                judged(state, c, timed, runners)
            except Exception as exc:  # noqa: BLE001 - scoring runs the model on real data
                state.fail(c.name, f"running it failed: {type(exc).__name__}: {clip(exc, 200)}", str(exc),
                           path=_path_of(c.model))
    finally:
        for r in runners.values():
            r.close()


def _path_of(model):
    from pathlib import Path

    return model if isinstance(model, Path) else None


def judged(state: LoopState, c: Candidate, timed: dict, runners: dict) -> None:
    q = state.quantizer
    r, label, choice = {"candidate": c.name, **timed.get(c.name, {})}, c.name, None
    if q.timed and hasattr(q, "choose"):
        choice, label = q.choose(c.name, timed)
    if c.recovered:
        r.update(q.describe(c.model))
    score = state.judge(lambda feed, run=runners[label]: run.infer(feed, check=False))
    exact = q.exact(c.name, timed) if not score["within_budget"] and hasattr(q, "exact") else None
    if exact and exact[1] != label:
        # the faster setting was chosen for speed before judging: its precision may be what loses the accuracy
        second = state.judge(lambda feed, run=runners[exact[1]]: run.infer(feed, check=False))
        if second["within_budget"]:
            choice, label, lost, score = exact[0], exact[1], _fig(score), second
            choice["why"] += f"; but over budget with the faster setting ({lost}), within with this one"
    if choice is not None:
        state.choices[c.name] = choice
        state.log(f"int8 {c.name} runtime: {choice['setting']} {choice['chosen']}: {choice['why']}")
    if label != c.name:
        r.update({k: v for k, v in timed[label].items() if k != "unstable"})
    r.update(score)
    r.update(c.notes)
    if c.recovered and not q.int8_left(c.model):
        r.update(within_budget=False, why=f"{c.name} kept every layer in float: no INT8 left")
    state.models[c.name] = c.model
    state.results.append(r)
    fp32 = state.fp32
    timing = (f"{r['latency_ms_b1']:.3f} ms at batch 1 (fp32 {fp32['latency_ms_b1']:.3f}; {vs_text(r)}), "
              if fp32 and "latency_ms_b1" in r else "")
    state.log(f"int8 candidate {c.name}: {timing}{_fig(r)}" + ("" if r["within_budget"] else f" -- over budget: {r['why']}"))


def _fig(r: dict) -> str:
    parts = [describe(r["accuracy"])] if "accuracy" in r else []
    if r.get("cosine") is not None:
        parts.append(f"cosine {r['cosine']:.4f}")
    return ", ".join(parts)


def pick(within: list[dict]) -> dict:
    """The fastest candidate, unless another is within timing noise of it and more accurate."""
    fastest = min(r["latency_ms_b1"] for r in within)
    close = [r for r in within if r["latency_ms_b1"] <= fastest * (1 + NOISE)]
    return max(close, key=lambda r: ((r.get("accuracy") or {}).get("value", 0.0), r.get("cosine") or 0.0,
                                     -r["latency_ms_b1"]))


class NothingMeetsBudget(CompileError):
    """The one error of the INT8 stage: no candidate (recovered ones included) met the accuracy budget."""


def finish(state: LoopState) -> tuple[Any, dict]:
    q, results = state.quantizer, state.results
    within = state.within
    if not within:
        judged_any = any("within_budget" in r and "error" not in r and "skipped" not in r for r in results)
        raise NothingMeetsBudget(
            f"No INT8 recipe for {q.title} meets the accuracy budget: "
            + "; ".join(f"{r['candidate']}: {r.get('why') or r.get('error')}" for r in results),
            "Raise [compression] max_drop (or lower min_cosine), give more or better calibration data, or ship fp32."
            if judged_any else "Follow the hint after each recipe's error, or ship a float precision for this backend.")
    timed = q.timed and all("latency_ms_b1" in r for r in within)
    win = pick(within) if timed else within[0]
    others = [r["candidate"] for r in within if r is not win]
    if timed:
        why = (f"fastest at batch 1 of the candidates within budget ({', '.join([win['candidate'], *others])}; "
               f"timings within {NOISE:.0%} count as a tie, won by the more accurate)")
        if state.fp32 and win["latency_ms_b1"] >= state.fp32["latency_ms_b1"]:
            why += (f"; note: not faster than fp32 here ({win['latency_ms_b1']:.3f} vs "
                    f"{state.fp32['latency_ms_b1']:.3f} ms)")
    else:
        why = "the first candidate within budget, in order (not timed here: it runs on another device)"
    rec = {"recipe": win["candidate"], "why": why, "candidates": results}
    if state.fp32:
        rec["fp32_quick"] = state.fp32
    rec.update(q.record())
    if hasattr(q, "choose"):
        rec["runtime_choice"] = state.choices.get(win["candidate"])
    rec.update(calibration_samples=len(state.feeds), compression=state.judging.compression.to_dict())
    return state.models[win["candidate"]], {"int8": rec}
