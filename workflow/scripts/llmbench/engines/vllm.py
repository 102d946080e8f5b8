"""vLLM's OpenAI-compatible server as an engine: one server per job on a free loopback port, always stopped.

GGUF in vLLM is experimental. vLLM 0.24 and later have no GGUF loader of their own: it moved to the
``vllm-gguf-plugin`` package (vLLM PR #39612, RFC #39583), so a job on a GGUF checks for it before starting
anything (gguf_plugin_problem) and ends 'skipped' with the install line where it is missing; earlier releases load
GGUF themselves. ``tokenizer`` defaults to the GGUF file itself, whose tokenizer vLLM converts; vLLM's docs advise
the base model's Hugging Face tokenizer instead (a repo id or directory), as the conversion is slow and fragile for
large vocabularies.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.version import InvalidVersion, Version

from llmbench.devices.gpu_slots import gpu_count
from llmbench.engines.base import EngineError, EngineSettings, Generation, ToolUnavailable, engine_failure
from llmbench.engines.diagnosis import diagnose
from llmbench.engines.openai_stream import ChatStream, post_stream_once_more, reasoning_tokens
from llmbench.engines.process import DIAGNOSIS_LINES, ServedEngine, ServerProcess, http_json
from llmbench.modelfiles.models import split_count

NVIDIA_PROC = Path("/proc/driver/nvidia/version")
GGUF_PLUGIN = "vllm-gguf-plugin"
# The first vLLM release without its built-in GGUF loader (vLLM PR #39612, RFC #39583).
GGUF_MOVED_TO_PLUGIN = (0, 24)


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
    max_num_seqs: int = 1  # sequences served at once: the job's load level
    start_timeout_s: float = 900.0
    request_timeout_s: float = 900.0
    python: str = sys.executable
    gpu_memory_utilization: float | None = None  # share of each GPU's memory; None: vLLM's default (0.9)
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def server_command(s: VllmSettings, port: int) -> list[str]:
    # No --disable-log-requests: request logging is off by default since vLLM 0.10 and the flag is gone in 0.12.
    return [
        s.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(s.model),
        "--tokenizer", str(s.tokenizer or s.model), "--host", "127.0.0.1", "--port", str(port), "--seed", str(s.seed),
        "--max-model-len", str(s.ctx_size), "--tensor-parallel-size", str(s.gpus),
        "--max-num-seqs", str(s.max_num_seqs),
        # Every repetition must process its whole prompt, or prefill times would mix cached and uncached.
        "--no-enable-prefix-caching",
        *(["--gpu-memory-utilization", f"{s.gpu_memory_utilization:g}"] if s.gpu_memory_utilization is not None else []),
        *s.extra_args,
    ]


def parse_vllm_stream(
    lines: Iterable[bytes | str], t0: float, clock: Callable[[], float] = time.perf_counter
) -> Generation:
    """A streamed /v1/chat/completions answer (with ``stream_options.include_usage``) → Generation.

    TTFT and the answer's text as every OpenAI-style stream gives them (openai_stream.ChatStream; vLLM's thinking
    is ``reasoning_content``, ``reasoning`` in newer releases). Token counts are the engine's ``usage`` in the
    chunk after the finish_reason, never counted chunks (one chunk may carry several tokens). A stream without it
    was cut short (StreamCutShort).
    """
    stream, usage = ChatStream("vLLM", t0, clock), None
    for event in stream.events(lines):
        if event.get("usage") and stream.finish is not None:  # the count of the whole answer, not a running one
            usage = event["usage"]
    if usage is None:
        if stream.finish is not None and stream.done:
            raise EngineError("vLLM's stream ended without 'usage' (was stream_options.include_usage sent?)")
        raise stream.cut_short(["'usage'"])
    wall_ms, ttft_ms = stream.wall_ms(), stream.ttft_ms
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
        wall_ms=wall_ms, finish_reason=stream.finish, text=stream.answer, ttft_ms=ttft_ms,
        token_times_ms=tuple(stream.token_times_ms),
        reasoning_tokens=reasoning_tokens(usage),
    )


def installed_version(distribution: str) -> str | None:
    """The version of a pip distribution in the job's Python environment, or None where it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def gguf_plugin_problem(vllm_version: str | None, plugin_version: str | None) -> str | None:
    """Why vLLM ``vllm_version`` cannot load a GGUF here, or None where it can: vLLM 0.24 and later load GGUF only
    through the vllm-gguf-plugin package (vLLM PR #39612, RFC #39583), earlier releases by themselves. A version
    that cannot be read or parsed (a source checkout) is let through: vLLM's own error then says what is missing.
    Pre-releases and builds of 0.24 (0.24.0rc1, 0.24.0+cu129) count as 0.24."""
    if vllm_version is None or plugin_version is not None:
        return None
    try:
        release = Version(vllm_version).release
    except InvalidVersion:
        return None
    if release[:2] < GGUF_MOVED_TO_PLUGIN:
        return None
    return (f"vLLM {vllm_version} (in {python_environment()}) loads GGUF models only through the {GGUF_PLUGIN} "
            f"package, which is not installed (distribution {GGUF_PLUGIN!r} not found; vLLM 0.24 moved GGUF out of "
            f"vLLM, PR #39612): pip install {GGUF_PLUGIN} (CUDA/ROCm only), or pip install 'vllm<0.24', whose GGUF "
            "support is built in")


def nvidia_gpu_present(proc_file: Path = NVIDIA_PROC) -> bool:
    """The NVIDIA kernel driver is loaded, or NVML starts and sees at least one GPU."""
    return proc_file.exists() or gpu_count()[0] > 0


class Vllm(ServedEngine):
    tool = "vllm"

    def __init__(self, settings: VllmSettings, log_path: Path):
        self.settings, self.log_path = settings, Path(log_path)
        # Its own process group: its engine core and GPU workers are found and stopped with it.
        self.server = ServerProcess("vLLM", self.log_path, own_session=True, grace_s=30.0)
        self._version: str | None = None
        self.gguf_plugin: str | None = None  # vllm-gguf-plugin's version, where the model is a GGUF and it is there

    @classmethod
    def from_settings(cls, s: EngineSettings, log_path: Path) -> Vllm:
        return cls(VllmSettings(model=s.model, ctx_size=s.ctx_size, gpus=max(s.gpus, 1), seed=s.seed,
                                max_num_seqs=s.concurrency,
                                start_timeout_s=s.start_timeout_s, request_timeout_s=s.request_timeout_s,
                                gpu_memory_utilization=s.options.get("gpu_memory_utilization"),
                                extra_args=tuple(s.options.get("extra_args") or ())), log_path)

    def start(self) -> None:
        model = Path(self.settings.model)
        if model.is_file() and (shards := split_count(model)) > 1:
            raise ToolUnavailable(f"vLLM loads single-file GGUF models only (its GGUF documentation); {model.name} is "
                                  f"the first of {shards} shards of a split GGUF")
        if importlib.util.find_spec("vllm") is None:
            raise ToolUnavailable(f"vLLM is not installed in the job's Python environment ({python_environment()}): "
                                  "pip install vllm; it needs an NVIDIA GPU")
        if model.suffix.lower() == ".gguf":
            self.gguf_plugin = installed_version(GGUF_PLUGIN)
            # Said before the server starts, so that the job is skipped with the fix instead of failing in vLLM's
            # loader after minutes of start-up.
            if (why := gguf_plugin_problem(installed_version("vllm"), self.gguf_plugin)) is not None:
                raise ToolUnavailable(why)
        if not nvidia_gpu_present():
            raise ToolUnavailable(f"vLLM needs an NVIDIA GPU: no driver ({NVIDIA_PROC} is absent) and NVML sees none")
        if not model.exists():
            raise EngineError(f"model file {model} does not exist")
        self.server.start(lambda port: server_command(self.settings, port), self.settings.start_timeout_s,
                          failed=self._failure, loading=str(model), poll_s=0.5)
        self._version = http_json("GET", f"{self.url}/version", timeout=5)[1].get("version")

    def _failure(self, code: int, when: str) -> Exception:
        found = diagnose("vLLM", code, self.server.log_tail(DIAGNOSIS_LINES), Path(self.settings.model))
        return engine_failure(dataclasses.replace(found, reason=f"{found.reason} ({when}; engine log {self.log_path})"))

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> Generation:
        self.running_or_fail()
        body = {"model": str(self.settings.model),  # vLLM serves the model under its --model argument
                "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": temperature, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
        url, timeout = f"{self.url}/v1/chat/completions", self.settings.request_timeout_s
        return post_stream_once_more(url, body, timeout, parse_vllm_stream, "vLLM", self.log_path,
                                     alive=self.server.alive)

    def context_text(self, text: str, tokens: int) -> str:
        """vLLM's /tokenize of ``text`` (no special tokens), its first ``tokens`` ids back through /detokenize
        (vLLM's serve/tokenize protocol: ``prompt`` in, ``tokens`` out; ``tokens`` in, ``prompt`` out). EngineError
        where the text holds fewer tokens."""
        self.running_or_fail()
        model = str(self.settings.model)
        _, found = http_json("POST", f"{self.url}/tokenize", {"model": model, "prompt": text,
                                                               "add_special_tokens": False})
        ids = found.get("tokens") or []
        if len(ids) < tokens:
            raise EngineError(f"the context text holds {len(ids)} tokens by vLLM's tokenizer, fewer than the depth "
                              f"{tokens}: give a longer quality.corpus or a smaller depth")
        return http_json("POST", f"{self.url}/detokenize", {"model": model, "tokens": ids[:tokens]})[1]["prompt"]

    def facts(self) -> dict:
        # vLLM has no partial layer offload: every layer is on the GPU(s), written -1 ("all", as in llama.cpp).
        return {"engine_build": self._version, "n_gpu_layers": -1, "n_ctx": self.settings.ctx_size,
                "tensor_parallel_size": self.settings.gpus, "load_ms": self.server.load_ms,
                "vllm_gguf_plugin": self.gguf_plugin}

    def peak_rss_bytes(self) -> int | None:
        """VmHWM of the API server process only; vLLM's engine core and GPU workers are separate processes."""
        return self.server.peak_rss_bytes()
