"""What a sweep runs on a worker: the shared export, one build, one board's device jobs. Plain functions of plain
data (no Ray here): the executor runs them in this process or as Ray tasks. A job builds in a private temporary
folder and hands its OUT back as a tar stream; only the driver writes the sweep's folder (atomically, per job), so
a worker killed mid-job leaves nothing behind."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import tempfile
import time
import traceback
from pathlib import Path, PurePosixPath

from edgeopt.errors import EdgeoptError, IntegrityError

MAX_UNPACKED = 64 << 30  # bytes a job's OUT may unpack to


def pack(folder: Path) -> bytes:
    """``folder`` as an uncompressed tar stream (ONNX weights barely compress)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_symlink() or not (p.is_file() or p.is_dir()):
                continue
            tar.add(p, arcname=p.relative_to(folder).as_posix(), recursive=False)
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> None:
    """Extract a stream made by :func:`pack` into ``dest``: plain files and folders only, inside ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            name = PurePosixPath(m.name)
            if name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir()):
                raise IntegrityError(f"A job's output holds {m.name!r}, which is not a plain path inside it.",
                                     "Rerun the sweep; report it if it happens again.")
            total += m.size
            if total > MAX_UNPACKED:
                raise IntegrityError("A job's output unpacks to more than 64 GiB.", "Rerun with fewer targets.")
            target = dest.joinpath(*name.parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            with open(target, "wb") as f:
                while chunk := src.read(1 << 20):
                    f.write(chunk)


def where() -> dict:
    """The node and process a job ran in."""
    node = None
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - not under Ray
        node = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "node": node}


def _failure(exc: BaseException) -> dict:
    if isinstance(exc, EdgeoptError):
        return {"status": "failed", "problem": exc.problem, "fix": exc.fix}
    return {"status": "failed", "problem": f"{type(exc).__name__}: {str(exc)[:500]}",
            "fix": "Rerun the job alone with edgeopt build -v to see the traceback.",
            "traceback": traceback.format_exc(limit=8)}


def _recipe(entry: dict):
    from edgeopt.config.recipe import recipe_from_dict

    return recipe_from_dict(entry["recipe"], Path(entry["base_dir"]), entry["recipe_path"])


def export_job(entry: dict) -> dict:
    """Export a model once for every job that shares it. Returns the export folder as a tar stream."""
    from edgeopt.pipeline.api import export
    from edgeopt.report.progress import Reporter

    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeopt-sweep-export-") as tmp:
            out = Path(tmp) / "out"
            export(_recipe(entry), out, reporter=Reporter(quiet=True))
            blob = pack(out / "export")
        return {"status": "ok", "export": blob, "seconds": time.monotonic() - start, "where": where()}
    except Exception as exc:  # noqa: BLE001 - the build jobs then export on their own and report the error
        return {**_failure(exc), "seconds": time.monotonic() - start, "where": where()}


def build_job(entry: dict, job: dict, export: dict | None, profile: bool = True, announce=None,
              previous: bytes | None = None) -> dict:
    """One build (one target x precision) in a private folder, seeded with the job's OUT of an earlier sweep
    (``previous``: the build reuses what is still valid there, as a rerun of ``edgeopt build`` does) or else the
    shared export. Returns the OUT as a tar stream with the job's outcome; an EdgeoptError is an outcome (a failed
    job), not a crash."""
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    if announce is not None:
        announce(where())
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgeopt-sweep-job-") as tmp:
        out = Path(tmp) / "out"
        reused = bool(export and export.get("status") == "ok") and previous is None
        if previous is not None:
            unpack(previous, out)
        elif reused:
            unpack(export["export"], out / "export")
        try:
            m = build(_recipe(entry), out, targets=(job["target"],), precisions=(job["precision"],), force=True,
                      reporter=Reporter(quiet=True), profile=profile)
            art = next((a for a in m.get("artifacts", []) if a.get("target") == job["target"]), {})
            result = {"status": "ok", "artifact": art.get("id"), "artifact_status": art.get("status"),
                      "reason": art.get("reason")}
        except Exception as exc:  # noqa: BLE001 - recorded; the OUT (if any) is still returned for its logs
            result = _failure(exc)
        result["shared_export"] = reused and _reused(out, "Reusing the exported ONNX")
        result["resumed"] = previous is not None
        result["out"] = pack(out) if (out / "manifest.json").is_file() else None
    return {**result, "seconds": time.monotonic() - start, "where": where()}


def _reused(out: Path, words: str) -> bool:
    log = out / "logs" / "build.log"
    return log.is_file() and words in log.read_text(errors="replace")


def farm_job(board: str, outs: dict[str, bytes], batches: tuple[int, ...], duration_s: float) -> dict:
    """On a board: finish each device package there (build, parity, profile) or profile each artifact that runs
    there. ``outs``: job id -> OUT tar stream. Returns per job id the artifacts' results, and the device."""
    from edgeopt.core.artifact import ARTIFACT_JSON
    from edgeopt.device.fingerprint import device_fingerprint
    from edgeopt.device.package import compile_package, is_package
    from edgeopt.pipeline.api import profile
    from edgeopt.report.progress import Reporter

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-farm-") as tmp:
        for jid, blob in outs.items():
            folder = Path(tmp) / f"job{len(results)}"
            unpack(blob, folder)
            res = {}
            for art in sorted(p for p in folder.iterdir() if p.is_dir()):
                try:
                    if is_package(art):
                        r = compile_package(art, profile_batches=batches, reporter=Reporter(quiet=True),
                                            duration_s=duration_s)
                        res[art.name] = {k: r.get(k) for k in ("status", "parity", "latency") if r.get(k) is not None}
                    elif (art / ARTIFACT_JSON).is_file():
                        r = profile(art, batches=batches, duration_s=duration_s, reporter=Reporter(quiet=True))
                        for aid, row in r["artifacts"].items():
                            res[aid] = {"status": "ok", "latency": row.get("rows")}
                        for aid, why in (r.get("failed") or {}).items():
                            res[aid] = {"error": {"problem": str(why)}}
                except Exception as exc:  # noqa: BLE001 - one artifact's failure is its row
                    res[art.name] = {"error": {k: v for k, v in _failure(exc).items() if k in ("problem", "fix")}}
            results[jid] = res
    return {"board": board, "where": where(), "fingerprint": device_fingerprint(), "results": results}
