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
    BackendError,
    Engine,
    Generation,
    ToolUnavailable,
    engine_failure,
    free_port,
    http_json,
    log_tail,
    post_stream,
    stop_process,
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

    TTFT is the client's clock from the request to the first chunk carrying content; token counts are the
    engine's ``usage`` in the last chunk, never counted chunks (one chunk may carry several tokens).
    """
    text, ttft_ms, usage, finish = [], None, None, None
    for raw in lines:
        line = raw.decode(errors="replace").strip() if isinstance(raw, bytes) else raw.strip()
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        event = json.loads(line[5:])
        if "error" in event or event.get("object") == "error":
            raise BackendError(f"vLLM streamed an error: {str(event)[:500]}")
        for choice in event.get("choices") or []:
            if delta := (choice.get("delta") or {}).get("content"):
                ttft_ms = (clock() - t0) * 1000 if ttft_ms is None else ttft_ms
                text.append(delta)
            finish = choice.get("finish_reason") or finish
        usage = event.get("usage") or usage
    if not usage:
        raise BackendError("vLLM's stream ended without 'usage' (was stream_options.include_usage sent?)")
    wall_ms = (clock() - t0) * 1000
    prompt_n, gen_n = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    prefill_n = prompt_n - int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    # vLLM's API gives no separate phase times, so prefill is bounded by TTFT (which also holds queueing, the
    # HTTP round trip and the first decode step; its rate is a lower bound) and decode is the rest of the wall.
    prefill_ms = ttft_ms if ttft_ms is not None else wall_ms
    decode_ms = wall_ms - prefill_ms
    return Generation(
        prompt_tokens=prompt_n, prefill_tokens=prefill_n, generated_tokens=gen_n,
        prefill_ms=prefill_ms, decode_ms=decode_ms,
        prefill_tokens_per_s=prefill_n / prefill_ms * 1000 if prefill_ms > 0 and prefill_n > 0 else None,
        decode_tokens_per_s=(gen_n - 1) / decode_ms * 1000 if decode_ms > 0 and gen_n > 1 else None,
        wall_ms=wall_ms, finish_reason=finish, text="".join(text), ttft_ms=ttft_ms,
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
        return post_stream(f"{self.url}/v1/chat/completions", body, self.settings.request_timeout_s, parse_vllm_stream,
                           "vLLM", self.log_path)

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
