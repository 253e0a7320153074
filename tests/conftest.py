"""Shared fixtures. Every test keeps its caches out of HOME (EDGEOPT_CACHE_DIR in a temp folder)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

MODELS = Path(__file__).parent / "models"


def pytest_configure(config):
    import tempfile

    cache = Path(tempfile.mkdtemp(prefix="edgeopt-test-cache-"))
    os.environ.setdefault("EDGEOPT_CACHE_DIR", str(cache))
    # No energy sampling from the machine running the tests (RAPL is readable on some CI hosts, not on others):
    # tests that want it point EDGEOPT_POWER_ROOT at a fake sysfs tree (tests/test_energy.py).
    os.environ.setdefault("EDGEOPT_POWER_ROOT", "off")
    for var in ("MPLCONFIGDIR", "HF_HOME", "TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        os.environ.setdefault(var, str(cache / var.lower()))


@pytest.fixture(scope="session")
def example_out(tmp_path_factory):
    """The built-in example, built once for the session: every runnable target, fp32 and bf16."""
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    out = tmp_path_factory.mktemp("example") / "out"
    manifest = build(None, out, reporter=Reporter(quiet=True))
    return out, manifest


def invoke_cli(*args):
    """Run the real CLI in-process (click's runner): returns (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from edgeopt.cli.main import main

    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture
def run_cli():
    return invoke_cli


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


sys.path.insert(0, str(MODELS))
