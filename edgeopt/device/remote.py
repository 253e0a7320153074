"""Remote devices over SSH: compile and profile on the device that runs the model, from the host.

The system OpenSSH client does the work (``ssh``, with ``tar`` streamed through it), so the user's
``~/.ssh/config``, keys, agent and jump hosts apply as they do on the command line. edgeopt adds
``BatchMode=yes`` (no password prompt can hang a run) and a connect timeout; host key checking is left as the
user's configuration has it and is never switched off.

On the device everything lives under one work folder (``~/.cache/edgeopt/remote``, or ``$EDGEOPT_REMOTE_DIR``
/ ``remote_dir``): the venv ``edgeopt remote setup`` makes (``venv/``, with ``--system-site-packages`` so
JetPack's TensorRT is used), the caches (``cache/``) and one folder per job (``jobs/<id>/``, removed after the
job). The device runs ``python -m edgeopt.device.remote agent ACTION ARGS``, which prints one JSON line.

Several hosts run at once (threads); each gets its own result, and one host failing (unreachable, not set up,
another edgeopt version, a full disk, a build killed for memory) does not lose the others' results. Results
come back into ``OUT/remote/<host>/`` and are swapped in whole (nothing half-written).

This module imports only the standard library at module level: the device imports it to run the agent.
"""

from __future__ import annotations

import contextlib

import errno
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath

from edgeopt import __version__
from edgeopt.errors import EdgeoptError, UserInputError
from edgeopt.core.records import Status

DEFAULT_REMOTE_DIR = "~/.cache/edgeopt/remote"
REMOTE_DIR_ENV = "EDGEOPT_REMOTE_DIR"
RESULT_MARK = "EDGEOPT-RESULT "
ERROR_MARK = "EDGEOPT-ERROR "
SETUP_FIX = "Run `edgeopt remote setup {host}` (it installs this edgeopt version into a venv on the device)."


class RemoteError(EdgeoptError):
    """Something failed on (or on the way to) one remote host. ``kind`` says what, for scripts."""

    exit_code = 8

    def __init__(self, host: str, problem: str, fix: str | None = None, kind: str = "remote"):
        super().__init__(f"{host}: {problem}", fix)
        self.host, self.kind = host, kind

    def to_dict(self) -> dict:
        return {"kind": self.kind, "problem": self.problem, "fix": self.fix}


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach the devices and run there. Every remote function takes these (or the same names as
    keyword arguments)."""

    ssh_config: str | None = None  # ssh -F FILE; default: the user's ~/.ssh/config
    remote_dir: str | None = None  # work folder on the device; default $EDGEOPT_REMOTE_DIR or ~/.cache/edgeopt/remote
    remote_python: str | None = None  # Python on the device that runs edgeopt; default <remote_dir>/venv/bin/python
    connect_timeout: int = 15  # seconds for the SSH connection
    timeout: float = 3600.0  # seconds for one remote build/profile (TensorRT builds on small boards take minutes)
    transfer_timeout: float = 1800.0  # seconds for one upload or download
    keep_remote: bool = False  # keep the job folder on the device (for debugging)
    ssh: str = "ssh"  # the OpenSSH client

    @property
    def workdir(self) -> str:
        return self.remote_dir or os.environ.get(REMOTE_DIR_ENV) or DEFAULT_REMOTE_DIR

    @property
    def python(self) -> str:
        return self.remote_python or f"{self.workdir.rstrip('/')}/venv/bin/python"


def _options(options: RemoteOptions | None, overrides: dict) -> RemoteOptions:
    opts = options or RemoteOptions()
    known = {f.name for f in fields(RemoteOptions)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise TypeError(f"unknown remote option(s): {', '.join(bad)}")
    opts = replace(opts, **{k: v for k, v in overrides.items() if v is not None})
    if opts.ssh_config is not None and not Path(opts.ssh_config).is_file():
        raise UserInputError(f"SSH config file not found: {opts.ssh_config}.", "Give an existing file to --ssh-config.")
    return opts


# =============================================================================================
# ssh plumbing
# =============================================================================================

def check_host(host: str) -> str:
    """A host as ssh takes it (``user@host``, an alias from ~/.ssh/config, ``ssh://user@host:port``)."""
    if not host or host.startswith("-") or any(c.isspace() for c in host) or any(c in host for c in "'\"`$;|&<>\\"):
        raise UserInputError(f"{host!r} is not a host name ssh can take.",
                             "Give user@host, host, ssh://user@host:port, or a Host alias from ~/.ssh/config.")
    return host


def host_slug(host: str) -> str:
    """A folder name for a host: 'user@jetson.local' -> 'user@jetson.local', 'ssh://a@b:22' -> 'a@b_22'."""
    text = host[len("ssh://"):] if host.startswith("ssh://") else host
    return re.sub(r"[^A-Za-z0-9@._-]", "_", text).strip("._") or "host"


def rpath(path: str) -> str:
    """A path on the device, quoted for its shell; a leading ~ expands there (to the remote user's HOME)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        rest = path[2:].strip("/")
        return '"$HOME"' + (f"/{shlex.quote(rest)}" if rest else "")
    return shlex.quote(path)


def rjoin(base: str, *parts: str) -> str:
    return str(PurePosixPath(base, *parts)) if not base.startswith("~") else "/".join([base.rstrip("/"), *parts])


def ssh_argv(host: str, command: str, opts: RemoteOptions) -> list[str]:
    argv = [opts.ssh]
    if opts.ssh_config:
        argv += ["-F", str(opts.ssh_config)]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(opts.connect_timeout)}",
             "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-T", "--", check_host(host), command]
    return argv


@dataclass
class _Result:
    rc: int
    stdout: bytes
    stderr: str
    timed_out: bool


def run_ssh(host: str, command: str, opts: RemoteOptions, timeout: float, *, writer=None, reader=None,
            on_line=None) -> _Result:
    """Run ``command`` on ``host``. ``writer(stdin)`` feeds it, ``reader(stdout)`` consumes its output
    (else stdout is collected); each stderr line goes to ``on_line``. Killed after ``timeout`` seconds."""
    try:
        proc = subprocess.Popen(ssh_argv(host, command, opts), stdin=subprocess.PIPE if writer else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise UserInputError(f"The OpenSSH client ({opts.ssh}) is not installed on this machine.",
                             "Install it: sudo apt-get install openssh-client (or your system's package).") from None
    tail: deque[str] = deque(maxlen=80)
    timed_out = threading.Event()

    def read_err():
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            tail.append(line)
            if on_line and line:
                try:
                    on_line(line)
                except Exception:  # noqa: BLE001 - progress display must not break the run
                    pass

    def kill():
        timed_out.set()
        proc.kill()

    threads = [threading.Thread(target=read_err, daemon=True)]
    write_error: list[BaseException] = []
    if writer:
        def write():
            try:
                writer(proc.stdin)
            except (BrokenPipeError, OSError, ValueError) as exc:  # the remote side ended early: its error says why
                write_error.append(exc)
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        threads.append(threading.Thread(target=write, daemon=True))
    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    for t in threads:
        t.start()
    out = b""
    reader_error: BaseException | None = None
    try:
        if reader:
            try:
                reader(proc.stdout)
            except (tarfile.TarError, OSError, EOFError) as exc:
                reader_error = exc
            proc.stdout.read()
        else:
            out = proc.stdout.read()
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
        for t in threads:
            t.join(timeout=10)
    res = _Result(rc, out, "\n".join(tail), timed_out.is_set())
    if reader_error is not None and rc == 0 and not res.timed_out:
        raise RemoteError(host, f"the download was damaged: {reader_error}", "Retry; check the network and the "
                          "device's disk.", kind="transfer")
    return res


SSH_FAILURES = (
    (("Could not resolve hostname", "Name or service not known", "nodename nor servname"), "unreachable",
     "cannot resolve the host name", "Check the name, or add a Host entry for it in ~/.ssh/config."),
    (("Connection refused", "Connection timed out", "No route to host", "Network is unreachable",
      "Operation timed out", "Connection reset", "kex_exchange_identification", "Connection closed by",
      "timed out during banner exchange"), "unreachable", "cannot reach the device over SSH",
     "Check that the device is on, on this network and runs sshd (try `ssh HOST true`); for a device behind a "
     "gateway, add ProxyJump to its Host entry in ~/.ssh/config."),
    (("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED", "No ED25519 host key is known",
      "No RSA host key is known", "host key is known"), "host-key", "its SSH host key is unknown or has changed",
     "Connect once with `ssh HOST` and compare the fingerprint it shows with the device's before accepting it; if "
     "the device was reinstalled, remove the old key with `ssh-keygen -R HOST`. edgeopt keeps host key checking on."),
    (("Permission denied", "Too many authentication failures"), "auth", "SSH login was refused",
     "Set up key login (ssh-copy-id HOST) or load your key into ssh-agent: edgeopt runs ssh without password "
     "prompts (BatchMode)."),
)


def classify(host: str, res: _Result, doing: str, python: str | None = None) -> RemoteError:
    """One clear error for a failed remote command."""
    err = res.stderr
    last = "\n".join(line for line in err.splitlines()[-6:] if line.strip())
    if res.timed_out:
        return RemoteError(host, f"{doing} did not finish in time and was stopped.",
                           "Raise --timeout if the device is just slow (TensorRT builds on small boards take "
                           "minutes); otherwise check it with `edgeopt remote info HOST`.", kind="timeout")
    if "No space left on device" in err or "Disk quota exceeded" in err:
        return RemoteError(host, f"the device's disk is full ({doing}).",
                           "Free space on the device (df -h; old engines under ~/.cache/edgeopt), or point "
                           "--remote-dir at a disk with room.", kind="disk-full")
    if res.rc in (137, -9) or re.search(r"\bKilled\b", last):
        return RemoteError(host, f"{doing} was killed on the device (exit {res.rc}, SIGKILL): most likely the kernel's "
                           "out-of-memory killer.",
                           "Close other programs on the device, add swap (Jetson: sudo fallocate -l 8G /swapfile && "
                           "sudo mkswap /swapfile && sudo swapon /swapfile), or lower workspace_mb / "
                           "builder_optimization_level in the target, then retry.", kind="killed")
    if res.rc == 255:
        for needles, kind, what, fix in SSH_FAILURES:
            if any(n in err for n in needles):
                return RemoteError(host, f"{what} ({last or 'ssh exit 255'}).", fix.replace("HOST", host), kind=kind)
        return RemoteError(host, f"ssh failed ({last or 'exit 255'}).",
                           f"Check that `ssh {host} true` works from this shell.", kind="ssh")
    if "No module named edgeopt" in err or "No module named 'edgeopt'" in err or (res.rc == 127 and python):
        which = f" ({python})" if python else ""
        return RemoteError(host, f"edgeopt is not installed on the device{which}.", SETUP_FIX.format(host=host),
                           kind="not-set-up")
    return RemoteError(host, f"{doing} failed (exit {res.rc}): {last or 'no message'}",
                       "See the device's messages above; `edgeopt remote info HOST` checks the setup.", kind="remote")


def _env(opts: RemoteOptions) -> str:
    return (f"EDGEOPT_CACHE_DIR={rpath(rjoin(opts.workdir, 'cache'))} PYTHONUNBUFFERED=1 "
            f"PIP_DISABLE_PIP_VERSION_CHECK=1")


def agent(host: str, action: str, args: dict, opts: RemoteOptions, *, timeout: float | None = None,
          python: str | None = None, cwd: str | None = None, on_line=None) -> dict:
    """Run ``python -m edgeopt.device.remote agent ACTION`` on the device and return its JSON result."""
    py = python or opts.python
    payload = json.dumps({**args, "expect_version": args.get("expect_version")})
    cmd = f"mkdir -p {rpath(opts.workdir)} && "
    if cwd:
        cmd += f"cd {rpath(cwd)} && "
    # "; exit $?": the shell reports a process killed by a signal as 128+N (137 for SIGKILL) instead of ssh's 255
    cmd += f"{_env(opts)} {rpath(py)} -m edgeopt.device.remote agent {action} {shlex.quote(payload)}; exit $?"
    res = run_ssh(host, cmd, opts, timeout or opts.timeout, on_line=on_line)
    lines = res.stdout.decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        if line.startswith(RESULT_MARK) and res.rc == 0:
            return json.loads(line[len(RESULT_MARK):])
        if line.startswith(ERROR_MARK):
            e = json.loads(line[len(ERROR_MARK):])
            raise RemoteError(host, e.get("problem", "failed"), e.get("fix"), kind=e.get("kind", "edgeopt"))
    if res.rc == 0 and not res.timed_out:
        raise RemoteError(host, f"edgeopt {action} on the device printed no result.",
                          SETUP_FIX.format(host=host), kind="version")
    if "No module named edgeopt.device.remote" in res.stderr:
        raise RemoteError(host, "the device's edgeopt is too old for remote runs.", SETUP_FIX.format(host=host),
                          kind="version")
    raise classify(host, res, f"edgeopt {action}", py)


def hello(host: str, opts: RemoteOptions, python: str | None = None, check_version: bool = True) -> dict:
    """Reach the device and check its edgeopt: version, Python, free space in the work folder."""
    h = agent(host, "hello", {}, opts, timeout=max(60.0, opts.connect_timeout * 3), python=python)
    if check_version and h.get("edgeopt_version") != __version__:
        raise RemoteError(host, f"the device runs edgeopt {h.get('edgeopt_version')} ({h.get('executable')}); this "
                          f"machine runs {__version__}.", SETUP_FIX.format(host=host), kind="version")
    missing = [m for m in ("numpy",) + (("tomli",) if tuple(h.get("python_tuple", (3, 11))) < (3, 11) else ())
               if not (h.get("modules") or {}).get(m)]
    if missing:
        raise RemoteError(host, f"the device's Python ({h.get('executable')}) lacks {', '.join(missing)}, which edgeopt "
                          "needs.", f"Run `edgeopt remote setup {host}` with access to PyPI from the device, or "
                          "install them there (numpy: sudo apt-get install python3-numpy).", kind="not-set-up")
    return h


# ---- transfers -----------------------------------------------------------------------------------
def _tar_writer(items: list[tuple[Path, str]]):
    def skip(ti: tarfile.TarInfo):
        name = PurePosixPath(ti.name).name
        if name.startswith(".staging-") or (name.startswith(".") and name.endswith(".tmp")):
            return None
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    def write(stdin):
        with tarfile.open(fileobj=stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path, arcname in items:
                tar.add(str(path), arcname=arcname, recursive=True, filter=skip)
    return write


def _size(items: list[tuple[Path, str]]) -> int:
    total = 0
    for path, _ in items:
        p = Path(path)
        total += p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def push(host: str, items: list[tuple[Path, str]], remote_dir: str, opts: RemoteOptions, free_bytes: int | None = None) -> None:
    """Copy local files/folders to ``remote_dir`` on the device (tar through ssh)."""
    need = _size(items)
    if free_bytes is not None and free_bytes < need * 2 + (64 << 20):
        raise RemoteError(host, f"the device's disk is full: {free_bytes / 1e6:.0f} MB free in {opts.workdir}, "
                          f"the upload needs {need / 1e6:.0f} MB plus room for the build.",
                          "Free space on the device (df -h), or point --remote-dir at a disk with room.",
                          kind="disk-full")
    res = run_ssh(host, f"mkdir -p {rpath(remote_dir)} && tar -C {rpath(remote_dir)} -xf -", opts,
                  opts.transfer_timeout, writer=_tar_writer(items))
    if res.rc != 0 or res.timed_out:
        raise classify(host, res, "the upload")


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise tarfile.TarError(f"unsafe path in the download: {name!r}")
    return p


def _tar_reader(dest: Path):
    def read(stdout):
        with tarfile.open(fileobj=stdout, mode="r|") as tar:
            for m in tar:
                rel = _safe_member(m.name)
                target = dest.joinpath(*rel.parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    with open(target, "wb") as f:
                        while block := src.read(1 << 20):
                            f.write(block)
                else:
                    raise tarfile.TarError(f"the download holds {m.name!r}, which is not a plain file")
    return read


def pull(host: str, remote_dir: str, names: list[str], dest: Path, opts: RemoteOptions) -> None:
    """Copy ``names`` (relative to ``remote_dir`` on the device) into the local folder ``dest``."""
    for n in names:
        _safe_member(n)
    listing = " ".join(shlex.quote(n) for n in names)
    res = run_ssh(host, f"tar -C {rpath(remote_dir)} -cf - -- {listing}", opts, opts.transfer_timeout,
                  reader=_tar_reader(Path(dest)))
    if res.rc != 0 or res.timed_out:
        raise classify(host, res, "the download")


def _cleanup(host: str, remote_dir: str, opts: RemoteOptions) -> None:
    if opts.keep_remote:
        return
    try:
        run_ssh(host, f"rm -rf -- {rpath(remote_dir)}", opts, 120)
    except EdgeoptError:
        pass


def _job_dir(opts: RemoteOptions) -> str:
    return rjoin(opts.workdir, "jobs", f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}")


# =============================================================================================
# several hosts at once
# =============================================================================================

def _for_hosts(hosts, fn, reporter) -> dict:
    """Run ``fn(host)`` for every host in threads; a failing host gives {'ok': False, 'error': ...}."""
    hosts = list(dict.fromkeys(check_host(h) for h in hosts))
    if not hosts:
        raise UserInputError("No host given.", "Name at least one device: user@host (repeatable).")

    def one(host):
        t0 = time.perf_counter()
        try:
            res = fn(host)
            res.setdefault("ok", True)
        except EdgeoptError as exc:
            if reporter:  # the command prints each host's error once, with its fix; the log keeps it too
                reporter.record(f"ERROR {exc.problem if isinstance(exc, RemoteError) else f'{host}: {exc.problem}'}")
            err = exc.to_dict() if isinstance(exc, RemoteError) else {
                "kind": type(exc).__name__, "problem": exc.problem, "fix": exc.fix}
            res = {"ok": False, "error": err}
        except Exception as exc:  # noqa: BLE001 - one host's bug must not lose the others' results
            if reporter:
                reporter.record(f"ERROR {host}: {type(exc).__name__}: {exc}")
            res = {"ok": False, "error": {"kind": "internal", "problem": f"{type(exc).__name__}: {exc}",
                                          "fix": "Report this as a bug in edgeopt (run with -v for the traceback)."}}
        res["host"] = host
        res["seconds"] = round(time.perf_counter() - t0, 2)
        return host, res

    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        results = dict(pool.map(one, hosts))
    return {"ok": all(r["ok"] for r in results.values()), "hosts": results}


def _reporter(reporter):
    if reporter is not None:
        return reporter
    from edgeopt.report.progress import Reporter

    return Reporter()


# =============================================================================================
# public API
# =============================================================================================

def info(host: str, options: RemoteOptions | None = None, **overrides) -> dict:
    """The device's edgeopt version, Python, installed backends and device fingerprint."""
    opts = _options(options, overrides)
    check_host(host)
    h = hello(host, opts, check_version=False)
    details = agent(host, "info", {}, opts, timeout=120)
    return {**h, **details, "host": host, "local_edgeopt_version": __version__,
            "version_matches": h.get("edgeopt_version") == __version__}


def info_many(hosts, options: RemoteOptions | None = None, reporter=None, **overrides) -> dict:
    opts = _options(options, overrides)
    return _for_hosts(hosts, lambda h: info(h, opts), reporter)


def build_wheel(dest: Path) -> Path:
    """This edgeopt's wheel: ``pip wheel --no-deps`` from a source checkout, else repacked from the installed
    files (a pip-installed edgeopt)."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
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
    here = Path(__file__).resolve().parents[1]  # the edgeopt package folder
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


BASE_PROBE = ("import sys, json, importlib.util as u; "
              "print(json.dumps({'version': list(sys.version_info[:3]), 'executable': sys.executable, "
              "'tensorrt': u.find_spec('tensorrt') is not None}))")


def setup(host: str, wheel: str | Path | None = None, python: str = "python3", venv: str | None = None,
          no_deps: bool = False, tensorrt: bool | None = None, extra_requirements=(), reporter=None,
          options: RemoteOptions | None = None, targets=(), **overrides) -> dict:
    """Install this edgeopt on the device: a venv with --system-site-packages (JetPack's TensorRT stays
    visible) under the remote work folder, the edgeopt wheel (built here with ``pip wheel --no-deps``, or
    ``wheel``), and for TensorRT devices onnx and the cuda-python of the device's CUDA; ``targets`` adds the
    pip extra of each target's backend (``edgeopt[onnxruntime]``, ``edgeopt[openvino]``). Checks the result."""
    opts = _options(options, overrides)
    check_host(host)
    reporter = _reporter(reporter)
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
        res = run_ssh(host, f"{rpath(python)} -c {shlex.quote(BASE_PROBE)}", opts, 120)
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
    from edgeopt.backends import get_backend

    backends = _target_backends(targets)
    want_trt = (base.get("tensorrt") or "tensorrt" in backends) if tensorrt is None else tensorrt
    extras = list(extra_requirements)
    wheel_extras = sorted({get_backend(b).extra for b in backends if b != "tensorrt"})
    if want_trt and not no_deps:
        cuda = _remote_cuda(host, opts)
        extras += ["onnx", f"cuda-python=={cuda}.*" if cuda else "cuda-python"]
    pip = f"{_env(opts)} {rpath(vpy)} -m pip install --no-cache-dir --disable-pip-version-check"
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
    details = agent(host, "info", {}, opts, timeout=120, python=vpy)
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


# ---- compile -------------------------------------------------------------------------------------
def _resolve_packages(path: Path, targets, precisions, tmp: Path) -> tuple[list[tuple[str, Path]], Path]:
    """[(artifact id, local package folder)] and the folder results go under (OUT, or the package's parent)."""
    from edgeopt.device.package import find_packages, is_package, package_from_out, read_package

    path = Path(path).resolve()  # "." inside a package: results go beside it, not into it
    if is_package(path):
        pkg = read_package(path)
        if targets or precisions:
            raise UserInputError(f"{path} is one package ({pkg['id']}); --target/--precision choose packages in an "
                                 "OUT folder.", "Drop --target/--precision, or point at the OUT folder.")
        return [(pkg["id"], path)], path.parent
    if not (path / "manifest.json").is_file():
        raise UserInputError(f"{path} is neither a device package nor an edgeopt output folder.",
                             "Give OUT (from `edgeopt build`) or OUT/<artifact-id> with a package.json.")
    found = {read_package(p)["id"]: p for p in find_packages(path)}
    if not targets:
        chosen = {i: p for i, p in found.items() if not precisions or read_package(p)["precision"] in precisions}
        if not chosen:
            raise UserInputError(f"{path} holds no device packages" + (f" for {list(precisions)}" if precisions else "")
                                 + ".", "Build for a device target (edgeopt build --target jetson-orin-nano), or name "
                                 "a target to package from this OUT: --target ort-cpu --precision fp32.")
        return sorted(chosen.items()), path
    from edgeopt.core.artifact import artifact_id
    from edgeopt.core.targets import get_target

    out = []
    for t in targets:
        target = get_target(t)
        for p in (precisions or target.precisions):
            if p not in target.precisions:
                if precisions:
                    raise UserInputError(f"Target {target.name} does not offer {p}.", f"It offers: {', '.join(target.precisions)}.")
                continue
            aid = artifact_id(target.name, p)
            if aid in found:
                out.append((aid, found[aid]))
            elif target.backend == "tensorrt" and p == "int8":
                raise UserInputError(f"{path} has no device package {aid}.",
                                     f"Build it first: edgeopt build RECIPE --target {target.name} --precision int8.")
            else:
                package_from_out(path, target.name, p, tmp / aid)
                out.append((aid, tmp / aid))
    return out, path


def remote_compile(hosts, package_or_out, *, targets=(), precisions=(), threads: int | None = None,
                   profile_batches=(1,), duration_s: float = 1.5, force: bool = False, output: str | Path | None = None,
                   reporter=None, options: RemoteOptions | None = None, **overrides) -> dict:
    """Compile device packages on each host (several at once) and bring the results back.

    ``package_or_out``: one package folder, or an OUT folder (its packages, or packages made on the fly for
    ``targets``/``precisions``). Results land in ``OUT/remote/<host>/<artifact-id>/`` (or ``output``):
    the artifact built there (engine, artifact.json, device_report.json with the device fingerprint).
    Returns {"ok", "hosts": {host: {...per-artifact records... or "error"}}}.
    """
    opts = _options(options, overrides)
    reporter = _reporter(reporter)
    with tempfile.TemporaryDirectory(prefix="edgeopt-packages-") as tmp:
        packages, base = _resolve_packages(Path(package_or_out), tuple(targets), tuple(precisions), Path(tmp))
        out_root = Path(output) if output else base / "remote"
        args = {"threads": threads, "batches": [int(b) for b in profile_batches], "force": force,
                "duration_s": duration_s, "expect_version": __version__}

        def one(host):
            return _compile_on(host, packages, args, out_root, opts, reporter)

        result = _for_hosts(hosts, one, reporter)
    result["output"] = str(out_root)
    _record_in_manifest(base, result, "compiled")
    return result


@contextlib.contextmanager
def _job_on(host: str, items, verb: str, key: str, args: dict, opts: RemoteOptions, reporter):
    """Upload ``items`` ((id, local path) pairs) into a fresh job folder on ``host`` and run the agent's
    ``verb`` there; yields (hello, job folder, agent result). The job folder is removed afterwards."""
    h = hello(host, opts)
    job = _job_dir(opts)
    try:
        reporter.step(f"{host}: uploading {', '.join(i for i, _ in items)}")
        push(host, [(p, i) for i, p in items], job, opts, free_bytes=h.get("free_bytes"))
        reporter.step(f"{host}: running {verb} on the device")
        res = agent(host, verb, {**args, key: [i for i, _ in items]}, opts, cwd=job,
                    on_line=lambda line: reporter.info(f"[{host}] {line}"))
        yield h, job, res
    finally:
        _cleanup(host, job, opts)


def _compile_on(host: str, packages, args: dict, out_root: Path, opts: RemoteOptions, reporter) -> dict:
    from edgeopt.core.fsutil import clean_stale_staging, write_json_atomic

    with _job_on(host, packages, "compile", "packages", args, opts, reporter) as (h, job, res):
        ok_ids = [i for i, r in res["results"].items() if "error" not in r]
        host_dir = out_root / host_slug(host)
        host_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(host_dir)
        artifacts = {}
        if ok_ids:
            names = [f"{i}/{f['path']}" for i in ok_ids for f in res["results"][i]["files"]
                     if not f["path"].startswith("onnx/")]
            landing = Path(tempfile.mkdtemp(prefix=".staging-pull-", dir=host_dir))
            try:
                reporter.step(f"{host}: downloading {', '.join(ok_ids)}")
                pull(host, job, names, landing, opts)
                for i in ok_ids:
                    artifacts[i] = _place(host, landing / i, host_dir / i, res["results"][i])
            finally:
                import shutil

                shutil.rmtree(landing, ignore_errors=True)
        for i, r in res["results"].items():
            if "error" in r:
                reporter.error(f"{host}: {i}: {r['error']['problem']}")
                artifacts[i] = {"status": Status.FAILED, "error": r["error"]}
        write_json_atomic(host_dir / "device.json", {"host": host, "fingerprint": res.get("fingerprint"),
                                                     "edgeopt_version": h.get("edgeopt_version"),
                                                     "python": h.get("python")})
    return {"ok": all(a["status"] == Status.OK for a in artifacts.values()), "artifacts": artifacts,
            "fingerprint": res.get("fingerprint"), "edgeopt_version": h.get("edgeopt_version"),
            "python": h.get("python"), "path": str(host_dir)}


def _place(host: str, pulled: Path, final: Path, record: dict) -> dict:
    """Check the pulled files against the device's sha256 list, then swap them in as ``final``."""
    import shutil

    from edgeopt.core.fsutil import sha256_file, staged_dir

    for f in record["files"]:
        if f["path"].startswith("onnx/"):
            continue
        p = pulled / f["path"]
        if not p.is_file() or sha256_file(p) != f["sha256"]:
            raise RemoteError(host, f"{record['id']}/{f['path']} arrived damaged or incomplete.",
                              "Retry; check the network and the device's disk.", kind="transfer")
    with staged_dir(final) as stage:
        for item in pulled.iterdir():
            shutil.move(str(item), str(stage / item.name))
    keep = ("status", "compile_s", "parity", "latency", "load_s", "threads", "peak_rss_mb", "gpu_timing")
    return {**{k: record.get(k) for k in keep}, "path": str(final)}


# ---- profile -------------------------------------------------------------------------------------
def _artifact_folders(path: Path, host_dir: Path | None) -> list[tuple[str, Path]]:
    from edgeopt.core.artifact import ARTIFACT_JSON, read_artifact_json
    from edgeopt.core.manifest import MANIFEST, load_manifest

    path = Path(path)
    if (path / ARTIFACT_JSON).is_file() and not (path / "package.json").is_file():
        return [(read_artifact_json(path)["id"], path)]
    if (path / "package.json").is_file():
        pkg = json.loads((path / "package.json").read_text())
        if pkg.get("status") != Status.OK:
            raise UserInputError(f"{path} is a device package that was not compiled yet.",
                                 f"Compile it on the device first: edgeopt device-compile {path} --remote HOST.")
        return [(pkg["id"], path)]
    if not (path / MANIFEST).is_file():
        raise UserInputError(f"{path} is neither an artifact folder nor an edgeopt output folder.",
                             "Give OUT (with manifest.json) or OUT/<artifact-id> (with artifact.json).")
    m = load_manifest(path).data
    found = {a["id"]: path / a["id"] for a in m["artifacts"] if a["status"] == Status.OK}
    if host_dir is not None and host_dir.is_dir():  # what was compiled on this host earlier
        for p in sorted(host_dir.iterdir()):
            if p.is_dir() and (p / ARTIFACT_JSON).is_file() and not p.name.startswith("."):
                found[p.name] = p
    return sorted(found.items())


def remote_profile(hosts, path, *, batches=(1,), threads: int | None = None, duration_s: float = 1.5,
                   iterations: int | None = None, warmup: int = 10, output: str | Path | None = None, reporter=None,
                   options: RemoteOptions | None = None, **overrides) -> dict:
    """Profile artifacts on each host: an artifact folder, or every "ok" artifact of OUT plus what was
    compiled on that host before (OUT/remote/<host>/). Reports land in OUT/remote/<host>/profile.json."""
    opts = _options(options, overrides)
    reporter = _reporter(reporter)
    path = Path(path)
    base = path if (path / "manifest.json").is_file() else path.parent
    out_root = Path(output) if output else base / "remote"
    args = {"batches": [int(b) for b in batches], "threads": threads, "duration_s": duration_s,
            "iterations": iterations, "warmup": warmup, "expect_version": __version__}
    _artifact_folders(path, None)  # a wrong path is one error for the command, before any host is contacted

    def one(host):
        from edgeopt.core.fsutil import write_json_atomic

        host_dir = out_root / host_slug(host)
        folders = _artifact_folders(path, host_dir)
        if not folders:
            raise UserInputError(f"Nothing to profile in {path}: no artifact with status ok.",
                                 "Build first (edgeopt build), or compile on the device (edgeopt device-compile OUT --remote HOST).")
        with _job_on(host, folders, "profile", "paths", args, opts, reporter) as (h, _job, res):
            pass
        report = {"host": host, "batches": args["batches"], "fingerprint": res.get("fingerprint"),
                  "edgeopt_version": h.get("edgeopt_version"), "artifacts": res["results"]}
        host_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(host_dir / "profile.json", report)
        for i, r in res["results"].items():
            if "error" in r:
                reporter.error(f"{host}: {i}: {r['error']['problem']}")
        return {"ok": all("error" not in r for r in res["results"].values()), "artifacts": res["results"],
                "fingerprint": res.get("fingerprint"), "path": str(host_dir / "profile.json")}

    result = _for_hosts(hosts, one, reporter)
    result["output"] = str(out_root)
    _record_in_manifest(base, result, "profiled")
    return result


def _record_in_manifest(base: Path, result: dict, what: str) -> None:
    """Add each host's outcome to the matching artifact records of OUT/manifest.json under ``devices``."""
    from edgeopt.core.fsutil import write_json_atomic

    path = Path(base) / "manifest.json"
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    by_id = {a.get("id"): a for a in data.get("artifacts", [])}
    changed = False
    for host, r in result["hosts"].items():
        fp = r.get("fingerprint") or {}
        brief = {k: fp.get(k) for k in ("model", "jetpack", "l4t", "tensorrt", "nvpmodel") if fp.get(k) is not None}
        for aid, a in (r.get("artifacts") or {}).items():
            if aid not in by_id:
                continue
            entry = by_id[aid].setdefault("devices", {}).setdefault(host, {})
            if "error" in a:
                entry[what] = {"status": Status.FAILED, "error": a["error"]}
            else:
                entry[what] = {k: a.get(k) for k in ("status", "parity", "latency", "rows", "path") if a.get(k) is not None}
                entry["device"] = {**brief, "gpu": (fp.get("gpu") or {}).get("name")} if fp else None
            changed = True
    if changed:
        write_json_atomic(path, data)


# =============================================================================================
# the agent: what runs on the device (python -m edgeopt.device.remote agent ACTION JSON)
# =============================================================================================

def _emit(mark: str, obj) -> None:
    sys.stdout.flush()
    sys.stdout.write(mark + json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _error_dict(exc: BaseException) -> dict:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return {"kind": "disk-full", "problem": f"the device's disk is full: {exc}",
                "fix": "Free space on the device, or point --remote-dir at a disk with room.", "exit_code": 8}
    if isinstance(exc, MemoryError):
        return {"kind": "killed", "problem": "out of memory", "fix": "Free memory on the device.", "exit_code": 137}
    if isinstance(exc, EdgeoptError):
        return {"kind": type(exc).__name__, "problem": exc.problem, "fix": exc.fix, "exit_code": exc.exit_code}
    return {"kind": "internal", "problem": f"{type(exc).__name__}: {exc}",
            "fix": "Report this as a bug in edgeopt.", "exit_code": 1}


def _modules() -> dict:
    import importlib.util

    def present(m):
        try:
            return importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            return False

    return {m: present(m) for m in ("numpy", "tomli", "click", "rich", "onnx", "tensorrt", "onnxruntime", "openvino",
                                    "cuda")}


def _agent_hello(args: dict) -> dict:
    import platform
    import shutil

    work = Path(os.environ.get("EDGEOPT_CACHE_DIR") or ".").parent
    try:
        free = shutil.disk_usage(work if work.is_dir() else Path.home()).free
    except OSError:
        free = None
    mods = _modules()
    return {"edgeopt_version": __version__, "python": platform.python_version(),
            "python_tuple": list(sys.version_info[:3]), "executable": sys.executable,
            "system_site_packages": sys.prefix != sys.base_prefix and _venv_system_site(),
            "free_bytes": free, "modules": mods, "cli": mods["click"] and mods["rich"],
            "edgeopt_path": str(Path(__file__).resolve().parents[1])}


def _venv_system_site() -> bool:
    try:
        text = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    except OSError:
        return False
    return bool(re.search(r"include-system-site-packages\s*=\s*true", text, re.I))


def _agent_info(args: dict) -> dict:
    from edgeopt.device.package import device_fingerprint

    return {"fingerprint": device_fingerprint()}


def _agent_compile(args: dict) -> dict:
    from edgeopt.device.package import compile_package, device_fingerprint
    from edgeopt.report.progress import Reporter

    reporter = Reporter()
    results = {}
    for name in args["packages"]:
        try:
            rec = compile_package(Path(name), threads=args.get("threads"), profile_batches=tuple(args.get("batches") or (1,)),
                                  reporter=reporter, force=bool(args.get("force")),
                                  duration_s=float(args.get("duration_s") or 1.5))
            results[name] = {k: v for k, v in rec.items() if k != "device_fingerprint"}
        except Exception as exc:  # noqa: BLE001 - one package failing does not stop the others
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            reporter.error(f"{name}: {exc}")
            results[name] = {"error": _error_dict(exc)}
    return {"fingerprint": device_fingerprint(), "results": results}


def _agent_profile(args: dict) -> dict:
    from edgeopt.backends.artifact import open_artifact
    from edgeopt.device.package import device_fingerprint
    from edgeopt.core.profile import profile_runner
    from edgeopt.core.profile import ProfileConfig
    from edgeopt.report.progress import Reporter

    reporter = Reporter()
    results = {}
    for name in args["paths"]:
        try:
            runner, rec = open_artifact(Path(name), threads=args.get("threads"))
            lo, hi = runner.spec.batch_range()
            batches = tuple(b for b in (args.get("batches") or [1]) if lo <= b <= hi) or (lo,)
            cfg = ProfileConfig(batches=batches, threads=args.get("threads"), iterations=args.get("iterations"),
                                warmup=int(args.get("warmup", 10)), duration_s=float(args.get("duration_s") or 1.5),
                                baseline=False)
            reporter.step(f"{name}: profiling batch {','.join(map(str, batches))}")
            try:
                prof = profile_runner(runner, runner.spec, batches, cfg)
            finally:
                runner.close()
            results[name] = prof
        except Exception as exc:  # noqa: BLE001 - one artifact failing does not stop the others
            reporter.error(f"{name}: {exc}")
            results[name] = {"error": _error_dict(exc)}
    return {"fingerprint": device_fingerprint(), "results": results}


AGENT_ACTIONS = {"hello": _agent_hello, "info": _agent_info, "compile": _agent_compile, "profile": _agent_profile}


def agent_main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "agent" or argv[1] not in AGENT_ACTIONS:
        sys.stderr.write("usage: python -m edgeopt.device.remote agent {hello,info,compile,profile} [JSON]\n"
                         "(run by `edgeopt remote ...` and `edgeopt device-compile --remote` over SSH)\n")
        return 2
    try:
        args = json.loads(argv[2]) if len(argv) > 2 else {}
        want = args.get("expect_version")
        if want and want != __version__:
            raise EdgeoptError(f"the device runs edgeopt {__version__}; the host runs {want}.",
                               "Run `edgeopt remote setup HOST` from the host.")
        result = AGENT_ACTIONS[argv[1]](args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one JSON line for the host
        err = _error_dict(exc)
        if err["kind"] == "internal":
            import traceback

            traceback.print_exc()
        elif isinstance(exc, EdgeoptError) and "device runs edgeopt" in exc.problem:
            err["kind"] = "version"
        _emit(ERROR_MARK, err)
        return int(err.get("exit_code") or 1) if err["kind"] != "killed" else 137
    _emit(RESULT_MARK, result)
    return 0


if __name__ == "__main__":
    sys.exit(agent_main(sys.argv[1:]))
