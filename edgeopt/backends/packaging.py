"""Device packages: an artifact compiled on the device that runs it (``edgeopt device-compile``).

A separate interface from :class:`~edgeopt.backends.base.Backend`: the defaults below are what every backend
does (the FP32 ONNX is copied as it is and compiled there with the backend's pip extra); a backend that packages
differently for another device (TensorRT: FP16 / INT8 Q/DQ forms, NMS plugin, preflight, JetPack's TensorRT)
subclasses :class:`DevicePackaging` and exposes it as ``PACKAGING`` beside its ``BACKEND``. Callers ask the
registry: ``edgeopt.backends.get_packaging(name)``.
"""

from __future__ import annotations

from pathlib import Path

from edgeopt.errors import BackendMissingError, CompileError, UserInputError
from edgeopt.core.spec import IOSpec
from edgeopt.core.targets import Target
from edgeopt.backends.base import Backend


class DevicePackaging:
    """How a backend's artifacts are packaged on the host and compiled on a device."""

    device_build_why = ""  # a record's reason, when the backend builds on the device (builds_on_device)
    device_build_note = "the artifact is compiled on the device."  # INSTRUCTIONS.md: why the host did not build it

    def __init__(self, backend: Backend):
        self.backend = backend

    @property
    def name(self) -> str:
        return self.backend.name

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
        """The package's ONNX as the host's reference executor can run it here (to score it before it ships)."""
        return Path(onnx_path)

    def package_preflight(self, onnx_path: Path, target: Target, spec: IOSpec, plan) -> object | None:
        """A preflight report of a package's ONNX (``ok``, ``errors``, ``to_dict()``), or None when there is none."""
        return None

    def device_requirements(self, cuda: str | None = None) -> list[str]:
        """pip requirements a device needs, beside edgeopt's wheel, to compile and run this backend's packages
        (``cuda``: the device's CUDA version, when known)."""
        return [self.backend.distribution]

    def device_wheel_extra(self) -> str:
        """edgeopt's pip extra to install on a device, or "" when the device's system provides the framework."""
        return self.backend.extra

    def check_device(self, target: Target, what: str, run_there: str, force: bool = False) -> dict:
        """Raise a clear error unless this machine can compile ``what`` for ``target``; return what was found
        (``run_there``: how to run it on the right device instead)."""
        b = self.backend
        if not b.installed():
            raise BackendMissingError(b.distribution, b.extra, f"compile {what}", fix=b.install_hint())
        why = b.unavailable_reason(target)
        if why:
            raise CompileError(f"{what} cannot be compiled here: {why}.", f"Run it on a machine that has {target.device} "
                               f"for {target.backend} (`edgeopt targets` lists what runs here).")
        return {"backend": b.name, "version": b.version()}
