"""This device and a bundle: can an artifact run here (backend, device, versions), does it give the reference
outputs (the self-test), and ``verify``, which reports both for every artifact.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from edgeopt import __version__
from edgeopt.errors import ArtifactLoadError, EdgeoptError, IntegrityError, ParityError, UserInputError
from edgeopt.core.untrusted import printable
from edgeopt.core.records import ArtifactRecord
from edgeopt.ship.bundle.format import GET_AGAIN, IncompatibleError, Limits
from edgeopt.ship.bundle.read import Bundle, open_bundle


@dataclass(frozen=True)
class Compatibility:
    artifact: str
    ok: bool
    reason: str | None = None
    fix: str | None = None
    backend_version: str | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"runs_here": self.ok, "reason": self.reason, "fix": self.fix,
                "backend_version": self.backend_version, "warnings": list(self.warnings)}


def installed_version(backend) -> str | None:
    """The backend's installed version; falls back to the module's ``__version__`` (onnxruntime-gpu,
    JetPack's tensorrt and other builds installed under another distribution name)."""
    v = backend.version()
    if v:
        return v
    with contextlib.suppress(Exception):
        import importlib

        return getattr(importlib.import_module(backend.module), "__version__", None)
    return None


def rebuild_fix(rec: ArtifactRecord, needs: str, verb: str = "Rebuild") -> str:
    return (f"{verb} {rec.id} for this device: `edgeopt build RECIPE --target {rec.target} --precision "
            f"{rec.precision}` on {needs}, then `edgeopt bundle` again.")


def _other_target_fix(rec: ArtifactRecord, verb: str = "Rebuild") -> str:
    return (f"{verb} for a target this device has: `edgeopt targets` (run here) lists them; then `edgeopt build "
            f"RECIPE --target TARGET --precision {rec.precision}` and `edgeopt bundle` again.")


def check_compatibility(b: Bundle, rec: ArtifactRecord) -> Compatibility:
    """Can ``rec`` run here: backend known and installed, device present, versions that can load it."""
    from edgeopt.backends import get_backend
    from edgeopt.core.targets import Target

    aid = rec.id
    art = b.artifact_json(aid)
    try:
        backend = get_backend(art["backend"])
    except UserInputError:
        return Compatibility(aid, False, f"this edgeopt {__version__} does not know the backend {art['backend']!r}",
                             "Upgrade edgeopt on this device (pip install -U edgeopt), or "
                             + _other_target_fix(rec, "rebuild"))
    target = Target.from_dict(art["target"])
    why = backend.unavailable_reason(target)
    if why and not backend.installed():
        return Compatibility(aid, False, why, f"Install it here (pip install 'edgeopt[{backend.extra}]'), or "
                             + _other_target_fix(rec, "rebuild"))
    if why:
        return Compatibility(aid, False, why, f"{aid} is for {target.description or target.name}. "
                             + _other_target_fix(rec))
    version = installed_version(backend)
    reason, warnings = backend.artifact_fits_here(aid, art.get("meta") or {}, art.get("backend_version"), version)
    fix = None
    if reason:
        fix = (f"Rebuild the artifact on this device: `edgeopt device-compile PACKAGE` here (or `edgeopt build RECIPE --target "
               f"{rec.target} --precision {rec.precision}` on it), then `edgeopt bundle` again. "
               f"{backend.rebuild_note}").rstrip()
    return Compatibility(aid, reason is None, reason, fix, version, tuple(warnings))


def _load_fix(b: Bundle, rec: ArtifactRecord) -> str:
    from edgeopt.backends import get_backend

    backend = get_backend(rec.backend)
    here, built = installed_version(backend), b.artifact_json(rec.id).get("backend_version")
    if built and here and built != here:
        return (f"Install the version that built it (pip install '{backend.distribution}=={built}'), or "
                + rebuild_fix(rec, f"a machine with {backend.distribution} {here}, the version here", "rebuild"))
    return ("It does not load even with the version that built it, so the build itself is at fault (an opset or "
            "operator this runtime lacks, or a damaged file). " + rebuild_fix(rec, "the build host"))


def _short(exc: Exception, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tolerance_of(rec: ArtifactRecord):
    """The tolerance the build checked this artifact with (recipe overrides included), else the default."""
    from edgeopt.core.parity import Tolerance, tolerance_for

    import math

    t = (rec.parity or {}).get("tolerance")
    if isinstance(t, dict) and {"atol", "rtol", "min_cosine"} <= set(t):
        values = [t["atol"], t["rtol"], t["min_cosine"], t.get("max_map_drop")]
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                   for v in values):
            raise IntegrityError(f"Artifact {rec.id}: the manifest's parity tolerance {printable(repr(t), 120)} "
                                 "is not made of finite numbers.", GET_AGAIN)
        return Tolerance(atol=t["atol"], rtol=t["rtol"], min_cosine=t["min_cosine"],
                         max_map_drop=t.get("max_map_drop"))
    from edgeopt.core.parity import DEFAULT_TOLERANCES

    if rec.precision not in DEFAULT_TOLERANCES:
        raise IntegrityError(f"Artifact {rec.id} has precision {printable(repr(rec.precision), 40)}, which "
                             "this edgeopt does not know.", GET_AGAIN)
    return tolerance_for(rec.precision)


def open_runner(b: Bundle, rec: ArtifactRecord, threads: int | None = None):
    """(activated runner, artifact.json) for ``rec``; :class:`IncompatibleError` when the backend installed
    here cannot load it (an opset, operator or IR version it does not know, a corrupt engine ...)."""
    from edgeopt.backends.artifact import open_artifact

    runner = None
    try:
        runner, art = open_artifact(b.artifact_dir(rec.id), threads=threads)
        runner.tolerance = tolerance_of(rec)  # the build's own (recipe overrides included)
        runner.activate()
        return runner, art
    except ArtifactLoadError as exc:  # the backend's own error is the cause
        cause = exc.__cause__ or exc
        raise IncompatibleError(f"{rec.backend} cannot load {rec.id} on this device: {_short(cause)}",
                                _load_fix(b, rec)) from cause
    except EdgeoptError:
        raise
    except Exception as exc:  # noqa: BLE001 - each framework raises its own types
        if runner is not None:
            runner.close()
        raise IncompatibleError(f"{rec.backend} cannot load {rec.id} on this device: {_short(exc)}",
                                _load_fix(b, rec)) from exc


def run_self_test(b: Bundle, rec: ArtifactRecord, runner=None) -> dict:
    """Run the artifact on the stored reference inputs and compare with the stored reference outputs, with
    the tolerance of its precision. Raises :class:`ParityError` on a mismatch, :class:`IncompatibleError`
    when the backend cannot load or run it. ``runner``: an activated runner (left open), else one is opened
    and closed here."""
    from edgeopt.core.parity import parity

    feeds, refs = b.reference()
    own = runner is None
    if own:
        runner, _ = open_runner(b, rec)
    try:
        got = [runner.infer(f) for f in feeds]
    except EdgeoptError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise IncompatibleError(f"{rec.backend} cannot run {rec.id} on this device: {_short(exc)}",
                                _load_fix(b, rec)) from exc
    finally:
        if own:
            runner.close()
    kind = b.model.get("kind")
    rep = parity(refs, got, tolerance_of(rec), kind=kind if isinstance(kind, str) else "generic")
    summary = {k: rep.get(k) for k in ("passed", "max_abs", "cosine", "samples", "reason")} | {
        "tolerance": rep.get("tolerance")} | {k: rep[k] for k in ("judged_by", "detections") if k in rep}
    judged = _task_self_test(b, rec, feeds, refs, got, rep)
    if judged is not None:
        return summary | {"passed": True, "task_metric": judged}
    if not rep["passed"]:
        raise ParityError(f"Self-test failed: {rec.id} on this device differs from the reference outputs: "
                          f"{rep['reason']} (max abs {rep['max_abs']:.3g}, cosine {rep['cosine']:.6f}).",
                          rebuild_fix(rec, "this device (or a machine of the same kind)")
                          + " If the device is right and the difference acceptable, loosen the recipe's "
                          f"[parity.tolerances.{rec.precision}].")
    return summary


def _table(value) -> dict:
    """A manifest section that should be a table: itself, or {} when it is anything else."""
    return value if isinstance(value, dict) else {}


def _task_self_test(b: Bundle, rec: ArtifactRecord, feeds, refs, got, rep) -> dict | None:
    """For artifacts the build judged by the task metric (int8, bf16: their tolerance has no absolute bound),
    recompute that metric on the real reference samples and hold it to the figure the build measured on the
    same samples (one sample's worth of slack for accuracy-like metrics, 0.005 for cosines). None when the
    artifact was not judged so (the parity tolerance applies). Missing or non-finite outputs always fail."""
    from edgeopt.core.tasks import Outputs, TaskConfig, describe, evaluate

    built = (rec.parity or {}).get("task_metric")
    start = _table(b.manifest.get("reference")).get("real_from")
    task = _table(b.manifest.get("task")).get("config")
    if not isinstance(built, dict) or not isinstance(task, dict) or tolerance_of(rec).atol is not None:
        return None
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start < len(feeds) \
            or not isinstance(built.get("value"), (int, float)):
        raise IntegrityError(f"{b.source}: the manifest's reference.real_from or task metric is malformed.", GET_AGAIN)
    reason = rep.get("reason") or ""
    if any(w in reason for w in ("missing", "non-finite", "shape")):
        raise ParityError(f"Self-test failed: {rec.id} on this device is broken: {reason}.",
                          rebuild_fix(rec, "this device (or a machine of the same kind)"))
    sel = slice(start, None)
    try:
        config = TaskConfig.from_dict(task)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a manifest's task section is untrusted
        raise IntegrityError(f"{b.source}: the manifest's task config is malformed ({type(exc).__name__}).",
                             GET_AGAIN) from None
    here = evaluate(config, Outputs(feeds[sel], got[sel]), Outputs(feeds[sel], refs[sel]))
    n = max(int(here.get("samples") or 1), 1)
    slack = 0.005 if here.get("budget") == "cosine" else 1.0 / n
    result = {"metric": here["metric"], "here": here["value"], "built": built["value"], "samples": n}
    if here["value"] < built["value"] - slack - 1e-9:
        raise ParityError(f"Self-test failed: {rec.id} on this device scores {describe(here)} on the {n} real "
                          f"reference samples; the build measured {describe({**here, 'value': built['value']})}.",
                          rebuild_fix(rec, "this device (or a machine of the same kind)"))
    return result


def select_records(b: Bundle, target: str | None) -> list[ArtifactRecord]:
    """The bundle's "ok" artifacts, or those of ``target`` (a target name or an artifact id)."""
    ok = [a for a in b.artifacts if a.ok]
    if target is None:
        if not ok:
            raise IntegrityError(f"{b.source} holds no artifact with status ok.", "Build and bundle one first.")
        return ok
    hits = [a for a in ok if target in (a.id, a.target)]
    if not hits:
        raise UserInputError(f"No artifact for {target!r} in {b.source}.",
                             "It holds: " + ", ".join(f"{a.id} (target {a.target})" for a in ok) + ".")
    return hits


def refuse_incompatible(b: Bundle, why: list[tuple[str, str | None, str | None]]) -> IncompatibleError:
    """The refusal when nothing can run here; ``why``: (artifact id, reason, fix) for each one tried."""
    lines = "; ".join(f"{aid}: {reason}" for aid, reason, _ in why)
    fixes = " ".join(dict.fromkeys(fix for _, _, fix in why if fix))
    return IncompatibleError(f"No artifact in {b.source} can run on this device: {lines}.", fixes or None)


def verify(bundle_path: str | Path, public_key=None, target: str | None = None, *, self_test: bool = True,
           limits: Limits = Limits(), cache_dir: str | Path | None = None,
           require_signature: bool | None = None) -> dict:
    """Check a bundle (or bundle/OUT folder) on this device and return a report.

    Refuses (raises) on: unsafe archive members, a manifest that is not an edgeopt manifest, a file whose
    sha256 differs (named), a foreign or incomplete bundle, a bad signature when ``public_key`` is given, no
    artifact (of ``target``) that can load here, or a self-test whose outputs differ from the reference.
    Artifacts for other devices are listed with why they cannot run here and what to rebuild.
    """
    b = open_bundle(bundle_path, public_key=public_key, check=True, limits=limits, cache_dir=cache_dir,
                    require_signature=require_signature)
    rows = [_verify_one(b, rec, self_test) for rec in select_records(b, target)]
    if not any(r["runs_here"] for r in rows):
        raise refuse_incompatible(b, [(r["id"], r["reason"], r["fix"]) for r in rows])
    return report(b, rows)


def _verify_one(b: Bundle, rec: ArtifactRecord, self_test: bool) -> dict:
    c = check_compatibility(b, rec)
    row = {"id": rec.id, "target": rec.target, "backend": rec.backend, "precision": rec.precision,
           **c.to_dict(), "self_test": None}
    if not c.ok:
        return row
    try:
        runner, _ = open_runner(b, rec)
    except IncompatibleError as exc:
        return {**row, "runs_here": False, "reason": exc.problem, "fix": exc.fix}
    try:
        if self_test:
            row["self_test"] = run_self_test(b, rec, runner)
    finally:
        runner.close()
    return row


def report(b: Bundle, rows: list[dict]) -> dict:
    sec = b.manifest.get("bundle") or {}
    return {
        "ok": True,
        "bundle": str(b.source),
        "kind": b.kind,
        "archive_sha256": b.archive_sha256,
        "root": str(b.root),
        "name": sec.get("name"),
        "model": b.model.get("name"),
        "model_sha256": b.model.get("sha256"),
        "built": b.manifest.get("created"),
        "built_with": b.manifest.get("edgeopt_version"),
        "files_checked": b.files_checked,
        "signature": b.signature,
        "signature_state": b.signature_state,
        "signature_checked": b.signature_state == "valid",
        "artifacts": rows,
        "runs_here": [r["id"] for r in rows if r["runs_here"]],
    }
