"""The host side: writing a device package (the precision's ONNX, the backend's build plan and preflight, the
reference data, the instructions) into a staging folder, reused while its inputs are unchanged.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from edgeopt import __version__
from edgeopt.errors import (
    CompileError,
    EdgeoptError,
    IntegrityError,
    UserInputError,
)
from edgeopt.core.fsutil import (
    file_records,
    onnx_digest,
    staged_dir,
    write_json_atomic,
    write_text_atomic,
)
from edgeopt.core.records import Status, records_of
from edgeopt.device.package.format import (
    INSTRUCTIONS, LINT_JSON, PACKAGE_JSON, PACKAGE_ONNX, PACKAGE_SCHEMA, PLAN_JSON, PackageLintError,
    PackageSource, REFERENCE_NPZ, read_package, verify_package_files,
)
from edgeopt.device.package.instructions import instructions, package_reason


def write_device_package(ctx, plan, folder: Path, rec: dict, judging=None) -> dict:
    """Write the device package for ``plan`` (a build ``Plan`` of status "not built here") into ``folder``;
    ``judging`` (compress.judging.Judging): how the INT8 loop scores an INT8 form here.

    Returns the manifest record: status "not built here" with the way to finish on the device, or "failed"
    (nothing written) when the preflight finds errors or the precision's ONNX cannot be made here.
    """
    folder = Path(folder)
    reporter = ctx.reporter
    spec, kind = ctx.model.spec, ctx.model.kind
    from edgeopt.core.parity import tolerance_for
    from edgeopt.core.reference import REFERENCE_FILE

    tolerance = tolerance_for(plan.precision, ctx.recipe.parity.tolerances)
    source = PackageSource(
        target=plan.target, precision=plan.precision, spec=spec, model_kind=kind, onnx_path=Path(ctx.onnx_path),
        reference_path=Path(ctx.out) / REFERENCE_FILE, tolerance=tolerance.to_dict(),
        calibration=ctx.calibration, compression=ctx.recipe.compression, task=getattr(ctx, "task", None) or ctx.recipe.task,
        model={k: v for k, v in (ctx.model.describe() or {}).items() if k in ("name", "source", "sha256", "kind")},
        why_not_here=plan.reason, judging=judging)
    reporter.step(f"{plan.id}: writing a device package (the engine is built on the device)")
    try:
        key = source.key()
        previous = _reusable(folder, key)
        if previous is not None:
            reporter.info(f"{plan.id}: reusing the device package (inputs unchanged)")
            pkg = previous
        else:
            with staged_dir(folder) as stage:
                pkg = write_package_files(stage, source, key, log=reporter.info)
    except PackageLintError as exc:
        reporter.error(f"{plan.id}: {exc}")
        _remove_package(folder)
        return {**rec, "status": Status.FAILED, "reason": exc.problem, "fix": exc.fix, "files": [],
                "lint": exc.report.to_dict()}
    except EdgeoptError as exc:
        reporter.error(f"{plan.id}: {exc}")
        _remove_package(folder)
        return {**rec, "status": Status.FAILED, "reason": exc.problem, "fix": exc.fix, "files": []}
    lint = pkg.get("lint")
    for w in (lint or {}).get("findings", []):
        reporter.warn(f"{plan.id}: preflight {w['code']}" + (f" [{w['node']}]" if w["node"] else "") + f": {w['message']}")
    failed = host_check_failure(pkg)
    if failed is not None:
        if str(plan.target.options.get("host_check", "fail")) != "warn":
            reporter.error(f"{plan.id}: {failed}")
            _remove_package(folder)
            return {**rec, "status": Status.FAILED, "reason": failed, "files": [],
                    "fix": "Use another precision (or fix the quantization); if the device's TensorRT may do better "
                           "than ONNX Runtime here, keep the package: host_check = \"warn\" in the target's "
                           "[options], then build again.",
                    "host_check": pkg["onnx"]["host_check"]}
        reporter.warn(f"{plan.id}: {failed}; the package is kept (host_check = \"warn\"): the device's build decides")
    reporter.info(f"{plan.id}: device package {folder} (finish on the device: see {folder.name}/{INSTRUCTIONS})")
    return {**rec, "status": Status.NOT_BUILT_HERE, "reason": pkg["reason"], "key": key,
            "files": file_records(folder, Path(ctx.out)),
            "package": {k: pkg.get(k) for k in ("schema", "onnx", "build_plan", "lint", "reference", "instructions")},
            **({"reused": True} if previous is not None else {})}


def host_check_failure(pkg: dict) -> str | None:
    """Why the package's converted ONNX (FP16, INT8 Q/DQ) already misses the reference on ONNX Runtime here, or
    None (passed, not checked, or ONNX Runtime could not run it: a plugin node, a missing kernel)."""
    onnx = pkg.get("onnx") or {}
    check = onnx.get("host_check") or {}
    if check.get("passed") is not False:
        return None
    figures = ", ".join(f"{k} {check[k]:.3g}" for k in ("max_abs", "cosine") if isinstance(check.get(k), (int, float)))
    return (f"the {onnx.get('form')} ONNX of this package misses the reference outputs on ONNX Runtime here "
            f"({check.get('reason') or 'outside the tolerance'}" + (f"; {figures}" if figures else "") + ")")


def write_package_files(stage: Path, src: PackageSource, key: str, log=None) -> dict:
    """Write a complete package into the empty folder ``stage``; return its package.json."""
    log = log or (lambda msg: None)
    stage = Path(stage)
    target, precision = src.target, src.precision
    from edgeopt.backends import get_backend

    backend = get_backend(target.backend)
    form, plan = backend.package_plan(src.spec, target, precision)
    onnx_meta = _write_onnx(stage, src, form, log)
    spec = src.spec
    graph = backend.package_graph(stage / PACKAGE_ONNX, target, src.task, src.detector)
    if graph:  # the graph the device's build takes (a detector's NMS, INT64 outputs cast to INT32 ...)
        onnx_meta.update(graph=graph, sha256=onnx_digest(stage / PACKAGE_ONNX))
        if spec.outputs:
            spec = spec.with_outputs(graph["outputs"])
        nms = graph.get("nms") or {}
        if nms:
            log(f"{src.id}: NMS {'as ' + nms['plugin'] if nms['where'] == 'plugin' else 'outside the engine'}")
        if graph.get("int64_outputs"):
            log(f"{src.id}: INT64 outputs {graph['int64_outputs']} cast to INT32 for TensorRT (given back as int64)")
    lint_summary = None
    report = backend.package_preflight(stage / PACKAGE_ONNX, target, spec, plan)
    if report is not None:
        if not report.ok:
            raise PackageLintError(report)
        lint_summary = report.to_dict()
        lint_summary["onnx"] = PACKAGE_ONNX  # relative: the package moves to the device
        write_json_atomic(stage / LINT_JSON, lint_summary)
    if plan is not None:
        write_json_atomic(stage / PLAN_JSON, plan.to_dict())
    if graph:
        from edgeopt.core.reference import load_reference, save_reference

        ref_feeds, ref_outs = load_reference(src.reference_path)
        save_reference(stage / REFERENCE_NPZ, ref_feeds, [backend.package_reference(o, graph) for o in ref_outs])
    else:
        shutil.copyfile(src.reference_path, stage / REFERENCE_NPZ)
    reason = package_reason(src, plan)
    meta = {"package": True, "status": Status.NOT_BUILT_HERE, "onnx": PACKAGE_ONNX, "onnx_form": form,
            **({"plan": plan.to_dict()} if plan else {})}
    write_json_atomic(stage / "artifact.json", {
        "id": src.id, "backend": target.backend, "precision": precision, "target": target.to_dict(),
        "spec": spec.to_dict(), "meta": meta, "key": key, "edgeopt_version": __version__,
        "backend_version": None})
    write_text_atomic(stage / INSTRUCTIONS, instructions(src, plan, lint_summary))
    from edgeopt.core.reference import load_reference

    feeds, _ = load_reference(stage / REFERENCE_NPZ)
    pkg = {
        "schema": PACKAGE_SCHEMA, "id": src.id, "target": target.name, "backend": target.backend,
        "device_type": target.device, "precision": precision, "status": Status.NOT_BUILT_HERE, "reason": reason,
        "key": key, "edgeopt_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": src.model, "model_kind": src.model_kind,
        "onnx": {"path": PACKAGE_ONNX, "form": form, **onnx_meta},
        "build_plan": PLAN_JSON if plan else None,
        "declared": {k: target.hardware.get(k) for k in ("module", "jetpack", "l4t", "tensorrt", "cuda", "python",
                                                         "compute_capability", "dla_cores") if k in target.hardware},
        "lint": lint_summary,
        "reference": {"path": REFERENCE_NPZ, "samples": len(feeds), "tolerance": src.tolerance},
        "instructions": INSTRUCTIONS,
        "files": file_records(stage, stage),
        "device": None,
        "result": None,
    }
    write_json_atomic(stage / PACKAGE_JSON, pkg)
    return pkg


def _write_onnx(stage: Path, src: PackageSource, form: str, log) -> dict:
    dst = stage / PACKAGE_ONNX
    dst.parent.mkdir(parents=True, exist_ok=True)
    meta: dict = {"source_sha256": onnx_digest(src.onnx_path)}
    if form == "fp32":
        _copy_onnx(src.onnx_path, dst)
    else:  # fp16, Q/DQ ...: the backend writes the form its device build takes
        from edgeopt.backends import get_backend

        meta.update(get_backend(src.target.backend).package_onnx(form, src.onnx_path, dst, src, log))
    if not dst.is_file():
        raise CompileError(f"The {form} ONNX for {src.id} was not written.", "Report this as a bug in edgeopt.")
    meta["sha256"] = onnx_digest(dst)
    if form in ("fp16", "qdq"):
        meta["host_check"] = _host_check(dst, src, log)
    return meta


def _run_unfused(onnx_path: Path, feeds: list) -> list[dict]:
    """Run the ONNX on ONNX Runtime CPU with its graph optimizations off: Q/DQ pairs stay float quantize-dequantize
    steps, which is what TensorRT's explicit quantization computes (int8 products, int32 sums). ORT's fused int8
    kernels are not: on x86 CPUs without VNNI its s8s8 kernels saturate (the example's INT8 Q/DQ: cosine 0.19
    fused, 0.9999 unfused), which is ORT's limit, not the model's."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, f))) for f in feeds]


def _host_check(onnx_path: Path, src: PackageSource, log) -> dict | None:
    """The converted ONNX run on ONNX Runtime CPU here against the reference outputs: an early warning (the
    device's TensorRT decides), so a model that is already off does not wait for a long upload and build."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from edgeopt.core.parity import Tolerance, parity, parity_summary
    from edgeopt.core.reference import load_reference

    try:
        feeds, refs = load_reference(src.reference_path)
        rep = parity(refs, _run_unfused(onnx_path, feeds), Tolerance(**src.tolerance), src.model_kind)
    except Exception as exc:  # noqa: BLE001 - ORT may lack a kernel TensorRT has: only a warning
        log(f"{src.id}: the {onnx_path.name} could not be checked on ONNX Runtime here ({type(exc).__name__}: {exc})")
        return {"runtime": "onnxruntime-cpu", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    log(f"{src.id}: on ONNX Runtime CPU here: max abs {rep['max_abs']:.2e}, cosine {rep['cosine']:.6f}"
        + ("" if rep["passed"] else f" (outside the tolerance: {rep['reason']}; the device's build decides)"))
    return {"runtime": "onnxruntime-cpu", "graph_optimizations": "off (Q/DQ in float, as TensorRT computes)",
            **parity_summary(rep)}


def _external_files(onnx_path: Path) -> list[str]:
    """The external-data files an ONNX model refers to (relative to its folder)."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data
    except ImportError:
        return sorted(p.name for p in onnx_path.parent.glob(f"{onnx_path.name}.data*") if p.is_file())
    model = onnx.load(str(onnx_path), load_external_data=False)
    names = set()
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            for entry in t.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return sorted(names)


def _copy_onnx(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    for name in _external_files(src):
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise UserInputError(f"{src.name} refers to external data outside its folder ({name}).",
                                 "Save the model with its external data beside it (onnx.save(..., location=NAME)).")
        (dst.parent / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.parent / rel, dst.parent / rel)


def _reusable(folder: Path, key: str) -> dict | None:
    """The package.json of an intact, uncompiled package made from the same inputs, else None."""
    try:
        pkg = read_package(folder)
        if pkg.get("key") != key or pkg.get("status") != Status.NOT_BUILT_HERE:
            return None
        verify_package_files(folder, pkg)
        return pkg
    except EdgeoptError:
        return None


def _remove_package(folder: Path) -> None:
    """Remove an older package at ``folder`` (it would be stale next to a failed record)."""
    if (Path(folder) / PACKAGE_JSON).is_file():
        shutil.rmtree(folder, ignore_errors=True)


def package_from_out(out: Path, target_name: str, precision: str, dest: Path) -> dict:
    """Write a device package for ``target_name``/``precision`` from an OUT folder (export + reference) into
    ``dest`` (atomically). For the CPU backends (fp32) and TensorRT fp32/fp16; INT8 needs a build."""
    from edgeopt.core.manifest import load_manifest
    from edgeopt.core.parity import Tolerance, tolerance_for
    from edgeopt.core.reference import REFERENCE_FILE
    from edgeopt.core.spec import IOSpec
    from edgeopt.core.targets import check_precision, get_target

    out = Path(out)
    m = load_manifest(out).data
    target = get_target(target_name)
    check_precision(target, precision)
    model = m.get("model") or {}
    try:
        spec = IOSpec.from_dict(model)
    except (KeyError, TypeError) as exc:
        raise IntegrityError(f"{out}/manifest.json has no model spec ({exc}).", f"Rebuild: edgeopt build -o {out}.") from None
    onnx_path = out / "export" / "model.onnx"
    if not onnx_path.is_file() and str(model.get("source", "")).endswith(".onnx"):
        onnx_path = Path(model["source"])
    tol = tolerance_for(precision).to_dict()
    for a in records_of(m):  # the build's tolerance for that precision, where it recorded one
        if a.precision == precision and a.tolerance:
            tol = Tolerance(**a.tolerance).to_dict()
            break
    src = PackageSource(target=target, precision=precision, spec=spec, model_kind=model.get("kind", "generic"),
                        onnx_path=onnx_path, reference_path=out / REFERENCE_FILE, tolerance=tol,
                        model={k: model.get(k) for k in ("name", "source", "sha256", "kind")},
                        task=_recorded_task(m))
    key = src.key()
    with staged_dir(Path(dest)) as stage:
        return write_package_files(stage, src, key)


def _recorded_task(manifest: dict):
    """The build's resolved [task] from its manifest (None when it recorded none)."""
    from edgeopt.core.tasks import TaskConfig

    config = (manifest.get("task") or {}).get("config")
    return TaskConfig.from_dict(config) if isinstance(config, dict) else None
