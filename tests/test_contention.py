"""Contention seen: other processes' CPU time over a window (llmbench.devices.contention), the rows measured beside another
load flagged and left out of the statistics with the reason, and the machine-wide measurement lock that keeps the
study's own jobs apart (llmbench.devices.gpu_slots.MachineLock) across processes, as two Snakemake runs would be."""

import os
import subprocess
import sys
import time

import polars as pl
import pytest
from test_meters import ScriptedSensor
from test_runs import StandInBackend, plan

from conftest import REPO
from llmbench.devices import meters
from llmbench.devices.contention import CONTENDED_CORES, CpuSample, CpuWatch, cpu_sample, judge
from llmbench.devices.gpu_slots import MachineLock
from llmbench.devices.meters import EnergyMeter
from llmbench.engines.runs import run_generations
from llmbench.outputs.costs import cost_table
from llmbench.outputs.stats import summarize_runs

ENV = {**os.environ, "PYTHONPATH": str(REPO / "workflow" / "scripts")}


def test_others_cpu_time_is_the_machines_less_the_jobs_own():
    # 3 s of CPU on the machine over a 2 s window, 2.5 of them the job's (its engine's threads): 0.5 s others'.
    found = judge(CpuSample(100.0, {1: 10.0}), CpuSample(103.0, {1: 11.0, 2: 1.5}), 2.0, cores=2)
    assert found.other_cpu_s == pytest.approx(0.5) and not found.contended and found.reason is None
    # Another study on the machine: 2 s of others' CPU over 2 s, a whole core on average.
    found = judge(CpuSample(100.0, {1: 10.0}), CpuSample(106.0, {1: 14.0}), 2.0, cores=2)
    assert found.contended and found.other_cpu_s == pytest.approx(2.0)
    assert "other processes used 2.00 s of CPU over the 2.00 s window (1.00 of this machine's 2 cores" in found.reason
    assert "left out of the statistics" in found.reason
    # The two counters tick apart: never a negative time; a window of a few ticks is not judged on rounding.
    assert judge(CpuSample(100.0, {1: 10.0}), CpuSample(100.5, {1: 10.6}), 1.0).other_cpu_s == 0.0
    assert not judge(CpuSample(0.0, {}), CpuSample(0.05, {}), 0.05).contended  # 1 core, but 5 ticks
    # A process of the job's that ended inside the window is not seen: its time there counts as others'.
    assert judge(CpuSample(10.0, {1: 1.0, 2: 5.0}), CpuSample(11.0, {1: 1.5}), 1.0).other_cpu_s == pytest.approx(0.5)
    assert CONTENDED_CORES == 0.5


def test_a_watch_that_cannot_read_the_counters_says_so_and_flags_nothing():
    def unreadable():
        raise PermissionError("/proc/stat")

    watch = CpuWatch(unreadable)
    watch.begin("g")
    found = watch.end("g", 1.0)
    assert found.other_cpu_s is None and not found.contended and "not watched" in found.reason


def burner(seconds: float) -> int:
    """A CPU burner outside this process's tree (double fork: its parent is init), as another study would be;
    returns its pid."""
    # It closes its output once it has said its pid, so that the caller's read ends then, not when it does.
    code = (f"import os, time\nif os.fork(): os._exit(0)\nprint(os.getpid(), flush=True)\nos.close(1)\n"
            f"os.close(2)\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    return int(out.split()[0])


def test_another_program_spinning_beside_the_window_is_seen_as_others_cpu_time():
    pid = burner(3.0)
    try:
        time.sleep(0.2)
        watch = CpuWatch(cpu_sample)
        watch.begin("g")
        time.sleep(1.0)  # the job itself idle: whatever the machine did, others did
        found = watch.end("g", 1.0)
    finally:
        subprocess.run(["kill", str(pid)], check=False)
    assert found.contended and found.other_cpu_s > 0.5


def test_the_jobs_own_engine_is_not_other():
    # A child process of the job (as llama-server is) spinning: its CPU time is the job's own.
    own = cpu_sample()
    # It burns 0.5 s of its own CPU time, however loaded the machine is, then waits to be read.
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nwhile time.process_time() < 0.5: pass\n"
                              "print('done', flush=True)\nsys.stdin.read()\n"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"
        after = cpu_sample()
    finally:
        child.communicate("")
    assert after.own_s[child.pid] >= 0.45 and child.pid not in own.own_s


class ScriptedWatch(CpuWatch):
    """A stand-in for the kernel's counters: others' CPU time per window, scripted."""

    def __init__(self, others: list[float]):
        self.others = iter(others)
        super().__init__(self.sample)
        self.busy = 0.0

    def sample(self):
        return CpuSample(self.busy, {})

    def end(self, name, window_s):
        self.busy += next(self.others) * window_s
        return super().end(name, window_s)


def test_rows_measured_beside_another_load_are_flagged_and_left_out_of_the_statistics(monkeypatch):
    # Four 2 s windows; the third saw another program use 1.5 cores on average.
    clock = iter([0.0, 2.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 8.0, 8.0, 10.0, 10.0])
    monkeypatch.setattr(meters.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(meters.time, "sleep", lambda s: None)
    watch = ScriptedWatch([0.0, 0.0, 0.0, 1.5, 0.0, 0.4])  # idle, level opens, gens 1-4 ... level
    meter = EnergyMeter([ScriptedSensor([0, 100, 100, 100, 300, 300, 500, 500, 900, 900, 1100, 1100])], [],
                        watch=watch)
    rows = run_generations(StandInBackend(), plan(repetitions=4, idle_s=2.0), meter)
    assert rows["status"].to_list() == ["ok", "ok", "contended", "ok"]
    assert rows["contended"].to_list() == [False, False, True, False]
    assert rows["other_cpu_s"].to_list() == pytest.approx([0.0, 0.0, 3.0, 0.0])
    assert "measured under contention" in rows["status_reason"][2]
    stats = summarize_runs(rows, ["decode_tokens_per_s", "energy_j"]).filter(pl.col("metric") == "energy_j")
    assert stats["n"].to_list() == [3] and stats["n_null"].to_list() == [1]
    assert "measured under contention" in stats["not_run_reason"][0]
    costs = cost_table(rows, 0.14, {})
    # 600 J over the 60 tokens of the three windows alone, not 1000 J over 80.
    assert costs["generations"].to_list() == [3] and costs["energy_windows"].to_list() == [3]
    assert costs["j_per_token"].to_list() == pytest.approx([10.0])
    assert costs["energy_basis"][0].endswith("1 generation(s) measured under contention left out (status 'contended')")


MACHINE_JOB = """
import sys, time
from pathlib import Path
from llmbench.devices.gpu_slots import MachineLock
lock_dir, exclusive, k = Path(sys.argv[1]), sys.argv[2] == "cpu", sys.argv[3]
with MachineLock(exclusive, lock_dir, timeout_s=30, poll_s=0.01, job=f"job-{k}"):
    start = time.monotonic(); time.sleep(0.2); end = time.monotonic()
print(sys.argv[2], repr(start), repr(end), flush=True)
"""


def test_measurements_of_two_runs_never_overlap_on_the_cpu_while_gpu_jobs_share(tmp_path):
    # Four processes as two Snakemake runs' jobs would be: two CPU measurements and two GPU jobs.
    kinds = ["cpu", "cpu", "gpu", "gpu"]
    procs = [subprocess.Popen([sys.executable, "-c", MACHINE_JOB, str(tmp_path), kind, str(k)], env=ENV,
                              stdout=subprocess.PIPE, text=True) for k, kind in enumerate(kinds)]
    spans = [p.communicate(timeout=60)[0].split() for p in procs]
    spans = [(kind, float(a), float(b)) for kind, a, b in spans]
    for i, (ki, a0, a1) in enumerate(spans):
        for kj, b0, b1 in spans[i + 1:]:
            if "cpu" in (ki, kj):  # a CPU measurement shares the machine with nothing
                assert a1 <= b0 or b1 <= a0


def test_a_measurement_waiting_too_long_is_refused_naming_the_holder(tmp_path):
    with MachineLock(True, tmp_path, job="first-run"), pytest.raises(TimeoutError) as e, \
            MachineLock(True, tmp_path, timeout_s=0.2, poll_s=0.05, job="second-run"):
        pass
    assert f"held by pid {os.getpid()} job first-run" in str(e.value)
    assert "two studies measured at once would share the CPU" in str(e.value)
    with MachineLock(False, tmp_path), MachineLock(False, tmp_path):  # GPU jobs share it
        pass
