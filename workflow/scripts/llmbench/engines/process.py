"""An engine's own server process (free loopback port, start, wait until healthy, stop), and process helpers.

llama-server, vLLM and `ollama serve` share this loop; what differs is their command, their health check and how
their failures read (each engine diagnoses its own log).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from llmbench.engines.base import Engine, EngineError

# What a server logs when another process took its port between free_port() and its bind.
PORT_TAKEN = ("couldn't bind", "Address already in use")


class ServerProcess:
    """One server process of a job, on a free loopback port, its output appended to ``log_path``.

    ``own_session`` starts it in its own process group, which ``stop`` kills whole: vLLM's engine core and GPU
    workers are processes of their own that a killed API server would leave behind.
    """

    def __init__(self, name: str, log_path: Path, *, own_session: bool = False, grace_s: float = 15.0):
        self.name, self.log_path = name, Path(log_path)
        self.own_session, self.grace_s = own_session, grace_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.load_ms: float | None = None  # from the start to the first healthy answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, command: Callable[[int], list[str]], timeout_s: float, *,
              failed: Callable[[int, str], Exception], loading: str,
              healthy: Callable[[], bool] | None = None, env: Callable[[int], dict] | None = None,
              poll_s: float = 0.2, attempts: int = 3) -> None:
        """Start ``command(port)`` and wait until ``healthy()`` (default: GET /health answers 200).

        Errors: ``failed(exit_code, "while loading")`` when the process exits first (a port taken meanwhile is
        tried again, up to ``attempts``); EngineError naming ``loading`` and the fix after ``timeout_s``.
        """
        healthy = healthy or self.health_ok
        for _attempt in range(attempts):
            self.port = free_port()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    command(self.port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, **env(self.port)} if env else None, start_new_session=self.own_session,
                )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    break
                try:
                    if healthy():
                        self.load_ms = (time.perf_counter() - t0) * 1000
                        return
                except OSError:  # not listening yet
                    pass
                time.sleep(poll_s)
            else:
                self.stop()
                raise EngineError(f"{self.name} did not become healthy within {timeout_s:.0f} s loading {loading}; "
                                  f"raise bench.start_timeout_s for large models. Log: {self.log_path}")
            port_taken = any(words in self.log_tail() for words in PORT_TAKEN)
            self.stop()  # its workers too (own session): the caller's `with` never reaches stop when start fails
            if not port_taken:
                raise failed(code, "while loading")
        raise EngineError(f"{self.name} could not bind a free loopback port in {attempts} attempts")

    def health_ok(self) -> bool:
        return http_json("GET", f"{self.url}/health", timeout=5)[0] == 200

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self, grace_s: float = 2.0) -> int | None:
        """The exit status after a failed request, waiting briefly: a server killed by a signal closes its sockets
        before the kernel lets it be reaped, so the client can see the closed stream first."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)

    def peak_rss_bytes(self) -> int | None:
        return peak_rss_bytes(self.proc.pid) if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, self.grace_s)
            if self.own_session:
                try:  # what the server leaves when it had to be killed (it stops its workers itself on SIGTERM)
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.proc = None


class ServedEngine(Engine):
    """An engine that runs as its own server process (``self.server``): its memory, log and stop are the
    process's."""

    server: ServerProcess

    @property
    def url(self) -> str:
        return self.server.url

    def running_or_fail(self) -> None:
        """Before a request: a server that is gone is named, with its log."""
        if not self.server.alive():
            raise EngineError(f"{self.server.name} is not running (log: {self.server.log_path})")

    def peak_rss_bytes(self) -> int | None:
        return self.server.peak_rss_bytes()

    def stop(self) -> None:
        self.server.stop()

    def log_tail(self, lines: int = 15) -> str:
        return self.server.log_tail(lines)


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
    """A TCP port free on ``host`` now (another process may still take it before the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_text(url: str, timeout: float = 30.0) -> str:
    """A GET on loopback, its body as text (e.g. a server's /metrics). Errors propagate as OSError."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode(errors="replace")


def prometheus_counters(text: str, names: dict[str, str]) -> dict[str, float]:
    """Counters of a Prometheus text exposition, renamed: ``names`` maps a sample name (e.g.
    ``llamacpp:tokens_predicted_total``) to ours; a counter the server does not expose is absent."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                found[names[sample.name]] = sample.value
    return found


def printed_precision(text: str, names: dict[str, str], significant_digits: int) -> dict[str, float]:
    """How far each counter of a Prometheus text may be from the value it stands for, as printed: 0 for an
    integer written whole; otherwise half a unit of the last digit a printer of ``significant_digits`` keeps
    (C++'s default stream precision, 6, writes 1,016,597 as ``1.0166e+06``: good to ±5). Keyed by our names."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith("#"):
            continue
        name, token = parts[0].split("{", 1)[0], parts[1]
        if name not in names:
            continue
        try:
            value = float(token)
        except ValueError:
            continue
        whole = token.lstrip("+-").isdigit()
        found[names[name]] = 0.0 if whole or value == 0 else 0.5 * 10.0 ** (
            math.floor(math.log10(abs(value))) - (significant_digits - 1))
    return found


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


# How much of a failed server's log its diagnosis reads: the root cause of a Python engine sits above its
# tracebacks (vLLM's KV-cache refusal is followed by 50 lines of them in c308a), so a short tail quotes only the
# line that points at it.
DIAGNOSIS_LINES = 2000


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of an engine's log, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
