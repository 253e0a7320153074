"""``edgeopt build``: the stages in order, each in its own module with a typed result (:mod:`.context`):

    plan       which artifacts (target x precision) to build here          pipeline.plan
    intake     the data (the held-out split) and the model, checked         pipeline.intake
    prune      [pruning]: the pruned model and its guard                    pipeline.pruning
    export     ONNX, parity vs PyTorch, reference samples, tokenizer        pipeline.export
    judge      the judge set, the resolved task, the FP32 task metric       pipeline.judge
    compile    per artifact: compile, parity, task metric (or package)      pipeline.compile, pipeline.package
    profile    PyTorch and every artifact timed together                    pipeline.timing
    record     carried-over artifacts, [select], the manifest               pipeline.record

Each stage writes atomically; a rerun reuses what is still valid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgeopt.config.recipe import Recipe, load_recipe
from edgeopt.config.schema import check_inputs_fit
from edgeopt.backends import host_info
from edgeopt.core.lock import out_lock
from edgeopt.core.manifest import Manifest, load_manifest, mark_incomplete
from edgeopt.core.records import Status
from edgeopt.errors import EdgeoptError, UserInputError
from edgeopt.pipeline.compile import stage_compile
from edgeopt.pipeline.context import BuildContext, Plan
from edgeopt.pipeline.export import stage_export
from edgeopt.pipeline.intake import complete_inputs, load_data, read_from_model_note, stage_intake, with_model_task
from edgeopt.pipeline.judge import stage_judge_set
from edgeopt.pipeline.plan import detector_nms, plan_artifacts
from edgeopt.pipeline.pruning import stage_prune
from edgeopt.pipeline.qat import qat_source
from edgeopt.pipeline.record import carry_over, check_output, prepare_output, stage_record
from edgeopt.pipeline.timing import flag_slow, stage_profile
from edgeopt.report.progress import Reporter

__all__ = ["Plan", "build", "check_output", "flag_slow", "plan_artifacts"]


def build(recipe: Recipe | str | Path | None = None, output: str | Path = "edgeopt-out",
          targets: tuple[str, ...] = (), precisions: tuple[str, ...] = (), force: bool = False,
          reporter: Reporter | None = None, profile: bool = True) -> dict:
    """Build every planned artifact for ``recipe`` (the built-in example when None) into ``output``.

    Returns the manifest. Raises :class:`EdgeoptError` for bad input before anything is written.
    """
    from edgeopt.example import example_recipe

    if recipe is None:
        recipe = example_recipe()
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    recipe = complete_inputs(recipe)  # no [[inputs]]: read from the checkpoint given as the source
    check_inputs_fit(recipe.spec)  # a spec made in Python or from CLI arguments: before any allocation
    if len(recipe.model.adapter) > 1:  # one artifact set per adapter: OUTPUT/<adapter folder name>
        from edgeopt.pipeline.adapters import build_each_adapter

        return build_each_adapter(build, recipe, output, targets=targets, precisions=precisions, force=force,
                                  reporter=reporter, profile=profile)
    out = Path(output)
    reporter = reporter or Reporter()
    if (note := read_from_model_note(recipe)) is not None:
        reporter.info(note)
    plans = plan_artifacts(recipe, tuple(targets), tuple(precisions))
    check_output(out, force)
    manifest = Manifest.new(recipe, host_info())
    int8 = any(p.precision == "int8" and p.status in (Status.PLANNED, Status.NOT_BUILT_HERE) for p in plans)
    if int8 and recipe.calibration is None:
        raise UserInputError("INT8 needs calibration data, and none is given.",
                             "Add --calib PATH (an image folder, .npz or .npy; see calibration/README.md) or a "
                             "[calibration] section to the recipe, or drop -p int8.")
    ctx = BuildContext(recipe=recipe, out=out, reporter=reporter, generation=manifest.generation,
                       nms=detector_nms(plans))
    # bad targets, data and models fail here, before anything is written
    ctx = replace(ctx, data=load_data(ctx, manifest, calibrate=int8 or recipe.pruning is not None))
    ctx = with_model_task(replace(ctx, model=stage_intake(ctx)))
    qat_source(ctx, plans)  # a [qat] that cannot run (no torch model, a bad source) fails here, before OUT changes
    with out_lock(out, "build"):  # one writer per OUT: a second build or profile is refused, naming this one
        prepare_output(out, force)
        reporter.attach_log(out / "logs" / "build.log")
        for note in (read_from_model_note(recipe), *ctx.model.notes):  # found before the log was open
            if note is not None:
                reporter.record(f"model: {note}")
        reporter.start_progress(3 + len(plans) * (2 if profile else 1) + (1 if recipe.pruning else 0))
        try:
            previous = load_manifest(out, missing_ok=True)
            mark_incomplete(out)  # killed from here on: readers refuse OUT until a build finishes
            pruned = stage_prune(ctx, manifest)
            if pruned is not None:
                ctx = replace(ctx, pruned=pruned, model=pruned.model)
            ctx = replace(ctx, exported=stage_export(ctx, manifest, previous))
            ctx = replace(ctx, judging=stage_judge_set(ctx, manifest))
            ctx = replace(ctx, qat=qat_source(ctx, plans))
            prev_by_id = {a["id"]: a for a in (previous.data.get("artifacts", []) if previous else [])}
            records = [stage_compile(ctx, p, prev_by_id.get(p.id)) for p in plans]
            # Artifacts of an earlier run kept for the same ONNX are re-timed with this run's baseline: a ratio
            # is only ever computed from rows timed together.
            records += carry_over(ctx, previous, {p.id for p in plans})
            if profile:
                stage_profile(ctx, manifest, records)
                flag_slow(records)
            if ctx.qat is not None and ctx.qat.record() is not None:
                manifest.data["qat"] = ctx.qat.record()
            stage_record(ctx, manifest, records)
        except EdgeoptError as exc:
            reporter.record(f"ERROR build stopped: {exc}")  # the CLI shows it; the log keeps it
            raise
        finally:
            reporter.detach_log()
    return manifest.data
