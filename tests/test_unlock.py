"""After a kill: the recovery Snakemake prints works as printed (README, "After an interrupted run").

A real run of a real job (the memory-bandwidth measurement, seconds on any machine) is killed with SIGKILL while
it holds Snakemake's lock: Snakemake alone, as `kill -9 PID` does (its job goes on and writes its output), or
Snakemake with its job, as a power loss does.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

TARGET = "results/hardware/memory_bandwidth.json"
JOB_LOG = "logs/measure_memory_bandwidth.log"


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=work, capture_output=True, text=True)


def started(work: Path, *args: str) -> subprocess.Popen:
    """A run in a session of its own, returned once it holds the lock and its job's script runs (it opened its log)."""
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (any((work / ".snakemake/locks").glob("*")) and (work / JOB_LOG).exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the run ended or never started its job before it could be killed")
        time.sleep(0.02)
    return proc


def copy_workflow(work: Path) -> None:
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / item)


def test_kill_9_of_snakemake_alone_then_unlock_and_rerun_incomplete(tmp_path):
    copy_workflow(tmp_path)
    run = ("--cores", "2", TARGET)
    proc = started(tmp_path, *run)
    os.kill(proc.pid, signal.SIGKILL)  # Snakemake alone, as `kill -9 PID` does: its job goes on
    proc.wait()
    deadline = time.monotonic() + 300
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)  # raises once no process of the run's session is left
            time.sleep(0.1)
    assert (tmp_path / TARGET).exists()  # written by the orphaned job, never recorded as done

    incomplete = snakemake(tmp_path, *run)
    assert incomplete.returncode != 0 and "seem to be incomplete" in incomplete.stderr
    assert "--rerun-incomplete" in incomplete.stderr
    refused = snakemake(tmp_path, *run, "--rerun-incomplete")
    assert refused.returncode != 0 and "Directory cannot be locked" in refused.stderr
    assert "--unlock" in refused.stderr

    # As printed: no --cores (the whole-machine rules ask for the cores only when a job is made).
    unlock = snakemake(tmp_path, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    assert not any((tmp_path / ".snakemake/locks").glob("*"))

    again = snakemake(tmp_path, *run, "--rerun-incomplete")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / TARGET).read_text())["cpu"]["bytes_per_s"] > 0
    assert "Nothing to be done" in snakemake(tmp_path, "-n", *run).stdout


def test_a_run_killed_whole_is_unlocked_then_finished_by_the_same_command(tmp_path):
    copy_workflow(tmp_path)
    run = ("--cores", "2", TARGET)
    proc = started(tmp_path, *run)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job at once, as a power loss
    proc.wait()
    assert not (tmp_path / TARGET).exists()

    refused = snakemake(tmp_path, *run)
    assert refused.returncode != 0 and "Directory cannot be locked" in refused.stderr
    unlock = snakemake(tmp_path, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    again = snakemake(tmp_path, *run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / TARGET).read_text())["cpu"]["bytes_per_s"] > 0
