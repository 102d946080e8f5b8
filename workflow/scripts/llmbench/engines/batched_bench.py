"""llama.cpp's llama-batched-bench: the engine-side reference for the load axis, as llama-bench is for one stream.

At load level N it decodes N sequences in one batch (``-npl N``), each after a prompt of its own (not shared: no
``-pps``) of ``depth + n_prompt`` random tokens, ``n_gen`` tokens each. Its S_TG, the batch's decode tokens/s, is
what a server with N busy slots makes at most on this build and model: no scheduler, no HTTP, no sampling.

Repetitions are the batch size listed again (``-npl N,N,…``) in one process, the warm-up ones first and dropped,
and one more last, whose line may be lost: llama.cpp's common log prints from a worker thread and its logger is
never flushed at exit (upstream issue #22142), so what is logged just before the process ends can vanish (seen
here: a run of a few milliseconds printing nothing and exiting 0). The trailing test keeps the measured lines
well before the exit.
The context is N × (prompt + n_gen), exactly what the tests need; llama-batched-bench silently leaves out a test
that does not fit, so a missing line is an error here (IncompleteBenchOutput: run once more, then fail naming the
log), never half a result. Its ``-o jsonl`` lines are read by field name (README of tools/batched-bench: pp, tg,
pl, n_kv, t_pp, speed_pp, t_tg, speed_tg, t, speed); with --log-verbosity 4 it logs llama.cpp's load lines, so the
layers offloaded come from the same run's log.

A run has a wall-clock limit derived from its work (llmbench.core.logs.tool_limit: the model's size, every batch's
prompts and generated tokens) or bench.tool_timeout_s; past it the run is killed and the job ends in a failed row
of kind timed_out naming the limit (llama_bench.run_bench_binary).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import polars as pl

from llmbench.core.logs import ToolLimit, model_bytes, tool_limit
from llmbench.engines.llama_bench import IncompleteBenchOutput, json_lines, run_and_parse, tool_timeout_s
from llmbench.engines.llama_log import AUTO, Offload, parse_offload
from llmbench.engines.llama_server import offload_args as common_offload_args
from llmbench.engines.runs import RUN_SCHEMA, RunPlan

BATCHED_BENCH_ENERGY = (
    "not measured: llama-batched-bench times its batches inside one process, so no window matches a sample"
)
TRAILING = 1  # tests after the measured ones, their lines not needed (see above)
FIELDS = ("pp", "tg", "pl", "t_pp", "speed_pp", "t_tg", "speed_tg", "t")


@dataclass(frozen=True)
class BatchedBenchSettings:
    tool: ClassVar[str] = "llama-batched-bench"
    binary: Path
    model: Path
    batch: int  # sequences decoded at once (-npl): the load level
    n_prompt: int = 128  # each sequence's prompt after the depth [tokens]
    n_gen: int = 128  # tokens each sequence generates (-ntg)
    depth: int = 0  # tokens before each sequence's prompt; its prefill covers them too
    repetitions: int = 5
    warmup: int = 1
    threads: int = 1
    n_gpu_layers: int | str = 0  # "auto": the layers llama.cpp's fitting chooses (llama_server.fitted_gpu_layers)
    split_mode: str = "none"
    tensor_split: tuple[float, ...] | None = None
    timeout_s: float | None = None  # bench.tool_timeout_s; None derives the run's limit from its work

    @property
    def prompt_per_sequence(self) -> int:
        return self.depth + self.n_prompt

    def limit(self) -> ToolLimit:
        """The run's wall-clock limit: every test (warm-up, measured, trailing) evaluates N prompts and decodes
        N × n_gen tokens, each token counted as if alone (a batch shares its reads of the weights: generous)."""
        tests = self.warmup + self.repetitions + TRAILING
        return tool_limit(model_bytes(self.model), prompt_tokens=tests * self.batch * self.prompt_per_sequence,
                          generated_tokens=tests * self.batch * self.n_gen, override_s=self.timeout_s)

    @property
    def ctx_size(self) -> int:
        """The KV cache the batch fills: N × (prompt + n_gen) [tokens]."""
        return self.batch * (self.prompt_per_sequence + self.n_gen)


def batched_bench_command(s: BatchedBenchSettings) -> list[str]:
    """The command line; ``n_gpu_layers`` must be a number here (fit "auto" first)."""
    if s.n_gpu_layers == AUTO:
        raise ValueError("llama-batched-bench loads the model without llama.cpp's fitting: give it the fitted "
                         "number of layers (llama_server.fitted_gpu_layers), not 'auto'")
    if s.prompt_per_sequence < 1:
        # With no prompt its prefill rate is 0/0, which it prints as -nan (not JSON).
        raise ValueError("llama-batched-bench needs a prompt of at least 1 token per sequence: set n_prompt >= 1")
    # llama.cpp's common arguments; its --fit is not applied by llama-batched-bench (it loads the model itself).
    offload = common_offload_args(s.n_gpu_layers, s.tensor_split)
    return [
        str(s.binary), "-m", str(s.model), "-c", str(s.ctx_size),
        "-npp", str(s.prompt_per_sequence), "-ntg", str(s.n_gen),
        "-npl", ",".join([str(s.batch)] * (s.warmup + s.repetitions + TRAILING)),
        "-t", str(s.threads), *offload, "--split-mode", s.split_mode, "--output-format", "jsonl",
        # Level 4 adds llama.cpp's load lines (layers offloaded, allocation failures), as for llama-server.
        "--log-verbosity", "4",
    ]


def parse_jsonl(text: str, settings: BatchedBenchSettings) -> list[dict]:
    """The measured result lines of ``--output-format jsonl`` (the warm-up ones dropped), each checked against
    what was asked (pp, tg, pl) and for finite times; IncompleteBenchOutput where a line is missing, cut short or
    not the test asked."""
    asked = settings.warmup + settings.repetitions
    tests = json_lines(text, "llama-batched-bench")
    if not asked <= len(tests) <= asked + TRAILING:
        raise IncompleteBenchOutput(
            f"llama-batched-bench printed {len(tests)} result lines for the {asked} measured (and {TRAILING} "
            f"trailing) asked: a test whose context does not fit -c {settings.ctx_size} is left out silently, and "
            "lines logged just before it exits can be lost")
    want = {"pp": settings.prompt_per_sequence, "tg": settings.n_gen, "pl": settings.batch}
    for t in tests:
        missing = [f for f in FIELDS if f not in t]
        if missing:
            raise IncompleteBenchOutput(f"llama-batched-bench's result line lacks {', '.join(missing)}: {t}")
        if {k: t[k] for k in want} != want:
            raise IncompleteBenchOutput(f"llama-batched-bench ran pp {t['pp']}, tg {t['tg']}, pl {t['pl']}, not "
                                        f"the test asked ({want})")
        if not all(math.isfinite(t[k]) and t[k] > 0 for k in ("t_pp", "t_tg")):
            raise IncompleteBenchOutput(f"llama-batched-bench's times are not positive: t_pp {t['t_pp']}, "
                                        f"t_tg {t['t_tg']}")
    return tests[settings.warmup:asked]


def batches_to_rows(tests: list[dict], plan: RunPlan, settings: BatchedBenchSettings, offload: Offload | None = None,
                  build: str | None = None, first_round: int = 0) -> pl.DataFrame:
    """One row per measured batch, in RUN_SCHEMA: prompt and prefill tokens N × prompt, generated N × n_gen,
    prefill_ms and decode_ms its T_PP and T_TG [ms], and its S_PP and S_TG as prefill and decode tokens/s. Both
    rates are the whole batch's (all N sequences' tokens over the batch's time); one sequence's decode speed is
    decode_tokens_per_s / concurrency."""
    now = dt.datetime.now(dt.UTC)
    base = plan.row_base()
    rows = []
    for rep, t in enumerate(tests):
        n = int(t["pl"])
        rows.append({
            **base,  # the configured -ngl (null for auto: what the fitting chose is the layers offloaded)
            "n_gpu_layers_offloaded": offload.offloaded if offload else None,
            "n_layers_total": offload.total if offload else None,
            "threads": t.get("n_threads", settings.threads),
            "status": "ok",
            "engine_build": build,
            "prompt_id": f"pp{t['pp']}+tg{t['tg']}x{n}",
            "repetition": first_round + rep,
            "max_tokens": int(t["tg"]),
            "prompt_tokens": n * int(t["pp"]),
            "prefill_tokens": n * int(t["pp"]),
            "generated_tokens": n * int(t["tg"]),
            "prefill_ms": t["t_pp"] * 1e3,
            "decode_ms": t["t_tg"] * 1e3,
            "prefill_tokens_per_s": float(t["speed_pp"]),
            "decode_tokens_per_s": float(t["speed_tg"]),
            "wall_ms": t["t"] * 1e3,
            "energy_null_reason": BATCHED_BENCH_ENERGY,
            "started_at": now,
        })
    return pl.DataFrame(rows, schema=RUN_SCHEMA)


def run_batched_bench(settings: BatchedBenchSettings, plan: RunPlan, log_path: Path,
                      build: str | None = None) -> pl.DataFrame:
    """The batch measured in rounds (one measured batch per round, as many per run as bench.precision's rule
    needs; llmbench.core.precision), every batch a row with the job's precision; the layers offloaded from the first
    run's log."""
    log_path = Path(log_path)
    rounds = dataclasses.replace(plan.rounds(), metric="batch decode rate")
    parts: list[pl.DataFrame] = []
    offload: list[Offload | None] = []

    def measure(first: int, k: int) -> list[float | None]:
        run = dataclasses.replace(settings, repetitions=k)
        tests = run_and_parse(batched_bench_command(run), log_path, lambda out: parse_jsonl(out, run), run,
                              append=first > 0)
        if not offload:
            offload.append(parse_offload(log_path.read_text(errors="replace")))
        parts.append(batches_to_rows(tests, plan, run, offload[0], build, first))
        return [float(t["speed_tg"]) for t in tests]

    rounds.run_batches(measure)
    return pl.concat(parts).with_columns(pl.lit(v, RUN_SCHEMA[c]).alias(c) for c, v in rounds.columns().items())


def run_job(job, engine_log: Path) -> pl.DataFrame:
    """A bench job's rows from llama-batched-bench at the job's load level and depth (llmbench.study.job.Job: the
    build, model, offload, the plan's repetitions and warm-up, and the tool's own n_prompt and n_gen)."""
    s = job.settings
    settings = BatchedBenchSettings(
        binary=s.build_dir / "bin" / "llama-batched-bench", model=s.model, batch=job.concurrency,
        n_prompt=job.tool_settings["n_prompt"], n_gen=job.tool_settings["n_gen"], depth=job.depth,
        repetitions=job.plan.repetitions, warmup=job.plan.warmup, threads=s.threads, n_gpu_layers=s.n_gpu_layers,
        split_mode=s.split, tensor_split=s.tensor_split, timeout_s=tool_timeout_s(job),
    )
    if settings.n_gpu_layers == AUTO:
        settings = fitted(settings, engine_log)
    return run_batched_bench(settings, job.plan, engine_log, (job.build_record or {}).get("commit"))


def fitted(settings: BatchedBenchSettings, engine_log: Path) -> BatchedBenchSettings:
    """``settings`` with the layers llama.cpp's fitting offloads for the batch's context (a llama-server of the
    same build started with -ngl auto, its log read, stopped)."""
    from llmbench.engines.llama_server import fitted_by_build

    layers = fitted_by_build(settings.binary.parent, settings.model, settings.split_mode, settings.threads,
                             settings.ctx_size, settings.tensor_split, Path(engine_log).with_suffix(".fit.log"))
    return dataclasses.replace(settings, n_gpu_layers=layers)
