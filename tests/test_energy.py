"""Energy per inference (issue 22): the INA3221 hwmon nodes of Orin Nano / Orin NX / AGX Orin (fake sysfs trees),
tegrastats (fixtures in its format, replayed), RAPL's counters with wrap-around, the nvpmodel mode and locked
clocks; and `profile` / `device-compile` on the double-backed Jetson reporting mW and mJ per inference.

The trees and tegrastats lines are written here in the documented layouts; none is a device's measurement."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from edgeopt.core import energy

DATA = Path(__file__).parent / "data" / "energy"

# board -> {i2c device: [(label, mV, mA)]}; "NC" channels are not connected
LAYOUTS = {
    "orin-nano": {"1-0040": [("VDD_IN", 5000, 1300), ("VDD_CPU_GPU_CV", 5000, 300), ("VDD_SOC", 5000, 280)]},
    "orin-nx": {"1-0040": [("VDD_IN", 5000, 2100), ("VDD_CPU_GPU_CV", 5000, 700), ("VDD_SOC", 5000, 400)]},
    "agx-orin": {"1-0040": [("VDD_GPU_SOC", 5000, 900), ("VDD_CPU_CV", 5000, 200), ("VIN_SYS_5V0", 5000, 700)],
                 "1-0041": [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5000, 100), ("NC", 0, 0)]},
}
TOTAL_MW = {"orin-nano": 6500.0, "orin-nx": 10500.0, "agx-orin": 9500.0}


def jetson_tree(root: Path, board: str, locked: bool = False, mode: tuple[int, str] = (0, "15W")) -> Path:
    for n, (device, channels) in enumerate(LAYOUTS[board].items()):
        hwmon = root / "sys/bus/i2c/drivers/ina3221" / device / "hwmon" / f"hwmon{n + 1}"
        hwmon.mkdir(parents=True)
        for ch, (label, mv, ma) in enumerate(channels, start=1):
            (hwmon / f"in{ch}_label").write_text(label + "\n")
            (hwmon / f"in{ch}_input").write_text(f"{mv}\n")
            (hwmon / f"curr{ch}_input").write_text(f"{ma}\n")
            (hwmon / f"curr{ch}_max").write_text("8000\n")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    (root / "etc/nvpmodel.conf").write_text(f"< POWER_MODEL ID={mode[0]} NAME={mode[1]} >\nCPU_ONLINE CORE_0 1\n"
                                            "< POWER_MODEL ID=1 NAME=7W >\n")
    (root / "var/lib/nvpmodel").mkdir(parents=True)
    (root / "var/lib/nvpmodel/status").write_text(f"pmode:{mode[0]:04d} fmode:quiet\n")
    for c in range(2):
        freq = root / f"sys/devices/system/cpu/cpu{c}/cpufreq"
        freq.mkdir(parents=True)
        (freq / "cpuinfo_max_freq").write_text("1510400\n")
        (freq / "scaling_min_freq").write_text("1510400\n" if locked else "115200\n")
    gpu = root / "sys/class/devfreq/17000000.ga10b"
    gpu.mkdir(parents=True)
    (gpu / "max_freq").write_text("624750000\n")
    (gpu / "min_freq").write_text("624750000\n" if locked else "306000000\n")
    (gpu / "available_frequencies").write_text("306000000 408000000 510000000 624750000\n")
    return root


# ---- INA3221 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("board", list(LAYOUTS))
def test_ina3221_layouts(tmp_path, board):
    root = jetson_tree(tmp_path, board)
    meter = energy.open_meter(root)
    assert isinstance(meter, energy.Ina3221Meter)
    assert "NC" not in meter.rails and len(meter.rails) == (4 if board == "agx-orin" else 3)
    assert meter.read_mw() == TOTAL_MW[board]
    if board == "agx-orin":
        assert meter.basis.startswith("sum of VDD_GPU_SOC") and "carrier board not included" in meter.basis
    else:
        assert meter.basis == "VDD_IN (module input)"
    with meter:
        a = meter.stamp()
        time.sleep(0.08)
        b = meter.stamp()
    figures = meter.energy([(a, b)], calls=8)
    assert figures["mean_mw"] == TOTAL_MW[board] and figures["samples"] >= 2
    assert figures["mj_per_call"] == pytest.approx(TOTAL_MW[board] * (b[0] - a[0]) / 8, rel=1e-3)
    ctx = energy.power_context(meter, root)
    assert ctx["nvpmodel"] == {"id": 0, "name": "15W", "via": "/var/lib/nvpmodel/status"}
    assert ctx["clocks_locked"] is False and "sudo jetson_clocks" in ctx["warning"]


def test_locked_clocks_and_another_mode(tmp_path):
    root = jetson_tree(tmp_path, "orin-nano", locked=True, mode=(1, "7W"))
    ctx = energy.power_context(energy.open_meter(root), root)
    assert ctx["clocks_locked"] is True and "warning" not in ctx and ctx["nvpmodel"]["name"] == "7W"


def test_a_meter_sees_only_the_windows_it_is_given(tmp_path):
    root = jetson_tree(tmp_path, "orin-nano")
    meter = energy.open_meter(root)
    vdd_in = next(root.glob("sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon*/curr1_input"))
    with meter:
        a = meter.stamp()
        time.sleep(0.06)
        b = meter.stamp()
        vdd_in.write_text("2600\n")  # twice the current outside the window
        time.sleep(0.06)
    assert meter.energy([(a, b)], 1)["mean_mw"] == 6500.0
    assert max(mw for _, mw in meter.samples) == 13000.0
    assert meter.energy([(b, b)], 1) is None  # no sample inside: no figure rather than a guess


# ---- tegrastats -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("board,first", [("orin-nano", {"VDD_IN": 6512, "VDD_CPU_GPU_CV": 1520, "VDD_SOC": 1401}),
                                         ("orin-nx", {"VDD_IN": 10512, "VDD_CPU_GPU_CV": 3504, "VDD_SOC": 2001}),
                                         ("agx-orin", {"VDD_GPU_SOC": 4510, "VDD_CPU_CV": 1003, "VIN_SYS_5V0": 3502,
                                                       "VDDQ_VDD2_1V8AO": 501})])
def test_tegrastats_lines_of_the_three_boards(tmp_path, board, first):
    fixture = DATA / f"tegrastats-{board}.txt"
    lines = fixture.read_text().splitlines()
    assert energy.parse_tegrastats(lines[0]) == first  # "NVJPG1 off", "APE 200", "GR3D_FREQ 61%@[624]" are not rails
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36\n")  # a Jetson whose INA3221 nodes are not readable
    meter = energy.open_meter(tmp_path, tegrastats=[sys.executable, str(DATA / "fake_tegrastats.py"), str(fixture)])
    assert isinstance(meter, energy.TegrastatsMeter) and meter.command[-2:] == ["--interval", "20"]
    with meter:
        a = meter.stamp()
        deadline = time.time() + 20
        while len(meter.samples) < 3 and time.time() < deadline:
            time.sleep(0.05)
        b = meter.stamp()
    totals = [sum(v for k, v in energy.parse_tegrastats(ln).items()
                  if k in energy.total_basis(list(first))[0]) for ln in lines]
    got = meter.energy([(a, b)], 1)
    assert got is not None and min(totals) <= got["mean_mw"] <= max(totals)
    assert meter.rails == list(first) and meter._proc.poll() is not None  # stopped with the meter


# ---- RAPL ---------------------------------------------------------------------------------------------------
def rapl_tree(root: Path, energy_uj: int, psys: bool = False) -> Path:
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0:0": "core"} | ({"intel-rapl:1": "psys"} if psys else {})
    for zone, name in zones.items():
        d = root / "sys/class/powercap" / zone
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{energy_uj}\n")
        (d / "max_energy_range_uj").write_text("262143328850\n")
    return root


def test_rapl_counters_and_their_wrap_around(tmp_path):
    root = rapl_tree(tmp_path, 262143000000)
    meter = energy.open_meter(root)
    assert isinstance(meter, energy.RaplMeter) and meter.rails == ["package-0"]  # the core subzone is inside
    a = meter.stamp()
    time.sleep(0.02)
    (root / "sys/class/powercap/intel-rapl:0/energy_uj").write_text("671150\n")  # wrapped past the maximum
    b = meter.stamp()
    got = meter.energy([(a, b)], calls=10)
    assert got["mj_per_call"] == pytest.approx(1000.0 / 10, abs=0.01)  # 328850 + 671150 uJ = 1000 mJ
    assert energy.counter_delta(10.0, 25.0, 100.0) == 15.0 and energy.counter_delta(90.0, 5.0, 100.0) == 15.0
    assert energy.power_context(meter, root) == {"source": "rapl", "rails": ["package-0"],
                                                 "basis": "package-0 (RAPL: the CPU package(s), not the whole machine)"}
    assert energy.open_meter(rapl_tree(tmp_path / "p", 5, psys=True)).rails == ["psys"]  # never psys + packages


def test_no_source_and_switched_off(tmp_path, monkeypatch):
    assert energy.open_meter(tmp_path) is None
    monkeypatch.setenv(energy.ROOT_ENV, "off")
    assert energy.open_meter() is None and energy.power_context(object()) is None


# ---- profile on the double-backed Jetson layouts ---------------------------------------------------------------
@pytest.mark.parametrize("board", list(LAYOUTS))
def test_device_compile_and_profile_report_mw_and_mj_per_inference(tmp_path, monkeypatch, board):
    pytest.importorskip("onnxruntime")
    import trt_double
    from conftest import invoke_cli
    from test_trt_double import NANO, _device, _package

    from edgeopt.backends.tensorrt import record as trec
    from edgeopt.device.package import compile_package
    from edgeopt.pipeline.api import profile

    root = jetson_tree(tmp_path / "sysfs", board)
    monkeypatch.setenv(energy.ROOT_ENV, str(root))
    board_file = tmp_path / "device-tree-model"
    board_file.write_bytes(NANO.encode() + b"\x00")
    monkeypatch.setattr(trec, "DEVICE_TREE_MODEL", board_file)
    trt = trt_double.activate("10.3", _device("10.3"))
    try:
        folder = _package(tmp_path, trt, "fp32")
        res = compile_package(folder, duration_s=0.05, cache_dir=tmp_path / "cache")
        rows = res["latency"]
        assert {r["energy"]["mean_mw"] for r in rows} == {TOTAL_MW[board]}
        for r in rows:
            e = r["energy"]
            assert e["mj_per_inference"] == pytest.approx(e["mj_per_call"] / r["batch"], abs=1e-3)
            assert e["mj_per_call"] == pytest.approx(e["mean_mw"] * e["seconds"] / e["calls"], rel=1e-2)
        assert res["power"]["nvpmodel"]["name"] == "15W" and res["power"]["clocks_locked"] is False
        prof = profile(folder, batches=(1, 2), duration_s=0.05, rounds=2)
        assert prof["timing"]["energy"]["source"] == "ina3221"
        assert all(r["energy"]["mean_mw"] == TOTAL_MW[board] for p in prof["artifacts"].values() for r in p["rows"])
        code, out, err = invoke_cli("profile", folder, "--batch", "1", "--duration", "0.05", "--rounds", "2")
        assert code == 0 and "mJ/inf" in out and f"{TOTAL_MW[board]:.0f}" in out
        assert "clocks are not locked" in err
        code, out, _ = invoke_cli("profile", folder, "--batch", "1", "--duration", "0.05", "--rounds", "2", "--json")
        data = json.loads(out)
        assert code == 0 and data["timing"]["energy"]["clocks_locked"] is False
        assert next(iter(data["artifacts"].values()))["rows"][0]["energy"]["mean_mw"] == TOTAL_MW[board]
    finally:
        trt_double.deactivate()


def test_each_contender_gets_the_power_of_its_own_timed_runs():
    """In interleaved rounds the meter's windows are each contender's timed blocks: a contender that draws 3 W
    is not averaged with one that draws 1 W beside it."""
    from edgeopt.core.profile import ProfileConfig, time_interleaved

    drawing = {"now": 0.0}

    class Board(energy._Sampled):
        source = "test"

        def _run(self):
            while not self._stop.is_set():
                self.samples.append((time.perf_counter(), drawing["now"]))
                self._stop.wait(0.0005)

    def work(mw):
        def call():
            drawing["now"] = mw
            time.sleep(0.002)
        return call

    cfg = ProfileConfig(batches=(4,), warmup=1, iterations=30, rounds=3)
    with Board() as meter:
        rows = time_interleaved({"small": work(1000.0), "big": work(3000.0)}, cfg, 4, meter=meter)
    small, big = rows["small"]["energy"], rows["big"]["energy"]
    assert small["mean_mw"] == pytest.approx(1000.0, rel=0.05) and big["mean_mw"] == pytest.approx(3000.0, rel=0.05)
    assert small["calls"] == big["calls"] == 30
    assert big["mj_per_inference"] == pytest.approx(big["mj_per_call"] / 4, abs=1e-3)
    assert "energy" not in time_interleaved({"x": work(1.0)}, cfg, 4)["x"]  # no meter: no figure
