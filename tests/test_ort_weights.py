"""ONNX Runtime INT8 weight layouts: 7-bit weights for the static recipes on x86 CPUs without VNNI (whose u8 x s8
kernels add pairs of products in 16 bits and saturate), per-channel weights for dynamic quantization. Checked
on the quantized models ONNX Runtime's own tools write."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, TensorProto

from edgeopt.backends.onnxruntime import quantize as q
from edgeopt.config.compression import CompressionConfig
from edgeopt.errors import UserInputError


def _model(path, rng):
    """x [N, 16] -> MatMul(W [16, 8]) -> Relu -> MatMul(W2 [8, 4]); weights spread so that 8 bits use +-127."""
    w1 = (rng.standard_normal((16, 8)) * np.linspace(0.1, 2.0, 8)).astype(np.float32)  # columns of other scales
    w2 = rng.standard_normal((8, 4)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _int8_weights(path) -> list[np.ndarray]:
    """The quantized weights (ONNX Runtime names them <weight>_quantized)."""
    return [v for k, v in _initializers(path).items() if k.endswith("_quantized") and v.dtype == np.int8]


@pytest.mark.parametrize("reduce", [False, True])
def test_static_recipe_weights_use_7_bits_when_reduced(tmp_path, reduce):
    rng = np.random.default_rng(0)
    _model(tmp_path / "m.onnx", rng)
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(8)]
    q._ort_static(tmp_path / "m.onnx", tmp_path / "q.onnx", feeds, "u8", symmetric=False, reduce=reduce)
    weights = _int8_weights(tmp_path / "q.onnx")
    assert len(weights) == 2
    top = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert top <= 64 if reduce else top == 127, top


def test_dynamic_recipe_scales_weights_per_output_channel(tmp_path):
    rng = np.random.default_rng(1)
    _model(tmp_path / "m.onnx", rng)
    q._ort_dynamic(tmp_path / "m.onnx", tmp_path / "q.onnx")
    init = _initializers(tmp_path / "q.onnx")
    assert init["w1_quantized"].dtype == np.int8
    assert init["w1_scale"].shape == (8,) and len(np.unique(init["w1_scale"])) == 8  # one per column of w1
    assert init["w2_scale"].shape == (4,)


def _cpu(monkeypatch, arch, flags):
    import edgeopt.core.hostinfo as hostinfo

    monkeypatch.setattr(hostinfo, "cpu_info", lambda: {"arch": arch, "flags": list(flags)})


@pytest.mark.parametrize("arch, flags, on", [
    ("x86_64", ["avx2", "fma"], True),                      # AVX2 without VNNI: VPMADDUBSW saturates
    ("x86_64", ["avx2", "avx512f"], True),                  # AVX-512 without VNNI: the same
    ("x86_64", ["avx2", "avx512f", "avx512_vnni"], False),  # VPDPBUSD adds in 32 bits
    ("x86_64", ["avx2", "avx_vnni"], False),
    ("aarch64", ["asimd", "asimddp"], False),
])
def test_reduce_range_auto_follows_the_cpu(monkeypatch, arch, flags, on):
    _cpu(monkeypatch, arch, flags)
    got, why = q.reduce_range(CompressionConfig())
    assert got is on and why
    assert ("no VNNI" in why) is on


def test_reduce_range_can_be_forced_and_is_validated(monkeypatch):
    _cpu(monkeypatch, "x86_64", ["avx2"])
    assert q.reduce_range(CompressionConfig(reduce_range="off")) == (False, '[compression] reduce_range = "off"')
    _cpu(monkeypatch, "x86_64", ["avx512_vnni"])
    assert q.reduce_range(CompressionConfig(reduce_range="on"))[0] is True
    with pytest.raises(UserInputError, match="reduce_range"):
        CompressionConfig(reduce_range="yes")
