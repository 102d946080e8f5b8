"""vLLM's OpenAI-compatible server as a bench backend: one server per job on a free loopback port, always stopped.

GGUF in vLLM is experimental (newer releases need the vllm-gguf-plugin package). ``tokenizer`` defaults to the
GGUF file itself, whose tokenizer vLLM converts; vLLM's docs advise the base model's Hugging Face tokenizer
instead (a repo id or directory), as the conversion is slow and fragile for large vocabularies.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from llmbench.backend import (
    THINKING,
    BackendError,
    Engine,
    Generation,
    ToolUnavailable,
    cut_short,
    engine_failure,
    free_port,
    http_json,
    log_tail,
    post_stream_once_more,
    reasoning_tokens,
    stop_process,
    stream_error,
)
from llmbench.backend import peak_rss_bytes as vm_hwm
from llmbench.diagnosis import diagnose
from llmbench.gpu_slots import gpu_count
from llmbench.models import split_count

NVIDIA_PROC = Path("/proc/driver/nvidia/version")


def python_environment() -> str:
    """This Python's environment as a shared reason may name it: its folder relative to the working directory where
    it lies inside (the project's .venv, a Snakemake conda env), else its name alone. The interpreter's full path is
    in the job's provenance (python.executable)."""
    prefix = Path(sys.prefix).absolute()
    for here in (Path.cwd(), Path.cwd().resolve()):
        if prefix.is_relative_to(here):
            return str(prefix.relative_to(here))
    return prefix.name


@dataclass
class VllmSettings:
    model: Path
    tokenizer: str | None = None  # None: the GGUF file itself
    ctx_size: int = 2048
    gpus: int = 1
    seed: int = 0
    start_timeout_s: float = 900.0
    request_timeout_s: float = 900.0
    python: str = sys.executable
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def server_command(s: VllmSettings, port: int) -> list[str]:
    # No --disable-log-requests: request logging is off by default since vLLM 0.10 and the flag is gone in 0.12.
    return [
        s.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(s.model),
        "--tokenizer", str(s.tokenizer or s.model), "--host", "127.0.0.1", "--port", str(port), "--seed", str(s.seed),
        "--max-model-len", str(s.ctx_size), "--tensor-parallel-size", str(s.gpus),
        # Every repetition must process its whole prompt, or prefill times would mix cached and uncached.
        "--no-enable-prefix-caching", *s.extra_args,
    ]


def parse_vllm_stream(
    lines: Iterable[bytes | str], t0: float, clock: Callable[[], float] = time.perf_counter
) -> Generation:
    """A streamed /v1/chat/completions answer (with ``stream_options.include_usage``) → Generation.

    TTFT is the client's clock from the request to the first chunk carrying a generated token of any kind, the
    answer's or a reasoning model's thinking (``reasoning_content``, ``reasoning`` in newer vLLM); ``text`` is the
    answer alone. Token counts are the engine's ``usage`` in the chunk after the finish_reason, never counted
    chunks (one chunk may carry several tokens). A stream without it was cut short (StreamCutShort); an error
    vLLM sends inside the stream is raised quoting its message.
    """
    text, ttft_ms, usage, finish, done, broken = [], None, None, None, False, None
    for raw in lines:
        line = raw.decode(errors="replace").strip() if isinstance(raw, bytes) else raw.strip()
        if not line:
            continue
        if broken is not None:
            raise BackendError(f"vLLM streamed a line that is not JSON: {broken[:300]!r}")
        if not line.startswith("data:"):
            continue
        if line[5:].strip() == "[DONE]":
            done = True
            continue
        try:
            event = json.loads(line[5:])
        except json.JSONDecodeError:
            broken = line  # a line cut in the middle, if it is the last one
            continue
        if error := stream_error("vLLM", event):
            raise error
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if ttft_ms is None and any(delta.get(k) for k in ("content", *THINKING)):
                ttft_ms = (clock() - t0) * 1000
            if delta.get("content"):
                text.append(delta["content"])
            finish = choice.get("finish_reason") or finish
        if event.get("usage") and finish is not None:  # the count of the whole answer, not a running one
            usage = event["usage"]
    if usage is None:
        if finish is not None and done:
            raise BackendError("vLLM's stream ended without 'usage' (was stream_options.include_usage sent?)")
        raise cut_short("vLLM", ["'usage'"] + ["a finish_reason"] * (finish is None) + ["[DONE]"] * (not done),
                        broken)
    wall_ms = (clock() - t0) * 1000
    prompt_n, gen_n = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    prefill_n = prompt_n - int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    # vLLM's API gives no separate phase times, so prefill is bounded by TTFT (which also holds queueing, the
    # HTTP round trip and the first decode step; its rate is a lower bound) and decode is the rest of the wall,
    # a reasoning model's thinking included.
    prefill_ms = ttft_ms if ttft_ms is not None else wall_ms
    decode_ms = wall_ms - prefill_ms
    return Generation(
        prompt_tokens=prompt_n, prefill_tokens=prefill_n, generated_tokens=gen_n,
        prefill_ms=prefill_ms, decode_ms=decode_ms,
        prefill_tokens_per_s=prefill_n / prefill_ms * 1000 if prefill_ms > 0 and prefill_n > 0 else None,
        decode_tokens_per_s=(gen_n - 1) / decode_ms * 1000 if decode_ms > 0 and gen_n > 1 else None,
        wall_ms=wall_ms, finish_reason=finish, text="".join(text), ttft_ms=ttft_ms,
        reasoning_tokens=reasoning_tokens(usage),
    )


def nvidia_gpu_present(proc_file: Path = NVIDIA_PROC) -> bool:
    """The NVIDIA kernel driver is loaded, or NVML starts and sees at least one GPU."""
    return proc_file.exists() or gpu_count()[0] > 0


class VllmServer(Engine):
    tool = "vllm"

    def __init__(self, settings: VllmSettings, log_path: Path):
        self.settings, self.log_path = settings, Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.load_ms: float | None = None
        self._version: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        model = Path(self.settings.model)
        if model.is_file() and (shards := split_count(model)) > 1:
            raise ToolUnavailable(f"vLLM loads single-file GGUF models only (its GGUF documentation); {model.name} is "
                                  f"the first of {shards} shards of a split GGUF")
        if importlib.util.find_spec("vllm") is None:
            raise ToolUnavailable(f"vLLM is not installed in the job's Python environment ({python_environment()}): "
                                  "pip install vllm; it needs an NVIDIA GPU")
        if not nvidia_gpu_present():
            raise ToolUnavailable(f"vLLM needs an NVIDIA GPU: no driver ({NVIDIA_PROC} is absent) and NVML sees none")
        if not Path(self.settings.model).exists():
            raise BackendError(f"model file {self.settings.model} does not exist")
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:  # own process group: its engine core and GPU workers can be found
            self.proc = subprocess.Popen(server_command(self.settings, self.port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.settings.start_timeout_s
        while (code := self.proc.poll()) is None and time.monotonic() < deadline:
            try:
                if http_json("GET", f"{self.url}/health", timeout=5)[0] == 200:
                    self.load_ms = (time.perf_counter() - t0) * 1000
                    self._version = http_json("GET", f"{self.url}/version", timeout=5)[1].get("version")
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        if code is not None:
            found = diagnose("vLLM", code, self.log_tail(60), Path(self.settings.model))
            raise engine_failure(dataclasses.replace(
                found, reason=f"{found.reason} (while loading; engine log {self.log_path})"))
        raise BackendError(f"vLLM did not become healthy within {self.settings.start_timeout_s:.0f} s loading "
                           f"{self.settings.model}; raise bench.start_timeout_s for large models. Log: {self.log_path}")

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> Generation:
        if self.proc is None or self.proc.poll() is not None:
            raise BackendError(f"vLLM is not running (log: {self.log_path})")
        body = {"model": str(self.settings.model),  # vLLM serves the model under its --model argument
                "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": temperature, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
        url, timeout = f"{self.url}/v1/chat/completions", self.settings.request_timeout_s
        return post_stream_once_more(url, body, timeout, parse_vllm_stream, "vLLM", self.log_path,
                                     alive=lambda: self.proc.poll() is None)

    def facts(self) -> dict:
        # vLLM has no partial layer offload: every layer is on the GPU(s), written -1 ("all", as in llama.cpp).
        return {"engine_build": self._version, "n_gpu_layers": -1, "n_ctx": self.settings.ctx_size,
                "tensor_parallel_size": self.settings.gpus, "load_ms": self.load_ms}

    def peak_rss_bytes(self) -> int | None:
        """VmHWM of the API server process only; vLLM's engine core and GPU workers are separate processes."""
        return vm_hwm(self.proc.pid) if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=30.0)
            try:  # workers left behind: the server stops them itself on SIGTERM, not when it had to be killed
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)
