"""ONNX Runtime, CPU execution provider: any CPU, x86 or ARM."""

from __future__ import annotations

import shutil
from pathlib import Path


from edgeopt.errors import CompileError
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.config.options import Option
from edgeopt.core.checks import boolean, choice, integer
from edgeopt.backends.base import NMS_OPTION, Backend, CompileRequest, Runner

from edgeopt.backends.onnxruntime.runner import LEVELS, MODEL_FILE, OrtRunner, physical_cores, session_options
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
    libraries = ("onnxruntime",)
    options = (
        Option("graph_optimization_level", "at load time, tuned to the CPU it runs on: disable | basic | extended | "
               "all", choice(*LEVELS)),
        Option("offline_optimization", "saved into the artifact (portable across CPUs): disable | basic | extended "
               "| all", choice(*LEVELS)),
        Option("intra_op_threads", "threads of one inference (0: one per physical core)", integer(0, 4096)),
        Option("inter_op_threads", "threads across independent nodes (default 1)", integer(0, 4096)),
        Option("measure_runtime_settings", "time the load-time settings and record the faster (default true)",
               boolean),
        NMS_OPTION,
    )

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
        threads = int(req.options.get("intra_op_threads", 0) or 0)
        chosen = choose_runtime_options(out, req, level, threads)
        if chosen["level"]:
            meta["runtime_choice"] = chosen["level"]
            level = chosen["level"]["chosen"]
        if chosen["threads"]:
            meta["threads_choice"] = chosen["threads"]
            threads = chosen["threads"]["chosen"]
        for c in (chosen["level"], chosen["threads"]):
            if c:
                req.log(f"onnxruntime runtime: {c['setting']} {c['chosen']}: {c['why']}")
        if chosen["level"] or chosen["threads"]:  # what the runner opens the artifact with
            meta["runtime_options"] = {"graph_optimization_level": level, "intra_op_threads": threads}
        return {
            **meta,
            "model_file": MODEL_FILE,
            "offline_optimization_level": offline,
            "graph_optimization_level": level,
            "intra_op_threads": threads,
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


NOISE = 0.05  # a setting must be more than this much faster (and its interval above 1) to replace the default


def thread_candidates(default: int) -> list[int]:
    """Intra-op thread counts worth racing against ``default`` (0: ONNX Runtime's own, one per physical
    core): one thread (no pool to synchronise: often the fastest for small models) and half the cores."""
    cores = physical_cores()
    ran = default or cores
    return [n for n in dict.fromkeys([1, max(1, cores // 2)]) if n != ran and cores > 1]


def measurably_faster(timed: dict, name: str, base: str) -> bool:
    """``name`` beat ``base`` by more than NOISE, and the interval of the speed-up lies above 1."""
    s = timed[name].get(f"vs_{base}") or {}
    return s.get("value", 0) > 1 + NOISE and (s.get("low") or 0) > 1.0


def choose_runtime_options(model: Path, req: CompileRequest, level: str, threads: int) -> dict:
    """The session settings applied at load time, by measurement at batch 1, every candidate in the same
    interleaved rounds against the target's own settings: the graph optimisation level (the target's, ``all``:
    layout transforms and fusions tuned to this CPU, against ``extended``: what the saved model already has)
    and the intra-op thread count (the target's, 0 = one per physical core, against fewer). A candidate
    replaces the target's setting only when measurably faster (``measurably_faster``). Returns
    {"level": choice or None, "threads": choice or None}; target option ``measure_runtime_settings = false``
    keeps the target's settings untimed."""
    if not req.options.get("measure_runtime_settings", True):
        return {"level": None, "threads": None}
    import numpy as np

    from edgeopt.core.profile import race

    base = {**req.options, "graph_optimization_level": level, "intra_op_threads": threads}
    contenders = {"target": base}
    if level != "extended":
        contenders["extended"] = {**base, "graph_optimization_level": "extended"}
    for n in thread_candidates(threads):
        contenders[f"{n} thread{'s' if n > 1 else ''}"] = {**base, "intra_op_threads": n}
    if len(contenders) < 2:
        return {"level": None, "threads": None}
    feed = req.spec.random_feed(np.random.default_rng(0), batch=1 if req.spec.batch_dim else None)
    runners = {name: OrtRunner(model, req.spec, opts) for name, opts in contenders.items()}
    try:
        for r in runners.values():
            r.activate()
        seconds = getattr(getattr(req, "judging", None), "compression", None)
        seconds = getattr(seconds, "timing_s", None) or 0.4
        timed = race({name: r.timed_call(feed) for name, r in runners.items()}, seconds, baseline="target")
    finally:
        for r in runners.values():
            r.close()
    ms = {name: t["latency_ms_b1"] for name, t in timed.items()}
    rule = (f"a setting replaces the target's when more than {NOISE:.0%} faster with its 95% interval above 1x, "
            "timed at batch 1 in the same interleaved rounds")

    def vs(name: str) -> str:
        s = timed[name].get("vs_target") or {}
        iv = f" ({s['low']:.2f}-{s['high']:.2f})" if s.get("low") is not None else ""
        return f"{name} {ms[name]:.3f} ms = {s.get('value', 0):.2f}x{iv}"

    out: dict = {"level": None, "threads": None}
    if "extended" in timed:
        pick = "extended" if measurably_faster(timed, "extended", "target") else level
        out["level"] = {"setting": "graph_optimization_level (at load)", "chosen": pick,
                        "figures": {level: timed["target"], "extended": timed["extended"]},
                        "why": f"{level} {ms['target']:.3f} ms, {vs('extended')}; {rule}"}
    alts = [n for n in timed if n.endswith(("thread", "threads"))]
    if alts:
        shown = f"default ({threads or physical_cores()})" if not threads else str(threads)
        best = min(alts, key=lambda n: ms[n])
        pick = int(best.split()[0]) if measurably_faster(timed, best, "target") else threads
        out["threads"] = {"setting": "intra_op_threads", "chosen": pick, "default": threads,
                          "figures": {f"{shown} threads": timed["target"], **{n: timed[n] for n in alts}},
                          "why": f"{shown} threads {ms['target']:.3f} ms, " + ", ".join(vs(n) for n in alts)
                          + f"; {rule}"}
    return out


BACKEND = OnnxRuntimeBackend()
