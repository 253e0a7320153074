"""The package stage: an artifact whose engine is built on the device that runs it (status "not built here") ships
as a device package, written by :mod:`edgeopt.device.package` from the one typed input it declares
(:class:`~edgeopt.device.package.PackageSource`), which this stage fills from the build's results. An INT8
package's Q/DQ ONNX is scored by the INT8 loop before it ships."""

from __future__ import annotations

from edgeopt.core.parity import tolerance_for
from edgeopt.core.records import Status
from edgeopt.core.reference import REFERENCE_FILE
from edgeopt.core.tasks import describe
from edgeopt.device.package import PackageSource, write_device_package
from edgeopt.pipeline.context import BuildContext, Plan
from edgeopt.pipeline.judge import int8_judging


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
        why_not_here=plan.reason, judging=int8_judging(ctx) if plan.precision == "int8" else None)


def stage_package(ctx: BuildContext, plan: Plan, rec: dict) -> dict:
    """The device package of ``plan`` in OUT/<id>/ (reused while its inputs are unchanged): its manifest record."""
    return package_accuracy(ctx, plan, write_device_package(package_source(ctx, plan), ctx.out / plan.id, rec,
                                                            ctx.out, ctx.reporter))


def package_accuracy(ctx: BuildContext, plan: Plan, rec: dict) -> dict:
    """An INT8 device package's accuracy as the INT8 loop scored its Q/DQ ONNX on this host (the figure the
    device's engine is then compared with); over budget, the loop wrote no package."""
    int8 = ((((rec.get("package") or {}).get("onnx") or {}).get("quantization") or {}).get("int8") or {})
    win = next((c for c in int8.get("candidates", []) if c["candidate"] == int8.get("recipe")), None)
    if rec.get("status") != Status.NOT_BUILT_HERE or not win or "accuracy" not in win:
        return rec
    acc = {**win["accuracy"], "measured_on": "onnxruntime-cpu on the build host (the package's Q/DQ ONNX; the "
                                             "device confirms)"}
    ctx.reporter.info(f"{plan.id}: Q/DQ ONNX on ONNX Runtime here: {describe(acc)}")
    return {**rec, "accuracy": acc}
