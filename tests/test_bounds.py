"""Small inputs that used to cost gigabytes, hang the machine, lie about a signature or follow a link out
(issue 21, items 1-7): each is refused (or handled) with bounded memory and time. Memory is measured in a
fresh subprocess (its peak RSS over its own baseline after the imports); time bounds are hang guards only."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke_cli
from edgeopt.errors import IntegrityError
from edgeopt.ship.bundle import bundle, verify
from edgeopt.ship.runtime import load
from test_untrusted import ORT, cache, forge, keypair, out  # noqa: F401 - fixtures

MB = 1 << 20
MEMORY_BOUND_MB = 256  # over the subprocess's own baseline
HANG_GUARD_S = 120  # generous: a busy shared machine; the old behaviour took minutes or gigabytes


def measured(action: str, setup: str = "") -> dict:
    """Run ``action`` (Python, may raise) in a fresh interpreter after ``setup`` and the imports: its outcome
    (the error's type and message, or "ok") and its peak RSS over the baseline, in MB."""
    code = textwrap.dedent(f"""
        import json, resource, sys, time, warnings
        warnings.simplefilter("ignore")
        import numpy as np
        from edgeopt.ship.bundle import verify
        from edgeopt.ship.runtime import load
        {setup}
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        base = peak()
        try:
            {action}
            res = {{"outcome": "ok"}}
        except Exception as exc:
            res = {{"outcome": type(exc).__name__, "message": str(exc)}}
        res["peak_mb"] = peak() - base
        print("RESULT " + json.dumps(res))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


# ---- deflate streams that cost nothing to make ---------------------------------------------------

def deflate_of(prefix: bytes, zeros: int) -> bytes:
    """A raw deflate stream of ``prefix`` then ``zeros`` zero bytes, made by repeating one flushed block
    (1 MB of zeros compress to about 1 KB), so a gigabyte costs a megabyte and no time."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(prefix) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(bytes(MB)) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(bytes(MB)) + co.flush(zlib.Z_FULL_FLUSH)
    assert again == block  # each flushed block stands alone
    full, rest = divmod(zeros, MB)
    tail = co.compress(bytes(rest)) + co.flush()
    return head + block * full + tail


def npz_with_member(path: Path, name: str, header_shape: tuple, data_bytes: int, keep: dict | None = None) -> Path:
    """An .npz whose member ``name`` has a .npy header declaring float32 ``header_shape`` followed by
    ``data_bytes`` zero bytes (deflated; the zip records the true uncompressed size), beside ``keep``'s
    arrays stored normally. The CRC is left wrong: nothing must read that far."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": header_shape})
    header = buf.getvalue()
    stream = deflate_of(header, data_bytes)
    size = len(header) + data_bytes
    assert size < 1 << 32  # no zip64 needed
    entries = []
    body = io.BytesIO()
    for key, arr in (keep or {}).items():  # honest members, via zipfile into memory first
        b = io.BytesIO()
        np.lib.format.write_array(b, np.asarray(arr))
        raw = b.getvalue()
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        c = comp.compress(raw) + comp.flush()
        entries.append((key + ".npy", c, zlib.crc32(raw), len(raw)))
    crc = zlib.crc32(header + bytes(data_bytes)) if data_bytes < 64 * MB else 0
    entries.append((name + ".npy", stream, crc, size))
    central = io.BytesIO()
    for fname, comp, crc, usize in entries:
        offset = body.tell()
        fn = fname.encode()
        body.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(comp), usize, len(fn), 0))
        body.write(fn)
        body.write(comp)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(comp), usize,
                                  len(fn), 0, 0, 0, 0, 0, offset))
        central.write(fn)
    cd = central.getvalue()
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), body.tell(), 0)
    path.write_bytes(body.getvalue() + cd + eocd)
    return path


def forged_reference(out_dir: Path, tmp_path: Path, header_shape: tuple, data_bytes: int) -> Path:
    """A bundle folder whose reference.npz's first input declares ``header_shape`` and holds ``data_bytes``,
    with every hash made to match."""
    folder = bundle(out_dir, tmp_path / "b", folder=True, artifacts=[ORT])
    ref = folder / "reference" / "reference.npz"
    with np.load(ref) as z:
        keep = {k: z[k] for k in z.files if k != "input/0/x"}
    npz_with_member(ref, "input/0/x", header_shape, data_bytes, keep)
    from edgeopt.core.fsutil import sha256_file

    digest = sha256_file(ref)
    return forge(folder, lambda m: m["reference"].update(sha256=digest))


# ---- 1. threads ----------------------------------------------------------------------------------

def live_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_4096_onnxruntime_threads_are_capped_by_the_machine(out, tmp_path):
    from edgeopt.core.untrusted import machine_threads

    folder = forge(bundle(out, tmp_path / "b", folder=True, artifacts=[ORT]), artifact=ORT,
                   art_change=lambda a: a["meta"].update(runtime_options={"intra_op_threads": 4096,
                                                                         "inter_op_threads": 4096}))
    before = live_threads()
    model = load(folder, target=ORT, verify=False)
    with model:
        during = live_threads()
        y = model.infer({"x": np.ones((2, 16), np.float32)})
    assert set(y) == {"y"}
    assert during - before <= 2 * machine_threads() + 8, f"{during - before} threads started for one session"


def test_openvino_threads_and_streams_are_capped():
    from edgeopt.backends.openvino.runner import capped
    from edgeopt.core.untrusted import machine_threads

    got = capped({"INFERENCE_NUM_THREADS": 4096, "NUM_STREAMS": 4096, "PERFORMANCE_HINT": "LATENCY"})
    assert got == {"INFERENCE_NUM_THREADS": machine_threads(), "NUM_STREAMS": machine_threads(),
                   "PERFORMANCE_HINT": "LATENCY"}
    assert capped({"INFERENCE_NUM_THREADS": 1}) == {"INFERENCE_NUM_THREADS": 1}


# ---- 2. reference.npz bombs ----------------------------------------------------------------------

@pytest.mark.parametrize("shape, data, limit", [
    ((768 * MB,), 3 << 30, "MAX_NPZ_BYTES"),  # 3 GB of zeros, really there, in a small file
    ((1 << 40,), 64, "MAX_ARRAY_BYTES"),  # a header declaring 4 TiB over 64 bytes
])
def test_reference_npz_bombs_are_refused_in_bounded_memory(out, tmp_path, shape, data, limit):
    folder = forged_reference(out, tmp_path, shape, data)
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 16 * MB
    for action in (f"verify({str(folder)!r}, target={ORT!r})", f"load({str(folder)!r}, target={ORT!r})"):
        res = measured(action)
        assert res["outcome"] == "IntegrityError", res
        assert "reference data" in res["message"] and limit in res["message"], res
        assert res["peak_mb"] < MEMORY_BOUND_MB, res
    code, _, err = invoke_cli("verify", folder, "--target", ORT)
    assert code != 0 and limit in err and "Traceback" not in err, err


def test_reference_npz_whose_header_lies_about_its_data_is_refused(out, tmp_path):
    folder = forged_reference(out, tmp_path, (4, 16), 8)  # 256 bytes declared, 8 there
    with pytest.raises(IntegrityError, match="truncated or forged"):
        verify(folder, target=ORT)


def test_bounded_npz_reader_reads_what_numpy_wrote(tmp_path):
    from edgeopt.core.bounded import read_npy, read_npz

    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b/c": np.asfortranarray(np.eye(3)),
              "i": np.array([1, 2, 3], np.int64), "e": np.zeros((0, 5), np.float16)}
    np.savez_compressed(tmp_path / "x.npz", **arrays)
    got = read_npz(tmp_path / "x.npz")
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
    np.save(tmp_path / "f.npy", arrays["b/c"])
    np.testing.assert_array_equal(read_npy(tmp_path / "f.npy"), arrays["b/c"])
    np.save(tmp_path / "o.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        read_npy(tmp_path / "o.npy")


# ---- 3. tar headers ------------------------------------------------------------------------------

def tar_with_header(path: Path, kind: bytes, size: int) -> Path:
    """A .tar.gz whose first member is an extended header of type ``kind`` (PAX 'x', GNU long name 'L')
    claiming ``size`` bytes, all present (zeros); a small manifest member follows."""
    hdr = tarfile.TarInfo("b/././@PaxHeader")
    hdr.size, hdr.type = size, kind
    head = hdr.tobuf(tarfile.USTAR_FORMAT)
    pad = (-size) % 512
    body = deflate_of(head, size + pad)
    # A gzip member around the raw deflate stream (CRC and size left wrong: nothing must read that far)
    gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + struct.pack("<II", 0, (size + pad + 512) & 0xFFFFFFFF)
    path.write_bytes(gz)
    return path


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_huge_tar_headers_are_refused_before_tarfile_reads_them(tmp_path, kind):
    archive = tar_with_header(tmp_path / "evil.edgeopt.tar.gz", kind, 600 * MB)
    assert archive.stat().st_size < 4 * MB
    cache_dir = tmp_path / "cache"
    res = measured(f"verify({str(archive)!r}, cache_dir={str(cache_dir)!r})")
    assert res["outcome"] == "IntegrityError" and "MAX_TAR_HEADER_BYTES" in res["message"], res
    assert res["peak_mb"] < MEMORY_BOUND_MB, res
    code, _, err = invoke_cli("verify", archive)
    assert code != 0 and "MAX_TAR_HEADER_BYTES" in err and "Traceback" not in err, err


def test_bundles_with_ordinary_pax_headers_still_open(out, tmp_path):
    """The bound leaves PAX headers of normal size alone (long names, the bundle writer's own)."""
    arc = bundle(out, tmp_path / "ok", artifacts=[ORT])
    assert verify(arc, target=ORT)["runs_here"] == [ORT]


# ---- 6. signature states -------------------------------------------------------------------------

def test_a_signature_is_never_valid_when_the_files_were_not_checked(out, tmp_path, keypair):
    private, public = keypair
    folder = bundle(out, tmp_path / "signed", folder=True, sign_key=private, artifacts=[ORT])
    assert verify(folder, public_key=public, target=ORT)["signature_state"] == "valid"
    model_file = folder / ORT / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))  # same size, manifest untouched
    with pytest.raises(IntegrityError, match="sha256"):
        verify(folder, public_key=public, target=ORT)
    with pytest.warns(UserWarning, match="files were not checked"):
        model = load(folder, target=ORT, public_key=public, verify=False)
    assert model.verification["signature_state"] == "manifest-only"
    assert model.verification["files_checked"] == 0
    assert "NOT checked" in model.verification["signature"]
    np.save(tmp_path / "x.npy", np.ones((1, 16), np.float32))
    code, out_text, err = invoke_cli("run", folder, "-i", tmp_path / "x.npy", "--public-key", public, "--no-verify")
    assert "files were not checked" in err, err
    assert "signature valid" not in (out_text + err).replace("valid over the manifest only", "")


# ---- 7. links ------------------------------------------------------------------------------------

def test_a_folder_bundle_artifact_linked_outside_is_refused_without_verify(out, tmp_path):
    folder = bundle(out, tmp_path / "b", folder=True, artifacts=[ORT])
    outside = tmp_path / "outside"
    shutil.move(folder / ORT, outside)
    (folder / ORT).symlink_to(outside, target_is_directory=True)
    for check in (False, True):
        with pytest.raises(IntegrityError, match="link that leads out"):
            load(folder, target=ORT, verify=check)
    np.save(tmp_path / "x.npy", np.ones((1, 16), np.float32))
    code, _, err = invoke_cli("run", folder, "-i", tmp_path / "x.npy", "--no-verify")
    assert code != 0 and "link that leads out" in err, err


def test_a_reference_linked_outside_is_refused(out, tmp_path):
    folder = bundle(out, tmp_path / "b", folder=True, artifacts=[ORT])
    ref = folder / "reference" / "reference.npz"
    shutil.move(ref, tmp_path / "ref.npz")
    ref.symlink_to(tmp_path / "ref.npz")
    for check in (False, True):
        with pytest.raises(IntegrityError, match="link that leads out"):
            load(folder, target=ORT, verify=check)


def test_an_out_folder_whose_artifact_is_a_link_is_refused(out, tmp_path):
    copy = tmp_path / "OUT"
    shutil.copytree(out, copy, symlinks=True)
    outside = tmp_path / "elsewhere"
    shutil.move(copy / ORT, outside)
    (copy / ORT).symlink_to(outside, target_is_directory=True)
    with pytest.raises(IntegrityError, match="link that leads out"):
        verify(copy, target=ORT)
    with pytest.raises(IntegrityError, match="link that leads out"):
        load(copy, target=ORT)


# ---- 4. image sizes from a manifest --------------------------------------------------------------

def test_a_huge_resize_in_a_manifest_is_refused_before_any_allocation(out, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    folder = forge(bundle(out, tmp_path / "b", folder=True, artifacts=[ORT]),
                   lambda m: m["model"].update(preprocess={"resize": [60000, 60000]}))
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    res = measured(f"load({str(folder)!r}, target={ORT!r}, verify=False).preprocess({str(tmp_path / 'x.png')!r})")
    assert res["outcome"] == "UserInputError" and "MAX_IMAGE_SIDE" in res["message"], res
    assert res["peak_mb"] < MEMORY_BOUND_MB, res
    code, _, err = invoke_cli("run", folder, "-i", tmp_path / "x.png", "--no-verify")
    assert code != 0 and "MAX_IMAGE_SIDE" in err and "Traceback" not in err, err


def test_a_shorter_side_resize_of_a_very_long_image_is_bounded():
    Image = pytest.importorskip("PIL.Image")
    from edgeopt.data.preprocess import Preprocess
    from edgeopt.errors import UserInputError

    pre = Preprocess.from_dict({"resize": 8192})
    with pytest.raises(UserInputError, match="MAX_IMAGE_PIXELS"):
        pre.apply(Image.new("RGB", (1, 64)))  # 8192 x 524288 after the resize


# ---- 5. input files ------------------------------------------------------------------------------

def npy_declaring(path: Path, shape: tuple, data: bytes = b"") -> Path:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    path.write_bytes(buf.getvalue() + data)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: npy_declaring(p, (1 << 44,)), "MAX_ARRAY_BYTES"),  # 64 TiB
    (lambda p: npy_declaring(p, (1, 16), bytes(8)), "truncated or forged"),
    (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a .npy array"),
])
def test_odd_input_files_are_clean_errors(out, tmp_path, make, message):
    path = tmp_path / "x.npy"
    make(path)
    code, _, err = invoke_cli("run", out, "-i", path, "--target", ORT, "--no-verify")
    assert code != 0 and message in err and "Traceback" not in err and "Aborted" not in err, err


def test_a_nan_input_is_warned(out, tmp_path):
    x = np.ones((1, 16), np.float32)
    x[0, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    code, _, err = invoke_cli("run", out, "-i", tmp_path / "x.npy", "--target", ORT, "--no-verify")
    assert code == 0 and "NaN or infinite" in err, err


# ---- 8. deep recipes -----------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [100, 400, 600, 5000])
def test_a_deeply_nested_recipe_is_a_clean_error(tmp_path, depth):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("name = " + "[" * depth + "1" + "]" * depth + "\n")
    code, _, err = invoke_cli("build", recipe, "-o", tmp_path / "OUT")
    assert code == 2 and "error:" in err and "Traceback" not in err, err


# ---- 9. read-only places -------------------------------------------------------------------------

@pytest.fixture
def readonly(tmp_path):
    """A function making a read-only view of a folder: a read-only bind mount as root (which ignores file
    modes), the write bits removed otherwise."""
    mounts = []

    def make(src: Path) -> Path:
        if os.geteuid() != 0:
            for p in [src, *src.rglob("*")]:
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o555)
            return src
        view = tmp_path / f"ro-{len(mounts)}"
        view.mkdir()
        for cmd in (["mount", "--bind", str(src), str(view)], ["mount", "-o", "remount,bind,ro", str(view)]):
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                pytest.skip("cannot make a read-only mount here")
            if cmd[1] == "--bind":
                mounts.append(view)
        return view

    yield make
    for view in reversed(mounts):
        subprocess.run(["umount", str(view)], capture_output=True)


def unwritable(err: str) -> bool:
    return ("read-only" in err or "permission denied" in err) and "Traceback" not in err


def test_commands_into_a_read_only_out_are_clean_errors(out, tmp_path, readonly):
    src = tmp_path / "OUT"
    shutil.copytree(out, src, symlinks=True)
    ro = readonly(src)
    from test_untrusted import tiny_recipe

    (tmp_path / "r").mkdir()
    recipe = tiny_recipe(tmp_path / "r", targets=("ort-cpu",))
    for args in (["report", ro], ["build", recipe, "-o", ro / "new"], ["build", recipe, "-o", ro],
                 ["profile", ro]):
        code, text, err = invoke_cli(*args)
        assert "Traceback" not in err and "Errno" not in err, (args, err)
        if args[0] != "profile":  # profile may only read (it prints), else it must fail as cleanly
            assert code != 0 and unwritable(err), (args, err)
        elif code != 0:
            assert unwritable(err), (args, err)
    code, _, err = invoke_cli("select", ro)  # reads only: works on a read-only OUT
    assert code == 0, err


def test_verify_with_a_read_only_cache_is_a_clean_error(out, tmp_path, readonly, monkeypatch):
    archive = bundle(out, tmp_path / "b", artifacts=[ORT])
    cache_src = tmp_path / "cache"
    cache_src.mkdir()
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(readonly(cache_src)))
    code, _, err = invoke_cli("verify", archive)
    assert code != 0 and unwritable(err), err


# ---- 10. a full disk during bundle ---------------------------------------------------------------

def test_a_full_disk_during_bundle_names_the_bundles_disk(out, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, _, err = invoke_cli("bundle", out, "-o", disk / "b.edgeopt.tar.gz")
        assert code == 10 and "Traceback" not in err, err
        assert "No space left" in err and str(disk) in err, err
        assert not [p.name for p in disk.iterdir()], "a half-written bundle was left"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("kind, words", [("folder", "is a folder"), ("device", "not a regular file"),
                                         ("missing", "does not exist")])
def test_a_checkpoint_that_is_not_a_file_says_what_it_is(tmp_path, kind, words):
    import torch

    from edgeopt.pipeline.sources import _read_checkpoint
    from edgeopt.errors import ModelLoadError

    path = tmp_path / "w.pt"
    if kind == "folder":
        path.mkdir()
    elif kind == "device":
        if not Path("/dev/zero").exists():
            pytest.skip("no /dev/zero")
        path.symlink_to("/dev/zero")
    with pytest.raises(ModelLoadError, match=words):
        _read_checkpoint(torch, path, allow_pickle=False)


def test_onnx_external_data_outside_the_folder_is_not_blamed_on_the_build(tmp_path):
    import onnx
    from onnx import TensorProto

    from edgeopt.backends.onnxruntime.runner import OrtRunner
    from edgeopt.errors import ArtifactLoadError
    from test_threads import SPEC, mlp_onnx

    m = onnx.load(mlp_onnx(tmp_path / "mlp.onnx"))
    w = m.graph.initializer[0]
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../../outside.bin")
    w.ClearField("raw_data")
    (tmp_path / "a" / "b").mkdir(parents=True)
    onnx.save(m, tmp_path / "a" / "b" / "model.onnx")
    with pytest.raises(ArtifactLoadError) as err:
        OrtRunner(tmp_path / "a" / "b" / "model.onnx", SPEC, {}).activate()
    assert "outside its folder" in err.value.fix and "rebuild it (edgeopt build)," not in err.value.fix


def test_a_non_utf8_output_folder_is_named_as_the_cause(tmp_path):
    from test_untrusted import tiny_recipe

    (tmp_path / "r").mkdir()
    recipe = tiny_recipe(tmp_path / "r", targets=("ort-cpu",))
    out_dir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/OUT\xff")
    code, _, err = invoke_cli("build", recipe, "-o", out_dir)
    assert code == 2 and "not valid UTF-8" in err and "onnx.checker" not in err and "Traceback" not in err, err
