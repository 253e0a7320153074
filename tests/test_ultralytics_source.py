"""Sources the field's training tools write: an Ultralytics ``best.pt`` (written here by Ultralytics itself, a
YOLOv8n built from its yaml, no weights download) builds without a factory file, with no [task] keys beyond
``type``; and a raw YOLO head's format is read from its shape when [task] format is absent."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MODELS

FAST = 'batches = [1]\nduration_s = 0.1\nmin_iterations = 3\nwarmup = 1\n'
SIZE = 160  # a multiple of YOLOv8's stride 32: 525 anchors


@pytest.fixture
def best_pt(tmp_path, monkeypatch):
    """A YOLOv8n detector (2 classes) saved as Ultralytics training saves best.pt: the EMA model in a training
    checkpoint, then strip_optimizer (EMA -> model, FP16, optimizer dropped), as the trainer's final step does."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_VERBOSE", "False")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))  # settings.json out of HOME
    pytest.importorskip("cv2")
    ultralytics = pytest.importorskip("ultralytics")
    import copy

    import torch
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import strip_optimizer

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    model.names = {0: "person", 1: "bicycle"}
    with torch.no_grad():  # untrained class biases score ~1e-4 everywhere: raise them so some boxes score > 0.25
        for branch in model.model[-1].cv3:
            branch[-1].bias.uniform_(-3.0, 1.0)
    path = tmp_path / "runs" / "detect" / "train" / "weights" / "best.pt"  # where Ultralytics training puts it
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 3, "best_fitness": 0.1, "model": None, "ema": copy.deepcopy(model).half(), "updates": 10,
                "optimizer": None, "train_args": {"imgsz": SIZE, "task": "detect", "model": "yolov8n.yaml"},
                "date": "2026-12-07T00:00:00", "version": ultralytics.__version__}, path)
    strip_optimizer(str(path))
    return path


def _recipe(tmp_path, source: str, allow_pickle: bool = True, extra: str = "") -> str:
    from tiny import rect_images

    np.savez(tmp_path / "ev.npz", images=rect_images(4, SIZE, seed=200))
    return f'''targets = ["ort-cpu", "openvino-cpu"]
precisions = ["fp32"]

[model]
source = "{source}"
allow_pickle = {str(allow_pickle).lower()}

[[inputs]]
name = "images"
shape = [1, 3, {SIZE}, {SIZE}]
range = [0.0, 1.0]

[evaluation]
source = "ev.npz"

[task]
type = "detection"
{extra}
[profile]
{FAST}'''


def _build(tmp_path, text: str):
    from edgeopt.config.recipe import load_recipe
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    (tmp_path / "recipe.toml").write_text(text)
    return build(load_recipe(tmp_path / "recipe.toml"), tmp_path / "out", reporter=Reporter(quiet=True))


def _photos(folder, n: int, seed: int):
    from PIL import Image

    from tiny import rect_images

    folder.mkdir()
    for i, x in enumerate(rect_images(n, 200, seed=seed)):
        Image.fromarray((x.transpose(1, 2, 0) * 255).astype(np.uint8)[:, : 120 + 8 * i]).save(folder / f"{i:03d}.png")


def test_ultralytics_best_pt_builds_without_a_factory(tmp_path, best_pt):
    """The README's Ultralytics recipe, at 160x160 instead of 640x640 and FP32 only (time), on photo folders."""
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter
    from readme_flow import recipe

    _photos(tmp_path / "calib", 10, seed=1)
    _photos(tmp_path / "val", 4, seed=2)
    data = recipe(1, precisions=["fp32"], profile={"batches": [1], "duration_s": 0.1, "min_iterations": 3,
                                                   "warmup": 1})
    # Only the source, the trust and the task type: no [[inputs]], no [preprocess], no other [task] key
    assert data["task"] == {"type": "detection"} and data["model"] == {
        "source": "runs/detect/train/weights/best.pt", "allow_pickle": True}
    assert "inputs" not in data and "preprocess" not in data
    m = build(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    assert m["model"]["read_from_model"] == ["inputs", "preprocess"]
    assert m["model"]["inputs"][0]["name"] == "images" and m["model"]["inputs"][0]["shape"] == [1, 3, SIZE, SIZE]
    assert m["model"]["preprocess"]["resize"] == [SIZE, SIZE] and m["model"]["preprocess"]["letterbox"] is True
    facts = m["model"]["checkpoint_facts"]
    assert facts["task"] == "detect" and facts["imgsz"] == [SIZE, SIZE] and facts["stride"] == 32
    assert facts["weights"] == "model"  # strip_optimizer moved the EMA weights there
    assert m["model"]["labels"] == ["person", "bicycle"]
    assert m["model"]["kind"] == "detector"
    assert m["model"]["outputs"] == ["output"]
    assert m["task"]["config"]["format"] == "yolo"  # read from the head's shape [1, 6, 525]
    assert m["fp32_metric"]["metric"] == "map50" and m["fp32_metric"]["value"] == pytest.approx(1.0)
    log = (tmp_path / "out" / "logs" / "build.log").read_text()
    assert "[task] format = \"yolo\" (not in the recipe" in log and "Ultralytics detect checkpoint" in log
    assert f"[[inputs]] images [1, 3, {SIZE}, {SIZE}] read from the checkpoint" in log
    assert {a["target"] for a in m["artifacts"]} == {"ort-cpu", "openvino-cpu"}
    for a in m["artifacts"]:
        assert a["status"] == "ok", a
        assert a["accuracy"]["metric"] == "map50" and a["accuracy"]["value"] > 0.9


def test_ultralytics_best_pt_needs_the_recipes_trust(tmp_path, best_pt, run_cli):
    text = _recipe(tmp_path, "runs/detect/train/weights/best.pt", allow_pickle=False)
    (tmp_path / "recipe.toml").write_text(text)
    code, out, err = run_cli("build", tmp_path / "recipe.toml", "-o", tmp_path / "out")
    assert code != 0
    assert "pickled Python objects" in err and "allow_pickle = true" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_ultralytics_input_size_must_fit_the_stride(tmp_path, best_pt, run_cli):
    text = _recipe(tmp_path, "runs/detect/train/weights/best.pt")
    text = text.replace(f"[1, 3, {SIZE}, {SIZE}]", "[1, 3, 150, 150]")
    text = text.replace('[evaluation]\nsource = "ev.npz"\n', "")
    (tmp_path / "recipe.toml").write_text(text)
    code, out, err = run_cli("build", tmp_path / "recipe.toml", "-o", tmp_path / "out")
    assert code != 0 and "not a multiple of the model's stride 32" in err and "Traceback" not in err


def test_raw_yolo_head_format_is_read_from_its_shape(tmp_path):
    """No [task] format: the tiny YOLO-like head [B, 7, 400] is decoded as YOLO, and the log says so."""
    from tiny import rect_images

    np.savez(tmp_path / "ev.npz", images=rect_images(3, seed=200))
    text = f'''targets = ["ort-cpu"]
precisions = ["fp32"]

[model]
source = "{MODELS / 'tiny.py'}:yolo_head"
kind = "detector"

[[inputs]]
name = "images"
shape = [1, 3, 640, 640]

[evaluation]
source = "ev.npz"

[profile]
{FAST}'''
    m = _build(tmp_path, text)
    assert m["task"]["config"]["type"] == "detection" and m["task"]["config"]["format"] == "yolo"
    assert m["fp32_metric"]["metric"] == "map50"
    log = (tmp_path / "out" / "logs" / "build.log").read_text()
    assert "read from the outputs: a raw YOLO head: output 'output' is [1, 7, 400]" in log


def test_no_inputs_need_a_checkpoint_that_records_its_size(tmp_path, best_pt, run_cli):
    """Without [[inputs]] the size comes from the checkpoint: one that does not record it, or a TorchScript file
    (which never says), is refused naming the [[inputs]] to write; nothing is written."""
    import torch

    ckpt = torch.load(best_pt, map_location="cpu", weights_only=False)
    ckpt.pop("train_args", None)
    ckpt["model"].args = {}
    torch.save(ckpt, best_pt)
    ts = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(4, 2)).save(str(ts))
    for source, problem in (("runs/detect/train/weights/best.pt", "does not record the image size"),
                            ("scripted.pt", "TorchScript file, which does not say what inputs")):
        (tmp_path / "recipe.toml").write_text(f'targets = ["ort-cpu"]\nprecisions = ["fp32"]\n\n[model]\n'
                                              f'source = "{source}"\nallow_pickle = true\n')
        code, out, err = run_cli("build", tmp_path / "recipe.toml", "-o", tmp_path / "out")
        assert code != 0 and problem in err and "[[inputs]]" in err and "Traceback" not in err, err
        assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_model_best_pt_needs_no_input(tmp_path, best_pt, run_cli, monkeypatch):
    """`edgeopt build --model best.pt --allow-pickle`: the inputs come from the checkpoint, as in a recipe; a
    model that does not tell its inputs still needs --input."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("build", "--model", best_pt, "--allow-pickle", "-t", "ort-cpu", "-p", "fp32",
                             "--task", "detection", "-o", tmp_path / "out", "--json")
    assert code == 0, err
    import json

    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["model"]["read_from_model"] == ["inputs", "preprocess"]
    assert m["model"]["inputs"][0]["shape"] == [1, 3, SIZE, SIZE]
    assert [a["status"] for a in m["artifacts"]] == ["ok"]
    code, out, err = run_cli("build", "--model", "model.onnx", "-o", tmp_path / "out2")
    assert code != 0 and "--model needs --input" in err and "Traceback" not in err


def test_cli_eval_photos_of_another_size_are_letterboxed_as_the_checkpoint_says(tmp_path, best_pt, run_cli,
                                                                                monkeypatch):
    """--eval / --calib photos with a best.pt and no --preprocess are prepared as Ultralytics prepares them
    (letterboxed into the checkpoint's size), not refused for their size (a new user's first build failed so)."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, size=(SIZE // 2, SIZE + 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    code, out, err = run_cli("build", "--model", best_pt, "--allow-pickle", "-t", "ort-cpu", "-p", "fp32",
                             "--calib", photos, "--eval", photos, "-o", tmp_path / "out", "--json")
    assert code == 0, err
    import json

    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [a["status"] for a in m["artifacts"]] == ["ok"]
    from edgeopt.cli.main import _recipe_with_cli

    r = _recipe_with_cli(None, (), (), str(best_pt), None, True, None, None, calib=str(photos), evaluation=str(photos))
    for data in (r.calibration, r.evaluation):
        assert data.preprocess.letterbox and list(data.preprocess.resize) == [SIZE, SIZE]
