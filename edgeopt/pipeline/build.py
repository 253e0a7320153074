"""``edgeopt build``: intake -> export -> compile per target and precision -> parity -> accuracy ->
profile -> manifest. Each stage writes atomically; a rerun reuses what is still valid."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeopt import __version__
from edgeopt.core.artifact import ARTIFACT_JSON, artifact_id
from edgeopt.backends.artifact import open_artifact
from edgeopt.backends import CompileRequest, get_backend
from edgeopt.compress import INT8_RECIPES_VERSION
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
from edgeopt.core.parity import figures, in_words, parity, parity_summary, tolerance_for
from edgeopt.config.recipe import Recipe, load_recipe
from edgeopt.config.schema import check_inputs_fit
from edgeopt.core.reference import REFERENCE_FILE, parity_feeds, save_reference
from edgeopt.core.tasks import describe
from edgeopt.report.progress import Reporter
from edgeopt.core.targets import Target, check_precision, get_target, load_targets
from edgeopt.backends import target_status
from edgeopt.core.records import Status

EXPORT_DIR = "export"
EXPORT_RECORD = "export.json"
MARKER = ".edgeopt"


@dataclass
class Plan:
    target: Target
    precision: str
    status: Status = Status.PLANNED  # planned | skipped | not built here
    reason: str | None = None

    @property
    def id(self) -> str:
        return artifact_id(self.target.name, self.precision)


@dataclass
class BuildContext:
    recipe: Recipe
    out: Path
    reporter: Reporter
    force: bool = False
    model: object = None  # intake.LoadedModel
    onnx_path: Path | None = None
    feeds: list = field(default_factory=list)
    refs: list = field(default_factory=list)
    evaluation: object = None  # data.Dataset
    calibration: object = None
    original_module: object = None  # the model before pruning: the baseline row stays the user's model
    task: object = None  # core.tasks.TaskConfig, resolved from [task], the model kind and the outputs
    real_from: int = 0  # index of the first real sample among the reference feeds
    holdout: object = None  # data.Dataset: calibration samples kept out of calibration to judge on (no evaluation set)
    judge: object = None  # core.tasks.Outputs: real samples (evaluation / held out of calibration) + FP32 outputs
    fp32_metric: dict | None = None  # the exported FP32 model's task metric (the int8 accuracy budget's base)
    int8: bool = False  # some planned artifact is int8
    generation: str | None = None  # this build's id, recorded in each artifact it compiles
    onnx_sha256: str | None = None  # the ONNX with its external data files: what artifacts are keyed on
    export_sha256: str | None = None  # the export record's sha256 (carry-over compares it across runs)
    pruning_failure: str | None = None  # the pruned model failed its accuracy guard: nothing built from it is ok


# ------------------------------------------------------------------------------------------------
# output folder
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# planning
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------

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


def reference_task_metric(ctx: BuildContext, got: list[dict]) -> dict | None:
    """The task metric of an artifact on the real samples among the reference samples (against the FP32
    reference outputs, no labels): what ``edgeopt verify`` recomputes on a device and compares with."""
    from edgeopt.core.tasks import Outputs
    from edgeopt.core.tasks import evaluate as task_metric

    if ctx.task is None or ctx.real_from >= len(ctx.feeds):
        return None
    feeds = ctx.feeds[ctx.real_from:]
    res = task_metric(ctx.task, Outputs(feeds, got[ctx.real_from:]), Outputs(feeds, ctx.refs[ctx.real_from:]))
    return {k: res[k] for k in ("metric", "label", "value", "budget", "samples") if k in res}


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

        return score_package(ctx, plan, write_device_package(ctx, plan, ctx.out / plan.id, rec))
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
                                 compression=r.compression, evaluation=ctx.evaluation,
                                 reference=(ctx.feeds, ctx.refs), fp32_metric=ctx.fp32_metric,
                                 task=ctx.task, judge_set=ctx.judge,
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


def score_package(ctx: BuildContext, plan: Plan, rec: dict) -> dict:
    """An INT8 device package's Q/DQ ONNX scored on the evaluation data with ONNX Runtime here, before it
    ships: the accuracy figure the device's engine is then compared with, and the INT8 budget applied to it
    (over budget: failed with the numbers, no package)."""
    import importlib.util

    from edgeopt.device.package import PACKAGE_ONNX

    onnx_path = ctx.out / plan.id / PACKAGE_ONNX
    if (rec.get("status") != Status.NOT_BUILT_HERE or plan.precision != "int8" or ctx.judge is None
            or not onnx_path.is_file() or importlib.util.find_spec("onnxruntime") is None):
        return rec
    import tempfile

    from edgeopt.backends.onnxruntime.runner import run_onnx

    graph = ((rec.get("package") or {}).get("onnx") or {}).get("graph")
    try:
        with tempfile.TemporaryDirectory(prefix="edgeopt-score-") as tmp:
            # what ONNX Runtime can run of it: a TensorRT plugin at the end (NMS) is left out, its raw outputs scored
            host = get_backend(plan.target.backend).package_host_onnx(onnx_path, graph, Path(tmp))
            acc = evaluate(lambda feed: run_onnx(host, [feed], ctx.model.spec)[0], ctx)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime may lack a kernel TensorRT has: say so, keep the package
        ctx.reporter.warn(f"{plan.id}: the Q/DQ ONNX could not be scored on ONNX Runtime here ({type(exc).__name__})")
        return rec
    acc["measured_on"] = "onnxruntime-cpu on the build host (the package's Q/DQ ONNX; the device confirms)"
    rec = {**rec, "accuracy": acc}
    ctx.reporter.info(f"{plan.id}: Q/DQ ONNX on ONNX Runtime here: {describe(acc)}")
    if acc.get("within_budget") is False:
        reason = f"{plan.id}: the INT8 Q/DQ ONNX on ONNX Runtime here: {describe(acc)}: {acc.get('why')}"
        ctx.reporter.error(reason)
        shutil.rmtree(ctx.out / plan.id, ignore_errors=True)
        return {**rec, "status": Status.FAILED, "reason": reason, "files": []}
    return rec


def _torch_judge_set(ctx: BuildContext, module) -> None:
    """A judge set from the PyTorch model itself (before export: what pruning is judged by)."""
    from edgeopt.core.metrics import eval_batch_size
    from edgeopt.core.tasks import dataset_feeds, run_over

    ds = ctx.evaluation if ctx.evaluation is not None else ctx.holdout
    feeds, labels = dataset_feeds(ds, eval_batch_size(ctx.model.spec))
    ctx.judge = run_over(torch_infer(module, ctx.model.spec), feeds, labels)
    shapes = {n: np.asarray(a).shape for n, a in ctx.judge.outputs[0].items()}
    ctx.task = ctx.recipe.task.resolve(ctx.model.kind, shapes, labels is not None)
    ctx.fp32_metric = None
    ctx.fp32_metric = evaluate_outputs(ctx, ctx.judge)


def gate_by_task(plan: Plan, rep: dict, accuracy: dict | None) -> None:
    """Raise ParityError when the artifact fails its gate. An INT8 artifact is judged by the task metric on
    real samples (the parity samples are mostly random inputs, where INT8 ranges clip): the parity figures are
    reported, and gate only breakage (missing or non-finite outputs) or when there are no real samples."""
    fix = (f"Use another precision, or loosen [parity.tolerances.{plan.precision}] if the difference is acceptable.")
    if plan.precision == "int8" and accuracy is not None:
        rep["gate"] = f"task metric ({accuracy['metric']}) on {accuracy['samples']} real samples"
        broken = rep.get("reason") and ("missing" in rep["reason"] or "non-finite" in rep["reason"]
                                        or "shape" in rep["reason"])
        if broken:
            raise ParityError(f"{plan.id} differs from PyTorch: {rep['reason']} ({figures(rep)}).", fix)
        if not accuracy["within_budget"]:
            raise ParityError(f"{plan.id} fails its task metric on real samples: {accuracy['why']}.",
                              "Raise [compression] max_drop (or lower min_cosine for embeddings), give more or "
                              "better calibration data, or ship a float precision.")
        return
    if not rep["passed"]:
        raise ParityError(f"{plan.id} differs from PyTorch: {rep['reason']} ({figures(rep)}).", fix)


def stage_judge_set(ctx: BuildContext, manifest: Manifest) -> None:
    """The real samples every artifact is judged on, the FP32 model's outputs on them, the resolved task and
    the FP32 model's task metric. (Bundles' self-tests use the real samples among the reference samples.)"""
    from edgeopt.backends.onnxruntime.runner import run_onnx
    from edgeopt.core.metrics import eval_batch_size
    from edgeopt.core.tasks import Outputs, dataset_feeds

    source, ds = ("evaluation", ctx.evaluation) if ctx.evaluation is not None else ("held out of calibration",
                                                                                   ctx.holdout)
    if ds is None:
        ctx.task = ctx.recipe.task.resolve(ctx.model.kind, {n: r.shape for n, r in ctx.refs[0].items()}, False)
        manifest.data["task"] = {"config": ctx.task.to_dict(), "source": None,
                                 "note": "no real samples: artifacts are judged on parity samples only"}
        return
    feeds, labels = dataset_feeds(ds, eval_batch_size(ctx.model.spec))
    outs = run_onnx(ctx.onnx_path, feeds, ctx.model.spec)
    ctx.judge = Outputs(feeds, outs, labels)  # the FP32 model's outputs, batch by batch
    shapes = {n: np.asarray(a).shape for n, a in outs[0].items()}
    ctx.task = ctx.recipe.task.resolve(ctx.model.kind, shapes, labels is not None)
    ctx.fp32_metric = evaluate_outputs(ctx, ctx.judge)
    manifest.data["task"] = {"config": ctx.task.to_dict(), "source": source, "samples": len(ds),
                             "fp32": ctx.fp32_metric, "labels": labels is not None}
    manifest.data["fp32_metric"] = ctx.fp32_metric
    ctx.reporter.info(f"Task: {ctx.task.type}, judged on {len(ds)} real samples ({source}); "
                      f"FP32 {describe(ctx.fp32_metric)}")


def evaluate_outputs(ctx: BuildContext, got) -> dict:
    """The task metric of ``got`` (outputs over the judge set's feeds) against the FP32 outputs, judged
    against [compression]'s budget."""
    from edgeopt.core.tasks import evaluate as task_metric
    from edgeopt.core.tasks import judge

    res = task_metric(ctx.task, got, ctx.judge)
    cfg = ctx.recipe.compression
    base = ctx.fp32_metric or res
    return judge(res, base, cfg.allowed_drop(base.get("value", 1.0)) * 100, cfg.min_cosine)


def evaluate(runner_or_fn, ctx: BuildContext) -> dict:
    """The task metric of a runner (or a feed -> outputs function) on the judge set's real samples."""
    from edgeopt.core.tasks import run_over

    infer = runner_or_fn.infer if hasattr(runner_or_fn, "infer") else runner_or_fn
    return evaluate_outputs(ctx, run_over(infer, ctx.judge.feeds, ctx.judge.labels))


BASELINE = "torch-eager-fp32"


def stage_profile(ctx: BuildContext, manifest: Manifest, records: list[dict]) -> None:
    """Time the PyTorch baseline and every artifact with status ok in interleaved rounds in this process,
    after a look at how busy the machine is; speed-ups come from this run only, with their intervals."""
    from edgeopt.backends.artifact import profile_together
    from edgeopt.core.profile import (cpu_mark, describe_load, machine_load, others_since, ratios_withheld,
                                      record_profile, timing_run)

    cfg = ctx.recipe.profile
    batches = [b for b in cfg.batches if _batch_ok(ctx.model.spec, b)]
    real = ctx.evaluation.arrays if ctx.evaluation is not None else None
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


def select_or_report(manifest: dict, budgets) -> dict:
    """The recipe's [select] budgets applied to this build; a build with no qualifying artifact records why."""
    from edgeopt.ship.select import NoArtifactQualifiesError, select_manifest

    try:
        return select_manifest(manifest, budgets)
    except NoArtifactQualifiesError as exc:
        return {**exc.result, "selected": None, "error": exc.problem}


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


def _batch_ok(spec, b: int) -> bool:
    lo, hi = spec.batch_range()
    return lo <= b <= hi


def torch_infer(module, spec):
    """A feed -> named outputs function over a torch module."""
    import torch

    from edgeopt.data.torchfeed import to_torch

    def infer(feed):
        with torch.inference_mode():
            return {n: t.numpy() for n, t in zip(spec.outputs, module(*to_torch(feed, spec)))}

    return infer


def stage_prune(ctx: BuildContext, manifest: Manifest) -> None:
    """Prune the PyTorch model (and fine-tune it back) before export; the baseline row stays the original."""
    cfg = ctx.recipe.pruning
    if cfg is None:
        return
    import copy

    from edgeopt.compress import prune
    from edgeopt.pipeline.intake import state_digest
    from edgeopt.data.torchfeed import to_torch

    model = ctx.model
    if model.module is None:
        raise UserInputError("Pruning needs the PyTorch model; the model source is an ONNX file.",
                             "Give the factory or checkpoint the ONNX was made from, or drop [pruning].")
    spec = model.spec
    args = to_torch(spec.random_feed(np.random.default_rng(0), batch=1 if spec.batch_dim else None), spec)
    ctx.original_module = copy.deepcopy(model.module)
    if ctx.evaluation is not None or ctx.holdout is not None:
        _torch_judge_set(ctx, model.module)  # pruning is judged against the user's model; export redoes it
    acc = (lambda: evaluate(torch_infer(model.module, spec), ctx)["value"]) if ctx.judge is not None else (lambda: None)
    macs0, params0 = prune.count(model.module, args)
    record = {"config": cfg.to_dict(), "macs_before": macs0, "params_before": params0, "accuracy_before": acc()}
    ctx.reporter.step(f"Pruning ({cfg.method}, ratio {cfg.ratio})")
    feeds = list(ctx.calibration) if ctx.calibration is not None else (ctx.evaluation.feeds() if ctx.evaluation else [])
    if cfg.method == "structured":
        prune.prune_structured(model.module, args, cfg)
        work = model.module
    else:
        work, clean = prune.prune_unstructured(model.module, args, cfg)
    if cfg.bn_adaptation:
        prune.adapt_batchnorm(work, feeds, spec)
    model.module = work
    record["accuracy_pruned"] = acc()
    if cfg.finetune is not None:
        from edgeopt.data.dataset import DataConfig, load_dataset

        # Training images get the same preprocessing as the data the model is scored on: a fine-tune on
        # differently scaled pixels "recovers" on the wrong inputs and destroys the model.
        pre = cfg.finetune.preprocess or ctx.recipe.shipped_preprocess()
        train = load_dataset(DataConfig.from_dict({"source": cfg.finetune.source, "size": None,
                                                   **({"preprocess": pre} if pre else {})},
                                                  ctx.recipe.base_dir, section="pruning.finetune"),
                             spec, purpose="training")
        ctx.reporter.step(f"Recovery fine-tune: {cfg.finetune.epochs} epochs on {train.count} samples")
        prune.finetune(work, train, spec, cfg.finetune, log=ctx.reporter.info)
        record["accuracy_finetuned"] = acc()
        record["finetune_samples"] = train.count
        record["finetune_preprocess"] = pre
    if cfg.method == "unstructured":
        model.module = prune.strip_unstructured(work, clean, args)
    macs1, params1 = prune.count(model.module, args)
    record.update({"macs_after": macs1, "params_after": params1, "sparsity": prune.sparsity(model.module)})
    if cfg.method == "unstructured":
        record["note"] = ("Unstructured sparsity zeroes weights but keeps every shape: CPU backends run the same dense "
                          "kernels, so expect no speed-up (measured: 50% sparsity, 18.0 vs 18.1 ms on ResNet-18); "
                          "the win is a smaller compressed download.")
    model.sha256 = sha256_json({"model": model.sha256, "pruning": cfg.to_dict(), "state": state_digest(model.module)})
    ctx.reporter.info(_pruning_line(record))
    record["guard"] = pruning_guard(record, cfg, ctx.recipe.compression)
    if not record["guard"]["passed"]:
        ctx.pruning_failure = record["guard"]["reason"]
        ctx.reporter.error(ctx.pruning_failure)
    elif record["guard"]["reason"]:
        ctx.reporter.warn(record["guard"]["reason"])
    record["files"] = save_pruned(ctx)
    manifest.data["pruning"] = record


def pruning_guard(record: dict, cfg, compression) -> dict:
    """Pruning and its fine-tune pass the same task-metric guard as INT8: the final model against the unpruned
    one within the budget, and a fine-tune never ends below the pruned model it started from."""
    before, pruned, tuned = (record.get(k) for k in ("accuracy_before", "accuracy_pruned", "accuracy_finetuned"))
    final = tuned if tuned is not None else pruned
    if before is None or final is None:
        return {"passed": True, "reason": "no evaluation data: the pruned model's accuracy is not checked "
                                          "(add [evaluation])"}
    budget = replace(compression, max_drop=cfg.max_drop) if cfg.max_drop is not None else compression
    allowed = budget.allowed_drop(before)
    out = {"drop_points": round((before - final) * 100, 4), "budget_points": round(allowed * 100, 4),
           "passed": True, "reason": None}
    figures = " -> ".join(f"{label} {v * 100:.2f}%" for label, v in
                          (("original", before), ("pruned", pruned), ("fine-tuned", tuned)) if v is not None)
    if tuned is not None and tuned < pruned - 1e-12:
        out.update(passed=False, reason=f"pruning: the recovery fine-tune lost accuracy (top-1 {figures}); check "
                                        "[pruning.finetune] source, preprocess and lr")
    elif before - final > allowed + 1e-12:
        out.update(passed=False, reason=f"pruning: top-1 dropped {(before - final) * 100:.2f} points, over the "
                                        f"budget of {allowed * 100:.2f} ({figures}); fine-tune longer "
                                        "(--finetune-epochs), prune less, or raise [pruning] max_drop")
    return out


def _pruning_line(r: dict) -> str:
    parts = [f"MACs {r['macs_before'] / 1e6:.1f}M -> {r['macs_after'] / 1e6:.1f}M",
             f"params {r['params_before'] / 1e3:.0f}k -> {r['params_after'] / 1e3:.0f}k",
             f"sparsity {r['sparsity'] * 100:.1f}%"]
    for k, label in (("accuracy_before", "top-1 before"), ("accuracy_pruned", "pruned"),
                     ("accuracy_finetuned", "after fine-tune")):
        if r.get(k) is not None:
            parts.append(f"{label} {r[k] * 100:.2f}%")
    return ", ".join(parts)


def save_pruned(ctx: BuildContext) -> list[dict]:
    """The pruned model as a torch.export program (reloads without unpickling objects); the ONNX comes
    from the export stage."""
    import torch

    from edgeopt.pipeline.export import example_args, torch_dynamic_shapes

    folder = ctx.out / "pruned"
    spec = ctx.model.spec
    args = example_args(spec)  # sizes above 1 on dynamic axes, or torch.export specialises them
    with staged_dir(folder) as stage:
        try:
            ep = torch.export.export(ctx.model.module, args,
                                     dynamic_shapes=torch_dynamic_shapes(torch, spec) if spec.dims else None)
            torch.export.save(ep, str(stage / "model.pt2"))
        except Exception as exc:  # noqa: BLE001 - the ONNX stays the shipped form; say why the .pt2 is missing
            (stage / "NOTE.txt").write_text(f"torch.export could not save the pruned model: {exc}\n")
    return file_records(folder, ctx.out)


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
        module = ctx.original_module if ctx.original_module is not None else ctx.model.module
        if ctx.recipe.profile.threads:
            torch.set_num_threads(ctx.recipe.profile.threads)
        accuracy = evaluate(torch_infer(module, ctx.model.spec), ctx) if ctx.judge is not None else None
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


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------

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
