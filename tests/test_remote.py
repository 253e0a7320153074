"""Remote devices over SSH, for real: an OpenSSH server on 127.0.0.1 (a free port, keys generated in a temp
folder, host key checking on) plays the device, which is this machine. Nothing touches ~/.ssh or HOME: the
client reads its own config (ssh -F), the device's work folder is in the temp folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")

pytestmark = [
    pytest.mark.ssh,
    pytest.mark.skipif(not SSHD.exists(), reason="needs the OpenSSH server (/usr/sbin/sshd): apt-get install openssh-server"),
    pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                       reason="needs the OpenSSH client (ssh, ssh-keygen): apt-get install openssh-client"),
]

DEVICE, DOWN = "edgeopt-device", "edgeopt-down"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL)
    return path.with_suffix(".pub").read_text().split()[:2]


class Sshd:
    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.down_port = _free_port()  # nothing listens there
        self.user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        host_type, host_key = _keygen(root / "host_ed25519", "edgeopt-test-host")
        _keygen(root / "id_ed25519", "edgeopt-test-user")
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        (root / "sshd_config").write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {root / 'host_ed25519'}
PidFile {root / 'sshd.pid'}
AuthorizedKeysFile {root / 'authorized_keys'}
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {self.user}
LogLevel VERBOSE
""")
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_type} {host_key}\n")
        wrong_type, wrong_key = _keygen(root / "other_host_ed25519", "another-host")
        (root / "known_hosts_wrong").write_text(f"[127.0.0.1]:{self.port} {wrong_type} {wrong_key}\n")
        self.config = root / "ssh_config"
        common = f"""\
  HostName 127.0.0.1
  User {self.user}
  IdentityFile {root / 'id_ed25519'}
  IdentitiesOnly yes
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
"""
        self.config.write_text(
            f"Host {DEVICE}\n  Port {self.port}\n  UserKnownHostsFile {root / 'known_hosts'}\n{common}\n"
            f"Host {DOWN}\n  Port {self.down_port}\n  UserKnownHostsFile {root / 'known_hosts'}\n{common}\n"
            f"Host edgeopt-impostor\n  Port {self.port}\n  UserKnownHostsFile {root / 'known_hosts_wrong'}\n{common}\n")
        self.proc = None

    def start(self):
        if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
            Path("/run/sshd").mkdir(mode=0o755, parents=True)  # sshd's privilege separation folder (as the service makes)
        log = open(self.root / "sshd.log", "wb")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sshd exited: {(self.root / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"sshd did not listen in 15 s: {(self.root / 'sshd.log').read_text()[-2000:]}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def device_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("device") / "edgeopt-remote"


@pytest.fixture(scope="module")
def opts(sshd, device_dir) -> dict:
    """The "device" runs edgeopt with this environment's Python (edgeopt installed, the same version)."""
    return {"ssh_config": str(sshd.config), "remote_dir": str(device_dir), "remote_python": sys.executable,
            "connect_timeout": 10}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    out = tmp_path_factory.mktemp("remote-build") / "out"
    build(None, out, targets=("ort-cpu",), precisions=("fp32",), reporter=Reporter(quiet=True), profile=False)
    return out


from conftest import invoke_cli as _cli  # noqa: E402


def _no_jobs_left(device_dir: Path) -> bool:
    jobs = device_dir / "jobs"
    return not jobs.exists() or not any(jobs.iterdir())


# ---- the complete round trip -------------------------------------------------------------------------
def test_remote_compile_and_profile_with_a_failing_second_host(sshd, opts, out, device_dir):
    from edgeopt.backends.artifact import open_artifact
    from edgeopt.core.parity import parity, tolerance_for
    from edgeopt.core.reference import REFERENCE_FILE, load_reference
    from edgeopt.device.remote import remote_compile, remote_profile

    res = remote_compile([DEVICE, DOWN], out, targets=("ort-cpu",), precisions=("fp32",), profile_batches=(1, 8),
                         duration_s=0.2, **opts)
    assert not res["ok"]  # one host failed ...
    dev, down = res["hosts"][DEVICE], res["hosts"][DOWN]
    assert dev["ok"], dev  # ... and the other's result came back
    art = dev["artifacts"]["ort-cpu-fp32"]
    assert art["status"] == "ok" and art["parity"]["passed"]
    assert [row["batch"] for row in art["latency"]] == [1, 8]
    assert dev["fingerprint"]["python"] and dev["fingerprint"]["hostname"]
    assert down["ok"] is False and down["error"]["kind"] == "unreachable"
    assert "Connection refused" in down["error"]["problem"] and DOWN in down["error"]["problem"]

    # The artifact built on the device is here, complete, and runs.
    folder = out / "remote" / DEVICE / "ort-cpu-fp32"
    assert Path(art["path"]) == folder
    for name in ("artifact.json", "model.onnx", "device_report.json", "package.json"):
        assert (folder / name).is_file(), name
    pkg = json.loads((folder / "package.json").read_text())
    assert pkg["status"] == "ok" and pkg["device"]["hostname"] and pkg["result"]["parity"]["passed"]
    report = json.loads((folder / "device_report.json").read_text())
    assert report["device"]["python"] and report["latency"][0]["median_ms"] > 0
    assert json.loads((out / "remote" / DEVICE / "device.json").read_text())["fingerprint"]
    feeds, refs = load_reference(out / REFERENCE_FILE)
    runner, _ = open_artifact(folder)
    with runner:
        got = [runner.infer(f) for f in feeds]
    assert parity(refs, got, tolerance_for("fp32"))["passed"]
    assert not (out / "remote" / DOWN).exists()  # nothing for the failed host
    assert _no_jobs_left(device_dir)  # the job folder on the device was removed
    manifest = json.loads((out / "manifest.json").read_text())
    rec = next(a for a in manifest["artifacts"] if a["id"] == "ort-cpu-fp32")
    assert rec["devices"][DEVICE]["compiled"]["status"] == "ok"

    prof = remote_profile([DEVICE, DOWN], out, batches=(1,), duration_s=0.2, **opts)
    assert not prof["ok"] and prof["hosts"][DEVICE]["ok"]
    rows = prof["hosts"][DEVICE]["artifacts"]["ort-cpu-fp32"]["rows"]
    assert rows[0]["batch"] == 1 and rows[0]["median_ms"] > 0 and rows[0]["iterations"] >= 20
    assert prof["hosts"][DOWN]["error"]["kind"] == "unreachable"
    saved = json.loads((out / "remote" / DEVICE / "profile.json").read_text())
    assert saved["artifacts"]["ort-cpu-fp32"]["rows"][0]["batch"] == 1 and saved["fingerprint"]
    assert _no_jobs_left(device_dir)


def test_cli_device_compile_info_and_profile(sshd, opts, out, tmp_path):
    common = ["--ssh-config", opts["ssh_config"], "--remote-dir", opts["remote_dir"],
              "--remote-python", opts["remote_python"]]
    code, stdout, stderr = _cli("remote", "info", DEVICE, *common, "--json")
    assert code == 0, stderr
    info = json.loads(stdout)["hosts"][DEVICE]
    assert info["version_matches"] and info["fingerprint"]["hostname"] and info["modules"]["numpy"]

    results = tmp_path / "results"
    code, stdout, stderr = _cli("device-compile", out, "--remote", DEVICE, "-t", "ort-cpu", "-p", "fp32",
                                "--duration", "0.2", "-o", results, *common, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["hosts"][DEVICE]["artifacts"]["ort-cpu-fp32"]["status"] == "ok"
    assert (results / DEVICE / "ort-cpu-fp32" / "artifact.json").is_file()

    code, stdout, stderr = _cli("remote", "profile", DEVICE, DOWN, out, "--duration", "0.2", *common)
    assert code == 8  # one host failed: the command says so ...
    assert f"{DEVICE}:" in stdout and "ort-cpu-fp32" in stdout and "median" in stdout  # ... after the other's result
    assert f"{DOWN}: FAILED (unreachable)" in stderr and "fix:" in stderr


# ---- each failure, clearly, per host -------------------------------------------------------------------
def test_host_without_edgeopt(sshd, opts, tmp_path):
    from edgeopt.device.remote import RemoteError, info

    with pytest.raises(RemoteError) as e:
        info(DEVICE, **{**opts, "remote_python": str(tmp_path / "no-venv" / "bin" / "python")})
    assert e.value.kind == "not-set-up" and "edgeopt remote setup edgeopt-device" in e.value.fix


def test_host_with_another_edgeopt_version(sshd, opts, tmp_path):
    from edgeopt.device.remote import RemoteError, RemoteOptions, hello

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'EDGEOPT-RESULT {\"edgeopt_version\": \"0.0.1\", \"python\": \"3.10.12\", "
                    "\"executable\": \"/usr/bin/python3\", \"modules\": {\"numpy\": true}}'\n")
    fake.chmod(0o755)

    with pytest.raises(RemoteError) as e:
        hello(DEVICE, RemoteOptions(**{**opts, "remote_python": str(fake)}))
    assert e.value.kind == "version" and "0.0.1" in e.value.problem and "remote setup" in e.value.fix


def test_build_killed_on_the_device(sshd, opts, out, tmp_path):
    from edgeopt.device.remote import remote_compile

    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *"agent compile"*) kill -9 $$ ;; esac\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    results = tmp_path / "results"
    res = remote_compile([DEVICE], out, targets=("ort-cpu",), precisions=("fp32",), output=results,
                         **{**opts, "remote_python": str(wrapper)})
    err = res["hosts"][DEVICE]["error"]
    assert err["kind"] == "killed" and "137" in err["problem"] and "swap" in err["fix"]
    assert not (results / DEVICE / "ort-cpu-fp32").exists()  # nothing half-written


def test_full_disk_is_caught_before_the_upload(sshd, opts, out):
    from edgeopt.device.remote import RemoteError, RemoteOptions, push

    with pytest.raises(RemoteError) as e:
        push(DEVICE, [(out / "export" / "model.onnx", "model.onnx")], opts["remote_dir"] + "/jobs/x",
             RemoteOptions(**opts), free_bytes=1000)
    assert e.value.kind == "disk-full" and "free" in e.value.problem


def test_changed_host_key_is_refused(sshd, opts):
    from edgeopt.device.remote import RemoteError, info

    with pytest.raises(RemoteError) as e:
        info("edgeopt-impostor", **opts)
    assert e.value.kind == "host-key" and "ssh-keygen -R" in e.value.fix


def test_timeout_stops_a_remote_command(sshd, opts):
    from edgeopt.device.remote import RemoteOptions, classify, run_ssh

    t0 = time.time()
    res = run_ssh(DEVICE, "sleep 30", RemoteOptions(**opts), timeout=2)
    assert res.timed_out and time.time() - t0 < 20
    assert classify(DEVICE, res, "sleeping").kind == "timeout"


def test_setup_installs_the_wheel_into_a_venv(sshd, opts, tmp_path):
    """setup builds the wheel here (pip wheel --no-deps), makes a --system-site-packages venv on the device and
    installs it without dependencies (no index needed); the device's Python is the base interpreter here."""
    from edgeopt import __version__
    from edgeopt.device.remote import RemoteError, setup

    base = getattr(sys, "_base_executable", sys.executable)
    has_numpy = subprocess.run([base, "-c", "import numpy"], capture_output=True).returncode == 0
    venv = tmp_path / "device-venv"
    kwargs = dict(python=base, venv=str(venv), no_deps=True, tensorrt=False,
                  **{k: v for k, v in opts.items() if k != "remote_python"})
    from edgeopt.report.progress import Reporter

    if not has_numpy:
        with pytest.raises(RemoteError) as e:
            setup(DEVICE, reporter=Reporter(quiet=True), **kwargs)
        assert e.value.kind == "not-set-up" and "numpy" in e.value.problem
        return
    res = setup(DEVICE, reporter=Reporter(quiet=True), **kwargs)
    assert res["edgeopt_version"] == __version__ and res["system_site_packages"] is True
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import edgeopt; print(edgeopt.__file__)"],
                               capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert str(venv) in installed  # the wheel's copy, not this checkout


def test_classify_messages():
    from edgeopt.device.remote import SshResult as _Result, classify, check_host, host_slug, rpath
    from edgeopt.errors import UserInputError

    assert classify("h", _Result(1, b"", "tar: model.onnx: Cannot write: No space left on device", False), "x").kind == "disk-full"
    assert classify("h", _Result(255, b"", "ssh: Could not resolve hostname nope: Name or service not known", False), "x").kind == "unreachable"
    assert classify("h", _Result(255, b"", "root@h: Permission denied (publickey).", False), "x").kind == "auth"
    assert classify("h", _Result(1, b"", "No module named edgeopt", False), "x").kind == "not-set-up"
    assert rpath("~/.cache/edgeopt/remote") == '"$HOME"/.cache/edgeopt/remote'
    assert rpath("/tmp/a b") == "'/tmp/a b'"
    assert host_slug("ssh://me@jetson:2222") == "me@jetson_2222"
    for bad in ("-oProxyCommand=x", "a b", "h;rm", ""):
        with pytest.raises(UserInputError):
            check_host(bad)
