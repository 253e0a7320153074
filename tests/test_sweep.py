"""``edgeopt sweep`` on a real Ray: the embedded local Ray, a 2-node cluster on loopback (a head and a board node
with a fake board resource), a worker killed mid-sweep, and the same jobs one after another without Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeopt.errors import UserInputError
from edgeopt.scale.plan import load_sweep

EDGEOPT = [sys.executable, "-m", "edgeopt"]
RAY = str(Path(sys.executable).with_name("ray"))  # the venv's, beside this Python


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sweep_file(tmp: Path, models=("digits", "digits-b"), targets=("ort-cpu",), precisions=("fp32",),
               extra: str = "") -> Path:
    lines = [f'name = "t"', f"targets = {json.dumps(list(targets))}", f"precisions = {json.dumps(list(precisions))}",
             ""]
    for m in models:  # short timing: the figures are not what these tests check
        lines += ["[[models]]", 'recipe = "example"', f'name = "{m}"',
                  "overrides = { profile = { batches = [1], duration_s = 0.2, warmup = 2 } }", ""]
    return write(tmp / "sweep.toml", "\n".join(lines) + extra)


def run(args, cwd, env=None, timeout=900):
    return subprocess.run([*EDGEOPT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# --- the sweep file ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ('[[models]]\nrecipe = "nope.toml"\n', "not found"),
    ('targets = ["ort-cpu"]\nprecisions = ["fp32"]\n[[models]]\nrecipe = "example"\nnmae = "x"\n', "nmae"),
    ('targets = ["ort-cpu"]\nprecisions = ["fp32"]\n[[models]]\nrecipe = "example"\n[[models]]\nrecipe = "example"\n',
     "used twice"),
    ('targets = ["ort-cpu"]\nprecisions = ["fp32"]\n[[models]]\nrecipe = "example"\nname = "a"\n'
     '[[farm]]\nboard = "b"\nmodels = ["z"]\n', "does not build"),
    ('targets = ["../x"]\n[[models]]\nrecipe = "example"\n', "list of names"),
    ("name = 1\n", "no models"),
])
def test_a_bad_sweep_file_is_refused_before_anything_runs(tmp_path, text, words):
    with pytest.raises(UserInputError) as e:
        load_sweep(write(tmp_path / "s.toml", text))
    assert words in e.value.problem


def test_the_matrix_expands_to_one_job_per_model_target_precision(tmp_path):
    s = load_sweep(sweep_file(tmp_path, targets=("ort-cpu", "openvino-cpu"), precisions=("fp32", "int8")))
    assert len(s.jobs) == 8 and len({j.id for j in s.jobs}) == 8
    assert len({m.export_key for m in s.models}) == 1  # same model: one export for all eight jobs


def test_board_jobs_without_ray_are_refused_before_any_build(tmp_path):
    f = sweep_file(tmp_path, models=("digits",), extra='[[farm]]\nboard = "jetson-orin-nano"\n')
    res = run(["sweep", str(f), "--sequential", "-o", "out"], tmp_path)
    assert res.returncode == 2 and "need Ray" in res.stderr
    assert not (tmp_path / "out" / "jobs").exists()


# --- one after another -----------------------------------------------------------------------------------------------

def test_sequential_sweep_shares_one_export_and_writes_valid_outs(tmp_path):
    f = sweep_file(tmp_path, models=("digits",), precisions=("fp32", "int8"))
    res = run(["sweep", str(f), "--sequential", "-o", "out", "--json"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["mode"] == "sequential"
    assert [j["status"] for j in summary["jobs"]] == ["ok", "ok"]
    assert all(j["shared_export"] for j in summary["jobs"]), summary["jobs"]
    for j in summary["jobs"]:
        sel = run(["select", str(tmp_path / "out" / j["out"]), "--json", "--max-drop", "100"], tmp_path)
        assert sel.returncode == 0, sel.stderr
    assert summary["models"]["digits"]["selected"] in {j["artifact"] for j in summary["jobs"]}
    html = (tmp_path / "out" / "report" / "report.html").read_text()
    assert "ort-cpu-int8" in html and "select digits" in html
    # a rerun hands each job its earlier OUT: the build reuses the compiled artifacts that are still valid
    again = run(["sweep", str(f), "--sequential", "-o", "out", "--json"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(j["resumed"] and j["status"] == "ok" for j in json.loads(again.stdout)["jobs"])
    for j in summary["jobs"]:
        log = (tmp_path / "out" / j["out"] / "logs" / "build.log").read_text()
        assert f"{j['artifact']}: reusing the compiled artifact" in log


# --- Ray ----------------------------------------------------------------------------------------------------------------

ray = pytest.importorskip("ray")


def test_embedded_local_ray_runs_the_jobs_as_ray_tasks(tmp_path):
    f = sweep_file(tmp_path, models=("digits",), targets=("ort-cpu", "openvino-cpu"))
    env = {k: "" for k in ("RAY_ADDRESS",)}
    res = run(["sweep", str(f), "-o", "out", "--json"], tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["mode"] == "ray" and summary["address"] == "local"
    assert all(j["status"] == "ok" and j["attempts"] == 1 for j in summary["jobs"])
    assert all(j["where"]["node"] for j in summary["jobs"])  # ran as Ray tasks


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (2 CPUs) and a board node (no CPUs, one fake board) started with `ray start` on 127.0.0.1."""
    import secrets

    tmp = tmp_path_factory.mktemp("ray")
    token = tmp / "token"  # Ray's token authentication, with a token of this test's (never ~/.ray's)
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env = {**os.environ, **auth}
    port = 26379 + os.getpid() % 1000
    addr = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    f"--temp-dir={tmp}", *common], check=True, capture_output=True, env=env, timeout=180)
    try:
        subprocess.run([RAY, "start", f"--address={addr}", "--num-cpus=0", '--resources={"fake-board": 1}', *common],
                       check=True, capture_output=True, env=env, timeout=180)
        yield addr, auth
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _board_node(addr: str, env: dict) -> str:
    code = ("import ray,json;ray.init(address=%r,logging_level='ERROR');"
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and 'fake-board' in n['Resources']]))"
            % addr)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])[0]


def test_two_node_sweep_routes_board_jobs_and_survives_a_killed_worker(tmp_path, cluster):
    addr, auth = cluster
    f = sweep_file(tmp_path, targets=("ort-cpu", "openvino-cpu"), precisions=("fp32", "int8"),
                   extra='[retries]\nmax = 2\n\n[[farm]]\nboard = "fake-board"\nmodels = ["digits"]\nduration_s = 0.2\n')
    proc = subprocess.Popen([*EDGEOPT, "sweep", str(f), "-o", "out", "--address", addr, "--json"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **auth})
    killed = None
    deadline = time.monotonic() + 600
    progress = tmp_path / "out" / "progress.json"
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        try:
            running = json.loads(progress.read_text())["running"]
        except (OSError, ValueError, KeyError):
            running = {}
        for jid, a in running.items():
            if a.get("attempt") == 1 and a.get("pid"):
                os.kill(a["pid"], signal.SIGKILL)  # the Ray worker process running this job
                killed = jid
                break
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=900)
    assert killed, f"no running job seen to kill: {stderr[-2000:]}"
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    jobs = {j["id"]: j for j in summary["jobs"]}
    assert len(jobs) == 8 and all(j["status"] == "ok" for j in jobs.values()), jobs
    assert jobs[killed]["attempts"] == 2 and "worker died" in jobs[killed]["retried"]
    assert all((tmp_path / "out" / j["out"] / "manifest.json").is_file() for j in jobs.values())
    # the board's jobs ran only on the node that offers the board
    board = _board_node(addr, auth)
    assert summary["farm"] and {r["where"]["node"] for r in summary["farm"]} == {board}
    assert all(j["where"]["node"] != board for j in jobs.values())  # no build on the board node (no CPUs there)
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert f"retried {killed}" in report and "board fake-board" in report
