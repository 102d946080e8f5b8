"""Energy meters. RAPL is tested on powercap trees laid out as Linux lists them in /sys/class/powercap (the
c09 case as captured, and stand-ins with the same files and semantics); NVML on this machine is the real
library, which finds no driver, so the meter must say so. The bookkeeping around the windows (idle power, the
estimate, the prefill/decode cut, J per token) is tested with a scripted sensor and a scripted clock, so the
arithmetic is exact."""

import json
import shutil

import numpy as np
import polars as pl
import pytest

from conftest import REPO, nvml_works
from llmbench.devices import meters
from llmbench.devices.meters import (
    EnergyMeter,
    EnergyReading,
    RaplZone,
    WindowError,
    estimated,
    joules_per_token,
    measure_idle,
    open_energy_meter,
    rapl_sensors,
    split_at_first_token,
)

C09 = REPO / "tests/data/cases/c09_powercap"


def powercap(tmp_path, zones):
    """A stand-in for /sys/class/powercap: {dirname: (name, energy_uj, max_range_uj)}."""
    root = tmp_path / "powercap"
    for d, (name, energy, rng) in zones.items():
        z = root / d
        z.mkdir(parents=True)
        (z / "name").write_text(name + "\n")
        (z / "energy_uj").write_text(f"{energy}\n")
        (z / "max_energy_range_uj").write_text(f"{rng}\n")
    return root


def window(root, after_uj: dict[str, int], **meter_args):
    """One energy window of a CPU-only meter on ``root``, the zones' counters set to ``after_uj`` inside it."""
    meter = open_energy_meter([], powercap=root, **meter_args)
    meter.begin_window("g")
    for zone, uj in after_uj.items():
        (root / zone / "energy_uj").write_text(f"{uj}\n")
    return meter, meter.end_window("g")


# The c09 window: package +10 J (cores +6 J), dram +1 J, psys +14 J, from the counters the case captured.
C09_AFTER = {"intel-rapl:0": 110_000_000, "intel-rapl:0:0": 56_000_000, "intel-rapl:0:1": 5_500_000,
             "intel-rapl:0:2": 21_000_000, "intel-rapl:1": 314_000_000}


@pytest.fixture
def c09(tmp_path):
    root = tmp_path / "powercap"
    shutil.copytree(C09, root)
    return root


def test_c09_package_and_dram_never_the_platform_zone_that_contains_them(c09):
    meter, r = window(c09, C09_AFTER)
    assert r.energy_j == pytest.approx(11.0) and r.null_reason is None  # not 25: psys holds package and DRAM
    assert r.source == "rapl:package-0 + rapl:package-0/dram"
    assert r.boundary == "CPU package+DRAM (RAPL)"
    assert r.by_sensor_j == pytest.approx({"rapl:package-0": 10.0, "rapl:package-0/dram": 1.0})
    columns = r.boundary_columns()
    assert columns["energy_boundary"] == "CPU package+DRAM (RAPL)"
    assert json.loads(columns["energy_by_sensor_j"]) == pytest.approx({"rapl:package-0": 10.0,
                                                                       "rapl:package-0/dram": 1.0})


def test_c09_platform_boundary_reads_psys_alone_and_says_so(c09):
    meter, r = window(c09, C09_AFTER, cpu_boundary="platform")
    assert r.energy_j == pytest.approx(14.0) and r.source == "rapl:psys"
    assert r.boundary == "platform (RAPL psys)" and r.by_sensor_j == pytest.approx({"rapl:psys": 14.0})


def test_platform_boundary_without_psys_is_null_with_the_reason(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 0, 10**9), "intel-rapl:0:0": ("core", 0, 10**9)})
    sensors, problems = rapl_sensors(root, "platform")
    assert sensors == [] and "no RAPL psys (platform) zone" in problems[0] and "package-0, core" in problems[0]


def test_platform_boundary_refused_for_a_gpu_job(tmp_path):
    with pytest.raises(ValueError, match="may already contain the GPUs"):
        open_energy_meter([0], powercap=tmp_path, cpu_boundary="platform")
    with pytest.raises(ValueError, match="unknown CPU energy boundary 'socket'"):
        rapl_sensors(tmp_path, "socket")


def test_amd_tree_is_the_package_alone_and_says_no_dram(tmp_path):
    # AMD (and Hygon) RAPL, under the same intel-rapl control type: package-N with a core subzone, no DRAM.
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 5_000_000, 65_532_610_987),
                               "intel-rapl:0:0": ("core", 1_000_000, 65_532_610_987)})
    meter, r = window(root, {"intel-rapl:0": 12_000_000, "intel-rapl:0:0": 6_000_000})
    assert r.energy_j == pytest.approx(7.0) and r.source == "rapl:package-0"
    assert r.boundary == "CPU package (RAPL; no DRAM zone)"


def test_two_sockets_add_each_package_and_its_dram_once(tmp_path):
    rng = 262_143_328_850
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 0, rng), "intel-rapl:0:0": ("dram", 0, rng),
                               "intel-rapl:1": ("package-1", 0, rng), "intel-rapl:1:0": ("dram", 0, rng),
                               "intel-rapl:2": ("psys", 0, rng), "intel-rapl:3": ("psys-1", 0, rng)})
    meter, r = window(root, {"intel-rapl:0": 40_000_000, "intel-rapl:0:0": 3_000_000, "intel-rapl:1": 30_000_000,
                             "intel-rapl:1:0": 2_000_000, "intel-rapl:2": 90_000_000})
    assert r.energy_j == pytest.approx(75.0) and r.boundary == "CPU package+DRAM (RAPL)"
    assert r.by_sensor_j == pytest.approx({"rapl:package-0": 40.0, "rapl:package-0/dram": 3.0,
                                           "rapl:package-1": 30.0, "rapl:package-1/dram": 2.0})


def test_multi_die_packages_are_each_a_package(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0-die-0", 0, 10**12),
                               "intel-rapl:1": ("package-0-die-1", 0, 10**12),
                               "intel-rapl:1:0": ("dram", 0, 10**12)})
    meter, r = window(root, {"intel-rapl:0": 4_000_000, "intel-rapl:1": 5_000_000, "intel-rapl:1:0": 1_000_000})
    assert r.energy_j == pytest.approx(10.0)
    assert r.source == "rapl:package-0-die-0 + rapl:package-0-die-1 + rapl:package-0-die-1/dram"


def test_mmio_interface_of_the_same_package_is_not_added_again(tmp_path):
    # Intel clients expose package-0 through the MSRs (intel-rapl) and the MMIO registers (intel-rapl-mmio);
    # /sys/class/powercap also lists the control types themselves, which are not zones.
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 0, 10**12), "intel-rapl:0:0": ("core", 0, 10**12),
                               "intel-rapl:1": ("psys", 0, 10**12),
                               "intel-rapl-mmio:0": ("package-0", 0, 10**12)})
    (root / "intel-rapl").mkdir()
    (root / "intel-rapl-mmio").mkdir()
    meter, r = window(root, {"intel-rapl:0": 8_000_000, "intel-rapl-mmio:0": 8_000_000, "intel-rapl:1": 9_000_000})
    assert r.energy_j == pytest.approx(8.0) and r.source == "rapl:package-0"


def test_mmio_interface_alone_is_read(tmp_path):
    root = powercap(tmp_path, {"intel-rapl-mmio:0": ("package-0", 0, 10**12)})
    meter, r = window(root, {"intel-rapl-mmio:0": 3_000_000})
    assert r.energy_j == pytest.approx(3.0) and r.source == "rapl-mmio:package-0"


def test_rapl_counter_wraparound(tmp_path):
    # The zone unfolds a wrap between two reads into its running total: 9 J, then past the 10 J range to 1 J.
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 9_000_000, 10_000_000)})
    zone = RaplZone(root / "intel-rapl:0")
    start = zone.read_j()
    (root / "intel-rapl:0/energy_uj").write_text("1000000\n")
    assert zone.delta_j(start, zone.read_j()) == pytest.approx(2.0)


def test_wraparound_within_a_window_of_the_c09_tree(c09):
    # Package and DRAM counters pass max_energy_range_uj inside the window: the meter adds the range back.
    rng = 262_143_328_850
    (c09 / "intel-rapl:0/energy_uj").write_text(f"{rng - 4_000_000}\n")
    (c09 / "intel-rapl:0:2/energy_uj").write_text(f"{rng - 500_000}\n")
    meter, r = window(c09, {**C09_AFTER, "intel-rapl:0": 6_000_000, "intel-rapl:0:2": 500_000})
    assert r.energy_j == pytest.approx(11.0)
    assert r.by_sensor_j == pytest.approx({"rapl:package-0": 10.0, "rapl:package-0/dram": 1.0})


def test_unreadable_rapl_names_the_cause(c09, monkeypatch):
    # Linux 5.10 made energy_uj readable by root only: every zone the same, the reading null with the reason.
    def denied(self):
        raise PermissionError("denied")

    monkeypatch.setattr(RaplZone, "read_j", denied)
    for boundary in ("package+dram", "platform"):
        sensors, problems = rapl_sensors(c09, boundary)
        assert sensors == [] and "not readable by this user (root-only since Linux 5.10)" in problems[0]
    meter = open_energy_meter([], powercap=c09)
    meter.begin_window("g")
    r = meter.end_window("g")
    assert r.energy_j is None and r.boundary is None and r.by_sensor_j is None
    assert "root-only since Linux 5.10" in r.null_reason
    assert r.boundary_columns() == {"energy_boundary": None, "energy_by_sensor_j": None}


@pytest.mark.skipif(nvml_works(), reason="this machine has a working NVML")
def test_no_sensor_gives_null_with_every_reason(tmp_path):
    meter = open_energy_meter([0], powercap=tmp_path / "absent")
    meter.begin_window("g")
    r = meter.end_window("g")
    assert r.energy_j is None and r.source is None
    assert r.null_reason.startswith("not measured: GPU energy: NVML could not start")
    assert "CPU energy: no RAPL zones" in r.null_reason


def test_cpu_job_does_not_ask_for_gpus(tmp_path):
    meter = EnergyMeter([], [])
    assert open_energy_meter([], powercap=tmp_path).unavailable == [
        f"CPU energy: no RAPL zones under {tmp_path} (absent in many VMs)"] and meter.source is None


class StandInNvmlWithEnergy:
    """A stand-in pynvml for the meter: the telemetry stand-in plus init, handles, UUIDs and the energy counter."""

    def __init__(self, counter: bool):
        from test_gpu_telemetry import StandInNvml

        self._base = StandInNvml(power_mw=100_000)
        self.NVMLError = self._base.NVMLError
        self.counter, self.energy_mj = counter, 0

    def __getattr__(self, name):
        return getattr(self._base, name)

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-standin-{handle}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.counter:
            raise self.NVMLError(3)
        self.energy_mj += 5_000  # +5 J per read
        return self.energy_mj


@pytest.mark.parametrize("counter", [True, False])
def test_gpu_job_reads_counter_or_sampled_power_and_gpu_state(monkeypatch, tmp_path, counter):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", StandInNvmlWithEnergy(counter))
    with open_energy_meter([0], powercap=tmp_path / "absent") as meter:
        meter.begin_window("g")
        r = meter.end_window("g")
        state = meter.gpu_state()
    assert meter.sampler is not None and meter.split_null_reason is None
    # Constant 100 W: the trace's integral over the window is 100 W × its length.
    assert r.sampled_gpu_j == pytest.approx(100 * (r.t1 - r.t0), rel=1e-6)
    assert state[0]["temperature_c"] == 61 and state[0]["clock_event_reasons"] == ["SwPowerCap", "SwThermalSlowdown"]
    if counter:
        assert r.source == "nvml-energy:GPU-standin-gpu0" and r.energy_j == pytest.approx(5.0)
        assert r.boundary == "GPU (NVML energy counter)"
    else:
        assert r.source.startswith("nvml-sampled-power:GPU-standin-gpu0") and "no energy counter" in r.source
        assert r.energy_j > 0 and r.boundary == "GPU (NVML sampled power)"
    assert r.by_sensor_j == pytest.approx({r.source: r.energy_j})
    assert not meter.sampler.running  # closed with the job


def test_cpu_only_job_says_why_there_is_no_prefill_decode_split(tmp_path):
    meter = open_energy_meter([], powercap=tmp_path)
    assert meter.split_null_reason == "not measured: no GPU power trace (the job uses no GPU)"
    assert meter.gpu_state() is None


def test_gpu_and_cpu_boundary_named_once_each_with_every_sensor_share(monkeypatch, c09):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", StandInNvmlWithEnergy(counter=True))
    with open_energy_meter([0], powercap=c09) as meter:
        meter.begin_window("g")
        for zone, uj in C09_AFTER.items():
            (c09 / zone / "energy_uj").write_text(f"{uj}\n")
        r = meter.end_window("g")
    assert r.boundary == "GPU (NVML energy counter) + CPU package+DRAM (RAPL)"
    assert r.energy_j == pytest.approx(5.0 + 11.0)
    assert r.by_sensor_j == pytest.approx({"nvml-energy:GPU-standin-gpu0": 5.0, "rapl:package-0": 10.0,
                                           "rapl:package-0/dram": 1.0})


class ScriptedSensor:
    """A stand-in sensor: its cumulative joules are the scripted readings, one per read."""

    label = "stand-in-sensor"

    def __init__(self, readings):
        self.readings = iter(readings)

    def read_j(self):
        return next(self.readings)

    def delta_j(self, start, end):
        return end - start


def test_opening_an_open_window_raises_naming_it():
    meter = EnergyMeter([], ["no sensor"])
    meter.begin_window("a/0")
    with pytest.raises(WindowError, match=r"energy window 'a/0' is already open \(open: 'a/0'\)"):
        meter.begin_window("a/0")
    meter.end_window("a/0")
    meter.begin_window("a/0")  # closed, the name can be used again
    assert list(meter._open) == ["a/0"]


def test_closing_a_window_not_open_raises_naming_it_and_the_open_ones():
    meter = EnergyMeter([], ["no sensor"])
    with pytest.raises(WindowError, match=r"no energy window 'g' is open \(none is open\): begin_window\('g'\)"):
        meter.end_window("g")
    meter.begin_window("idle")
    meter.begin_window("b/1")
    with pytest.raises(WindowError, match=r"no energy window 'g' is open \(open: 'idle', 'b/1'\)"):
        meter.end_window("g")
    meter.end_window("idle")
    with pytest.raises(WindowError, match="'idle'"):  # closed once: a second close is an error, not a reading
        meter.end_window("idle")


def test_idle_power_is_the_idle_window_energy_over_its_length(monkeypatch):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(meters.time, "perf_counter", lambda: next(clock))
    slept = []
    monkeypatch.setattr(meters.time, "sleep", slept.append)
    meter = EnergyMeter([ScriptedSensor([100, 600])], [])
    assert measure_idle(meter, 10.0) == (50.0, None)
    assert slept == [10.0] and meter._open == {}


def test_idle_power_not_measured_says_why_without_waiting(monkeypatch):
    monkeypatch.setattr(meters.time, "sleep", lambda s: pytest.fail("waited for an idle baseline"))
    assert measure_idle(EnergyMeter([], ["CPU energy: no RAPL zones"]), 10.0) == (
        None, "not measured: CPU energy: no RAPL zones")
    assert measure_idle(EnergyMeter([ScriptedSensor([])], []), 0.0) == (None, "not measured: bench.idle_s is 0")


def test_net_energy_subtracts_idle_power_times_the_window():
    reading = EnergyReading(300.0, "s", None, window_s=2.0)
    assert reading.net_j(50.0) == 200.0
    assert reading.net_j(None) is None
    assert EnergyReading(None, None, "not measured: x", window_s=2.0).net_j(50.0) is None


def test_an_estimate_is_flagged_on_the_reading_and_named_in_its_source():
    unmeasured = EnergyReading(None, None, "not measured: CPU energy: no RAPL zones", window_s=2.0, t0=1.0, t1=3.0)
    r = estimated(unmeasured, 65.0)
    assert r.estimated and r.energy_j == 130.0 and r.null_reason is None and (r.t0, r.t1) == (1.0, 3.0)
    assert r.source == ("estimate: 65 W assumed × window (bench.energy_estimate_w), "
                        "not measured: CPU energy: no RAPL zones")
    assert estimated(unmeasured, None) is unmeasured and estimated(unmeasured, 0) is unmeasured
    assert not unmeasured.estimated
    measured = EnergyReading(20.0, "stand-in-sensor", None, window_s=2.0)
    assert estimated(measured, 65.0) is measured and not measured.estimated


class ConstantPower:
    """A stand-in meter with a GPU power trace of 100 W all through."""

    split_null_reason = None

    def gpu_trace_j(self, t0, t1):
        return 100.0 * (t1 - t0)


def test_gpu_energy_is_cut_at_the_first_token():
    window = EnergyReading(None, None, None, window_s=2.0, t0=10.0, t1=12.0)
    split = split_at_first_token(ConstantPower(), window, ttft_ms=500.0)
    assert (split.prefill_j, split.decode_j, split.null_reason) == pytest.approx((50.0, 150.0, None))
    late = split_at_first_token(ConstantPower(), window, ttft_ms=5000.0)  # past the window: all of it is prefill
    assert (late.prefill_j, late.decode_j) == pytest.approx((200.0, 0.0))


def test_no_split_without_a_first_token_or_a_power_trace_says_why():
    window = EnergyReading(None, None, None, window_s=2.0, t0=10.0, t1=12.0)
    split = split_at_first_token(ConstantPower(), window, ttft_ms=None)
    assert (split.prefill_j, split.decode_j) == (None, None)
    assert split.null_reason == "not measured: the engine reported no first token"
    cpu = split_at_first_token(EnergyMeter([], []), window, ttft_ms=500.0)
    assert (cpu.prefill_j, cpu.decode_j) == (None, None)
    assert cpu.null_reason == "not measured: no GPU power trace (the job uses no GPU)"


def test_joules_per_token_on_numbers_arrays_and_polars_expressions():
    assert joules_per_token(300.0, 100) == 3.0
    batches = np.array([[30.0, 60.0], [10.0, 10.0]])
    assert joules_per_token(batches.sum(axis=-1), np.array([30, 4])) == pytest.approx([3.0, 5.0])
    frame = pl.DataFrame({"energy_j": [30.0, None], "generated_tokens": [10, 5]})
    per_row = frame.select(joules_per_token(pl.col("energy_j"), pl.col("generated_tokens")).alias("j"))["j"]
    assert per_row.to_list() == [3.0, None]


def test_meters_stays_light_to_import():
    # Planning and the bench job import the meter: the plotting and table stack must not come with it.
    import subprocess
    import sys

    code = "import sys, llmbench.devices.meters; print(sorted({'polars', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "workflow/scripts")}).stdout
    assert out.strip() == "[]"


def test_a_window_shorter_than_twenty_updates_of_its_slowest_sensor_is_not_used():
    class Counter(ScriptedSensor):  # a stand-in NVML-like counter that updates every 100 ms
        label, update_s = "nvml:0", 0.1

    meter = EnergyMeter([Counter([])], [])
    short = meters.EnergyReading(5.0, "nvml:0", None, window_s=1.5)
    valid, why = meter.validity(short)
    assert valid is False and why.startswith("window of 1.5 s is shorter than 20 updates of nvml:0 (2 s)")
    assert meter.validity(meters.EnergyReading(5.0, "nvml:0", None, window_s=2.5)) == (True, None)
    assert meter.validity(meters.EnergyReading(None, None, "not measured: x", window_s=1.0)) == (None, None)
    assert meter.validity(meters.estimated(meters.EnergyReading(None, None, "not measured: x", 1.0), 65.0)) == (
        None, None)
    assert EnergyMeter([], ["none"]).validity(short) == (None, None)
