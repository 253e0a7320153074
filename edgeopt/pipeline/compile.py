"""The compile stage: one planned artifact compiled by its backend into a staging folder, checked for parity against
the reference outputs and judged by the task metric, then moved into place (reused while its key holds). An
artifact built on its device goes to the package stage instead."""

from __future__ import annotations

import shutil
import time

from edgeopt import __version__
from edgeopt.backends import CompileRequest, get_backend
from edgeopt.backends.artifact import open_artifact
from edgeopt.compress import INT8_RECIPES_VERSION
from edgeopt.core.artifact import ARTIFACT_JSON
from edgeopt.core.fsutil import file_records, sha256_file, sha256_json, staged_dir, write_json_atomic
from edgeopt.core.parity import in_words, parity, parity_summary, tolerance_for
from edgeopt.core.records import Status
from edgeopt.core.tasks import describe
from edgeopt.errors import DiskFullError, EdgeoptError, ParityError
from edgeopt.pipeline.context import BuildContext, Plan
from edgeopt.pipeline.judge import evaluate, gate_by_task, int8_judging, reference_task_metric
from edgeopt.pipeline.record import files_intact


def artifact_key(ctx: BuildContext, plan: Plan) -> str:
    """What an artifact depends on: same key, same artifact (a rebuild reuses it)."""
    backend = get_backend(plan.target.backend)
    int8 = plan.precision == "int8"
    return sha256_json({"onnx": ctx.exported.onnx_sha256 or sha256_file(ctx.exported.onnx_path),
                        "target": plan.target.to_dict(), "precision": plan.precision, "backend": backend.version(),
                        "edgeopt": __version__,
                        "calibration": getattr(ctx.data.calibration, "sha256", None) if int8 else None,
                        "compression": ctx.recipe.compression.to_dict() if int8 else None,
                        "int8_recipes": INT8_RECIPES_VERSION if int8 else None,
                        **({"qat": ctx.recipe.qat.to_dict()} if int8 and ctx.recipe.qat is not None else {})})


def stage_compile(ctx: BuildContext, plan: Plan, previous: dict | None) -> dict:
    """Compile one artifact into a staging folder, check parity, then move it into place: its manifest record."""
    r, exported, judging = ctx.recipe, ctx.exported, ctx.judging
    rec = {"id": plan.id, "target": plan.target.name, "backend": plan.target.backend,
           "device": plan.target.device, "precision": plan.precision}
    failure = ctx.pruned.failure if ctx.pruned is not None else None
    if failure and plan.status != Status.SKIPPED:
        if (ctx.out / plan.id).is_dir():
            shutil.rmtree(ctx.out / plan.id)  # an earlier run's artifact must not stand beside a failed record
        return {**rec, "status": Status.FAILED, "reason": failure, "files": []}
    if plan.status == Status.NOT_BUILT_HERE:
        from edgeopt.pipeline.package import stage_package

        return stage_package(ctx, plan, rec)
    if plan.status != Status.PLANNED:
        return {**rec, "status": plan.status, "reason": plan.reason, "files": []}
    key = artifact_key(ctx, plan)
    folder = ctx.out / plan.id
    if previous and previous.get("key") == key and previous.get("status") == Status.OK and files_intact(ctx.out, previous["files"]):
        ctx.reporter.info(f"{plan.id}: reusing the compiled artifact (inputs unchanged)")
        return {**previous, "reused": True}
    backend = get_backend(plan.target.backend)
    ctx.reporter.step(f"{plan.id}: compiling")
    t0 = time.perf_counter()
    try:
        with staged_dir(folder) as stage:
            req = CompileRequest(onnx_path=exported.onnx_path, onnx_sha256=exported.onnx_sha256, target=plan.target,
                                 precision=plan.precision,
                                 spec=ctx.model.spec, out_dir=stage, model_kind=ctx.model.kind,
                                 calibration=ctx.data.calibration, options=dict(plan.target.options),
                                 judging=int8_judging(ctx), log=ctx.reporter.info)
            meta = backend.compile(req)
            compile_s = time.perf_counter() - t0
            write_json_atomic(stage / ARTIFACT_JSON, {
                "id": plan.id, "backend": plan.target.backend, "precision": plan.precision,
                "target": plan.target.to_dict(), "spec": ctx.model.spec.to_dict(), "meta": meta, "key": key,
                "generation": ctx.generation, "edgeopt_version": __version__, "backend_version": backend.version(),
            })
            runner, _ = open_artifact(stage)
            with runner:
                got = [runner.infer(f) for f in exported.feeds]
                rep = parity(exported.refs, got, tolerance_for(plan.precision, r.parity.tolerances), ctx.model.kind)
                accuracy = evaluate(runner, judging) if judging.outputs is not None else None
                gate_by_task(plan, rep, accuracy)
                if tolerance_for(plan.precision, r.parity.tolerances).atol is None:
                    rep["task_metric"] = reference_task_metric(judging, exported, got)
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
