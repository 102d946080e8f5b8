"""Energy meters. RAPL is tested on a stand-in powercap tree (same files, same semantics); NVML on this
machine is the real library, which finds no driver, so the meter must say so."""

import pytest

from conftest import nvml_works
from llmbench.meters import EnergyMeter, RaplZone, open_energy_meter, rapl_sensors


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


def test_rapl_window_sums_package_and_dram_not_cores(tmp_path):
    root = powercap(tmp_path, {
        "intel-rapl:0": ("package-0", 1_000_000, 262_143_328_850),
        "intel-rapl:0:0": ("core", 500_000, 262_143_328_850),
        "intel-rapl:0:1": ("dram", 2_000_000, 65_712_999_613),
    })
    meter = open_energy_meter([], powercap=root)
    assert meter.source == "rapl:package-0 + rapl:dram"
    meter.begin_window("g")
    (root / "intel-rapl:0/energy_uj").write_text("31000000\n")     # +30 J
    (root / "intel-rapl:0:0/energy_uj").write_text("20500000\n")   # cores: inside the package
    (root / "intel-rapl:0:1/energy_uj").write_text("7000000\n")    # +5 J
    r = meter.end_window("g")
    assert r.energy_j == pytest.approx(35.0) and r.null_reason is None and r.window_s >= 0


def test_rapl_counter_wraparound(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 0, 10_000_000)})
    zone = RaplZone(root / "intel-rapl:0")
    assert zone.delta_j(9.0, 1.0) == pytest.approx(2.0)


def test_unreadable_rapl_names_the_cause(tmp_path, monkeypatch):
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 0, 10)})

    def denied(self):
        raise PermissionError("denied")

    monkeypatch.setattr(RaplZone, "read_j", denied)
    sensors, problems = rapl_sensors(root)
    assert sensors == [] and "not readable by this user" in problems[0]


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
    else:
        assert r.source.startswith("nvml-sampled-power:GPU-standin-gpu0") and "no energy counter" in r.source
        assert r.energy_j > 0
    assert meter.sampler._thread is None  # closed with the job


def test_cpu_only_job_says_why_there_is_no_prefill_decode_split(tmp_path):
    meter = open_energy_meter([], powercap=tmp_path)
    assert meter.split_null_reason == "not measured: no GPU power trace (the job uses no GPU)"
    assert meter.gpu_state() is None
