"""Running an engine: deserialize, allocate device buffers, set shapes and addresses, ``execute_async_v3`` on a
stream, and time it with CUDA events. TensorRT and cuda-python are imported when the runner is activated."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeopt.errors import CompileError, EdgeoptError, IntegrityError, UserInputError
from edgeopt.core.spec import IOSpec
from edgeopt.core.untrusted import confined, load_json
from edgeopt.backends.base import Runner
from edgeopt.backends.tensorrt.builder import init_plugins
from edgeopt.backends.tensorrt.cuda import cuda_memory, require_gpu
from edgeopt.backends.tensorrt.install import import_tensorrt
from edgeopt.backends.tensorrt.record import ENGINE_FILE, RECORD_FILE, REBUILD_FIX, board_model, check_engine_record

def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "min": float(a.min()), "max": float(a.max())}


class TrtRunner(Runner):
    """Deserialize, allocate, set shapes and addresses, ``execute_async_v3`` on a stream. One execution
    context and one set of buffers: concurrent calls take turns (``concurrent = False``)."""

    concurrent = False

    def __init__(self, artifact_dir: Path, meta: dict, spec: IOSpec):
        super().__init__(spec)
        self.dir, self.meta = Path(artifact_dir), meta
        self.engine_path = confined(self.dir, meta.get("model_file", ENGINE_FILE), "TensorRT engine file")
        self.dla_core = (meta.get("plan") or {}).get("dla_core")
        # Outputs the engine gives as INT32 that the model gives as INT64 (cast for TensorRT): given back as int64.
        self.int64_outputs = {str(n) for n in meta.get("int64_outputs") or ()}
        self.engine = self.context = self.mem = None
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _activate(self):
        trt = import_tensorrt()
        gpu = require_gpu()
        record_path = confined(self.dir, self.meta.get("record_file", RECORD_FILE), "TensorRT engine record")
        if not record_path.is_file():
            raise IntegrityError(f"{record_path.name} is missing beside the engine; its origin cannot be checked.",
                                 REBUILD_FIX)
        check_engine_record(load_json(record_path, record_path.name, fix=REBUILD_FIX), trt.__version__, gpu,
                            self.engine_path, board_model())
        self.mem = cuda_memory()
        self._logger = trt.Logger(trt.Logger.WARNING)  # held as long as the runtime that logs through it
        init_plugins(trt)  # an engine with a plugin layer deserializes only once its creator is registered
        self.runtime = trt.Runtime(self._logger)
        if self.dla_core is not None:
            self.runtime.DLA_core = int(self.dla_core)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise IntegrityError(f"TensorRT {trt.__version__} could not deserialize {self.engine_path.name}.",
                                 REBUILD_FIX)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _np_dtype(trt, self.engine.get_tensor_dtype(n), n) for n in names}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self.buffers.get(name, (0, -1))
        if cap < nbytes:
            if cap >= 0:
                self.mem.free(ptr)
            ptr = self.mem.malloc(nbytes)
            self.buffers[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def _stage(self, feed: dict[str, np.ndarray]) -> tuple[list, dict[str, np.ndarray]]:
        """Set input shapes and addresses; allocate outputs. Returns (input copies, host outputs)."""
        copies = []
        for name in self.inputs:
            arr = np.ascontiguousarray(feed[name], dtype=self.dtypes[name])
            if not self.context.set_input_shape(name, arr.shape):
                raise UserInputError(f"Input {name!r} of shape {arr.shape} is outside the engine's profile.",
                                     "Use shapes within the min/max the engine was built for, or rebuild.")
            copies.append((self._buffer(name, arr.nbytes), arr))
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise CompileError(f"Output {name!r} has a data-dependent shape {shape}, which edgeopt's "
                                   "TensorRT runner does not support.", "Export the model with static output shapes.")
            outs[name] = np.empty(shape, dtype=self.dtypes[name])
            self._buffer(name, outs[name].nbytes)
        return copies, outs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.mem.stream_handle):
            raise EdgeoptError("TensorRT execution failed (execute_async_v3 returned False).",
                               "Run with the TensorRT log at VERBOSE to see why; check free GPU memory.")

    def _run(self, feed, events=None) -> dict[str, np.ndarray]:
        copies, outs = self._stage(feed)
        if events:
            self.mem.record(events[0])
        for ptr, arr in copies:
            self.mem.h2d(ptr, arr)
        if events:
            self.mem.record(events[1])
        self._execute()
        if events:
            self.mem.record(events[2])
        for name, arr in outs.items():
            self.mem.d2h(arr, self.buffers[name][0])
        if events:
            self.mem.record(events[3])
        self.mem.synchronize()
        for name in self.int64_outputs & set(outs):
            outs[name] = outs[name].astype(np.int64)
        return outs

    def _infer(self, feed):
        return self._run(feed)

    def time_inference(self, feed: dict[str, np.ndarray], iterations: int = 100, warmup: int = 10) -> dict:
        """Per-iteration milliseconds: GPU compute (CUDA events around execute) and end-to-end (H2D+compute+D2H)."""
        if not self.active:
            raise RuntimeError("time_inference called before activate(); use `with runner:`")
        self.spec.check_feed(feed)
        for _ in range(warmup):
            self._run(feed)
        events = [self.mem.event() for _ in range(4)]
        compute, e2e, host = [], [], []
        try:
            for _ in range(iterations):
                t0 = time.perf_counter()
                self._run(feed, events)
                host.append((time.perf_counter() - t0) * 1e3)
                compute.append(self.mem.elapsed_ms(events[1], events[2]))
                e2e.append(self.mem.elapsed_ms(events[0], events[3]))
        finally:
            for ev in events:
                self.mem.destroy_event(ev)
        return {"gpu_compute_ms": compute, "end_to_end_ms": e2e, "host_ms": host,
                "summary": {"gpu_compute_ms": _stats(compute), "end_to_end_ms": _stats(e2e), "host_ms": _stats(host)}}

    def _close(self):
        if self.mem is not None:
            for ptr, _ in self.buffers.values():
                self.mem.free(ptr)
            self.mem.close()
        self.buffers, self.context, self.engine, self.mem = {}, None, None, None


def _np_dtype(trt, dtype, name: str):
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise CompileError(f"Engine tensor {name!r} has type {dtype}, which numpy cannot hold.",
                           "Keep the model's inputs and outputs FP32 (keep_io_types).") from None
