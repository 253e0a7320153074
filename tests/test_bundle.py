"""Bundles: bundle -> verify -> load -> infer, tampering, foreign bundles, unsafe archives, signatures, the
device-fit checks, the CLI, and the torch-free runtime in a fresh virtual environment."""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeopt.ship.bundle import (
    IncompatibleError,
    Limits,
    SignatureNotCheckedWarning,
    bundle,
    bundle_summary,
    check_compatibility,
    open_bundle,

    verify,
)
from edgeopt.backends.tensorrt.backend import tensorrt_mismatch
from edgeopt.errors import IntegrityError, ParityError, UserInputError
from edgeopt.core.fsutil import sha256_file
from edgeopt.core.reference import load_reference
from edgeopt.ship.runtime import load

REPO = Path(__file__).resolve().parents[1]
AID = "ort-cpu-fp32"


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """Extraction cache of this module, to check that refused archives leave nothing behind."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("bundle-cache")
    mp.setenv("EDGEOPT_CACHE_DIR", str(d))
    yield d / "bundles"
    mp.undo()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    d = tmp_path_factory.mktemp("bundle-out") / "OUT"
    build(None, d, targets=("ort-cpu",), precisions=("fp32",), reporter=Reporter(quiet=True))
    return d


@pytest.fixture(scope="module")
def tarball(out, tmp_path_factory):
    return bundle(out, tmp_path_factory.mktemp("bundles") / "digits")


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    from edgeopt.ship.keys import generate_key

    return generate_key(tmp_path_factory.mktemp("keys") / "signing.key")


def folder_bundle(out: Path, dest: Path, **kw) -> Path:
    return bundle(out, dest, folder=True, **kw)


def untar(archive: Path, dest: Path) -> Path:
    """Our own, trusted archive: plain extraction for tests that then alter a file."""
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.isdir():
                (dest / m.name).mkdir(parents=True, exist_ok=True)
            else:
                (dest / m.name).parent.mkdir(parents=True, exist_ok=True)
                (dest / m.name).write_bytes(tar.extractfile(m).read())
    (top,) = list(dest.iterdir())
    return top


def retar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def craft(archive: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


def member(name: str, type_=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o644
    return info


def rewrite_manifest(root: Path, change) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


# ---- round trip ----------------------------------------------------------------------------------

def test_round_trip_bundle_verify_load_infer(out, tarball):
    assert tarball.name == "digits.edgeopt.tar.gz"
    rep = verify(tarball)
    assert rep["ok"] and rep["runs_here"] == [AID] and rep["signature"] == "not signed"
    assert rep["files_checked"] == 3  # artifact.json, model.onnx, reference.npz
    row = rep["artifacts"][0]
    assert row["self_test"]["passed"] and row["self_test"]["samples"] >= 2
    feeds, refs = load_reference(out / "reference" / "reference.npz")
    with load(tarball) as model:
        assert model.id == AID and model.backend == "onnxruntime" and model.verification["self_test"]["passed"]
        assert model.inputs == [{"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32",
                                 "dims": {"batch": [1, 32]}}]
        assert model.outputs == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
        for feed, ref in zip(feeds, refs):
            got = model.infer(feed)
            np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-4, rtol=1e-5)
        single = model.infer(feeds[0]["image"])  # one array for a one-input model
        np.testing.assert_allclose(single["logits"], refs[0]["logits"], atol=1e-4)
        with pytest.raises(UserInputError, match="dtype"):
            model.infer(feeds[0]["image"].astype(np.float64))
    with pytest.raises(UserInputError, match="closed"):
        model.infer(feeds[0])


def test_bundle_manifest_records_every_file(out, tarball):
    b = open_bundle(tarball)
    sec = b.manifest["bundle"]
    assert sec["schema"] == "edgeopt.bundle/1" and sec["artifacts"] == [AID] and sec["name"] == "digits"
    assert sec["source_manifest_sha256"] == sha256_file(out / "manifest.json")
    assert {f["path"] for f in sec["files"]} == {f"{AID}/artifact.json", f"{AID}/model.onnx", "reference/reference.npz"}
    for f in sec["files"]:
        assert f["sha256"] == sha256_file(out / f["path"]) and f["bytes"] == (out / f["path"]).stat().st_size
    assert [a["id"] for a in b.manifest["artifacts"]] == [AID]
    assert b.manifest["model"]["name"] == "digits-cnn"


def test_same_input_gives_the_same_bytes(out, tmp_path):
    a = bundle(out, tmp_path / "a" / "x.edgeopt.tar.gz")
    b = bundle(out, tmp_path / "b" / "x")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header without a timestamp
    with tarfile.open(a) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and names[0] == "x"
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    assert len({m.mtime for m in members}) == 1
    assert all(m.isdir() or m.isreg() for m in members)
    assert not list(a.parent.glob(".*.tmp"))  # no temp file left beside it


def test_folder_form_and_out_folder_verify_and_load(out, tmp_path):
    folder = folder_bundle(out, tmp_path / "digits-bundle")
    assert (folder / "manifest.json").is_file() and (folder / AID / "model.onnx").is_file()
    assert verify(folder)["kind"] == "bundle folder"
    assert verify(out)["kind"] == "OUT folder"
    with load(out, target="ort-cpu") as model:
        assert model.id == AID
    assert bundle_summary(folder)["artifacts"] == [AID]
    with pytest.raises(UserInputError, match="not an edgeopt bundle folder"):
        folder_bundle(out, tmp_path)  # a non-empty folder that is not a bundle is never replaced


def test_preprocess_uses_the_stored_spec(out, tmp_path, tarball):
    copy = tmp_path / "OUT"
    shutil.copytree(out, copy)
    rewrite_manifest(copy, lambda m: m["model"].update(preprocess=None))
    with load(bundle(copy, tmp_path / "none")) as model, pytest.raises(UserInputError, match="no preprocessing spec"):
        model.preprocess(np.zeros((8, 8), np.uint8))
    # The built-in example records its preprocessing (8x8 grayscale, values 0..16) and class names.
    with load(tarball) as model:
        assert model.labels == [str(d) for d in range(10)]
        img = np.arange(64, dtype=np.uint8).reshape(8, 8) % 16
        x = model.preprocess(img)
        assert x.shape == (1, 1, 8, 8) and x.dtype == np.float32
        np.testing.assert_allclose(x[0, 0], img / 16, rtol=1e-6)
        assert model.infer(x)["logits"].shape == (1, 10)
        assert model.preprocess([img, img]).shape == (2, 1, 8, 8)


def test_bundle_refuses_what_cannot_ship(out, tmp_path):
    with pytest.raises(UserInputError, match="No artifact 'nope'"):
        bundle(out, tmp_path / "x", artifacts=["nope"])
    copy = tmp_path / "OUT"
    shutil.copytree(out, copy)
    with open(copy / AID / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(IntegrityError, match=f"{AID}/model.onnx has .* bytes, the manifest says"):
        bundle(copy, tmp_path / "y")
    with open(copy / AID / "model.onnx", "r+b") as f:  # the same size, other bytes: the sha256 says so
        f.truncate(f.seek(0, 2) - 1)
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(IntegrityError, match=f"{AID}/model.onnx .*differs from the manifest"):
        bundle(copy, tmp_path / "y")
    assert not (tmp_path / "y.edgeopt.tar.gz").exists() and not list(tmp_path.glob(".*.tmp"))
    rewrite_manifest(copy, lambda m: m["artifacts"][0].update(status="failed", reason="parity"))
    with pytest.raises(UserInputError, match="no artifact with status ok"):
        bundle(copy, tmp_path / "z")


# ---- tampered, foreign, truncated ----------------------------------------------------------------

def test_tampered_file_is_refused_and_named(tarball, tmp_path):
    top = untar(tarball, tmp_path / "x")
    onnx = top / AID / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{AID}/model.onnx does not match its sha256"):
        verify(retar(top, tmp_path / "tampered.edgeopt.tar.gz"))
    with pytest.raises(IntegrityError, match=f"{AID}/model.onnx"):
        load(tmp_path / "tampered.edgeopt.tar.gz")


def test_tampered_reference_in_a_folder_is_refused(out, tmp_path):
    folder = folder_bundle(out, tmp_path / "b")
    ref = folder / "reference" / "reference.npz"
    ref.write_bytes(ref.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="reference/reference.npz has .* bytes"):
        verify(folder)


def test_foreign_manifest_is_refused(out, tmp_path):
    folder = folder_bundle(out, tmp_path / "b")

    def other_model(m):
        m["model"].update(name="resnet-other", inputs=[{"name": "image", "shape": ["batch", 3, 224, 224],
                                                        "dtype": "float32"}])
    rewrite_manifest(folder, other_model)
    with pytest.raises(IntegrityError, match="from another model"):
        verify(folder)


def test_manifest_from_another_build_is_refused(out, tmp_path):
    folder = folder_bundle(out, tmp_path / "b")
    rewrite_manifest(folder, lambda m: m["artifacts"][0].update(key="0" * 64))
    with pytest.raises(IntegrityError, match="different builds"):
        verify(folder)


@pytest.mark.parametrize("damage, message", [
    ("missing", "model.onnx is missing"),
    ("extra", "evil.py is not listed in the manifest"),
    ("symlink", "is a symbolic link"),
    ("no-manifest", "holds no manifest.json"),
    ("schema", "bundle schema 'edgeopt.bundle/99'"),
])
def test_incomplete_or_foreign_folder_is_refused(out, tmp_path, damage, message):
    folder = folder_bundle(out, tmp_path / "b")
    if damage == "missing":
        (folder / AID / "model.onnx").unlink()
    elif damage == "extra":
        (folder / AID / "evil.py").write_text("print('hi')")
    elif damage == "symlink":
        (folder / AID / "link").symlink_to("/etc/passwd")
    elif damage == "no-manifest":
        (folder / "manifest.json").unlink()
    else:
        rewrite_manifest(folder, lambda m: m["bundle"].update(schema="edgeopt.bundle/99"))
    with pytest.raises(IntegrityError, match=message):
        verify(folder)


def test_truncated_and_non_bundle_archives_are_refused(tarball, tmp_path, cache):
    cut = tmp_path / "cut.edgeopt.tar.gz"
    cut.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(IntegrityError, match="truncated or not a gzip-compressed tar"):
        verify(cut)
    plain = craft(tmp_path / "plain.tar.gz", [(member("stuff/readme.txt"), b"hello")])
    with pytest.raises(IntegrityError, match="holds no manifest.json"):
        verify(plain)
    not_gz = tmp_path / "x.edgeopt.tar.gz"
    not_gz.write_bytes(b"definitely not a tarball")
    with pytest.raises(IntegrityError, match="truncated or not a gzip"):
        verify(not_gz)
    assert not list(cache.glob(".extract-*"))


def rehash(folder: Path, change=lambda m: None) -> None:
    """Change the manifest and make every recorded sha256 and size match the files again (as a forger would)."""
    def update(m):
        change(m)
        for f in m["bundle"]["files"] + [f for a in m["artifacts"] for f in a["files"]]:
            f.update(sha256=sha256_file(folder / f["path"]), bytes=(folder / f["path"]).stat().st_size)
        m["reference"]["sha256"] = sha256_file(folder / m["reference"]["path"])
    rewrite_manifest(folder, update)


def test_self_test_mismatch_is_refused(out, tmp_path):
    """Consistent hashes but reference outputs the artifact does not reproduce: the self-test refuses."""
    folder = folder_bundle(out, tmp_path / "b")
    ref = folder / "reference" / "reference.npz"
    with np.load(ref) as z:
        arrays = {k: (z[k] + 1.0 if k.startswith("output/") else z[k]) for k in z.files}
    np.savez(ref, **arrays)
    rehash(folder)
    with pytest.raises(ParityError, match="Self-test failed: ort-cpu-fp32"):
        verify(folder)
    assert verify(folder, self_test=False)["artifacts"][0]["self_test"] is None


# ---- unsafe archives -----------------------------------------------------------------------------

def _unsafe_members(case: str, tmp_path: Path):
    ok = (member("digits/manifest.json"), b"{}")
    evil = tmp_path / "evil.txt"
    return {
        "dotdot": [ok, (member("digits/../../evil.txt"), b"pwned")],
        "absolute": [ok, (member(str(evil)), b"pwned")],
        "symlink": [ok, (member("digits/link", tarfile.SYMTYPE, "/etc/passwd"), None)],
        "symlink-inside": [ok, (member("digits/link", tarfile.SYMTYPE, "manifest.json"), None)],
        "hardlink": [ok, (member("digits/hl", tarfile.LNKTYPE, "../../evil.txt"), None)],
        "device": [ok, (member("digits/dev", tarfile.CHRTYPE), None)],
        "fifo": [ok, (member("digits/fifo", tarfile.FIFOTYPE), None)],
        "two-tops": [ok, (member("other/x.txt"), b"x")],
        "duplicate": [ok, (member("digits/manifest.json"), b"{}")],
    }[case]


@pytest.mark.parametrize("case, message", [
    ("dotdot", "'..' component"),
    ("absolute", "an absolute path"),
    ("symlink", "a symbolic link"),
    ("symlink-inside", "a symbolic link"),
    ("hardlink", "a hard link"),
    ("device", "a device file"),
    ("fifo", "a FIFO"),
    ("two-tops", "outside the bundle's top folder"),
    ("duplicate", "same name"),
])
def test_unsafe_archive_members_are_refused(tmp_path, cache, case, message):
    archive = craft(tmp_path / "bad.edgeopt.tar.gz", _unsafe_members(case, tmp_path))
    with pytest.raises(IntegrityError, match=message):
        verify(archive)
    with pytest.raises(IntegrityError, match=message):
        load(archive)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert not list(cache.glob(".extract-*"))  # the staging folder was removed


def test_size_limits(tmp_path):
    archive = craft(tmp_path / "big.edgeopt.tar.gz", [(member("digits/manifest.json"), b"x" * 100)])
    with pytest.raises(IntegrityError, match="over the limit of 10"):
        verify(archive, limits=Limits(max_member_bytes=10))
    many = craft(tmp_path / "many.edgeopt.tar.gz", [(member(f"digits/f{i}"), b"12345") for i in range(5)])
    with pytest.raises(IntegrityError, match="add up to more than 12 bytes"):
        verify(many, limits=Limits(max_total_bytes=12))
    with pytest.raises(IntegrityError, match="more than 3 members"):
        verify(many, limits=Limits(max_members=3))


# ---- signatures ----------------------------------------------------------------------------------

def test_key_files(keypair):
    private, public = keypair
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    from edgeopt.ship.keys import generate_key

    with pytest.raises(UserInputError, match="already exists"):
        generate_key(private)


def test_signed_bundle_verifies_with_the_right_key_only(out, tmp_path, keypair):
    from edgeopt.ship.keys import generate_key

    private, public = keypair
    signed = bundle(out, tmp_path / "signed", sign_key=private)
    assert bundle(out, tmp_path / "again" / "signed", sign_key=private).read_bytes() == signed.read_bytes()
    rep = verify(signed, public_key=public)
    assert rep["signature"].startswith("valid (Ed25519 key")
    with pytest.warns(SignatureNotCheckedWarning, match="no public key was given, so it was not checked"):
        unchecked = verify(signed)
    assert unchecked["signature"] == "present, NOT CHECKED (no public key given)"
    assert unchecked["signature_checked"] is False and unchecked["signature_state"] == "unchecked"
    with load(signed, public_key=public) as model:
        assert model.verification["signature"].startswith("valid")
    _, other = generate_key(tmp_path / "other.key")
    with pytest.raises(IntegrityError, match="signed with key .* the public key given is"):
        verify(signed, public_key=other)
    with pytest.raises(UserInputError, match="is a private key"):
        verify(signed, public_key=private)
    unsigned = bundle(out, tmp_path / "unsigned")
    with pytest.raises(IntegrityError, match="is not signed"):
        verify(unsigned, public_key=public)


def test_signature_fails_when_tampered(out, tmp_path, keypair):
    private, public = keypair
    folder = folder_bundle(out, tmp_path / "b", sign_key=private)
    assert verify(folder, public_key=public)["signature"].startswith("valid")
    rewrite_manifest(folder, lambda m: m["artifacts"][0].update(accuracy={"metric": "top1", "value": 1.0}))
    with pytest.raises(IntegrityError, match="changed after it was signed"):
        verify(folder, public_key=public)
    folder = folder_bundle(out, tmp_path / "c", sign_key=private)
    with open(folder / AID / "model.onnx", "ab") as f:
        f.write(b"\0")  # manifest intact, signature valid: the file's hash catches it
    with pytest.raises(IntegrityError, match=f"{AID}/model.onnx has"):
        verify(folder, public_key=public)


# ---- this device ---------------------------------------------------------------------------------

def test_missing_backend_is_refused_with_what_to_do(tarball, monkeypatch):
    from edgeopt.backends.onnxruntime.backend import OnnxRuntimeBackend

    monkeypatch.setattr(OnnxRuntimeBackend, "installed", lambda self: False)
    with pytest.raises(IncompatibleError) as err:
        verify(tarball)
    assert "onnxruntime is not installed" in err.value.problem
    assert "pip install 'edgeopt[onnxruntime]'" in err.value.fix and "edgeopt build" in err.value.fix
    with pytest.raises(IncompatibleError):
        load(tarball)


def test_opset_this_runtime_cannot_load_is_refused(out, tmp_path):
    """An artifact whose ONNX needs a newer ONNX Runtime (opset 99, consistently rehashed) is refused with
    what to rebuild, by verify (also without the self-test) and by load."""
    onnx = pytest.importorskip("onnx")
    folder = folder_bundle(out, tmp_path / "b")
    path = folder / AID / "model.onnx"
    model = onnx.load(str(path))
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = 99
    onnx.save(model, str(path))
    rehash(folder)
    for check in (lambda: verify(folder), lambda: verify(folder, self_test=False), lambda: load(folder)):
        with pytest.raises(IncompatibleError) as err:
            check()
        assert f"onnxruntime cannot load {AID} on this device" in err.value.problem
        assert "--target ort-cpu --precision fp32" in err.value.fix and "does not load even with" in err.value.fix


def test_load_prefers_the_fastest_batch1_artifact():
    from edgeopt.ship.bundle import Bundle
    from edgeopt.ship.runtime import candidates

    arts = [{"id": "a", "target": "t1", "status": "ok", "latency": [{"batch": 1, "median_ms": 2.0}]},
            {"id": "b", "target": "t2", "status": "ok",
             "latency": [{"batch": 8, "median_ms": 0.5}, {"batch": 1, "median_ms": 1.0}]},
            {"id": "c", "target": "t3", "status": "ok"},
            {"id": "d", "target": "t1", "status": "failed"}]
    arts = [{**a, "backend": "onnxruntime", "precision": "fp32", "files": []} for a in arts]  # whole records
    b = Bundle(Path("x"), Path("x"), {"artifacts": arts}, "bundle folder")
    assert [r.id for r in candidates(b)] == ["b", "a", "c"]
    assert [r.id for r in candidates(b, "t1")] == ["a"] and [r.id for r in candidates(b, "c")] == ["c"]


def test_unknown_target_is_refused(tarball):
    with pytest.raises(UserInputError, match="No artifact for 'jetson-orin-nano'"):
        verify(tarball, target="jetson-orin-nano")
    assert verify(tarball, target=AID, self_test=False)["runs_here"] == [AID]


def test_tensorrt_engine_must_match_gpu_and_version():
    meta = {"tensorrt": "10.3.0.30", "gpu": "Orin", "compute_capability": "8.7"}
    orin = {"name": "Orin", "compute_capability": "8.7"}
    assert tensorrt_mismatch(meta, "10.3.0.30", orin) is None
    assert "built with TensorRT 10.3.0.30; this device has TensorRT 10.13.0" in tensorrt_mismatch(meta, "10.13.0", orin)
    why = tensorrt_mismatch(meta, "10.3.0.30", {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"})
    assert "built for Orin (sm 8.7); this GPU is NVIDIA GeForce RTX 4090 (sm 8.9)" in why
    assert "cannot identify" in tensorrt_mismatch(meta, "10.3.0.30", None, "no CUDA")
    assert "lacks" in tensorrt_mismatch({}, "10.3.0.30", orin)


def test_tensorrt_engine_for_another_gpu_is_refused_with_what_to_rebuild(out, tmp_path, monkeypatch):
    """The wiring from verify() to the engine check, with TensorRT and the GPU stood in for (none here)."""
    import edgeopt.backends.tensorrt.backend as trt_backend

    folder = folder_bundle(out, tmp_path / "b")
    art_path = folder / AID / "artifact.json"
    art = json.loads(art_path.read_text())
    art.update(backend="tensorrt", meta={"model_file": "model.onnx", "tensorrt": "10.3.0.30", "gpu": "Orin",
                                         "compute_capability": "8.7"},
               target={"name": "jetson-agx-orin", "backend": "tensorrt", "device": "GPU", "precisions": ["fp32"],
                       "description": "Jetson AGX Orin"})
    art_path.write_text(json.dumps(art))
    rehash(folder, lambda m: m["artifacts"][0].update(backend="tensorrt", target="jetson-agx-orin"))
    monkeypatch.setattr(trt_backend.TensorRTBackend, "unavailable_reason", lambda self, target: None)
    monkeypatch.setattr(trt_backend.TensorRTBackend, "version", lambda self: "10.3.0.30")
    monkeypatch.setattr(trt_backend, "probe_gpu", lambda: ({"name": "NVIDIA H200", "compute_capability": "9.0"}, ""))
    with pytest.raises(IncompatibleError) as err:
        verify(folder, self_test=False)
    assert "built for Orin (sm 8.7); this GPU is NVIDIA H200 (sm 9.0)" in err.value.problem
    assert "edgeopt device-compile PACKAGE" in err.value.fix and "--target jetson-agx-orin" in err.value.fix
    monkeypatch.setattr(trt_backend, "probe_gpu", lambda: ({"name": "Orin", "compute_capability": "8.7"}, ""))
    b = open_bundle(folder)
    assert check_compatibility(b, b.artifacts[0]).ok  # the same engine on its own GPU and TensorRT


# ---- CLI -----------------------------------------------------------------------------------------

@pytest.fixture
def cli():
    import click
    from click.testing import CliRunner

    from edgeopt.cli.ship import COMMANDS

    group = click.Group("edgeopt", commands=list(COMMANDS))

    def run(*args):
        res = CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)
        return res.exit_code, res.stdout, res.stderr

    return run


def test_cli_keygen_bundle_verify_run(cli, out, tmp_path):
    code, stdout, _ = cli("keygen", tmp_path / "k.key", "--json")
    assert code == 0 and json.loads(stdout)["public_key"].endswith("k.pub")
    code, stdout, _ = cli("bundle", out, "-o", tmp_path / "d", "--sign-key", tmp_path / "k.key", "--json")
    res = json.loads(stdout)
    assert code == 0 and res["artifacts"] == [AID] and res["signed"] and Path(res["path"]).is_file()
    code, stdout, _ = cli("verify", res["path"], "--public-key", tmp_path / "k.pub", "--json")
    assert code == 0 and json.loads(stdout)["artifacts"][0]["self_test"]["passed"]
    code, stdout, _ = cli("verify", res["path"])
    assert code == 0 and "self-test passed" in stdout
    feeds, refs = load_reference(out / "reference" / "reference.npz")
    np.save(tmp_path / "x.npy", feeds[0]["image"][0])  # one sample: the batch axis is added
    code, stdout, _ = cli("run", res["path"], "--input", tmp_path / "x.npy", "--json")
    got = json.loads(stdout)
    assert code == 0 and got["artifact"] == AID
    np.testing.assert_allclose(got["outputs"]["logits"]["values"], refs[0]["logits"], atol=1e-4)
    assert got["outputs"]["logits"]["top"][0][0]["index"] == int(np.argmax(refs[0]["logits"][0]))
    np.savez(tmp_path / "x.npz", image=feeds[0]["image"].astype(np.float64))
    code, stdout, _ = cli("run", res["path"], "-i", tmp_path / "x.npz")
    assert code == 0 and "logits: float32[1, 10]" in stdout


def test_cli_errors_exit_non_zero(cli, out, tarball, tmp_path):
    code, _, stderr = cli("bundle", out, "-o", tmp_path / "d", "--artifact", "nope")
    assert code == 2 and "No artifact 'nope'" in stderr and "fix:" in stderr
    assert not list(tmp_path.iterdir())
    top = untar(tarball, tmp_path / "x")
    (top / "reference" / "reference.npz").write_bytes(b"junk")
    code, _, stderr = cli("verify", retar(top, tmp_path / "t.edgeopt.tar.gz"))
    assert code == 7 and "reference/reference.npz" in stderr and "Traceback" not in stderr
    (tmp_path / "in.txt").write_text("1 2 3")
    code, _, stderr = cli("run", tarball, "--input", tmp_path / "in.txt")
    assert code == 2 and "Cannot read" in stderr
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 8, 8), np.float32))
    code, _, stderr = cli("run", tarball, "--input", tmp_path / "bad.npy")
    assert code == 2 and "axis 1 must be 1" in stderr
    code, _, stderr = cli("verify", tarball, "--target", "nope")
    assert code == 2
    code, _, stderr = cli("keygen", tmp_path / "k.key")
    code, _, stderr = cli("keygen", tmp_path / "k.key")
    assert code == 2 and "already exists" in stderr


# ---- the runtime stays light ---------------------------------------------------------------------

OWN_FILES = (*sorted(p.relative_to(REPO).as_posix() for p in (REPO / "edgeopt/ship/bundle").glob("*.py")),
             "edgeopt/ship/keys.py", "edgeopt/ship/runtime.py", "edgeopt/cli/ship.py")


def test_runtime_imports_nothing_heavy():
    code = ("import sys, edgeopt.ship.runtime, edgeopt.ship.bundle, edgeopt.ship.keys, edgeopt.core.artifact\n"
            "heavy = [m for m in ('torch', 'openvino', 'nncf', 'onnx', 'onnxruntime', 'cryptography', 'click', "
            "'rich', 'tensorrt', 'PIL') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("path", OWN_FILES)
def test_python_310_syntax(path):
    ast.parse((REPO / path).read_text(), filename=path, feature_version=(3, 10))


@pytest.mark.slow
def test_round_trip_in_a_venv_with_only_numpy_and_onnxruntime(tarball, out, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "numpy", "onnxruntime"], check=True)
    script = tmp_path / "device.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np
        import edgeopt
        from edgeopt.core.reference import load_reference
        from edgeopt.ship.runtime import load
        from edgeopt.ship.bundle import verify

        rep = verify({str(tarball)!r})
        assert rep["runs_here"] == ["{AID}"], rep
        feeds, refs = load_reference({str(out / "reference" / "reference.npz")!r})
        with load({str(tarball)!r}) as model:
            for feed, ref in zip(feeds, refs):
                np.testing.assert_allclose(model.infer(feed)["logits"], ref["logits"], atol=1e-4, rtol=1e-5)
        for name in ("torch", "openvino", "nncf", "onnx", "click", "rich"):
            assert name not in sys.modules, name
        import importlib.util
        assert importlib.util.find_spec("torch") is None  # really absent, not just unimported
        print("device round trip ok")
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run([str(py), "-B", str(script)], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "device round trip ok" in res.stdout
