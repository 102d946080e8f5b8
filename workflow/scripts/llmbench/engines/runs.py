"""Bench runs: every prompt × repetition through a backend, one row per generation, in one fixed schema."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from gguf import GGMLQuantizationType

from llmbench.core.precision import PrecisionSpec, Rounds, round_rate
from llmbench.core.quants import named_after
from llmbench.devices.contention import Contention
from llmbench.devices.meters import EnergyMeter, EnergyReading, estimated, measure_idle, split_at_first_token
from llmbench.engines.base import Engine, EngineError, EngineFailed, Generation, diagnosis_of

log = logging.getLogger(__name__)


RUN_SCHEMA: dict[str, pl.DataType] = {
    "tool": pl.String,
    "model": pl.String,
    "quant": pl.String,
    "split": pl.String,
    # The job's load level (clients sending requests at once) and context depth (tokens already in the context).
    "concurrency": pl.Int64,
    "depth": pl.Int64,
    # True for a model written with random weights (source kind synthetic): its speed and energy plan a real
    # model of that shape; its answers are noise.
    "model_is_synthetic": pl.Boolean,
    # What the model file holds (llmbench.modelfiles.tensor_mix): its weight matrices' ggml types by share of bytes, and where
    # it is not what its quant label says (tensors that fell back to other types) the note naming the real mix;
    # null where it is (or no file: an Ollama library tag).
    "tensor_mix": pl.String,
    # Also set where an engine that resolves its model itself (an Ollama library tag) loaded another type than the
    # label (loaded_quant_note).
    "quant_label_note": pl.String,
    # The sha256 of the weights the engine loaded ("sha256:<hex>"), where the engine names them (Ollama's blob);
    # null where it does not.
    "model_digest": pl.String,
    "status": pl.String,
    "status_reason": pl.String,
    # A failed row's kind (llmbench.engines.diagnosis: illegal_instruction, out_of_gpu_memory, …) and the signal that
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
    # The request as serving benchmarks time it (runs.request_columns): the client of the level that sent it,
    # its start and end [s from the level's start], the gaps between its streamed tokens after the first, and its
    # time per output token.
    "client": pl.Int64,
    "request_start_s": pl.Float64,
    "request_end_s": pl.Float64,
    "itl_ms": pl.List(pl.Float64),
    "tpot_ms": pl.Float64,
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
    # Whether the window spans enough updates of its slowest sensor to be used for J/token (meters.validity):
    # False with the reason where it is too short; null where nothing was measured or it is an estimate.
    "energy_valid": pl.Boolean,
    "energy_invalid_reason": pl.String,
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
    # What else ran on the machine over the generation's window (the level's at more than one client): other
    # processes' CPU time [s]; a row measured beside another load is status 'contended', with the reason, and is
    # left out of the statistics (llmbench.devices.contention).
    "other_cpu_s": pl.Float64,
    "contended": pl.Boolean,
    "contention_reason": pl.String,
    "gpu_state_start": pl.String,
    "gpu_state_end": pl.String,
    "gpu_mem_used_bytes": pl.Int64,
    "load_ms": pl.Float64,
    "engine_library": pl.String,
    # Everything the engine reported about itself (JSON): Ollama's offload from /api/ps, transformers' dtype, ...
    "engine_facts": pl.String,
    # The job's whole measured window (every request of every client; runs.level_columns), the same on each of
    # its rows: its energy, gross and idle-subtracted, and the server's own token counts checked against the rows.
    "level_window_s": pl.Float64,
    "level_energy_j": pl.Float64,
    "level_energy_net_j": pl.Float64,
    "level_energy_null_reason": pl.String,
    "level_energy_valid": pl.Boolean,
    "level_energy_invalid_reason": pl.String,
    "server_prompt_tokens": pl.Float64,
    "server_generated_tokens": pl.Float64,
    "server_counts_check": pl.String,
    # The job's precision (llmbench.core.precision), the same on each of its rows: the rounds it measured (every prompt
    # once per round; a row's round is its `repetition`), the median of the per-round decode rates [tokens/s]
    # and its distribution-free interval with the exact coverage, the confidence and the target asked for
    # (bench.precision; null target: fixed bench.repetitions), whether the target was met, and what a table says.
    "precision_rounds": pl.Int64,
    "precision_median": pl.Float64,
    "precision_low": pl.Float64,
    "precision_high": pl.Float64,
    "precision_coverage": pl.Float64,
    "precision_confidence": pl.Float64,
    "precision_target": pl.Float64,
    "precision_met": pl.Boolean,
    "precision_note": pl.String,
    "started_at": pl.Datetime("us", "UTC"),
    "output_text": pl.String,
}


def with_all_columns(runs: pl.DataFrame) -> pl.DataFrame:
    """``runs`` with every RUN_SCHEMA column: rows measured before a column existed (an older study, its archive)
    read it as null."""
    return runs.with_columns(pl.lit(None, t).alias(c) for c, t in RUN_SCHEMA.items() if c not in runs.columns)


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
    concurrency: int = 1
    depth: int = 0
    context: str = ""  # the text every prompt follows at a depth above 0: ``depth`` tokens by the engine's count
    precision: PrecisionSpec | None = None  # bench.precision: rounds until the median's interval is this tight

    def rounds(self) -> Rounds:
        """The job's rounds: ``repetitions`` of them, or as bench.precision says (llmbench.core.precision)."""
        return Rounds(self.repetitions, self.precision)

    @property
    def max_rounds(self) -> int:
        return self.precision.max_repetitions if self.precision else self.repetitions

    def prompt_text(self, prompt: Prompt) -> str:
        """What is sent: the prompt, after the context at a depth above 0."""
        return f"{self.context}\n\n{prompt.text}" if self.context else prompt.text

    def row_base(self) -> dict:
        return {"tool": self.tool, "model": self.model, "quant": self.quant, "split": self.split,
                "concurrency": self.concurrency, "depth": self.depth,
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
    """One row saying the job ran and its engine failed, what it was (``kind``, ``signal``: llmbench.engines.diagnosis)
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


LEVEL_WINDOW = "level"


def generation_columns(g: Generation) -> dict:
    """What the engine reported of one generation, as row columns (counts and phase times are the engine's)."""
    return {
        "prompt_tokens": g.prompt_tokens, "prefill_tokens": g.prefill_tokens, "generated_tokens": g.generated_tokens,
        "reasoning_tokens": g.reasoning_tokens, "prefill_ms": g.prefill_ms, "decode_ms": g.decode_ms,
        "prefill_tokens_per_s": g.prefill_tokens_per_s, "prefill_cached": g.prefill_cached,
        "decode_tokens_per_s": g.decode_tokens_per_s, "ttft_ms": g.ttft_ms, "wall_ms": g.wall_ms,
        "finish_reason": g.finish_reason, "output_text": g.text,
    }


def request_columns(g: Generation, client: int, start_s: float, end_s: float) -> dict:
    """A request as serving benchmarks time it: which client sent it, when it started and ended [s from the
    level's start], its inter-token latencies (gaps between the streamed chunks that carried generated text, after
    the first) and its time per output token, (end-to-end − TTFT) / (generated tokens − 1) with the engine's
    count (vLLM's benchmark_serving defines TPOT so)."""
    times = g.token_times_ms
    n = g.generated_tokens
    tpot = (g.wall_ms - g.ttft_ms) / (n - 1) if g.ttft_ms is not None and n is not None and n > 1 else None
    return {"client": client, "request_start_s": start_s, "request_end_s": end_s,
            "itl_ms": [b - a for a, b in zip(times, times[1:], strict=False)] or None, "tpot_ms": tpot}


def level_columns(level: EnergyReading, idle_w: float | None, counted: dict[str, float | None],
                  rows: list[dict], validity: tuple[bool | None, str | None] = (None, None)) -> dict:
    """The level's columns, the same on each of its rows: its energy over the whole measured window (every
    request of every client; gross and idle-subtracted) and the server's own token counts over it beside the
    client's (``counted``: the engine's counter deltas, or a ``note`` why there are none)."""
    prefill = sum(r["prefill_tokens"] or 0 for r in rows)
    generated = sum(r["generated_tokens"] or 0 for r in rows)
    precision = counted.get("precision") or {}

    def agrees(key: str, client: int) -> bool:
        server = counted.get(key)
        return server is not None and abs(server - client) <= precision.get(key, 0.0)

    within = "; ".join(f"{k.replace('_', ' ')} ±{v:g}" for k, v in precision.items() if v)
    said = f" (within the server counters' printed precision: {within})" if within else ""
    beyond = f" (beyond the server counters' printed precision: {within})" if within else ""
    if counted.get("note"):
        check = counted["note"]
    elif agrees("generated_tokens", generated) and agrees("prompt_tokens", prefill):
        check = f"match: {generated:g} generated and {prefill:g} prompt tokens, server and client{said}"
    else:
        check = (f"mismatch: the server counted {counted.get('generated_tokens')} generated and "
                 f"{counted.get('prompt_tokens')} prompt tokens, the client's rows {generated} and {prefill}{beyond}")
    return {
        "level_window_s": level.window_s, "level_energy_j": level.energy_j,
        "level_energy_net_j": level.net_j(idle_w), "level_energy_null_reason": level.null_reason,
        "level_energy_valid": validity[0], "level_energy_invalid_reason": validity[1],
        "server_prompt_tokens": counted.get("prompt_tokens"), "server_generated_tokens": counted.get("generated_tokens"),
        "server_counts_check": check,
    }


def engine_counters(engine: Engine) -> dict[str, float] | str | None:
    """The engine's own token counters now (llama-server's /metrics); None where it has none; why not where they
    could not be read (an engine that died has none to give, and its rows must still stand)."""
    try:
        return engine.counters()
    except (OSError, EngineError, ValueError) as e:
        return f"its token counters could not be read ({e})"


def counter_deltas(before: dict | str | None, after: dict | str | None, tool: str) -> dict:
    if isinstance(before, str) or isinstance(after, str):
        return {"note": f"not cross-checked: {before if isinstance(before, str) else after}"}
    if before is None or after is None:
        return {"note": f"not cross-checked: {tool} exposes no token counters"}
    deltas = {k: after[k] - before[k] for k in ("prompt_tokens", "generated_tokens") if k in after and k in before}
    # A difference of two printed counters is good to the sum of their printed precisions.
    precision = {k: before.get("precision", {}).get(k, 0.0) + after.get("precision", {}).get(k, 0.0) for k in deltas}
    return {**deltas, "precision": precision}


def loaded_quant_note(label: str | None, facts: dict) -> str | None:
    """Where the engine says it loaded another quant type than the config's ``label``: the note naming it, from
    its facts ``loaded_quant`` (in the study's spelling, llmbench.core.quants) and ``loaded_quant_from`` (how it knows,
    and the fix); None where they agree or the engine does not say. A label of the tensor type the loaded file type
    is named after (MXFP4 for MXFP4_MOE, Q4_K for Q4_K_M) agrees."""
    loaded = facts.get("loaded_quant")
    if not label or not loaded:
        return None
    tensor_types = {t.name: 0.0 for t in GGMLQuantizationType}
    if label.upper() in (loaded.upper(), (named_after(loaded.upper(), tensor_types) or "")):
        return None
    return f"{label} is not what ran: {facts.get('loaded_quant_from') or f'the engine loaded {loaded}'}"


def run_generations(engine: Engine, plan: RunPlan, meter: EnergyMeter, facts: dict | None = None) -> pl.DataFrame:
    """Warm up, then generate in rounds, every prompt once per round, until the plan's rounds are done
    (bench.repetitions, or bench.precision's stopping rule on the per-round decode rates: llmbench.core.precision):
    one client, each generation in its own energy window, or at ``plan.concurrency`` N > 1, N clients at once,
    each sending every prompt of the round in a closed loop (its next request when its last one ends), the energy
    measured over the whole level.

    The engine must already be started; ``facts`` is what it reported about itself (build, load time, library).
    A window's length is kept with its energy: short windows read low on counters that update every ~100 ms, so
    per-token energy is computed over sums of windows downstream. Generations that finished stand when a later
    one fails (a 'failed' row is added); an engine that fails before any finished raises.
    """
    facts = facts or {}
    engine_cols = {"engine_build": facts.get("engine_build"), "load_ms": facts.get("load_ms"),
                   "n_gpu_layers_offloaded": facts.get("n_gpu_layers_offloaded"),
                   "n_layers_total": facts.get("n_layers_total"), "engine_library": facts.get("library"),
                   "model_digest": facts.get("model_digest"),
                   "quant_label_note": loaded_quant_note(plan.quant, facts),
                   "engine_facts": json.dumps(facts, default=str)}
    idle_w, idle_reason = measure_idle(meter, plan.idle_s)
    if idle_reason:
        log.info("idle baseline %s", idle_reason)
    if (lost := device_lost(meter)) is not None:
        raise lost  # before any generation: the job's failed row says it
    warm_up(engine, plan)
    before = engine_counters(engine)
    rows: list[dict] = []
    rounds = plan.rounds()
    meter.begin_window(LEVEL_WINDOW)
    t0 = meter.opened_at(LEVEL_WINDOW)
    try:
        error = (one_client if plan.concurrency == 1 else many_clients)(engine, plan, meter, idle_w, t0, rows,
                                                                         rounds)
    finally:
        level = estimated(meter.end_window(LEVEL_WINDOW), plan.estimate_w)
    log.info("precision: %s", rounds.verdict().note)
    level_cols = level_columns(level, idle_w, counter_deltas(before, engine_counters(engine), plan.tool), rows,
                               meter.validity(level))
    if plan.concurrency > 1:  # requests share the level's window: its contention is each row's
        rows = [{**r, **contention_columns(level.contention)} for r in rows]
    precision = rounds.columns()
    table = pl.DataFrame([{**plan.row_base(), **engine_cols, **r, **level_cols, **precision} for r in rows],
                         schema=RUN_SCHEMA)
    error = error or device_lost(meter)  # a GPU that fell off the bus as the level's window closed
    if error is None:
        return table
    if not rows:
        raise error
    # The generations that finished stand; the one whose engine failed is a failed row of its own.
    log.error("%s after %d generations: %s", plan.tool, len(rows), error)
    found = diagnosis_of(error, plan.tool)
    return pl.concat([table, failed_run(plan, found.reason, found.kind, found.signal)])


def contention_columns(found: Contention | None) -> dict:
    """A generation's status and what else ran over its window: 'contended' with the reason where other processes
    loaded the machine (llmbench.devices.contention.judge), 'ok' otherwise."""
    if found is None:
        return {"status": "ok", "status_reason": None}
    return {"status": "contended" if found.contended else "ok",
            "status_reason": found.reason if found.contended else None, **found.columns()}


# What a generation measured: the columns statistics and cost tables read, null on a contended row.
MEASURED_COLUMNS = ["prompt_tokens", "prefill_tokens", "generated_tokens", "prefill_ms", "decode_ms",
                    "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "wall_ms", "tpot_ms", "energy_j",
                    "energy_net_j", "energy_window_s", "gpu_energy_prefill_j", "gpu_energy_decode_j",
                    "sampled_gpu_energy_j", "level_window_s", "level_energy_j", "level_energy_net_j", "peak_rss_bytes",
                    "gpu_mem_used_bytes", "load_ms"]


def without_contended(runs: pl.DataFrame, columns: list[str] = MEASURED_COLUMNS) -> pl.DataFrame:
    """``runs`` with ``columns`` null on the rows measured under contention: statistics leave them out (counted
    as not measured) while the rows and their reason stay in the tables."""
    if "status" not in runs.columns:
        return runs
    contended = pl.col("status") == "contended"
    return runs.with_columns(pl.when(contended).then(None).otherwise(pl.col(c)).alias(c)
                             for c in columns if c in runs.columns)


def device_lost(meter: EnergyMeter) -> EngineFailed | None:
    """The job's end where a sensor said its GPU is gone (meters.DeviceLost): nothing more measured on it is sound,
    so the generations that finished stand and a failed row says what happened, with the fix."""
    if meter.lost is None:
        return None
    from llmbench.engines.diagnosis import GPU_LOST, Diagnosis

    return EngineFailed(Diagnosis(GPU_LOST, meter.lost))


def warm_up(engine: Engine, plan: RunPlan) -> None:
    """Untimed generations of the first prompt (bench.warmup), one per client at once."""
    first = plan.prompts[0]
    with ThreadPoolExecutor(plan.concurrency) as pool:
        for i in range(plan.warmup):
            list(pool.map(lambda c, i=i: engine.generate(plan.prompt_text(first), min(first.max_tokens, 16),
                                                         plan.temperature, plan.seed + i + c), range(plan.concurrency)))


def one_client(engine: Engine, plan: RunPlan, meter: EnergyMeter, idle_w: float | None, t0: float,
               rows: list[dict], rounds: Rounds) -> EngineError | None:
    """Every prompt once per round, one after the other, each in its own energy window; rows appended to ``rows``,
    each round's decode rate to ``rounds``."""
    try:
        for rep in rounds:
            done = len(rows)
            for prompt in plan.prompts:
                seed = plan.seed + rep
                started = dt.datetime.now(dt.UTC)
                window = f"{prompt.id}/{rep}"
                state_start = meter.gpu_state()
                engine.before_generation(plan.prompt_text(prompt))
                meter.begin_window(window)
                g = engine.generate(plan.prompt_text(prompt), prompt.max_tokens, plan.temperature, seed)
                energy = estimated(meter.end_window(window), plan.estimate_w)
                state_end = meter.gpu_state()
                log.info("%s rep %d: %s prompt + %s generated tokens, decode %s tok/s", prompt.id, rep,
                         g.prompt_tokens, g.generated_tokens,
                         "unknown" if g.decode_tokens_per_s is None else f"{g.decode_tokens_per_s:.1f}")
                rows.append({
                    **contention_columns(energy.contention),
                    "prompt_id": prompt.id, "repetition": rep, "seed": seed,
                    "max_tokens": prompt.max_tokens, **generation_columns(g),
                    **request_columns(g, 0, energy.t0 - t0, energy.t1 - t0),
                    "peak_rss_bytes": engine.peak_rss_bytes(),
                    "energy_j": energy.energy_j, "energy_net_j": energy.net_j(idle_w), "idle_power_w": idle_w,
                    "energy_window_s": energy.window_s, "energy_source": energy.source,
                    "energy_null_reason": energy.null_reason, "energy_is_estimate": energy.estimated,
                    **dict(zip(("energy_valid", "energy_invalid_reason"), meter.validity(energy), strict=True)),
                    **energy.boundary_columns(), **gpu_columns(meter, energy, g.ttft_ms, state_start, state_end),
                    "started_at": started,
                })
                if (lost := device_lost(meter)) is not None:
                    return lost
            rounds.record(rate_of(rows[done:]))
    except EngineError as e:
        return e
    return None


def rate_of(rows: list[dict]) -> float | None:
    """A round's decode rate from its rows (llmbench.core.precision.round_rate); a contended row's rate is not one."""
    if any(r.get("status") == "contended" for r in rows):
        return None
    return round_rate([r["generated_tokens"] for r in rows], [r["decode_ms"] for r in rows])


def many_clients(engine: Engine, plan: RunPlan, meter: EnergyMeter, idle_w: float | None, t0: float,
                 rows: list[dict], rounds: Rounds) -> EngineError | None:
    """``plan.concurrency`` clients at once, each sending every prompt of the round in a closed loop; a round ends
    when every client's requests of it have ended (so that every round holds the same mix), its decode rate (each
    user's: the round's tokens over its requests' decode time) recorded in ``rounds``; rows of the requests that
    finished appended to ``rows``. Requests share the engine, so no request has an energy window of its own: the
    level's energy is measured over all of them (level_columns)."""
    reason = (f"not measured per request: {plan.concurrency} requests share the engine at once; the level's "
              "energy over its whole window is level_energy_j")
    lock = threading.Lock()

    def client(c: int, rep: int, out: list[dict]) -> None:
        for prompt in plan.prompts:
            seed = plan.seed + rep * plan.concurrency + c
            started = dt.datetime.now(dt.UTC)
            a = time.perf_counter()
            g = engine.generate(plan.prompt_text(prompt), prompt.max_tokens, plan.temperature, seed)
            b = time.perf_counter()
            row = {"status": "ok", "status_reason": None, "prompt_id": prompt.id, "repetition": rep,
                   "seed": seed, "max_tokens": prompt.max_tokens, **generation_columns(g),
                   **request_columns(g, c, a - t0, b - t0), "peak_rss_bytes": engine.peak_rss_bytes(),
                   "idle_power_w": idle_w, "energy_null_reason": reason,
                   "energy_split_null_reason": reason, "started_at": started}
            with lock:
                out.append(row)

    errors: list[BaseException] = []
    with ThreadPoolExecutor(plan.concurrency) as pool:
        for rep in rounds:
            finished: list[dict] = []
            futures = [pool.submit(client, c, rep, finished) for c in range(plan.concurrency)]
            errors = [f.exception() for f in futures if f.exception() is not None]
            rows.extend(finished)
            rounds.record(rate_of(finished))
            if errors:
                break
    for e in errors:
        if not isinstance(e, EngineError):
            raise e
    rows.sort(key=lambda r: (r["request_start_s"], r["client"]))
    log.info("%d clients: %d requests in %.1f s", plan.concurrency, len(rows), time.perf_counter() - t0)
    return errors[0] if errors else device_lost(meter)
