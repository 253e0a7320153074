"""An ONNX source whose weights live in an external data file (any name): the model key covers that file,
ONNX Runtime compiles it into a self-contained artifact, and a missing or escaping file is a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeopt.errors import ModelLoadError
from test_threads import mlp_onnx
from test_untrusted import tiny_recipe


def externalize(folder: Path, location: str = "weights.bin") -> Path:
    import onnx

    model = onnx.load(mlp_onnx(folder / "plain.onnx"))
    (folder / "plain.onnx").unlink()
    onnx.save_model(model, str(folder / "mlp.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return folder / "mlp.onnx"


@pytest.fixture
def recipe(tmp_path):
    r = tiny_recipe(tmp_path)  # writes mlp.onnx with inline weights: replace it by the external-data form
    externalize(tmp_path)
    return r


def build(recipe, out):
    from edgeopt.pipeline.build import build as run
    from edgeopt.report.progress import Reporter

    return run(recipe, out, reporter=Reporter(quiet=True), profile=False)


def test_external_weights_are_in_the_key_and_ort_compiles_them(recipe, tmp_path):
    pytest.importorskip("openvino")
    out = tmp_path / "OUT"
    first = build(recipe, out)
    assert {a["id"]: a["status"] for a in first["artifacts"]} == {"ort-cpu-fp32": "ok", "openvino-cpu-fp32": "ok"}
    art = out / "ort-cpu-fp32"
    assert (art / "model.onnx.data").is_file()  # the artifact carries its weights, no reference outside
    shutil.move(tmp_path / "weights.bin", tmp_path / "weights.moved")
    from edgeopt.backends.artifact import open_artifact

    feed = {"x": np.ones((2, 16), np.float32)}
    for aid in ("ort-cpu-fp32", "openvino-cpu-fp32"):
        runner, _ = open_artifact(out / aid)
        with runner:
            before = runner.infer(feed)["y"]
    shutil.move(tmp_path / "weights.moved", tmp_path / "weights.bin")

    w = np.fromfile(tmp_path / "weights.bin", dtype=np.float32)
    w[:64] *= 3  # other weights, same ONNX file: used to reuse the OpenVINO artifact ("inputs unchanged")
    w.tofile(tmp_path / "weights.bin")
    second = build(recipe, out)
    assert second["model"]["sha256"] != first["model"]["sha256"]
    assert not any(a.get("reused") for a in second["artifacts"])
    for aid in ("ort-cpu-fp32", "openvino-cpu-fp32"):
        runner, _ = open_artifact(out / aid)
        with runner:
            assert not np.allclose(runner.infer(feed)["y"], before)
    third = build(recipe, out)  # nothing changed: reused
    assert all(a.get("reused") for a in third["artifacts"])


def test_missing_or_escaping_external_data_is_a_clear_error(tmp_path):
    from edgeopt.pipeline.sources import external_data_files

    path = externalize(tmp_path)
    assert external_data_files(path) == ["weights.bin"]
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match="weights.bin, which is missing"):
        external_data_files(path)
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.bin"
    onnx.save(m, str(path))
    with pytest.raises(ModelLoadError, match="leads out of the folder"):
        external_data_files(path)


def test_build_refuses_a_source_whose_weights_are_missing(recipe, tmp_path, run_cli):
    (tmp_path / "weights.bin").unlink()
    code, _, err = run_cli("build", recipe, "-o", tmp_path / "OUT")
    assert code == 2 and "weights.bin" in err and "Traceback" not in err
