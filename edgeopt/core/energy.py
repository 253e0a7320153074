"""Energy while profiling: the board's power read during each contender's timed runs, as average power (mW) and
millijoules per inference. Standard library only (runs on devices).

Sources, first readable wins (:func:`open_meter`):

- Jetson (JetPack 5/6/7): the INA3221 monitors' hwmon nodes,
  ``/sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon*/in<N>_label`` (the rail), ``in<N>_input`` (bus
  voltage, mV) and ``curr<N>_input`` (mA); power = V x I. Orin Nano and Orin NX have one monitor at 1-0040 with
  VDD_IN (the module's input: what is reported), VDD_CPU_GPU_CV and VDD_SOC. AGX Orin has two (1-0040:
  VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0; 1-0041: VDDQ_VDD2_1V8AO, the others "NC") and no VDD_IN: the sum of its
  rails is reported, which leaves the carrier board out. A background thread polls them.
- Jetson where those nodes are not readable: ``tegrastats --interval MS``, whose lines carry
  ``RAIL <now>mW/<average>mW`` per rail (the same labels).
- x86: RAPL's powercap counters, ``/sys/class/powercap/intel-rapl:<N>/energy_uj`` of each package (wrapping at
  ``max_energy_range_uj``), read at the start and end of every timed block (often root-only since 2020).

The power mode is recorded beside the figures: ``nvpmodel``'s mode (``/var/lib/nvpmodel/status`` and
``/etc/nvpmodel.conf``, else ``nvpmodel -q``) and whether the clocks are locked (``jetson_clocks``: every CPU's
and the GPU's minimum frequency at its maximum); energy at unlocked clocks depends on what DVFS chose.

Every path is under ``root`` (default "/", or the environment's ``EDGEOPT_POWER_ROOT``) so tests use fake trees.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

ROOT_ENV = "EDGEOPT_POWER_ROOT"  # tests point this at a fake sysfs tree; "off" disables energy sampling
INA_DRIVERS = ("sys/bus/i2c/drivers/ina3221", "sys/bus/i2c/drivers/ina3221x")
RAPL = "sys/class/powercap"
TOTAL_RAILS = ("VDD_IN",)  # a module's input rail: the whole module, when present
POLL_S = 0.01
TEGRASTATS_MS = 20
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)mW/(\d+)mW")


def power_root() -> Path | None:
    value = os.environ.get(ROOT_ENV, "/")
    return None if value.lower() == "off" else Path(value)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _num(path: Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


# ---- INA3221 (hwmon) ----------------------------------------------------------------------------------------
def ina3221_rails(root: Path) -> list[dict]:
    """Every labelled channel of every INA3221 under ``root``: {'rail', 'volts', 'amps'} (paths), 'NC' left out."""
    rails = []
    for driver in INA_DRIVERS:
        base = root / driver
        for hwmon in sorted(base.glob("*-*/hwmon/hwmon*")):
            for label in sorted(hwmon.glob("in*_label")):
                n = label.name[2:-len("_label")]
                name = _read(label)
                volts, amps = hwmon / f"in{n}_input", hwmon / f"curr{n}_input"
                if not name or name.upper() == "NC" or name.lower().startswith("sum") or not amps.exists():
                    continue
                rails.append({"rail": name, "volts": volts, "amps": amps, "device": hwmon.parent.parent.name})
    return rails


def total_basis(names: list[str]) -> tuple[list[str], str]:
    """Which rails make the reported total: the module input rail when there is one, else the sum of all."""
    for total in TOTAL_RAILS:
        if total in names:
            return [total], f"{total} (module input)"
    return list(names), "sum of " + " + ".join(names) + " (module rails; carrier board not included)"


class _Sampled:
    """A meter that samples power (mW) at times (perf_counter) in the background; energy over windows is the
    mean of the samples inside them times their length."""

    source = ""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rails: list[str] = []
        self.basis = ""
        self.error: str | None = None

    def stamp(self) -> tuple[float, float | None]:
        return time.perf_counter(), None

    def __enter__(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"edgeopt-{self.source}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return False

    def _run(self) -> None:
        raise NotImplementedError

    def energy(self, spans: list[tuple[tuple, tuple]], calls: int) -> dict | None:
        seconds = sum(b[0] - a[0] for a, b in spans)
        inside = [mw for t, mw in list(self.samples) if any(a[0] <= t <= b[0] for a, b in spans)]
        if not inside or seconds <= 0 or calls <= 0:
            return None
        mean_mw = sum(inside) / len(inside)
        return _figures(self.source, mean_mw * seconds, seconds, calls, len(inside))  # mW x s = mJ


class Ina3221Meter(_Sampled):
    source = "ina3221"

    def __init__(self, root: Path, rails: list[dict], poll_s: float = POLL_S):
        super().__init__()
        self.poll_s = poll_s
        names = [r["rail"] for r in rails]
        use, self.basis = total_basis(names)
        self._rails = [r for r in rails if r["rail"] in use]
        self.rails = names

    def read_mw(self) -> float | None:
        total = 0.0
        for r in self._rails:
            v, i = _num(r["volts"]), _num(r["amps"])
            if v is None or i is None:
                return None
            total += v * i / 1000.0  # mV x mA = uW
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            mw = self.read_mw()
            if mw is not None:
                self.samples.append((time.perf_counter(), mw))
            self._stop.wait(self.poll_s)


# ---- tegrastats ---------------------------------------------------------------------------------------------
def parse_tegrastats(line: str) -> dict[str, int]:
    """Rail -> instantaneous mW from one tegrastats line (``VDD_IN 6124mW/5980mW ...``)."""
    return {name: int(now) for name, now, _avg in _RAIL.findall(line)}


class TegrastatsMeter(_Sampled):
    source = "tegrastats"

    def __init__(self, command: list[str]):
        super().__init__()
        self.command = command
        self._proc: subprocess.Popen | None = None

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        return super().__exit__(*exc)

    def _run(self) -> None:
        try:
            self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
            self.error = f"tegrastats did not start: {exc}"
            return
        for line in self._proc.stdout:  # type: ignore[union-attr]
            if self._stop.is_set():
                break
            rails = parse_tegrastats(line[:4096])
            if not rails:
                continue
            if not self.rails:
                self.rails = list(rails)
                self._use, self.basis = total_basis(self.rails)
            self.samples.append((time.perf_counter(), float(sum(rails.get(r, 0) for r in self._use))))


# ---- RAPL (x86) ---------------------------------------------------------------------------------------------
def rapl_zones(root: Path) -> list[dict]:
    """The top-level RAPL zones (packages; psys where present) whose counter this process can read."""
    zones = []
    for zone in sorted((root / RAPL).glob("intel-rapl:*")):
        if zone.name.count(":") != 1:
            continue  # subzones (core, uncore, dram) are inside their package
        name, energy, top = _read(zone / "name"), _num(zone / "energy_uj"), _num(zone / "max_energy_range_uj")
        if name and energy is not None and top:
            zones.append({"name": name, "energy": zone / "energy_uj", "max": top})
    psys = [z for z in zones if z["name"] == "psys"]
    return psys or zones  # psys covers the packages: never both


class RaplMeter:
    """Cumulative counters: a stamp reads them; energy over a window is the wrap-corrected difference."""

    source = "rapl"

    def __init__(self, zones: list[dict]):
        self.zones = zones
        self.rails = [z["name"] for z in zones]
        self.basis = " + ".join(self.rails) + " (RAPL: the CPU package(s), not the whole machine)"
        self.error = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def stamp(self) -> tuple[float, list[float] | None]:
        return time.perf_counter(), [_num(z["energy"]) for z in self.zones]

    def energy(self, spans: list[tuple[tuple, tuple]], calls: int) -> dict | None:
        seconds, uj = 0.0, 0.0
        for (t0, e0), (t1, e1) in spans:
            if e0 is None or e1 is None or any(v is None for v in [*e0, *e1]):
                return None
            seconds += t1 - t0
            uj += sum(counter_delta(a, b, z["max"]) for a, b, z in zip(e0, e1, self.zones))
        if seconds <= 0 or calls <= 0:
            return None
        return _figures(self.source, uj / 1000.0, seconds, calls, len(spans) * 2)


def counter_delta(before: float, after: float, max_range: float) -> float:
    """A RAPL counter's increase, across one wrap-around at ``max_range`` (max_energy_range_uj)."""
    return after - before if after >= before else after + (max_range - before)


def _figures(source: str, mj: float, seconds: float, calls: int, samples: int) -> dict:
    """Energy ``mj`` over ``seconds`` of timed runs (``calls`` of them): average mW and mJ per call."""
    return {"source": source, "mean_mw": round(mj / seconds, 1), "seconds": round(seconds, 4), "calls": calls,
            "samples": samples, "mj_per_call": round(mj / calls, 4)}


# ---- choosing a source, and the power mode ----------------------------------------------------------------------
def is_jetson(root: Path) -> bool:
    return (root / "etc/nv_tegra_release").is_file() or any((root / d).is_dir() for d in INA_DRIVERS)


def open_meter(root: Path | None = None, tegrastats: list[str] | str | None = None):
    """The first readable source (INA3221 nodes, tegrastats on a Jetson, RAPL), or None. ``tegrastats``: the
    command to run instead of the ``tegrastats`` on PATH (``--interval MS`` is appended)."""
    root = power_root() if root is None else Path(root)
    if root is None:
        return None
    rails = ina3221_rails(root)
    if rails:
        meter = Ina3221Meter(root, rails)
        if meter.read_mw() is not None:
            return meter
    if is_jetson(root):
        exe = tegrastats or shutil.which("tegrastats")
        if exe:
            prefix = [exe] if isinstance(exe, str) else list(exe)
            return TegrastatsMeter([*prefix, "--interval", str(TEGRASTATS_MS)])
    zones = rapl_zones(root)
    return RaplMeter(zones) if zones else None


def _nvpmodel(root: Path) -> dict | None:
    status = _read(root / "var/lib/nvpmodel/status")
    match = re.search(r"pmode:(\d+)", status or "")
    if match:
        mode = int(match.group(1))
        conf = _read(root / "etc/nvpmodel.conf") or ""
        name = re.search(rf"<\s*POWER_MODEL\s+ID={mode}\s+NAME=(\S+?)\s*>", conf)
        return {"id": mode, "name": name.group(1) if name else None, "via": "/var/lib/nvpmodel/status"}
    exe = shutil.which("nvpmodel") if str(root) == "/" else None
    if exe:
        try:
            out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        name = re.search(r"NV Power Mode:\s*(\S+)", out)
        ids = re.findall(r"^\s*(\d+)\s*$", out, re.M)
        if name:
            return {"id": int(ids[0]) if ids else None, "name": name.group(1), "via": "nvpmodel -q"}
    return None


def clocks_locked(root: Path) -> dict:
    """Whether jetson_clocks (or anything else) pinned the clocks: each CPU's and each GPU devfreq node's minimum
    frequency at its maximum. {'locked': bool | None, 'unlocked': [what is not], 'checked': n}."""
    unlocked, checked = [], 0
    for cpu in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        lo, hi = _num(cpu / "scaling_min_freq"), _num(cpu / "cpuinfo_max_freq")
        if lo is None or hi is None:
            continue
        checked += 1
        if lo < hi:
            unlocked.append(cpu.parent.name)
    for dev in sorted((root / "sys/class/devfreq").glob("*")):
        if not re.search(r"ga10b|gv11b|gp10b|gpu", dev.name):
            continue
        lo, hi = _num(dev / "min_freq"), _num(dev / "max_freq")
        avail = (_read(dev / "available_frequencies") or "").split()
        top = max((float(a) for a in avail if a.replace(".", "").isdigit()), default=hi)
        if lo is None or top is None:
            continue
        checked += 1
        if lo < top:
            unlocked.append(f"gpu ({dev.name})")
    return {"locked": (not unlocked) if checked else None, "unlocked": unlocked, "checked": checked}


def power_context(meter=None, root: Path | None = None) -> dict | None:
    """What the manifest records beside energy figures: the source and its rails, and on a Jetson the nvpmodel
    mode and whether the clocks are locked, with a warning when they are not. None without a source."""
    root = power_root() if root is None else Path(root)
    if root is None or meter is None:
        return None
    out = {"source": meter.source, "rails": list(meter.rails), "basis": meter.basis}
    if meter.source in ("ina3221", "tegrastats") or is_jetson(root):
        out["nvpmodel"] = _nvpmodel(root)
        clocks = clocks_locked(root)
        out["clocks_locked"] = clocks["locked"]
        if clocks["locked"] is False:
            out["warning"] = ("clocks are not locked (" + ", ".join(clocks["unlocked"][:4]) + " below their "
                              "maximum): energy and latency depend on what DVFS chose; run `sudo jetson_clocks` "
                              "before profiling for figures that repeat")
    return out


def note_power(run: dict, results: dict, warn) -> None:
    """Put the energy figures' source and power mode (any profile's ``power``) into the timing run record, and
    ``warn`` when a Jetson's clocks were not locked."""
    power = next((p["power"] for p in results.values() if p.get("power")), None)
    if power:
        run["energy"] = power
        if power.get("warning"):
            warn(f"Energy: {power['warning']}.")
