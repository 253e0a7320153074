"""How the build judges an artifact: the real samples it is scored on (the judge set), the task metric
against the FP32 model and the [compression] budget, and the gate an artifact must pass.
"""

from __future__ import annotations

import numpy as np
from edgeopt.errors import ParityError
from edgeopt.core.manifest import Manifest
from edgeopt.core.parity import figures
from edgeopt.core.tasks import describe
from edgeopt.pipeline.context import BuildContext, Plan


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


def torch_judge_set(ctx: BuildContext, module) -> None:
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
        note_inferred_format(ctx, {n: r.shape for n, r in ctx.refs[0].items()})
        manifest.data["task"] = {"config": ctx.task.to_dict(), "source": None,
                                 "note": "no real samples: artifacts are judged on parity samples only"}
        return
    feeds, labels = dataset_feeds(ds, eval_batch_size(ctx.model.spec))
    outs = run_onnx(ctx.onnx_path, feeds, ctx.model.spec)
    ctx.judge = Outputs(feeds, outs, labels)  # the FP32 model's outputs, batch by batch
    shapes = {n: np.asarray(a).shape for n, a in outs[0].items()}
    ctx.task = ctx.recipe.task.resolve(ctx.model.kind, shapes, labels is not None)
    note_inferred_format(ctx, shapes)
    ctx.fp32_metric = evaluate_outputs(ctx, ctx.judge)
    manifest.data["task"] = {"config": ctx.task.to_dict(), "source": source, "samples": len(ds),
                             "fp32": ctx.fp32_metric, "labels": labels is not None}
    manifest.data["fp32_metric"] = ctx.fp32_metric
    ctx.reporter.info(f"Task: {ctx.task.type}, judged on {len(ds)} real samples ({source}); "
                      f"FP32 {describe(ctx.fp32_metric)}")


def note_inferred_format(ctx: BuildContext, shapes: dict) -> None:
    """Say in the log when a detector's output format was read from its shapes, not from the recipe."""
    if ctx.task.type == "detection" and ctx.recipe.task.format == "auto":
        name = ctx.task.output or next(iter(shapes), "?")
        how = (f"a raw YOLO head: output {name!r} is {list(shapes.get(name, ()))}, [batch, 4 + classes, anchors]"
               if ctx.task.format == "yolo" else "boxes, scores and labels outputs")
        ctx.reporter.info(f"[task] format = \"{ctx.task.format}\" (not in the recipe; read from the outputs: {how})")


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


def torch_infer(module, spec):
    """A feed -> named outputs function over a torch module."""
    import torch

    from edgeopt.data.torchfeed import to_torch

    def infer(feed):
        with torch.inference_mode():
            return {n: t.numpy() for n, t in zip(spec.outputs, module(*to_torch(feed, spec)))}

    return infer
