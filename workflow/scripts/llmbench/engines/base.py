"""The one interface every generating tool implements (start, generate, stop), its settings, and the engine errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    # The client's time [ms from the request] of each streamed chunk that carried generated text, the first one
    # at ttft_ms; empty where the answer was not streamed. Their gaps are the inter-token latencies.
    token_times_ms: tuple[float, ...] = ()
    # How many of generated_tokens were thinking, where the engine says so; None where it does not (never counted
    # from chunks, never 0 for "unknown").
    reasoning_tokens: int | None = None
    # True where the engine served the prompt from its cache (no prefill measured: prefill_tokens and the rate
    # are null), False where it evaluated the whole prompt, None where not known.
    prefill_cached: bool | None = None


@dataclass(frozen=True)
class EngineSettings:
    """One job's engine as plain values (what its rule passes); each engine's ``from_settings`` takes what it uses."""

    tool: str
    model: Path | None  # the GGUF (a split GGUF's first shard); None for an Ollama library tag
    n_gpu_layers: int | str | None  # a number, "auto" (llama.cpp fits it; llama.cpp tools only) or None (Ollama decides)
    split: str  # llama.cpp's --split-mode: none, layer, row
    gpus: int
    threads: int
    seed: int
    ctx_size: int
    start_timeout_s: float
    request_timeout_s: float
    build_dir: Path | None = None  # the llama.cpp build (bin/ holds its tools and libllama) for the tools that run it
    tag: str | None = None  # Ollama's model name
    tensor_split: tuple[float, ...] | None = None  # llama.cpp's share of the model per GPU
    concurrency: int = 1  # requests the engine serves at once (a server's parallel slots)
    # The tool's own options set under tools.<tool> (its registry record declares them: llama-server's flash_attn,
    # transformers' dtype, …); an option absent here is left to the engine's own default.
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)


class Engine:
    """The one interface of every generating tool: start, generate, stop, with the engine's own counts and times.

    ``with engine:`` starts it and always stops it, also on errors and signals. Subclasses set ``tool`` (its
    registry name) and build themselves from a job's settings in ``from_settings``.
    """

    tool: str

    @classmethod
    def from_settings(cls, settings: EngineSettings, log_path: Path) -> Engine:
        """The engine for a job's settings; ``log_path`` receives the engine's own log."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> Generation:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def facts(self) -> dict:
        """What the engine reports about this run (layers offloaded, engine version, load time, …)."""
        return {}

    def peak_rss_bytes(self) -> int | None:
        """Peak resident memory of the engine process so far [bytes]; None where the engine is not our child."""
        return None

    def counters(self) -> dict | None:
        """The engine's own token counters since it started (``prompt_tokens``, ``generated_tokens``), the
        cross-check of the rows, with ``precision`` ({counter: ±tokens}) where the engine prints them rounded;
        None for an engine that keeps none."""
        return None

    def context_text(self, text: str, tokens: int) -> str:
        """The start of ``text`` that holds exactly ``tokens`` tokens by this engine's own tokenizer: the context a
        prompt is given to run at a context depth. ToolUnavailable where the engine cannot count tokens."""
        raise ToolUnavailable(f"{self.tool} cannot count tokens of a text here, so it cannot fill a context to a depth")

    def before_generation(self, prompt: str) -> None:
        """Called before each generation's measurement window opens: what an engine must do between generations
        (Ollama evicts its prompt cache) is then not measured as part of the next one."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class ToolUnavailable(RuntimeError):
    """The tool is not installed on this machine: its jobs end 'skipped' with this reason, and the study goes on."""


class EngineError(RuntimeError):
    """An engine that failed to start, died, or answered something unusable; the message says which and why."""


class StreamCutShort(EngineError):
    """A streamed answer that ended before its last chunk, which carries the engine's counts and timings: no
    result, never half a row. The engines run such a request once more."""


class EngineFailed(EngineError):
    """An engine that failed, diagnosed (``llmbench.engines.diagnosis.Diagnosis``: kind, the engine's line, the fix); a
    plain reason text is taken as a diagnosis of this class's ``kind``."""

    kind = "exited"

    def __init__(self, diagnosis):
        from llmbench.engines.diagnosis import Diagnosis

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
    GGUF check refused (CorruptModelError) is a damaged file, a split GGUF given wrongly (ShardError: sound) or a
    sound file this llama.cpp does not load (UnloadableModelError: its kind, e.g. unsupported_tensor_type). An
    error that says no more than that the engine failed is given the root cause its log names.
    Every such error of a job becomes a 'failed' row with it (kind, reason), and the study goes on."""
    from llmbench.engines.diagnosis import CORRUPT_FILE, LONE_SHARD, Diagnosis, diagnose, root_cause
    from llmbench.modelfiles.models import CorruptModelError, ShardError, UnloadableModelError

    if isinstance(error, EngineFailed):
        return error.diagnosis
    if isinstance(error, UnloadableModelError):
        return Diagnosis(error.kind, str(error))
    if isinstance(error, CorruptModelError):
        return Diagnosis(LONE_SHARD if isinstance(error, ShardError) else CORRUPT_FILE, str(error))
    text = str(error)
    if log_path is not None:
        try:
            text += "\n" + Path(log_path).read_text(errors="replace")
        except OSError:
            pass
    found = diagnose(engine, None, text, model)
    if found.kind == "exited":  # nothing more specific in the log: the error's own words, and why where it says
        said = str(error).split("\n", 1)[0]
        cause = root_cause(text)
        if cause is not None and cause not in said:
            said += f"; the engine log names the cause: {cause!r}"
        return type(found)("exited", said, cause or found.line, found.signal)
    return found


