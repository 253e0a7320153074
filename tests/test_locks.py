"""Concurrent processes: one writer per OUT, one extractor per cached bundle, and readers that refuse an OUT
whose manifest and artifacts disagree (a build killed during a rebuild)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import invoke_cli
from edgeopt.errors import BusyError, IntegrityError
from test_untrusted import tiny_recipe

REPO = Path(__file__).resolve().parents[1]
ORT = "ort-cpu-fp32"


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return tiny_recipe(tmp_path_factory.mktemp("locks"), targets=("ort-cpu",))


@pytest.fixture
def out(recipe, tmp_path):
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    build(recipe, tmp_path / "OUT", reporter=Reporter(quiet=True))
    return tmp_path / "OUT"


def hold_lock(out: Path, what: str):
    """A separate process that holds OUT's writer lock (as a running build would) until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from edgeopt.core.lock import out_lock
        with out_lock({str(out)!r}, {what!r}):
            print("held", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---- the writer's lock on OUT ---------------------------------------------------------------------

def test_second_writer_is_refused_naming_the_holder(out, recipe):
    from edgeopt.pipeline.api import profile
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    before = (out / "manifest.json").read_bytes()
    holder = hold_lock(out, "build")
    try:
        with pytest.raises(BusyError, match=rf"being written by another edgeopt process \(pid {holder.pid}\b.*build"):
            build(recipe, out, reporter=Reporter(quiet=True))
        with pytest.raises(BusyError, match=rf"pid {holder.pid}\b"):
            profile(out, iterations=3, warmup=1)
        rc, _, err = invoke_cli("profile", out, "--iterations", "3")
        assert rc == 11 and f"pid {holder.pid}" in err and "Traceback" not in err
        rc, _, err = invoke_cli("build", recipe, "-o", out)
        assert rc == 11 and "own -o/--output folder" in err
    finally:
        holder.kill()
        holder.wait()
    assert (out / "manifest.json").read_bytes() == before  # nothing was written by the refused writers
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]
    profile(out, iterations=3, warmup=1)  # the lock died with its holder (kill -9 included)
    assert json.loads((out / "manifest.json").read_text())["artifacts"][0]["latency"][0]["iterations"] == 3


def test_lock_file_does_not_make_out_foreign(tmp_path, recipe):
    """A refused or failed first build leaves only the lock file: the folder is still edgeopt's."""
    from edgeopt.core.lock import out_lock
    from edgeopt.pipeline.build import check_output

    with out_lock(tmp_path / "OUT", "build"):
        pass
    check_output(tmp_path / "OUT", force=False)


# ---- a build killed during a rebuild --------------------------------------------------------------

def test_readers_refuse_an_out_whose_rebuild_was_interrupted(out, recipe, monkeypatch, tmp_path):
    """Killed after the new artifact replaced the old one but before the manifest: every reader refuses,
    naming the fix, and the rerun repairs it."""
    import edgeopt.pipeline.build as b
    from edgeopt.pipeline.api import profile
    from edgeopt.report.html import report
    from edgeopt.report.progress import Reporter
    from edgeopt.ship.bundle import bundle
    from edgeopt.ship.runtime import load
    from edgeopt.ship.select import select

    src = recipe.parent / "mlp.onnx"
    original = src.read_bytes()
    try:
        import onnx
        from onnx import numpy_helper

        m = onnx.load(src)  # other weights: a real rebuild
        w = numpy_helper.to_array(m.graph.initializer[0]) * 2
        m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
        onnx.save(m, src)

        def killed(*a, **k):
            raise KeyboardInterrupt  # as kill -9 or Ctrl-C would stop it: after compiling, before the manifest

        monkeypatch.setattr(b, "stage_profile", killed)
        with pytest.raises(KeyboardInterrupt):
            b.build(recipe, out, reporter=Reporter(quiet=True))
        monkeypatch.undo()
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["complete"] is False
        for call in (lambda: select(out), lambda: profile(out, iterations=2, warmup=1),
                     lambda: bundle(out, tmp_path / "x"), lambda: report(out), lambda: load(out)):
            with pytest.raises(IntegrityError, match="Rerun the build"):
                call()
        rc, _, err = invoke_cli("select", out)
        assert rc == 7 and "stopped before it finished" in err and "Rerun the build" in err
        b.build(recipe, out, reporter=Reporter(quiet=True))  # the fix
        assert select(out)["selected"] == ORT
    finally:
        src.write_bytes(original)


def test_artifacts_from_another_build_are_refused(out):
    """An old-style manifest (complete, no mark) beside an artifact of another generation."""
    from edgeopt.ship.select import select

    path = out / ORT / "artifact.json"
    original = path.read_text()
    path.write_text(original.replace('"generation": "', '"generation": "0000'))
    with pytest.raises(IntegrityError, match="manifest and the artifacts disagree.*another build"):
        select(out)
    path.write_text(original)
    (out / ORT / "model.onnx").write_bytes(b"short")
    with pytest.raises(IntegrityError, match="model.onnx has 5 bytes"):
        select(out)


# ---- the bundle cache -----------------------------------------------------------------------------

LOADER = textwrap.dedent("""
    import sys, time
    from edgeopt.ship.runtime import load
    archive, cache, start, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    while time.time() < start:
        time.sleep(0.001)
    good = 0
    for i in range(n):
        try:
            with load(archive, cache_dir=cache) as m:
                ok = m.verification["self_test"]["passed"]
                good += bool(ok)
        except Exception as exc:
            print(f"load {i}: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(good)
""")


def test_four_processes_load_one_bundle_with_an_empty_cache(out, tmp_path):
    """4 x 10 loads, all at once, of a bundle nobody has extracted: 40 good loads (was 34: each loader
    deleted another's finished extraction as a leftover)."""
    from edgeopt.ship.bundle import bundle

    archive = bundle(out, tmp_path / "mlp")
    cache = tmp_path / "cache"
    start = time.time() + 4.0  # every process imported and waiting when the clock strikes
    procs = [subprocess.Popen([sys.executable, "-c", LOADER, str(archive), str(cache), str(start), "10"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
             for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    good = sum(int(o.strip().splitlines()[-1]) for o, _ in results)
    assert good == 40, [e for _, e in results]
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".lock-")) == [
        __import__("edgeopt.core.fsutil", fromlist=["x"]).sha256_file(archive)[:32]]


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_leftovers_of_killed_extractions_and_writers_are_removed(out, tmp_path):
    from edgeopt.core.fsutil import sha256_file
    from edgeopt.ship.bundle import bundle
    from edgeopt.ship.runtime import load

    archive = bundle(out, tmp_path / "b" / "mlp")
    key = sha256_file(archive)[:32]
    cache = tmp_path / "cache"
    for name in (f".extract-{key}-abc", f".trash-{key}-123", f".extract-{'f' * 32}-x"):
        (cache / name / "big").mkdir(parents=True)
        (cache / name / "big" / "weights.bin").write_bytes(b"0" * 1000)
    (cache / key).mkdir()  # an extraction without its manifest: not complete
    dead, alive = _dead_pid(), os.getpid()
    stale = [archive.parent / f".{archive.name}.{dead}.x1.tmp", archive.parent / f".staging-mlp-{dead}-x2"]
    live = archive.parent / f".{archive.name}.{alive}.x3.tmp"
    stale[0].write_bytes(b"partial")
    stale[1].mkdir()
    live.write_bytes(b"being written")
    with load(archive, cache_dir=cache) as model:
        assert model.verification["self_test"]["passed"]
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".lock-")) == [key]
    bundle(out, tmp_path / "b" / "mlp")  # the writer's next run removes what dead writers left
    bundle(out, tmp_path / "b" / "mlp", folder=True)
    assert not any(p.exists() for p in stale) and live.exists()


def test_refused_archive_leaves_nothing_in_the_cache(out, tmp_path):
    """A bundle whose content is refused (here: a file changed after bundling) is removed from the cache."""
    import tarfile

    from edgeopt.ship.bundle import bundle, verify

    folder = bundle(out, tmp_path / "mlp", folder=True)
    with open(folder / ORT / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    archive = tmp_path / "bad.edgeopt.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="mlp")
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        verify(archive, cache_dir=cache)
    assert not [p for p in cache.iterdir() if not p.name.startswith(".lock-")]


def test_gzip_bomb_is_refused_before_it_is_written(out, tmp_path):
    """A member the manifest does not declare (here 200 MB of zeros, 200 kB compressed) is refused from its
    header: nothing of it is written, and the cache is left empty."""
    import io
    import tarfile

    from edgeopt.ship.bundle import bundle, verify

    folder = bundle(out, tmp_path / "mlp", folder=True)
    archive = tmp_path / "bomb.edgeopt.tar.gz"

    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, b):
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k

    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname="mlp")
        info = tarfile.TarInfo(f"mlp/{ORT}/weights.bin")
        info.size = 200 << 20
        tar.addfile(info, io.BufferedReader(Zeros(info.size)))
    assert archive.stat().st_size < 2 << 20
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    with pytest.raises(IntegrityError, match="weights.bin.*a file the manifest does not list"):
        verify(archive, cache_dir=cache)
    assert not [p for p in cache.iterdir() if not p.name.startswith(".lock-")]
    # A member larger than the manifest declares is refused the same way.
    with tarfile.open(archive, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            info = tar.gettarinfo(p, arcname=f"mlp/{p.relative_to(folder).as_posix()}")
            if p.name == "model.onnx":
                info.size += 1 << 20
                tar.addfile(info, io.BytesIO(p.read_bytes() + bytes(1 << 20)))
            else:
                tar.addfile(info, p.open("rb") if p.is_file() else None)
    with pytest.raises(IntegrityError, match="model.onnx.*bytes where the manifest declares"):
        verify(archive, cache_dir=cache)
    assert not [p for p in cache.iterdir() if not p.name.startswith(".lock-")]
    assert time.perf_counter() - t0 < 30


def test_declared_sizes_over_the_limits_are_refused_before_extraction(out, tmp_path):
    from edgeopt.ship.bundle import Limits, bundle, verify

    folder = bundle(out, tmp_path / "f", folder=True)
    archive = bundle(out, tmp_path / "mlp")
    room = (folder / "manifest.json").stat().st_size + 100  # the manifest fits, the files it declares do not
    with pytest.raises(IntegrityError, match="declares .* bytes of files, over the limits"):
        verify(archive, cache_dir=tmp_path / "cache", limits=Limits(max_total_bytes=room))


def test_a_reader_during_a_build_is_told_it_is_running(out):
    from edgeopt.core.manifest import mark_incomplete
    from edgeopt.ship.select import select

    mark_incomplete(out)
    holder = hold_lock(out, "build")
    try:
        with pytest.raises(BusyError, match=rf"being written now by another edgeopt process \(pid {holder.pid}\b"):
            select(out)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(IntegrityError, match="stopped before it finished"):
        select(out)
