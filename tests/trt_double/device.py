"""The emulated GPU behind the fake ``cuda`` and ``tensorrt`` modules.

Device memory is numpy byte buffers addressed by fake pointers in a range no host allocation uses, so a host
pointer passed where a device pointer belongs (or the reverse) is caught, as is any access outside an allocation.
Work queued on a stream (copies, engine execution, event records) runs only when the stream is synchronized, as
on a GPU: results read before a synchronize are not there yet.
"""

from __future__ import annotations

import bisect
import ctypes
import time
from dataclasses import dataclass, field

import numpy as np

DEVICE_BASE = 0x2000_0000_0000  # fake device addresses start here (far from the host heap and mmap areas)
ALIGN = 256


class DoubleViolation(AssertionError):
    """Code under test did something that is undefined behaviour on a real GPU (a crash or silent corruption)."""


@dataclass
class Stream:
    handle: int
    queue: list = field(default_factory=list)
    destroyed: bool = False


@dataclass
class Event:
    handle: int
    stream: Stream | None = None
    time_s: float | None = None  # set when the record runs
    destroyed: bool = False


class Device:
    def __init__(self, name: str = "Orin", cc: tuple[int, int] = (8, 7), memory: int = 8 << 30,
                 integrated: bool = True, dla_cores: int = 0, driver_cuda: int = 12060):
        self.name, self.cc, self.memory, self.integrated = name, cc, memory, integrated
        self.dla_cores, self.driver_cuda = dla_cores, driver_cuda
        self.allocations: dict[int, np.ndarray] = {}
        self._starts: list[int] = []
        self._next = DEVICE_BASE
        self.streams: dict[int, Stream] = {0: Stream(0)}  # 0: the legacy default stream
        self.events: dict[int, Event] = {}
        self._handles = 0x5000
        self.clock_s = 0.0  # the device's own timeline, advanced by the work it runs
        self.log: list[str] = []  # what ran, in order (copies, executions), for tests

    # ---- memory -------------------------------------------------------------------------------------
    def malloc(self, size: int) -> int | None:
        if size <= 0 or size > self.free_bytes():
            return None
        ptr = self._next
        self._next += (size + ALIGN - 1) // ALIGN * ALIGN + ALIGN  # a guard gap between allocations
        self.allocations[ptr] = np.zeros(size, dtype=np.uint8)
        bisect.insort(self._starts, ptr)
        return ptr

    def free(self, ptr: int) -> bool:
        if ptr not in self.allocations:
            return False
        del self.allocations[ptr]
        self._starts.remove(ptr)
        return True

    def free_bytes(self) -> int:
        return self.memory - sum(a.nbytes for a in self.allocations.values())

    def is_device_pointer(self, ptr: int) -> bool:
        return DEVICE_BASE <= int(ptr) < self._next + (1 << 40)

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The device bytes [ptr, ptr + nbytes) inside one allocation, or DoubleViolation."""
        ptr = int(ptr)
        i = bisect.bisect_right(self._starts, ptr) - 1
        if i < 0:
            raise DoubleViolation(f"0x{ptr:x} is not device memory")
        start = self._starts[i]
        buf = self.allocations[start]
        off = ptr - start
        if off + nbytes > buf.nbytes:
            raise DoubleViolation(f"{nbytes} bytes at 0x{ptr:x} run past the end of a {buf.nbytes}-byte allocation")
        return buf[off:off + nbytes]

    def valid_range(self, ptr: int, nbytes: int) -> bool:
        try:
            self.view(ptr, nbytes)
            return True
        except DoubleViolation:
            return False

    # ---- streams and events --------------------------------------------------------------------------
    def new_handle(self) -> int:
        self._handles += 0x10
        return self._handles

    def stream(self, handle: int) -> Stream | None:
        s = self.streams.get(int(handle))
        return None if s is None or s.destroyed else s

    def enqueue(self, stream: Stream, what: str, fn, seconds: float = 0.0) -> None:
        stream.queue.append((what, fn, seconds))

    def synchronize(self, stream: Stream) -> None:
        while stream.queue:
            what, fn, seconds = stream.queue.pop(0)
            t0 = time.perf_counter()
            fn()
            self.clock_s += seconds or (time.perf_counter() - t0)
            self.log.append(what)

    def copy_h2d(self, dst: int, src: int, count: int) -> None:
        data = ctypes.string_at(int(src), count)  # taken now: the caller may reuse its buffer after the call
        target = self.view(dst, count)
        return lambda: target.__setitem__(slice(None), np.frombuffer(data, dtype=np.uint8))

    def copy_d2h(self, dst: int, src: int, count: int):
        source = self.view(src, count)
        return lambda: ctypes.memmove(int(dst), source.ctypes.data, count)
