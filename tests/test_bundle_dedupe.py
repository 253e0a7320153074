"""Bundles store identical files once: OpenVINO artifacts of one model that differ only in how they run (fp32
and bf16, or the same IR under a latency and a throughput target) share model.bin."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from edgeopt.core.fsutil import sha256_file
from edgeopt.core.hostinfo import cpu_has
from edgeopt.errors import IntegrityError


SAME_IR = ["openvino-cpu-fp32", "openvino-cpu-throughput-fp32"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """openvino-cpu fp32 (and bf16 where the CPU has it) and the same IR for a throughput target."""
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    d = tmp_path_factory.mktemp("dedupe")
    target = d / "openvino-cpu-throughput.toml"
    target.write_text('name = "openvino-cpu-throughput"\ndescription = "OpenVINO CPU, throughput hint"\n'
                      'backend = "openvino"\ndevice = "CPU"\nprecisions = ["fp32"]\n'
                      '[options]\nperformance_hint = "THROUGHPUT"\n')
    bf16 = ("bf16",) if cpu_has("avx512_bf16") or cpu_has("amx_bf16") else ()
    build(None, d / "OUT", targets=("openvino-cpu", str(target)), precisions=("fp32", *bf16),
          reporter=Reporter(quiet=True), profile=False)
    return d / "OUT"


def test_shared_model_bin_is_stored_once_and_restored_on_load(out, tmp_path, monkeypatch):
    from edgeopt.ship.bundle import bundle, verify
    from edgeopt.ship.runtime import load

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    ids = SAME_IR + (["openvino-cpu-bf16"] if (out / "openvino-cpu-bf16").is_dir() else [])
    bins = {aid: sha256_file(out / aid / "model.bin") for aid in ids}
    assert len(set(bins.values())) == 1  # the same weights: the premise of this test
    path = bundle(out, tmp_path / "m.edgeopt.tar.gz")
    with tarfile.open(path) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("m/manifest.json"))
    assert sum(n.endswith("/model.bin") for n in names) == 1
    files = {f["path"]: f for f in manifest["bundle"]["files"]}
    copies = [f for f in files.values() if "stored_as" in f]
    # One of them is stored (which one follows the file order, bf16 first where this CPU builds it), the
    # others name it
    shared = {f"{aid}/model.bin" for aid in ids}
    assert len(shared & {f["path"] for f in copies}) == len(ids) - 1, copies
    for f in copies:
        assert files[f["stored_as"]]["sha256"] == f["sha256"] and f["stored_as"] in [n[2:] for n in names]
    # Smaller than the sum of its files by the copies left out.
    stored = sum(f["bytes"] for f in files.values() if "stored_as" not in f)
    assert stored < sum(f["bytes"] for f in files.values())
    res = verify(path)
    assert res["ok"], res
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    from edgeopt.ship.bundle import open_bundle

    b = open_bundle(path)
    for aid, digest in bins.items():
        assert sha256_file(b.artifact_dir(aid) / "model.bin") == digest
    for aid in ids:
        model = load(path, target=aid.removesuffix("-fp32").removesuffix("-bf16"))
        assert model.infer(x)["logits"].shape == (1, 10)


def test_a_stored_as_pointing_at_another_file_is_refused(out, tmp_path, monkeypatch):
    """The manifest names where a copy's bytes are; a wrong pointer fails the copy's own sha256 check."""
    import gzip
    import io

    from edgeopt.ship.bundle import bundle, open_bundle

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    path = bundle(out, tmp_path / "m.edgeopt.tar.gz")
    members = []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else None
            if m.name == "m/manifest.json":
                man = json.loads(data)
                copy = next(f for f in man["bundle"]["files"] if "stored_as" in f)
                copy["stored_as"] = next(f["path"] for f in man["bundle"]["files"] if f["path"].endswith("model.xml"))
                data = json.dumps(man).encode()
                m.size = len(data)
            members.append((m, data))
    bad = tmp_path / "bad.edgeopt.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
    bad.write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(IntegrityError, match="model.bin"):
        open_bundle(bad)
