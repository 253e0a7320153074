"""Device packages: what ``edgeopt build`` ships for an artifact that must be built on the device that runs
it (TensorRT engines), and what finishes it there.

On the host (any machine, no TensorRT, no GPU), :func:`write_device_package` writes ``OUT/<id>/``::

    package.json        what this is: target, precision, files with sha256, status, the device's result
    artifact.json       id, backend, precision, target, spec, meta (edgeopt's artifact conventions)
    onnx/model.onnx     the ONNX TensorRT parses for this precision: FP32; FP16 (TensorRT 11: converted,
                        FP32 inputs/outputs kept; 10.x: the FP32 ONNX and the FP16 builder flag); INT8 Q/DQ
    build_plan.json     profiles, workspace, optimization level, DLA, precision mode, for the declared TensorRT
    lint.json           the TensorRT preflight (no errors, or no package)
    reference.npz       reference inputs and outputs (PyTorch) with the parity tolerance in package.json
    INSTRUCTIONS.md     how to finish on the device

On the device (Python 3.10, numpy and the backend only: nothing here imports torch, NNCF or OpenVINO),
:func:`compile_package` checks that the device is the target's, builds through the backend's ``compile``,
checks parity against the stored reference outputs, profiles, and swaps the completed folder in (engine,
``device_report.json``, ``package.json`` with status "ok"). The folder is then an ordinary artifact folder.

Packages work for the CPU backends too (fp32/fp16/bf16): :func:`package_from_out` makes one from an OUT folder,
which is how ``edgeopt device-compile OUT --remote HOST -t ort-cpu`` compiles on another machine.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from edgeopt import __version__
from edgeopt.errors import (
    BackendMissingError,
    CompileError,
    EdgeoptError,
    IntegrityError,
    ParityError,
    UserInputError,
)
from edgeopt.core.fsutil import (
    file_records,
    onnx_digest,
    sha256_file,
    sha256_json,
    staged_dir,
    write_json_atomic,
    write_text_atomic,
)
from edgeopt.core.records import Status, records_of

PACKAGE_JSON = "package.json"
PACKAGE_SCHEMA = "edgeopt.device-package/1"
ONNX_DIR = "onnx"
PACKAGE_ONNX = f"{ONNX_DIR}/model.onnx"
PLAN_JSON = "build_plan.json"
LINT_JSON = "lint.json"
REFERENCE_NPZ = "reference.npz"
INSTRUCTIONS = "INSTRUCTIONS.md"
REPORT_JSON = "device_report.json"


class PackageLintError(CompileError):
    """The TensorRT preflight found errors: the package is not written (the device would reject it)."""

    def __init__(self, report):
        errs = report.errors
        names = "; ".join(f"{f.code}" + (f" [{f.node}]" if f.node else "") for f in errs[:6])
        more = f" and {len(errs) - 6} more" if len(errs) > 6 else ""
        super().__init__(f"The TensorRT {report.tensorrt} preflight found {len(errs)} error(s): {names}{more}.",
                         "Fix each finding (see the manifest's lint findings, or run `edgeopt lint "
                         f"{report.onnx_path} --target {report.target}`), then build again.")
        self.report = report


# =============================================================================================
# host side: writing a package
# =============================================================================================

def write_device_package(ctx, plan, folder: Path, rec: dict) -> dict:
    """Write the device package for ``plan`` (a build ``Plan`` of status "not built here") into ``folder``.

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
        why_not_here=plan.reason)
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


class PackageSource:
    """Everything a package is made from (a small value object; see :func:`write_package_files`)."""

    def __init__(self, *, target, precision: str, spec, model_kind: str, onnx_path: Path, reference_path: Path,
                 tolerance: dict, calibration=None, compression=None, model: dict | None = None,
                 why_not_here: str | None = None, task=None):
        self.target, self.precision, self.spec, self.model_kind = target, precision, spec, model_kind
        self.onnx_path, self.reference_path, self.tolerance = Path(onnx_path), Path(reference_path), tolerance
        self.calibration, self.compression, self.model = calibration, _plain(compression), dict(model or {})
        self.why_not_here = why_not_here
        from edgeopt.core.tasks import TaskConfig

        self.task = task if task is not None else TaskConfig()

    @property
    def detector(self) -> bool:
        return self.task.type == "detection" or (self.task.type == "auto" and self.model_kind == "detector")

    @property
    def id(self) -> str:
        from edgeopt.core.artifact import artifact_id

        return artifact_id(self.target.name, self.precision)

    def key(self) -> str:
        """What the package depends on: same key, same package (a rebuild reuses it)."""
        if not self.onnx_path.is_file():
            raise UserInputError(f"The exported ONNX {self.onnx_path} is missing.", "Run `edgeopt export` (or build) again.")
        if not self.reference_path.is_file():
            raise UserInputError(f"The reference outputs {self.reference_path} are missing.",
                                 "Run `edgeopt export` (or build) again: it writes OUT/reference/reference.npz.")
        return sha256_json({"onnx": onnx_digest(self.onnx_path), "reference": sha256_file(self.reference_path),
                            "target": self.target.to_dict(), "precision": self.precision,
                            "spec": self.spec.to_dict(), "kind": self.model_kind, "tolerance": self.tolerance,
                            "calibration": getattr(self.calibration, "sha256", None),
                            "compression": self.compression, "task": self.task.to_dict(), "edgeopt": __version__})


def _plain(obj):
    """A recipe section (dict or dataclass) as plain data, for the package key."""
    import dataclasses

    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj) if isinstance(obj, dict) else repr(obj)


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
    reason = _reason(src, plan)
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
    elif form == "fp16":
        from edgeopt.backends.tensorrt.prepare import convert_to_fp16

        log(f"{src.id}: converting the ONNX to FP16 (FP32 inputs/outputs kept) for TensorRT {src.target.hardware.get('tensorrt')}")
        convert_to_fp16(src.onnx_path, dst)
    elif form == "qdq":
        if src.calibration is None:
            raise UserInputError(
                f"{src.id} needs an INT8 Q/DQ model, which is calibrated on data, and the recipe gives no calibration data.",
                "Add a [calibration] section to the recipe (and int8 to its precisions), or drop int8 for this target.")
        try:
            from edgeopt.backends.tensorrt.quantize import quantize_for_tensorrt
        except ImportError as exc:
            raise BackendMissingError("edgeopt.compress (the compression stage)", "nncf",
                                      f"quantize {src.id} to INT8 Q/DQ") from exc
        log(f"{src.id}: quantizing to INT8 Q/DQ for TensorRT (signed INT8, zero point 0)")
        meta["quantization"] = quantize_for_tensorrt(src.onnx_path, src.calibration, src.spec, dst, src.model_kind,
                                                   log=log)
    else:  # pragma: no cover - build_plan only yields the three forms
        raise CompileError(f"Unknown ONNX form {form!r}.", "Report this as a bug in edgeopt.")
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


def _where(target) -> str:
    """The device in words, from the target's [hardware]: 'Jetson Orin Nano 8GB (JetPack 6.2, TensorRT 10.3)'."""
    hw = target.hardware
    what = hw.get("module") or target.description or target.name
    bits = [f"JetPack {hw['jetpack']}" if hw.get("jetpack") else None,
            f"TensorRT {hw['tensorrt']}" if hw.get("tensorrt") else None,
            f"sm {hw['compute_capability']}" if hw.get("compute_capability") else None]
    bits = [b for b in bits if b]
    return f"{what} ({', '.join(bits)})" if bits else what


def _reason(src: PackageSource, plan) -> str:
    from edgeopt.backends import get_backend

    backend = get_backend(src.target.backend)
    if backend.builds_on_device:
        why = src.why_not_here or backend.device_build_why
        return (f"{why}. Device package written: finish on the {_where(src.target)} with `edgeopt device-compile "
                f"{src.id}` there, or from here with `edgeopt device-compile OUT/{src.id} --remote user@device` "
                f"(see {src.id}/{INSTRUCTIONS}).")
    return (f"Device package for {src.target.name}: compile it on the device with `edgeopt device-compile {src.id}` "
            f"(see {src.id}/{INSTRUCTIONS}).")


def instructions(src: PackageSource, plan, lint_summary: dict | None) -> str:
    t, hw = src.target, src.target.hardware
    pyver = hw.get("python") or "3.10"
    wheel = f"edgeopt-{__version__}-py3-none-any.whl"
    from edgeopt.backends import get_backend

    backend = get_backend(t.backend)
    extra_pkgs = "".join(f" {shlex.quote(r)}" for r in backend.device_requirements(hw.get("cuda")))
    lines = [
        f"# Finish `{src.id}` on the device",
        "",
        f"This folder is an edgeopt device package for **{t.name}** ({t.description or t.backend}), precision "
        f"**{src.precision}**. It was made by edgeopt {__version__} on a host that cannot build it: "
        + backend.device_build_note,
        "",
        f"Device: {_where(t)}" + (f", Python {pyver}" if hw.get("python") else "") + ".",
        "",
        "## On the device",
        "",
        "Copy this folder and the edgeopt wheel to the device (`pip wheel --no-deps PATH-TO-EDGEOPT` on the host "
        f"makes `{wheel}`), then:",
        "",
        "```sh",
        "python3 -m venv --system-site-packages ~/edgeopt-venv   # --system-site-packages: JetPack's TensorRT is used",
        f"~/edgeopt-venv/bin/pip install {wheel}{extra_pkgs}",
        f"~/edgeopt-venv/bin/edgeopt device-compile {src.id}",
        "```",
        "",
        "`device-compile` checks that the device matches the target (TensorRT version, GPU and compute capability, "
        "DLA), builds, compares the outputs with the reference outputs in `reference.npz` (tolerance in "
        "`package.json`), profiles, and completes this folder: the engine, `device_report.json` (with the device's "
        "JetPack, TensorRT, GPU, power mode, clocks and temperatures) and `package.json` with status \"ok\". "
        "Nothing is changed when a step fails.",
        "",
        "## Or from the host, over SSH",
        "",
        "```sh",
        "edgeopt remote setup user@device                         # once: venv + this edgeopt version on the device",
        f"edgeopt device-compile OUT/{src.id} --remote user@device   # repeat --remote for several devices",
        "```",
        "",
        "The results come back to `OUT/remote/<host>/` (engine, report, device fingerprint). The SSH client uses "
        "your `~/.ssh/config`, keys and agent; host keys are checked.",
    ]
    if plan is not None:
        prof = ", ".join(f"{n} {p['min']}..{p['max']} (opt {p['opt']})" for n, p in plan.profiles.items())
        lines += [
            "",
            "## Build plan (`build_plan.json`)",
            "",
            f"- TensorRT {plan.tensorrt} (declared by the target; re-planned on the device for its installed version)",
            f"- precision {plan.precision}: {plan.notes[0] if plan.notes else ''}",
            f"- ONNX: `{PACKAGE_ONNX}` ({plan.onnx})",
            f"- optimization profile: {prof}",
            f"- workspace: {plan.workspace_mb or 'TensorRT default'} MiB, builder optimization level "
            f"{plan.optimization_level}, DLA: {plan.dla_core if plan.dla_core is not None else 'none (GPU)'}",
        ]
    if lint_summary is not None:
        lines += ["", "## Preflight (`lint.json`)", "",
                  f"TensorRT {lint_summary['tensorrt']}: {lint_summary['errors']} error(s), "
                  f"{lint_summary['warnings']} warning(s)."]
        for f in lint_summary["findings"]:
            lines.append(f"- {f['severity']} {f['code']}" + (f" [{f['node']}]" if f["node"] else "")
                         + f": {f['message']} Fix: {f['fix']}")
    return "\n".join(lines) + "\n"


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


# =============================================================================================
# reading a package (both sides)
# =============================================================================================

def is_package(folder: Path) -> bool:
    return (Path(folder) / PACKAGE_JSON).is_file()


def read_package(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / PACKAGE_JSON
    if not path.is_file():
        raise UserInputError(f"{folder} is not an edgeopt device package (no {PACKAGE_JSON}).",
                             "Point at OUT/<artifact-id> written by `edgeopt build` for a TensorRT target "
                             "(its status says \"not built here\").")
    try:
        pkg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is corrupt: {exc}.", "Copy the package again from the host, or rebuild it.") from None
    if pkg.get("schema") != PACKAGE_SCHEMA:
        raise IntegrityError(f"{path} has schema {pkg.get('schema')!r}; this edgeopt reads {PACKAGE_SCHEMA}.",
                             f"Use the edgeopt version that made it ({pkg.get('edgeopt_version', 'unknown')}), or rebuild it.")
    return pkg


def verify_package_files(folder: Path, pkg: dict) -> None:
    """Every file package.json lists is there with its sha256 (a copy to the device can be cut short)."""
    folder = Path(folder)
    for f in pkg.get("files", []):
        rel = Path(f["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise IntegrityError(f"{PACKAGE_JSON} lists a path outside the package: {f['path']}.", "Rebuild the package.")
        p = folder / rel
        if not p.is_file():
            raise IntegrityError(f"The package {folder.name} lacks {f['path']}.",
                                 "Copy the whole package folder again (the copy was incomplete).")
        if p.stat().st_size != f.get("bytes", p.stat().st_size) or sha256_file(p) != f["sha256"]:
            raise IntegrityError(f"{f['path']} in {folder.name} does not match its sha256 in {PACKAGE_JSON}.",
                                 "Copy the package again (it was damaged or changed), or rebuild it.")


def find_packages(out: Path) -> list[Path]:
    """The device packages directly inside an OUT folder, in name order."""
    out = Path(out)
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and is_package(p))


# =============================================================================================
# device side: compiling a package
# =============================================================================================

def check_device(target, backend, package_id: str = "", force: bool = False) -> dict:
    """Raise a clear error unless this machine can build ``target``'s artifact; return what was found."""
    where = _where(target)
    run_there = (f"Run `edgeopt device-compile PACKAGE` on the {where}, or from this host: `edgeopt device-compile "
                 "PACKAGE --remote user@device`.")
    return backend.check_device(target, package_id or target.name, run_there, force=force)


def _link_package(src: Path, stage: Path, pkg: dict) -> None:
    """Hard-link (or copy) the package's own files into ``stage``; outputs of an earlier build are dropped."""
    names = [f["path"] for f in pkg.get("files", [])] + [PACKAGE_JSON]
    for name in names:
        s, d = src / name, stage / name
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)


def compile_package(package_dir: Path, threads: int | None = None, profile_batches=(1,), reporter=None, *,
                    force: bool = False, duration_s: float = 1.5, cache_dir: Path | None = None) -> dict:
    """Build the package's artifact on this device, check parity against the stored reference outputs,
    profile it, and complete the package folder (atomically). Returns the artifact's record (status "ok").

    Raises :class:`EdgeoptError` (nothing changed) when the device is not the target's, TensorRT or the GPU is
    missing, the package is damaged, the build fails, or the outputs differ beyond the package's tolerance.
    """
    import time

    from edgeopt.core.artifact import ARTIFACT_JSON, read_artifact_json
    from edgeopt.backends.artifact import open_artifact
    from edgeopt.backends import CompileRequest, get_backend
    from edgeopt.core.isolation import cache_dir as default_cache_dir
    from edgeopt.core.parity import Tolerance, figures, parity, parity_summary
    from edgeopt.core.profile import profile_runner
    from edgeopt.core.profile import ProfileConfig
    from edgeopt.core.reference import load_reference
    from edgeopt.report.progress import Reporter
    from edgeopt.core.spec import IOSpec
    from edgeopt.core.targets import Target

    reporter = reporter or Reporter()
    # Resolved: `device-compile .` run inside the package would otherwise swap "." itself (EBUSY at the rename).
    folder = Path(package_dir).resolve()
    pkg = read_package(folder)
    art = read_artifact_json(folder)
    target, spec = Target.from_dict(art["target"]), IOSpec.from_dict(art["spec"])
    backend = get_backend(art["backend"])
    pid, precision = pkg["id"], pkg["precision"]
    found = check_device(target, backend, pid, force=force)
    verify_package_files(folder, pkg)
    reporter.step(f"{pid}: compiling on this device ({_device_words(found)})")
    feeds, refs = load_reference(folder / REFERENCE_NPZ)
    tol = Tolerance(**pkg["reference"]["tolerance"])
    lo, hi = spec.batch_range()
    batches = tuple(b for b in profile_batches if lo <= int(b) <= hi) or (lo,)
    cfg = ProfileConfig(batches=batches, threads=threads, duration_s=duration_s, baseline=False)
    fingerprint = device_fingerprint()
    t0 = time.perf_counter()
    with staged_dir(folder) as stage:
        _link_package(folder, stage, pkg)
        req = CompileRequest(onnx_path=stage / PACKAGE_ONNX, target=target, precision=precision, spec=spec,
                             out_dir=stage, model_kind=pkg.get("model_kind", "generic"),
                             options=dict(target.options), cache_dir=Path(cache_dir) if cache_dir else default_cache_dir())
        meta = backend.compile(req)
        compile_s = time.perf_counter() - t0
        meta = {**meta, "package": {"onnx": PACKAGE_ONNX, "onnx_form": pkg["onnx"]["form"], "key": pkg.get("key")}}
        write_json_atomic(stage / ARTIFACT_JSON, {**art, "meta": meta, "backend_version": backend.version(),
                                                  "key": meta.get("cache_key", art.get("key")),
                                                  "edgeopt_version": __version__})
        runner, _ = open_artifact(stage, threads=threads)
        with runner:
            got = [runner.infer(f) for f in feeds]
            rep = parity(refs, got, tol, pkg.get("model_kind", "generic"))
            if not rep["passed"]:
                raise ParityError(f"{pid} built on this device differs from the reference: {rep['reason']} "
                                  f"({figures(rep)}).",
                                  "Use another precision, or loosen the tolerance ([parity.tolerances] in the recipe) "
                                  "and make the package again if the difference is acceptable.")
            reporter.info(f"{pid}: parity max abs {rep['max_abs']:.2e}, cosine {rep['cosine']:.6f}")
            reporter.step(f"{pid}: profiling batch {','.join(map(str, batches))}")
            prof = profile_runner(runner, spec, batches, cfg)
            gpu_timing = _gpu_timing(runner, spec, batches)
            runtime = runner.properties()
        result = {"status": Status.OK, "compile_s": round(compile_s, 3), "parity": parity_summary(rep),
                  "latency": prof["rows"], "load_s": prof["load_s"], "threads": prof["threads"],
                  "peak_rss_mb": prof["peak_rss_mb"], "gpu_timing": gpu_timing, "runtime": runtime, "meta": meta,
                  "compiled": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "edgeopt_version": __version__, "python": platform.python_version()}
        write_json_atomic(stage / REPORT_JSON, {"id": pid, **result, "device": fingerprint})
        done = {**pkg, "status": Status.OK, "reason": None, "device": fingerprint,
                "result": {k: v for k, v in result.items() if k != "meta"}}
        write_json_atomic(stage / PACKAGE_JSON, done)
        files = file_records(stage, stage)
    reporter.info(f"{pid}: done; the folder {folder} now holds the artifact built here")
    return {"id": pid, "target": pkg["target"], "backend": pkg["backend"], "device": pkg.get("device"),
            "precision": precision, "reason": None, "files": files, **result, "device_fingerprint": fingerprint}


def _device_words(found: dict) -> str:
    gpu = found.get("gpu")
    if gpu:
        return f"TensorRT {found['version']}, {gpu['name']} sm {gpu['compute_capability']}"
    return f"{found['backend']} {found.get('version') or ''}".strip()


def _gpu_timing(runner, spec, batches) -> dict | None:
    """TensorRT: GPU compute vs end-to-end (copies included) per batch, from CUDA events."""
    if not hasattr(runner, "time_inference"):
        return None
    from edgeopt.core.profile import feed_for_batch

    return {str(b): runner.time_inference(feed_for_batch(spec, b), iterations=50, warmup=5)["summary"] for b in batches}


# =============================================================================================
# device fingerprint (stdlib only; every field optional, never fails)
# =============================================================================================

L4T_TO_JETPACK = {"35.5.0": "5.1.3", "35.6.0": "5.1.4", "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1",
                  "36.4.3": "6.2", "36.4.4": "6.2.1", "38.2.0": "7.0", "38.2.1": "7.0"}


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    exe = shutil.which(cmd[0]) or next((p for p in (f"/usr/sbin/{cmd[0]}", f"/usr/bin/{cmd[0]}")
                                        if os.access(p, os.X_OK)), None)
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "LC_ALL": "C"}, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(65536).decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a fingerprint field that cannot be read is None, never an error
        return None


def parse_tegra_release(text: str | None) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    if not m:
        return None
    rev = m.group(2).split(".")
    return ".".join([m.group(1), *rev, *(["0"] if len(rev) == 1 else [])])


def parse_nvpmodel(text: str | None) -> dict | None:
    """`nvpmodel -q` -> {'name': '15W', 'id': 2}."""
    if not text:
        return None
    m = re.search(r"NV Power Mode:\s*(.+)", text)
    ids = [ln.strip() for ln in text.splitlines() if ln.strip().isdigit()]
    if not m and not ids:
        return None
    return {"name": m.group(1).strip() if m else None, "id": int(ids[0]) if ids else None}


def parse_jetson_clocks(text: str | None) -> dict | None:
    """`jetson_clocks --show` -> GPU/EMC min/max/current and whether the clocks are pinned at maximum."""
    if not text:
        return None
    out: dict = {}
    for unit in ("GPU", "EMC"):
        m = re.search(rf"^{unit}\s+MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", text, re.M)
        if m:
            out[unit.lower()] = {"min_hz": int(m.group(1)), "max_hz": int(m.group(2)), "current_hz": int(m.group(3))}
    cpus = re.findall(r"^cpu\d+:.*?MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", text, re.M)
    if cpus:
        out["cpu_online"] = len(cpus)
        out["cpu_pinned"] = all(a == b for a, b, _ in cpus)
    gpu = out.get("gpu")
    out["active"] = (gpu["min_hz"] == gpu["max_hz"]) if gpu else None
    out["raw"] = text[:4000]
    return out


def _temperatures() -> dict | None:
    temps = {}
    base = Path("/sys/class/thermal")
    for zone in sorted(base.glob("thermal_zone*")) if base.is_dir() else []:
        name, raw = _read(str(zone / "type")), _read(str(zone / "temp"))
        if raw is None:
            continue
        try:
            temps[name or zone.name] = round(int(raw) / 1000.0, 1)
        except ValueError:
            continue
    return temps or None


def _dpkg_version(package: str) -> str | None:
    out = _run(["dpkg-query", "-W", "-f=${Version}", package])
    return out.strip() or None if out is not None else None


def _tensorrt_version() -> str | None:
    from edgeopt.backends.tensorrt.install import installed_tensorrt_version

    return installed_tensorrt_version(deb_version=_dpkg_version)


def _gpu() -> dict | None:
    try:
        from edgeopt.backends.tensorrt.cuda import probe_cuda_python  # cuda-python only: no torch here

        gpu, _ = probe_cuda_python(0)
        if gpu:
            return gpu
    except Exception:  # noqa: BLE001
        pass
    out = _run(["nvidia-smi", "--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader"])
    if out and out.strip():
        parts = [p.strip() for p in out.strip().splitlines()[0].split(",")]
        return {"name": parts[0], "compute_capability": parts[1] if len(parts) > 1 else None,
                "memory": parts[2] if len(parts) > 2 else None, "driver": parts[3] if len(parts) > 3 else None,
                "via": "nvidia-smi"}
    return None


def _cuda_version() -> str | None:
    text = _read("/usr/local/cuda/version.json")
    if text:
        try:
            return json.loads(text)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            pass
    return None


def _memory() -> dict | None:
    text = _read("/proc/meminfo")
    if not text:
        return None
    vals = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
            vals[k] = round(int(v.split()[0]) / 1024.0, 1)
    return {"total_mb": vals.get("MemTotal"), "available_mb": vals.get("MemAvailable"),
            "swap_total_mb": vals.get("SwapTotal"), "swap_free_mb": vals.get("SwapFree")} if vals else None


def device_fingerprint() -> dict:
    """What this device is and how it is set up, for every result measured on it. Never raises."""
    l4t = _safe(lambda: parse_tegra_release(_read("/etc/nv_tegra_release")))
    l4t_pkg = _safe(lambda: _dpkg_version("nvidia-l4t-core"))
    if l4t is None and l4t_pkg:
        l4t = l4t_pkg.split("-")[0]
    jetpack = _safe(lambda: _dpkg_version("nvidia-jetpack"))
    if jetpack is None and l4t:
        jetpack = L4T_TO_JETPACK.get(l4t)
    fields = {
        "hostname": lambda: platform.node(),
        "model": lambda: _read("/proc/device-tree/model"),
        "arch": lambda: platform.machine(),
        "kernel": lambda: platform.release(),
        "python": lambda: platform.python_version(),
        "edgeopt": lambda: __version__,
        "tensorrt": _tensorrt_version,
        "cuda": _cuda_version,
        "gpu": _gpu,
        "memory": _memory,
        "nvpmodel": lambda: parse_nvpmodel(_run(["nvpmodel", "-q"])),
        "jetson_clocks": lambda: parse_jetson_clocks(_run(["jetson_clocks", "--show"])),
        "temperatures_c": _temperatures,
    }
    fp = {"l4t": l4t, "l4t_core_package": l4t_pkg, "jetpack": jetpack}
    for name, fn in fields.items():
        fp[name] = _safe(fn)
    fp["taken"] = _safe(lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return fp
