"""Jobs on devices: ``remote_compile`` and ``remote_profile`` upload packages or artifacts into a job folder on
each host, run the agent there, bring the results back into ``OUT/remote/<host>/`` (checked, swapped in
whole) and note each host's outcome in OUT's manifest.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import uuid
from pathlib import Path
from edgeopt import __version__
from edgeopt.errors import EdgeoptError, UserInputError
from edgeopt.core.records import Status
from edgeopt.device.remote.ssh import (
    RemoteError, RemoteOptions, for_hosts, hello, host_slug, reporter_or_default, resolve_options, rjoin, rpath,
    run_agent, run_ssh,
)
from edgeopt.device.remote.transfer import pull, push


def _job_dir(opts: RemoteOptions) -> str:
    return rjoin(opts.workdir, "jobs", f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}")


def _cleanup(host: str, remote_dir: str, opts: RemoteOptions) -> None:
    if opts.keep_remote:
        return
    try:
        run_ssh(host, f"rm -rf -- {rpath(remote_dir)}", opts, 120)
    except EdgeoptError:
        pass


def _resolve_packages(path: Path, targets, precisions, tmp: Path) -> tuple[list[tuple[str, Path]], Path]:
    """[(artifact id, local package folder)] and the folder results go under (OUT, or the package's parent)."""
    from edgeopt.backends import get_backend
    from edgeopt.device.package import find_packages, is_package, package_from_out, read_package

    path = Path(path).resolve()  # "." inside a package: results go beside it, not into it
    if is_package(path):
        pkg = read_package(path)
        if targets or precisions:
            raise UserInputError(f"{path} is one package ({pkg['id']}); --target/--precision choose packages in an "
                                 "OUT folder.", "Drop --target/--precision, or point at the OUT folder.")
        return [(pkg["id"], path)], path.parent
    if not (path / "manifest.json").is_file():
        raise UserInputError(f"{path} is neither a device package nor an edgeopt output folder.",
                             "Give OUT (from `edgeopt build`) or OUT/<artifact-id> with a package.json.")
    found = {read_package(p)["id"]: p for p in find_packages(path)}
    if not targets:
        chosen = {i: p for i, p in found.items() if not precisions or read_package(p)["precision"] in precisions}
        if not chosen:
            raise UserInputError(f"{path} holds no device packages" + (f" for {list(precisions)}" if precisions else "")
                                 + ".", "Build for a device target (edgeopt build --target jetson-orin-nano), or name "
                                 "a target to package from this OUT: --target ort-cpu --precision fp32.")
        return sorted(chosen.items()), path
    from edgeopt.core.artifact import artifact_id
    from edgeopt.core.targets import get_target

    out = []
    for t in targets:
        target = get_target(t)
        for p in (precisions or target.precisions):
            if p not in target.precisions:
                if precisions:
                    raise UserInputError(f"Target {target.name} does not offer {p}.", f"It offers: {', '.join(target.precisions)}.")
                continue
            aid = artifact_id(target.name, p)
            if aid in found:
                out.append((aid, found[aid]))
            elif p == "int8" and get_backend(target.backend).builds_on_device:  # calibrated on the host
                raise UserInputError(f"{path} has no device package {aid}.",
                                     f"Build it first: edgeopt build RECIPE --target {target.name} --precision int8.")
            else:
                package_from_out(path, target.name, p, tmp / aid)
                out.append((aid, tmp / aid))
    return out, path


def remote_compile(hosts, package_or_out, *, targets=(), precisions=(), threads: int | None = None,
                   profile_batches=(1,), duration_s: float = 1.5, force: bool = False, output: str | Path | None = None,
                   reporter=None, options: RemoteOptions | None = None, **overrides) -> dict:
    """Compile device packages on each host (several at once) and bring the results back.

    ``package_or_out``: one package folder, or an OUT folder (its packages, or packages made on the fly for
    ``targets``/``precisions``). Results land in ``OUT/remote/<host>/<artifact-id>/`` (or ``output``):
    the artifact built there (engine, artifact.json, device_report.json with the device fingerprint).
    Returns {"ok", "hosts": {host: {...per-artifact records... or "error"}}}.
    """
    opts = resolve_options(options, overrides)
    reporter = reporter_or_default(reporter)
    with tempfile.TemporaryDirectory(prefix="edgeopt-packages-") as tmp:
        packages, base = _resolve_packages(Path(package_or_out), tuple(targets), tuple(precisions), Path(tmp))
        out_root = Path(output) if output else base / "remote"
        args = {"threads": threads, "batches": [int(b) for b in profile_batches], "force": force,
                "duration_s": duration_s, "expect_version": __version__}

        def one(host):
            return _compile_on(host, packages, args, out_root, opts, reporter)

        result = for_hosts(hosts, one, reporter)
    result["output"] = str(out_root)
    record_device_results(base, result, "compiled")
    return result


@contextlib.contextmanager
def _job_on(host: str, items, verb: str, key: str, args: dict, opts: RemoteOptions, reporter):
    """Upload ``items`` ((id, local path) pairs) into a fresh job folder on ``host`` and run the agent's
    ``verb`` there; yields (hello, job folder, agent result). The job folder is removed afterwards."""
    h = hello(host, opts)
    job = _job_dir(opts)
    try:
        reporter.step(f"{host}: uploading {', '.join(i for i, _ in items)}")
        push(host, [(p, i) for i, p in items], job, opts, free_bytes=h.get("free_bytes"))
        reporter.step(f"{host}: running {verb} on the device")
        res = run_agent(host, verb, {**args, key: [i for i, _ in items]}, opts, cwd=job,
                    on_line=lambda line: reporter.info(f"[{host}] {line}"))
        yield h, job, res
    finally:
        _cleanup(host, job, opts)


def _compile_on(host: str, packages, args: dict, out_root: Path, opts: RemoteOptions, reporter) -> dict:
    from edgeopt.core.fsutil import clean_stale_staging, write_json_atomic

    with _job_on(host, packages, "compile", "packages", args, opts, reporter) as (h, job, res):
        ok_ids = [i for i, r in res["results"].items() if "error" not in r]
        host_dir = out_root / host_slug(host)
        host_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(host_dir)
        artifacts = {}
        if ok_ids:
            names = [f"{i}/{f['path']}" for i in ok_ids for f in res["results"][i]["files"]
                     if not f["path"].startswith("onnx/")]
            landing = Path(tempfile.mkdtemp(prefix=".staging-pull-", dir=host_dir))
            try:
                reporter.step(f"{host}: downloading {', '.join(ok_ids)}")
                pull(host, job, names, landing, opts)
                for i in ok_ids:
                    artifacts[i] = _place(host, landing / i, host_dir / i, res["results"][i])
            finally:
                import shutil

                shutil.rmtree(landing, ignore_errors=True)
        for i, r in res["results"].items():
            if "error" in r:
                reporter.error(f"{host}: {i}: {r['error']['problem']}")
                artifacts[i] = {"status": Status.FAILED, "error": r["error"]}
        write_json_atomic(host_dir / "device.json", {"host": host, "fingerprint": res.get("fingerprint"),
                                                     "edgeopt_version": h.get("edgeopt_version"),
                                                     "python": h.get("python")})
    return {"ok": all(a["status"] == Status.OK for a in artifacts.values()), "artifacts": artifacts,
            "fingerprint": res.get("fingerprint"), "edgeopt_version": h.get("edgeopt_version"),
            "python": h.get("python"), "path": str(host_dir)}


def _place(host: str, pulled: Path, final: Path, record: dict) -> dict:
    """Check the pulled files against the device's sha256 list, then swap them in as ``final``."""
    import shutil

    from edgeopt.core.fsutil import sha256_file, staged_dir

    for f in record["files"]:
        if f["path"].startswith("onnx/"):
            continue
        p = pulled / f["path"]
        if not p.is_file() or sha256_file(p) != f["sha256"]:
            raise RemoteError(host, f"{record['id']}/{f['path']} arrived damaged or incomplete.",
                              "Retry; check the network and the device's disk.", kind="transfer")
    with staged_dir(final) as stage:
        for item in pulled.iterdir():
            shutil.move(str(item), str(stage / item.name))
    keep = ("status", "compile_s", "parity", "latency", "load_s", "threads", "peak_rss_mb", "gpu_timing")
    return {**{k: record.get(k) for k in keep}, "path": str(final)}


def _artifact_folders(path: Path, host_dir: Path | None) -> list[tuple[str, Path]]:
    from edgeopt.core.artifact import ARTIFACT_JSON, read_artifact_json
    from edgeopt.core.manifest import MANIFEST, load_manifest

    path = Path(path)
    if (path / ARTIFACT_JSON).is_file() and not (path / "package.json").is_file():
        return [(read_artifact_json(path)["id"], path)]
    if (path / "package.json").is_file():
        pkg = json.loads((path / "package.json").read_text())
        if pkg.get("status") != Status.OK:
            raise UserInputError(f"{path} is a device package that was not compiled yet.",
                                 f"Compile it on the device first: edgeopt device-compile {path} --remote HOST.")
        return [(pkg["id"], path)]
    if not (path / MANIFEST).is_file():
        raise UserInputError(f"{path} is neither an artifact folder nor an edgeopt output folder.",
                             "Give OUT (with manifest.json) or OUT/<artifact-id> (with artifact.json).")
    found = {a.id: path / a.id for a in load_manifest(path).records if a.ok}
    if host_dir is not None and host_dir.is_dir():  # what was compiled on this host earlier
        for p in sorted(host_dir.iterdir()):
            if p.is_dir() and (p / ARTIFACT_JSON).is_file() and not p.name.startswith("."):
                found[p.name] = p
    return sorted(found.items())


def remote_profile(hosts, path, *, batches=(1,), threads: int | None = None, duration_s: float = 1.5,
                   iterations: int | None = None, warmup: int = 10, output: str | Path | None = None, reporter=None,
                   options: RemoteOptions | None = None, **overrides) -> dict:
    """Profile artifacts on each host: an artifact folder, or every "ok" artifact of OUT plus what was
    compiled on that host before (OUT/remote/<host>/). Reports land in OUT/remote/<host>/profile.json."""
    opts = resolve_options(options, overrides)
    reporter = reporter_or_default(reporter)
    path = Path(path)
    base = path if (path / "manifest.json").is_file() else path.parent
    out_root = Path(output) if output else base / "remote"
    args = {"batches": [int(b) for b in batches], "threads": threads, "duration_s": duration_s,
            "iterations": iterations, "warmup": warmup, "expect_version": __version__}
    _artifact_folders(path, None)  # a wrong path is one error for the command, before any host is contacted

    def one(host):
        from edgeopt.core.fsutil import write_json_atomic

        host_dir = out_root / host_slug(host)
        folders = _artifact_folders(path, host_dir)
        if not folders:
            raise UserInputError(f"Nothing to profile in {path}: no artifact with status ok.",
                                 "Build first (edgeopt build), or compile on the device (edgeopt device-compile OUT --remote HOST).")
        with _job_on(host, folders, "profile", "paths", args, opts, reporter) as (h, _job, res):
            pass
        report = {"host": host, "batches": args["batches"], "fingerprint": res.get("fingerprint"),
                  "edgeopt_version": h.get("edgeopt_version"), "artifacts": res["results"]}
        host_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(host_dir / "profile.json", report)
        for i, r in res["results"].items():
            if "error" in r:
                reporter.error(f"{host}: {i}: {r['error']['problem']}")
        return {"ok": all("error" not in r for r in res["results"].values()), "artifacts": res["results"],
                "fingerprint": res.get("fingerprint"), "path": str(host_dir / "profile.json")}

    result = for_hosts(hosts, one, reporter)
    result["output"] = str(out_root)
    record_device_results(base, result, "profiled")
    return result


def record_device_results(base: Path, result: dict, what: str) -> None:
    """Add each host's outcome to the matching artifact records of OUT/manifest.json under ``devices``."""
    from edgeopt.core.fsutil import write_json_atomic

    path = Path(base) / "manifest.json"
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    by_id = {a.get("id"): a for a in data.get("artifacts", [])}
    changed = False
    for host, r in result["hosts"].items():
        fp = r.get("fingerprint") or {}
        brief = {k: fp.get(k) for k in ("model", "jetpack", "l4t", "tensorrt", "nvpmodel") if fp.get(k) is not None}
        for aid, a in (r.get("artifacts") or {}).items():
            if aid not in by_id:
                continue
            entry = by_id[aid].setdefault("devices", {}).setdefault(host, {})
            if "error" in a:
                entry[what] = {"status": Status.FAILED, "error": a["error"]}
            else:
                entry[what] = {k: a.get(k) for k in ("status", "parity", "latency", "rows", "path") if a.get(k) is not None}
                entry["device"] = {**brief, "gpu": (fp.get("gpu") or {}).get("name")} if fp else None
            changed = True
    if changed:
        write_json_atomic(path, data)
