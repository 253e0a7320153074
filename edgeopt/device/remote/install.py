"""``edgeopt remote setup`` and ``remote info``: install this edgeopt (its wheel, built here or repacked from
the installed files) into a venv on the device with what its backends need, and ask a device what it has.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from edgeopt import __version__
from edgeopt.core.resources import PACKAGE_DIR
from edgeopt.errors import UserInputError
from edgeopt.device.remote.ssh import (
    RemoteError, RemoteOptions, check_host, classify, for_hosts, hello, remote_env, reporter_or_default,
    resolve_options, rjoin, rpath, run_agent, run_ssh,
)
from edgeopt.device.remote.transfer import push


def info(host: str, options: RemoteOptions | None = None, **overrides) -> dict:
    """The device's edgeopt version, Python, installed backends and device fingerprint."""
    opts = resolve_options(options, overrides)
    check_host(host)
    h = hello(host, opts, check_version=False)
    details = run_agent(host, "info", {}, opts, timeout=120)
    return {**h, **details, "host": host, "local_edgeopt_version": __version__,
            "version_matches": h.get("edgeopt_version") == __version__}


def info_many(hosts, options: RemoteOptions | None = None, reporter=None, **overrides) -> dict:
    opts = resolve_options(options, overrides)
    return for_hosts(hosts, lambda h: info(h, opts), reporter)


def build_wheel(dest: Path) -> Path:
    """This edgeopt's wheel: ``pip wheel --no-deps`` from a source checkout, else repacked from the installed
    files (a pip-installed edgeopt)."""
    import importlib.util

    root = PACKAGE_DIR.parent
    if not (root / "pyproject.toml").is_file():
        return wheel_from_installed(dest)  # pip-installed: the installed files are the wheel's files
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(dest),
           str(root)]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.insert(4, "--no-build-isolation")  # builds offline when the build backend is already here
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserInputError("Building the edgeopt wheel took over 10 minutes.",
                             "Build it yourself (pip wheel --no-deps PATH) and pass --wheel.") from None
    wheels = sorted(dest.glob(f"edgeopt-{__version__}-*.whl"))
    if res.returncode != 0 or not wheels:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-5:])
        raise UserInputError(f"`pip wheel --no-deps {root}` failed: {tail or 'no wheel written'}",
                             "pip needs the build backend (hatchling: pip install hatchling, or network access "
                             "to PyPI); or pass a wheel with --wheel PATH.")
    return wheels[-1]


def wheel_from_installed(dest: Path) -> Path:
    """Repack the installed edgeopt (the files and metadata pip recorded) as a wheel: what ``remote setup``
    ships to a device from a pip-installed edgeopt. Byte-for-byte the installed package files, a fresh
    RECORD with their sha256, no caches."""
    import base64
    import hashlib
    import zipfile
    from importlib import metadata

    try:
        dist = metadata.distribution("edgeopt")
    except metadata.PackageNotFoundError:
        dist = None
    here = PACKAGE_DIR  # the edgeopt package folder
    files = [f for f in (dist.files or [])] if dist is not None else []
    info = next((f for f in files if f.parts[0].endswith(".dist-info")), None)
    if dist is None or info is None or dist.version != __version__ or \
            Path(dist.locate_file("edgeopt/__init__.py")).resolve() != here / "__init__.py":
        raise UserInputError("This edgeopt is neither a source checkout nor a pip-installed package, so no wheel "
                             "can be made for the device.", "Pass the wheel with --wheel PATH (the same version as "
                             "this edgeopt).")
    info_dir = info.parts[0]
    skip_info = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    chosen = []
    for f in files:
        parts = f.parts
        if "__pycache__" in parts or f.suffix == ".pyc":
            continue
        if parts[0] == "edgeopt" or (parts[0] == info_dir and parts[-1] not in skip_info):
            src = Path(dist.locate_file(f))
            if src.is_file():
                chosen.append((f.as_posix(), src))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"edgeopt-{__version__}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, src in sorted(chosen):
            data = src.read_bytes()
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append(f"{info_dir}/RECORD,,")
        z.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return wheel


def _device_built_backends() -> list:
    """The backends whose artifacts are compiled on the device (their framework comes with the device's system)."""
    from edgeopt.backends import backends, get_packaging

    return [get_packaging(b.name) for b in backends() if b.builds_on_device]


def _base_probe() -> str:
    """Python code printing the device Python's version, path and which device-side frameworks it can import."""
    modules = sorted(p.backend.module for p in _device_built_backends())
    return ("import sys, json, importlib.util as u; "
            "print(json.dumps({'version': list(sys.version_info[:3]), 'executable': sys.executable, "
            f"'modules': {{m: u.find_spec(m) is not None for m in {modules!r}}}}}))")


def setup(host: str, wheel: str | Path | None = None, python: str = "python3", venv: str | None = None,
          no_deps: bool = False, tensorrt: bool | None = None, extra_requirements=(), reporter=None,
          options: RemoteOptions | None = None, targets=(), **overrides) -> dict:
    """Install this edgeopt on the device: a venv with --system-site-packages (JetPack's TensorRT stays
    visible) under the remote work folder, the edgeopt wheel (built here with ``pip wheel --no-deps``, or
    ``wheel``), and for TensorRT devices onnx and the cuda-python of the device's CUDA; ``targets`` adds the
    pip extra of each target's backend (``edgeopt[onnxruntime]``, ``edgeopt[openvino]``). Checks the result."""
    opts = resolve_options(options, overrides)
    check_host(host)
    reporter = reporter_or_default(reporter)
    venv = venv or rjoin(opts.workdir, "venv")
    vpy = rjoin(venv, "bin", "python")
    with tempfile.TemporaryDirectory(prefix="edgeopt-wheel-") as tmp:
        if wheel is None:
            reporter.step(f"{host}: building the edgeopt {__version__} wheel")
            wheel_path = build_wheel(Path(tmp))
        else:
            wheel_path = Path(wheel)
            if not wheel_path.is_file() or wheel_path.suffix != ".whl":
                raise UserInputError(f"{wheel} is not a wheel file.", "Give a .whl made by `pip wheel --no-deps`.")
            if not wheel_path.name.startswith(f"edgeopt-{__version__}-"):
                raise UserInputError(f"{wheel_path.name} is not edgeopt {__version__} (this machine's version).",
                                     "Use the wheel of this edgeopt version, so host and device agree.")
        reporter.step(f"{host}: checking {python} on the device")
        res = run_ssh(host, f"{rpath(python)} -c {shlex.quote(_base_probe())}", opts, 120)
        if res.rc != 0:
            if res.rc == 127:
                raise RemoteError(host, f"{python} was not found on the device.",
                                  "Install Python 3.10+ there (sudo apt-get install python3 python3-venv), or pass "
                                  "--python PATH.", kind="no-python")
            raise classify(host, res, f"running {python}")
        base = json.loads(res.stdout.decode().strip().splitlines()[-1])
        if tuple(base["version"][:2]) < (3, 10):
            raise RemoteError(host, f"the device's {python} is Python {'.'.join(map(str, base['version']))}; edgeopt "
                              "needs 3.10 or newer.", "Pass --python with a newer Python (JetPack 6 has 3.10).",
                              kind="no-python")
        wheels_dir = rjoin(opts.workdir, "wheels")
        reporter.step(f"{host}: copying {wheel_path.name}")
        push(host, [(wheel_path, wheel_path.name)], wheels_dir, opts)
    rwheel = rjoin(wheels_dir, wheel_path.name)
    reporter.step(f"{host}: making the venv {venv} (--system-site-packages)")
    res = run_ssh(host, f"test -x {rpath(vpy)} || {rpath(base['executable'])} -m venv --system-site-packages "
                        f"{rpath(venv)}", opts, 600, on_line=lambda l: reporter.info(f"[{host}] {l}"))
    if res.rc != 0:
        if "ensurepip" in res.stderr or "No module named venv" in res.stderr:
            raise RemoteError(host, "Python on the device cannot make a venv (the venv module or ensurepip is missing).",
                              "Install it there: sudo apt-get install python3-venv (python3.10-venv on JetPack 6).",
                              kind="no-venv")
        raise classify(host, res, "making the venv")
    from edgeopt.backends import get_packaging

    backends = _target_backends(targets)
    present = base.get("modules") or {}
    on_device = [p for p in _device_built_backends() if p.name in backends or present.get(p.backend.module)]
    if tensorrt is not None:  # --tensorrt / --no-tensorrt: the device-built backends' requirements or none
        on_device = _device_built_backends() if tensorrt else []
    extras = list(extra_requirements)
    wheel_extras = sorted({e for b in backends if (e := get_packaging(b).device_wheel_extra())})
    if on_device and not no_deps:
        cuda = _remote_cuda(host, opts)
        extras += [r for b in on_device for r in b.device_requirements(cuda) if r not in extras]
    pip = f"{remote_env(opts)} {rpath(vpy)} -m pip install --no-cache-dir --disable-pip-version-check"
    steps = []
    if not no_deps:
        what = f"{rwheel}[{','.join(wheel_extras)}]" if wheel_extras else rwheel
        steps.append(f"{pip} {rpath(what)} " + " ".join(shlex.quote(e) for e in extras))
    steps.append(f"{pip} --force-reinstall --no-deps {rpath(rwheel)}")
    for cmd in steps:
        reporter.step(f"{host}: pip install" + (" (no dependencies)" if "--no-deps" in cmd else ""))
        res = run_ssh(host, cmd, opts, opts.timeout, on_line=lambda l: reporter.info(f"[{host}] {l}"))
        if res.rc != 0:
            if res.rc == 255 or res.timed_out or "No space left" in res.stderr:
                raise classify(host, res, "pip install")
            raise RemoteError(host, f"pip install failed on the device: "
                              f"{' '.join(res.stderr.strip().splitlines()[-3:])}",
                              "If the device has no access to PyPI, install the dependencies there by hand (or from "
                              "wheels) and run setup with --no-deps.", kind="pip")
    h = hello(host, opts, python=vpy)
    details = run_agent(host, "info", {}, opts, timeout=120, python=vpy)
    reporter.info(f"{host}: edgeopt {h['edgeopt_version']} on Python {h['python']} in {venv}")
    if not h.get("cli"):
        reporter.warn(f"{host}: the `edgeopt` command needs click and rich on the device (remote runs do not); "
                      "they were not installed (--no-deps)")
    return {"host": host, "ok": True, "venv": venv, "python": vpy, "wheel": wheel_path.name,
            "edgeopt_version": h["edgeopt_version"], "python_version": h["python"], "modules": h.get("modules"),
            "system_site_packages": h.get("system_site_packages"), "fingerprint": details.get("fingerprint")}


def _target_backends(targets) -> list[str]:
    """The backends of the named targets (the device runs them)."""
    from edgeopt.core.targets import get_target

    return sorted({get_target(t).backend for t in targets})


def _remote_cuda(host: str, opts: RemoteOptions) -> str | None:
    res = run_ssh(host, "cat /usr/local/cuda/version.json 2>/dev/null", opts, 60)
    try:
        v = json.loads(res.stdout.decode())["cuda"]["version"]
        return ".".join(v.split(".")[:2])
    except (ValueError, KeyError, TypeError):
        return None
