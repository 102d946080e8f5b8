"""llama.cpp's llama-server as a bench backend: one server per job on a free loopback port, always stopped."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from llmbench.backend import (
    THINKING,
    BackendError,
    Engine,
    EngineFailed,
    Generation,
    cut_short,
    engine_failure,
    free_port,
    http_json,
    log_tail,
    peak_rss_bytes,
    post_stream_once_more,
    reasoning_tokens,
    stop_process,
    stream_error,
)
from llmbench.diagnosis import diagnose
from llmbench.llama_log import AUTO, check_offload, out_of_memory_line, parse_offload


@dataclass
class LlamaServerSettings:
    binary: Path
    model: Path
    n_gpu_layers: int | str = 0  # a number, or "auto": llama.cpp's --fit chooses it for the free device memory
    split_mode: str = "none"
    tensor_split: tuple[float, ...] | None = None  # share of the model per GPU (--tensor-split)
    threads: int = 1
    ctx_size: int = 2048
    start_timeout_s: float = 300.0
    request_timeout_s: float = 900.0
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def offload_args(n_gpu_layers: int | str, tensor_split: tuple[float, ...] | None) -> list[str]:
    """-ngl and --fit as llama-server and llama.cpp's common arguments take them.

    "auto" lets llama.cpp's fitting pick the layers for the devices' free memory (it keeps a user-set context
    size and tensor split); a number turns fitting off, so the run offloads exactly what the config says.
    """
    check_offload(n_gpu_layers, tensor_split)
    if n_gpu_layers == AUTO:
        args = ["--n-gpu-layers", "auto", "--fit", "on"]
    else:
        args = ["--n-gpu-layers", str(n_gpu_layers), "--fit", "off"]
    if tensor_split:
        args += ["--tensor-split", ",".join(f"{x:g}" for x in tensor_split)]
    return args


def server_command(s: LlamaServerSettings, port: int) -> list[str]:
    return [
        str(s.binary),
        "--model", str(s.model),
        "--host", "127.0.0.1",
        "--port", str(port),
        *offload_args(s.n_gpu_layers, s.tensor_split),
        "--split-mode", s.split_mode,
        "--threads", str(s.threads),
        "--threads-batch", str(s.threads),
        "--ctx-size", str(s.ctx_size),
        # One slot: requests never share the engine, so each generation's timings are its own.
        "--parallel", "1",
        "--no-webui",
        # Level 4 adds llama.cpp's load lines (layers offloaded, allocation failures) to the log; it logs per
        # request, never per token.
        "--log-verbosity", "4",
        *s.extra_args,
    ]


def parse_chat_stream(lines: Iterable[bytes], t0: float, clock: Callable[[], float] = time.perf_counter) -> Generation:
    """A streamed /v1/chat/completions answer → Generation.

    TTFT is the client's clock from the request to the first chunk carrying a generated token of any kind, the
    answer's or a reasoning model's thinking (which comes first); ``text`` is the answer alone. Counts and phase
    times come from the ``timings`` of the last chunk (the one with the finish_reason), as builds that time every
    token send timings with each chunk. A stream without that chunk was cut short (StreamCutShort); an error the
    server sends inside the stream (``data: {"error": ...}``, or a bare ``error: ...`` line from older builds)
    is raised quoting its message.
    """
    text, ttft_ms, last, final, finish, usage, done, broken = [], None, None, None, None, None, False, None
    for raw in lines:
        line = raw.decode(errors="replace").strip() if isinstance(raw, bytes) else raw.strip()
        if not line:
            continue
        if broken is not None:
            raise BackendError(f"llama-server streamed a line that is not JSON: {broken[:300]!r}")
        if line.startswith("error:"):
            raise stream_error("llama-server", {"error": _json_or_text(line[len("error:"):]) or "(no message)"})
        if not line.startswith("data:"):
            continue
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            done = True
            continue
        try:
            event = json.loads(payload)
        except json.JSONDecodeError:
            broken = line  # a line cut in the middle, if it is the last one
            continue
        if error := stream_error("llama-server", event):
            raise error
        choice = (event.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        if ttft_ms is None and any(delta.get(k) for k in ("content", *THINKING)):
            ttft_ms = (clock() - t0) * 1000
        if delta.get("content"):
            text.append(delta["content"])
        finish = choice.get("finish_reason") or finish
        usage = event.get("usage") or usage
        if "timings" in event:
            last = event
            if finish is not None:
                final = event
    if final is None:
        if finish is not None and done:
            raise BackendError(f"llama-server's stream ended without 'timings' in its last chunk (finish_reason "
                               f"{finish!r}); llama-server sends them with it")
        gone = ["'timings'" if last is None else "its last 'timings'"]
        raise cut_short("llama-server", gone + ["a finish_reason"] * (finish is None) + ["[DONE]"] * (not done),
                        broken)
    wall_ms = (clock() - t0) * 1000
    g = parse_chat_response(final, wall_ms)
    return dataclasses.replace(g, text="".join(text), ttft_ms=ttft_ms, finish_reason=finish,
                               reasoning_tokens=reasoning_tokens(usage))


def _json_or_text(payload: str):
    try:
        return json.loads(payload)
    except json.JSONDecodeError:
        return payload.strip()


def parse_chat_response(body: dict, wall_ms: float) -> Generation:
    """A /v1/chat/completions answer → Generation, from its ``timings`` (llama-server's own counters)."""
    t = body.get("timings")
    if not t:
        raise BackendError(f"llama-server answered without 'timings': {str(body)[:300]}")
    choice = (body.get("choices") or [{}])[0]
    return Generation(
        prompt_tokens=int(t["prompt_n"]) + int(t.get("cache_n", 0)),
        prefill_tokens=int(t["prompt_n"]),
        generated_tokens=int(t["predicted_n"]),
        prefill_ms=float(t["prompt_ms"]),
        decode_ms=float(t["predicted_ms"]),
        prefill_tokens_per_s=_rate(t.get("prompt_per_second")),
        decode_tokens_per_s=_rate(t.get("predicted_per_second")),
        wall_ms=wall_ms,
        finish_reason=choice.get("finish_reason"),
        text=(choice.get("message") or {}).get("content") or "",
        ttft_ms=None,
        reasoning_tokens=reasoning_tokens(body.get("usage")),
    )


def _rate(value) -> float | None:
    # llama-server reports 1e6/0 as a huge number or inf when a phase had no tokens; that is no rate.
    if value is None:
        return None
    v = float(value)
    return v if 0 < v < 1e12 else None


class LlamaServer(Engine):
    tool = "llama-server"

    def __init__(self, settings: LlamaServerSettings, log_path: Path):
        self.settings = settings
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._props: dict = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        s = self.settings
        if not Path(s.binary).exists():
            raise BackendError(f"llama-server binary {s.binary} does not exist; build llama.cpp first (rule build_llama_cpp)")
        if not Path(s.model).exists():
            raise BackendError(f"model file {s.model} does not exist")
        for _attempt in range(3):
            self.port = free_port()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    server_command(s, self.port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            try:
                self._wait_healthy()
                return
            except _PortTaken:
                self.stop()
        raise BackendError("llama-server could not bind a free loopback port in 3 attempts")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                if "couldn't bind" in tail or "Address already in use" in tail:
                    raise _PortTaken()
                raise self._failure(code, "while loading")
            try:
                status, _ = http_json("GET", f"{self.url}/health", timeout=5)
                if status == 200:
                    _, self._props = http_json("GET", f"{self.url}/props", timeout=5)
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise BackendError(
            f"llama-server did not become healthy within {self.settings.start_timeout_s:.0f} s loading "
            f"{self.settings.model}; raise bench.start_timeout_s for large models. Log: {self.log_path}"
        )

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> Generation:
        if self.proc is None or self.proc.poll() is not None:
            raise BackendError(f"llama-server is not running (log: {self.log_path})")
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": seed,
            # Every repetition must process its whole prompt, or prefill times would mix cached and uncached.
            "cache_prompt": False,
            "stream": True,
        }
        url, timeout = f"{self.url}/v1/chat/completions", self.settings.request_timeout_s
        try:
            return post_stream_once_more(url, body, timeout, parse_chat_stream, "llama-server", self.log_path,
                                         alive=lambda: self.proc.poll() is None)
        except BackendError as e:
            code = self._exit_code()
            if code is not None or out_of_memory_line(self._log_text()):
                raise self._failure(code, "during a request") from e
            raise

    def _exit_code(self, grace_s: float = 2.0) -> int | None:
        """The server's exit status after a failed request, waiting briefly: a server killed by a signal closes
        its sockets before the kernel lets it be reaped, so the client can see the closed stream first."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            return None

    def _failure(self, code: int | None, when: str) -> EngineFailed:
        """The server ended (or logged a failed allocation): what it was, from its exit and its log's last start."""
        s = self.settings
        found = diagnose("llama-server", code, last_start(self._log_text()), Path(s.model),
                         f"n_gpu_layers={s.n_gpu_layers}, ctx_size={s.ctx_size}")
        return engine_failure(dataclasses.replace(found, reason=f"{found.reason} ({when}; engine log {self.log_path})"))

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def facts(self) -> dict:
        settings = self._props.get("default_generation_settings", {})
        return {
            "engine_build": self._props.get("build_info"),
            "n_gpu_layers": self.settings.n_gpu_layers,
            **parse_offload(self._log_text()).facts(),
            "n_ctx": settings.get("n_ctx"),
        }

    def peak_rss_bytes(self) -> int | None:
        return peak_rss_bytes(self.proc.pid) if self.proc is not None else None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)


class _PortTaken(Exception):
    pass


def fitted_gpu_layers(settings: LlamaServerSettings, log_path: Path) -> int:
    """The layers llama.cpp's own fitting (--fit on) offloads for this model, context and split, with the devices'
    free memory now: a llama-server is started with -ngl auto, its log read, and stopped.

    For an engine of the same build that cannot fit by itself (llama-cpp-python exposes no fitting).
    """
    auto = dataclasses.replace(settings, n_gpu_layers=AUTO)
    with LlamaServer(auto, log_path) as server:
        offload = parse_offload(server._log_text())
    if offload.offloaded is None:
        raise BackendError(f"llama-server's fitting left no offload line in {log_path} ({offload.source}); "
                           "set the model's n_gpu_layers to a number instead of auto")
    return offload.offloaded



def last_start(log_text: str) -> str:
    """The log of the server's last start: one log file holds every attempt of a job (port retries, fitting)."""
    i = log_text.rfind("\nbuild:")
    return log_text[i + 1:] if i >= 0 else log_text
