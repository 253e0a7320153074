"""Which ONNX operators, opsets and IR versions each TensorRT version's ONNX parser takes. Data only.

Sources (read for this table; names and short notes only, in our own words):
- onnx/onnx-tensorrt ``docs/operators.md`` at release 10.1 GA ("TensorRT 10.0 supports operators in the
  inclusive range of opset 9 to opset 20") and at 10.15 GA ("opset 9 to opset 24").
- onnx/onnx-tensorrt ``docs/Changelog.md`` (10.0 ... 10.15): when an operator became supported and when the
  parser's ONNX submodule moved (1.17 in 10.6, 1.18 in 10.11).
- NVIDIA's "ONNX Opset Guide" for TensorRT 11.x (ONNX 1.20, max opset 25) and the 11.2 operators.md header
  (opset 9 to 24).

The 11.x operator list is 10.15's plus ``Swish`` (ONNX opset 24; in 11.x's operators.md). Re-check against
``docs/operators.md`` of the release a target ships with.

Plugins: an operator the parser has no importer for is looked up in TensorRT's plugin registry by its name, so
TensorRT's standard plugins (``EfficientNMS_TRT`` ...) parse once edgeopt registers them
(``init_libnvinfer_plugins``). DLA: whether a device has DLA cores is the device's (``Builder.num_DLA_cores``;
the target's ``dla_cores`` on the host), not the TensorRT version's.
"""

from __future__ import annotations

from edgeopt.core.versions import major_minor
from edgeopt.backends.tensorrt.plugins import NAMES, NMS_NAMES

Version = tuple[int, int]

BASELINE: Version = (10, 0)  # the oldest TensorRT this table describes

# Operator -> (first TensorRT version that parses it, restriction note). Baseline (10, 0) = at least 10.0.
_B = BASELINE
SUPPORTED: dict[str, tuple[Version, str]] = {
    "Abs": (_B, ""), "Acos": (_B, ""), "Acosh": (_B, ""), "Add": (_B, ""), "And": (_B, "bool only"),
    "ArgMax": (_B, ""), "ArgMin": (_B, ""), "Asin": (_B, ""), "Asinh": (_B, ""), "Atan": (_B, ""),
    "Atanh": (_B, ""),
    "Attention": ((10, 14), "4D Q/K/V only; no past/present key-value inputs or outputs"),
    "AveragePool": (_B, "2D or 3D pooling; dilations must be 1"),
    "BatchNormalization": (_B, ""),
    "BlackmanWindow": ((10, 4), ""),
    "Cast": (_B, ""), "CastLike": (_B, ""), "Ceil": (_B, ""), "Celu": (_B, ""), "Clip": (_B, ""),
    "Concat": (_B, ""),
    "Constant": (_B, "sparse and string values unsupported"),
    "ConstantOfShape": (_B, ""), "Conv": (_B, ""), "ConvTranspose": (_B, ""), "Cos": (_B, ""),
    "Cosh": (_B, ""),
    "CumSum": (_B, "axis must be a build-time constant"),
    "DeformConv": (_B, "1D or 2D spatial input; symmetric pads"),
    "DepthToSpace": (_B, ""),
    "DequantizeLinear": (_B, "x_zero_point must be zero; INT8 (also FP8/INT4/FP4) input"),
    "Div": (_B, ""),
    "Dropout": (_B, "is_training must be a constant False"),
    "Einsum": (_B, "ellipsis, diagonal and broadcasting only from 10.12"),
    "Elu": (_B, ""), "Equal": (_B, ""), "Erf": (_B, ""), "Exp": (_B, ""), "Expand": (_B, ""),
    "EyeLike": (_B, "input must have static dimensions"),
    "Flatten": (_B, ""), "Floor": (_B, ""), "Gather": (_B, ""), "GatherElements": (_B, ""),
    "GatherND": (_B, ""), "Gelu": (_B, ""), "Gemm": (_B, ""), "GlobalAveragePool": (_B, ""),
    "GlobalLpPool": (_B, ""), "GlobalMaxPool": (_B, ""), "Greater": (_B, ""), "GreaterOrEqual": (_B, ""),
    "GridSample": (_B, "4D input only"),
    "GroupNormalization": (_B, ""),
    "GRU": (_B, "bidirectional: same activations both ways"),
    "HammingWindow": ((10, 4), ""), "HannWindow": ((10, 4), ""),
    "HardSigmoid": (_B, ""), "HardSwish": (_B, ""),
    "Hardmax": (_B, "axis dimension must be a build-time constant"),
    "Identity": (_B, ""),
    "If": (_B, "both branches' outputs must have the same rank and different names"),
    "ImageScaler": (_B, ""), "InstanceNormalization": (_B, ""), "IsInf": (_B, ""), "IsNaN": (_B, ""),
    "LayerNormalization": (_B, "only the first output Y"),
    "LeakyRelu": (_B, ""), "Less": (_B, ""), "LessOrEqual": (_B, ""), "Log": (_B, ""),
    "LogSoftmax": (_B, ""),
    "Loop": (_B, "scan outputs of dynamic length unsupported"),
    "LRN": (_B, ""),
    "LSTM": (_B, "bidirectional: same activations both ways; input_forget = 0; layout = 0"),
    "LpNormalization": (_B, ""),
    "LpPool": (_B, "dilations must be 1"),
    "MatMul": (_B, ""), "Max": (_B, ""),
    "MaxPool": (_B, "2D or 3D pooling; the Indices output is unsupported; dilations must be 1"),
    "Mean": (_B, ""), "MeanVarianceNormalization": (_B, ""), "Min": (_B, ""), "Mish": (_B, ""),
    "Mod": (_B, ""), "Mul": (_B, ""), "Neg": (_B, ""), "NonMaxSuppression": (_B, ""), "NonZero": (_B, ""),
    "Not": (_B, "bool only"),
    "OneHot": (_B, "depth must be a build-time constant"),
    "Or": (_B, "bool only"), "Pad": (_B, ""), "ParametricSoftplus": (_B, ""), "Pow": (_B, ""),
    "PRelu": (_B, ""),
    "QuantizeLinear": (_B, "y_zero_point must be zero; INT8 (also FP8/INT4/FP4) output"),
    "RandomNormal": (_B, "seed ignored"), "RandomNormalLike": (_B, "seed ignored"),
    "RandomUniform": (_B, "seed ignored"), "RandomUniformLike": (_B, "seed ignored"),
    "Range": (_B, ""), "Reciprocal": (_B, ""),
    "ReduceL1": (_B, "axes must be an initializer"), "ReduceL2": (_B, "axes must be an initializer"),
    "ReduceLogSum": (_B, "axes must be an initializer"),
    "ReduceLogSumExp": (_B, "axes must be an initializer"),
    "ReduceMax": (_B, "axes must be an initializer"), "ReduceMean": (_B, "axes must be an initializer"),
    "ReduceMin": (_B, "axes must be an initializer"), "ReduceProd": (_B, "axes must be an initializer"),
    "ReduceSum": (_B, "axes must be an initializer"),
    "ReduceSumSquare": (_B, "axes must be an initializer"),
    "Relu": (_B, ""), "Reshape": (_B, ""),
    "Resize": (_B, "modes nearest and linear only (no cubic); no antialias; aspect ratio policy stretch"),
    "ReverseSequence": (_B, ""),
    "RMSNormalization": ((10, 15), ""),
    "RNN": (_B, "bidirectional: same activations both ways"),
    "RoiAlign": (_B, ""),
    "RotaryEmbedding": ((10, 15), "position_ids must be INT64"),
    "Round": (_B, ""),
    "STFT": ((10, 5), "real input; frame_step and window must be initializers"),
    "ScaledTanh": (_B, ""), "Scan": (_B, ""), "Scatter": (_B, ""), "ScatterElements": (_B, ""),
    "ScatterND": (_B, "reduction must be none"),
    "Selu": (_B, ""), "Shape": (_B, ""), "Shrink": (_B, ""), "Sigmoid": (_B, ""), "Sign": (_B, ""),
    "Sin": (_B, ""), "Sinh": (_B, ""), "Size": (_B, ""), "Slice": (_B, ""), "Softmax": (_B, ""),
    "Softplus": (_B, ""), "Softsign": (_B, ""), "SpaceToDepth": (_B, ""), "Split": (_B, ""),
    "Sqrt": (_B, ""),
    "Squeeze": (_B, "axes must resolve to a constant"),
    "Sub": (_B, ""), "Sum": (_B, ""), "Swish": ((11, 0), ""), "Tan": (_B, ""), "Tanh": (_B, ""),
    "TensorScatter": ((10, 15), "4D past_cache and update; axis -2"),
    "ThresholdedRelu": (_B, ""), "Tile": (_B, ""),
    "TopK": (_B, "sorted must be 1; K at most 3840"),
    "Transpose": (_B, ""), "Trilu": (_B, ""),
    "Unsqueeze": (_B, "axes must resolve to a constant"),
    "Upsample": (_B, ""), "Where": (_B, ""), "Xor": (_B, "bool only"),
}

# Operators the support matrix lists as not supported, with the usual way around them.
_PLUGIN = "replace it in the exported graph (ONNX-GraphSurgeon) or provide a TensorRT plugin"
UNSUPPORTED: dict[str, str] = {
    **{op: _PLUGIN for op in (
        "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
        "CenterCropPad", "Compress", "DFT", "Det", "ImageDecoder", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix",
        "Multinomial", "NegativeLogLikelihoodLoss", "RegexFullMatch", "SoftmaxCrossEntropyLoss",
        "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique")},
    **{op: "sequence and optional types are not supported: export without lists/optionals"
       for op in ("ConcatFromSequence", "Optional", "OptionalGetElement", "OptionalHasElement", "SequenceAt",
                  "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
                  "SequenceMap", "SplitToSequence")},
    **{op: "integer-arithmetic (operator-oriented) quantization is not supported: quantize in the QDQ "
           "format (QuantizeLinear/DequantizeLinear around float operators) instead"
       for op in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")},
    "DynamicQuantizeLinear": "not supported: use static QDQ quantization (or compose it as a model-local function)",
}

# What each TensorRT version's ONNX parser reads: (first version, ONNX release it is built against,
# highest opset documented, highest IR version of that ONNX release).
PARSER_VERSIONS: list[tuple[Version, str, int, int]] = [
    ((10, 0), "1.16", 20, 10),   # operators.md 10.0/10.1: opset 9 to 20
    ((10, 6), "1.17", 22, 10),   # Changelog 10.6: ONNX submodule 1.17.0 (opset 22)
    ((10, 11), "1.18", 23, 11),  # Changelog 10.11: ONNX 1.18 (opset 23)
    ((10, 15), "1.19", 24, 12),  # operators.md 10.15: opset 9 to 24
    ((11, 0), "1.19", 24, 12),   # operators.md 11.2: opset 9 to 24
    ((11, 4), "1.20", 25, 13),   # NVIDIA ONNX Opset Guide, TensorRT 11.x: ONNX 1.20.0, max opset 25
]
MIN_OPSET = 9  # "backward compatible to opset 9"; 7 and 8 parse with a warning

# TensorRT's standard plugins (libnvinfer_plugin, registered by init_libnvinfer_plugins): the ONNX parser builds
# a node of one of these names from the plugin registry (which versions exist in which release: plugins.py).
# Names ending in _TRT are TensorRT plugin names too.
STANDARD_PLUGINS = NAMES  # every name in backends/tensorrt/plugins.py, whichever version registers it
NMS_PLUGINS = NMS_NAMES
# Operators whose output shape depends on the data: TensorRT builds them (an output allocator sizes the result
# at run time), but a graph output of such a shape is refused by edgeopt's runner, which allocates outputs first.
DATA_DEPENDENT = frozenset({"NonZero", "NonMaxSuppression"})
# FP8 Q/DQ needs sm 8.9 (Ada, Hopper, Blackwell); FP4 sm 10.0 (Blackwell). Orin is sm 8.7.
MIN_SM = {17: ((8, 9), "FP8"), 23: ((10, 0), "FP4")}  # onnx.TensorProto FLOAT8E4M3FN, FLOAT4E2M1


def parse_version(text: str | int | float) -> Version:
    """A TensorRT version as (major, minor): ``"10.3"``, ``"10.13.3.9"``, ``"11.4.1"`` -> (10, 3), (10, 13), (11, 4)."""
    try:
        return major_minor(text)
    except ValueError:
        raise ValueError(f"not a TensorRT version: {text!r}") from None


def parser_limits(version: Version) -> dict:
    """{'onnx': release, 'max_opset': N, 'max_ir': N, 'min_opset': 9} for a TensorRT version."""
    row = PARSER_VERSIONS[0]
    for candidate in PARSER_VERSIONS:
        if candidate[0] <= version:
            row = candidate
    return {"onnx": row[1], "max_opset": row[2], "max_ir": row[3], "min_opset": MIN_OPSET}


def operator_support(op_type: str, version: Version) -> tuple[bool | None, str]:
    """(True, note) supported; (False, why/fix) not supported; (None, '') not in the list at all."""
    if op_type in SUPPORTED:
        since, note = SUPPORTED[op_type]
        if version < since:
            return False, f"supported from TensorRT {since[0]}.{since[1]}"
        return True, note
    if op_type in UNSUPPORTED:
        return False, UNSUPPORTED[op_type]
    return None, ""


def is_plugin_name(op_type: str) -> bool:
    """A TensorRT plugin's name (a standard plugin, or the ``_TRT`` naming of TensorRT plugins)."""
    return op_type in STANDARD_PLUGINS or op_type.endswith("_TRT")
