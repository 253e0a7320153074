"""``edgeopt select``: the fastest artifact within every budget, why the others lost, and a non-zero exit (9)
when nothing qualifies. On a synthetic manifest (exact numbers) and on the real example build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeopt.errors import UserInputError
from edgeopt.core.manifest import SCHEMA, validate
from edgeopt.config.budgets import Budgets
from edgeopt.ship.select import NoArtifactQualifiesError, select


def _lat(batch: int, median: float, p99: float) -> dict:
    return {"batch": batch, "iterations": 100, "median_ms": median, "mean_ms": median, "p90_ms": (median + p99) / 2,
            "p95_ms": p99, "p99_ms": p99, "min_ms": median * 0.9, "max_ms": p99 * 1.1, "std_ms": 0.1, "cv": 0.05,
            "throughput_per_s": batch * 1000.0 / median, "unstable": False}


def _art(aid: str, target: str, precision: str, *, median=None, p99=None, mb=4.0, acc=None, cosine=0.99999,
         status="ok", reason=None, flags=(), b8=None) -> dict:
    backend = "onnxruntime" if target.startswith("ort") else "openvino"
    files = [{"path": f"{aid}/artifact.json", "sha256": "0" * 64, "bytes": 900},
             {"path": f"{aid}/model.bin", "sha256": "1" * 64, "bytes": int(mb * 1e6)}]
    rec = {"id": aid, "target": target, "backend": backend, "device": "CPU", "precision": precision,
           "status": status, "reason": reason, "flags": list(flags), "files": files if status == "ok" else []}
    if status == "ok":
        rec["parity"] = {"max_abs": 1e-3, "cosine": cosine, "passed": True, "samples": 6,
                         "tolerance": {"atol": None, "rtol": 0.0, "min_cosine": 0.99}, "reason": None, "outputs": {}}
        rec["accuracy"] = None if acc is None else {"metric": "top1", "value": acc, "top1": acc, "samples": 1000}
        rec["latency"] = [_lat(1, median, p99)] + ([_lat(8, *b8)] if b8 else [])
    return rec


def synthetic(with_accuracy: bool = True) -> dict:
    """Baseline top-1 90%. Batch-1 medians: ort int8 1.0 < ov fp32 1.5 < ov int8 1.8 < ort fp32 2.0."""
    a = (lambda v: v) if with_accuracy else (lambda v: None)
    m = {
        "schema": SCHEMA, "edgeopt_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00",
        "host": {"hostname": "test", "os": "Linux", "python": "3.11", "cpu": {"model": "Test CPU", "flags": []},
                 "libraries": {}},
        "recipe": "synthetic", "model": {"name": "synthetic"}, "export": None, "reference": None,
        "calibration": None, "evaluation": None,
        "baseline": {"name": "torch-eager-fp32", "latency": [_lat(1, 4.0, 6.0), _lat(8, 20.0, 25.0)],
                     "accuracy": {"metric": "top1", "value": 0.90} if with_accuracy else None},
        "artifacts": [
            _art("ort-cpu-fp32", "ort-cpu", "fp32", median=2.0, p99=3.0, mb=4.0, acc=a(0.90), b8=(9.0, 11.0)),
            _art("ort-cpu-int8", "ort-cpu", "int8", median=1.0, p99=1.5, mb=1.0, acc=a(0.88), cosine=0.995),
            _art("openvino-cpu-fp32", "openvino-cpu", "fp32", median=1.5, p99=30.0, mb=4.0, acc=a(0.90),
                 b8=(8.0, 9.0)),
            _art("openvino-cpu-int8", "openvino-cpu", "int8", median=1.8, p99=2.5, mb=1.0, acc=a(0.897),
                 cosine=0.996, flags=("slower than fp32 sibling",)),
            _art("openvino-cpu-bf16", "openvino-cpu", "bf16", status="failed",
                 reason="openvino-cpu-bf16 differs from PyTorch: logits: cosine 0.91 < 0.995"),
        ],
    }
    validate(m)
    return m


def write_out(folder: Path, manifest: dict) -> Path:
    """The manifest and, as a build leaves them, the files it lists (select refuses an OUT whose artifacts
    disagree with its manifest): artifact.json padded to its recorded size, other files sparse."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for a in manifest["artifacts"]:
        for f in a["files"]:
            path = folder / f["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.name == "artifact.json":
                path.write_text(json.dumps({"id": a["id"]}).ljust(f["bytes"]))
            else:
                with open(path, "wb") as fh:
                    fh.truncate(f["bytes"])
    return folder


@pytest.fixture
def out(tmp_path):
    return write_out(tmp_path / "OUT", synthetic())


def reasons(res: dict) -> dict[str, str]:
    return {c["id"]: "; ".join(c["reasons"]) for c in res["candidates"]}


# ---- synthetic manifest ----------------------------------------------------------------------------

def test_no_budget_picks_the_fastest_ok_artifact(out):
    res = select(out)
    assert res["selected"] == "ort-cpu-int8"
    assert res["artifact"]["id"] == "ort-cpu-int8" and res["batch"] == 1
    why = reasons(res)
    assert why["ort-cpu-int8"] == ""
    assert why["openvino-cpu-fp32"] == "slower than ort-cpu-int8: median 1.500 ms vs 1.000 ms at batch 1"
    assert "status failed" in why["openvino-cpu-bf16"] and "cosine 0.91" in why["openvino-cpu-bf16"]


def test_budgets_pick_the_fastest_that_meets_all_and_say_why_others_lost(out):
    res = select(out, max_drop=1, p99_ms=25)
    # ort int8 drops 2 points, openvino fp32 misses the p99 budget; the flagged int8 is still the fastest left.
    assert res["selected"] == "openvino-cpu-int8"
    why = reasons(res)
    assert why["ort-cpu-int8"] == "accuracy drop 2.00 pt > 1 pt budget (88.00% vs baseline 90.00%)"
    assert why["openvino-cpu-fp32"] == "p99 30.000 ms > 25 ms budget at batch 1"
    assert why["ort-cpu-fp32"].startswith("slower than openvino-cpu-int8: median 2.000 ms vs 1.800 ms")
    assert why["openvino-cpu-bf16"].startswith("status failed")
    verdicts = {c["id"]: c["qualifies"] for c in res["candidates"]}
    assert verdicts == {"openvino-cpu-int8": True, "ort-cpu-fp32": True, "ort-cpu-int8": False,
                        "openvino-cpu-fp32": False, "openvino-cpu-bf16": False}
    assert res["candidates"][0]["id"] == "openvino-cpu-int8"  # winner first, then by speed


def test_a_flagged_artifact_only_loses_on_speed(out, tmp_path):
    m = synthetic()
    slow = next(a for a in m["artifacts"] if a["id"] == "openvino-cpu-int8")
    slow["latency"] = [_lat(1, 1.9, 2.5)]  # flagged, but still faster than ort fp32 (2.0): picked
    assert select(write_out(tmp_path / "o2", m), max_drop=1, p99_ms=25)["selected"] == "openvino-cpu-int8"
    slow["latency"] = [_lat(1, 2.1, 2.5)]
    res = select(write_out(tmp_path / "o3", m), max_drop=1, p99_ms=25)
    assert res["selected"] == "ort-cpu-fp32"
    assert reasons(res)["openvino-cpu-int8"].startswith("slower than ort-cpu-fp32")


def test_target_filter(out):
    res = select(out, target="openvino-cpu")
    assert res["selected"] == "openvino-cpu-fp32"
    assert reasons(res)["ort-cpu-int8"] == "target ort-cpu, not openvino-cpu"
    assert select(out, target="openvino-cpu", p99_ms=25)["selected"] == "openvino-cpu-int8"


def test_unknown_target_is_a_user_error(out):
    with pytest.raises(UserInputError, match="No artifact in this build is for target 'tensorrt-orin'"):
        select(out, target="tensorrt-orin")


def test_max_size(out):
    res = select(out, max_size_mb=2, max_drop=1)
    assert res["selected"] == "openvino-cpu-int8"
    assert reasons(res)["ort-cpu-fp32"] == "size 4.00 MB > 2 MB budget"  # artifact.json is not counted
    assert "size 4.00 MB > 2 MB budget" in reasons(res)["openvino-cpu-fp32"]


def test_min_cosine(out):
    res = select(out, min_cosine=0.999)
    assert res["selected"] == "openvino-cpu-fp32"
    assert reasons(res)["ort-cpu-int8"] == "parity cosine 0.995000 < 0.999 budget"


def test_min_cosine_does_not_apply_to_an_artifact_judged_by_its_detections(tmp_path):
    """A detector whose detections did not match element-wise is judged by mAP; its raw-tensor cosine (0.72 on a
    good Faster R-CNN export) must neither pass nor fail a --min-cosine budget by accident."""
    m = synthetic()
    ov = next(a for a in m["artifacts"] if a["id"] == "openvino-cpu-fp32")
    ov["parity"].update(cosine=0.72, judged_by="detections", detections={"map50": 0.995, "map50_95": 0.98})
    res = select(write_out(tmp_path / "OUT", m), min_cosine=0.999)
    why = reasons(res)["openvino-cpu-fp32"]
    assert "judged by detections" in why and "--max-drop" in why
    assert res["selected"] == "ort-cpu-fp32"


def test_batch_reads_latency_at_that_batch(out):
    res = select(out, batch=8, p99_ms=10)
    assert res["selected"] == "openvino-cpu-fp32" and res["batch"] == 8
    why = reasons(res)
    assert why["ort-cpu-int8"] == "not profiled at batch 8 (profiled at [1])"
    assert why["ort-cpu-fp32"] == "p99 11.000 ms > 10 ms budget at batch 8"


def test_nothing_qualifies_raises_with_every_reason(out):
    with pytest.raises(NoArtifactQualifiesError) as info:
        select(out, p99_ms=1)
    exc = info.value
    assert exc.exit_code == 9
    assert "No artifact meets the budgets (p99 <= 1 ms at batch 1)" in exc.problem
    for aid in ("ort-cpu-fp32", "ort-cpu-int8", "openvino-cpu-fp32", "openvino-cpu-int8", "openvino-cpu-bf16"):
        assert aid in exc.problem
    assert "p99 1.500 ms > 1 ms budget" in exc.problem
    assert exc.fix and exc.result["selected"] is None and len(exc.result["candidates"]) == 5


def test_missing_accuracy_is_a_reason_not_a_crash(tmp_path):
    out = write_out(tmp_path / "OUT", synthetic(with_accuracy=False))
    assert select(out)["selected"] == "ort-cpu-int8"  # no accuracy budget: accuracy not needed
    with pytest.raises(NoArtifactQualifiesError) as info:
        select(out, max_drop=1)
    for c in info.value.result["candidates"]:
        if c["status"] == "ok":
            assert c["reasons"] == ["no accuracy figure, so the --max-drop budget cannot be checked (the recipe has "
                                    "no [evaluation] data)"]
    # Accuracy on the artifacts but not on the baseline: the drop cannot be measured either.
    m = synthetic()
    m["baseline"]["accuracy"] = None
    with pytest.raises(NoArtifactQualifiesError, match="no PyTorch baseline accuracy"):
        select(write_out(tmp_path / "o2", m), max_drop=1)


def test_budgets_from_recipe_table():
    b = Budgets.from_dict({"max-drop": 1, "p99_ms": 25, "target": "ort-cpu"})
    assert (b.max_drop, b.p99_ms, b.target, b.batch) == (1, 25, "ort-cpu", 1)
    with pytest.raises(UserInputError, match="Unknown key"):
        Budgets.from_dict({"max_latency": 3})
    with pytest.raises(UserInputError, match="not a number"):
        Budgets.from_dict({"p99_ms": "fast"})
    with pytest.raises(UserInputError, match="positive integer"):
        Budgets(batch=0)


# ---- CLI ---------------------------------------------------------------------------------------------

def test_cli_select_is_registered():
    from edgeopt.cli.main import main

    assert {"select", "report"} <= set(main.commands)


def test_cli_select_prints_the_winner_and_why_others_lost(run_cli, out):
    code, stdout, stderr = run_cli("select", out, "--max-drop", "1", "--p99-ms", "25")
    assert code == 0, stderr
    assert "selected: openvino-cpu-int8" in stdout
    flat = " ".join(stdout.split())  # reasons are word-wrapped to the terminal's width
    assert "accuracy drop 2.00 pt > 1 pt budget" in flat and "p99 30.000 ms > 25 ms budget" in flat


def test_cli_select_exits_non_zero_when_none_qualifies(run_cli, out):
    code, stdout, stderr = run_cli("select", out, "--max-drop", "0.1", "--p99-ms", "2", "--target", "openvino-cpu")
    assert code == 9
    assert "error: No artifact meets the budgets" in stderr
    assert "openvino-cpu-int8: p99 2.500 ms > 2 ms budget at batch 1; accuracy drop 0.30 pt > 0.1 pt budget" in stderr
    assert "ort-cpu-int8: target ort-cpu, not openvino-cpu" in stderr


def test_cli_select_gate_in_a_subprocess(out):
    """What a CI job sees: exit status 9, one paragraph on stderr, no traceback; --json still prints the figures."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "edgeopt", "select", str(out), "--p99-ms", "1", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 9, p.stderr
    assert "Traceback" not in p.stderr
    assert "error: No artifact meets the budgets" in p.stderr and "fix:" in p.stderr
    res = json.loads(p.stdout)
    assert res["selected"] is None and {c["id"] for c in res["candidates"]} >= {"ort-cpu-int8"}
    p = subprocess.run([sys.executable, "-m", "edgeopt", "select", str(out), "--max-size-mb", "2", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["selected"] == "ort-cpu-int8"


def test_cli_missing_accuracy_and_unknown_target(run_cli, tmp_path):
    out = write_out(tmp_path / "OUT", synthetic(with_accuracy=False))
    code, _, stderr = run_cli("select", out, "--max-drop", "1")
    assert code == 9 and "no accuracy figure" in stderr
    code, _, stderr = run_cli("select", out, "--target", "nope")
    assert code == 2 and "No artifact in this build is for target 'nope'" in stderr


# ---- the real example build -------------------------------------------------------------------------

def test_real_build(example_out):
    out, manifest = example_out
    ok = [a for a in manifest["artifacts"] if a["status"] == "ok" and a.get("latency")]
    assert ok
    fastest = min(ok, key=lambda a: (next(r for r in a["latency"] if r["batch"] == 1)["median_ms"], a["id"]))
    res = select(out, p99_ms=10_000)
    assert res["selected"] == fastest["id"]
    assert all(c["qualifies"] for c in res["candidates"] if c["status"] == "ok")
    res = select(out, max_drop=1)
    assert next(c for c in res["candidates"] if c["id"] == res["selected"])["drop"] <= 1
    target = ok[0]["target"]
    res = select(out, target=target, max_drop=1)
    assert res["artifact"]["target"] == target
    with pytest.raises(NoArtifactQualifiesError) as info:
        select(out, p99_ms=1e-6)
    assert all(any("p99" in r for r in c["reasons"]) for c in info.value.result["candidates"] if c["status"] == "ok")


def test_build_ends_with_the_recipes_select_budgets(run_cli, tmp_path):
    """`edgeopt build` with a [select] section: the winner is recorded; an impossible budget exits 9."""
    import json as _json

    from edgeopt.example import example_dict

    d = example_dict()
    data = d["calibration"]["source"].rsplit("/", 1)[0]
    base = (f'[model]\nname = "digits-cnn"\nsource = "edgeopt.example.model:build"\n'
            f'checkpoint = "{d["model"]["checkpoint"]}"\noutputs = ["logits"]\n'
            '[[inputs]]\nname = "image"\nshape = ["batch", 1, 8, 8]\n[dims.batch]\nmin = 1\nmax = 8\n'
            f'[evaluation]\nsource = "{data}/heldout.npz"\nsize = "all"\n'
            '[profile]\nbatches = [1]\nduration_s = 0.2\nmin_iterations = 5\n')
    ok = tmp_path / "ok.toml"
    ok.write_text('targets = ["ort-cpu"]\nprecisions = ["fp32"]\n' + base + "[select]\nmax_drop = 1.0\n")
    code, out, err = run_cli("build", ok, "-o", tmp_path / "a", "--json")
    assert code == 0, err
    assert _json.loads(out)["selection"]["selected"] == "ort-cpu-fp32"
    strict = tmp_path / "strict.toml"
    strict.write_text('targets = ["ort-cpu"]\nprecisions = ["fp32"]\n' + base + "[select]\np99_ms = 0.000001\n")
    code, out, err = run_cli("build", strict, "-o", tmp_path / "b")
    assert code == 9 and "[select] budgets" in err
    assert "p99" in out
