"""Fake ``tensorrt`` of the TensorRT/CUDA test double (see tests/trt_double/__init__.py).

Only the surface edgeopt uses, with the names, parameter names, enums and return conventions of the TensorRT
version in ``trt_double.state.surface`` (10.3 or 11.4; tests/test_trt_api.py checks every public name here
against that version's API JSON). It enforces what real TensorRT enforces or leaves undefined (an ILogger
subclass must call ``ILogger.__init__``, a network must be parsed before it is built, dynamic inputs need a
profile, shapes and device addresses must be set before ``execute_async_v3``, strongly typed networks take no
precision flags, engines load only on the TensorRT version and GPU that built them, plugin nodes and plugin
engines need ``init_libnvinfer_plugins``), and computes outputs with ONNX Runtime on the ONNX the parser was
given: FP16 builder flag = the model converted to FP16, TF32 (on by default, sm >= 8.0) = FP32 inputs and
weights rounded to TF32's 10-bit mantissa, so parity checks mean something.
"""

from __future__ import annotations

import enum
import json
import struct
from pathlib import Path

import numpy as np

from trt_double import api, state
from trt_double.device import DoubleViolation

if state.broken_libs:
    raise OSError("libnvinfer.so.10: cannot open shared object file: No such file or directory")

_SURFACE = state.surface
_API = api.trt_surface(_SURFACE)
_V11 = _SURFACE.startswith("11")
__version__ = state.TRT_SURFACES[_SURFACE]

_ENGINE_MAGIC = b"TRTDOUBLE-ENGINE\x00"
_CACHE_MAGIC = b"TRTDOUBLE-TIMING\x00"


_VALUES = api.trt_enum_values(_SURFACE)  # TensorRT's own values (NVIDIA's headers), not list positions


def _enum(name: str, members=None) -> type[enum.IntEnum]:
    """The members this version's binding registers (API JSON, in its order) with the headers' values; a member
    sharing a value (10.3's BuilderFlag.WEIGHTLESS = STRIP_PLAN) is an alias, as in pybind11."""
    values = _VALUES[name]
    return enum.IntEnum(name.split(".")[-1], {m: values[m] for m in (members or _API["enums"][name])})


BuilderFlag = _enum("BuilderFlag")
NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag")
MemoryPoolType = _enum("MemoryPoolType")
DeviceType = _enum("DeviceType")
TensorIOMode = _enum("TensorIOMode")
DataType = _enum("DataType")
ErrorCode = _enum("ErrorCode")
PluginFieldType = _enum("PluginFieldType")

_PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4")  # weak typing only (10.x); absent from 11.x


# ---- logging ------------------------------------------------------------------------------------------
class ILogger:
    Severity = _enum("ILogger.Severity", _API["nested_enums"]["ILogger.Severity"])

    def __init__(self):
        self._trt_init = True

    def log(self, severity, msg):
        raise NotImplementedError("ILogger.log is pure virtual")


for _m in ILogger.Severity:  # pybind11's export_values(): trt.ILogger.WARNING, trt.Logger.WARNING
    setattr(ILogger, _m.name, _m)


class Logger(ILogger):
    def __init__(self, min_severity=ILogger.Severity.WARNING):
        ILogger.__init__(self)
        self.min_severity = min_severity
        self._messages = []

    def log(self, severity, msg):
        if severity <= self.min_severity:
            self._messages.append((severity, msg))


def _check_logger(logger) -> None:
    if not isinstance(logger, ILogger):
        raise TypeError(f"incompatible function arguments: logger must be a tensorrt.ILogger, got {type(logger)}")
    if not getattr(logger, "_trt_init", False):
        raise TypeError("tensorrt.ILogger.__init__() must be called when overriding __init__")


def _log(logger, severity: str, msg: str) -> None:
    logger.log(ILogger.Severity[severity], msg)


# ---- plugins ------------------------------------------------------------------------------------------
# What initLibNvInferPlugins registers (NVIDIA/TensorRT plugin/api/inferPlugin.cpp and plugin/README.md at v10.3.0
# and at v11.1, the newest public 11.x sources), as (name, version); the namespace is the one given ("" here).
_PLUGINS_10_3 = {
    ("BatchTilePlugin_TRT", "1"), ("BatchedNMS_TRT", "1"), ("BatchedNMSDynamic_TRT", "1"), ("Clip_TRT", "1"),
    ("CoordConvAC", "1"), ("CropAndResize", "1"), ("CropAndResizeDynamic", "1"), ("DecodeBbox3DPlugin", "1"),
    ("DetectionLayer_TRT", "1"), ("EfficientNMS_Explicit_TF_TRT", "1"), ("EfficientNMS_Implicit_TF_TRT", "1"),
    ("EfficientNMS_ONNX_TRT", "1"), ("EfficientNMS_TRT", "1"), ("FlattenConcat_TRT", "1"),
    ("GenerateDetection_TRT", "1"), ("GridAnchor_TRT", "1"), ("GridAnchorRect_TRT", "1"),
    ("InstanceNormalization_TRT", "1"), ("InstanceNormalization_TRT", "2"), ("LReLU_TRT", "1"),
    ("ModulatedDeformConv2d", "1"), ("MultilevelCropAndResize_TRT", "1"), ("MultilevelProposeROI_TRT", "1"),
    ("MultiscaleDeformableAttnPlugin_TRT", "1"), ("NMSDynamic_TRT", "1"), ("NMS_TRT", "1"), ("Normalize_TRT", "1"),
    ("PillarScatterPlugin", "1"), ("PriorBox_TRT", "1"), ("ProposalDynamic", "1"), ("ProposalLayer_TRT", "1"),
    ("Proposal", "1"), ("PyramidROIAlign_TRT", "1"), ("ROIAlign_TRT", "1"), ("ROIAlign_TRT", "2"),
    ("RPROI_TRT", "1"), ("Region_TRT", "1"), ("Reorg_TRT", "2"), ("ResizeNearest_TRT", "1"),
    ("ScatterElements", "1"), ("ScatterElements", "2"), ("ScatterND", "1"), ("SpecialSlice_TRT", "1"),
    ("Split", "1"), ("VoxelGeneratorPlugin", "1"),
    # registered by REGISTER_TENSORRT_PLUGIN in their own sources (libnvinfer_plugin), not by inferPlugin.cpp
    ("CustomGeluPluginDynamic", "1"), ("DisentangledAttention_TRT", "1"), ("GroupNormalizationPlugin", "1")}
_PLUGINS_11 = {
    ("CropAndResizeDynamic", "2"), ("DecodeBbox3DPlugin", "1"), ("DetectionLayer_TRT", "1"),
    ("EfficientNMS_Explicit_TF_TRT", "1"), ("EfficientNMS_Implicit_TF_TRT", "1"), ("EfficientNMS_TRT", "1"),
    ("FlattenConcat_TRT", "1"), ("GenerateDetection_TRT", "1"), ("GridAnchor_TRT", "1"), ("GridAnchorRect_TRT", "1"),
    ("InstanceNormalization_TRT", "1"), ("InstanceNormalization_TRT", "2"), ("InstanceNormalization_TRT", "3"),
    ("ModulatedDeformConv2d", "1"), ("ModulatedDeformConv2d", "2"), ("MultilevelCropAndResize_TRT", "1"),
    ("MultilevelProposeROI_TRT", "1"), ("MultiscaleDeformableAttnPlugin_TRT", "1"),
    ("MultiscaleDeformableAttnPlugin_TRT", "2"), ("PillarScatterPlugin", "1"), ("PriorBox_TRT", "1"),
    ("ProposalLayer_TRT", "1"), ("PyramidROIAlign_TRT", "1"), ("ROIAlign_TRT", "1"), ("ROIAlign_TRT", "2"),
    ("RPROI_TRT", "1"), ("Region_TRT", "1"), ("Reorg_TRT", "2"), ("ResizeNearest_TRT", "1"),
    ("ScatterElements", "1"), ("ScatterElements", "2"), ("ScatterND", "1"), ("TopkLastDim", "1"),
    ("VoxelGeneratorPlugin", "1"),
    ("DisentangledAttention_TRT", "1"), ("DisentangledAttention_TRT", "2"), ("GroupNormalizationPlugin", "1")}
_REGISTERED = _PLUGINS_11 if _V11 else _PLUGINS_10_3
_STANDARD_PLUGINS = {name for name, _ in _REGISTERED}

# A creator's fields (name, PluginFieldType) and createPlugin's checks (efficientNMSPlugin.cpp, v10.3.0 = v11.1):
# validateRequiredAttributesExist for all but class_agnostic, the field types, and the value ranges.
_EFFICIENT_NMS_FIELDS = (("score_threshold", "FLOAT32"), ("iou_threshold", "FLOAT32"), ("max_output_boxes", "INT32"),
                         ("background_class", "INT32"), ("score_activation", "INT32"), ("class_agnostic", "INT32"),
                         ("box_coding", "INT32"))
_EFFICIENT_NMS_REQUIRED = ("score_threshold", "iou_threshold", "max_output_boxes", "background_class",
                           "score_activation", "box_coding")


def _create_efficient_nms(fields: dict) -> str | None:
    """EfficientNMSPluginCreator::createPlugin: a reason it returns nullptr, or None."""
    for name in _EFFICIENT_NMS_REQUIRED:
        if name not in fields:
            return f"Required attribute {name} is missing"
    for name, kind in _EFFICIENT_NMS_FIELDS:
        if name in fields and name not in ("score_activation", "class_agnostic") and fields[name][0] != kind:
            return f"{name}: expected PluginFieldType {kind}, got {fields[name][0]}"
    value = {k: v[1] for k, v in fields.items()}
    checks = (("score_threshold", lambda v: v >= 0.0), ("iou_threshold", lambda v: v > 0.0),
              ("max_output_boxes", lambda v: v > 0), ("score_activation", lambda v: v in (0, 1)),
              ("class_agnostic", lambda v: v in (0, 1)), ("box_coding", lambda v: v in (0, 1)))
    for name, ok in checks:
        if name in value and not ok(value[name]):
            return f"{name} = {value[name]} is out of range"
    return None


_CREATORS = {("EfficientNMS_TRT", "1"): (_EFFICIENT_NMS_FIELDS, _create_efficient_nms)}


def init_libnvinfer_plugins(logger, namespace):
    _check_logger(logger)
    if not isinstance(namespace, str):
        raise TypeError("namespace must be a str")
    import weakref

    state.plugins_registered = True
    state.plugin_logger = weakref.ref(logger)  # the plugin library keeps a raw pointer; the binding no reference
    return True


def _plugin_logger_alive() -> None:
    """libnvinfer_plugin logs through the logger it was initialised with: a freed one is a use after free."""
    if state.plugin_logger is not None and state.plugin_logger() is None:
        raise DoubleViolation("the logger given to init_libnvinfer_plugins was garbage-collected; libnvinfer_plugin "
                              "still logs through it (use after free). Keep it alive for the whole process.")


_ONNX_ATTR_FIELD = {1: "FLOAT32", 2: "INT32", 3: "CHAR", 6: "FLOAT32", 7: "INT32", 8: "CHAR"}  # loadFields


def _attr_string(node, name: str, default: str) -> str:
    for a in node.attribute:
        if a.name == name:
            return a.s.decode()  # OnnxAttrs::get<std::string> reads the string field: "" for an INT attribute
    return default


def _import_plugin(node, logger) -> str | None:
    """onnx-tensorrt's FallbackPluginImporter: the creator by (op_type, plugin_version, plugin_namespace), then
    loadFields (a missing field is a warning) and createPlugin. Returns why the node fails, or None."""
    from onnx import helper

    if not state.plugins_registered:
        return "Plugin not found, are the plugin name, version, and namespace correct?"
    _plugin_logger_alive()
    version = _attr_string(node, "plugin_version", "1")
    namespace = _attr_string(node, "plugin_namespace", "")
    if namespace != "" or (node.op_type, version) not in _REGISTERED:
        return "Plugin not found, are the plugin name, version, and namespace correct?"
    fields_of, create = _CREATORS.get((node.op_type, version), ((), lambda f: None))
    attrs = {a.name: a for a in node.attribute}
    fields = {}
    for name, _ in fields_of:
        if name not in attrs:
            _log(logger, "WARNING", f"Attribute {name} not found in plugin node! Ensure that the plugin creator has "
                                    "a default value defined or the engine may fail to build.")
            continue
        a = attrs[name]
        fields[name] = (_ONNX_ATTR_FIELD.get(a.type, "UNKNOWN"), helper.get_attribute_value(a))
    why = create(fields)
    if why is not None:
        _log(logger, "ERROR", f"{node.op_type}: {why}")
        return f"Could not create plugin {node.op_type} ({why})"
    return None


# ---- shapes and types -----------------------------------------------------------------------------------
class Dims:
    MAX_DIMS = 8

    def __init__(self, shape=()):
        self._d = [int(x) for x in shape]

    def __len__(self):
        return len(self._d)

    def __getitem__(self, i):
        return self._d[i]

    def __setitem__(self, i, v):
        self._d[i] = int(v)

    def __repr__(self):
        return f"({', '.join(map(str, self._d))})"


_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
       "BOOL": np.bool_, "UINT8": np.uint8}


def nptype(trt_type):
    """TensorRT's own helper (tensorrt/__init__.py): numpy type of a DataType, TypeError when numpy has none."""
    name = DataType(trt_type).name
    if name not in _NP:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return _NP[name]


def volume(iterable):
    vol = 1
    for x in iterable:
        vol *= x
    return vol


class ITensor:
    def __init__(self, name, shape, dtype, is_input, is_shape=False):
        self._name, self._shape, self._dtype, self._is_input = name, list(shape), dtype, is_input
        self._is_shape = is_shape

    name = property(lambda self: self._name)
    shape = property(lambda self: Dims(self._shape))
    dtype = property(lambda self: self._dtype)
    is_network_input = property(lambda self: self._is_input)
    is_network_output = property(lambda self: not self._is_input)
    is_shape_tensor = property(lambda self: self._is_shape)


class ILayer:
    def __init__(self, name, op_type):
        self._name, self._op = name, op_type

    name = property(lambda self: self._name)


class INetworkDefinition:
    def __init__(self, strongly_typed: bool):
        self._strongly_typed = strongly_typed
        self._inputs, self._outputs, self._layers = [], [], []
        self._onnx = None  # the model bytes the parser was given
        self._plugins = []

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._layers))

    def get_input(self, index):
        return self._inputs[index]

    def get_output(self, index):
        return self._outputs[index]

    def get_layer(self, index):
        return self._layers[index]


# ---- the ONNX parser -------------------------------------------------------------------------------------
# Operators onnx-tensorrt's docs/operators.md lists as unsupported (10.x/11.x), and those added after 10.3.
_UNSUPPORTED = {
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "CenterCropPad",
    "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique"}
_SINCE = {"RMSNormalization": (10, 15), "RotaryEmbedding": (10, 15), "TensorScatter": (10, 15),
          "Attention": (10, 14), "Swish": (11, 0)}
_DATA_DEPENDENT = {"NonZero", "NonMaxSuppression"}
_SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,)}  # inputs read as shapes
# Layers the DLA runs (the DLA support table of the TensorRT developer guide, simplified): pooling windows up to
# 8x8, no matrix multiply between activations, no shuffles of the batch axis.
_DLA_OPS = {"Conv", "ConvTranspose", "Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "PRelu", "MaxPool",
            "AveragePool", "BatchNormalization", "Add", "Sub", "Mul", "Max", "Min", "Concat", "Resize", "LRN"}


class ParserError:
    def __init__(self, code, desc, node=-1, node_name="", node_operator=""):
        self._code, self._desc, self._node, self._name, self._op = code, desc, node, node_name, node_operator

    def code(self):
        return self._code

    def desc(self):
        return self._desc

    def node(self):
        return self._node

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def file(self):
        return "ModelImporter.cpp"

    def line(self):
        return 0

    def func(self):
        return "parseNode"

    def __str__(self):
        return f"In node {self._node} with name: {self._name} and operator: {self._op} ({self._code.name}): {self._desc}"


def _version_tuple():
    return tuple(int(x) for x in __version__.split(".")[:2])


class OnnxParser:
    def __init__(self, network, logger):
        _check_logger(logger)
        if not isinstance(network, INetworkDefinition):
            raise TypeError("network must be a tensorrt.INetworkDefinition")
        self._network, self._logger, self._errors = network, logger, []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index):
        return self._errors[index]

    def clear_errors(self):
        self._errors = []

    def parse_from_file(self, model):
        try:
            data = Path(model).read_bytes()
        except OSError as exc:
            self._errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED, f"Failed to open {model}: {exc}"))
            return False
        return self.parse(data, str(Path(model).parent))

    def parse(self, model, path=None):
        import onnx

        try:
            proto = onnx.load_from_string(bytes(model))
            if path is not None:
                from onnx.external_data_helper import load_external_data_for_model

                load_external_data_for_model(proto, path)
        except Exception as exc:  # noqa: BLE001
            self._errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED, f"Failed to parse the model: {exc}"))
            return False
        before = len(self._errors)
        self._plugin_ops = set()
        inits = {t.name: t for t in proto.graph.initializer}
        for i, node in enumerate(proto.graph.node):
            self._check_node(i, node, inits)
        if len(self._errors) > before:
            _log(self._logger, "ERROR", str(self._errors[before]))
            return False
        net = self._network
        for vi in proto.graph.input:
            if vi.name in inits:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
            shape_use = any(n.op_type in _SHAPE_INPUTS and vi.name in [n.input[k] for k in _SHAPE_INPUTS[n.op_type]
                                                                        if k < len(n.input)] for n in proto.graph.node)
            net._inputs.append(ITensor(vi.name, dims, DataType[_ONNX_TO_TRT[vi.type.tensor_type.elem_type]], True,
                                       shape_use))
        for vi in proto.graph.output:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
            net._outputs.append(ITensor(vi.name, dims, DataType[_ONNX_TO_TRT[vi.type.tensor_type.elem_type]], False))
        net._layers = [ILayer(n.name or f"node_of_{n.output[0]}", n.op_type) for n in proto.graph.node
                       if n.op_type != "Constant"]
        net._plugins = sorted(self._plugin_ops)
        net._onnx = proto.SerializeToString()
        return True

    def _check_node(self, i, node, inits) -> None:
        def error(code, desc):
            self._errors.append(ParserError(code, desc, i, node.name, node.op_type))

        import onnx

        standard = node.domain in ("", "ai.onnx") and onnx.defs.has(node.op_type)
        since = _SINCE.get(node.op_type)
        known = standard and node.op_type not in _UNSUPPORTED and (since is None or _version_tuple() >= since)
        if not known:
            # onnx-tensorrt: no importer for the operator, so it looks for a plugin creator of that name
            why = _import_plugin(node, self._logger)
            if why is not None:
                error(ErrorCode.UNSUPPORTED_NODE,
                      f"No importer registered for op: {node.op_type}. Attempting to import as plugin. {why}")
            else:
                self._plugin_ops.add(node.op_type)
            return
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = inits.get(node.input[2])
            if zp is None:
                error(ErrorCode.UNSUPPORTED_NODE_INPUT, "zero point must be an initializer")
                return
            from onnx import numpy_helper

            arr = numpy_helper.to_array(zp)
            if arr.dtype == np.uint8:
                error(ErrorCode.UNSUPPORTED_NODE_DATATYPE, "TensorRT only supports INT8 (signed) quantization")
            elif np.any(arr != 0):
                error(ErrorCode.INVALID_NODE, "TensorRT only supports symmetric quantization: the zero point must be 0")


# ---- builder, config, profiles, timing cache ------------------------------------------------------------
class IOptimizationProfile:
    def __init__(self):
        self._shapes = {}

    def set_shape(self, input, min, opt, max):
        self._shapes[input] = (list(min), list(opt), list(max))

    def get_shape(self, input):
        return [Dims(s) for s in self._shapes[input]]


class IHostMemory:
    def __init__(self, data: bytes):
        self._data = bytes(data)

    nbytes = property(lambda self: len(self._data))
    dtype = property(lambda self: DataType.UINT8)

    def __bytes__(self):
        return self._data

    def __buffer__(self, flags):
        return memoryview(self._data)


class ITimingCache:
    def __init__(self, device, version, entries):
        self._device, self._version, self._entries = device, version, set(entries)

    def serialize(self):
        body = json.dumps({"device": self._device, "tensorrt": self._version, "entries": sorted(self._entries)})
        return IHostMemory(_CACHE_MAGIC + body.encode())

    def reset(self):
        self._entries = set()
        return True

    def combine(self, input_cache, ignore_mismatch):
        self._entries |= input_cache._entries
        return True


def _here():
    d = state.device
    return [d.name, f"{d.cc[0]}.{d.cc[1]}"]


class IBuilderConfig:
    def __init__(self, builder):
        self._builder = builder
        self._flags = {BuilderFlag.TF32}  # TensorRT's default: TF32 on
        self._pools = {}
        self._level = 3
        self._device_type = DeviceType.GPU
        self._dla_core = -1
        self._profiles = []
        self._cache = None

    def set_flag(self, flag):
        self._flags.add(BuilderFlag(flag))

    def clear_flag(self, flag):
        self._flags.discard(BuilderFlag(flag))

    def get_flag(self, flag):
        return BuilderFlag(flag) in self._flags

    def set_memory_pool_limit(self, pool, pool_size):
        if int(pool_size) < 0:
            raise ValueError("pool_size must be non-negative")
        self._pools[MemoryPoolType(pool)] = int(pool_size)

    def get_memory_pool_limit(self, pool):
        return self._pools.get(MemoryPoolType(pool), state.device.memory)

    def _get_level(self):
        return self._level

    def _set_level(self, level):
        if not 0 <= int(level) <= 5:
            raise ValueError("builder_optimization_level must be 0..5")
        self._level = int(level)

    builder_optimization_level = property(_get_level, _set_level)
    default_device_type = property(lambda self: self._device_type,
                                   lambda self, v: setattr(self, "_device_type", DeviceType(v)))
    DLA_core = property(lambda self: self._dla_core, lambda self, v: setattr(self, "_dla_core", int(v)))
    num_optimization_profiles = property(lambda self: len(self._profiles))

    def add_optimization_profile(self, profile):
        for lo, opt, hi in profile._shapes.values():
            if not (len(lo) == len(opt) == len(hi)) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
                return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def can_run_on_DLA(self, layer):
        return layer._op in _DLA_OPS

    def create_timing_cache(self, serialized_timing_cache):
        data = bytes(serialized_timing_cache)
        if not data:
            return ITimingCache(_here(), __version__, ())
        if not data.startswith(_CACHE_MAGIC):
            _log(self._builder._logger, "ERROR", "Failed to deserialize the timing cache: invalid magic tag")
            return None
        body = json.loads(data[len(_CACHE_MAGIC):])
        return ITimingCache(body["device"], body["tensorrt"], body["entries"])

    def set_timing_cache(self, cache, ignore_mismatch):
        if not isinstance(cache, ITimingCache):
            raise TypeError("cache must be a tensorrt.ITimingCache")
        if (cache._device != _here() or cache._version != __version__) and not ignore_mismatch:
            _log(self._builder._logger, "ERROR", "The timing cache was built for another device or TensorRT version")
            return False
        self._cache = cache
        return True

    def get_timing_cache(self):
        return self._cache


def _cuda_usable() -> bool:
    """TensorRT initialises CUDA when a builder or runtime is made: it needs a GPU and a driver at least as new as
    the CUDA it was built with (12.x for 10.3, 13.x for 11.x)."""
    dev = state.device
    return dev is not None and dev.driver_cuda >= (13000 if _V11 else 12000)


def _no_cuda(logger, what: str):
    _log(logger, "ERROR", "6: [cudaUtils.cpp::initCuda] CUDA initialization failure with error: 35. Please check "
                          "your CUDA installation: http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html")
    raise TypeError(f"pybind11::init(): factory function returned nullptr ({what})")


class Builder:
    def __init__(self, logger):
        _check_logger(logger)
        if not _cuda_usable():
            _no_cuda(logger, "createInferBuilder")
        self._logger = logger

    num_DLA_cores = property(lambda self: state.device.dla_cores)
    if not _V11:  # removed in TensorRT 11
        platform_has_fast_fp16 = property(lambda self: state.device.cc >= (5, 3))
        platform_has_tf32 = property(lambda self: state.device.cc >= (8, 0))

    def create_network(self, flags=0):
        known = 0
        for m in NetworkDefinitionCreationFlag:
            known |= 1 << int(m)
        if int(flags) & ~known:
            _log(self._logger, "ERROR", f"createNetworkV2: invalid flags {flags}")
            return None
        strong = _V11 or bool(int(flags) & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        return INetworkDefinition(strong)

    def create_builder_config(self):
        return IBuilderConfig(self)

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        err = lambda msg: (_log(self._logger, "ERROR", msg), None)[1]
        if network._onnx is None or not network._outputs:
            return err("Network must have at least one output")
        precision = sorted(f.name for f in config._flags if f.name in _PRECISION_FLAGS)
        if network._strongly_typed and precision:
            return err(f"BuilderFlag::k{precision[0]} is not allowed with a strongly typed network")
        profile = {}
        dynamic = [t for t in network._inputs if any(d < 0 for d in t._shape)]
        if dynamic:
            if not config._profiles:
                return err("Network has dynamic or shape inputs, but no optimization profile has been defined.")
            shapes = config._profiles[0]._shapes
            for t in dynamic:
                if t.name not in shapes:
                    return err(f"Optimization profile is missing values for input {t.name}")
                lo, opt, hi = shapes[t.name]
                if len(lo) != len(t._shape) or any(d >= 0 and not (a == c == d) for d, a, c in zip(t._shape, lo, hi)):
                    return err(f"Profile dimensions of {t.name} do not match the network's fixed dimensions")
                profile[t.name] = [lo, opt, hi]
        for t in network._inputs:
            profile.setdefault(t.name, [t._shape] * 3)
        dla = None
        fallback = []
        if config._device_type == DeviceType.DLA:
            if config._dla_core < 0 or config._dla_core >= state.device.dla_cores:
                return err(f"DLA core {config._dla_core} is not available on this device "
                           f"({state.device.dla_cores} DLA cores)")
            if not _V11 and not ({"FP16", "INT8"} & set(precision)):
                return err("DLA requires FP16 or INT8 precision (BuilderFlag.FP16/INT8)")
            fallback = [layer.name for layer in network._layers if not config.can_run_on_DLA(layer)]
            if fallback and BuilderFlag.GPU_FALLBACK not in config._flags:
                return err(f"Layer {fallback[0]} cannot run on DLA and GPU fallback is not enabled")
            dla = config._dla_core
        if network._plugins and not state.plugins_registered:
            return err("getPluginCreator could not find plugin " + network._plugins[0])
        mixed = _plugin_type_mismatch(network._onnx)
        if mixed:
            return err(mixed)
        model = network._onnx
        weak_fp16 = not network._strongly_typed and "FP16" in precision
        if weak_fp16:
            model = _to_fp16(model)
        tf32 = BuilderFlag.TF32 in config._flags and state.device.cc >= (8, 0)
        if tf32:
            model = _round_weights_tf32(model)
        if config._cache is not None:
            keys = {f"{layer._op}:{layer.name}:{'+'.join(precision) or 'fp32'}:{json.dumps(profile)}"
                    for layer in network._layers}
            misses = keys - config._cache._entries
            state.device.log.append(f"tactic timing: {len(misses)} of {len(keys)} layers")
            config._cache._entries |= keys
        header = {"tensorrt": __version__, "device": _here(), "strongly_typed": network._strongly_typed,
                  "precision_flags": precision, "tf32": tf32, "profile": profile, "dla_core": dla,
                  "dla_fallback": fallback, "plugins": network._plugins, "layers": len(network._layers),
                  "inputs": [[t.name, t._dtype.name, t._shape] for t in network._inputs],
                  "outputs": [[t.name, t._dtype.name, t._shape] for t in network._outputs]}
        head = json.dumps(header).encode()
        return IHostMemory(_ENGINE_MAGIC + struct.pack("<Q", len(head)) + head + model)


def _plugin_type_mismatch(model: bytes) -> str | None:
    """EfficientNMSPlugin::supportsFormatCombination: boxes and scores FLOAT or HALF, both of one type."""
    import onnx

    m = onnx.load_from_string(model)
    nodes = [n for n in m.graph.node if n.op_type == "EfficientNMS_TRT"]
    if not nodes:
        return None
    g = onnx.shape_inference.infer_shapes(m).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    for n in nodes:
        got = [types.get(i) for i in n.input[:2]]
        if got[0] not in (1, 10) or got[0] != got[1]:  # onnx FLOAT, FLOAT16
            return (f"Error Code 9: Internal Error ({n.name}: could not find any supported formats consistent with "
                    f"input/output data types: boxes {got[0]}, scores {got[1]})")
    return None


def _to_fp16(model: bytes) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load_from_string(model), keep_io_types=True)
    return m.SerializeToString()


def _tf32_round(a: np.ndarray) -> np.ndarray:
    """FP32 rounded to nearest even at TF32's 10-bit mantissa."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    return bits.view(np.float32)


def _round_weights_tf32(model: bytes) -> bytes:
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(model)
    for i, t in enumerate(m.graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(_tf32_round(numpy_helper.to_array(t)), t.name))
    return m.SerializeToString()


# ---- runtime, engine, execution context -----------------------------------------------------------------
class Runtime:
    def __init__(self, logger):
        _check_logger(logger)
        if not _cuda_usable():
            _no_cuda(logger, "createInferRuntime")
        self._logger, self._dla = logger, 0

    DLA_core = property(lambda self: self._dla, lambda self, v: setattr(self, "_dla", int(v)))
    num_DLA_cores = property(lambda self: state.device.dla_cores)

    def deserialize_cuda_engine(self, serialized_engine):
        data = bytes(serialized_engine)
        err = lambda msg: (_log(self._logger, "ERROR", msg), None)[1]
        if not data.startswith(_ENGINE_MAGIC):
            return err("IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Magic tag does not match)")
        n = struct.unpack("<Q", data[len(_ENGINE_MAGIC):len(_ENGINE_MAGIC) + 8])[0]
        start = len(_ENGINE_MAGIC) + 8
        header = json.loads(data[start:start + n])
        if header["tensorrt"] != __version__:
            return err(f"The engine plan file is not compatible with this version of TensorRT, expecting library "
                       f"version {__version__} got {header['tensorrt']}, please rebuild.")
        if header["device"] != _here():
            return err("The engine plan file is generated on an incompatible device, expecting compute "
                       f"{_here()[1]} got compute {header['device'][1]}, please rebuild.")
        if header["plugins"] and not state.plugins_registered:
            return err(f"getPluginCreator could not find plugin: {header['plugins'][0]} version: 1")
        if header["plugins"]:
            _plugin_logger_alive()
        if header["dla_core"] is not None and self._dla >= state.device.dla_cores:
            return err(f"DLA core {self._dla} is not available")
        return ICudaEngine(header, data[start + n:])


class ICudaEngine:
    def __init__(self, header, model: bytes):
        self._h, self._model = header, model
        self._io = [(name, TensorIOMode.INPUT, DataType[dt], shape) for name, dt, shape in header["inputs"]]
        self._io += [(name, TensorIOMode.OUTPUT, DataType[dt], shape) for name, dt, shape in header["outputs"]]
        self._session = None

    num_io_tensors = property(lambda self: len(self._io))
    num_layers = property(lambda self: self._h["layers"])
    num_optimization_profiles = property(lambda self: 1)

    def _tensor(self, name):
        for t in self._io:
            if t[0] == name:
                return t
        return None

    def get_tensor_name(self, index):
        return self._io[index][0]

    def get_tensor_mode(self, name):
        t = self._tensor(name)
        return TensorIOMode.NONE if t is None else t[1]

    def get_tensor_dtype(self, name):
        return self._tensor(name)[2]

    def get_tensor_shape(self, name):
        t = self._tensor(name)
        return Dims(t[3] if t else [])

    def get_tensor_profile_shape(self, name, profile_index):
        return [Dims(s) for s in self._h["profile"][name]]

    def create_execution_context(self, strategy=None):
        return IExecutionContext(self)

    def _run(self, feeds: dict) -> dict:
        import onnxruntime as ort

        if self._h["plugins"]:
            return _run_with_plugins(self._model, feeds, self._h["tf32"], set(self._h["plugins"]))
        if self._session is None:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            self._session = ort.InferenceSession(self._model, so, providers=["CPUExecutionProvider"])
        if self._h["tf32"]:
            feeds = {k: _tf32_round(v) if v.dtype == np.float32 else v for k, v in feeds.items()}
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, feeds)))


class IExecutionContext:
    def __init__(self, engine):
        self._engine = engine
        self._shapes = {}
        self._addresses = {}
        self._out_shapes_cache = {}

    engine = property(lambda self: self._engine)

    def set_input_shape(self, name, shape):
        t = self._engine._tensor(name)
        shape = [int(x) for x in shape]
        if t is None or t[1] != TensorIOMode.INPUT:
            return False
        lo, _, hi = self._engine._h["profile"][name]
        if len(shape) != len(lo) or any(not a <= d <= c for d, a, c in zip(shape, lo, hi)):
            return False
        self._shapes[name] = shape
        return True

    def _inputs_specified(self) -> bool:
        return all(n in self._shapes or all(d >= 0 for d in s) for n, m, _, s in self._engine._io
                   if m == TensorIOMode.INPUT)

    def _input_shape(self, name):
        return self._shapes.get(name) or self._engine._tensor(name)[3]

    def get_tensor_shape(self, name):
        t = self._engine._tensor(name)
        if t is None:
            return Dims([])
        if t[1] == TensorIOMode.INPUT:
            return Dims(self._input_shape(name))
        if not self._inputs_specified():
            return Dims(t[3])
        return Dims(self._output_shapes()[name])

    def _output_shapes(self) -> dict:
        key = json.dumps([self._input_shape(n) for n, m, _, _ in self._engine._io if m == TensorIOMode.INPUT])
        if key not in self._out_shapes_cache:
            shapes = {}
            dependent = _data_dependent_outputs(self._engine._model)
            feeds = {n: np.zeros(self._input_shape(n), dtype=nptype(dt)) for n, m, dt, _ in self._engine._io
                     if m == TensorIOMode.INPUT}
            outs = self._engine._run(feeds) if len(dependent) < len(self._engine._h["outputs"]) else {}
            for n, m, _, s in self._engine._io:
                if m == TensorIOMode.OUTPUT:
                    shapes[n] = [-1] * len(s) if n in dependent else list(outs[n].shape)
            self._out_shapes_cache[key] = shapes
        return self._out_shapes_cache[key]

    def set_tensor_address(self, name, memory):
        if self._engine._tensor(name) is None:
            return False
        if not state.device.is_device_pointer(int(memory)):
            raise DoubleViolation(f"set_tensor_address({name!r}, 0x{int(memory):x}): not a device pointer")
        state.device.view(int(memory), 1)  # inside a live allocation: buffers are allocated before addresses are set
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name):
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle):
        dev = state.device
        stream = dev.stream(int(stream_handle))
        if stream is None:
            raise DoubleViolation(f"execute_async_v3 on stream 0x{int(stream_handle):x}, which was never created")
        if not self._inputs_specified():
            return False  # "not all input shapes are specified"
        missing = [n for n, *_ in self._engine._io if n not in self._addresses]
        if missing:
            return False  # "Neither address or allocator is set for output tensor ..."
        io = []
        for n, m, dt, _ in self._engine._io:
            shape = self._input_shape(n) if m == TensorIOMode.INPUT else self._output_shapes()[n]
            if any(d < 0 for d in shape):
                return False  # a data-dependent output needs an IOutputAllocator, which edgeopt does not set
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(nptype(dt)).itemsize
            dev.view(self._addresses[n], nbytes)  # DoubleViolation when the buffer is too small
            io.append((n, m, dt, shape, nbytes, self._addresses[n]))

        def run():
            feeds = {n: np.frombuffer(dev.view(a, nb).tobytes(), dtype=nptype(dt)).reshape(s)
                     for n, m, dt, s, nb, a in io if m == TensorIOMode.INPUT}
            outs = self._engine._run(feeds)
            for n, m, dt, s, nb, a in io:
                if m == TensorIOMode.OUTPUT:
                    arr = np.ascontiguousarray(outs[n], dtype=nptype(dt))
                    if list(arr.shape) != list(s):
                        raise DoubleViolation(f"output {n} has shape {arr.shape}, not the {s} it was given room for")
                    dev.view(a, nb)[:] = arr.reshape(-1).view(np.uint8)

        dev.enqueue(stream, "execute", run)
        return True


def _data_dependent_outputs(model: bytes) -> set[str]:
    import onnx

    g = onnx.load_from_string(model).graph
    tainted = set()
    for node in g.node:  # nodes are in topological order
        if node.op_type in _DATA_DEPENDENT or any(i in tainted for i in node.input):
            tainted.update(node.output)
    return {o.name for o in g.output if o.name in tainted}


# ---- plugins the double executes (numpy), after ONNX Runtime has run the graph up to their inputs -------------
def _efficient_nms(attrs: dict, boxes: np.ndarray, scores: np.ndarray) -> list[np.ndarray]:
    """EfficientNMS_TRT (standard NMS mode: boxes [B, N, 4], scores [B, N, C]) as TensorRT documents it and its
    kernels (plugin/efficientNMSPlugin, efficientNMSInference.cu) compute it, written here independently of edgeopt:

    - every (anchor, class) pair whose score is >= score_threshold is a candidate; the background_class is not
      (with score_activation the threshold is compared with sigmoid(score), as the kernel's inverse-sigmoid
      threshold on raw scores does);
    - candidates are sorted by score, highest first; the best 4096 enter NMS;
    - greedy NMS: a candidate is dropped when its IoU (on reordered corners) with a kept candidate of the same class
      (any class when class_agnostic) is >= iou_threshold; at most max_output_boxes are kept;
    - outputs: num_detections [B, 1] int32, detection_boxes [B, max, 4] always in corner coding (box_coding 1:
      centre-size converted), detection_scores [B, max] (sigmoid applied when score_activation), detection_classes
      [B, max] int32; everything past num_detections is zero."""
    n_max = int(attrs["max_output_boxes"])
    thr, iou_thr = float(attrs.get("score_threshold", 0.0)), float(attrs.get("iou_threshold", 0.5))
    bg = int(attrs.get("background_class", -1))
    agnostic = bool(attrs.get("class_agnostic", 0))
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"EfficientNMS_TRT: boxes {boxes.shape} / scores {scores.shape} are not [B, N, 4] / [B, N, C]")
    scores = scores.astype(np.float32)
    if attrs.get("score_activation", 0):
        scores = (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)
    corners = boxes.astype(np.float32)
    if attrs.get("box_coding", 0):
        c, wh = corners[..., :2], corners[..., 2:]
        corners = np.concatenate([c - wh / 2, c + wh / 2], axis=-1)
    batch = boxes.shape[0]
    num = np.zeros((batch, 1), np.int32)
    out_boxes = np.zeros((batch, n_max, 4), np.float32)
    out_scores = np.zeros((batch, n_max), np.float32)
    out_classes = np.zeros((batch, n_max), np.int32)
    for b in range(batch):
        anchors, classes = np.nonzero(scores[b] >= thr)
        cand = [(float(scores[b, i, k]), int(i), int(k)) for i, k in zip(anchors, classes) if k != bg]
        cand.sort(key=lambda t: -t[0])
        kept: list[tuple[float, int, int]] = []
        for score, i, k in cand[:4096]:
            if len(kept) == n_max:
                break
            if all((kc != k and not agnostic) or _iou(corners[b, i], corners[b, ki]) < iou_thr for _, ki, kc in kept):
                kept.append((score, i, k))
        num[b, 0] = len(kept)
        for j, (score, i, k) in enumerate(kept):
            out_boxes[b, j], out_scores[b, j], out_classes[b, j] = corners[b, i], score, k
    return [num, out_boxes, out_scores, out_classes]


def _iou(a, b) -> float:
    a = (min(a[0], a[2]), min(a[1], a[3]), max(a[0], a[2]), max(a[1], a[3]))
    b = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


_PLUGIN_IMPLS = {"EfficientNMS_TRT": _efficient_nms}


def _run_with_plugins(model: bytes, feeds: dict, tf32: bool, plugin_ops: set) -> dict:
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.load_from_string(model)
    plugins = [n for n in m.graph.node if n.op_type in plugin_ops]
    unknown = {n.op_type for n in plugins} - set(_PLUGIN_IMPLS)
    produced = {o for n in plugins for o in n.output}
    if unknown or any(i in produced for n in m.graph.node if n not in plugins for i in n.input):
        raise NotImplementedError(f"the double runs {sorted(_PLUGIN_IMPLS)} at the end of a graph only")
    sub = onnx.ModelProto()
    sub.CopyFrom(m)
    del sub.graph.node[:]
    sub.graph.node.extend(n for n in m.graph.node if n not in plugins)
    keep = [o for o in m.graph.output if o.name not in produced]
    del sub.graph.output[:]
    sub.graph.output.extend(keep)
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(sub).graph.value_info}
    inferred.update({o.name: o for o in m.graph.output})
    for n in plugins:
        for i in n.input:
            sub.graph.output.append(inferred.get(i) or helper.make_empty_tensor_value_info(i))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if tf32:
        feeds = {k: _tf32_round(v) if v.dtype == np.float32 else v for k, v in feeds.items()}
    sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, feeds)))
    for n in plugins:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        values.update(zip(n.output, _PLUGIN_IMPLS[n.op_type](attrs, *(values[i] for i in n.input))))
    return {o.name: values[o.name] for o in m.graph.output}
