"""Open a compiled artifact folder with its backend, and profile it. Device-safe: numpy and the backend only."""

from __future__ import annotations

from pathlib import Path

from edgeopt.backends import get_backend
from edgeopt.core.artifact import read_artifact_json
from edgeopt.core.profile import ProfileConfig, profile_runner
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target


def open_artifact(folder: Path, threads: int | None = None):
    """(runner, artifact record) for a compiled artifact folder. The runner is not yet activated."""
    rec = read_artifact_json(folder)
    target = Target.from_dict(rec["target"])
    spec = IOSpec.from_dict(rec["spec"])
    backend = get_backend(rec["backend"])
    return backend.open(Path(folder), rec.get("meta", {}), spec, target, threads=threads), rec


def profile_artifact(artifact_dir: Path, batches=(1,), cfg: ProfileConfig | None = None, threads: int | None = None,
                     real: dict | None = None) -> dict:
    """Open a compiled artifact folder, profile it at each batch size, close it."""

    cfg = cfg or ProfileConfig()
    runner, _ = open_artifact(artifact_dir, threads=threads)
    try:
        return profile_runner(runner, runner.spec, batches, cfg, real)
    finally:
        runner.close()
