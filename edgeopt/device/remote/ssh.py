"""Reaching a device: the options, the OpenSSH client run with a timeout (stderr streamed, stdout read or
fed), failures turned into one clear :class:`RemoteError`, the agent called on the device, and several
hosts at once (threads; one host failing does not lose the others' results).

Standard library only at module level: the device imports this package to run the agent.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tarfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath
from edgeopt import __version__
from edgeopt.errors import EdgeoptError, UserInputError


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


def resolve_options(options: RemoteOptions | None, overrides: dict) -> RemoteOptions:
    opts = options or RemoteOptions()
    known = {f.name for f in fields(RemoteOptions)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise TypeError(f"unknown remote option(s): {', '.join(bad)}")
    opts = replace(opts, **{k: v for k, v in overrides.items() if v is not None})
    if opts.ssh_config is not None and not Path(opts.ssh_config).is_file():
        raise UserInputError(f"SSH config file not found: {opts.ssh_config}.", "Give an existing file to --ssh-config.")
    return opts


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
class SshResult:
    rc: int
    stdout: bytes
    stderr: str
    timed_out: bool


def run_ssh(host: str, command: str, opts: RemoteOptions, timeout: float, *, writer=None, reader=None,
            on_line=None) -> SshResult:
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
    res = SshResult(rc, out, "\n".join(tail), timed_out.is_set())
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


def classify(host: str, res: SshResult, doing: str, python: str | None = None) -> RemoteError:
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


def remote_env(opts: RemoteOptions) -> str:
    return (f"EDGEOPT_CACHE_DIR={rpath(rjoin(opts.workdir, 'cache'))} PYTHONUNBUFFERED=1 "
            f"PIP_DISABLE_PIP_VERSION_CHECK=1")


def run_agent(host: str, action: str, args: dict, opts: RemoteOptions, *, timeout: float | None = None,
          python: str | None = None, cwd: str | None = None, on_line=None) -> dict:
    """Run ``python -m edgeopt.device.remote agent ACTION`` on the device and return its JSON result."""
    py = python or opts.python
    payload = json.dumps({**args, "expect_version": args.get("expect_version")})
    cmd = f"mkdir -p {rpath(opts.workdir)} && "
    if cwd:
        cmd += f"cd {rpath(cwd)} && "
    # "; exit $?": the shell reports a process killed by a signal as 128+N (137 for SIGKILL) instead of ssh's 255
    cmd += f"{remote_env(opts)} {rpath(py)} -m edgeopt.device.remote agent {action} {shlex.quote(payload)}; exit $?"
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
    from edgeopt.backends import backends

    h = run_agent(host, "hello", {"modules": [b.module for b in backends()]}, opts,
                  timeout=max(60.0, opts.connect_timeout * 3), python=python)
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


def for_hosts(hosts, fn, reporter) -> dict:
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


def reporter_or_default(reporter):
    if reporter is not None:
        return reporter
    from edgeopt.report.progress import Reporter

    return Reporter()
