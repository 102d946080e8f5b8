"""Streamed OpenAI-style chat answers (llama-server, vLLM): the request, its lines, the errors inside a stream.

Each engine parses its own last chunk (llama-server's ``timings``, vLLM's ``usage``); what every stream shares is
read here: the data lines, an error sent inside the stream, the first generated token's time, the answer's text.

A request has a deadline for its whole response (bench.request_timeout_s from the request's start), not only for
each read: a socket timeout restarts with every byte, so an engine that trickles a byte every few seconds would
never time out. At the deadline the connection is shut down (:class:`Deadline`), and the request raises
RequestTimedOut (kind timed_out), which ends the job's level in a failed row beside the generations that finished.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from llmbench.engines.base import EngineError, EngineFailed, Generation, StreamCutShort
from llmbench.engines.diagnosis import TIMED_OUT, timed_out
from llmbench.engines.process import log_tail

REQUEST_TIMEOUT_KEY = "bench.request_timeout_s"


class RequestTimedOut(EngineFailed):
    """A request whose whole response did not come within its deadline (bench.request_timeout_s, from the
    request's start, however the bytes trickle); the message names the deadline, the key and the engine log."""

    kind = TIMED_OUT


def request_timed_out(engine: str, deadline_s: float, log_path: Path | None) -> RequestTimedOut:
    """The error for a request to ``engine`` given up at its deadline [s]."""
    return RequestTimedOut(timed_out(
        f"the request to {engine} was given up", deadline_s,
        f"{REQUEST_TIMEOUT_KEY}, a deadline for the whole response from the request's start, not per read",
        REQUEST_TIMEOUT_KEY, log_path))


class Deadline:
    """A wall-clock deadline ``seconds`` from now for one request's whole response.

    ``watch(fileno)`` arms it on the connection the response comes on: at the deadline that socket is shut down,
    so a read blocked on an engine that keeps trickling bytes returns (its end or an error), and ``expired`` tells
    that apart from the engine closing it. ``with deadline:`` disarms it when the request is done.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._timer: threading.Timer | None = None
        self._sock: socket.socket | None = None

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def watch(self, fileno: int) -> None:
        self.cancel()  # a redirect's answer comes on another connection: the latest one is watched
        # A duplicate of the descriptor: shutting it down ends the connection whoever holds the original.
        self._sock = socket.socket(fileno=os.dup(fileno))
        self._timer = threading.Timer(self.remaining(), self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        self.expired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed by the engine
            pass

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


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
    """POST a streamed request to an engine's OpenAI-style endpoint; ``parse(lines, t0)`` reads the answer.

    ``timeout`` [s] is the deadline of the whole response from the request's start (bench.request_timeout_s), not
    per read: past it, RequestTimedOut, however the bytes trickle. Other errors: EngineError quoting the HTTP
    status, or naming the engine log where the engine stopped answering."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with Deadline(timeout) as deadline:
        try:
            # The socket timeout bounds the wait for the headers; the deadline, armed once they came, the rest.
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                deadline.watch(resp.fileno())
                return parse(_lines_until_cut(resp), t0)
        except urllib.error.HTTPError as e:
            raise EngineError(f"{engine} answered HTTP {e.code}: {e.read()[:500]!r}") from None
        except (OSError, EngineError) as e:
            if deadline.expired or _timed_out(e):
                raise request_timed_out(engine, timeout, log_path) from None
            if isinstance(e, EngineError):
                raise
            raise EngineError(f"{engine} stopped answering ({e}); log: {log_path}\n{log_tail(log_path)}") from None


def _timed_out(error: Exception) -> bool:
    """A socket timeout, as http.client raises it or urllib wraps it (URLError)."""
    return isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError)


def _lines_until_cut(resp):
    """The response's lines; a connection closed in the middle of a chunk ends them, so that the parser finds the
    stream's last chunk missing and says what was lost (StreamCutShort)."""
    try:
        yield from resp
    except http.client.IncompleteRead:
        return


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


def stream_error(engine: str, event) -> EngineError | None:
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
    return EngineError(f'{engine} ended the stream with an error: "{message}"' + (f" ({about})" if about else ""))


class ChatStream:
    """The lines of one streamed /v1/chat/completions answer, read as every OpenAI-style engine sends them.

    ``events(lines)`` yields each JSON chunk and keeps what all engines share: the answer's text (``answer``), the
    client's time to the first generated token of any kind, a reasoning model's thinking included (``ttft_ms``,
    from ``t0``), the finish_reason, whether ``[DONE]`` came, and a line cut in the middle. An error the engine
    sends inside the stream (``data: {"error": ...}``, or a bare ``error: ...`` line from older llama-server
    builds) is raised quoting its message.
    """

    def __init__(self, engine: str, t0: float, clock: Callable[[], float] = time.perf_counter):
        self.engine, self.t0, self.clock = engine, t0, clock
        self.text: list[str] = []
        self.ttft_ms: float | None = None
        self.token_times_ms: list[float] = []  # client time of each chunk that carried generated text
        self.finish: str | None = None
        self.done = False
        self.broken: str | None = None

    def events(self, lines: Iterable[bytes | str]) -> Iterator[dict]:
        for raw in lines:
            line = raw.decode(errors="replace").strip() if isinstance(raw, bytes) else raw.strip()
            if not line:
                continue
            if self.broken is not None:
                raise EngineError(f"{self.engine} streamed a line that is not JSON: {self.broken[:300]!r}")
            if line.startswith("error:"):
                raise stream_error(self.engine, {"error": _json_or_text(line[len("error:"):]) or "(no message)"})
            if not line.startswith("data:"):
                continue
            payload = line[len("data:"):].strip()
            if payload == "[DONE]":
                self.done = True
                continue
            try:
                event = json.loads(payload)
            except json.JSONDecodeError:
                self.broken = line  # a line cut in the middle, if it is the last one
                continue
            if error := stream_error(self.engine, event):
                raise error
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                if any(delta.get(k) for k in ("content", *THINKING)):
                    self.token_times_ms.append((self.clock() - self.t0) * 1000)
                    if self.ttft_ms is None:
                        self.ttft_ms = self.token_times_ms[0]
                if delta.get("content"):
                    self.text.append(delta["content"])
                self.finish = choice.get("finish_reason") or self.finish
            yield event

    @property
    def answer(self) -> str:
        return "".join(self.text)

    def wall_ms(self) -> float:
        return (self.clock() - self.t0) * 1000

    def cut_short(self, missing: list[str]) -> StreamCutShort:
        """The error for a stream that ended without its last chunk (``missing``: what that chunk brings)."""
        missing = missing + ["a finish_reason"] * (self.finish is None) + ["[DONE]"] * (not self.done)
        return cut_short(self.engine, missing, self.broken)


def _json_or_text(payload: str):
    try:
        return json.loads(payload)
    except json.JSONDecodeError:
        return payload.strip()
