"""Device packages: what ``edgeopt build`` ships for an artifact that must be built on the device that runs
it (TensorRT engines), and what finishes it there.

On the host (any machine, no TensorRT, no GPU), :func:`write_device_package` writes ``OUT/<id>/``::

    package.json        what this is: target, precision, files with sha256, status, the device's result
    artifact.json       id, backend, precision, target, spec, meta (edgeopt's artifact conventions)
    onnx/model.onnx     the ONNX TensorRT parses for this precision: FP32; FP16 (TensorRT 11: converted,
                        FP32 inputs/outputs kept; 10.x: the FP32 ONNX and the FP16 builder flag); INT8 Q/DQ
    build_plan.json     profiles, workspace, optimization level, DLA, precision mode, for the declared TensorRT
    lint.json           the TensorRT preflight (no errors, or no package)
    reference.npz       reference inputs and outputs (PyTorch) with the parity tolerance in package.json
    INSTRUCTIONS.md     how to finish on the device

On the device (Python 3.10, numpy and the backend only: nothing here imports torch, NNCF or OpenVINO),
:func:`compile_package` checks that the device is the target's, builds through the backend's ``compile``,
checks parity against the stored reference outputs, profiles, and swaps the completed folder in (engine,
``device_report.json``, ``package.json`` with status "ok"). The folder is then an ordinary artifact folder.

Packages work for the CPU backends too (fp32/fp16/bf16): :func:`package_from_out` makes one from an OUT folder,
which is how ``edgeopt device-compile OUT --remote HOST -t ort-cpu`` compiles on another machine.

The package: ``format`` (names, schema, what a package is made from, reading one), ``write`` (the host side),
``instructions`` (INSTRUCTIONS.md and the record's reason), ``compile`` (the device side); the device
fingerprint is :mod:`edgeopt.device.fingerprint`. Everything public is re-exported here.
"""

from __future__ import annotations

from edgeopt.device.package.format import (
    INSTRUCTIONS, LINT_JSON, ONNX_DIR, PACKAGE_JSON, PACKAGE_ONNX, PACKAGE_SCHEMA, PLAN_JSON, REFERENCE_NPZ,
    REPORT_JSON, PackageLintError, PackageSource, find_packages, is_package, read_package, verify_package_files,
)
from edgeopt.device.package.instructions import describe_device, instructions, package_reason
from edgeopt.device.package.write import (
    host_check_failure, package_from_out, write_device_package, write_package_files,
)
from edgeopt.device.package.compile import check_device, compile_package
from edgeopt.device.fingerprint import (
    L4T_TO_JETPACK, device_fingerprint, parse_jetson_clocks, parse_nvpmodel, parse_tegra_release,
)

__all__ = [
    "INSTRUCTIONS", "L4T_TO_JETPACK", "LINT_JSON", "ONNX_DIR", "PACKAGE_JSON", "PACKAGE_ONNX", "PACKAGE_SCHEMA",
    "PLAN_JSON", "REFERENCE_NPZ", "REPORT_JSON", "PackageLintError", "PackageSource", "check_device",
    "compile_package", "describe_device", "device_fingerprint", "find_packages", "host_check_failure",
    "instructions", "is_package", "package_from_out", "package_reason", "parse_jetson_clocks", "parse_nvpmodel",
    "parse_tegra_release", "read_package", "verify_package_files", "write_device_package", "write_package_files",
]
