"""What is served is what was judged: a compiled form a runner creates after the build (a fixed-shape copy,
the batch split over streams) is checked against the judged form on its first use and never used where its
results differ. Each test breaks a variant on purpose, so they hold on every CPU."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from test_threads import SPEC, mlp_onnx

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("variants")
    return mlp_onnx(d / "mlp.onnx")


def feed(batch: int, seed: int = 3) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 16)).astype(np.float32)}


def wrong_copy(runner, shapes):
    """A fixed-shape copy that computes something else: the MLP with its output negated."""
    import openvino as ov
    import openvino.opset13 as ops

    model = runner._model.clone()
    model.reshape({model.input(name): ov.PartialShape(list(shape)) for name, shape in shapes.items()})
    res = model.get_results()[0]
    res.input(0).replace_source_output(ops.negative(res.input_value(0)).output(0))
    return model


def test_a_fixed_shape_copy_that_differs_is_never_served(paths, monkeypatch, caplog):
    from edgeopt.backends.openvino.runner import OvRunner

    monkeypatch.setattr(OvRunner, "static_model", wrong_copy)
    x = feed(4)
    with OvRunner(paths, SPEC, "CPU", {"INFERENCE_NUM_THREADS": 1}) as r, caplog.at_level(logging.WARNING):
        first = r.infer(x)["y"]
        later = [r.infer(x)["y"] for _ in range(4)]  # the 2nd call compiles the copy: checked, refused
        timed = r.timed_call(feed(2))  # the profiler's copy too
        timed()
        refused = list(r.refused_variants)
        kept = dict(r._static)
    assert np.abs(first).sum() > 0
    for y in later:
        np.testing.assert_array_equal(y, first)
    assert len(refused) == 2 and all("cosine" in v["reason"] for v in refused), refused
    assert all(v is None for v in kept.values()), "a refused copy was kept"
    assert "refused the copy compiled for input shapes" in caplog.text


def test_a_fixed_shape_copy_that_agrees_is_served(paths):
    """The control: the check does not refuse every copy (else the speed of a fixed shape is lost)."""
    from edgeopt.backends.openvino.runner import OvRunner

    x = feed(4)
    with OvRunner(paths, SPEC, "CPU", {"INFERENCE_NUM_THREADS": 1}) as r:
        first = r.infer(x)["y"]
        second = r.infer(x)["y"]
        assert r.refused_variants == []
        assert [k for k, v in r._static.items() if v is not None], "the agreeing copy was not kept"
    np.testing.assert_allclose(second, first, rtol=1e-4, atol=1e-4)


def test_a_copy_that_fails_to_run_is_refused(paths, monkeypatch):
    from edgeopt.backends.openvino.runner import OvRunner

    real_run = OvRunner._run

    def broken(self, compiled, f):
        if compiled is not self.compiled:
            raise RuntimeError("kernel crashed")
        return real_run(self, compiled, f)

    monkeypatch.setattr(OvRunner, "_run", broken)
    x = feed(3)
    with OvRunner(paths, SPEC, "CPU", {"INFERENCE_NUM_THREADS": 1}) as r:
        outs = [r.infer(x)["y"] for _ in range(3)]
        assert r.refused_variants and "kernel crashed" in r.refused_variants[0]["reason"]
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


def test_a_batch_split_over_streams_that_differs_is_never_served(paths, monkeypatch):
    from edgeopt.backends.openvino.runner import OvRunner

    real_split = OvRunner._infer_split

    def negated(self, f, parts):
        out = real_split(self, f, parts)
        return None if out is None else {k: -v for k, v in out.items()}

    tput = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 2}
    x = feed(6)
    with OvRunner(paths, SPEC, "CPU", {"INFERENCE_NUM_THREADS": 1}) as judged:
        want = judged.infer(x)["y"]
    monkeypatch.setattr(OvRunner, "_infer_split", negated)
    with OvRunner(paths, SPEC, "CPU", {"INFERENCE_NUM_THREADS": 1}, batch_config=tput) as r:
        if r.streams < 2:
            pytest.skip("OpenVINO gave one stream here: no split to check")
        got = [r.infer(x)["y"] for _ in range(3)]
        assert r.refused_variants and "streams" in r.refused_variants[0]["variant"]
        assert r.streams == 1, "the refused split is still in use"
    for y in got:
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_an_artifact_runner_checks_its_variants_with_the_artifact_tolerance(tmp_path):
    """open_artifact hands the runner the tolerance of the artifact's precision."""
    import json

    from edgeopt.backends.artifact import open_artifact
    from edgeopt.core.parity import tolerance_for

    folder = tmp_path / "art"
    folder.mkdir()
    import openvino as ov

    ov.save_model(ov.convert_model(str(mlp_onnx(tmp_path / "m.onnx"))), str(folder / "model.xml"))
    (folder / "artifact.json").write_text(json.dumps({
        "id": "ov-cpu-fp32", "backend": "openvino", "precision": "fp32",
        "target": {"name": "ov-cpu", "backend": "openvino", "device": "CPU", "precisions": ["fp32"]},
        "spec": SPEC.to_dict(),
        "meta": {"model_file": "model.xml", "runtime_config": {"PERFORMANCE_HINT": "LATENCY"}}}))
    runner, _ = open_artifact(folder)
    assert runner.tolerance == tolerance_for("fp32")
