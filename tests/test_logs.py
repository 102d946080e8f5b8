"""A command run with its output into a log file (llmbench.core.logs.run_logged)."""

import sys

from llmbench.core.logs import run_logged

PY = sys.executable
BOTH = "import sys; print('out'); print('err', file=sys.stderr)"


def test_output_goes_into_the_log_after_the_command_line(tmp_path):
    log = tmp_path / "tool.log"
    run = run_logged([PY, "-c", BOTH], log)
    text = log.read_text()
    assert text.startswith(f"$ {PY} -c {BOTH}\n") and "out\n" in text and "err\n" in text
    assert run.returncode == 0 and run.output == text and run.stdout is None and not run.timed_out


def test_the_exit_status_is_returned_not_raised(tmp_path):
    run = run_logged([PY, "-c", "raise SystemExit(3)"], tmp_path / "tool.log")
    assert run.returncode == 3


def test_append_keeps_the_log_and_returns_only_this_run(tmp_path):
    log = tmp_path / "tool.log"
    log.write_text("before\n")
    run = run_logged([PY, "-c", "print('second')"], log, append=True)
    assert log.read_text().startswith("before\n$ ") and run.output.startswith("$ ") and "before" not in run.output


def test_stdout_kept_apart_is_returned_and_copied_into_the_log_after_stderr(tmp_path):
    log = tmp_path / "tool.log"
    run = run_logged([PY, "-c", BOTH], log, capture_stdout=True)
    assert run.stdout == "out\n" and log.read_text().endswith("err\n# stdout:\nout\n") and run.output == log.read_text()
    run_logged([PY, "-c", BOTH], log, capture_stdout=True, stdout_heading="")
    assert log.read_text().endswith("err\nout\n")


def test_a_command_past_its_timeout_is_killed(tmp_path):
    run = run_logged([PY, "-c", "import time; time.sleep(30)"], tmp_path / "tool.log", timeout_s=0.5)
    assert run.timed_out and run.returncode is None and run.pid > 0


def test_the_environment_given_is_the_commands(tmp_path):
    run = run_logged([PY, "-c", "import os; print(os.environ['LLMBENCH_X'])"], tmp_path / "tool.log",
                     env={"LLMBENCH_X": "42"})
    assert run.returncode == 0 and run.output.endswith("42\n")


def test_a_command_past_its_timeout_is_killed_with_the_children_holding_its_output(tmp_path):
    # The command starts a child that inherits its stdout and sleeps on: killing the command alone would leave
    # the pipe open and the call waiting for the child.
    import time

    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    start = time.monotonic()
    run = run_logged([PY, "-c", child + "print('partial', flush=True); time.sleep(60)"], tmp_path / "tool.log",
                     capture_stdout=True, timeout_s=1)
    assert time.monotonic() - start < 30 and run.timed_out and run.stdout is None
    # What it printed is kept in the log, with why it ended.
    assert run.output.endswith("# stdout:\npartial\n\n# llmbench: still running after 1 s, its limit: killed\n")
