"""``edgeopt sweep SWEEP.toml``: every model x target x precision of a sweep file built as its own job (Ray tasks,
or one after another), each model exported once for all its jobs, boards' device jobs on the nodes that offer
them, and one comparison report with ``select`` applied per model.

SWEEP-OUT/
  jobs/<model>/<target>-<precision>/   one build's OUT (manifest.json ...), written atomically when the job ends
  sweep.json                           what ran where, attempts, failures, per-model selection, device results
  progress.json                        while it runs: the jobs running now (attempt, pid, node)
  report/report.md, report/report.html the comparison report
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from edgeopt import __version__
from edgeopt.config.budgets import Budgets
from edgeopt.core.fsutil import staged_dir, write_json_atomic
from edgeopt.core.lock import out_lock
from edgeopt.errors import EdgeoptError, UserInputError
from edgeopt.report.progress import Reporter
from edgeopt.scale.executor import executor
from edgeopt.scale.jobs import pack, unpack
from edgeopt.scale.plan import Job, ModelEntry, Sweep, load_sweep

SUMMARY = "sweep.json"
PROGRESS = "progress.json"
JOBS = "jobs"


def _entry(m: ModelEntry) -> dict:
    return {"name": m.name, "recipe": m.recipe, "base_dir": m.base_dir, "recipe_path": m.recipe_path}


def _job_dir(out: Path, job: Job) -> Path:
    return out / JOBS / job.model / f"{job.target}-{job.precision}"


def check_sweep_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"Output {out} exists and is a file.", "Choose another -o/--output folder.")
    if out.is_dir() and any(out.iterdir()) and not (out / SUMMARY).is_file() and not (out / JOBS).is_dir() \
            and not force:
        raise UserInputError(f"Output folder {out} is not empty and is not a sweep's output.",
                             "Choose another -o/--output folder, or pass --force.")


def default_output(path: str | Path) -> Path:
    return Path(f"{load_sweep(path).name}-sweep")


def sweep(path: str | Path, output: str | Path | None = None, address: str | None = None, sequential: bool = False,
          force: bool = False, reporter: Reporter | None = None, cpus: int | None = None) -> dict:
    """Run the sweep file at ``path``; returns the summary written to OUT/sweep.json. ``cpus``: the CPUs of the
    embedded local Ray (default: this machine's)."""
    reporter = reporter or Reporter()
    plan = load_sweep(path)  # every recipe checked before anything runs
    out = Path(output or f"{plan.name}-sweep")
    check_sweep_output(out, force)
    (out / "logs").mkdir(parents=True, exist_ok=True)  # third-party output of the run: logs/build.log
    with out_lock(out, "sweep"):
        ex = executor(address, sequential, plan.retries, reporter, cpus)
        try:
            for f in plan.farm:  # a board nobody offers is a mistake to hear before an hour of builds
                ex.check_board(f.board)
            return _run(plan, out, ex, reporter)
        finally:
            ex.close()


def _run(plan: Sweep, out: Path, ex, reporter: Reporter) -> dict:
    start = time.monotonic()
    nodes = ex.nodes()
    reporter.step(f"Sweep {plan.name}: {len(plan.jobs)} job(s) over {len(plan.models)} model(s) "
                  f"({ex.mode}{f', {len(nodes)} node(s)' if ex.mode == 'ray' else ''})")
    exports, shared_by = {}, {}
    for m in plan.models:
        shared_by.setdefault(m.export_key, []).append(m.name)
        if m.export_key not in exports:
            exports[m.export_key] = ex.export(_entry(m))
    handles = {j.id: ex.build(_entry(plan.model(j.model)), {"id": j.id, "target": j.target, "precision": j.precision},
                              exports[plan.model(j.model).export_key], plan.profile, _previous(out, j))
               for j in plan.jobs}
    by_id = {j.id: j for j in plan.jobs}
    records: dict[str, dict] = {}
    header = {"nodes": nodes, "retries": plan.retries, "profile": plan.profile}

    def poll():
        running = {jid: a[-1] | {"attempt": len(a)} for jid, a in ex.snapshot().items() if jid not in records}
        write_json_atomic(out / PROGRESS, {"running": running, "finished": sorted(records),
                                           "pending": len(plan.jobs) - len(records) - len(running)})

    try:
        for jid, res, err in ex.results(handles, poll):
            records[jid] = _place(out, by_id[jid], res, err)
            r = records[jid]
            reporter.info(f"{jid}: {r['status']}" + (f" ({r.get('artifact_status')})" if r.get("artifact_status")
                                                     else f": {r.get('problem')}" if r.get("problem") else ""))
    except KeyboardInterrupt:  # every finished job's OUT is in place; the summary says which were cut off
        ex.cancel([h for jid, h in handles.items() if jid not in records])
        try:
            _finish(plan, out, ex, records, [], {**header, "interrupted": True}, start)
        except Exception:  # noqa: BLE001 - Ray may already be going down; the OUTs are what matters
            pass
        raise
    header["exports"] = _exports(ex, exports, shared_by)
    return _finish(plan, out, ex, records, _farm(plan, out, ex, records, reporter), header, start)


def _previous(out: Path, job: Job) -> bytes | None:
    """The job's OUT from an earlier run of this sweep: the build reuses what is still valid in it."""
    folder = _job_dir(out, job)
    return pack(folder) if (folder / "manifest.json").is_file() else None


def _place(out: Path, job: Job, res: dict | None, err: str | None) -> dict:
    """Write one job's OUT into the sweep folder in one rename; its record for the summary."""
    rec = {"id": job.id, "model": job.model, "target": job.target, "precision": job.precision}
    if res is None:
        return {**rec, "status": "failed", "problem": f"the job's worker died on every attempt: {err}",
                "fix": "Look at the Ray logs of the node (/tmp/ray/session_latest/logs), or rerun the sweep."}
    final = _job_dir(out, job)
    if res.get("out"):
        with staged_dir(final) as stage:
            unpack(res["out"], stage)
        rec["out"] = final.relative_to(out).as_posix()
    return {**rec, **{k: v for k, v in res.items() if k != "out"}}


def _exports(ex, exports: dict, shared_by: dict) -> list[dict]:
    rows = []
    for key, res, err in ex.results(exports):
        r = res or {"status": "failed", "problem": err}
        rows.append({"key": key, "models": shared_by[key], "status": r.get("status"), "problem": r.get("problem"),
                     "seconds": r.get("seconds"), "where": r.get("where")})
    return rows


def _farm(plan: Sweep, out: Path, ex, records: dict, reporter: Reporter) -> list[dict]:
    """Each board's jobs on the node that offers it, one at a time; results also land in the jobs' manifests."""
    from edgeopt.device.remote.jobs import record_device_results

    handles, rows = {}, []
    for n, f in enumerate(plan.farm):
        for model in f.models:
            outs = {jid: pack(out / r["out"]) for jid, r in records.items()
                    if r["model"] == model and r.get("status") == "ok" and r.get("out")}
            if outs:
                reporter.step(f"Board {f.board}: {model} ({len(outs)} job outputs)")
                handles[(n, model)] = ex.farm(f.board, outs, f.batches, f.duration_s)
    for (n, model), res, err in ex.results(handles):
        board = plan.farm[n].board
        if res is None:
            rows.append({"board": board, "model": model, "status": "failed", "problem": err})
            continue
        for jid, arts in res["results"].items():
            record_device_results(out / records[jid]["out"], {"hosts": {board: {"fingerprint": res["fingerprint"],
                                                                                 "artifacts": arts}}}, "profiled")
            for aid, a in arts.items():
                rows.append({"board": board, "model": model, "job": jid, "artifact": aid, "where": res["where"],
                             "status": "failed" if "error" in a else a.get("status"),
                             "problem": (a.get("error") or {}).get("problem"), "latency": a.get("latency")})
    return rows


def _finish(plan: Sweep, out: Path, ex, records: dict, farm: list, header: dict, start: float) -> dict:
    attempts = ex.snapshot()
    jobs = []
    for j in plan.jobs:
        r = dict(records.get(j.id) or {"id": j.id, "model": j.model, "target": j.target, "precision": j.precision,
                                      "status": "cancelled" if header.get("interrupted") else "failed"})
        tried = attempts.get(j.id, [])
        r["attempts"] = len(tried)
        if len(tried) > 1:
            r["retried"] = (f"attempt {len(tried) - 1} (pid {tried[-2].get('pid')} on {tried[-2].get('host')}) "
                            f"did not finish: its worker died, and Ray ran the job again")
        jobs.append(r)
    return _write(out, plan, ex, {**header, "jobs": jobs, "models": _select(plan, out, records), "farm": farm,
                                  "seconds": round(time.monotonic() - start, 1)})


def _write(out: Path, plan: Sweep, ex, result: dict) -> dict:
    from edgeopt.report.sweep import write_sweep_report

    summary = {"name": plan.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "edgeopt_version": __version__, "mode": ex.mode, "address": ex.address, **result}
    write_json_atomic(out / SUMMARY, summary)
    (out / PROGRESS).unlink(missing_ok=True)
    summary["report"] = write_sweep_report(out, summary)
    return summary


def _select(plan: Sweep, out: Path, records: dict) -> dict:
    """``select`` per model over every artifact its jobs built (latencies of different jobs come from different
    timing runs: the report says so)."""
    from edgeopt.ship.select import select_manifest

    budgets = plan.budgets or Budgets()
    res = {}
    for m in plan.models:
        manifests = [json.loads((out / r["out"] / "manifest.json").read_text()) for r in records.values()
                     if r["model"] == m.name and r.get("out") and (out / r["out"] / "manifest.json").is_file()]
        if not manifests:
            res[m.name] = {"selected": None, "why": "no job of this model finished"}
            continue
        merged = {**manifests[0], "artifacts": [a for x in manifests for a in x.get("artifacts", [])]}
        try:
            s = select_manifest(merged, budgets)
            res[m.name] = {"selected": s["selected"], "budgets": asdict(budgets), "artifact": s.get("artifact")}
        except EdgeoptError as exc:
            res[m.name] = {"selected": None, "why": exc.problem.splitlines()[0]}
    return res
