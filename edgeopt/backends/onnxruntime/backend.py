"""ONNX Runtime, CPU execution provider: any CPU, x86 or ARM."""

from __future__ import annotations

import shutil
from pathlib import Path


from edgeopt.errors import CompileError
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.backends.base import Backend, CompileRequest, Runner

from edgeopt.backends.onnxruntime.runner import LEVELS, MODEL_FILE, OrtRunner, session_options
from edgeopt.core.untrusted import check_settings, confined, int_in, one_of

# The session settings an artifact may carry (no path: optimized_model_filepath, profiling and the like).
RUNTIME_SETTINGS = {"graph_optimization_level": one_of(*LEVELS), "intra_op_threads": int_in(0, 4096),
                    "inter_op_threads": int_in(0, 4096)}


def has_external_data(path: Path) -> bool:
    """Whether an ONNX file keeps tensors in external data files (read without loading them)."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data
    except ImportError:  # pragma: no cover - onnx is installed with every backend that compiles
        return False
    model = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in _get_all_tensors(model))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    module = "onnxruntime"
    distribution = "onnxruntime"
    extra = "onnxruntime"

    def details(self) -> dict:
        import onnxruntime as ort

        return {"providers": ort.get_available_providers()}

    def compile(self, req: CompileRequest) -> dict:
        ort = self.require()
        out = Path(req.out_dir) / MODEL_FILE
        source = Path(req.onnx_path)
        if req.precision == "int8":
            from edgeopt.backends.onnxruntime.quantize import quantize_for_onnxruntime  # issue: compression stage

            meta = quantize_for_onnxruntime(req, out)
            source = out
        elif req.precision != "fp32":
            raise CompileError(f"ONNX Runtime CPU does not build {req.precision} artifacts.", "Use fp32 or int8.")
        else:
            meta = {}
        # Offline optimisation at a portable level; the hardware-specific "all" level runs at load time.
        offline = req.options.get("offline_optimization", "extended")
        so = session_options(ort, {**req.options, "offline_optimization": offline}, "offline_optimization", "extended")
        tmp = Path(req.out_dir) / "optimized.onnx"
        so.optimized_model_filepath = str(tmp)
        if has_external_data(source):
            # Weights in external files (beside the source, any names): the optimized model gets its own
            # copy in the artifact folder, model.onnx.data, instead of references to files outside it.
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                        f"{MODEL_FILE}.data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise CompileError(f"ONNX Runtime could not load the model: {exc}",
                               "Run `edgeopt export` again, or check the operator named above.") from exc
        shutil.move(tmp, out)
        for extra in Path(req.out_dir).glob("*.data"):
            if extra.name != f"{MODEL_FILE}.data":
                extra.unlink()
        level = req.options.get("graph_optimization_level", "all")
        choice = choose_load_level(out, req, level)
        if choice:
            meta["runtime_choice"] = choice
            meta["runtime_options"] = {"graph_optimization_level": choice["chosen"]}
            level = choice["chosen"]
        return {
            **meta,
            "model_file": MODEL_FILE,
            "offline_optimization_level": offline,
            "graph_optimization_level": level,
            "intra_op_threads": int(req.options.get("intra_op_threads", 0) or 0),
            "execution_provider": "CPUExecutionProvider",
        }

    def open(self, artifact_dir: Path, meta: dict, spec: IOSpec, target: Target, threads: int | None = None) -> Runner:
        self.require()
        # artifact.json is untrusted (it may come from a bundle): session settings from an allow-list (the
        # target's other options are build-time ones and are not used here), the model inside the folder.
        chosen = {k: v for k, v in (target.options or {}).items() if k in RUNTIME_SETTINGS}
        options = check_settings(chosen, RUNTIME_SETTINGS, "ONNX Runtime target option")
        options.update(check_settings(meta.get("runtime_options"), RUNTIME_SETTINGS, "ONNX Runtime runtime option"))
        if threads:
            options["intra_op_threads"] = threads
        model = confined(Path(artifact_dir), meta.get("model_file", MODEL_FILE), "ONNX Runtime model file")
        return OrtRunner(model, spec, options)


NOISE = 0.05  # load-time levels closer than this are a tie, won by the target's own level


def choose_load_level(model: Path, req: CompileRequest, default: str) -> dict | None:
    """The graph optimisation level applied at load time, by measurement: the target's level (``all``: layout
    transforms and fusions tuned to this CPU) against ``extended`` (what the saved model already has), timed
    at batch 1 in the same interleaved rounds. Target option ``measure_runtime_settings = false`` keeps the
    target's level untimed."""
    if not req.options.get("measure_runtime_settings", True):
        return None
    import numpy as np

    from edgeopt.core.profile import race

    levels = list(dict.fromkeys([default, "extended"]))
    if len(levels) < 2:
        return None
    feed = req.spec.random_feed(np.random.default_rng(0), batch=1 if req.spec.batch_dim else None)
    runners = {lv: OrtRunner(model, req.spec, {**req.options, "graph_optimization_level": lv}) for lv in levels}
    try:
        for r in runners.values():
            r.activate()
        seconds = getattr(req.compression, "timing_s", None) or 0.4
        timed = race({lv: r.timed_call(feed) for lv, r in runners.items()}, seconds, baseline=default)
    finally:
        for r in runners.values():
            r.close()
    d, o = timed[default]["latency_ms_b1"], timed["extended"]["latency_ms_b1"]
    chosen = "extended" if o < d * (1 - NOISE) else default
    return {"setting": "graph_optimization_level (at load)", "chosen": chosen, "figures": timed,
            "why": (f"batch 1 in the same interleaved rounds: {default} {d:.3f} ms, extended {o:.3f} ms; "
                    + ("extended is more than 5% faster" if chosen == "extended" else
                       f"{default} is faster or within 5% (a tie keeps the target's level)"))}


BACKEND = OnnxRuntimeBackend()
