"""Building an engine: parse the ONNX, configure the builder from the plan (flags, TF32, profiles, DLA, timing
cache), build and serialize. Takes the ``tensorrt`` module as an argument; imports nothing heavy itself."""

from __future__ import annotations

import time
from pathlib import Path

from edgeopt.errors import CompileError
from edgeopt.backends.tensorrt.plan import BuildPlan

# ---- parsing and configuring ----------------------------------------------------------------------------------------
def _make_logger(trt):
    sev = trt.ILogger.Severity
    keep = (sev.INTERNAL_ERROR, sev.ERROR, sev.WARNING)

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):
            if severity in keep:
                self.messages.append((getattr(severity, "name", str(severity).split(".")[-1]), msg))

    return _Logger()


def parser_errors(parser) -> list[dict]:
    """TensorRT parser errors with the node they concern (index, name, operator)."""
    def call(err, attr):
        fn = getattr(err, attr, None)
        try:
            return fn() if callable(fn) else fn
        except Exception:  # noqa: BLE001 - older bindings lack some accessors
            return None

    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        out.append({"node": call(e, "node"), "node_name": call(e, "node_name"), "operator": call(e, "node_operator"),
                    "code": str(call(e, "code")), "desc": call(e, "desc")})
    return out


def _parse_error(onnx_path: Path, errors: list[dict]) -> CompileError:
    lines = []
    for e in errors[:5]:
        node = e["node_name"] or (f"#{e['node']}" if e["node"] not in (None, -1) else "the graph")
        op = f" ({e['operator']})" if e["operator"] else ""
        lines.append(f"node {node}{op}: {e['desc']}")
    return CompileError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(lines or ["no detail given"]),
                        "Run `edgeopt lint MODEL.onnx --target TARGET` for the fix for that node; rewrite or "
                        "replace the operator named.")


def _network_flags(trt, plan: BuildPlan) -> int:
    if not plan.strongly_typed:
        return 0  # explicit batch is the only mode since TensorRT 10
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0  # 11.x: always strongly typed; the flag is kept, ignored


def _set_profiles(trt, builder, network, config, plan: BuildPlan) -> None:
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        want = plan.profiles.get(tensor.name)
        if want is None:
            raise CompileError(f"The ONNX input {tensor.name!r} has no shapes in the build plan.",
                               "Declare every model input in the recipe's [[inputs]].")
        if getattr(tensor, "is_shape_tensor", False):
            raise CompileError(f"Input {tensor.name!r} is a shape tensor, which edgeopt does not build profiles for.",
                               "Export the model so that shapes are not inputs.")
        for axis, d in enumerate(shape):
            if d >= 0 and not (want["min"][axis] == want["max"][axis] == d):
                raise CompileError(f"Input {tensor.name!r} axis {axis} is fixed at {d} in the ONNX; the plan says "
                                   f"{want['min'][axis]}..{want['max'][axis]}.", "Make the spec match the export.")
        if any(d < 0 for d in shape):
            dynamic.append((tensor.name, want))
    if dynamic:
        profile = builder.create_optimization_profile()
        for name, want in dynamic:
            profile.set_shape(name, want["min"], want["opt"], want["max"])
        config.add_optimization_profile(profile)


def _set_dla(trt, builder, network, config, plan: BuildPlan) -> list[str]:
    """Point the build at the DLA core; return the layers that will run on the GPU instead."""
    if plan.dla_core is None:
        return []
    if builder.num_DLA_cores <= plan.dla_core:
        raise CompileError(f"DLA core {plan.dla_core} was asked for, but this device has {builder.num_DLA_cores} "
                           "DLA core(s).", "Set dla_core = -1 (GPU only) in the target options.")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(plan.dla_core)
    if plan.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    fallback = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not config.can_run_on_DLA(layer):
            fallback.append(layer.name)
    if fallback and not plan.gpu_fallback:
        raise CompileError(f"{len(fallback)} layer(s) cannot run on DLA: {', '.join(fallback[:8])}.",
                           "Allow GPU fallback (gpu_fallback = true) or build for the GPU.")
    return fallback


def _configure(trt, builder, network, config, plan: BuildPlan) -> list[str]:
    if plan.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    config.builder_optimization_level = plan.optimization_level
    for name in plan.builder_flags:
        flag = getattr(trt.BuilderFlag, name, None)  # FP16, BF16, INT8: gone in TensorRT 11
        if flag is None:
            raise CompileError(f"This TensorRT ({trt.__version__}) has no BuilderFlag.{name}.",
                               "Plan the build with the installed TensorRT version (edgeopt does so on the device).")
        config.set_flag(flag)
    _set_tf32(trt, config, plan)
    _set_profiles(trt, builder, network, config, plan)
    return _set_dla(trt, builder, network, config, plan)


def _set_tf32(trt, config, plan: BuildPlan) -> None:
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:
        return  # a TensorRT without TF32 computes fp32 in FP32
    if plan.tf32:
        config.set_flag(flag)
    else:
        config.clear_flag(flag)


def _tf32_used(trt, config) -> bool | None:
    flag = getattr(trt.BuilderFlag, "TF32", None)
    return None if flag is None else bool(config.get_flag(flag))


def _timing_cache(config, data: bytes | None) -> str:
    """Give the build a timing cache: the stored one where TensorRT takes it, else an empty one. Says which."""
    status = "new"
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # noqa: BLE001 - unreadable bytes: start afresh
            cache = None
        status = "loaded" if cache is not None else "unreadable: started afresh"
    if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
        cache, status = None, "from another device or TensorRT: started afresh"
    if cache is None:
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            return "off: TensorRT refused an empty timing cache"
    return status


def _serialized_timing_cache(config) -> bytes | None:
    cache = config.get_timing_cache()
    if cache is None:
        return None
    data = cache.serialize()
    return bytes(data) if data is not None else None


# init_libnvinfer_plugins stores the logger it is given in a global of libnvinfer_plugin, and the Python binding
# does not keep a reference: a logger collected after the call leaves the plugin library logging through a freed
# object. One logger per tensorrt module lives here for the life of the process (Polygraphy keeps one module-level
# logger for the same reason).
_PLUGIN_LOGGERS: list[tuple[object, object]] = []  # (tensorrt module, its logger); never emptied


def plugin_logger(trt):
    """The process-lifetime logger handed to ``init_libnvinfer_plugins`` (one per tensorrt module; a pybind11
    logger takes no extra attributes, so the module is kept beside it)."""
    for module, logger in _PLUGIN_LOGGERS:
        if module is trt:
            return logger
    logger = trt.Logger(trt.Logger.WARNING)
    _PLUGIN_LOGGERS.append((trt, logger))
    return logger


def init_plugins(trt, logger=None) -> bool:
    """Register TensorRT's standard plugins (EfficientNMS_TRT, ...): the parser falls back to them for operators
    it has no importer for, and an engine that uses one deserializes only once they are registered. The plugin
    library keeps the logger, so it is always :func:`plugin_logger`'s (``logger`` is ignored; kept for callers)."""
    return bool(trt.init_libnvinfer_plugins(plugin_logger(trt), ""))


def make_builder(trt, logger):
    """``trt.Builder(logger)``, or a clear error where TensorRT cannot initialise CUDA (no GPU, or a driver older
    than the CUDA this TensorRT was built with): the binding raises TypeError for the null builder it gets."""
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:
        builder, why = None, str(exc)
    else:
        why = ""
    if builder is None:
        logged = "; ".join(m for s, m in getattr(logger, "messages", []) if s in ("ERROR", "INTERNAL_ERROR"))
        raise CompileError(f"TensorRT could not start (no usable GPU or CUDA driver): {logged or why}"[:800],
                           "Build on the device, with its NVIDIA driver loaded (nvidia-smi / tegrastats work), "
                           "and the TensorRT made for that driver's CUDA (JetPack's on Jetson).")
    return builder


def build_engine(trt, onnx_path: Path, plan: BuildPlan, timing_cache: bytes | None = None) -> tuple[bytes, bytes | None, dict]:
    """Parse and build. Returns (serialized engine, timing cache bytes, report)."""
    logger = _make_logger(trt)
    plugins = init_plugins(trt)
    builder = make_builder(trt, logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise _parse_error(Path(onnx_path), parser_errors(parser))
    config = builder.create_builder_config()
    fallback = _configure(trt, builder, network, config, plan)
    cache_status = _timing_cache(config, timing_cache) if plan.timing_cache else "off"
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        errs = "; ".join(m for s, m in logger.messages if s in ("ERROR", "INTERNAL_ERROR"))[-800:]
        raise CompileError(f"TensorRT could not build the engine: {errs or 'no error message'}",
                           "If it ran out of memory, lower workspace_mb or builder_optimization_level, close other "
                           "processes (or add swap on Jetson); otherwise see the operator named above.")
    cache_bytes = None if cache_status.startswith("off") else _serialized_timing_cache(config)
    report = {"build_seconds": round(seconds, 2), "layers": network.num_layers, "dla_fallback_layers": fallback,
              "tf32": _tf32_used(trt, config), "timing_cache": cache_status, "plugins_registered": plugins,
              "builder_warnings": [m for s, m in logger.messages if s == "WARNING"][:50]}
    return bytes(serialized), cache_bytes, report
