"""GPU slots: flock files on a temporary lock folder; other jobs are real processes (killed ones too)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, nvml_works
from llmbench.devices.gpu_slots import GpuSlots, NvmlDevice, default_lock_dir, gpu_count, visible_devices_env

ENV = {**os.environ, "PYTHONPATH": str(REPO / "workflow" / "scripts")}

# Another job: waits for the go file (so all workers race for the GPUs at once), holds one GPU for 0.15 s and
# prints "gpu start end" in time.monotonic(), one clock for every process of the machine.
WORKER = """
import sys, time
from pathlib import Path
from llmbench.devices.gpu_slots import GpuSlots
lock_dir, go, k = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(lock_dir.parent / f"ready-{k}").touch()
while not go.exists():
    time.sleep(0.005)
with GpuSlots(1, 2, lock_dir, timeout_s=30, poll_s=0.02, job=f"worker-{k}") as s:
    gpu, start = s.ids[0], time.monotonic()
    time.sleep(0.15)
    end = time.monotonic()
print(gpu, repr(start), repr(end), flush=True)
"""

# A job that takes every GPU, says so and sleeps until killed.
HOLDER = """
import sys, time
from pathlib import Path
from llmbench.devices.gpu_slots import GpuSlots
with GpuSlots(0, 2, Path(sys.argv[1]), exclusive=True, job="doomed") as s:
    print("held", s.cuda_visible_devices, flush=True)
    time.sleep(60)
"""


def standin_devices(n: int) -> list[NvmlDevice]:
    """Stand-ins for the GPUs NVML would list on an n-GPU machine of one model."""
    return [NvmlDevice(i, f"GPU-standin-{i}", "NVIDIA H100 80GB HBM3") for i in range(n)]


@pytest.fixture
def locks(tmp_path) -> Path:
    return tmp_path / "locks"


def test_more_gpus_than_the_machine_has_says_the_fix(locks):
    with pytest.raises(ValueError, match=r"asks for 3 GPUs but this machine has 2; lower the tool's gpus"):
        GpuSlots(3, 2, locks)


def test_two_one_gpu_jobs_get_distinct_devices_and_a_third_waits(locks):
    with GpuSlots(1, 2, locks, job="a") as a, GpuSlots(1, 2, locks, job="b") as b:
        assert sorted(a.ids + b.ids) == [0, 1]
        assert (locks / f"gpu-{a.ids[0]}.lock").read_text() == f"pid {os.getpid()} job a\n"
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as e, GpuSlots(1, 2, locks, timeout_s=0.3, poll_s=0.05, job="c"):
            pass
        assert time.monotonic() - t0 >= 0.3
        assert f"GPU 0: pid {os.getpid()} job" in str(e.value) and f"GPU 1: pid {os.getpid()} job" in str(e.value)
    with GpuSlots(1, 2, locks, timeout_s=0.3) as c:  # released on exit: the next one gets in at once
        assert c.ids == [0] and c.cuda_visible_devices == "0"
    assert (locks / "gpu-0.lock").read_text() == ""  # a free GPU's file names nobody


def test_a_job_for_two_gpus_waits_while_one_is_taken(locks):
    with GpuSlots(1, 2, locks), pytest.raises(TimeoutError, match="no 2 of 2 GPUs free"):
        with GpuSlots(2, 2, locks, timeout_s=0.1, poll_s=0.02):
            pass
    with GpuSlots(2, 2, locks, timeout_s=0.1) as both:
        assert both.ids == [0, 1] and both.cuda_visible_devices == "0,1"


def test_exclusive_takes_every_gpu(locks):
    with GpuSlots(1, 3, locks, exclusive=True) as s:
        assert s.ids == [0, 1, 2]
        with pytest.raises(TimeoutError):
            GpuSlots(1, 3, locks, timeout_s=0).__enter__()


def test_a_killed_job_frees_its_gpus(locks):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(locks)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().split() == ["held", "0,1"]
        with pytest.raises(TimeoutError, match=f"GPU 0: pid {p.pid} job doomed"):
            GpuSlots(1, 2, locks, timeout_s=0, job="waiting").__enter__()
    finally:
        os.kill(p.pid, signal.SIGKILL)  # no __exit__ runs: only the kernel can free the locks
        p.wait()
        p.stdout.close()
    with GpuSlots(2, 2, locks, timeout_s=2) as s:
        assert s.ids == [0, 1]


def test_concurrent_jobs_never_share_a_gpu(tmp_path, locks):
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(locks), str(go), str(k)], env=ENV,
                         stdout=subprocess.PIPE, text=True)
        for k in range(6)
    ]
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("ready-*"))) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=30)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    runs = [(int(g), float(a), float(b)) for g, a, b in (out.split() for out in outs)]
    for gpu in (0, 1):
        spans = sorted((a, b) for g, a, b in runs if g == gpu)
        assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False)), spans
    assert {g for g, _, _ in runs} == {0, 1}


def test_child_environment_names_the_devices_in_nvml_order():
    assert visible_devices_env([1, 0]) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert visible_devices_env([])["CUDA_VISIBLE_DEVICES"] == ""  # no GPU job sees no GPU


def test_default_lock_dir_is_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBENCH_GPU_LOCK_DIR", str(tmp_path / "shared"))
    d = default_lock_dir()
    assert d == tmp_path / "shared" and d.stat().st_mode & 0o777 == 0o777


@pytest.mark.skipif(nvml_works(), reason="this machine has a working NVML")
def test_gpu_count_without_a_gpu_says_why():
    count, reason = gpu_count()
    assert count == 0 and "NVML" in reason


def test_hold_gpus_sets_and_restores_what_cuda_sees(monkeypatch, tmp_path):
    from llmbench.devices import gpu_slots

    monkeypatch.setenv("LLMBENCH_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpu_slots, "nvml_devices", lambda: (standin_devices(2), None))  # a two-GPU machine
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with gpu_slots.hold_gpus(1, job="a") as a, gpu_slots.hold_gpus(1, job="b") as b:
        assert sorted(a + b) == [0, 1]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == str(b[0])  # the latest holder's, as in its own process
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with gpu_slots.hold_gpus(0) as none:
        assert none == [] and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_no_gpu_machine_gives_no_ids_and_leaves_the_environment(monkeypatch):
    from llmbench.devices import gpu_slots

    monkeypatch.setattr(gpu_slots, "nvml_devices", lambda: ([], "NVML could not start"))
    with gpu_slots.hold_gpus(2) as ids:
        assert ids == []


def test_under_slurm_the_job_holds_the_gpus_slurm_gave_without_a_lock(monkeypatch, tmp_path):
    from llmbench.devices import gpu_slots

    locks = tmp_path / "locks"
    monkeypatch.setenv("LLMBENCH_GPU_LOCK_DIR", str(locks))
    monkeypatch.setattr(gpu_slots, "nvml_devices", lambda: (standin_devices(4), None))  # an unfenced 4-GPU node
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_STEP_GPUS", "2,3")
    with gpu_slots.hold_gpus(2, job="a") as ids:
        assert ids == [2, 3] and os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
        # No GPU lock (SLURM fences the GPUs); the machine's measurement lock is held, shared, as by any GPU job.
        assert not list(locks.glob("gpu-*.lock")) and (locks / "measure.lock").exists()
    monkeypatch.setenv("SLURM_STEP_GPUS", "2")
    with pytest.raises(RuntimeError, match="SLURM gave this job 1 GPU"), gpu_slots.hold_gpus(2, job="b"):
        pass
