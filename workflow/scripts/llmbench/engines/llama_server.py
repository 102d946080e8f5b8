"""llama.cpp's llama-server as an engine: one server per job on a free loopback port, always stopped."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from llmbench.engines.base import EngineError, EngineFailed, EngineSettings, Generation, engine_failure
from llmbench.engines.diagnosis import diagnose
from llmbench.engines.llama_log import AUTO, check_offload, out_of_memory_line, parse_offload
from llmbench.engines.openai_stream import ChatStream, post_stream_once_more, reasoning_tokens
from llmbench.engines.process import (
    ServedEngine,
    ServerProcess,
    http_json,
    http_text,
    printed_precision,
    prometheus_counters,
)

# llama-server's /metrics counters (tools/server/server-context.cpp) and our names for them.
LLAMA_SERVER_COUNTERS = {"llamacpp:prompt_tokens_total": "prompt_tokens",
                         "llamacpp:tokens_predicted_total": "generated_tokens",
                         "llamacpp:n_decode_total": "decode_calls"}
# llama-server writes each /metrics value as a double into a std::stringstream at its default precision
# (tools/server/server-context.cpp): 6 significant digits, so counters past 1,000,000 print as 1.0166e+06.
METRICS_SIGNIFICANT_DIGITS = 6


@dataclass
class LlamaServerSettings:
    binary: Path
    model: Path
    n_gpu_layers: int | str = 0  # a number, or "auto": llama.cpp's --fit chooses it for the free device memory
    split_mode: str = "none"
    tensor_split: tuple[float, ...] | None = None  # share of the model per GPU (--tensor-split)
    threads: int = 1
    ctx_size: int = 2048  # per slot: the server is given parallel × ctx_size, which its slots share equally
    parallel: int = 1  # slots: requests served at once (continuous batching)
    start_timeout_s: float = 300.0
    request_timeout_s: float = 900.0
    flash_attn: str | None = None  # --flash-attn on, off or auto; None passes none (the build's default, auto)
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def flash_attn_value(value: bool | str | None) -> str | None:
    """--flash-attn's value for the option tools.<tool>.flash_attn (YAML reads a bare on/off as true/false)."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


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
        # One slot per concurrent request, each with the configured context (llama-server divides --ctx-size among
        # its slots); at 1, requests never share the engine, so each generation's timings are its own.
        "--ctx-size", str(s.ctx_size * s.parallel),
        "--parallel", str(s.parallel),
        # The server's own token counters (/metrics), the cross-check of the client's accounting.
        "--metrics",
        "--no-webui",
        # Level 4 adds llama.cpp's load lines (layers offloaded, allocation failures) to the log; it logs per
        # request, never per token.
        "--log-verbosity", "4",
        *(["--flash-attn", s.flash_attn] if s.flash_attn is not None else []),
        *s.extra_args,
    ]


def parse_chat_stream(lines: Iterable[bytes], t0: float, clock: Callable[[], float] = time.perf_counter) -> Generation:
    """A streamed /v1/chat/completions answer → Generation.

    TTFT and the answer's text as every OpenAI-style stream gives them (openai_stream.ChatStream). Counts and
    phase times come from the ``timings`` of the last chunk (the one with the finish_reason), as builds that time
    every token send timings with each chunk. A stream without that chunk was cut short (StreamCutShort).
    """
    stream, last, final, usage = ChatStream("llama-server", t0, clock), None, None, None
    for event in stream.events(lines):
        usage = event.get("usage") or usage
        if "timings" in event:
            last = event
            if stream.finish is not None:
                final = event
    if final is None:
        if stream.finish is not None and stream.done:
            raise EngineError(f"llama-server's stream ended without 'timings' in its last chunk (finish_reason "
                              f"{stream.finish!r}); llama-server sends them with it")
        raise stream.cut_short(["'timings'" if last is None else "its last 'timings'"])
    g = parse_chat_response(final, stream.wall_ms())
    return dataclasses.replace(g, text=stream.answer, ttft_ms=stream.ttft_ms, finish_reason=stream.finish,
                               reasoning_tokens=reasoning_tokens(usage), token_times_ms=tuple(stream.token_times_ms))


def parse_chat_response(body: dict, wall_ms: float) -> Generation:
    """A /v1/chat/completions answer → Generation, from its ``timings`` (llama-server's own counters)."""
    t = body.get("timings")
    if not t:
        raise EngineError(f"llama-server answered without 'timings': {str(body)[:300]}")
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


class LlamaServer(ServedEngine):
    tool = "llama-server"

    def __init__(self, settings: LlamaServerSettings, log_path: Path):
        self.settings = settings
        self.log_path = Path(log_path)
        self.server = ServerProcess("llama-server", self.log_path)
        self._props: dict = {}

    @classmethod
    def from_settings(cls, s: EngineSettings, log_path: Path) -> LlamaServer:
        return cls(LlamaServerSettings(
            binary=s.build_dir / "bin" / "llama-server", model=s.model, n_gpu_layers=s.n_gpu_layers,
            split_mode=s.split, threads=s.threads, ctx_size=s.ctx_size, parallel=s.concurrency,
            start_timeout_s=s.start_timeout_s,
            request_timeout_s=s.request_timeout_s, tensor_split=s.tensor_split,
            flash_attn=flash_attn_value(s.options.get("flash_attn")),
            extra_args=tuple(s.options.get("extra_args") or ()),
        ), log_path)

    def start(self) -> None:
        s = self.settings
        if not Path(s.binary).exists():
            raise EngineError(f"llama-server binary {s.binary} does not exist; build llama.cpp first (rule build_llama_cpp)")
        if not Path(s.model).exists():
            raise EngineError(f"model file {s.model} does not exist")
        self.server.start(lambda port: server_command(s, port), s.start_timeout_s, failed=self._failure,
                          loading=str(s.model))
        _, self._props = http_json("GET", f"{self.url}/props", timeout=5)

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> Generation:
        self.running_or_fail()
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
                                         alive=self.server.alive)
        except EngineError as e:
            code = self.server.exit_code()
            if code is not None or out_of_memory_line(self._log_text()):
                raise self._failure(code, "during a request") from e
            raise

    def _failure(self, code: int | None, when: str) -> EngineFailed:
        """The server ended (or logged a failed allocation): what it was, from its exit and its log's last start."""
        s = self.settings
        found = diagnose("llama-server", code, last_start(self._log_text()), Path(s.model),
                         f"n_gpu_layers={s.n_gpu_layers}, ctx_size={s.ctx_size}")
        return engine_failure(dataclasses.replace(found, reason=f"{found.reason} ({when}; engine log {self.log_path})"))

    def _log_text(self) -> str:
        return self.server.log_text()

    def facts(self) -> dict:
        settings = self._props.get("default_generation_settings", {})
        return {
            "engine_build": self._props.get("build_info"),
            "n_gpu_layers": self.settings.n_gpu_layers,
            **parse_offload(self._log_text()).facts(),
            "n_ctx": settings.get("n_ctx"),
            "parallel": self.settings.parallel,
            "ctx_size_total": self.settings.ctx_size * self.settings.parallel,
        }

    def context_text(self, text: str, tokens: int) -> str:
        """llama-server's /tokenize of ``text`` (no special tokens), its first ``tokens`` ids back through
        /detokenize. EngineError where the text holds fewer tokens."""
        _, found = http_json("POST", f"{self.url}/tokenize", {"content": text, "add_special": False})
        ids = found.get("tokens") or []
        if len(ids) < tokens:
            raise EngineError(f"the context text holds {len(ids)} tokens by llama-server's tokenizer, fewer than the "
                              f"depth {tokens}: give a longer quality.corpus or a smaller depth")
        return http_json("POST", f"{self.url}/detokenize", {"tokens": ids[:tokens]})[1]["content"]

    def counters(self) -> dict:
        """The server's own token counters since it started (/metrics, Prometheus text): ``prompt_tokens``,
        ``generated_tokens``, ``decode_calls`` (llamacpp:prompt_tokens_total, tokens_predicted_total,
        n_decode_total), and under ``precision`` how far each may be off as printed (METRICS_SIGNIFICANT_DIGITS)."""
        text = http_text(f"{self.url}/metrics")
        return {**prometheus_counters(text, LLAMA_SERVER_COUNTERS),
                "precision": printed_precision(text, LLAMA_SERVER_COUNTERS, METRICS_SIGNIFICANT_DIGITS)}


def fitted_gpu_layers(settings: LlamaServerSettings, log_path: Path) -> int:
    """The layers llama.cpp's own fitting (--fit on) offloads for this model, context and split, with the devices'
    free memory now: a llama-server is started with -ngl auto, its log read, and stopped.

    For an engine of the same build that cannot fit by itself (llama-cpp-python exposes no fitting).
    """
    auto = dataclasses.replace(settings, n_gpu_layers=AUTO)
    with LlamaServer(auto, log_path) as server:
        offload = parse_offload(server._log_text())
    if offload.offloaded is None:
        raise EngineError(f"llama-server's fitting left no offload line in {log_path} ({offload.source}); "
                           "set the model's n_gpu_layers to a number instead of auto")
    return offload.offloaded



def fitted_by_build(bin_dir: Path, model: Path, split_mode: str, threads: int, ctx_size: int,
                    tensor_split: tuple[float, ...] | None, log_path: Path) -> int:
    """fitted_gpu_layers with the llama-server of the build in ``bin_dir``, for an engine of that build that loads
    the model without fitting (llama-cpp-python, llama-batched-bench). EngineError where that build has none."""
    server = Path(bin_dir) / "llama-server"
    if not server.exists():
        raise EngineError(f"n_gpu_layers auto needs {server} (llama.cpp's fitting); build it or set a number")
    return fitted_gpu_layers(LlamaServerSettings(binary=server, model=model, split_mode=split_mode, threads=threads,
                                                 ctx_size=ctx_size, tensor_split=tensor_split), log_path)


def last_start(log_text: str) -> str:
    """The log of the server's last start: one log file holds every attempt of a job (port retries, fitting)."""
    i = log_text.rfind("\nbuild:")
    return log_text[i + 1:] if i >= 0 else log_text
