"""The Python functions behind ``edgeopt export``, ``compile`` and ``profile`` (``build`` is in build.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgeopt.pipeline.context import BuildContext
from edgeopt.pipeline.export import stage_export
from edgeopt.pipeline.intake import complete_inputs, load_data, read_from_model_note, stage_intake, with_model_task
from edgeopt.pipeline.record import check_output, prepare_output
from edgeopt.errors import ArtifactLoadError, UserInputError
from edgeopt.backends import host_info
from edgeopt.core.lock import out_lock
from edgeopt.core.manifest import Manifest, load_consistent, load_manifest, mark_incomplete
from edgeopt.core.energy import note_power
from edgeopt.core.profile import ProfileConfig
from edgeopt.config.recipe import Recipe, load_recipe
from edgeopt.report.progress import Reporter


def _recipe(recipe) -> Recipe:
    from edgeopt.example import example_recipe

    if recipe is None:
        return example_recipe()
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def export(recipe=None, output: str | Path = "edgeopt-out", force: bool = False,
           reporter: Reporter | None = None) -> dict:
    """Export the recipe's model to OUT/export/model.onnx with its parity record and reference outputs."""
    r = complete_inputs(_recipe(recipe))
    out = Path(output)
    reporter = reporter or Reporter()
    if (note := read_from_model_note(r)) is not None:
        reporter.info(note)
    check_output(out, force)
    manifest = Manifest.new(r, host_info())
    ctx = BuildContext(recipe=r, out=out, reporter=reporter, generation=manifest.generation, nms=_export_nms(r))
    ctx = replace(ctx, data=load_data(ctx, manifest, calibrate=r.pruning is not None))
    ctx = with_model_task(replace(ctx, model=stage_intake(ctx)))
    with out_lock(out, "export"):
        prepare_output(out, force)
        previous = load_manifest(out, missing_ok=True)
        mark_incomplete(out)
        stage_export(ctx, manifest, previous)
        if previous and (previous.data.get("export") or {}).get("sha256") == manifest.data["export"].get("sha256"):
            manifest.data["artifacts"] = previous.data.get("artifacts", [])  # still valid for the same ONNX
        manifest.write(out)
    return manifest.data


def _export_nms(r: Recipe) -> dict | None:
    """Where a detector's NMS goes in ``edgeopt export``: as the build of the recipe's targets would put it (the
    same ONNX, reused by the build); NMS in the graph when the recipe names no target that can be planned."""
    from edgeopt.errors import EdgeoptError
    from edgeopt.pipeline.plan import detector_nms, plan_artifacts

    if not r.targets:
        return None
    try:
        return detector_nms(plan_artifacts(r))
    except EdgeoptError:
        return None


def compile(recipe=None, output: str | Path = "edgeopt-out", targets=(), precisions=(), force: bool = False,
            reporter: Reporter | None = None) -> dict:  # noqa: A001 - the command's name
    """Export (reused when unchanged) and compile the given targets/precisions, without profiling."""
    from edgeopt.pipeline.build import build

    return build(recipe, output, targets, precisions, force=force, reporter=reporter, profile=False)


def profile(path: str | Path, batches=(1,), iterations: int | None = None, warmup: int = 10,
            duration_s: float = 1.5, threads: int | None = None, reporter: Reporter | None = None,
            layers: bool = False, layer_runs: int = 20, rounds: int = 10) -> dict:
    """Profile one artifact folder, or every artifact of an OUT folder (its manifest is updated), timed
    together in interleaved rounds. With ``layers``, each artifact's per-layer profile at the first batch size
    too (ONNX Runtime's trace JSON is kept under OUT/layers/<id>/)."""
    from edgeopt.core.artifact import ARTIFACT_JSON, read_artifact_json
    from edgeopt.core.fsutil import write_json_atomic
    from edgeopt.core.manifest import MANIFEST
    from edgeopt.core.profile import record_profile

    path = Path(path)
    reporter = reporter or Reporter()
    cfg = ProfileConfig(batches=tuple(batches), warmup=warmup, iterations=iterations, duration_s=duration_s,
                        threads=threads, rounds=rounds)
    if (path / ARTIFACT_JSON).is_file():
        folders = [path]
        manifest = None
    elif (path / MANIFEST).is_file():
        manifest = load_manifest(path)
    else:
        raise UserInputError(f"{path} is neither an artifact folder nor an edgeopt output folder.",
                             "Give OUT (with manifest.json) or OUT/<artifact-id> (with artifact.json).")
    if manifest is None:
        named = {read_artifact_json(folder)["id"]: folder for folder in folders}
        run, results, failed, layer_profiles = _time_together(named, None, cfg, threads, reporter, layers, layer_runs)
        return {"host": host_info(), "timing": run, "artifacts": results, "failed": failed, "layers": layer_profiles}
    with out_lock(path, "profile"):  # it rewrites the manifest: not while a build writes OUT
        manifest = load_consistent(path)  # read again under the lock: a build may have just finished
        named = {a.id: path / a.id for a in manifest.records if a.ok}
        run, results, failed, layer_profiles = _time_together(named, path, cfg, threads, reporter, layers, layer_runs)
        for a in manifest.data["artifacts"]:
            if a["id"] in results:
                # The baseline is not re-timed here: the speed-ups of the build's run no longer apply.
                record_profile(a, results[a["id"]], run)
            if a["id"] in layer_profiles:
                a["layers"] = layer_profiles[a["id"]]
        manifest.data["timing"] = run
        write_json_atomic(path / MANIFEST, manifest.data)
    return {"host": host_info(), "timing": run, "artifacts": results, "failed": failed, "layers": layer_profiles}


def _time_together(named: dict, out: Path | None, cfg: ProfileConfig, threads, reporter, layers: bool,
                   layer_runs: int) -> tuple:
    """(timing run, id -> profile, id -> why not timed, id -> layer profile): ``named`` artifacts (id -> folder)
    timed together in interleaved rounds after a look at the machine's load; per-layer profiles with ``layers``."""
    from edgeopt.backends.artifact import profile_together
    from edgeopt.core.profile import describe_load, machine_load, timing_run

    load = machine_load()
    if load["busy"]:
        reporter.warn(f"The machine is busy: {describe_load(load)}. Timings will be noisy.")
    run = timing_run(cfg, list(named), load)
    reporter.step(f"Timing {', '.join(named)} in {cfg.rounds} interleaved rounds at batch "
                  f"{','.join(map(str, cfg.batches))}")
    results, failed = profile_together(named, cfg.batches, cfg, threads, log=reporter.info)
    if failed and not results:  # nothing could be timed: an error, not a warning and exit 0
        aid, why = next(iter(failed.items()))
        raise ArtifactLoadError(f"{aid}: {why}", "Rebuild it (edgeopt build -o OUT), or check a bundle with edgeopt verify.")
    for aid, why in failed.items():
        reporter.warn(f"{aid}: not timed: {why}")
    note_power(run, results, reporter.warn)
    for aid, prof in results.items():
        bad = [str(r["batch"]) for r in prof["rows"] if r["unstable"]]
        if bad:
            reporter.warn(f"{aid}: timings unstable at batch {','.join(bad)}; is the machine busy?")
    layer_profiles = _layers(named, out, cfg.batches[0], layer_runs, threads, reporter) if layers else {}
    return run, results, failed, layer_profiles


def _layers(named: dict, out: Path | None, batch: int, runs: int, threads, reporter) -> dict:
    """Per-layer profiles of ``named`` artifacts (id -> folder). Profiler files go to a temporary folder (under
    OUT when there is one, never the working directory or HOME); a trace worth keeping is moved to
    OUT/layers/<id>/ in one rename."""
    import shutil
    import tempfile

    from edgeopt.backends.artifact import layer_profile_artifact
    from edgeopt.core.fsutil import STAGING_PREFIX, staged_dir

    found = {}
    for aid, folder in named.items():
        reporter.step(f"{aid}: per-layer profile, batch {batch}, {runs} runs")
        with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}layers-", dir=out) as tmp:
            prof = layer_profile_artifact(folder, batch, runs, Path(tmp), threads)
            if prof is None:
                found[aid] = {"unsupported": "this backend has no per-layer profiler"}
                continue
            prof["batch"] = batch
            if prof.get("trace") and out is not None:
                with staged_dir(out / "layers" / aid) as stage:
                    shutil.move(str(Path(tmp) / prof["trace"]), stage / prof["trace"])
                prof["trace"] = f"layers/{aid}/{prof['trace']}"
            else:
                prof.pop("trace", None)
            found[aid] = prof
    return found


def compress(recipe=None, output: str | Path = "edgeopt-out", targets=(), precisions=("fp32", "int8"),
             prune: str | None = None, ratio: float = 0.5, macs_target: float | None = None,
             finetune_epochs: int = 0, finetune_data: str | None = None, max_drop: float | None = None,
             min_cosine: float | None = None, force: bool = False, reporter: Reporter | None = None) -> dict:
    """The compression stage on its own: INT8 (with the accuracy guard) and, with ``prune``, pruning plus an
    optional recovery fine-tune. FP32 is built beside INT8 so every figure has its reference."""
    from dataclasses import replace

    from edgeopt.pipeline.build import build
    from edgeopt.config.pruning import PruningConfig

    r = _recipe(recipe)
    if prune:
        ft = None
        if finetune_epochs:
            data = finetune_data or (_example_train() if recipe is None else None)
            if data is None:
                raise UserInputError("--finetune-epochs needs training data with labels.",
                                     "Add --finetune-data PATH (a .npz with labels, an image folder with class folders).")
            ft = {"source": str(Path(data).resolve()), "epochs": finetune_epochs}
        r = replace(r, pruning=PruningConfig.from_dict({"method": prune, "ratio": ratio, "macs_target": macs_target,
                                                        "finetune": ft}))
    if max_drop is not None or min_cosine is not None:
        c = r.compression
        r = replace(r, compression=replace(c, max_drop=c.max_drop if max_drop is None else max_drop,
                                           min_cosine=c.min_cosine if min_cosine is None else min_cosine))
    return build(r, output, targets, precisions, force=force, reporter=reporter)


def _example_train() -> str:
    from edgeopt.core.resources import data_dir

    return str(data_dir("calibration") / "digits" / "train.npz")
