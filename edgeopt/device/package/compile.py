"""The device side: ``edgeopt device-compile`` builds a package's artifact through its backend, checks parity
against the stored reference outputs, profiles it, and completes the package folder atomically.
"""

from __future__ import annotations

import os
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path
from edgeopt import __version__
from edgeopt.errors import (
    ParityError,
)
from edgeopt.core.fsutil import (
    file_records,
    staged_dir,
    write_json_atomic,
)
from edgeopt.core.records import Status
from edgeopt.device.fingerprint import device_fingerprint
from edgeopt.device.package.format import (
    PACKAGE_JSON, PACKAGE_ONNX, REFERENCE_NPZ, REPORT_JSON, read_package, verify_package_files,
)
from edgeopt.device.package.instructions import describe_device


def check_device(target, backend, package_id: str = "", force: bool = False) -> dict:
    """Raise a clear error unless this machine can build ``target``'s artifact; return what was found."""
    where = describe_device(target)
    run_there = (f"Run `edgeopt device-compile PACKAGE` on the {where}, or from this host: `edgeopt device-compile "
                 "PACKAGE --remote user@device`.")
    from edgeopt.backends import get_packaging

    return get_packaging(backend.name).check_device(target, package_id or target.name, run_there, force=force)


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
            if (prof.get("power") or {}).get("warning"):
                reporter.warn(f"{pid}: energy: {prof['power']['warning']}.")
            gpu_timing = _gpu_timing(runner, spec, batches)
            runtime = runner.properties()
        result = {"status": Status.OK, "compile_s": round(compile_s, 3), "parity": parity_summary(rep),
                  "latency": prof["rows"], "load_s": prof["load_s"], "threads": prof["threads"],
                  "peak_rss_mb": prof["peak_rss_mb"], "gpu_timing": gpu_timing, "runtime": runtime, "meta": meta,
                  "power": prof.get("power"),  # the energy figures' source, nvpmodel mode, clocks locked
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
