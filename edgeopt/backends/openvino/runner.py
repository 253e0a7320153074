"""OpenVINO runner: a compiled model on the target device with the runtime settings recorded in the artifact."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgeopt.core.spec import IOSpec
from edgeopt.core.untrusted import cap_threads
from edgeopt.backends.base import Runner, vet_outputs

IR_FILE = "model.xml"


EXEC_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None}


@lru_cache(maxsize=1)
def ov_core():
    import openvino as ov

    return ov.Core()


def device_capabilities(device: str) -> set[str]:
    try:
        return set(ov_core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - device absent
        return set()


OV_PRECISIONS = {"FP32": "f32", "F32": "f32", "BF16": "bf16", "FP16": "f16", "F16": "f16", "I8": "i8", "U8": "u8",
                 "I32": "i32", "I64": "i64", "U1": "u1", "I4": "i4", "U4": "u4"}


def ov_precision(exec_type: str) -> str:
    """The precision of an OpenVINO kernel from its exec type (``brgconv_avx512_I8`` -> i8)."""
    tail = exec_type.rsplit("_", 1)[-1].upper()
    return OV_PRECISIONS.get(tail, tail.lower() or "?")


STATIC_SHAPES = 4  # fixed-shape compiled models one runner keeps at most (each holds its own packed weights)


def capped(config: dict | None) -> dict | None:
    """``config`` with INFERENCE_NUM_THREADS and NUM_STREAMS at most the CPUs this process may use."""
    if not config:
        return config
    out = dict(config)
    for key in ("INFERENCE_NUM_THREADS", "NUM_STREAMS"):
        if isinstance(out.get(key), int) and not isinstance(out[key], bool):
            out[key] = cap_threads(out[key], key)
    return out


def shape_key(feed: dict) -> tuple:
    return tuple(sorted((name, tuple(int(d) for d in np.shape(arr))) for name, arr in feed.items()))


class OvRunner(Runner):
    """An OpenVINO compiled model. Thread-safe: an infer request holds one call's inputs and outputs, so
    each concurrent ``infer`` takes its own request from a pool (created on demand, kept for reuse); the
    compiled model itself is shared.

    A model with a dynamic input shape (the batch) is compiled as it is at load, and again for each fixed
    input shape it keeps running (the second call with a shape, or at once for the profiler's timed call),
    up to ``STATIC_SHAPES`` of them: OpenVINO's CPU plugin picks faster kernels and skips shape inference
    for a static shape (ResNet-18's classifier runs MLAS's GEMM instead of the dynamic-shape FullyConnected, its
    reorders are JIT-compiled, INT8 gets a fused Subgraph), as benchmark_app (which reshapes to ``-b``) does:
    benchmarks/profiler_vs_benchmark_app.py compares the two on the same IR with the same settings.

    The model compiled at load with the artifact's settings is the judged form. Every other form (a
    fixed-shape copy, the batch split over streams with other settings) is checked against it on its first
    use (:meth:`Runner.vet_variant`) and never used where it differs: on an AVX-512 VNNI Xeon, OpenVINO
    2026.4.1's CPU plugin runs an NNCF-INT8 MatMul model reshaped to a fixed shape to all zeros (README,
    known issues), while the dynamic-shape model is right."""

    VETTED_SPLITS = 256  # feed shapes whose split over streams was checked, remembered at most

    def __init__(self, xml: Path, spec: IOSpec, device: str, config: dict, batch_config: dict | None = None):
        super().__init__(spec)
        # Threads and streams no more than the CPUs here, whatever the artifact says.
        config, batch_config = capped(config), capped(batch_config)
        self.xml, self.device, self.config = xml, device, config
        # Settings for feeds of more than one item (measured at build time, meta.batch_runtime_config): several
        # streams, the batch split over one request per stream, run at once, outputs joined.
        self.batch_config = batch_config
        self._streams: tuple[OvRunner, int] | None = None
        self.compiled = None
        self._model = None
        self._dynamic = False
        self._static: dict[tuple, object] = {}  # input shapes -> compiled model for exactly those shapes
        self._seen: dict[tuple, int] = {}  # calls per input shapes not compiled for (yet)
        self._idle: dict[int, list] = {}  # id(compiled model) -> infer requests no call is using
        self._split_ok: set[tuple] = set()  # feed shapes whose split over streams agreed with the judged form
        self._pool_lock = threading.Lock()
        self._compile_lock = threading.Lock()

    def _activate(self):
        core = ov_core()
        model = core.read_model(str(self.xml)) if isinstance(self.xml, (str, Path)) else self.xml  # or an ov.Model
        self.compiled = core.compile_model(model, self.device, self.config)
        self._model = model
        self._dynamic = any(i.get_partial_shape().is_dynamic for i in model.inputs)
        self._static, self._seen = {}, {}
        self._idle = {id(self.compiled): [self.compiled.create_infer_request()]}
        wanted = set(self.spec.outputs)
        # An OpenVINO port can carry several tensor names; prefer the one the model spec uses. Outputs are
        # read by position: every compiled model of this runner has the same results in the same order.
        self.outputs = [next((n for n in sorted(o.get_names()) if n in wanted), o.get_any_name())
                        for o in self.compiled.outputs]
        self._streams = None
        self._split_ok = set()
        if self.batch_config and self.spec.batch_dim:
            inner = OvRunner(model, self.spec, self.device, self.batch_config)
            inner.tolerance = self.tolerance
            inner.activate()
            streams = int(inner.compiled.get_property("NUM_STREAMS"))
            if streams > 1:
                self._streams = (inner, streams)
            else:
                inner.close()

    @property
    def streams(self) -> int:
        """Streams a feed of several items is split over (1: the batch runs as one request)."""
        return self._streams[1] if self._streams else 1

    def _parts(self, feed) -> list[dict] | None:
        """``feed`` split along the batch into one part per stream, or None where it runs whole."""
        if not self._streams:
            return None
        n = len(next(iter(feed.values())))
        if n < 2:
            return None
        cuts = np.array_split(np.arange(n), min(self._streams[1], n))
        return [{k: v[c[0]:c[-1] + 1] for k, v in feed.items()} for c in cuts]

    def _infer_split(self, feed, parts):
        inner = self._streams[0]
        taken = []
        try:
            for part in parts:
                compiled = inner._compiled_for(part)
                request = inner._take_request(compiled)
                taken.append((compiled, request))
                request.start_async(part, share_inputs=True)
            for _, request in taken:
                request.wait()
            out = {}
            for i, name in enumerate(self.outputs):
                pieces = [request.get_output_tensor(i).data for _, request in taken]
                if any(p.ndim == 0 or p.shape[0] != len(next(iter(part.values()))) for p, part in zip(pieces, parts)):
                    return None  # an output that does not follow the batch: cannot be joined
                out[name] = np.concatenate(pieces)
            return out
        finally:
            for compiled, request in taken:
                request.wait()
                inner._give_back(compiled, request)

    def static_model(self, shapes: dict):
        """A copy of the model with its inputs fixed to ``shapes`` (name -> shape), or None where it cannot
        be reshaped (shape-dependent operators)."""
        import openvino as ov

        model = self._model.clone()
        try:
            model.reshape({model.input(name): ov.PartialShape(list(shape)) for name, shape in shapes.items()})
        except Exception:  # noqa: BLE001 - OpenVINO refuses some reshapes; the dynamic model still runs
            return None
        return model

    def _compiled_for(self, feed, now: bool = False):
        """The compiled model for ``feed``'s shapes: a fixed-shape one where kept (compiled on the second call
        with these shapes, or at once with ``now``), else the model as loaded."""
        compiled = self.compiled
        if not self._dynamic:
            return compiled
        key = shape_key(feed)
        with self._pool_lock:
            got = self._static.get(key)
            if got is not None:
                return got
            self._seen[key] = self._seen.get(key, 0) + 1
            if (self._seen[key] < 2 and not now) or len(self._static) >= STATIC_SHAPES:
                return compiled
        with self._compile_lock:  # one compile at a time; calls on other shapes go on meanwhile
            if key in self._static:
                return self._static[key] or compiled
            model = self.static_model(dict(key))
            try:
                got = ov_core().compile_model(model, self.device, self.config) if model is not None else None
            except Exception:  # noqa: BLE001 - a shape the plugin cannot compile: keep the dynamic model
                got = None
            if got is not None:  # served only once it gives the judged form's results on this feed
                fit, _ = self.vet_variant(f"the copy compiled for input shapes {dict(key)}", feed,
                                          lambda f: self._run(compiled, f), lambda f: self._run(got, f))
                got = got if fit else None
            with self._pool_lock:
                if self.compiled is None:  # closed meanwhile
                    return compiled
                self._static[key] = got  # None: tried (or refused), stays dynamic
        return got or compiled

    def _run(self, compiled, feed) -> dict[str, np.ndarray]:
        """``feed`` through ``compiled`` on a pooled request; outputs copied out of the request."""
        request = self._take_request(compiled)
        try:
            # Inputs are read in place (no copy); outputs are views of the request's buffers, copied once
            # before the request is reused.
            res = request.infer(feed, share_inputs=True, share_outputs=True)
            return {name: res[i].copy() for i, name in enumerate(self.outputs)}
        finally:
            self._give_back(compiled, request)

    def _take_request(self, compiled):
        with self._pool_lock:
            idle = self._idle.setdefault(id(compiled), [])
            if idle:
                return idle.pop()
            if self.compiled is None:
                raise RuntimeError("OvRunner.infer called after close()")
        return compiled.create_infer_request()

    def _give_back(self, compiled, request) -> None:
        with self._pool_lock:
            if self.compiled is not None:
                self._idle.setdefault(id(compiled), []).append(request)

    def _infer(self, feed):
        parts = self._parts(feed)
        if parts:
            key = shape_key(feed)
            out = self._infer_split(feed, parts)
            if out is not None and key not in self._split_ok:  # first use for these shapes: checked
                judged = self._run(self.compiled, feed)
                fit, judged = vet_outputs(self, f"the batch split over {len(parts)} streams for input shapes "
                                          f"{dict(key)}", judged, lambda f: out, feed)
                if fit:
                    with self._pool_lock:
                        if len(self._split_ok) < self.VETTED_SPLITS:
                            self._split_ok.add(key)
                    return out
                out = None  # refused: the batch runs whole, as judged, from now on
            if out is not None:
                return out
            with self._pool_lock:  # outputs that cannot be split (or differ split): the batch runs whole
                inner, self._streams = self._streams, None
            if inner:
                inner[0].close()
        return self._run(self._compiled_for(feed), feed)

    def timed_call(self, feed):
        """As benchmark_app runs it: a model compiled for the feed's shapes, a request of its own with the
        inputs set once (shared, not copied), started and waited for; outputs stay in the request."""
        import openvino as ov

        if not self.active:
            raise RuntimeError("OvRunner.timed_call called before activate(); use `with runner:`")
        parts = self._parts(feed)
        if parts:  # one request per stream, started together, all waited for
            calls = [self._streams[0].timed_call(part) for part in parts]
            requests = [c.request for c in calls]

            def split(keep=calls):
                for r in requests:
                    r.start_async()
                for r in requests:
                    r.wait()

            return split
        compiled = self._compiled_for(feed, now=True)
        request = compiled.create_infer_request()
        arrays = {name: np.ascontiguousarray(arr) for name, arr in feed.items()}
        for name, arr in arrays.items():
            request.set_tensor(name, ov.Tensor(arr, shared_memory=True))

        def call(keep=(compiled, arrays)):  # the shared input memory lives as long as the call
            request.start_async()
            request.wait()

        call.request = request
        return call

    def layer_profile(self, feed, runs: int, workdir: Path) -> dict | None:
        """OpenVINO's performance counters (PERF_COUNT) on a compiled model of its own, with the artifact's
        settings: each executed layer's real time, its type and the precision its kernel ran in (the suffix
        of the exec type: jit_avx512_I8, brgconv_avx512_BF16 ...). Nothing is written."""
        from edgeopt.core.profile import summarize_layers

        model = (self.static_model({k: np.shape(v) for k, v in feed.items()}) if self._dynamic else None) or self._model
        compiled = ov_core().compile_model(model, self.device, {**self.config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        request.infer(feed)
        per_run, kinds, totals = [], {}, []
        for _ in range(runs):
            request.infer(feed, share_inputs=True, share_outputs=True)
            run = {}
            for info in request.get_profiling_info():
                if str(info.status).split(".")[-1] != "EXECUTED":
                    continue
                exec_type = str(info.exec_type)
                kinds[info.node_name] = (str(info.node_type), ov_precision(exec_type))
                run[info.node_name] = run.get(info.node_name, 0.0) + info.real_time.total_seconds() * 1000.0
            per_run.append(run)
            totals.append(request.latency)
        return summarize_layers(per_run, kinds, "openvino performance counters (real time)", totals)

    def _close(self):
        with self._pool_lock:
            self._idle, self._static, self._seen, self._split_ok = {}, {}, {}, set()
            self.compiled = self._model = None
            inner, self._streams = self._streams, None
        if inner:
            inner[0].close()

    @property
    def threads(self) -> int | None:
        try:
            return int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        except Exception:  # noqa: BLE001 - not every device reports threads
            return None

    def properties(self) -> dict:
        out = {}
        for key in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
            try:
                v = self.compiled.get_property(key)
                out[key] = v.to_string() if hasattr(v, "to_string") else str(v)
            except Exception:  # noqa: BLE001
                pass
        return out


def runtime_config(precision: str, options: dict) -> dict:
    """The OpenVINO compile settings an artifact of ``precision`` runs with, from the target's options."""
    cfg = {"PERFORMANCE_HINT": options.get("performance_hint", "LATENCY")}
    if EXEC_PRECISION.get(precision):
        cfg["INFERENCE_PRECISION_HINT"] = EXEC_PRECISION[precision]
    if options.get("threads"):
        cfg["INFERENCE_NUM_THREADS"] = int(options["threads"])
    return cfg
