"""After a kill: the recovery Snakemake prints works as printed (README, "After an interrupted run").

A real run of a real job (the memory-bandwidth measurement, seconds on any machine) is killed with SIGKILL while
it holds Snakemake's lock, as a kill -9 or a power loss leaves a study.
"""

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


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=work, capture_output=True, text=True)


def kill_while_running(work: Path, *args: str) -> None:
    """Start the run, wait until it holds the lock and its job has started, then SIGKILL it and its job."""
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (any((work / ".snakemake/locks").glob("*")) and any((work / ".snakemake/incomplete").glob("*"))):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never started its job"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the run and the job it started
        proc.wait()


def test_unlock_without_cores_then_the_same_command_recovers_a_killed_run(tmp_path):
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / item)
    run = ("--cores", "2", TARGET)
    kill_while_running(tmp_path, *run)

    refused = snakemake(tmp_path, *run)
    assert refused.returncode != 0 and "Directory cannot be locked" in refused.stderr
    assert "--unlock" in refused.stderr

    # As printed: no --cores (the whole-machine rules ask for the cores only when a job is made).
    unlock = snakemake(tmp_path, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    assert not any((tmp_path / ".snakemake/locks").glob("*"))

    # A job killed while writing leaves a partial file: Snakemake knows it was not finished and says so, naming
    # --rerun-incomplete, which reruns it (a job killed before writing anything is rerun without being asked).
    (tmp_path / TARGET).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / TARGET).write_text('{"cpu": {')
    incomplete = snakemake(tmp_path, *run)
    assert incomplete.returncode != 0 and "--rerun-incomplete" in incomplete.stderr
    assert "cannot be locked" not in incomplete.stderr

    again = snakemake(tmp_path, *run, "--rerun-incomplete")
    assert again.returncode == 0, again.stderr[-3000:]
    measured = json.loads((tmp_path / TARGET).read_text())
    assert measured["cpu"]["bytes_per_s"] > 0
    assert "Nothing to be done" in snakemake(tmp_path, "-n", *run).stdout


def test_a_killed_job_that_wrote_nothing_is_rerun_by_the_same_command(tmp_path):
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / item)
    run = ("--cores", "2", TARGET)
    kill_while_running(tmp_path, *run)
    assert not (tmp_path / TARGET).exists()
    assert snakemake(tmp_path, "--unlock").returncode == 0
    again = snakemake(tmp_path, *run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / TARGET).read_text())["cpu"]["bytes_per_s"] > 0
