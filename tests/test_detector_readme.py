"""The README's Detection section runs as written: its recipe builds (folders of photos of any size,
letterboxed), and its device-side snippet turns a photo into boxes in that photo's pixels."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_blocks(lang: str) -> list[str]:
    text = README.read_text()
    section = text.split("\n## Detection\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def _photos(folder: Path, n: int, seed: int, names=None):
    """Photos of several sizes and aspect ratios with bright rectangles (objects) on a dark background."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n):
        h, w = int(rng.integers(300, 700)), int(rng.integers(300, 900))
        img = rng.integers(0, 25, (h, w, 3)).astype(np.uint8)
        for _ in range(rng.integers(1, 5)):
            bh, bw = rng.integers(h // 10, h // 3), rng.integers(w // 10, w // 3)
            y0, x0 = rng.integers(0, h - bh), rng.integers(0, w - bw)
            img[y0:y0 + bh, x0:x0 + bw] = rng.integers(80, 255, 3)
        Image.fromarray(img).save(folder / (names[i] if names else f"{i:03d}.png"))


@pytest.mark.slow
def test_the_detection_recipe_and_snippet_run_as_written(tmp_path, monkeypatch, run_cli):
    (recipe,) = _section_blocks("toml")
    (snippet,) = _section_blocks("python")
    (tmp_path / "recipe.toml").write_text(recipe)
    (tmp_path / "model.py").write_text(f"import sys\nsys.path.insert(0, {str(MODELS)!r})\n"
                                       "from tiny import yolo_head\n\n\ndef build():\n    return yolo_head()\n")
    _photos(tmp_path / "calib", 16, seed=1)
    _photos(tmp_path / "val", 8, seed=2, names=[f"{i:03d}.png" for i in range(7)] + ["street.png"])
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("build", "recipe.toml")
    assert code == 0, err
    assert "mAP50" in out and "Traceback" not in err
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "README.md", "exec"), {})
    rows = [r.split(None, 2) for r in printed.getvalue().splitlines()]
    assert rows, "the snippet prints the detections"
    from PIL import Image

    h, w = Image.open("val/street.png").size[::-1]
    boxes = np.array([[float(v) for v in r[2].strip("[]").split()] for r in rows])
    assert boxes.shape[1] == 4 and boxes.min() >= 0 and boxes[:, [0, 2]].max() <= w and boxes[:, [1, 3]].max() <= h
    # The same detections in the input's pixels, mapped back by the letterbox geometry, are the printed ones.
    import edgeopt

    with edgeopt.load("edgeopt-out") as model:
        outputs = model.infer(model.preprocess(Image.open("val/street.png")))
        raw = model.postprocess(outputs)[0]["boxes"]
    s = min(640 / h, 640 / w)
    nh, nw = round(h * s), round(w * s)
    top, left = (640 - nh) // 2, (640 - nw) // 2
    back = np.stack([(raw[:, 0] - left) * w / nw, (raw[:, 1] - top) * h / nh,
                     (raw[:, 2] - left) * w / nw, (raw[:, 3] - top) * h / nh], 1)
    back = np.clip(back, 0, [w, h, w, h])
    np.testing.assert_allclose(boxes, back, atol=0.06)  # printed rounded to 0.1
