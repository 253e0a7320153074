"""`edgeopt remote setup HOST` from a pip-installed edgeopt (issue 14.6): there is no source checkout to build a
wheel from, so the installed files are repacked into one. Checked without SSH: a wheel built from this checkout
is installed with pip into a folder, that copy repacks itself, and the repacked wheel installs and runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("hatchling") is None,
                                reason="building the wheel offline needs hatchling (pip install hatchling)")


def _pip(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL, timeout=600)


def _py(code: str, site: Path, cwd: Path):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_a_pip_installed_edgeopt_ships_its_own_wheel(tmp_path):
    res = _pip("wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "w", ROOT, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (original,) = (tmp_path / "w").glob("edgeopt-*.whl")
    res = _pip("install", "--no-deps", "--target", tmp_path / "site", original, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # The installed copy makes the wheel remote setup would ship (no pyproject.toml above it).
    res = _py("from pathlib import Path; import edgeopt; from edgeopt.device.remote import build_wheel; "
              f"print(edgeopt.__file__); print(build_wheel(Path({str(tmp_path / 'again')!r})))",
              tmp_path / "site", tmp_path)
    assert res.returncode == 0, res.stderr
    where, repacked = res.stdout.split()
    assert where.startswith(str(tmp_path / "site"))
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(repacked) as b:
        names_a = {n for n in a.namelist() if not n.endswith("/RECORD")}
        names_b = {n for n in b.namelist() if not n.endswith("/RECORD")}
        assert names_a == names_b  # every package file, the metadata and the entry point
        assert all(a.read(n) == b.read(n) for n in names_a)
    # The repacked wheel installs (pip checks its RECORD) and its CLI runs.
    res = _pip("install", "--no-deps", "--target", tmp_path / "site2", repacked, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = _py("from edgeopt.cli.main import main; main(['targets', '--json'])", tmp_path / "site2", tmp_path)
    assert res.returncode == 0 and '"ort-cpu"' in res.stdout, res.stderr
