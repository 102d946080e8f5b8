"""The one interface every bench tool implements: start, generate, stop; counts and times from the engine."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Generation:
    """One generation as the engine reported it (token counts are the engine's, never counted chunks)."""

    prompt_tokens: int | None
    prefill_tokens: int | None
    generated_tokens: int | None
    prefill_ms: float | None
    decode_ms: float | None
    prefill_tokens_per_s: float | None
    decode_tokens_per_s: float | None
    wall_ms: float
    finish_reason: str | None
    text: str  # the answer only (what accuracy scores), never a reasoning model's thinking
    ttft_ms: float | None = None  # to the first generated token of any kind, thinking included
    # How many of generated_tokens were thinking, where the engine says so; None where it does not (never counted
    # from chunks, never 0 for "unknown").
    reasoning_tokens: int | None = None
    # True where the engine served the prompt from its cache (no prefill measured: prefill_tokens and the rate
    # are null), False where it evaluated the whole prompt, None where not known.
    prefill_cached: bool | None = None


class Backend(Protocol):
    tool: str

    def start(self) -> None: ...

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> Generation: ...

    def stop(self) -> None: ...

    def facts(self) -> dict:
        """What the engine reports about this run (layers offloaded, engine version, …)."""
        ...

    def peak_rss_bytes(self) -> int | None:
        """Peak resident memory of the engine process so far; None where the engine is not our child."""
        ...


class Engine:
    """What every backend shares: ``with backend:`` starts it and always stops it, also on errors and signals."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def before_generation(self, prompt: str) -> None:
        """Called before each generation's measurement window opens: what an engine must do between generations
        (Ollama evicts its prompt cache) is then not measured as part of the next one."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def post_stream_once_more(url: str, body: dict, timeout: float, parse, engine: str, log_path: Path,
                          alive: Callable[[], bool]) -> Generation:
    """``post_stream``, sent once more when the stream is cut short (only then, never after other errors) while the
    engine is ``alive()``: a stream cut short is no result; cut short twice, the error names the engine log."""
    try:
        return post_stream(url, body, timeout, parse, engine, log_path)
    except StreamCutShort as first:
        if not alive():
            raise
        try:
            return post_stream(url, body, timeout, parse, engine, log_path)
        except StreamCutShort as again:
            raise StreamCutShort(f"{again}; cut short again when the request ran once more: see the engine log "
                                 f"{log_path}") from first


def post_stream(url: str, body: dict, timeout: float, parse, engine: str, log_path: Path) -> Generation:
    """POST a streamed request to an engine's OpenAI-style endpoint; ``parse(lines, t0)`` reads the answer."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return parse(_lines_until_cut(resp), t0)
    except urllib.error.HTTPError as e:
        raise BackendError(f"{engine} answered HTTP {e.code}: {e.read()[:500]!r}") from None
    except OSError as e:
        raise BackendError(f"{engine} stopped answering ({e}); log: {log_path}\n{log_tail(log_path)}") from None


def _lines_until_cut(resp):
    """The response's lines; a connection closed in the middle of a chunk ends them, so that the parser finds the
    stream's last chunk missing and says what was lost (StreamCutShort)."""
    try:
        yield from resp
    except http.client.IncompleteRead:
        return


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of an engine's log, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ToolUnavailable(RuntimeError):
    """The tool is not installed on this machine: its jobs end 'skipped' with this reason, and the study goes on."""


class BackendError(RuntimeError):
    """An engine that failed to start, died, or answered something unusable; the message says which and why."""


class StreamCutShort(BackendError):
    """A streamed answer that ended before its last chunk, which carries the engine's counts and timings: no
    result, never half a row. The engines run such a request once more."""


def cut_short(engine: str, missing: list[str], broken_line: str | None = None) -> StreamCutShort:
    """The error for a stream that ended without what its last chunk brings (``missing``, in the engine's words)."""
    gone = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else missing[0]
    return StreamCutShort(f"{engine}'s stream ended without {gone}: it was cut short before its last chunk"
                          + (f", in the middle of the line {broken_line[:200]!r}" if broken_line else ""))


# Where OpenAI-style streams put a reasoning model's thinking: llama-server's --reasoning-format and older vLLM
# name the delta field reasoning_content, newer vLLM and some llama.cpp builds reasoning.
THINKING = ("reasoning_content", "reasoning")


def reasoning_tokens(usage: dict | None) -> int | None:
    """The thinking tokens among the generated ones where the engine counts them (OpenAI's
    ``usage.completion_tokens_details.reasoning_tokens``); None where it does not: llama-server's usage and
    timings have no such count (tools/server/server-task.cpp), vLLM fills it only in some releases."""
    n = ((usage or {}).get("completion_tokens_details") or {}).get("reasoning_tokens")
    return int(n) if n is not None else None


def stream_error(engine: str, event) -> BackendError | None:
    """The error an engine sent inside a stream, quoting its message, type and code; None for a chunk that is none.

    Forms: ``{"error": {"message", "type", "code"}}`` (llama-server; vLLM since its ErrorInfo), ``{"error":
    {"object": "error", ...}}`` (older vLLM), ``{"object": "error", "message", ...}``, ``{"error": "text"}``.
    """
    if not isinstance(event, dict):
        return None
    if isinstance(event.get("error"), dict):
        err = event["error"]
    elif event.get("error"):
        err = {"message": str(event["error"])}
    elif event.get("object") == "error":
        err = event
    else:
        return None
    message = err.get("message") or json.dumps(err)[:500]
    about = ", ".join(f"{k} {err[k]}" for k in ("type", "code") if err.get(k) not in (None, ""))
    return BackendError(f'{engine} ended the stream with an error: "{message}"' + (f" ({about})" if about else ""))


class EngineFailed(BackendError):
    """An engine that failed, diagnosed (``llmbench.diagnosis.Diagnosis``: kind, the engine's line, the fix); a
    plain reason text is taken as a diagnosis of this class's ``kind``."""

    kind = "exited"

    def __init__(self, diagnosis):
        from llmbench.diagnosis import Diagnosis

        if isinstance(diagnosis, str):
            diagnosis = Diagnosis(self.kind, diagnosis)
        super().__init__(diagnosis.reason)
        self.diagnosis = diagnosis


class OutOfMemory(EngineFailed):
    """The engine logged a failed allocation (llama.cpp's own text, quoted in the message with the fix)."""

    kind = "out_of_gpu_memory"


def engine_failure(diagnosis) -> EngineFailed:
    """The exception for a diagnosis: OutOfMemory for memory failures (callers may retry with less), else
    EngineFailed."""
    return (OutOfMemory if diagnosis.kind in ("out_of_gpu_memory", "out_of_host_memory") else EngineFailed)(diagnosis)


def diagnosis_of(error: Exception, engine: str, log_path: Path | None = None, model: Path | None = None):
    """The diagnosis an engine error carries, or one read from its message and the engine's log; a model file the
    GGUF check refused (CorruptModelError) is a damaged file, or a split GGUF given wrongly (ShardError: sound).
    Every such error of a job becomes a 'failed' row with it (kind, reason), and the study goes on."""
    from llmbench.diagnosis import CORRUPT_FILE, LONE_SHARD, Diagnosis, diagnose
    from llmbench.models import CorruptModelError, ShardError

    if isinstance(error, EngineFailed):
        return error.diagnosis
    if isinstance(error, CorruptModelError):
        return Diagnosis(LONE_SHARD if isinstance(error, ShardError) else CORRUPT_FILE, str(error))
    text = str(error)
    if log_path is not None:
        try:
            text += "\n" + Path(log_path).read_text(errors="replace")
        except OSError:
            pass
    found = diagnose(engine, None, text, model)
    if found.kind == "exited":  # nothing more specific in the log: the error's own words are the reason
        return type(found)("exited", str(error).split("\n", 1)[0], found.line, found.signal)
    return found


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of a process's resident memory (VmHWM), or None where unreadable."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def stop_process(proc: subprocess.Popen | None, grace_s: float = 15.0) -> None:
    """Terminate an engine process, kill it if it does not exit within the grace time, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    """A JSON request on loopback; returns (status, parsed body). Connection errors propagate as OSError."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return status, {"raw": raw.decode(errors="replace")}
