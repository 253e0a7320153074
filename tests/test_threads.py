"""Runners under concurrent ``infer`` calls: every result from 4+ threads equals the single-thread one."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgeopt.core.spec import Dim, IOSpec, TensorSpec

SPEC = IOSpec(inputs=(TensorSpec("x", ("batch", 16)),), dims={"batch": Dim("batch", 1, 1, 8)}, outputs=("y",))
THREADS, CALLS = 6, 60


def mlp_onnx(path: Path) -> Path:
    """x[batch,16] -> relu(x @ W1) @ W2 -> y[batch,4], random weights, dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 64)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def feeds(n: int) -> list[dict[str, np.ndarray]]:
    """Distinct inputs with varying batch sizes, so a result handed to the wrong call is seen."""
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1 + i % 8, 16)).astype(np.float32)} for i in range(n)]


def hammer(runner, inputs: list[dict]) -> None:
    """Run every input once from one thread, then from THREADS threads at once; compare each result."""
    expected = [runner.infer(f)["y"] for f in inputs]
    errors: list[str] = []
    barrier = threading.Barrier(THREADS)

    def worker(t: int):
        barrier.wait()
        for k in range(CALLS):
            i = (t * 7 + k) % len(inputs)
            try:
                got = runner.infer(inputs[i])["y"]
            except Exception as exc:  # noqa: BLE001 - a raised error is a failure to report, like a mismatch
                errors.append(f"thread {t} call {k}: {type(exc).__name__}: {exc}")
                continue
            if got.shape != expected[i].shape or not np.array_equal(got, expected[i]):
                errors.append(f"thread {t} call {k}: input {i} got shape {got.shape}, want {expected[i].shape}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, f"{len(errors)} of {THREADS * CALLS} concurrent calls went wrong, e.g. {errors[:3]}"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return mlp_onnx(tmp_path_factory.mktemp("threads") / "mlp.onnx")


def test_openvino_runner_is_thread_safe(model_path):
    pytest.importorskip("openvino")
    from edgeopt.backends.openvino.runner import OvRunner

    # Several streams and the throughput hint make the old shared-request bug show on every run.
    with OvRunner(model_path, SPEC, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": 2}) as r:
        hammer(r, feeds(24))


def test_openvino_int8_runner_is_thread_safe(model_path):
    nncf = pytest.importorskip("nncf")
    import openvino as ov

    from edgeopt.backends.openvino.runner import OvRunner

    model = ov.convert_model(str(model_path))
    calib = nncf.Dataset([f["x"][:1] for f in feeds(8)])
    q = nncf.quantize(model, calib, subset_size=8)
    with OvRunner(q, SPEC, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}) as r:
        hammer(r, feeds(24))


def test_onnxruntime_runner_is_thread_safe(model_path):
    pytest.importorskip("onnxruntime")
    from edgeopt.backends.onnxruntime.runner import OrtRunner

    with OrtRunner(model_path, SPEC, {"intra_op_threads": 1}) as r:
        hammer(r, feeds(24))
