"""One run of the study at a time in a checkout (llmbench.core.runlock), through real Snakemake runs: a second run is
refused naming the live one, and `--unlock` while a run is alive is refused too; once the run is gone (even by
SIGKILL: the kernel drops its lock) both work. The live run is a process holding the lock as a run's onstart
hook does, so that no build has to be in progress."""

import os
import signal
import subprocess
import sys
import time

from test_unlock import copy_workflow, snakemake

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO / "workflow" / "scripts")}
# A stand-in for a live run: it takes the run lock as the workflow's onstart hook does and stays alive.
LIVE_RUN = "from llmbench.core import runlock\nrunlock.take()\nprint('holding', flush=True)\nimport time\ntime.sleep(300)\n"


def test_a_second_run_and_unlock_are_refused_while_a_run_is_alive(tmp_path):
    copy_workflow(tmp_path)
    live = subprocess.Popen([sys.executable, "-c", LIVE_RUN], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert live.stdout.readline().strip() == "holding"
        second = snakemake(tmp_path, "--cores", "1", "results/config/study.yaml")
        assert second.returncode != 0
        assert f"another run of this study is alive in {tmp_path} (pid {live.pid} since" in second.stderr
        assert not (tmp_path / "results/config/study.yaml").exists()
        unlock = snakemake(tmp_path, "--unlock")
        assert unlock.returncode != 0 and f"--unlock refused: a run of this study is still alive here (pid {live.pid}" \
            in unlock.stderr
        dry = snakemake(tmp_path, "-n", "results/config/study.yaml")  # looking is harmless
        assert dry.returncode == 0, dry.stderr[-2000:]
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    time.sleep(0.1)
    assert snakemake(tmp_path, "--unlock").returncode == 0
    done = snakemake(tmp_path, "--cores", "1", "results/config/study.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results/config/study.yaml").exists()


def test_the_lock_names_nobody_once_its_run_is_gone(tmp_path, monkeypatch):
    from llmbench.core import runlock

    monkeypatch.chdir(tmp_path)
    assert runlock.holder() is None
    fd = runlock.take()
    try:
        assert runlock.holder().startswith(f"pid {os.getpid()} since ")
    finally:
        os.close(fd)
    assert runlock.holder() is None
    runlock.refuse_unlock(["snakemake", "--unlock"])  # nothing alive: no refusal
