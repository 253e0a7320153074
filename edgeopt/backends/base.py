"""The one small interface every backend implements: compile, open, infer, close, and describe itself.

Packaging an artifact for another device (compiled there) is a separate interface,
:class:`edgeopt.backends.packaging.DevicePackaging`, reached through ``edgeopt.backends.get_packaging``.

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

from edgeopt.errors import ArtifactLoadError, BackendMissingError, EdgeoptError, UserInputError
from edgeopt.core.hostinfo import version_of
from edgeopt.core.versions import version_tuple
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.config.options import Option, check_options
from edgeopt.core.checks import choice

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


class Preflight(ABC):
    """A backend's check of an ONNX model for a target, on any machine (``edgeopt lint -t TARGET``)."""

    @abstractmethod
    def run(self, model: Path, target: Target, spec: IOSpec | None, version: str | None = None):
        """A report with ``ok`` (False: the backend would reject the model), ``to_dict()`` and ``summary()``."""


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
        # What a variant of the judged form must agree with it within: the artifact's parity tolerance
        # (open_artifact sets it from the artifact's record); None: the loosest default (int8's).
        self.tolerance = None
        self.refused_variants: list[dict] = []  # {"variant", "reason"}: variants found to differ, never used

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
                text = str(exc)
                if "external" in text.lower() and any(w in text.lower() for w in ("outside", "..", "escap")):
                    fix = ("The model names external data outside its folder, which edgeopt never writes: do not "
                           "use this copy; get it again from its source (or rebuild it with edgeopt build).")
                else:
                    fix = ("The file is corrupt, truncated or from another version: rebuild it (edgeopt build), "
                           "or check a bundle with edgeopt verify.")
                raise ArtifactLoadError(
                    f"The artifact could not be loaded ({type(self).__name__}): {text[:400]}", fix) from exc
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

    def vet_variant(self, what: str, feed: dict[str, np.ndarray], judged: Callable[[dict], dict],
                    variant: Callable[[dict], dict]) -> tuple[bool, dict[str, np.ndarray]]:
        """Check a variant of the judged form on its first use: ``feed`` runs through both, and the variant
        is fit to serve only when its outputs agree with the judged form's within the artifact's parity
        tolerance. What is served is what was judged: a runner calls this for every compiled form it creates
        after the build (a fixed-shape copy, other stream or thread settings) before it uses it, and keeps the
        judged form where it differs (logged, and recorded in ``refused_variants``).

        Returns (fit, the judged form's outputs for ``feed``)."""
        return vet_outputs(self, what, judged(feed), variant, feed)

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


def vet_outputs(runner: Runner, what: str, expected: dict[str, np.ndarray], variant: Callable[[dict], dict],
                feed: dict[str, np.ndarray]) -> tuple[bool, dict[str, np.ndarray]]:
    """:meth:`Runner.vet_variant` with the judged form's outputs already at hand."""
    import logging

    from edgeopt.core.parity import DEFAULT_TOLERANCES, parity

    tol = runner.tolerance or DEFAULT_TOLERANCES["int8"]
    try:
        got = variant(feed)
        rep = parity([expected], [got], tol)
        reason = None if rep["passed"] else rep["reason"]
    except Exception as exc:  # noqa: BLE001 - a variant that fails to run is refused like one that differs
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
    if reason is None:
        return True, expected
    runner.refused_variants.append({"variant": what, "reason": reason})
    logging.getLogger("edgeopt").warning(
        "%s: refused %s, its outputs differ from the judged form's (%s); the judged form serves instead.",
        type(runner).__name__, what, reason)
    return False, expected


NMS_OPTION = Option("nms", "a detector's NMS: graph (kept in the exported ONNX, the default) | outside (the graph "
                    "ends before NMS; the application runs it)", choice("graph", "outside"))


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


    def detector_nms(self, target: Target) -> tuple[str, str]:
        """Where a detector's NMS runs for ``target``, and why: ``"graph"`` (the exported ONNX keeps it, as
        ``NonMaxSuppression``: this backend runs it) or ``"outside"`` (the graph ends before NMS, with raw boxes
        and per-class scores; a plugin, the host or the application runs it). The default reads the target's
        ``nms`` option (:data:`NMS_OPTION`, for backends that declare it) and keeps NMS in the graph."""
        if target.options.get("nms") == "outside":
            return "outside", f"{target.name}'s nms = \"outside\": the application runs NMS"
        return "graph", f"{self.name} runs ONNX NonMaxSuppression in the graph"

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

    # -- declared options, preflight, device packaging ----------------------------------------------------------
    options: tuple[Option, ...] = ()  # the [options] keys this backend reads: a target's, a recipe's
    libraries: tuple[str, ...] = ()  # pip distributions whose versions describe this backend (host info, caches)

    def check_options(self, values: dict, where: str) -> None:
        """Refuse a key this backend does not declare in :attr:`options` (naming the closest one) or a bad value."""
        check_options(values, self.options, where, self.name)

    def device_facts(self, deb_version: Callable[[str], str | None]) -> dict:
        """What a device fingerprint records about this backend's system install (never raises; ``deb_version``
        reads an installed .deb's version), e.g. {"tensorrt": "10.3.0.30"}."""
        return {}

    def preflight(self) -> Preflight | None:
        """The check ``edgeopt lint -t TARGET`` runs on an ONNX model before a build, or None when there is none."""
        return None

    @abstractmethod
    def compile(self, req: CompileRequest) -> dict:
        """Write the artifact's files into ``req.out_dir``; return metadata for the manifest."""

    @abstractmethod
    def open(self, artifact_dir: Path, meta: dict, spec: IOSpec, target: Target, threads: int | None = None) -> Runner:
        """A :class:`Runner` over a compiled artifact folder."""
