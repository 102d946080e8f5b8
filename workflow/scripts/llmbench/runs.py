"""Bench runs: every prompt × repetition through a backend, one row per generation, in one fixed schema."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from llmbench.engines.base import Engine, EngineError, diagnosis_of
from llmbench.meters import EnergyMeter, EnergyReading, estimated, measure_idle, split_at_first_token

log = logging.getLogger(__name__)


RUN_SCHEMA: dict[str, pl.DataType] = {
    "tool": pl.String,
    "model": pl.String,
    "quant": pl.String,
    "split": pl.String,
    # True for a model written with random weights (source kind synthetic): its speed and energy plan a real
    # model of that shape; its answers are noise.
    "model_is_synthetic": pl.Boolean,
    "status": pl.String,
    "status_reason": pl.String,
    # A failed row's kind (llmbench.diagnosis: illegal_instruction, out_of_gpu_memory, …) and the signal that
    # ended the engine, where one did; null otherwise.
    "failure_kind": pl.String,
    "failure_signal": pl.String,
    "engine_build": pl.String,
    "prompt_id": pl.String,
    "repetition": pl.Int64,
    "seed": pl.Int64,
    "temperature": pl.Float64,
    "max_tokens": pl.Int64,
    "prompt_tokens": pl.Int64,
    "prefill_tokens": pl.Int64,
    "generated_tokens": pl.Int64,
    # Of generated_tokens, the reasoning model's thinking, where the engine counts it; null where it does not.
    "reasoning_tokens": pl.Int64,
    "prefill_ms": pl.Float64,
    "decode_ms": pl.Float64,
    "prefill_tokens_per_s": pl.Float64,
    # True: the engine served the prompt from its cache (no prefill rate); False: evaluated whole; null: not known.
    "prefill_cached": pl.Boolean,
    "decode_tokens_per_s": pl.Float64,
    "ttft_ms": pl.Float64,
    "wall_ms": pl.Float64,
    "peak_rss_bytes": pl.Int64,
    "finish_reason": pl.String,
    # The configured -ngl (null where it is "auto": llama.cpp fitted it, or for Ollama, which decides itself),
    # and what llama.cpp's log says it offloaded, of the model's offloadable layers (repeating + output).
    "n_gpu_layers": pl.Int64,
    "n_gpu_layers_auto": pl.Boolean,
    "n_gpu_layers_offloaded": pl.Int64,
    "n_layers_total": pl.Int64,
    "gpus": pl.Int64,
    "threads": pl.Int64,
    "energy_j": pl.Float64,
    "energy_net_j": pl.Float64,
    "idle_power_w": pl.Float64,
    "energy_window_s": pl.Float64,
    "energy_source": pl.String,
    "energy_null_reason": pl.String,
    "energy_is_estimate": pl.Boolean,
    # GPU energy of the phases, cut at the first token in the sampled power trace; the trace's whole-window
    # integral beside the counter's reading is their cross-check.
    "gpu_energy_prefill_j": pl.Float64,
    "gpu_energy_decode_j": pl.Float64,
    "sampled_gpu_energy_j": pl.Float64,
    "energy_split_null_reason": pl.String,
    # What energy_j covers (e.g. "GPU (NVML energy counter) + CPU package+DRAM (RAPL)") and each sensor's J (JSON).
    "energy_boundary": pl.String,
    "energy_by_sensor_j": pl.String,
    # Per GPU (JSON): clocks, temperature, memory used, power limit and throttle reasons at start and end.
    "gpu_state_start": pl.String,
    "gpu_state_end": pl.String,
    "gpu_mem_used_bytes": pl.Int64,
    "load_ms": pl.Float64,
    "engine_library": pl.String,
    # Everything the engine reported about itself (JSON): Ollama's offload from /api/ps, transformers' dtype, ...
    "engine_facts": pl.String,
    "started_at": pl.Datetime("us", "UTC"),
    "output_text": pl.String,
}


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    max_tokens: int


@dataclass(frozen=True)
class RunPlan:
    tool: str
    model: str
    quant: str
    split: str
    prompts: tuple[Prompt, ...]
    repetitions: int
    warmup: int
    idle_s: float
    temperature: float
    seed: int
    n_gpu_layers: int | str | None  # a number, "auto" (llama.cpp fits it), or None (the engine decides)
    gpus: int
    threads: int
    estimate_w: float | None = None  # bench.energy_estimate_w: assumed power where no sensor can be read
    model_is_synthetic: bool = False

    def row_base(self) -> dict:
        return {"tool": self.tool, "model": self.model, "quant": self.quant, "split": self.split,
                "model_is_synthetic": self.model_is_synthetic,
                "temperature": self.temperature, "gpus": self.gpus, "threads": self.threads,
                "n_gpu_layers": self.n_gpu_layers if isinstance(self.n_gpu_layers, int) else None,
                "n_gpu_layers_auto": self.n_gpu_layers == "auto"}


def shareable_reason(reason: str | None, workdir: Path | None = None, home: Path | None = None) -> str | None:
    """The reason as shared outputs (tables, figures, the report, the archive) may quote it: an absolute path
    under the working directory (the project, where Snakemake runs a job) made relative to it, the home directory
    written as ``~``. What this machine's paths were stays in the job's log and provenance."""
    if reason is None:
        return None
    workdir = Path.cwd() if workdir is None else workdir
    home = Path.home() if home is None else home
    for root, replacement in [*((w, "") for w in {str(workdir), str(workdir.resolve())}),
                              *((h, "~/") for h in {str(home), str(home.resolve())})]:
        if root == "/":
            continue
        # The root as a whole path component: followed by `/` (a path below it) or by the end of the path.
        prefix = rf"(?<![\w./~-]){re.escape(root.rstrip('/'))}"
        reason = re.sub(prefix + "/", replacement, reason)
        reason = re.sub(prefix + r"(?![\w.-])", replacement.rstrip("/") or ".", reason)
    return reason


def skipped_run(plan: RunPlan, reason: str) -> pl.DataFrame:
    """One row saying the job did not run here and why; it keeps the group visible in every table."""
    row = {**plan.row_base(), "status": "skipped", "status_reason": shareable_reason(reason),
           "energy_null_reason": "not measured: the job was skipped"}
    return pl.DataFrame([row], schema=RUN_SCHEMA)


def failed_run(plan: RunPlan, reason: str, kind: str | None = None, signal: str | None = None) -> pl.DataFrame:
    """One row saying the job ran and its engine failed, what it was (``kind``, ``signal``: llmbench.diagnosis)
    and the fix; like a skipped row it keeps the group visible with its reason while every other job's results
    stand."""
    row = {**plan.row_base(), "status": "failed", "status_reason": shareable_reason(reason), "failure_kind": kind,
           "failure_signal": signal, "energy_null_reason": "not measured: the job failed"}
    return pl.DataFrame([row], schema=RUN_SCHEMA)


def gpu_columns(meter: EnergyMeter, energy: EnergyReading, ttft_ms: float | None, start: dict | None,
                end: dict | None) -> dict:
    """The GPU side of one generation's row: the phase energies (meters.split_at_first_token) beside the power
    trace's whole-window integral, and the devices' state at start and end."""
    split = split_at_first_token(meter, energy, ttft_ms)
    used = [g["memory_used_bytes"] for g in (end or {}).values() if g.get("memory_used_bytes") is not None]
    return {
        "gpu_energy_prefill_j": split.prefill_j,
        "gpu_energy_decode_j": split.decode_j,
        "sampled_gpu_energy_j": energy.sampled_gpu_j,
        "energy_split_null_reason": split.null_reason,
        "gpu_state_start": json.dumps(start) if start is not None else None,
        "gpu_state_end": json.dumps(end) if end is not None else None,
        "gpu_mem_used_bytes": sum(used) if used else None,
    }


def run_generations(backend: Engine, plan: RunPlan, meter: EnergyMeter, facts: dict | None = None) -> pl.DataFrame:
    """Warm up, then generate every prompt × repetition, each in its own energy window.

    The backend must already be started; ``facts`` is what it reported about itself (build, load time, library).
    A window's length is kept with its energy: short windows read low on counters that update every ~100 ms, so
    per-token energy is computed over sums of windows downstream.
    """
    facts = facts or {}
    engine = {"engine_build": facts.get("engine_build"), "load_ms": facts.get("load_ms"),
              "n_gpu_layers_offloaded": facts.get("n_gpu_layers_offloaded"), "n_layers_total": facts.get("n_layers_total"),
              "engine_library": facts.get("library"), "engine_facts": json.dumps(facts, default=str)}
    idle_w, idle_reason = measure_idle(meter, plan.idle_s)
    if idle_reason:
        log.info("idle baseline %s", idle_reason)
    first = plan.prompts[0]
    for i in range(plan.warmup):
        backend.generate(first.text, min(first.max_tokens, 16), plan.temperature, plan.seed + i)
    rows = []
    try:
        for prompt in plan.prompts:
            for rep in range(plan.repetitions):
                seed = plan.seed + rep
                started = dt.datetime.now(dt.UTC)
                window = f"{prompt.id}/{rep}"
                state_start = meter.gpu_state()
                getattr(backend, "before_generation", lambda _prompt: None)(prompt.text)
                meter.begin_window(window)
                g = backend.generate(prompt.text, prompt.max_tokens, plan.temperature, seed)
                energy = estimated(meter.end_window(window), plan.estimate_w)
                state_end = meter.gpu_state()
                log.info(
                    "%s rep %d: %s prompt + %s generated tokens, decode %s tok/s",
                    prompt.id, rep, g.prompt_tokens, g.generated_tokens,
                    "unknown" if g.decode_tokens_per_s is None else f"{g.decode_tokens_per_s:.1f}",
                )
                rows.append(
                    {
                        **plan.row_base(),
                        **engine,
                        "status": "ok",
                        "status_reason": None,
                        "prompt_id": prompt.id,
                        "repetition": rep,
                        "seed": seed,
                        "max_tokens": prompt.max_tokens,
                        "prompt_tokens": g.prompt_tokens,
                        "prefill_tokens": g.prefill_tokens,
                        "generated_tokens": g.generated_tokens,
                        "reasoning_tokens": g.reasoning_tokens,
                        "prefill_ms": g.prefill_ms,
                        "decode_ms": g.decode_ms,
                        "prefill_tokens_per_s": g.prefill_tokens_per_s,
                        "prefill_cached": g.prefill_cached,
                        "decode_tokens_per_s": g.decode_tokens_per_s,
                        "ttft_ms": g.ttft_ms,
                        "wall_ms": g.wall_ms,
                        "peak_rss_bytes": backend.peak_rss_bytes(),
                        "finish_reason": g.finish_reason,
                        "energy_j": energy.energy_j,
                        "energy_net_j": energy.net_j(idle_w),
                        "idle_power_w": idle_w,
                        "energy_window_s": energy.window_s,
                        "energy_source": energy.source,
                        "energy_null_reason": energy.null_reason,
                        "energy_is_estimate": energy.estimated,
                        **energy.boundary_columns(),
                        **gpu_columns(meter, energy, g.ttft_ms, state_start, state_end),
                        "started_at": started,
                        "output_text": g.text,
                    }
                )
    except EngineError as e:
        if not rows:
            raise
        # The generations that finished stand; the one whose engine failed is a failed row of its own.
        log.error("%s after %d generations: %s", plan.tool, len(rows), e)
        found = diagnosis_of(e, plan.tool)
        return pl.concat([pl.DataFrame(rows, schema=RUN_SCHEMA),
                          failed_run(plan, found.reason, found.kind, found.signal)])
    return pl.DataFrame(rows, schema=RUN_SCHEMA)
