"""Runtime settings chosen by measurement at build time: ONNX Runtime's load-time optimisation level and
intra-op threads, OpenVINO's streams for feeds of several items. Each choice is recorded with its reason and
figures, follows its own rule, and is what the runner opens the artifact with, from OUT and from a bundle.
Which setting wins is the machine's business: nothing here asserts a speed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeopt.backends.artifact import open_artifact
from test_threads import SPEC, feeds, hammer, mlp_onnx
from test_untrusted import forge, tiny_recipe

ORT, OV = "ort-cpu-fp32", "openvino-cpu-fp32"
TPUT = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 2}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    pytest.importorskip("openvino")
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    d = tmp_path_factory.mktemp("settings")
    build(tiny_recipe(d), d / "OUT", reporter=Reporter(quiet=True), profile=False)
    return d / "OUT"


def record(out, aid):
    return next(a for a in json.loads((out / "manifest.json").read_text())["artifacts"] if a["id"] == aid)


def faster(fig: dict) -> bool:
    s = fig["vs_target"]
    return s["value"] > 1.05 and s["low"] > 1.0


def test_onnxruntime_level_and_threads_are_recorded_and_applied(out, tmp_path, monkeypatch):
    from edgeopt.backends.onnxruntime.runner import physical_cores
    from edgeopt.ship.bundle import bundle
    from edgeopt.ship.runtime import load

    meta = record(out, ORT)["meta"]
    level, threads = meta["runtime_choice"], meta.get("threads_choice")
    assert set(level["figures"]) == {"all", "extended"} and f"{level['figures']['all']['latency_ms_b1']:.3f}" in level["why"]
    assert (level["chosen"] == "extended") == faster(level["figures"]["extended"])
    if physical_cores() > 1:  # one thread raced against ORT's default (one per physical core)
        alts = {k: v for k, v in threads["figures"].items() if not k.startswith("default")}
        assert "1 thread" in alts and threads["default"] == 0
        won = [k for k, v in alts.items() if faster(v)]
        assert (threads["chosen"] != 0) == bool(won)
        if won:
            assert threads["chosen"] == int(min(won, key=lambda k: alts[k]["latency_ms_b1"]).split()[0])
    chosen_threads = threads["chosen"] if threads else 0
    assert meta["runtime_options"] == {"graph_optimization_level": level["chosen"], "intra_op_threads": chosen_threads}
    runner, _ = open_artifact(out / ORT)
    assert runner.options["graph_optimization_level"] == level["chosen"]
    assert runner.threads == (chosen_threads or physical_cores())
    # The bundle carries the choice; the runtime opens the artifact with it.
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    with load(bundle(out, tmp_path / "b.edgeopt.tar.gz"), target="ort-cpu") as model:
        assert model.runner.options["intra_op_threads"] == chosen_threads
        assert model.runner.options["graph_optimization_level"] == level["chosen"]


def test_onnxruntime_settings_are_not_raced_when_the_target_says_so(tmp_path):
    from edgeopt.backends.base import CompileRequest
    from edgeopt.backends.onnxruntime.backend import choose_runtime_options
    from edgeopt.core.targets import load_targets

    req = CompileRequest(onnx_path=mlp_onnx(tmp_path / "m.onnx"), target=load_targets()["ort-cpu"], precision="fp32",
                         spec=SPEC, out_dir=tmp_path, options={"measure_runtime_settings": False})
    assert choose_runtime_options(req.onnx_path, req, "all", 0) == {"level": None, "threads": None}


def test_openvino_streams_choice_is_recorded_and_applied(out, tmp_path, monkeypatch):
    from edgeopt.ship.bundle import bundle
    from edgeopt.ship.runtime import load

    meta = record(out, OV)["meta"]
    choice = meta.get("streams_choice")
    runner, _ = open_artifact(out / OV)
    with runner:
        if choice is None:  # a device that gives a single stream: nothing to choose, nothing split
            assert runner.streams == 1 and "batch_runtime_config" not in meta
            return
        assert choice["batch"] == 8 and len(choice["figures"]) == 2 and "1 stream" in choice["figures"]
        s = choice["vs_1_stream"]
        won = s["value"] > 1.05 and s["low"] > 1.0
        assert (choice["chosen"] != "1 stream") == won == bool(meta.get("batch_runtime_config"))
        assert runner.streams == (int(choice["chosen"].split()[0]) if won else 1)
    # Whatever won here, a bundle whose artifact carries streams settings opens with them.
    folder = forge(bundle(out, tmp_path / "b", folder=True), artifact=OV,
                   art_change=lambda a: a["meta"].update(batch_runtime_config=TPUT))
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    with load(folder, target="openvino-cpu", verify=False) as model:
        assert model.runner.streams == 2
        x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
        whole = np.concatenate([model.infer(x[i:i + 1])["y"] for i in range(5)])
        np.testing.assert_allclose(model.infer(x)["y"], whole, rtol=1e-5, atol=1e-5)


def test_openvino_streams_settings_from_a_bundle_are_checked(out, tmp_path):
    from edgeopt.errors import IntegrityError
    from edgeopt.ship.bundle import bundle
    from edgeopt.ship.runtime import load

    folder = forge(bundle(out, tmp_path / "b", folder=True), artifact=OV,
                   art_change=lambda a: a["meta"].update(batch_runtime_config={"CACHE_DIR": str(tmp_path)}))
    with pytest.raises(IntegrityError, match="CACHE_DIR"):
        load(folder, target="openvino-cpu", verify=False)


def test_openvino_batch_split_over_streams_matches_one_request(tmp_path):
    """The runner splits a batch over one request per stream and joins the outputs: the same figures as one
    request, under concurrent calls too; the profiler's timed call runs the split."""
    pytest.importorskip("openvino")
    from edgeopt.backends.openvino.runner import OvRunner

    path = mlp_onnx(tmp_path / "mlp.onnx")
    latency = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}
    with OvRunner(path, SPEC, "CPU", latency) as one, OvRunner(path, SPEC, "CPU", latency, batch_config=TPUT) as many:
        assert one.streams == 1 and many.streams == 2
        for f in feeds(10):
            np.testing.assert_allclose(many.infer(f)["y"], one.infer(f)["y"], rtol=1e-5, atol=1e-5)
        call = many.timed_call(feeds(8)[7])
        call()
        hammer(many, feeds(24))
