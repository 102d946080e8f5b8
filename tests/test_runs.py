"""The run loop: one row per prompt × repetition, energy per window, idle baseline subtracted.

Uses a stand-in backend (fixed answers) and a stand-in sensor with scripted readings and a scripted clock, so
the arithmetic is exact; the real engines and meters run in test_workflow.py and test_meters.py."""

import json

import pytest
from test_meters import ScriptedSensor

from llmbench.devices import meters
from llmbench.devices.meters import EnergyMeter
from llmbench.engines import runs
from llmbench.engines.base import Engine, Generation, OutOfMemory
from llmbench.engines.runs import Prompt, RunPlan, run_generations


class StandInBackend(Engine):
    tool = "stand-in"

    def __init__(self):
        self.calls = []

    def generate(self, prompt, max_tokens, temperature, seed):
        self.calls.append((prompt, max_tokens, temperature, seed))
        return Generation(10, 10, 20, 5.0, 100.0, 2000.0, 200.0, 110.0, "stop", "ok")

    def peak_rss_bytes(self):
        return 123_456


def plan(**kw):
    base = dict(tool="stand-in", model="m", quant="Q4_0", split="none", prompts=(Prompt("a", "hi", 8),),
                repetitions=2, warmup=1, idle_s=10.0, temperature=0.5, seed=100, n_gpu_layers=0, gpus=0, threads=2)
    return RunPlan(**(base | kw))


def test_idle_baseline_is_subtracted_per_window(monkeypatch):
    # idle: 0 → 500 J over 10 s (50 W); generations: 2 s windows of 300 J and 260 J, inside the level's window.
    clock = iter([0.0, 10.0, 10.0, 10.0, 12.0, 12.0, 14.0, 14.0])
    monkeypatch.setattr(meters.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(meters.time, "sleep", lambda s: None)
    meter = EnergyMeter([ScriptedSensor([0, 500, 500, 500, 800, 800, 1060, 1060])], [])
    backend = StandInBackend()
    rows = run_generations(backend, plan(), meter, {"engine_build": "b1", "load_ms": 12.5})
    assert rows["idle_power_w"].to_list() == [50.0, 50.0]
    assert rows["energy_j"].to_list() == [300.0, 260.0]
    assert rows["energy_net_j"].to_list() == [200.0, 160.0]
    assert rows["energy_window_s"].to_list() == [2.0, 2.0]
    assert rows["energy_source"].to_list() == ["stand-in-sensor"] * 2
    assert rows["seed"].to_list() == [100, 101] and rows["peak_rss_bytes"].to_list() == [123_456] * 2
    assert rows["engine_build"].to_list() == ["b1"] * 2 and rows["load_ms"].to_list() == [12.5] * 2
    assert rows["engine_facts"][0] == '{"engine_build": "b1", "load_ms": 12.5}'
    # warm-up first (short), then the measured generations with the configured settings
    assert backend.calls[0][1] == 8 and backend.calls[1:] == [("hi", 8, 0.5, 100), ("hi", 8, 0.5, 101)]
    # The level: both generations, 4 s, 560 J gross, 360 J over idle; one client, requests from the level's start.
    assert rows["level_window_s"].to_list() == [4.0, 4.0] and rows["level_energy_j"].to_list() == [560.0] * 2
    assert rows["level_energy_net_j"].to_list() == [360.0] * 2
    assert rows["client"].to_list() == [0, 0] and rows["request_start_s"].to_list() == [0.0, 2.0]
    assert rows["server_counts_check"][0] == "not cross-checked: stand-in exposes no token counters"


def test_without_sensors_no_idle_wait_and_every_energy_is_null_with_the_reason(monkeypatch):
    monkeypatch.setattr(meters.time, "sleep", lambda s: pytest.fail("waited for an idle baseline nobody can measure"))
    meter = EnergyMeter([], ["CPU energy: no RAPL zones under /x (absent in many VMs)"])
    rows = run_generations(StandInBackend(), plan(), meter)
    assert rows["energy_j"].is_null().all() and rows["idle_power_w"].is_null().all()
    assert set(rows["energy_null_reason"]) == {"not measured: CPU energy: no RAPL zones under /x (absent in many VMs)"}


def test_cpu_job_says_why_gpu_phase_energy_and_state_are_absent():
    rows = run_generations(StandInBackend(), plan(idle_s=0.0), EnergyMeter([], ["no sensor"]))
    assert rows["gpu_energy_prefill_j"].is_null().all() and rows["gpu_state_start"].is_null().all()
    assert set(rows["energy_split_null_reason"]) == {"not measured: no GPU power trace (the job uses no GPU)"}


def test_gpu_energy_is_split_at_the_first_token(monkeypatch, tmp_path):
    """A stand-in GPU at a constant 100 W: the phases' energies are 100 W × their lengths and add up to the window."""
    import sys
    import time

    from test_meters import StandInNvmlWithEnergy

    class FirstTokenAt20ms(StandInBackend):
        def generate(self, prompt, max_tokens, temperature, seed):
            time.sleep(0.05)
            return Generation(10, 10, 20, 5.0, 40.0, 2000.0, 500.0, 50.0, "stop", "ok", ttft_ms=20.0)

    monkeypatch.setitem(sys.modules, "pynvml", StandInNvmlWithEnergy(counter=True))
    with meters.open_energy_meter([0], powercap=tmp_path) as meter:
        rows = run_generations(FirstTokenAt20ms(), plan(idle_s=0.0, repetitions=1), meter)
    r = rows.row(0, named=True)
    assert r["gpu_energy_prefill_j"] == pytest.approx(2.0, rel=1e-6)
    assert r["gpu_energy_prefill_j"] + r["gpu_energy_decode_j"] == pytest.approx(r["sampled_gpu_energy_j"], rel=1e-6)
    assert r["energy_split_null_reason"] is None and r["gpu_mem_used_bytes"] == 12 << 30
    assert json.loads(r["gpu_state_end"])["0"]["sm_clock_mhz"] == 1980


def test_an_estimate_only_when_asked_and_labelled(monkeypatch):
    # The row's columns as before the estimate became a flag of the reading: the flag column, the source's text.
    meter = EnergyMeter([], ["CPU energy: no RAPL zones"])
    asked = run_generations(StandInBackend(), plan(idle_s=0.0, estimate_w=65.0), meter)
    assert (asked["energy_j"] == 65.0 * asked["energy_window_s"]).all() and asked["energy_is_estimate"].all()
    assert asked["energy_source"][0] == ("estimate: 65 W assumed × window (bench.energy_estimate_w), "
                                         "not measured: CPU energy: no RAPL zones")
    assert asked["energy_null_reason"].is_null().all() and asked["energy_net_j"].is_null().all()
    plain = run_generations(StandInBackend(), plan(idle_s=0.0), meter)
    assert plain["energy_j"].is_null().all() and not plain["energy_is_estimate"].any()


def test_a_measured_window_is_never_flagged_an_estimate(monkeypatch):
    clock = iter([0.0, 0.0, 1.0, 1.0, 3.0, 3.0])
    monkeypatch.setattr(meters.time, "perf_counter", lambda: next(clock))
    meter = EnergyMeter([ScriptedSensor([0, 0, 100, 100, 200, 200])], [])
    rows = run_generations(StandInBackend(), plan(idle_s=0.0, repetitions=2, estimate_w=65.0), meter)
    assert rows["energy_j"].to_list() == [100.0, 100.0] and not rows["energy_is_estimate"].any()
    assert rows["energy_source"].to_list() == ["stand-in-sensor"] * 2
    assert [json.loads(s) for s in rows["energy_by_sensor_j"]] == [{"stand-in-sensor": 100.0}] * 2


def test_out_of_memory_mid_job_keeps_the_finished_generations_and_adds_a_failed_row():
    class OutOfMemoryOnThirdCall(StandInBackend):  # a stand-in engine: warm-up, two generations, then no memory
        def generate(self, *args):
            if len(self.calls) == 3:
                raise OutOfMemory("out of memory: cudaMalloc failed: out of memory; lower ctx_size")
            return super().generate(*args)

    two_prompts = (Prompt("a", "hi", 8), Prompt("b", "there", 8))
    rows = run_generations(OutOfMemoryOnThirdCall(), plan(idle_s=0.0, prompts=two_prompts),
                           EnergyMeter([], ["no sensor"]))
    assert rows["status"].to_list() == ["ok", "ok", "failed"]
    # A round holds every prompt once: the first round's two generations finished.
    assert rows["prompt_id"].to_list()[:2] == ["a", "b"]
    assert "cudaMalloc failed" in rows["status_reason"][2]


def test_out_of_memory_before_any_generation_is_left_to_the_job():
    class OutOfMemoryAtOnce(StandInBackend):  # a stand-in engine that fails its warm-up
        def generate(self, *args):
            raise OutOfMemory("out of memory: failed to allocate compute buffers")

    with pytest.raises(OutOfMemory):
        run_generations(OutOfMemoryAtOnce(), plan(idle_s=0.0, warmup=0), EnergyMeter([], ["no sensor"]))


def test_reasons_name_paths_relative_to_the_project_and_home_as_tilde(tmp_path):
    home = tmp_path / "home" / "ann"
    work = home / "study"
    text = (f"{work}/res/llama.cpp/bin has no libllama.so; see {work} and {home}/.cache/x.log "
            f"(not {work}-old/a, /elsewhere{work}/b, {home}other)")
    assert runs.shareable_reason(text, workdir=work, home=home) == (
        "res/llama.cpp/bin has no libllama.so; see . and ~/.cache/x.log "
        f"(not ~/study-old/a, /elsewhere{work}/b, {home}other)"
    )
    assert runs.shareable_reason(None) is None
    assert runs.shareable_reason("no `ollama` binary is on PATH") == "no `ollama` binary is on PATH"


def test_skipped_and_failed_rows_quote_no_path_of_this_machine(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    from conftest import REPO
    from llmbench.engines.base import ToolUnavailable
    from llmbench.engines.vllm import Vllm, VllmSettings

    monkeypatch.chdir(REPO)  # Snakemake runs every job in the project
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ToolUnavailable) as vllm_missing:
        Vllm(VllmSettings(model=tmp_path / "m.gguf"), tmp_path / "engine.log").start()
    reasons = [str(vllm_missing.value)]
    assert "(.venv)" in reasons[0] or Path(sys.prefix).name in reasons[0]
    lib = REPO / "res/llama.cpp/0.3.36-cpu/bin"
    rows = [runs.skipped_run(plan(), f"vLLM is not installed ({REPO}/.venv/bin/python3)"),
            runs.failed_run(plan(), f"{lib} has no libllama.so; log: {Path.home()}/x.log", "exited"),
            runs.skipped_run(plan(), reasons[0])]
    reasons += [row["status_reason"][0] for row in rows]
    assert reasons[1] == "vLLM is not installed (.venv/bin/python3)"
    assert reasons[2] == "res/llama.cpp/0.3.36-cpu/bin has no libllama.so; log: ~/x.log"
    for reason in reasons:
        assert str(REPO) not in reason and sys.executable not in reason, reason


def test_what_an_engine_does_between_generations_is_outside_the_measured_window():
    # Ollama evicts its prompt cache between repetitions: that work must not be measured as the next generation.
    events = []

    class Between(StandInBackend):
        def before_generation(self, prompt):
            events.append("before_generation")

        def generate(self, prompt, max_tokens, temperature, seed):
            events.append("generate")
            return super().generate(prompt, max_tokens, temperature, seed)

    class Watched(EnergyMeter):
        def begin_window(self, name):
            events.append(f"begin_window {name}")
            return super().begin_window(name)

    run_generations(Between(), plan(idle_s=0.0, warmup=0), Watched([], ["no sensor"]))
    # The level's window holds every generation; each generation's own opens after the engine's work between.
    assert events[:4] == ["begin_window level", "before_generation", "begin_window a/0", "generate"]
    assert events.count("before_generation") == events.count("generate")


def test_an_engine_whose_counters_cannot_be_read_keeps_its_rows():
    class DiesAfterTwo(StandInBackend):  # a stand-in server: its /metrics is gone once it failed
        def counters(self):
            if len(self.calls) > 2:
                raise ConnectionRefusedError("connection refused")
            return {"prompt_tokens": 0.0, "generated_tokens": 0.0}

        def generate(self, *args):
            if len(self.calls) == 3:
                raise OutOfMemory("out of memory: cudaMalloc failed: out of memory; lower ctx_size")
            return super().generate(*args)

    rows = run_generations(DiesAfterTwo(), plan(idle_s=0.0, prompts=(Prompt("a", "hi", 8), Prompt("b", "x", 8))),
                           EnergyMeter([], ["no sensor"]))
    assert rows["status"].to_list() == ["ok", "ok", "failed"]
    assert rows["server_counts_check"][0].startswith("not cross-checked: its token counters could not be read")
