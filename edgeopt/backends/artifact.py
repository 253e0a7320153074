"""Open a compiled artifact folder with its backend, and profile it. Device-safe: numpy and the backend only."""

from __future__ import annotations

from pathlib import Path

from edgeopt.backends import get_backend
from edgeopt.core.artifact import read_artifact_json
from edgeopt.core.parity import DEFAULT_TOLERANCES, tolerance_for
from edgeopt.core.profile import ProfileConfig, prepare_runner, profile_runner, rss_mb, time_prepared
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.errors import EdgeoptError


def open_artifact(folder: Path, threads: int | None = None):
    """(runner, artifact record) for a compiled artifact folder. The runner is not yet activated."""
    rec = read_artifact_json(folder)
    target = Target.from_dict(rec["target"])
    spec = IOSpec.from_dict(rec["spec"])
    backend = get_backend(rec["backend"])
    runner = backend.open(Path(folder), rec.get("meta", {}), spec, target, threads=threads)
    if rec.get("precision") in DEFAULT_TOLERANCES:  # what the runner's own variants are checked with
        runner.tolerance = tolerance_for(rec["precision"])
    return runner, rec


def profile_artifact(artifact_dir: Path, batches=(1,), cfg: ProfileConfig | None = None, threads: int | None = None,
                     real: dict | None = None) -> dict:
    """Open a compiled artifact folder, profile it at each batch size, close it."""

    cfg = cfg or ProfileConfig()
    runner, _ = open_artifact(artifact_dir, threads=threads)
    try:
        return profile_runner(runner, runner.spec, batches, cfg, real)
    finally:
        runner.close()


def profile_together(folders: dict[str, Path], batches, cfg: ProfileConfig | None = None, threads: int | None = None,
                     real: dict | None = None, extra: dict | None = None, log=None) -> tuple[dict, dict]:
    """Load every artifact of ``folders`` (name -> folder) beside the already prepared contenders of ``extra``
    (the PyTorch baseline), and time them all in interleaved rounds in this process.

    Returns (name -> profile, name -> why it could not be timed): an artifact that does not load here is
    left out of the run with the reason, the others are timed."""
    cfg = cfg or ProfileConfig()
    prepared = dict(extra or {})
    failed: dict[str, str] = {}
    runners = []
    rss_base = rss_mb()
    try:
        for name, folder in folders.items():
            if log:
                log(f"{name}: loading for timing")
            try:
                runner, _ = open_artifact(folder, threads=threads)
                runners.append(runner)
                prepared[name] = prepare_runner(runner, runner.spec, batches, real, rss_base)
            except EdgeoptError as exc:
                failed[name] = exc.problem
        return time_prepared(prepared, batches, cfg), failed
    finally:
        for r in runners:
            r.close()


def layer_profile_artifact(folder: Path, batch: int, runs: int, workdir: Path, threads: int | None = None,
                           real: dict | None = None) -> dict | None:
    """The backend's per-layer profile of a compiled artifact folder at ``batch`` (None where the backend has
    no per-layer profiler). ``workdir``: where a profiler may write its trace."""
    from edgeopt.core.profile import feed_for_batch

    runner, _ = open_artifact(folder, threads=threads)
    with runner:
        feed = feed_for_batch(runner.spec, batch, real)
        runner.spec.check_feed(feed, "profile")
        return runner.layer_profile(feed, runs, Path(workdir))
