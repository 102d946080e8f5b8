"""Logging for rule scripts: to the rule's log file and to stderr, with failures written to both; a tool run
with its output into a log file; and the wall-clock limit of a llama.cpp tool run (:func:`tool_limit`).

Every llama.cpp tool run (llama-bench, llama-batched-bench, llama-perplexity, llama-quantize) has a limit, so that
a tool that hangs ends its job instead of holding it for ever. The limit is derived from the run's work at floor
rates of the slowest machine the workflow is meant for, 2 CPU cores and a slow disk, where llama.cpp decodes an 8B
Q4 model (4.6 GB) at about 2 tokens/s (each token reads every weight: ~10 GB/s) and prefills about 10 times
faster; the floors below are a tenth of that or less, so a healthy run there stays well inside its limit:

    limit [s] = 300 + model bytes / 50 MB/s (load)
                + prompt tokens × model bytes / 4 GB/s + generated tokens × model bytes / 1 GB/s
                + (llama-quantize) source bytes / 2 MB/s

``bench.tool_timeout_s`` in the config replaces the derived limit (null, the default, derives it).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# The floor rates of the limit (see above). A token costs model bytes / rate seconds: llama.cpp reads every weight
# once per decoded token, and once per batch of prompt tokens.
TOOL_LIMIT_FLOOR_S = 300.0  # start-up and warm-up; no limit is shorter
LOAD_BYTES_PER_S = 50e6  # reading the model file from disk
PREFILL_BYTES_PER_S = 4e9  # prompt tokens (batched): llama-perplexity's chunks, llama-bench's pp tests and depth
DECODE_BYTES_PER_S = 1e9  # generated tokens
QUANTIZE_BYTES_PER_S = 2e6  # llama-quantize's source file (i-quants search per block: the slowest types)
TOOL_TIMEOUT_KEY = "bench.tool_timeout_s"
_SHARD = re.compile(r"^(?P<prefix>.+)-\d{5}-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class ToolLimit:
    """The wall-clock limit of one tool run [s], and where it came from (``source``, quoted when it is hit)."""

    seconds: float
    source: str


def model_bytes(path: str | Path | None) -> int:
    """The size of a model file [bytes], every shard of a split GGUF counted (given its first shard,
    NAME-00001-of-0000N.gguf); 0 for a file that is not there (the tool then fails at once)."""
    if path is None:
        return 0
    path = Path(path)
    if m := _SHARD.match(path.name):
        shards = path.parent.glob(f"{glob.escape(m['prefix'])}-[0-9][0-9][0-9][0-9][0-9]-of-{m['count']}.gguf")
        return sum(p.stat().st_size for p in shards if p.is_file())
    return path.stat().st_size if path.is_file() else 0


def tool_limit(model_size: int, *, prompt_tokens: int = 0, generated_tokens: int = 0, quantized_bytes: int = 0,
               override_s: float | None = None) -> ToolLimit:
    """The wall-clock limit of a llama.cpp tool run [s] from its work (see the module's formula): ``model_size``
    [bytes] loaded, ``prompt_tokens`` evaluated, ``generated_tokens`` decoded, ``quantized_bytes`` quantized;
    ``override_s`` (bench.tool_timeout_s) replaces it. Rounded up to whole seconds. ValueError for a negative
    amount or an override that is not above 0."""
    if override_s is not None:
        if not override_s > 0:
            raise ValueError(f"{TOOL_TIMEOUT_KEY} is {override_s}: give a number of seconds above 0, or null to "
                             "derive each run's limit from its work")
        return ToolLimit(float(override_s), f"{TOOL_TIMEOUT_KEY} in the config")
    if min(model_size, prompt_tokens, generated_tokens, quantized_bytes) < 0:
        raise ValueError(f"a tool run's work cannot be negative: model {model_size} bytes, {prompt_tokens} prompt "
                         f"and {generated_tokens} generated tokens, {quantized_bytes} bytes quantized")
    seconds = (TOOL_LIMIT_FLOOR_S + model_size / LOAD_BYTES_PER_S
               + prompt_tokens * model_size / PREFILL_BYTES_PER_S
               + generated_tokens * model_size / DECODE_BYTES_PER_S + quantized_bytes / QUANTIZE_BYTES_PER_S)
    work = ", ".join(x for x in (
        f"a {model_size / 1e9:.3g} GB model", f"{prompt_tokens:,} prompt tokens" if prompt_tokens else "",
        f"{generated_tokens:,} generated tokens" if generated_tokens else "",
        f"{quantized_bytes / 1e9:.3g} GB quantized" if quantized_bytes else "") if x)
    return ToolLimit(float(math.ceil(seconds)), f"derived from the run's work ({work}) at the floor rates of "
                     f"llmbench.core.logs; {TOOL_TIMEOUT_KEY} in the config overrides it")


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
    With ``timeout_s`` (seconds), a command still running then is killed with every process it started:
    returncode None and stdout None; what it printed to stdout is copied into the log, then a line saying why it
    ended.
    The command is killed too where this call is interrupted (a signal turned into an exception, Ctrl-C).
    Raises OSError where the command cannot start or the log cannot be written.
    """
    cmd = [str(c) for c in cmd]
    log_path = Path(log_path)
    start = log_path.stat().st_size if append and log_path.exists() else 0
    with open(log_path, "a" if append else "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        # Its own process group: a child it started that holds the output pipe would keep communicate() waiting
        # after the command alone was killed.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if capture_stdout else log, stderr=log,
                                stdin=subprocess.DEVNULL, text=True, env=None if env is None else dict(env),
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            partial, _ = proc.communicate()
            log.write(f"{stdout_heading if capture_stdout else ''}{partial or ''}\n# llmbench: still running after "
                      f"{timeout_s:g} s, its limit: killed\n")
            stdout, returncode = None, None
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        else:
            returncode = proc.returncode
            if capture_stdout:
                log.write(stdout_heading + stdout)
    output = log_path.read_bytes()[start:].decode(errors="replace")
    return LoggedRun(returncode, output, stdout, proc.pid)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the command's process group (run_logged starts it as its own session), or the command alone where
    the group is gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
