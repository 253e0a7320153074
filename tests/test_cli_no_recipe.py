"""A complete CLI path without a recipe (issue 14.3): --model/--checkpoint plus --calib/--eval data."""

import json
from pathlib import Path

import numpy as np

from edgeopt.core.resources import data_dir

EXAMPLE = "edgeopt/example/model.py"
ROOT = Path(__file__).resolve().parent.parent


def _digit_images(root, split: str, n: int, classes: bool):
    """Digits as 16x16 grayscale PNGs (0..255): --preprocess resize brings them to the model's 8x8 input."""
    from PIL import Image

    d = np.load(data_dir("calibration") / "digits" / f"{split}.npz")
    labels = d["labels"] if classes else np.zeros(len(d["image"]), np.int64)
    for i, (x, y) in enumerate(zip(d["image"][:n], labels[:n])):
        folder = root / str(int(y)) if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(np.rint(x[0] * 255).astype(np.uint8), mode="L").resize((16, 16), Image.NEAREST)
        img.save(folder / f"{i:04d}.png")
    return root


def test_build_int8_from_a_model_file_and_image_folders_without_a_recipe(tmp_path, run_cli):
    from edgeopt.example.model import WEIGHTS
    import edgeopt

    model = f"{edgeopt.__path__[0]}/example/model.py:build"
    calib = _digit_images(tmp_path / "calib", "calibration", 120, classes=False)
    val = _digit_images(tmp_path / "val", "heldout", 200, classes=True)
    out = tmp_path / "out"
    code, stdout, err = run_cli("build", "--model", model, "--checkpoint", WEIGHTS,
                                "--input", "image:float32[batch,1,8,8]", "--dim", "batch=1:1:8",
                                "--output-name", "logits", "--calib", calib, "--eval", val, "--preprocess", "resize",
                                "-t", "ort-cpu", "-p", "int8", "-o", out)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["outputs"] == ["logits"]
    assert m["calibration"]["used"] == 120 and m["evaluation"]["used"] == 200
    a = m["artifacts"][0]
    assert a["id"] == "ort-cpu-int8" and a["status"] == "ok"
    assert a["accuracy"]["value"] > 0.9  # the images reach the model as it was trained (resized, 0..1)
    assert m["model"]["preprocess"]["resize"] == [8, 8]


def test_int8_without_a_recipe_and_without_calibration_data_is_a_clear_error(tmp_path, run_cli):
    """Was: AttributeError: 'NoneType' object has no attribute 'to_dict' (a traceback)."""
    from edgeopt.example.model import WEIGHTS
    import edgeopt

    code, stdout, err = run_cli("build", "--model", f"{edgeopt.__path__[0]}/example/model.py:build",
                                "--checkpoint", WEIGHTS, "--input", "image:float32[batch,1,8,8]",
                                "--dim", "batch=1:1:8", "-t", "ort-cpu", "-p", "int8", "-o", tmp_path / "out")
    assert "Traceback" not in err and "AttributeError" not in err
    assert code != 0 and "--calib" in err


def test_init_writes_a_commented_recipe_that_build_accepts(tmp_path, run_cli):
    """`edgeopt init MODEL --data DIR`: input shape and layout read from the images, train/val found."""
    import tomllib

    from edgeopt.config.recipe import load_recipe

    _digit_images(tmp_path / "data" / "train", "train", 30, classes=True)
    _digit_images(tmp_path / "data" / "val", "heldout", 30, classes=True)
    recipe = tmp_path / "recipe.toml"
    code, out, err = run_cli("init", "net.py:make", "--checkpoint", "ft.pt", "--data", tmp_path / "data",
                             "-o", recipe)
    assert code == 0, err
    text = recipe.read_text()
    assert text.count("\n#") > 5  # commented
    d = tomllib.loads(text)
    assert d["inputs"][0]["shape"] == ["batch", 1, 16, 16]
    assert d["calibration"]["source"] == "data/train" and d["evaluation"]["source"] == "data/val"
    r = load_recipe(recipe)
    assert r.evaluation.preprocess.channel_order == "L" and r.precisions == ("fp32", "int8")
    code, out, err = run_cli("init", "net.py:make", "--data", tmp_path / "data", "-o", recipe)
    assert code == 2 and "exists" in err  # never overwritten silently
    code, out, err = run_cli("init", "net.py:make", "--data", tmp_path / "data", "--preprocess", "imagenet",
                             "--input", "image:float32[batch,3,224,224]", "-o", recipe, "--force")
    assert code == 0, err
    r = load_recipe(recipe)
    assert r.calibration.preprocess.center_crop == (224, 224) and r.calibration.preprocess.resize == 256


def test_a_target_asked_for_by_name_and_skipped_is_not_a_success(tmp_path, run_cli):
    """Issue 14.7: `-t openvino-gpu -p fp16` on a machine without an Intel GPU said "skipped" and exited 0."""
    from edgeopt.backends import get_backend
    from edgeopt.core.targets import get_target

    if get_backend("openvino").unavailable_reason(get_target("openvino-gpu")) is None:
        import pytest

        pytest.skip("this machine has an OpenVINO GPU device")
    code, out, err = run_cli("build", "-t", "openvino-gpu", "-p", "fp16", "-o", tmp_path / "o")
    assert code == 3
    assert "openvino-gpu-fp16 was skipped: no OpenVINO GPU device here" in err


def test_targets_and_doctor_fit_80_columns_and_say_one_install_hint(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    from edgeopt.backends import REGISTRY, get_backend

    code, targets_out, _ = run_cli("targets")
    assert code == 0
    code, doctor_out, _ = run_cli("doctor")
    assert code == 0
    for text in (targets_out, doctor_out):
        assert max(len(line) for line in text.splitlines()) <= 80
    flat_t, flat_d = " ".join(targets_out.split()), " ".join(doctor_out.split())
    for name in REGISTRY:
        b = get_backend(name)
        if not b.installed():
            hint = " ".join(b.install_hint().split())
            assert hint in flat_t and hint in flat_d  # the same words in both, from Backend.install_hint()


def test_jetson_int8_package_carries_an_accuracy_figure_scored_here(tmp_path):
    """Issue 14.11: the Q/DQ ONNX of an INT8 device package is scored on the evaluation set with ONNX Runtime
    on the host before it ships (the device then confirms): within the INT8 budget it ships with the figure,
    over it the record is failed with the numbers. (host_check = "warn" so the parity pre-check does not
    decide first.)"""
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    text = (ROOT / "targets" / "jetson-orin-nano.toml").read_text()
    text = text.replace('# host_check = "warn"', 'host_check = "warn"')
    assert 'host_check = "warn"' in text
    target = tmp_path / "jetson-orin-nano.toml"
    target.write_text(text)
    m = build(None, tmp_path / "o", (str(target),), ("int8",), reporter=Reporter(quiet=True))
    (a,) = m["artifacts"]
    acc, base = a["accuracy"]["value"], m["fp32_metric"]["value"]
    assert "onnxruntime" in a["accuracy"]["measured_on"]
    assert a["accuracy"]["within_budget"] == (base - acc <= 0.01 + 1e-9)  # the INT8 budget, 1 point
    if a["accuracy"]["within_budget"]:
        assert a["status"] == "not built here"
    else:
        assert a["status"] == "failed" and f"{acc * 100:.2f}%" in a["reason"]
        assert not (tmp_path / "o" / a["id"]).exists()
