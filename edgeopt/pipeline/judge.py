"""How the build judges an artifact: the real samples it is scored on (the judge set), the task metric
against the FP32 model and the [compression] budget, and the gate an artifact must pass.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from edgeopt.errors import ParityError
from edgeopt.core.manifest import Manifest
from edgeopt.core.parity import figures
from edgeopt.core.tasks import describe
from edgeopt.pipeline.context import BuildContext, Exported, Judging, Plan


def reference_task_metric(judging: Judging, exported: Exported, got: list[dict]) -> dict | None:
    """The task metric of an artifact on the real samples among the reference samples (against the FP32
    reference outputs, no labels): what ``edgeopt verify`` recomputes on a device and compares with."""
    from edgeopt.core.tasks import Outputs
    from edgeopt.core.tasks import evaluate as task_metric

    start = exported.real_from
    if judging.task is None or start >= len(exported.feeds):
        return None
    feeds = exported.feeds[start:]
    res = task_metric(judging.task, Outputs(feeds, got[start:]), Outputs(feeds, exported.refs[start:]))
    return {k: res[k] for k in ("metric", "label", "value", "budget", "samples") if k in res}


def torch_judge_set(ctx: BuildContext, module) -> Judging:
    """A judge set from the PyTorch model itself (before export: what pruning is judged by)."""
    from edgeopt.core.metrics import eval_batch_size
    from edgeopt.core.tasks import dataset_feeds, run_over

    feeds, labels = dataset_feeds(ctx.data.real, eval_batch_size(ctx.model.spec))
    outputs = run_over(torch_infer(module, ctx.model.spec), feeds, labels)
    shapes = {n: np.asarray(a).shape for n, a in outputs.outputs[0].items()}
    judging = Judging(ctx.recipe.task.resolve(ctx.model.kind, shapes, labels is not None), ctx.recipe.compression,
                      outputs)
    return replace(judging, fp32_metric=evaluate_outputs(judging, outputs))


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


def stage_judge_set(ctx: BuildContext, manifest: Manifest) -> Judging:
    """The real samples every artifact is judged on, the FP32 model's outputs on them (the host's reference
    executor running the exported ONNX), the resolved task and the FP32 model's task metric. (Bundles'
    self-tests use the real samples among the reference samples.)"""
    from edgeopt.backends import host_reference
    from edgeopt.core.metrics import eval_batch_size
    from edgeopt.core.tasks import Outputs, dataset_feeds

    r, model, exported = ctx.recipe, ctx.model, ctx.exported
    source, ds = ("evaluation", ctx.data.evaluation) if ctx.data.evaluation is not None else (
        "held out of calibration", ctx.data.holdout)
    if ds is None:
        shapes = {n: a.shape for n, a in exported.refs[0].items()}
        task = r.task.resolve(model.kind, shapes, False)
        note_inferred_format(ctx, task, shapes)
        manifest.data["task"] = {"config": task.to_dict(), "source": None,
                                 "note": "no real samples: artifacts are judged on parity samples only"}
        return Judging(task, r.compression)
    feeds, labels = dataset_feeds(ds, eval_batch_size(model.spec))
    outs = host_reference().run(exported.onnx_path, feeds)
    judge = Outputs(feeds, outs, labels)  # the FP32 model's outputs, batch by batch
    shapes = {n: np.asarray(a).shape for n, a in outs[0].items()}
    task = r.task.resolve(model.kind, shapes, labels is not None)
    note_inferred_format(ctx, task, shapes)
    # A pruned build's FP32 ONNX is judged against the user's (unpruned) model: pruning's FP32 figure is the base.
    base = ctx.pruned.judging.fp32_metric if ctx.pruned is not None and ctx.pruned.judging is not None else None
    fp32_metric = evaluate_outputs(Judging(task, r.compression, judge, base), judge)
    manifest.data["task"] = {"config": task.to_dict(), "source": source, "samples": len(ds),
                             "fp32": fp32_metric, "labels": labels is not None}
    manifest.data["fp32_metric"] = fp32_metric
    ctx.reporter.info(f"Task: {task.type}, judged on {len(ds)} real samples ({source}); "
                      f"FP32 {describe(fp32_metric)}")
    return Judging(task, r.compression, judge, fp32_metric)


def note_inferred_format(ctx: BuildContext, task, shapes: dict) -> None:
    """Say in the log when a detector's output format was read from its shapes, not from the recipe."""
    if task.type == "detection" and ctx.recipe.task.format == "auto":
        name = task.output or next(iter(shapes), "?")
        how = (f"a raw YOLO head: output {name!r} is {list(shapes.get(name, ()))}, [batch, 4 + classes, anchors]"
               if task.format == "yolo" else "boxes, scores and labels outputs")
        ctx.reporter.info(f"[task] format = \"{task.format}\" (not in the recipe; read from the outputs: {how})")


def evaluate_outputs(judging: Judging, got) -> dict:
    """The task metric of ``got`` (outputs over the judge set's feeds) against the FP32 outputs, judged
    against [compression]'s budget."""
    from edgeopt.core.tasks import evaluate as task_metric
    from edgeopt.core.tasks import judge

    res = task_metric(judging.task, got, judging.outputs)
    cfg = judging.compression
    base = judging.fp32_metric or res
    return judge(res, base, cfg.allowed_drop(base.get("value", 1.0)) * 100, cfg.min_cosine)


def evaluate(runner_or_fn, judging: Judging) -> dict:
    """The task metric of a runner (or a feed -> outputs function) on the judge set's real samples."""
    from edgeopt.core.tasks import run_over

    infer = runner_or_fn.infer if hasattr(runner_or_fn, "infer") else runner_or_fn
    return evaluate_outputs(judging, run_over(infer, judging.outputs.feeds, judging.outputs.labels))


def torch_infer(module, spec):
    """A feed -> named outputs function over a torch module."""
    import torch

    from edgeopt.data.torchfeed import to_torch

    def infer(feed):
        with torch.inference_mode():
            return {n: t.numpy() for n, t in zip(spec.outputs, module(*to_torch(feed, spec)))}

    return infer


def int8_judging(ctx: BuildContext):
    """What the INT8 stage (edgeopt.compress) judges candidates with: this build's [compression], reference
    samples, resolved task, judge set and FP32 figure."""
    from edgeopt.compress.judging import Judging as Int8Judging

    j = ctx.judging
    return Int8Judging(ctx.recipe.compression, (ctx.exported.feeds, ctx.exported.refs), j.fp32_metric, j.task,
                       j.outputs, qat=ctx.qat)
