"""What a package says in words: the device it is for, why it was not built here, and ``INSTRUCTIONS.md``.
"""

from __future__ import annotations

import shlex
from edgeopt import __version__
from edgeopt.device.package.format import INSTRUCTIONS, PACKAGE_ONNX, PackageSource


def describe_device(target) -> str:
    """The device in words, from the target's [hardware]: 'Jetson Orin Nano 8GB (JetPack 6.2, TensorRT 10.3)'."""
    hw = target.hardware
    what = hw.get("module") or target.description or target.name
    bits = [f"JetPack {hw['jetpack']}" if hw.get("jetpack") else None,
            f"TensorRT {hw['tensorrt']}" if hw.get("tensorrt") else None,
            f"sm {hw['compute_capability']}" if hw.get("compute_capability") else None]
    bits = [b for b in bits if b]
    return f"{what} ({', '.join(bits)})" if bits else what


def package_reason(src: PackageSource, plan) -> str:
    from edgeopt.backends import get_backend, get_packaging

    backend = get_backend(src.target.backend)
    if backend.builds_on_device:
        why = src.why_not_here or get_packaging(backend.name).device_build_why
        return (f"{why}. Device package written: finish on the {describe_device(src.target)} with `edgeopt device-compile "
                f"{src.id}` there, or from here with `edgeopt device-compile OUT/{src.id} --remote user@device` "
                f"(see {src.id}/{INSTRUCTIONS}).")
    return (f"Device package for {src.target.name}: compile it on the device with `edgeopt device-compile {src.id}` "
            f"(see {src.id}/{INSTRUCTIONS}).")


def instructions(src: PackageSource, plan, lint_summary: dict | None) -> str:
    t, hw = src.target, src.target.hardware
    pyver = hw.get("python") or "3.10"
    wheel = f"edgeopt-{__version__}-py3-none-any.whl"
    from edgeopt.backends import get_packaging

    backend = get_packaging(t.backend)
    extra_pkgs = "".join(f" {shlex.quote(r)}" for r in backend.device_requirements(hw.get("cuda")))
    lines = [
        f"# Finish `{src.id}` on the device",
        "",
        f"This folder is an edgeopt device package for **{t.name}** ({t.description or t.backend}), precision "
        f"**{src.precision}**. It was made by edgeopt {__version__} on a host that cannot build it: "
        + backend.device_build_note,
        "",
        f"Device: {describe_device(t)}" + (f", Python {pyver}" if hw.get("python") else "") + ".",
        "",
        "## On the device",
        "",
        "Copy this folder and the edgeopt wheel to the device (`pip wheel --no-deps PATH-TO-EDGEOPT` on the host "
        f"makes `{wheel}`), then:",
        "",
        "```sh",
        "python3 -m venv --system-site-packages ~/edgeopt-venv   # --system-site-packages: JetPack's TensorRT is used",
        f"~/edgeopt-venv/bin/pip install {wheel}{extra_pkgs}",
        f"~/edgeopt-venv/bin/edgeopt device-compile {src.id}",
        "```",
        "",
        "`device-compile` checks that the device matches the target (TensorRT version, GPU and compute capability, "
        "DLA), builds, compares the outputs with the reference outputs in `reference.npz` (tolerance in "
        "`package.json`), profiles, and completes this folder: the engine, `device_report.json` (with the device's "
        "JetPack, TensorRT, GPU, power mode, clocks and temperatures) and `package.json` with status \"ok\". "
        "Nothing is changed when a step fails.",
        "",
        "## Or from the host, over SSH",
        "",
        "```sh",
        "edgeopt remote setup user@device                         # once: venv + this edgeopt version on the device",
        f"edgeopt device-compile OUT/{src.id} --remote user@device   # repeat --remote for several devices",
        "```",
        "",
        "The results come back to `OUT/remote/<host>/` (engine, report, device fingerprint). The SSH client uses "
        "your `~/.ssh/config`, keys and agent; host keys are checked.",
    ]
    if plan is not None:
        prof = ", ".join(f"{n} {p['min']}..{p['max']} (opt {p['opt']})" for n, p in plan.profiles.items())
        lines += [
            "",
            "## Build plan (`build_plan.json`)",
            "",
            f"- TensorRT {plan.tensorrt} (declared by the target; re-planned on the device for its installed version)",
            f"- precision {plan.precision}: {plan.notes[0] if plan.notes else ''}",
            f"- ONNX: `{PACKAGE_ONNX}` ({plan.onnx})",
            f"- optimization profile: {prof}",
            f"- workspace: {plan.workspace_mb or 'TensorRT default'} MiB, builder optimization level "
            f"{plan.optimization_level}, DLA: {plan.dla_core if plan.dla_core is not None else 'none (GPU)'}",
        ]
    if lint_summary is not None:
        lines += ["", "## Preflight (`lint.json`)", "",
                  f"TensorRT {lint_summary['tensorrt']}: {lint_summary['errors']} error(s), "
                  f"{lint_summary['warnings']} warning(s)."]
        for f in lint_summary["findings"]:
            lines.append(f"- {f['severity']} {f['code']}" + (f" [{f['node']}]" if f["node"] else "")
                         + f": {f['message']} Fix: {f['fix']}")
    return "\n".join(lines) + "\n"
