"""A complete CLI path without a recipe (issue 14.3): --model/--checkpoint plus --calib/--eval data."""

import json

import numpy as np

from edgeopt.core.resources import data_dir

EXAMPLE = "edgeopt/example/model.py"


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
