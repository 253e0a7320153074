"""``edgeopt report``: Markdown + one self-contained HTML file, opened in a real headless browser (Debian's
chromium) to check that the page renders with every image loaded."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeopt.report.html import report

IDS = ("torch-eager-fp32", "ort-cpu-fp32", "openvino-cpu-fp32")
PLOTS = ("latency", "throughput", "tradeoff", "parity")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from edgeopt.pipeline.build import build
    from edgeopt.report.progress import Reporter

    out = tmp_path_factory.mktemp("report") / "OUT"
    manifest = build(None, out, targets=("ort-cpu", "openvino-cpu"), precisions=("fp32",),
                     reporter=Reporter(quiet=True))
    return out, manifest


def write_out(folder: Path, m: dict, built_out: Path) -> Path:
    """``m`` as the manifest of a copy of the built OUT (report refuses a manifest whose artifacts are not
    there); an "ok" record made up from another gets a copy of that one's folder."""
    shutil.copytree(built_out, folder, ignore=shutil.ignore_patterns("manifest.json", "report", "logs"))
    (folder / "manifest.json").write_text(json.dumps(m))
    for a in m["artifacts"]:
        if a["status"] == "ok" and not (folder / a["id"]).exists():
            shutil.copytree(folder / a["files"][0]["path"].split("/")[0], folder / a["id"])
    return folder


@pytest.fixture(scope="module")
def written(built):
    return report(built[0])


def chromium() -> str | None:
    for name in (os.environ.get("EDGEOPT_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def run_chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); CI installs it")
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp / "config"), "XDG_CACHE_HOME": str(tmp / "cache")}
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert p.returncode == 0, f"chromium failed ({p.returncode}): {p.stderr[-2000:]}"
    return p


# ---- files ---------------------------------------------------------------------------------------

def test_paths_and_pngs(built, written):
    out, _ = built
    assert written["folder"] == out / "report"
    assert written["markdown"] == out / "report" / "report.md" and written["html"] == out / "report" / "report.html"
    assert [p.name for p in written["images"]] == [f"{n}.png" for n in PLOTS]
    from matplotlib.image import imread

    for p in written["images"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert float(np.std(img[..., :3])) > 0.05, f"{p.name} looks blank"
    # Atomic writes leave no temp files behind.
    assert not [p.name for p in (out / "report").iterdir() if p.name.startswith(".")]


def test_markdown(built, written):
    out, m = built
    md = written["markdown"].read_text()
    assert md.startswith("# edgeopt report: digits-cnn")
    assert "| artifact | precision | status | size MB | top1 % | drop pt | parity max abs | parity cosine | " \
           "b1 median ms | b1 p99 ms | b1 vs torch |" in md
    for aid in IDS:
        assert re.search(rf"^\| {re.escape(aid)} \| fp32 \| (ok|baseline) \|", md, re.M), aid
    a = next(a for a in m["artifacts"] if a["id"] == "ort-cpu-fp32")
    lat = next(r for r in a["latency"] if r["batch"] == 1)
    row = next(line for line in md.splitlines() if line.startswith("| ort-cpu-fp32 |"))
    assert f"{a['parity']['cosine']:.6f}" in row
    assert (f"{a['speedup_vs_torch']['1']:.2f}x" if "speedup_withheld" not in a else "busy") in row
    assert (f"{lat['median_ms']:.3f}" if lat["median_ms"] < 1 else f"{lat['median_ms']:.2f}") in row
    for n in PLOTS:
        assert re.search(rf"!\[[^\]]+\]\({n}\.png\)", md), n
    assert m["host"]["cpu"]["model"] in md and "## Devices" in md
    assert "Pareto frontier" in md


def test_html_is_self_contained(built, written):
    out, m = built
    page = written["html"].read_text()
    assert not re.search(r"https?://", page), "the report refers to the network"
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs]
    assert len(refs) == len(PLOTS)
    for r in refs:
        png = base64.b64decode(r.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"matplotlib.org" not in png  # no metadata link in the pixels' file either
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert page.count('<table class="artifacts">') == 1
    for aid in IDS:
        assert f'<td class="l">{aid}</td>' in page
    assert m["host"]["cpu"]["model"] in page


def test_cli_report(run_cli, built, tmp_path):
    out, _ = built
    code, stdout, stderr = run_cli("report", out, "-o", tmp_path / "elsewhere")
    assert code == 0, stderr
    assert (tmp_path / "elsewhere" / "report.html").is_file() and "self-contained" in stdout
    code, _, stderr = run_cli("report", tmp_path)  # a folder without a manifest: a clear error
    assert code == 2 and "holds no manifest.json" in stderr


# ---- every status, flags, no accuracy -------------------------------------------------------------

def test_failed_flagged_and_unprofiled_artifacts(built, tmp_path):
    """INT8 artifacts may be flagged "slower than fp32 sibling" or fail with a reason; skipped ones have no
    figures at all. The report shows them all, and draws from what has figures."""
    built_out, m = built
    m = copy.deepcopy(m)
    fp32 = next(a for a in m["artifacts"] if a["id"] == "ort-cpu-fp32")
    slow = copy.deepcopy(fp32)
    slow.update(id="ort-cpu-int8", precision="int8", flags=["slower than fp32 sibling"])
    for r in slow["latency"]:
        r.update({k: r[k] * 1.5 for k in ("median_ms", "p90_ms", "p99_ms")})
        r["throughput_per_s"] /= 1.5
    slow["accuracy"] = {**slow["accuracy"], "value": slow["accuracy"]["value"] - 0.02}
    m["artifacts"] += [
        slow,
        {"id": "openvino-cpu-int8", "target": "openvino-cpu", "backend": "openvino", "precision": "int8",
         "status": "failed", "reason": "accuracy guard: top-1 dropped 4.1 points (limit 1)", "files": [],
         "parity": {**fp32["parity"], "passed": False, "cosine": 0.97, "max_abs": 0.8}},
        {"id": "tensorrt-orin-fp16", "target": "tensorrt-orin", "backend": "tensorrt", "precision": "fp16",
         "status": "not built here", "reason": "TensorRT engines are built on the device", "files": [],
         "meta": {"gpu": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0"}},
    ]
    out2 = write_out(tmp_path / "OUT", m, built_out)
    res = report(out2, tmp_path / "rep")
    md = res["markdown"].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| ort-cpu-int8 |"))
    note = row.rstrip(" |").rsplit("|", 1)[-1]
    assert "| int8 | ok |" in row and note.strip().split(";")[0] == "slower than fp32 sibling"
    row = next(line for line in md.splitlines() if line.startswith("| openvino-cpu-int8 |"))
    assert "| failed |" in row and "accuracy guard: top-1 dropped 4.1 points" in row
    assert "| tensorrt-orin-fp16 | fp16 | not built here |" in md
    assert "gpu Orin, compute capability 8.7, tensorrt 10.3.0" in md  # the device fingerprint of the engine
    page = res["html"].read_text()
    assert '<tr class="failed">' in page and '<tr class="not-built-here">' in page
    assert page.count("data:image/png;base64,") == len(PLOTS)


def test_no_accuracy_plots_cosine(built, tmp_path):
    built_out, m = built
    m = copy.deepcopy(m)
    m["baseline"]["accuracy"] = None
    for a in m["artifacts"]:
        a["accuracy"] = None
    res = report(write_out(tmp_path / "OUT", m, built_out))
    md = res["markdown"].read_text()
    assert "## Parity cosine versus latency (batch 1)" in md
    assert "| accuracy % |" in md


def test_no_baseline_and_no_profile(built, tmp_path):
    built_out, m = built
    m = copy.deepcopy(m)
    m["baseline"] = None
    for a in m["artifacts"]:
        a.pop("latency", None)
        a.pop("speedup_vs_torch", None)
    res = report(write_out(tmp_path / "OUT", m, built_out))
    assert [p.name for p in res["images"]] == ["parity.png"]
    assert "ort-cpu-fp32" in res["html"].read_text()


# ---- a real browser --------------------------------------------------------------------------------

CHECK_IMAGES = """<script>
addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  document.body.setAttribute('data-images', ok.length + '/' + imgs.length);
});
</script></body>"""


def test_renders_in_headless_chromium(written, tmp_path):
    page = written["html"].read_text()
    # The page as written: the DOM has the table and the figures.
    dom = run_chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", written["html"].as_uri()).stdout
    assert '<table class="artifacts">' in dom
    for aid in IDS:
        assert f">{aid}</td>" in dom
    assert dom.count("<img") == len(PLOTS)
    # A copy with a probe script (the report itself runs no script: its CSP forbids it). The CSP keeps
    # forbidding any image that is not a data: URI, so a reference to a file or the network would fail here.
    probe = tmp_path / "probe.html"
    assert "content=\"default-src 'none';" in page
    probe.write_text(page.replace("content=\"default-src 'none';", "content=\"default-src 'none'; "
                                  "script-src 'unsafe-inline';", 1).replace("</body>", CHECK_IMAGES, 1))
    dom = run_chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert found, "the probe script did not run"
    assert found.group(1) == found.group(2) == str(len(PLOTS)), f"images loaded: {found.group(0)}"


def test_screenshot_is_not_blank(written, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    # Tall enough to hold every plot: how much colour the first ones show depends on the measured figures
    # (a slow baseline squeezes the artifacts' bars), the parity bars do not.
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,4000", "--virtual-time-budget=5000",
                 written["html"].as_uri())
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (4000, 1200)
    first = img[:2000]  # the first screen
    assert float(first.std()) > 0.05, "the screenshot is blank"
    non_white = float(np.mean(first.min(axis=2) < 0.9))
    assert non_white > 0.02, f"only {non_white:.1%} of the page is not white"
    colored = int(np.sum(img.max(axis=2) - img.min(axis=2) > 0.3))  # plot bars and lines, not just text
    assert colored > 0.002 * 1200 * 2000, f"no coloured plot pixels on the page ({colored} pixels)"


def test_energy_column_and_plot_beside_latency(built, tmp_path):
    """Energy figures (as `profile` records them on a Jetson) show as mW and mJ/inference columns, an energy plot
    after the latency plot, and a note with the source, the nvpmodel mode and whether clocks were locked."""
    from edgeopt.report.tables import summary_lines

    built_out, m = built
    m = copy.deepcopy(m)
    for a in m["artifacts"]:
        for r in a.get("latency") or []:
            mj = 6500.0 * r["median_ms"] / 1000.0
            r["energy"] = {"source": "ina3221", "mean_mw": 6500.0, "seconds": 1.0, "calls": 100, "samples": 90,
                           "mj_per_call": round(mj, 4), "mj_per_inference": round(mj / r["batch"], 4)}
    m["timing"]["energy"] = {"source": "ina3221", "rails": ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"],
                             "basis": "VDD_IN (module input)", "nvpmodel": {"id": 0, "name": "15W"},
                             "clocks_locked": False, "warning": "clocks are not locked (cpu0 below their maximum)"}
    res = report(write_out(tmp_path / "OUT", m, built_out), tmp_path / "rep")
    md = res["markdown"].read_text()
    assert "b1 mW" in md and "b1 mJ/inference" in md and "## Energy per inference (batch 1)" in md
    assert md.index("## Latency per artifact") < md.index("## Energy per inference")
    assert "Energy: ina3221 (VDD_IN (module input))" in md and "nvpmodel 15W; clocks NOT locked" in md
    ort = next(a for a in m["artifacts"] if a["id"] == "ort-cpu-fp32")
    row = next(line for line in md.splitlines() if line.startswith("| ort-cpu-fp32 |"))
    assert "| 6500 |" in row and f"| {ort['latency'][0]['energy']['mj_per_inference']:.3g} |" in row
    assert res["html"].read_text().count("data:image/png;base64,") == len(PLOTS) + 1
    text = "\n".join(summary_lines(m, wide=True))
    assert "b1 mJ" in text and "Energy warning: clocks are not locked" in text
    plain = copy.deepcopy(built[1])
    assert "mJ" not in "\n".join(summary_lines(plain, wide=True))  # no energy measured: no column
