"""``edgeopt build``: intake -> export -> compile per target and precision -> parity -> accuracy ->
profile -> manifest. Each stage writes atomically; a rerun reuses what is still valid.

The stages live beside it: ``context`` (Plan, BuildContext), ``judge`` (the judge set and task metric),
``pruning``, ``timing`` (the profile stage and its flags); export in ``export``, packages in ``edgeopt.device``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
import numpy as np
from edgeopt import __version__
from edgeopt.core.artifact import ARTIFACT_JSON
from edgeopt.backends.artifact import open_artifact
from edgeopt.backends import CompileRequest, get_backend
from edgeopt.compress import INT8_RECIPES_VERSION
from edgeopt.compress.judging import Judging
from edgeopt.errors import BackendMissingError, DiskFullError, EdgeoptError, ParityError, UserInputError
from edgeopt.core.fsutil import (
    clean_stale_staging,
    file_record,
    file_records,
    sha256_file,
    sha256_json,
    staged_dir,
    write_bytes_atomic,
    write_json_atomic,
)
from edgeopt.core.hostinfo import host_info, version_of
from edgeopt.core.lock import OUT_LOCK, out_lock
from edgeopt.core.manifest import MANIFEST, Manifest, load_manifest, mark_incomplete
from edgeopt.core.parity import in_words, parity, parity_summary, tolerance_for
from edgeopt.config.recipe import Recipe, load_recipe
from edgeopt.config.schema import check_inputs_fit
from edgeopt.core.reference import REFERENCE_FILE, parity_feeds, save_reference
from edgeopt.core.tasks import describe
from edgeopt.report.progress import Reporter
from edgeopt.core.targets import check_precision, get_target, load_targets
from edgeopt.backends import target_status
from edgeopt.core.records import Status
from edgeopt.pipeline.context import BuildContext, EXPORT_DIR, EXPORT_RECORD, MARKER, Plan
from edgeopt.pipeline.judge import evaluate, gate_by_task, reference_task_metric, stage_judge_set
from edgeopt.pipeline.pruning import stage_prune
from edgeopt.pipeline.timing import flag_slow, stage_profile


def check_output(out: Path, force: bool) -> None:
    """Refuse a folder that holds something other than an edgeopt output, unless ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"Output {out} exists and is a file.", "Choose another -o/--output folder.")
    if (out.is_dir() and any(p.name != OUT_LOCK for p in out.iterdir()) and not (out / MARKER).is_file()
            and not (out / MANIFEST).is_file()):
        if not force:
            names = ", ".join(sorted(p.name for p in out.iterdir())[:5])
            raise UserInputError(f"Output folder {out} is not empty and is not an edgeopt output (holds {names}).",
                                 "Choose another -o/--output folder, or pass --force to build into it anyway.")


def prepare_output(out: Path, force: bool) -> None:
    check_output(out, force)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("This folder is written by edgeopt; rerunning a build here reuses what is valid.\n")
    clean_stale_staging(out)


def plan_artifacts(recipe: Recipe, targets: tuple[str, ...] = (), precisions: tuple[str, ...] = ()) -> list[Plan]:
    names = targets or recipe.targets
    explicit = bool(names)
    wanted_prec = precisions or recipe.precisions
    chosen = [get_target(n) for n in names] if explicit else list(load_targets().values())
    known = {n for t in (*load_targets().values(), *chosen) for n in (t.name, t.backend)}
    unknown = sorted(set(recipe.options) - known)
    if unknown:
        raise UserInputError(f"The recipe has [options.NAME] for {unknown}, which is no target or backend.",
                             f"Name a target or a backend: {', '.join(sorted(known))}.")
    chosen = [recipe.target_options(t) for t in chosen]  # [options.BACKEND] / [options.TARGET] of the recipe
    plans: list[Plan] = []
    for t in chosen:
        backend = get_backend(t.backend)
        if not backend.installed():
            if not explicit:
                continue
            if not backend.builds_on_device:
                raise BackendMissingError(backend.distribution, backend.extra, f"build for target {t.name}",
                                          fix=backend.install_hint())
        ok, why = target_status(t)
        if not ok and not explicit:
            continue  # the default build makes what can run here
        for p in wanted_prec:
            if p not in t.precisions:
                if precisions and explicit and len(chosen) == 1:
                    check_precision(t, p)  # raises with the list the target offers
                continue
            plan = Plan(t, p)
            unavailable = backend.precision_unavailable(t, p) if ok else why
            if unavailable:
                if not explicit and ok:
                    continue
                plan.status, plan.reason = Status.SKIPPED, unavailable
                if getattr(backend, "builds_on_device", False):
                    # Engines are built on the device that runs them: ship a device package instead.
                    plan.status = Status.NOT_BUILT_HERE
            plans.append(plan)
    if not plans:
        missing = sorted({get_backend(t.backend).extra for t in chosen if not get_backend(t.backend).installed()
                          and not get_backend(t.backend).builds_on_device})
        if missing and not explicit:
            raise BackendMissingError(" and ".join(missing), ",".join(missing) + ",torch",
                                      "build for the targets that run on this machine")
        raise UserInputError(
            f"Nothing to build: no target offers the precisions {list(wanted_prec)} on this machine.",
            "Run `edgeopt targets` to see what can run here, and pick --target/--precision from it.")
    return plans


def stage_intake(ctx: BuildContext) -> None:
    """Load the model and check the input spec against it: before anything is written."""
    from edgeopt.pipeline.intake import load_model

    r = ctx.recipe
    ctx.reporter.step("Loading the model")
    ctx.model = load_model(r.model, r.spec, r.resolve(r.model.source), r.resolve(r.model.checkpoint))
    if ctx.evaluation is not None and ctx.evaluation.labels is not None:
        from edgeopt.pipeline.export import reference_outputs

        first = next(iter(reference_outputs(ctx.model, ctx.evaluation.feeds(1))[0].values()))
        ctx.evaluation.check_labels(int(first.shape[-1]))  # labels beyond the model's classes: stop here


def stage_export(ctx: BuildContext, manifest: Manifest, previous: Manifest | None = None) -> None:
    from edgeopt.pipeline.export import check_export_parity, export_onnx, reference_outputs

    r = ctx.recipe
    model = ctx.model
    export_key = sha256_json({"model": model.sha256, "spec": model.spec.to_dict(), "export": r.export.__dict__,
                              "torch": version_of("torch"), "edgeopt": __version__, "source": model.source})
    out = ctx.out / EXPORT_DIR
    prev = (previous.data.get("export") if previous else None) or _read_json(out / EXPORT_RECORD) or {}
    if model.onnx_path is not None:
        ctx.onnx_path = model.onnx_path
        record = {"exporter": "none (ONNX given)", "sha256": model.sha256}  # covers its external data files
    elif prev.get("key") == export_key and _files_intact(ctx.out, prev.get("files", [])):
        ctx.reporter.info("Reusing the exported ONNX (model and settings unchanged)")
        record = prev
        ctx.onnx_path = out / "model.onnx"
    else:
        ctx.reporter.step(f"Exporting to ONNX (opset {r.export.opset})")
        with staged_dir(out) as stage:
            record = export_onnx(model, stage, r.export, log=ctx.reporter.info)
            record["key"] = export_key
            record["files"] = [{**file_record(p, stage), "path": f"{EXPORT_DIR}/{p.relative_to(stage).as_posix()}"}
                               for p in sorted(stage.rglob("*")) if p.is_file()]
            # The record travels with the ONNX (same rename), so a rerun after kill -9 or Ctrl-C reuses the
            # export even though the interrupted run never wrote its manifest.
            write_json_atomic(stage / EXPORT_RECORD, record)
        ctx.onnx_path = out / "model.onnx"
    record["key"] = export_key
    from edgeopt.pipeline.intake import onnx_source_digest

    ctx.onnx_sha256 = model.sha256 if model.onnx_path is not None else onnx_source_digest(ctx.onnx_path)
    ctx.export_sha256 = record.get("sha256")
    # Reference samples: random within the declared ranges, plus real ones from the evaluation data.
    real_ds = ctx.evaluation if ctx.evaluation is not None else ctx.holdout
    real = real_ds.feeds(min(REAL_REFERENCE_SAMPLES, len(real_ds))) if real_ds is not None else []
    ctx.feeds = parity_feeds(model.spec, r.parity.samples, r.parity.seed, real)
    ctx.real_from = len(ctx.feeds) - len(real)
    ctx.reporter.step("Computing reference outputs")
    ctx.refs = reference_outputs(model, ctx.feeds)
    save_reference(ctx.out / REFERENCE_FILE, ctx.feeds, ctx.refs)
    if model.module is not None:
        record["parity"] = parity_summary(check_export_parity(model, ctx.onnx_path, ctx.feeds, ctx.refs,
                                                               r.parity.tolerances))
        ctx.reporter.info(f"Exported ONNX matches PyTorch: {in_words(record['parity'])}")
    manifest.data["export"] = record
    manifest.data["model"] = {**model.describe(), "preprocess": r.shipped_preprocess(),
                              "labels": list(r.model.labels) or None, "tokenizer": ship_tokenizer(ctx)}
    manifest.data["reference"] = {"real_from": ctx.real_from, "path": REFERENCE_FILE, "sha256": sha256_file(ctx.out / REFERENCE_FILE),
                                  "samples": len(ctx.feeds), "source": "pytorch" if model.module is not None else "onnx"}


def _read_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _files_intact(root: Path, files: list[dict]) -> bool:
    return bool(files) and all((root / f["path"]).is_file() and sha256_file(root / f["path"]) == f["sha256"]
                               for f in files)


TOKENIZER_FILE = "tokenizer.json"


TOKENIZER_PATH = "reference/tokenizer.json"  # travels with the reference data in bundles


def tokenizer_folder(r: Recipe) -> Path | None:
    """The Hugging Face folder holding the model's ``tokenizer.json``: the text data's tokenizer, else the
    ``hf:`` model folder (the same folder when saved with save_pretrained)."""
    cands = [getattr(d, "tokenizer", None) for d in (r.evaluation, r.calibration)]
    src = r.resolve(r.model.source) or ""
    if src.startswith("hf:"):
        cands.append(src[3:])
    for c in cands:
        if c and (Path(c) / TOKENIZER_FILE).is_file():
            return Path(c)
    return None


def ship_tokenizer(ctx: BuildContext) -> dict | None:
    """Copy the model's fast-tokenizer file into OUT (bundles carry it, so the torch-free runtime goes from
    text to the model's inputs), with the sequence length the inputs take."""
    folder = tokenizer_folder(ctx.recipe)
    if folder is None:
        return None
    spec = ctx.model.spec
    ints = [t for t in spec.inputs if np.issubdtype(np.dtype(t.dtype), np.integer) and len(t.shape) == 2]
    if not ints:
        return None
    seq = ints[0].shape[1]
    length = seq if isinstance(seq, int) else spec.dims[seq].opt
    write_bytes_atomic(ctx.out / TOKENIZER_PATH, (folder / TOKENIZER_FILE).read_bytes())
    return {"path": TOKENIZER_PATH, "sha256": sha256_file(ctx.out / TOKENIZER_PATH), "max_length": int(length),
            "fixed_length": isinstance(seq, int), "inputs": [t.name for t in ints]}


REAL_REFERENCE_SAMPLES = 16  # real samples in the reference data: what a bundle's self-test scores the task on


def artifact_key(ctx: BuildContext, plan: Plan) -> str:
    backend = get_backend(plan.target.backend)
    return sha256_json({"onnx": ctx.onnx_sha256 or sha256_file(ctx.onnx_path), "target": plan.target.to_dict(),
                        "precision": plan.precision, "backend": backend.version(), "edgeopt": __version__,
                        "calibration": getattr(ctx.calibration, "sha256", None) if plan.precision == "int8" else None,
                        "compression": ctx.recipe.compression.to_dict() if plan.precision == "int8" else None,
                        "int8_recipes": INT8_RECIPES_VERSION if plan.precision == "int8" else None})


def stage_compile(ctx: BuildContext, plan: Plan, previous: dict | None) -> dict:
    """Compile one artifact into a staging folder, check parity, then move it into place."""
    r = ctx.recipe
    rec = {"id": plan.id, "target": plan.target.name, "backend": plan.target.backend,
           "device": plan.target.device, "precision": plan.precision}
    if ctx.pruning_failure and plan.status != Status.SKIPPED:
        if (ctx.out / plan.id).is_dir():
            shutil.rmtree(ctx.out / plan.id)  # an earlier run's artifact must not stand beside a failed record
        return {**rec, "status": Status.FAILED, "reason": ctx.pruning_failure, "files": []}
    if plan.status == Status.NOT_BUILT_HERE:
        from edgeopt.device.package import write_device_package

        judging = judging_of(ctx) if plan.precision == "int8" else None
        return package_accuracy(ctx, plan, write_device_package(ctx, plan, ctx.out / plan.id, rec, judging))
    if plan.status != Status.PLANNED:
        return {**rec, "status": plan.status, "reason": plan.reason, "files": []}
    key = artifact_key(ctx, plan)
    folder = ctx.out / plan.id
    if previous and previous.get("key") == key and previous.get("status") == Status.OK and _files_intact(ctx.out, previous["files"]):
        ctx.reporter.info(f"{plan.id}: reusing the compiled artifact (inputs unchanged)")
        return {**previous, "reused": True}
    backend = get_backend(plan.target.backend)
    ctx.reporter.step(f"{plan.id}: compiling")
    t0 = time.perf_counter()
    try:
        with staged_dir(folder) as stage:
            req = CompileRequest(onnx_path=ctx.onnx_path, onnx_sha256=ctx.onnx_sha256, target=plan.target,
                                 precision=plan.precision,
                                 spec=ctx.model.spec, out_dir=stage, model_kind=ctx.model.kind,
                                 calibration=ctx.calibration, options=dict(plan.target.options),
                                 judging=judging_of(ctx),
                                 log=ctx.reporter.info)
            meta = backend.compile(req)
            compile_s = time.perf_counter() - t0
            write_json_atomic(stage / ARTIFACT_JSON, {
                "id": plan.id, "backend": plan.target.backend, "precision": plan.precision,
                "target": plan.target.to_dict(), "spec": ctx.model.spec.to_dict(), "meta": meta, "key": key,
                "generation": ctx.generation, "edgeopt_version": __version__, "backend_version": backend.version(),
            })
            runner, _ = open_artifact(stage)
            with runner:
                got = [runner.infer(f) for f in ctx.feeds]
                rep = parity(ctx.refs, got, tolerance_for(plan.precision, r.parity.tolerances), ctx.model.kind)
                accuracy = evaluate(runner, ctx) if ctx.judge is not None else None
                gate_by_task(plan, rep, accuracy)
                if tolerance_for(plan.precision, r.parity.tolerances).atol is None:
                    rep["task_metric"] = reference_task_metric(ctx, got)
                runtime = runner.properties()
    except DiskFullError:
        raise  # stop the build: every later artifact would fail the same way
    except ParityError as exc:
        ctx.reporter.error(str(exc))
        return {**rec, "status": Status.FAILED, "reason": exc.problem, "files": [],
                "parity": parity_summary(rep), "key": key}
    except EdgeoptError as exc:
        ctx.reporter.error(f"{plan.id}: {exc}")
        return {**rec, "status": Status.FAILED, "reason": exc.problem, "files": [], "key": key}
    ctx.reporter.info(f"{plan.id}: parity {in_words(rep)}"
                      + (f", {describe(accuracy)}" if accuracy else ""))
    return {**rec, "status": Status.OK, "reason": None, "key": key, "generation": ctx.generation,
            "compile_s": round(compile_s, 3),
            "files": file_records(folder, ctx.out), "parity": parity_summary(rep), "accuracy": accuracy,
            "meta": meta, "runtime": runtime}


def judging_of(ctx: BuildContext) -> Judging:
    """What the INT8 stage judges candidates with: this build's options, reference outputs, task and samples."""
    return Judging(ctx.recipe.compression, (ctx.feeds, ctx.refs), ctx.fp32_metric, ctx.task, ctx.judge)


def package_accuracy(ctx: BuildContext, plan: Plan, rec: dict) -> dict:
    """An INT8 device package's accuracy as the INT8 loop scored its Q/DQ ONNX with ONNX Runtime here (the
    figure the device's engine is then compared with); over budget, the package was not written."""
    int8 = ((((rec.get("package") or {}).get("onnx") or {}).get("quantization") or {}).get("int8") or {})
    win = next((c for c in int8.get("candidates", []) if c["candidate"] == int8.get("recipe")), None)
    if rec.get("status") != Status.NOT_BUILT_HERE or not win or "accuracy" not in win:
        return rec
    acc = {**win["accuracy"], "measured_on": "onnxruntime-cpu on the build host (the package's Q/DQ ONNX; the "
                                             "device confirms)"}
    ctx.reporter.info(f"{plan.id}: Q/DQ ONNX on ONNX Runtime here: {describe(acc)}")
    return {**rec, "accuracy": acc}


def carry_over(ctx: BuildContext, previous: Manifest | None, planned: set[str]) -> list[dict]:
    """Artifacts of an earlier run that this run did not plan: kept when still valid for the same ONNX,
    removed otherwise (a stale artifact is never left next to a new manifest)."""
    if previous is None:
        return []
    same_onnx = (previous.data.get("export") or {}).get("sha256") == (ctx.export_sha256 or sha256_file(ctx.onnx_path))
    kept = []
    for rec in previous.data.get("artifacts", []):
        if rec["id"] in planned:
            continue
        folder = ctx.out / rec["id"]
        if same_onnx and rec.get("status") in (Status.OK, Status.NOT_BUILT_HERE) and _files_intact(ctx.out, rec.get("files", [])):
            kept.append({**rec, "reused": True})
        elif folder.is_dir():
            shutil.rmtree(folder)
    return kept


def select_or_report(manifest: dict, budgets) -> dict:
    """The recipe's [select] budgets applied to this build; a build with no qualifying artifact records why."""
    from edgeopt.ship.select import NoArtifactQualifiesError, select_manifest

    try:
        return select_manifest(manifest, budgets)
    except NoArtifactQualifiesError as exc:
        return {**exc.result, "selected": None, "error": exc.problem}


def load_data(ctx: BuildContext, manifest: Manifest) -> None:
    r = ctx.recipe
    if r.evaluation is None and r.calibration is None:
        return
    from edgeopt.data.dataset import load_dataset

    if r.evaluation is not None:
        ctx.evaluation = load_dataset(r.evaluation, r.spec, purpose="evaluation")
        manifest.data["evaluation"] = ctx.evaluation.summary()
        for w in ctx.evaluation.warnings:
            ctx.reporter.warn(w)
    if r.calibration is not None and (ctx.int8 or r.pruning is not None):
        ctx.calibration = load_dataset(r.calibration, r.spec, purpose="calibration")
        for w in ctx.calibration.warnings:
            ctx.reporter.warn(w)
        if ctx.evaluation is None:
            ctx.calibration, ctx.holdout = hold_out(ctx.calibration)
            if ctx.holdout is None:
                ctx.reporter.warn("No [evaluation] data and too few calibration samples to hold some out: "
                                  "artifacts are judged on the parity samples only. Add [evaluation] data.")
        manifest.data["calibration"] = ctx.calibration.summary()


def hold_out(ds):
    """(calibration, held-out) split of a calibration set when there is no evaluation set: the last fifth (at
    most 200 samples, at least 2 left to calibrate on), never used for calibration. (ds, None) when too small."""
    from edgeopt.data.dataset import Dataset

    n = len(ds)
    k = min(200, n // 5)
    if k < 2:
        return ds, None

    def part(sl, what):
        return Dataset.from_arrays({name: a[sl] for name, a in ds.arrays.items()},
                                   None if ds.labels is None else ds.labels[sl], source=f"{ds.source} ({what})",
                                   requested=ds.requested, classes=ds.classes, purpose="calibration")

    return part(slice(0, n - k), f"first {n - k}"), part(slice(n - k, n), f"last {k}, held out")


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
    check_inputs_fit(recipe.spec)  # a spec made in Python or from CLI arguments: before any allocation
    out = Path(output)
    reporter = reporter or Reporter()
    plans = plan_artifacts(recipe, tuple(targets), tuple(precisions))
    check_output(out, force)
    manifest = Manifest.new(recipe, host_info())
    ctx = BuildContext(recipe=recipe, out=out, reporter=reporter, force=force,
                       int8=any(p.precision == "int8" and p.status in (Status.PLANNED, Status.NOT_BUILT_HERE) for p in plans))
    if ctx.int8 and recipe.calibration is None:
        raise UserInputError("INT8 needs calibration data, and none is given.",
                             "Add --calib PATH (an image folder, .npz or .npy; see calibration/README.md) or a "
                             "[calibration] section to the recipe, or drop -p int8.")
    load_data(ctx, manifest)  # bad targets, data and models fail here, before anything is written
    stage_intake(ctx)
    ctx.generation = manifest.generation
    with out_lock(out, "build"):  # one writer per OUT: a second build or profile is refused, naming this one
        prepare_output(out, force)
        reporter.attach_log(out / "logs" / "build.log")
        reporter.start_progress(3 + len(plans) * (2 if profile else 1) + (1 if recipe.pruning else 0))
        try:
            previous = load_manifest(out, missing_ok=True)
            mark_incomplete(out)  # killed from here on: readers refuse OUT until a build finishes
            stage_prune(ctx, manifest)
            stage_export(ctx, manifest, previous)
            stage_judge_set(ctx, manifest)
            prev_by_id = {a["id"]: a for a in (previous.data.get("artifacts", []) if previous else [])}
            records = [stage_compile(ctx, p, prev_by_id.get(p.id)) for p in plans]
            # Artifacts of an earlier run kept for the same ONNX are re-timed with this run's baseline: a ratio
            # is only ever computed from rows timed together.
            records += carry_over(ctx, previous, {p.id for p in plans})
            if profile:
                stage_profile(ctx, manifest, records)
                flag_slow(records)
            manifest.data["artifacts"] = records
            if recipe.select is not None:
                manifest.data["selection"] = select_or_report(manifest.data, recipe.select)
            manifest.write(out)
        except EdgeoptError as exc:
            reporter.record(f"ERROR build stopped: {exc}")  # the CLI shows it; the log keeps it
            raise
        finally:
            reporter.detach_log()
    return manifest.data
