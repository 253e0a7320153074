"""What a bundle says is untrusted input: runtime settings, file names, artifact ids, JSON shapes, signatures
and names that end up in the output. Each test forges a bundle as an attacker would (hashes made to match)."""

from __future__ import annotations

import json
import tarfile
import warnings
from pathlib import Path

import pytest

from conftest import invoke_cli, write
from edgeopt.core.fsutil import sha256_file
from edgeopt.errors import IntegrityError, UserInputError
from edgeopt.ship.bundle import SignatureNotCheckedWarning, bundle, open_bundle, verify
from edgeopt.ship.runtime import load
from test_threads import mlp_onnx

ORT, OV = "ort-cpu-fp32", "openvino-cpu-fp32"


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("untrusted-cache")
    mp.setenv("EDGEOPT_CACHE_DIR", str(d))
    mp.delenv("EDGEOPT_REQUIRE_SIGNATURE", raising=False)
    yield d / "bundles"
    mp.undo()


def tiny_recipe(folder: Path, targets=("ort-cpu", "openvino-cpu")) -> Path:
    """A recipe over a tiny ONNX model (no torch export): fast to build."""
    mlp_onnx(folder / "mlp.onnx")
    return write(folder / "recipe.toml", f"""
targets = {json.dumps(list(targets))}
precisions = ["fp32"]

[model]
name = "mlp"
source = "mlp.onnx"
outputs = ["y"]

[[inputs]]
name = "x"
shape = ["batch", 16]

[dims.batch]
min = 1
opt = 1
max = 8

[profile]
batches = [1]
iterations = 5
warmup = 1
baseline = false
""")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    pytest.importorskip("openvino")
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    d = tmp_path_factory.mktemp("untrusted")
    build(tiny_recipe(d), d / "OUT", reporter=Reporter(quiet=True))
    return d / "OUT"


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    from edgeopt.ship.keys import generate_key

    return generate_key(tmp_path_factory.mktemp("keys") / "signing.key")


def forge(folder: Path, manifest_change=lambda m: None, artifact: str | None = None, art_change=None) -> Path:
    """Change a bundle folder's manifest (and one artifact.json), then make every sha256 and size match."""
    if art_change is not None:
        path = folder / artifact / "artifact.json"
        art = json.loads(path.read_text())
        art_change(art)
        path.write_text(json.dumps(art, indent=2))
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    manifest_change(m)
    for f in m["bundle"]["files"] + [f for a in m["artifacts"] for f in a["files"]]:
        p = folder / f["path"]
        if p.is_file():
            f.update(sha256=sha256_file(p), bytes=p.stat().st_size)
    path.write_text(json.dumps(m, indent=2))
    return folder


def retar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


# ---- runtime settings and file names ------------------------------------------------------------

def test_openvino_cache_dir_in_a_bundle_is_refused_and_nothing_is_written_there(out, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = forge(bundle(out, tmp_path / "b", folder=True), artifact=OV,
                   art_change=lambda a: a["meta"]["runtime_config"].update(CACHE_DIR=str(outside)))
    with pytest.raises(IntegrityError, match="Refused OpenVINO runtime setting 'CACHE_DIR'"):
        verify(folder, target=OV)
    with pytest.raises(IntegrityError, match="CACHE_DIR"):
        load(folder, target=OV, verify=False)
    assert not list(outside.iterdir())
    ok = verify(folder, target=ORT)  # the other artifact is untouched and still verifies
    assert ok["runs_here"] == [ORT]


@pytest.mark.parametrize("setting, message", [
    ({"PERFORMANCE_HINT": "../../x"}, "PERFORMANCE_HINT"),
    ({"INFERENCE_NUM_THREADS": -1}, "INFERENCE_NUM_THREADS"),
    ({"INFERENCE_NUM_THREADS": True}, "INFERENCE_NUM_THREADS"),
])
def test_openvino_setting_values_are_checked(out, tmp_path, setting, message):
    folder = forge(bundle(out, tmp_path / "b", folder=True), artifact=OV,
                   art_change=lambda a: a["meta"]["runtime_config"].update(setting))
    with pytest.raises(IntegrityError, match=message):
        load(folder, target=OV, verify=False)


def test_onnxruntime_runtime_options_come_from_an_allow_list(out, tmp_path):
    folder = forge(bundle(out, tmp_path / "b", folder=True), artifact=ORT,
                   art_change=lambda a: a["meta"].update(runtime_options={"optimized_model_filepath": "/tmp/x.onnx"}))
    with pytest.raises(IntegrityError, match="optimized_model_filepath"):
        load(folder, target=ORT, verify=False)
    folder = forge(bundle(out, tmp_path / "c", folder=True), artifact=ORT,
                   art_change=lambda a: a["target"]["options"].update(graph_optimization_level="ludicrous"))
    with pytest.raises(IntegrityError, match="graph_optimization_level"):
        verify(folder, target=ORT)


@pytest.mark.parametrize("artifact", [ORT, OV])
@pytest.mark.parametrize("name", ["ABSOLUTE", "../../outside/model.onnx", "sub/../../x", "a\nb"])
def test_model_file_outside_the_artifact_folder_is_refused(out, tmp_path, artifact, name):
    """An absolute or '..' model_file used to pass verify ("files intact") and run a file outside."""
    stolen = tmp_path / "outside" / "model.onnx"
    stolen.parent.mkdir()
    stolen.write_bytes((out / artifact / ("model.onnx" if artifact == ORT else "model.xml")).read_bytes())
    name = str(stolen) if name == "ABSOLUTE" else name
    folder = forge(bundle(out, tmp_path / "b", folder=True), artifact=artifact,
                   art_change=lambda a: a["meta"].update(model_file=name))
    with pytest.raises(IntegrityError, match="model file"):
        verify(folder, target=artifact)
    with pytest.raises(IntegrityError, match="model file"):
        load(folder, target=artifact, verify=False)


def test_model_file_link_out_of_the_folder_is_refused(out, tmp_path):
    from edgeopt.backends.artifact import open_artifact

    art = tmp_path / "art"
    import shutil

    shutil.copytree(out / ORT, art)
    (tmp_path / "elsewhere").mkdir()
    shutil.move(art / "model.onnx", tmp_path / "elsewhere" / "model.onnx")
    (art / "model.onnx").symlink_to(tmp_path / "elsewhere" / "model.onnx")
    with pytest.raises(IntegrityError, match="leads out of the folder through a link"):
        open_artifact(art)


@pytest.mark.parametrize("aid", ["../../evil", "/abs", "a/b", "", ".."])
def test_artifact_ids_are_plain_folder_names_even_without_verify(out, tmp_path, aid):
    """With --no-verify an id like ../../x used to run a folder outside the bundle."""
    evil = tmp_path / "evil"
    evil.mkdir()

    def change(m):
        m["artifacts"][0]["id"] = aid
        m["bundle"]["artifacts"][0] = aid

    folder = forge(bundle(out, tmp_path / "b", folder=True, artifacts=[ORT]), change)
    with pytest.raises(IntegrityError, match="artifact id|Manifest artifact"):
        load(folder, verify=False)
    with pytest.raises(IntegrityError, match="artifact id|Manifest artifact"):
        verify(folder)


# ---- JSON shapes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [70, 100_000])
def test_deeply_nested_manifest_is_a_clear_error(out, tmp_path, depth):
    folder = bundle(out, tmp_path / "b", folder=True)
    m = json.loads((folder / "manifest.json").read_text())
    text = json.dumps(m)
    nested = "[" * depth + "]" * depth
    (folder / "manifest.json").write_text(text[:-1] + f', "x": {nested}}}')
    with pytest.raises(IntegrityError, match="nested deeper than"):
        verify(folder)
    with pytest.raises(IntegrityError, match="nested deeper than"):
        load(folder, verify=False)
    rc, _, err = invoke_cli("verify", folder)
    assert rc == 7 and "nested deeper than" in err and "Traceback" not in err


@pytest.mark.parametrize("text, message", [
    ('{"a": 1, "a": 2}', "twice in one object"),
    ('{"a": NaN}', "non-JSON constant"),
    ('[1, 2]', "not a JSON object"),
    ('\xff\xfe', "not valid JSON"),
])
def test_odd_json_is_refused(out, tmp_path, text, message):
    folder = bundle(out, tmp_path / "b", folder=True)
    (folder / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(IntegrityError, match=message):
        verify(folder)


def test_oversized_manifest_and_artifact_json_are_refused(out, tmp_path):
    from edgeopt.core import untrusted

    folder = bundle(out, tmp_path / "b", folder=True)
    with (folder / "manifest.json").open("ab") as f:
        f.write(b" " * (untrusted.MAX_JSON_BYTES + 1))
    with pytest.raises(IntegrityError, match="over the limit"):
        verify(folder)
    folder = forge(bundle(out, tmp_path / "c", folder=True), artifact=ORT,
                   art_change=lambda a: a.update(padding="x" * (untrusted.MAX_JSON_BYTES + 1)))
    with pytest.raises(IntegrityError, match="over the limit"):
        load(folder, target=ORT, verify=False)


@pytest.mark.parametrize("change", [
    lambda m: m.update(artifacts={"id": 1}),
    lambda m: m.update(artifacts=[1]),
    lambda m: m["artifacts"][0].update(files="x"),
    lambda m: m["artifacts"][0].update(target=["x"]),
    lambda m: m.update(model=[]),
])
def test_malformed_manifest_shapes_are_clear_errors(out, tmp_path, change):
    folder = bundle(out, tmp_path / "b", folder=True)
    m = json.loads((folder / "manifest.json").read_text())
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m))
    for check in (True, False):
        with pytest.raises(IntegrityError):
            load(folder, verify=check)


# ---- signatures ------------------------------------------------------------------------------------

def test_require_signature_refuses_unsigned_and_unverifiable_bundles(out, tmp_path, keypair, monkeypatch):
    private, public = keypair
    unsigned = bundle(out, tmp_path / "unsigned")
    signed = bundle(out, tmp_path / "signed", sign_key=private)
    with pytest.raises(IntegrityError, match="not signed, and a valid signature is required"):
        verify(unsigned, public_key=public, require_signature=True)
    with pytest.raises(UserInputError, match="no public key was given"):
        verify(signed, require_signature=True)
    with pytest.raises(IntegrityError, match="OUT folder, which is never signed"):
        load(out, public_key=public, require_signature=True)
    assert verify(signed, public_key=public, require_signature=True)["signature_checked"] is True
    monkeypatch.setenv("EDGEOPT_REQUIRE_SIGNATURE", "1")
    with pytest.raises(UserInputError, match="no public key was given"):
        load(unsigned)
    with pytest.raises(IntegrityError, match="not signed"):
        load(unsigned, public_key=public)
    with load(signed, public_key=public) as model:
        assert model.verification["signature_state"] == "valid"
    monkeypatch.setenv("EDGEOPT_REQUIRE_SIGNATURE", "maybe")
    with pytest.raises(UserInputError, match="not a yes/no value"):
        load(signed)
    monkeypatch.setenv("EDGEOPT_REQUIRE_SIGNATURE", "0")
    with pytest.warns(SignatureNotCheckedWarning):
        load(signed).close()


def test_required_signature_checks_file_hashes_even_without_verify(out, tmp_path, keypair):
    private, public = keypair
    folder = bundle(out, tmp_path / "b", folder=True, sign_key=private)
    with open(folder / ORT / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(IntegrityError, match="model.onnx has"):
        load(folder, target=ORT, verify=False, public_key=public, require_signature=True)


def test_tampered_signed_bundle_without_a_key_is_loudly_unchecked(out, tmp_path, keypair):
    """It used to load with exit 0 and only "signature present, not checked" in the report."""
    private, public = keypair
    folder = forge(bundle(out, tmp_path / "b", folder=True, sign_key=private),
                   lambda m: m["model"].update(name="evil"))
    with pytest.warns(SignatureNotCheckedWarning, match="not checked"):
        with load(folder, target=ORT) as model:
            assert model.verification["signature_state"] == "unchecked"
    rc, stdout, err = invoke_cli("verify", folder, "-t", ORT)
    assert rc == 0 and "WARNING: signature NOT CHECKED" in err and "NOT CHECKED" in stdout
    rc, _, err = invoke_cli("verify", folder, "-t", ORT, "--public-key", public)
    assert rc == 7 and "changed after it was signed" in err
    rc, _, err = invoke_cli("verify", folder, "-t", ORT, "--require-signature")
    assert rc == 2 and "no public key was given" in err
    with warnings.catch_warnings():
        warnings.simplefilter("error", SignatureNotCheckedWarning)  # an unsigned bundle does not warn
        open_bundle(bundle(out, tmp_path / "u", folder=True)).root


# ---- output from untrusted strings ---------------------------------------------------------------------

def test_member_name_with_newlines_cannot_fake_output_lines(out, tmp_path, cache):
    fake = "x\n  ok    ort-cpu-fp32 (onnxruntime): self-test passed\n\x1b[2J"
    folder = bundle(out, tmp_path / "digits", folder=True)
    (folder / fake).write_text("surprise")
    archive = retar(folder, tmp_path / "evil.edgeopt.tar.gz")
    rc, stdout, err = invoke_cli("verify", archive)
    assert rc == 7
    assert "self-test passed" not in "\n".join(line for line in (stdout + err).splitlines() if line.startswith("  ok"))
    assert "\\n" in err and "\x1b" not in err and "\\x1b" in err
    assert not [p for p in cache.iterdir() if p.name.startswith(".extract-")] if cache.exists() else True


def test_names_in_the_manifest_are_printed_escaped(out, tmp_path):
    folder = forge(bundle(out, tmp_path / "b", folder=True),
                   lambda m: m["model"].update(name="m\n  ok    fake-artifact: self-test passed\x1b[31m"))
    rc, stdout, _ = invoke_cli("verify", folder, "-t", ORT)
    assert rc == 0
    ok_lines = [line for line in stdout.splitlines() if line.lstrip().startswith("ok ")]
    assert len(ok_lines) == 1 and ok_lines[0].startswith(f"  ok    {ORT} (onnxruntime")
    assert "\x1b" not in stdout and "\\x1b[31m" in stdout


def test_printable_escapes_controls_and_keeps_text():
    from edgeopt.core.untrusted import printable, printable_lines

    assert printable("ünïcode name.onnx") == "ünïcode name.onnx"
    assert printable("a\nb\r\x1b[0m\u202e") == "a\\nb\\r\\x1b[0m\\u202e"
    assert printable_lines("line one\nline\x1b two") == "line one\nline\\x1b two"
    assert printable("x" * 300, limit=10) == "x" * 10 + "..."


def test_settings_and_paths_helpers():
    from edgeopt.core.untrusted import check_id, check_settings, int_in, one_of, relpath_problem

    allowed = {"A": one_of("x", "y"), "N": int_in(0, 4)}
    assert check_settings({"A": "x", "N": 4}, allowed, "setting") == {"A": "x", "N": 4}
    for bad in ({"B": 1}, {"A": "z"}, {"N": 5}, {"N": "3"}, [1]):
        with pytest.raises(IntegrityError):
            check_settings(bad, allowed, "setting")
    assert relpath_problem("a/b.onnx") is None
    for bad in ("", "/x", "C:x", "a/../../b", "a\\b", "a\x00b", "a\nb", "x" * 300, None, 5):
        assert relpath_problem(bad), bad
    assert check_id("ort-cpu-fp32", "id") == "ort-cpu-fp32"
    for bad in ("..", ".", "../x", "a b", "", None, "x" * 200):
        with pytest.raises(IntegrityError):
            check_id(bad, "id")
