"""The run loop: one row per prompt × repetition, energy per window, idle baseline subtracted.

Uses a stand-in backend (fixed answers) and a stand-in sensor with scripted readings and a scripted clock, so
the arithmetic is exact; the real engines and meters run in test_workflow.py and test_meters.py."""

import pytest

from llmbench import meters, runs
from llmbench.backend import Generation
from llmbench.meters import EnergyMeter
from llmbench.runs import Prompt, RunPlan, run_generations


class StandInBackend:
    tool = "stand-in"

    def __init__(self):
        self.calls = []

    def generate(self, prompt, max_tokens, temperature, seed):
        self.calls.append((prompt, max_tokens, temperature, seed))
        return Generation(10, 10, 20, 5.0, 100.0, 2000.0, 200.0, 110.0, "stop", "ok")

    def peak_rss_bytes(self):
        return 123_456


class ScriptedSensor:
    label = "stand-in-sensor"

    def __init__(self, readings):
        self.readings = iter(readings)

    def read_j(self):
        return next(self.readings)

    def delta_j(self, start, end):
        return end - start


def plan(**kw):
    base = dict(tool="stand-in", model="m", quant="Q4_0", split="none", prompts=(Prompt("a", "hi", 8),),
                repetitions=2, warmup=1, idle_s=10.0, temperature=0.5, seed=100, n_gpu_layers=0, gpus=0, threads=2)
    return RunPlan(**(base | kw))


def test_idle_baseline_is_subtracted_per_window(monkeypatch):
    # idle: 0 → 500 J over 10 s (50 W); generations: 2 s windows of 300 J and 260 J.
    clock = iter([0.0, 10.0, 10.0, 12.0, 12.0, 14.0])
    monkeypatch.setattr(meters.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(runs.time, "sleep", lambda s: None)
    meter = EnergyMeter([ScriptedSensor([0, 500, 500, 800, 800, 1060])], [])
    backend = StandInBackend()
    rows = run_generations(backend, plan(), meter, engine_build="b1")
    assert rows["idle_power_w"].to_list() == [50.0, 50.0]
    assert rows["energy_j"].to_list() == [300.0, 260.0]
    assert rows["energy_net_j"].to_list() == [200.0, 160.0]
    assert rows["energy_window_s"].to_list() == [2.0, 2.0]
    assert rows["energy_source"].to_list() == ["stand-in-sensor"] * 2
    assert rows["seed"].to_list() == [100, 101] and rows["peak_rss_bytes"].to_list() == [123_456] * 2
    # warm-up first (short), then the measured generations with the configured settings
    assert backend.calls[0][1] == 8 and backend.calls[1:] == [("hi", 8, 0.5, 100), ("hi", 8, 0.5, 101)]


def test_without_sensors_no_idle_wait_and_every_energy_is_null_with_the_reason(monkeypatch):
    monkeypatch.setattr(runs.time, "sleep", lambda s: pytest.fail("waited for an idle baseline nobody can measure"))
    meter = EnergyMeter([], ["CPU energy: no RAPL zones under /x (absent in many VMs)"])
    rows = run_generations(StandInBackend(), plan(), meter)
    assert rows["energy_j"].is_null().all() and rows["idle_power_w"].is_null().all()
    assert set(rows["energy_null_reason"]) == {"not measured: CPU energy: no RAPL zones under /x (absent in many VMs)"}
