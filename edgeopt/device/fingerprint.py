"""The device fingerprint: what this machine is (Jetson model, JetPack / L4T, TensorRT, CUDA, GPU, power mode,
clocks, temperatures, memory). Standard library only; every field optional, it never fails.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from edgeopt import __version__


L4T_TO_JETPACK = {"35.5.0": "5.1.3", "35.6.0": "5.1.4", "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1",
                  "36.4.3": "6.2", "36.4.4": "6.2.1", "38.2.0": "7.0", "38.2.1": "7.0"}


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    exe = shutil.which(cmd[0]) or next((p for p in (f"/usr/sbin/{cmd[0]}", f"/usr/bin/{cmd[0]}")
                                        if os.access(p, os.X_OK)), None)
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "LC_ALL": "C"}, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(65536).decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a fingerprint field that cannot be read is None, never an error
        return None


def parse_tegra_release(text: str | None) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    if not m:
        return None
    rev = m.group(2).split(".")
    return ".".join([m.group(1), *rev, *(["0"] if len(rev) == 1 else [])])


def parse_nvpmodel(text: str | None) -> dict | None:
    """`nvpmodel -q` -> {'name': '15W', 'id': 2}."""
    if not text:
        return None
    m = re.search(r"NV Power Mode:\s*(.+)", text)
    ids = [ln.strip() for ln in text.splitlines() if ln.strip().isdigit()]
    if not m and not ids:
        return None
    return {"name": m.group(1).strip() if m else None, "id": int(ids[0]) if ids else None}


def parse_jetson_clocks(text: str | None) -> dict | None:
    """`jetson_clocks --show` -> GPU/EMC min/max/current and whether the clocks are pinned at maximum."""
    if not text:
        return None
    out: dict = {}
    for unit in ("GPU", "EMC"):
        m = re.search(rf"^{unit}\s+MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", text, re.M)
        if m:
            out[unit.lower()] = {"min_hz": int(m.group(1)), "max_hz": int(m.group(2)), "current_hz": int(m.group(3))}
    cpus = re.findall(r"^cpu\d+:.*?MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", text, re.M)
    if cpus:
        out["cpu_online"] = len(cpus)
        out["cpu_pinned"] = all(a == b for a, b, _ in cpus)
    gpu = out.get("gpu")
    out["active"] = (gpu["min_hz"] == gpu["max_hz"]) if gpu else None
    out["raw"] = text[:4000]
    return out


def _temperatures() -> dict | None:
    temps = {}
    base = Path("/sys/class/thermal")
    for zone in sorted(base.glob("thermal_zone*")) if base.is_dir() else []:
        name, raw = _read(str(zone / "type")), _read(str(zone / "temp"))
        if raw is None:
            continue
        try:
            temps[name or zone.name] = round(int(raw) / 1000.0, 1)
        except ValueError:
            continue
    return temps or None


def _dpkg_version(package: str) -> str | None:
    out = _run(["dpkg-query", "-W", "-f=${Version}", package])
    return out.strip() or None if out is not None else None


def _backend_facts() -> dict:
    """What each registered backend records about its system install (TensorRT's version, the GPU it sees)."""
    from edgeopt.backends import backends

    facts: dict = {}
    for b in backends():
        facts.update(_safe(lambda b=b: b.device_facts(_dpkg_version)) or {})
    return facts


def _gpu(facts: dict) -> dict | None:
    if facts.get("gpu"):
        return facts["gpu"]
    out = _run(["nvidia-smi", "--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader"])
    if out and out.strip():
        parts = [p.strip() for p in out.strip().splitlines()[0].split(",")]
        return {"name": parts[0], "compute_capability": parts[1] if len(parts) > 1 else None,
                "memory": parts[2] if len(parts) > 2 else None, "driver": parts[3] if len(parts) > 3 else None,
                "via": "nvidia-smi"}
    return None


def _cuda_version() -> str | None:
    text = _read("/usr/local/cuda/version.json")
    if text:
        try:
            return json.loads(text)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            pass
    return None


def _memory() -> dict | None:
    text = _read("/proc/meminfo")
    if not text:
        return None
    vals = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
            vals[k] = round(int(v.split()[0]) / 1024.0, 1)
    return {"total_mb": vals.get("MemTotal"), "available_mb": vals.get("MemAvailable"),
            "swap_total_mb": vals.get("SwapTotal"), "swap_free_mb": vals.get("SwapFree")} if vals else None


def device_fingerprint() -> dict:
    """What this device is and how it is set up, for every result measured on it. Never raises."""
    l4t = _safe(lambda: parse_tegra_release(_read("/etc/nv_tegra_release")))
    l4t_pkg = _safe(lambda: _dpkg_version("nvidia-l4t-core"))
    if l4t is None and l4t_pkg:
        l4t = l4t_pkg.split("-")[0]
    jetpack = _safe(lambda: _dpkg_version("nvidia-jetpack"))
    if jetpack is None and l4t:
        jetpack = L4T_TO_JETPACK.get(l4t)
    facts = _safe(_backend_facts) or {}
    fields = {
        "hostname": lambda: platform.node(),
        "model": lambda: _read("/proc/device-tree/model"),
        "arch": lambda: platform.machine(),
        "kernel": lambda: platform.release(),
        "python": lambda: platform.python_version(),
        "edgeopt": lambda: __version__,
        **{k: (lambda v=v: v) for k, v in facts.items() if k != "gpu"},
        "cuda": _cuda_version,
        "gpu": lambda: _gpu(facts),
        "memory": _memory,
        "nvpmodel": lambda: parse_nvpmodel(_run(["nvpmodel", "-q"])),
        "jetson_clocks": lambda: parse_jetson_clocks(_run(["jetson_clocks", "--show"])),
        "temperatures_c": _temperatures,
    }
    fp = {"l4t": l4t, "l4t_core_package": l4t_pkg, "jetpack": jetpack}
    for name, fn in fields.items():
        fp[name] = _safe(fn)
    fp["taken"] = _safe(lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return fp
