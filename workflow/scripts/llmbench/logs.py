"""Logging for rule scripts: to the rule's log file and to stderr, with failures written to both; and a tool run
with its output into a log file."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@contextlib.contextmanager
def script_logging(log_path: str | Path):
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handlers = [logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
    try:
        yield logging.getLogger("llmbench")
    except BaseException as e:
        logging.getLogger("llmbench").error("%s: %s", type(e).__name__, e)
        raise
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()


@dataclass(frozen=True)
class LoggedRun:
    """What run_logged saw of one run of a command."""

    returncode: int | None  # None where it ran past its timeout and was killed
    output: str  # what this run added to the log: "$ command" first, then the tool's output
    stdout: str | None  # the tool's stdout, where it was kept apart (capture_stdout)
    pid: int  # to find the kernel's words about the process (dmesg) after it died

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run_logged(cmd: Sequence[str], log_path: str | Path, *, append: bool = False, capture_stdout: bool = False,
               stdout_heading: str = "# stdout:\n", env: Mapping[str, str] | None = None,
               timeout_s: float | None = None) -> LoggedRun:
    """Run ``cmd`` (stdin closed) with its output in ``log_path``, after a "$ command" line; never raises for the
    command's exit status: each caller says what a failure means.

    The log is written afresh, or after what it holds with ``append`` (a rerun into the same log; a log a script
    holds open in append mode: flush it first). With ``capture_stdout`` only stderr streams into the log, and
    stdout, returned apart for parsing, is copied into the log after ``stdout_heading`` once the command ends.
    With ``timeout_s`` (seconds), a command still running then is killed: returncode None, stdout not copied.
    Raises OSError where the command cannot start or the log cannot be written.
    """
    cmd = [str(c) for c in cmd]
    log_path = Path(log_path)
    start = log_path.stat().st_size if append and log_path.exists() else 0
    with open(log_path, "a" if append else "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if capture_stdout else log, stderr=log,
                                stdin=subprocess.DEVNULL, text=True, env=None if env is None else dict(env))
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            stdout, returncode = None, None
        else:
            returncode = proc.returncode
            if capture_stdout:
                log.write(stdout_heading + stdout)
    output = log_path.read_bytes()[start:].decode(errors="replace")
    return LoggedRun(returncode, output, stdout, proc.pid)
