"""Energy never silently wrong when sensors misbehave (../shared/cases c303, c306).

c306: an AMD EPYC package counter that wraps every 291 s at 225 W, replayed as the kernel's side of the powercap
tree the case captured, moving on a scripted clock. c303: NVML saying "GPU is lost" mid-job, replayed as the
C library behind the real pynvml module (tests/nvml_replay.py). A RAPL file that vanishes mid-window, on the c09
tree. Each goes through the product's meter and run loop as a job would."""

import shutil
import threading
import time

import pytest
from nvml_replay import ReplayedGpu, replayed_nvml
from test_runs import StandInBackend, plan

from conftest import REPO
from llmbench.devices import meters
from llmbench.devices.meters import RaplZone, open_energy_meter
from llmbench.engines.runs import run_generations

CASES = REPO / "tests/data/cases"


def case_values(name: str) -> dict[str, float]:
    """The `key value` lines of a case file (its replay's parameters)."""
    pairs = (line.split() for line in (CASES / name).read_text().splitlines() if line and not line.startswith("#"))
    return {k: float(v) for k, v in pairs}


class SimulatedKernel:
    """A stand-in for the kernel's side of a powercap tree: each zone's energy_uj moves on at a constant power as
    a scripted clock advances, wrapping at the zone's max_energy_range_uj, as intel_rapl does."""

    def __init__(self, root, watts: dict[str, float]):
        self.root, self.watts, self.t = root, watts, 0.0
        self.start = {z: int((root / z / "energy_uj").read_text()) for z in watts}
        self.range = {z: int((root / z / "max_energy_range_uj").read_text()) for z in watts}

    def clock(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for z, w in self.watts.items():
            (self.root / z / "energy_uj").write_text(f"{(self.start[z] + round(w * self.t * 1e6)) % self.range[z]}\n")


@pytest.fixture
def c306(tmp_path):
    root = tmp_path / "powercap"
    shutil.copytree(CASES / "c306_powercap_amd_epyc7543", root)
    values = case_values("c306_rapl_amd_wrap.txt")
    return root, SimulatedKernel(root, {"intel-rapl:0": values["package_w"], "intel-rapl:0:0": 150.0}), values


@pytest.mark.parametrize("window", ["window_s", "control_window_s"])
def test_c306_amd_counter_read_once_per_wrap_period_gives_every_joule(c306, window):
    root, kernel, values = c306
    meter = open_energy_meter([], powercap=root, clock=kernel.clock)
    try:
        zone = meter.sensors[0]
        # 65.5 kJ at the 1000 W bound (AMD zones name no maximum power): the counter may wrap every 65.5 s.
        assert zone.wrap_s == pytest.approx(65.53261, rel=1e-5) and "assumed" in zone.max_power_source
        assert meter.poller.interval_s <= zone.wrap_s / 4
        meter.begin_window("level")
        while kernel.t < values[window]:
            kernel.advance(meter.poller.interval_s)
            meter.poller.poll()  # the poller thread's own read, on the scripted clock
        r = meter.end_window("level")
    finally:
        meter.close()
    expected = values["package_w"] * values[window]  # 270,000 J over the 1,200 s level; 54,000 J over 240 s
    assert r.energy_j == pytest.approx(expected, rel=1e-9)
    assert r.window_s == values[window] and r.boundary == "CPU package (RAPL; no DRAM zone)"
    assert meter.validity(r) == (True, None)


def test_c306_a_window_whose_counter_went_unread_past_a_wrap_period_is_flagged_never_silently_low(c306):
    root, kernel, values = c306
    meter = open_energy_meter([], powercap=root, clock=kernel.clock)
    try:
        meter.begin_window("level")
        kernel.advance(values["window_s"])  # the poller stalled: nothing read the zone for the whole window
        r = meter.end_window("level")
    finally:
        meter.close()
    assert r.energy_j < values["package_w"] * values["window_s"] / 4  # wraps were lost: the number is wrong ...
    valid, why = meter.validity(r)
    assert valid is False  # ... and the window says so and is kept out of J per token
    assert "rapl:package-0 was not read for 1200 s" in why and "can wrap" in why
    assert "max_energy_range_uj 65532610987" in why and "1000 W" in why


def test_the_meter_thread_reads_a_fast_wrapping_counter_often_enough(tmp_path):
    # A stand-in zone of 5 J range and 100 W maximum (wrap period 50 ms), moved on by a stand-in kernel thread at
    # 10 mJ per ms (10 W) for 0.6 s: the counter wraps once or more while the job does nothing but wait.
    zone = tmp_path / "powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("5000000\n")
    (zone / "constraint_0_max_power_uw").write_text("100000000\n")
    (zone / "energy_uj").write_text("4000000\n")
    counted = {"uj": 4_000_000, "steps": 0}

    def kernel():
        for _ in range(600):
            counted["uj"] = (counted["uj"] + 10_000) % 5_000_000
            tmp = zone / "energy_uj.tmp"
            tmp.write_text(f"{counted['uj']}\n")
            tmp.replace(zone / "energy_uj")  # whole, as sysfs answers a read
            counted["steps"] += 1
            time.sleep(0.001)

    meter = open_energy_meter([], powercap=tmp_path / "powercap")
    try:
        assert meter.poller.interval_s == pytest.approx(0.0125) and "constraint" in meter.sensors[0].max_power_source
        meter.begin_window("g")
        writer = threading.Thread(target=kernel)
        writer.start()
        writer.join()
        r = meter.end_window("g")
    finally:
        meter.close()
    assert counted["steps"] * 0.01 > 5  # more than one whole range: a two-read difference would lose a wrap
    assert r.energy_j == pytest.approx(counted["steps"] * 0.01, abs=1e-6)
    assert not meter.poller.running  # stopped with the meter


def test_a_rapl_file_that_vanishes_mid_job_nulls_its_windows_with_the_reason_and_keeps_the_rows(tmp_path, monkeypatch):
    root = tmp_path / "powercap"
    shutil.copytree(CASES / "c09_powercap", root)
    monkeypatch.setattr(meters.time, "sleep", lambda s: None)

    class DramGoneDuringSecond(StandInBackend):  # a stand-in engine; the kernel drops the DRAM zone meanwhile
        def generate(self, *args):
            if len(self.calls) == 2:  # warm-up, first generation, then the second
                (root / "intel-rapl:0:2/energy_uj").unlink()
            return super().generate(*args)

    meter = open_energy_meter([], powercap=root)
    try:
        rows = run_generations(DramGoneDuringSecond(), plan(repetitions=3, idle_s=0.0), meter)
    finally:
        meter.close()
    assert rows["status"].to_list() == ["ok"] * 3  # the engine was fine: every generation stands
    assert rows["energy_j"][0] is not None and rows["energy_j"][1:].to_list() == [None, None]
    for reason in rows["energy_null_reason"][1:]:
        assert reason.startswith("not measured: a sensor failed during the window: rapl:package-0/dram:")
        assert "intel-rapl:0:2/energy_uj could not be read" in reason
    assert rows["energy_valid"][1:].to_list() == [None, None]
    assert rows["level_energy_j"][0] is None and "rapl:package-0/dram" in rows["level_energy_null_reason"][0]


def test_c303_gpu_lost_mid_job_keeps_the_finished_generations_then_a_failed_row(tmp_path, monkeypatch):
    # The case's replay: one GPU; from its 7th energy read on, every NVML call on it says "GPU is lost" (15).
    gpu = ReplayedGpu("NVIDIA H100 80GB HBM3", "GPU-8a1c2e55-0000-4000-8000-000000000000",
                      lost_after_energy_reads=6)
    replayed_nvml(monkeypatch, [gpu])
    monkeypatch.setattr(meters.time, "sleep", lambda s: None)
    backend = StandInBackend()  # a stand-in engine: it would go on answering, the meter must not
    meter = open_energy_meter([0], powercap=tmp_path / "absent")
    try:
        rows = run_generations(backend, plan(repetitions=5, idle_s=1.0, gpus=1), meter)
    finally:
        meter.close()
    # Reads: the meter's own check, idle begin and end, level begin, generation 1 begin and end; generation 2's
    # window opens on a lost GPU.
    assert rows["status"].to_list() == ["ok", "ok", "failed"]
    assert rows["energy_j"][0] == pytest.approx(30.0) and rows["energy_j"][1] is None
    assert "GPU is lost" in rows["energy_null_reason"][1]
    failed = rows.row(2, named=True)
    assert failed["failure_kind"] == "gpu_lost"
    assert "GPU-8a1c2e55-0000-4000-8000-000000000000" in failed["status_reason"]
    assert "fell off the bus" in failed["status_reason"] and "dmesg" in failed["status_reason"]
    assert "Xid" in failed["status_reason"] and "reboot" in failed["status_reason"]
    assert len(backend.calls) == 3  # warm-up and two generations: nothing measured after the loss
    assert rows["level_energy_j"][0] is None and "GPU is lost" in rows["level_energy_null_reason"][0]


def test_c303_gpu_lost_before_any_generation_is_the_job_failure(tmp_path, monkeypatch):
    from llmbench.engines.base import EngineFailed, diagnosis_of

    gpu = ReplayedGpu("NVIDIA H100 80GB HBM3", "GPU-8a1c2e55-0000-4000-8000-000000000000",
                      lost_after_energy_reads=2)
    replayed_nvml(monkeypatch, [gpu])
    monkeypatch.setattr(meters.time, "sleep", lambda s: None)
    meter = open_energy_meter([0], powercap=tmp_path / "absent")
    try:
        with pytest.raises(EngineFailed) as raised:  # measure() turns it into the job's failed row
            run_generations(StandInBackend(), plan(idle_s=1.0, gpus=1), meter)
    finally:
        meter.close()
    found = diagnosis_of(raised.value, "llama-server")
    assert found.kind == "gpu_lost" and "dmesg" in found.reason


def test_a_lost_gpu_zone_reading_names_the_sensor(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    (zone / "energy_uj").write_text("5\n")
    z = RaplZone(zone)
    z.read_j()
    shutil.rmtree(zone)
    with pytest.raises(meters.SensorError, match=r"rapl:package-0: .*energy_uj could not be read"):
        z.read_j()


def test_a_gpu_without_an_energy_counter_lost_mid_job_is_never_read_from_a_stale_trace(tmp_path, monkeypatch):
    # The fallback sensor integrates the power trace; once NVML says "GPU is lost" the trace stops, and an integral
    # up to its last good sample would read low: the window is null and the job ends as for the counter.
    gpu = ReplayedGpu("Tesla P100-PCIE-16GB", "GPU-0b5e0000-0000-4000-8000-000000000001", energy_counter=False)
    replayed_nvml(monkeypatch, [gpu])

    class LosesItsGpuDuringSecond(StandInBackend):  # a stand-in engine; the GPU falls off the bus meanwhile
        def generate(self, *args):
            if len(self.calls) == 2:
                gpu.lost = True
            return super().generate(*args)

    meter = open_energy_meter([0], powercap=tmp_path / "absent")
    try:
        assert meter.sensors[0].label.startswith("nvml-sampled-power:GPU-0b5e")
        rows = run_generations(LosesItsGpuDuringSecond(), plan(repetitions=3, idle_s=0.0, gpus=1), meter)
    finally:
        meter.close()
    assert rows["status"].to_list() == ["ok", "ok", "failed"]
    assert rows["energy_j"][0] is not None and rows["energy_j"][1] is None
    assert "GPU is lost" in rows["energy_null_reason"][1] and rows["failure_kind"][2] == "gpu_lost"


def test_a_power_trace_with_a_hole_in_the_window_is_flagged():
    from test_gpu_telemetry import StandInNvml

    from llmbench.devices.gpu_telemetry import PowerSampler

    sampler = PowerSampler(StandInNvml(), ["gpu0"], interval_s=0.02)
    for i in range(50):
        sampler.record(i * 0.02, [100.0])
    sampler.record(3.0, [100.0])  # nothing between 0.98 s and 3 s: NVML failing, or the thread starved
    sensor = meters.SampledPower(sampler, "nvml-sampled-power:GPU-x")
    assert sensor.unseen(0.0, 0.9) is None
    why = sensor.unseen(0.5, 2.0)
    assert "no sample for 2.02 s inside the window" in why and "left out of J per token" in why
    meter = meters.EnergyMeter([sensor], [])
    reading = meters.EnergyReading(150.0, sensor.label, None, 1.5, 0.5, 2.0)
    assert meter.validity(reading) == (False, why)
