"""The one small interface every backend implements: compile, open, infer, close.

A backend module imports its framework inside functions only, so ``import edgeopt.backends.X`` works
everywhere and the missing framework is reported when it is actually needed.
"""

from __future__ import annotations

import importlib.util
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from edgeopt.errors import ArtifactLoadError, BackendMissingError, CompileError, EdgeoptError, UserInputError
from edgeopt.core.hostinfo import version_of
from edgeopt.core.versions import version_tuple
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target

if TYPE_CHECKING:  # the INT8 stage's type; the device side never imports compression
    from edgeopt.compress.judging import Judging


@dataclass
class CompileRequest:
    """Everything a backend needs to turn an ONNX model into an artifact folder."""

    onnx_path: Path
    target: Target
    precision: str
    spec: IOSpec
    out_dir: Path  # an empty staging folder; the backend writes its files here
    model_kind: str = "generic"  # cnn | transformer | detector | generic: picks compression recipes
    calibration: Iterable[dict[str, np.ndarray]] | None = None  # feeds, for int8
    options: dict = field(default_factory=dict)  # target options overlaid with recipe/CLI options
    cache_dir: Path | None = None  # content-keyed caches (TensorRT timing cache, OpenVINO model cache)
    judging: Judging | None = None  # the INT8 stage's: how candidates are judged (and [compression]'s options)
    log: Callable[[str], None] = print
    onnx_sha256: str | None = None  # the ONNX with its external data files (caches key on it); None: hash the file

    def onnx_key(self) -> str:
        from edgeopt.core.fsutil import onnx_digest

        return self.onnx_sha256 or onnx_digest(self.onnx_path)


class Runner(ABC):
    """Context manager: activate (load), infer (named numpy in, named numpy out), close.

    ``infer`` may be called from several threads at once. A runner whose ``_infer`` cannot run concurrently
    sets ``concurrent = False`` and its calls take turns under a lock."""

    concurrent = True

    def __init__(self, spec: IOSpec):
        self.spec = spec
        self.active = False
        self.load_seconds: float | None = None
        self._turns = threading.Lock()

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.close()

    def activate(self) -> None:
        if not self.active:
            import time

            t0 = time.perf_counter()
            try:
                self._activate()
            except EdgeoptError:
                raise
            except Exception as exc:  # noqa: BLE001 - each framework raises its own types
                raise ArtifactLoadError(
                    f"The artifact could not be loaded ({type(self).__name__}): {str(exc)[:400]}",
                    "The file is corrupt, truncated or from another version: rebuild it (edgeopt build), "
                    "or check a bundle with edgeopt verify.") from exc
            self.load_seconds = time.perf_counter() - t0
            self.active = True

    def infer(self, feed: dict[str, np.ndarray] | np.ndarray, check: bool = True) -> dict[str, np.ndarray]:
        if not self.active:
            raise RuntimeError("Runner.infer called before activate(); use `with runner:`")
        if not isinstance(feed, dict):
            if len(self.spec.inputs) != 1:
                raise UserInputError(
                    f"The model has {len(self.spec.inputs)} inputs; a single array was given.",
                    f"Pass a dict with keys {[t.name for t in self.spec.inputs]}.")
            feed = {self.spec.inputs[0].name: feed}
        if check:
            self.spec.check_feed(feed)
        if self.concurrent:
            return self._infer(feed)
        with self._turns:
            return self._infer(feed)

    def timed_call(self, feed: dict[str, np.ndarray]) -> Callable[[], object]:
        """A no-argument call that runs ``feed`` the way the framework's own benchmark tool would: inputs
        bound once, outputs left where the framework put them. What the profiler times; not for results."""
        if not self.active:
            raise RuntimeError("Runner.timed_call called before activate(); use `with runner:`")
        return lambda: self._infer(feed)

    def layer_profile(self, feed: dict[str, np.ndarray], runs: int, workdir: Path) -> dict | None:
        """Per-layer times from the framework's own profiler over ``runs`` calls (after one untimed call):
        {"source", "runs", "total_ms", "layers": [{name, type, precision, ms}] slowest first}. ``workdir`` is
        a folder the profiler may write into (never the working directory). None where the backend has no
        per-layer profiler."""
        return None

    def close(self) -> None:
        if self.active:
            self._close()
            self.active = False

    @property
    def threads(self) -> int | None:
        return None

    def properties(self) -> dict:
        """What the backend actually runs with (execution precision, threads, streams), as it reports it."""
        return {}

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:
        pass


class Backend(ABC):
    name: str = ""
    module: str = ""  # the framework's import name
    distribution: str = ""  # its pip distribution, for the version
    extra: str = ""  # edgeopt's pip extra that installs it
    builds_on_device: bool = False  # artifacts must be compiled on the device that runs them (TensorRT)

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def version(self) -> str | None:
        return version_of(self.distribution)

    def install_hint(self) -> str:
        """How to install what this backend needs: the one text ``doctor``, ``targets`` and every error say."""
        return f"pip install 'edgeopt[{self.extra}]'"

    def require(self):
        """Import the framework, or raise an error naming the pip extra to install."""
        if not self.installed():
            raise BackendMissingError(self.distribution, self.extra, f"use the {self.name} backend",
                                      fix=self.install_hint())
        return importlib.import_module(self.module)

    def unavailable_reason(self, target: Target) -> str | None:
        """None when the target can run here, else why not (missing package, missing device)."""
        if not self.installed():
            return f"{self.distribution} is not installed: {self.install_hint()}"
        return self.device_missing(target)

    def device_missing(self, target: Target) -> str | None:
        return None

    def precisions_here(self, target: Target) -> tuple[str, ...]:
        """The target's precisions that this host can execute."""
        return target.precisions

    def precision_unavailable(self, target: Target, precision: str) -> str | None:
        return None if precision in self.precisions_here(target) else (
            f"{precision} is not available for {target.name} on this host")

    rebuild_note = ""  # what a user should know when an artifact of this backend does not fit a device

    def artifact_fits_here(self, aid: str, meta: dict, built_version: str | None,
                           version: str | None) -> tuple[str | None, tuple[str, ...]]:
        """(why the artifact ``aid``, built with ``built_version`` as recorded in ``meta``, cannot load with
        ``version`` here, or None; warnings). Portable formats read what older versions wrote; an older runtime
        than the builder's may not know the artifact's operators or opset (the self-test then says so)."""
        if version and built_version and version_tuple(version) < version_tuple(built_version):
            return None, (f"{self.distribution} {version} here is older than {built_version}, which built {aid}; "
                          f"if it fails to load: pip install '{self.distribution}>={built_version}'",)
        return None, ()

    def details(self) -> dict:
        """What ``edgeopt doctor`` shows beside the version (devices, execution providers); the backend is
        installed. Never raises: a failure is reported in the dict."""
        return {}

    # -- device packages: an artifact compiled on the device that runs it (``edgeopt device-compile``) --------
    device_build_why = ""  # a record's reason, when the backend builds on the device (builds_on_device)
    device_build_note = "the artifact is compiled on the device."  # INSTRUCTIONS.md: why the host did not build it

    def package_plan(self, spec: IOSpec, target: Target, precision: str) -> tuple[str, object | None]:
        """(the form of the ONNX a device package carries, the backend's build plan with ``to_dict()`` or None)."""
        if precision == "int8":
            raise UserInputError(
                f"A device package for {target.name} int8 cannot be made: INT8 for {target.backend} is quantized on "
                "the host with the calibration data.",
                f"Build {target.name} int8 with `edgeopt build` on the host (the artifact is portable), or package fp32.")
        return "fp32", None

    def package_onnx(self, form: str, onnx_path: Path, dst: Path, src, log) -> dict:
        """Write the package's ONNX in a ``form`` :meth:`package_plan` chose other than "fp32" (copied as it is):
        e.g. FP16 or INT8 Q/DQ, from the exported FP32 ``onnx_path`` to ``dst``; returns what it recorded.
        ``src`` is the package source (id, spec, calibration data, model kind, target)."""
        raise CompileError(f"{self.name} has no {form!r} form of a device package's ONNX.",
                           "Report this as a bug in edgeopt.")

    def package_graph(self, onnx_path: Path, target: Target, task, detector: bool) -> dict | None:
        """Rewrite a package's ONNX (in place) into the graph this backend's device build takes, and say what was
        done (recorded in package.json): ``{"outputs": [the graph's outputs], ...}``; None: used as it is."""
        return None

    def package_reference(self, outputs: dict, graph: dict) -> dict:
        """One sample's reference outputs as the graph :meth:`package_graph` made gives them."""
        return outputs

    def package_host_onnx(self, onnx_path: Path, graph: dict | None, work_dir: Path) -> Path:
        """The package's ONNX as ONNX Runtime can run it here (to score it before it ships)."""
        return Path(onnx_path)

    def package_preflight(self, onnx_path: Path, target: Target, spec: IOSpec, plan) -> object | None:
        """A preflight report of a package's ONNX (``ok``, ``errors``, ``to_dict()``), or None when there is none."""
        return None

    def device_requirements(self, cuda: str | None = None) -> list[str]:
        """pip requirements a device needs, beside edgeopt's wheel, to compile and run this backend's packages
        (``cuda``: the device's CUDA version, when known)."""
        return [self.distribution]

    def device_wheel_extra(self) -> str:
        """edgeopt's pip extra to install on a device, or "" when the device's system provides the framework."""
        return self.extra

    def check_device(self, target: Target, what: str, run_there: str, force: bool = False) -> dict:
        """Raise a clear error unless this machine can compile ``what`` for ``target``; return what was found
        (``run_there``: how to run it on the right device instead)."""
        if not self.installed():
            raise BackendMissingError(self.distribution, self.extra, f"compile {what}", fix=self.install_hint())
        why = self.unavailable_reason(target)
        if why:
            raise CompileError(f"{what} cannot be compiled here: {why}.", f"Run it on a machine that has {target.device} "
                               f"for {target.backend} (`edgeopt targets` lists what runs here).")
        return {"backend": self.name, "version": self.version()}

    @abstractmethod
    def compile(self, req: CompileRequest) -> dict:
        """Write the artifact's files into ``req.out_dir``; return metadata for the manifest."""

    @abstractmethod
    def open(self, artifact_dir: Path, meta: dict, spec: IOSpec, target: Target, threads: int | None = None) -> Runner:
        """A :class:`Runner` over a compiled artifact folder."""
