"""Detector export: list-of-images models and batches, image sizes declared with a stride."""

import numpy as np
import pytest

from edgeopt.core.spec import Dim, IOSpec
from edgeopt.errors import UserInputError

from conftest import MODELS

FAST = {"batches": [1], "duration_s": 0.1, "min_iterations": 3, "warmup": 1}


def test_list_call_with_a_dynamic_batch_is_refused_before_export(run_cli, tmp_path):
    from conftest import write

    recipe = write(tmp_path / "r.toml", f"""
targets = ["ort-cpu"]
precisions = ["fp32"]

[model]
source = "{MODELS / 'tiny.py'}:ssdlite"
kind = "detector"
call = "list"

[[inputs]]
name = "images"
shape = ["batch", 3, 320, 320]

[dims.batch]
min = 1
max = 4
""")
    code, out, err = run_cli("build", recipe, "-o", tmp_path / "out")
    assert code != 0
    assert 'call = "list"' in err and "Fix the batch" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "export").exists()  # refused before exporting


def test_multiple_of_is_checked_and_round_trips():
    with pytest.raises(UserInputError, match="not a multiple of 32"):
        Dim("h", 32, 48, 128, multiple_of=32)
    with pytest.raises(UserInputError, match="positive integer"):
        Dim("h", 32, 64, 128, multiple_of=0)
    from edgeopt.core.spec import TensorSpec

    spec = IOSpec((TensorSpec("x", (1, 3, "h", "w")),), {"h": Dim("h", 32, 64, 128, 32), "w": Dim("w", 32, 64, 96, 32)})
    assert IOSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(UserInputError, match="not a multiple of 32"):
        spec.check_feed({"x": np.zeros((1, 3, 70, 64), np.float32)})
    spec.check_feed({"x": np.zeros((1, 3, 96, 64), np.float32)})


def test_image_sizes_with_a_stride_export_and_parity_covers_min_and_max(tmp_path):
    from edgeopt.backends.artifact import open_artifact
    from edgeopt.config.recipe import recipe_from_dict
    from edgeopt.core.reference import load_reference
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    data = {"model": {"source": f"{MODELS / 'tiny.py'}:hardswish_se", "kind": "cnn"},
            "inputs": [{"name": "images", "shape": [1, 3, "h", "w"]}],
            "dims": {"h": {"min": 32, "opt": 64, "max": 128, "multiple_of": 32},
                     "w": {"min": 32, "opt": 64, "max": 96, "multiple_of": 32}},
            "targets": ["ort-cpu"], "precisions": ["fp32"], "profile": FAST}
    m = build(recipe_from_dict(data, tmp_path), tmp_path / "out", reporter=Reporter(quiet=True))
    assert m["artifacts"][0]["status"] == "ok", m["artifacts"][0]
    feeds, _ = load_reference(tmp_path / "out" / "reference" / "reference.npz")
    sizes = {f["images"].shape[2:] for f in feeds}
    assert {(32, 32), (64, 64), (128, 96)} <= sizes  # min, opt and max are all checked
    runner, _ = open_artifact(tmp_path / "out" / "ort-cpu-fp32")
    with runner:
        assert runner.infer({"images": np.zeros((1, 3, 96, 32), np.float32)})[m["model"]["outputs"][0]].shape == (1, 5)
        with pytest.raises(UserInputError, match="multiple of 32"):
            runner.infer({"images": np.zeros((1, 3, 70, 32), np.float32)})
