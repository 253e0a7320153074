"""Output for people (issue 14.8/14.9): tables that fit the terminal without cutting a cell, progress lines
that never wrap mid-value, third-party output captured into the build log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manifest(ids):
    lat = [{"batch": b, "median_ms": 1.234 * b, "p99_ms": 2.5 * b} for b in (1, 8, 32)]
    return {"model": {"name": "resnet18-finetuned"}, "host": {"cpu": {"model": "Intel(R) Core(TM) i7-1185G7"}},
            "baseline": {"name": "torch-eager-fp32", "latency": lat, "accuracy": {"value": 0.925}},
            "artifacts": [{"id": i, "target": i.rsplit("-", 1)[0], "precision": i.rsplit("-", 1)[1],
                           "backend": "tensorrt" if "jetson" in i else i.split("-")[0], "status": "ok" if "jetson" not in i
                           else "not built here", "files": [{"path": "m.onnx", "sha256": "0" * 64, "bytes": 44_700_000}],
                           "accuracy": {"value": 0.9167}, "latency": lat if "jetson" not in i else [],
                           "speedup_vs_torch": {"1": 3.1, "8": 2.2, "32": 2.0},
                           "parity": {"max_abs": 1e-5, "cosine": 1.0, "tolerance": {"atol": 1e-4}},
                           "reason": "engine built on the device: run edgeopt device-compile" if "jetson" in i else None}
                          for i in ids]}


def test_summary_fits_80_columns_and_never_cuts_a_cell():
    from edgeopt.report.tables import summary_lines

    ids = ["openvino-cpu-fp32", "openvino-cpu-int8", "ort-cpu-int8", "jetson-orin-nano-int8", "jetson-orin-nx-fp16"]
    lines = summary_lines(_manifest(ids), 80)
    assert max(map(len, lines)) <= 80
    text = "\n".join(lines)
    for i in ids:  # jetson-orin-nano and jetson-orin-nx stay apart
        assert i in text
    assert "91.67" in text and "top-1 %" in text  # percent, not 0.9167
    wide = summary_lines(_manifest(ids), 80, wide=True)
    assert max(map(len, wide)) > 80 and "b32 p99" in wide[1]  # --wide: every column, however wide


def test_third_party_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path):
    """Python prints, C-level writes on fds 1 and 2, warnings and a logging handler made during the run are
    captured into OUT/logs/build.log; the reporter's lines still reach the terminal, cut to its width."""
    code = """
import logging, os, sys, warnings
from pathlib import Path
from edgeopt.report.progress import Reporter, capture_chatter
out = Path(sys.argv[1]); (out / 'logs').mkdir(parents=True)
with capture_chatter(out, show=len(sys.argv) > 2):
    r = Reporter()
    print('Statistics collection ━━━━ 100%')
    os.write(2, b'W1201 No CUDA runtime is found\\n')
    warnings.warn('a library warning')
    logging.getLogger('nncf-like').addHandler(logging.StreamHandler(sys.stdout))
    logging.getLogger('nncf-like').error('ValueError: Quantization parameter constraints')
    r.step('ort-cpu-int8: compiling ' + 'x' * 200)
print('table')
"""
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    shown = res.stdout + res.stderr
    for noise in ("Statistics collection", "W1201", "a library warning", "Quantization parameter"):
        assert noise not in shown
    assert "ort-cpu-int8: compiling" in res.stderr and res.stdout.strip() == "table"
    assert max(len(line) for line in shown.splitlines()) <= 80
    log = (tmp_path / "out" / "logs" / "build.log").read_text()
    for noise in ("Statistics collection", "W1201", "a library warning", "Quantization parameter"):
        assert noise in log
    # -v: shown as well (and still logged)
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "v"), "-v"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "W1201" in res.stderr and "Statistics collection" in res.stderr
    assert "W1201" in (tmp_path / "v" / "logs" / "build.log").read_text()
