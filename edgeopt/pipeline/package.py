"""The package stage: an artifact whose engine is built on the device that runs it (status "not built here") ships
as a device package, written by :mod:`edgeopt.device.package` from the one typed input it declares
(:class:`~edgeopt.device.package.PackageSource`), which this stage fills from the build's results. An INT8
package's Q/DQ ONNX is scored here before it ships."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeopt.backends import get_packaging
from edgeopt.core.parity import tolerance_for
from edgeopt.core.records import Status
from edgeopt.core.reference import REFERENCE_FILE
from edgeopt.core.tasks import describe
from edgeopt.device.package import PackageSource, write_device_package
from edgeopt.pipeline.context import BuildContext, Plan
from edgeopt.pipeline.judge import evaluate


def package_source(ctx: BuildContext, plan: Plan) -> PackageSource:
    """What the device package of ``plan`` is made from: the exported ONNX, the reference data, the calibration
    set, [compression], the resolved task."""
    tolerance = tolerance_for(plan.precision, ctx.recipe.parity.tolerances)
    model = ctx.model
    return PackageSource(
        target=plan.target, precision=plan.precision, spec=model.spec, model_kind=model.kind,
        onnx_path=ctx.exported.onnx_path, reference_path=ctx.out / REFERENCE_FILE, tolerance=tolerance.to_dict(),
        calibration=ctx.data.calibration, compression=ctx.recipe.compression,
        task=ctx.judging.task if ctx.judging is not None else ctx.recipe.task,
        model={k: v for k, v in model.describe().items() if k in ("name", "source", "sha256", "kind")},
        why_not_here=plan.reason)


def stage_package(ctx: BuildContext, plan: Plan, rec: dict) -> dict:
    """The device package of ``plan`` in OUT/<id>/ (reused while its inputs are unchanged): its manifest record."""
    written = write_device_package(package_source(ctx, plan), ctx.out / plan.id, rec, ctx.out, ctx.reporter)
    return score_package(ctx, plan, written)


def score_package(ctx: BuildContext, plan: Plan, rec: dict) -> dict:
    """An INT8 device package's Q/DQ ONNX scored on the evaluation data with ONNX Runtime here, before it
    ships: the accuracy figure the device's engine is then compared with, and the INT8 budget applied to it
    (over budget: failed with the numbers, no package)."""
    from edgeopt.backends import host_reference
    from edgeopt.device.package import PACKAGE_ONNX

    onnx_path = ctx.out / plan.id / PACKAGE_ONNX
    reference = host_reference()
    if (rec.get("status") != Status.NOT_BUILT_HERE or plan.precision != "int8" or ctx.judging.outputs is None
            or not onnx_path.is_file() or not reference.installed()):
        return rec
    import tempfile

    graph = ((rec.get("package") or {}).get("onnx") or {}).get("graph")
    try:
        with tempfile.TemporaryDirectory(prefix="edgeopt-score-") as tmp:
            # what ONNX Runtime can run of it: a TensorRT plugin at the end (NMS) is left out, its raw outputs scored
            host = get_packaging(plan.target.backend).package_host_onnx(onnx_path, graph, Path(tmp))
            acc = evaluate(reference.runs(host), ctx.judging)
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
