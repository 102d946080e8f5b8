"""llama.cpp's llama-bench as a synthetic bench tool: pp (prefill) and tg (decode) tests, raw samples kept.

Its -o jsonl output is parsed by field name (the column set changes between builds); every repetition's own
sample (samples_ns / samples_ts) becomes one row in the run schema, so statistics use the raw samples rather
than llama-bench's mean ± sd.

llama-bench silences llama.cpp's log unless -v, and -v also logs every decode step; so a probe run (the same
test, one repetition, -v) goes first, into its own log: it shows the layers offloaded and, where the load fails,
llama.cpp's reason. The measured run follows without -v.

An output cut short (a test's line missing or broken, a line without its samples, fewer samples than
repetitions, while llama-bench exited 0) is not a result: ``run_and_parse`` runs it once more, and fails naming
the log if the second output is cut short too; never half a row.

Every run has a wall-clock limit derived from its work (llmbench.core.logs.tool_limit: the model's size, the tokens
of every test and repetition) or bench.tool_timeout_s; a run past it is killed and the job ends in a failed row
of kind timed_out naming the limit and where it came from (never rerun: a hang is not an output cut short).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import polars as pl

from llmbench.core.logs import TOOL_TIMEOUT_KEY, ToolLimit, model_bytes, run_logged, tool_limit
from llmbench.engines.base import EngineError, EngineFailed, engine_failure
from llmbench.engines.diagnosis import diagnose, timed_out
from llmbench.engines.llama_log import AUTO, Offload, check_offload, parse_offload
from llmbench.engines.runs import RUN_SCHEMA, RunPlan

# llama-server's default margin for --fit; llama-bench fits only when given one (-fitt).
FIT_TARGET_MIB = 1024

LLAMA_BENCH_ENERGY = (
    "not measured: llama-bench times its repetitions inside one process, so no window matches a sample"
)


@dataclass(frozen=True)
class LlamaBenchSettings:
    tool: ClassVar[str] = "llama-bench"
    binary: Path
    model: Path
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    threads: int = 1
    n_gpu_layers: int | str = 0  # a number, or "auto": llama-bench's own fitting (-fitt) chooses it
    split_mode: str = "none"
    tensor_split: tuple[float, ...] | None = None
    depth: int = 0  # tokens already in the context before each test (-d)
    timeout_s: float | None = None  # bench.tool_timeout_s; None derives each run's limit from its work

    @property
    def ctx_size(self) -> int:
        """The context its largest test fills [tokens]."""
        return self.depth + self.n_prompt + self.n_gen

    def limit(self, runs: int | None = None) -> ToolLimit:
        """The wall-clock limit of a run of ``runs`` repetitions of each test (default: the measured run's, its
        warm-up included): each pp test evaluates depth + n_prompt tokens, each tg test depth and decodes n_gen."""
        runs = self.repetitions + 1 if runs is None else runs
        tests = [n for n in (self.n_prompt, self.n_gen) if n]
        return tool_limit(model_bytes(self.model), prompt_tokens=runs * (len(tests) * self.depth + self.n_prompt),
                          generated_tokens=runs * self.n_gen, override_s=self.timeout_s)


def offload_args(n_gpu_layers: int | str, tensor_split: tuple[float, ...] | None) -> list[str]:
    """llama-bench's -ngl takes numbers only; "auto" is its -fitt (fit to free device memory with that margin)."""
    check_offload(n_gpu_layers, tensor_split)
    if n_gpu_layers == AUTO:
        args = ["-fitt", str(FIT_TARGET_MIB)]
    else:
        args = ["-ngl", str(n_gpu_layers)]
    if tensor_split:
        args += ["-ts", "/".join(f"{x:g}" for x in tensor_split)]  # llama-bench separates GPUs with '/'
    return args


def bench_command(s: LlamaBenchSettings) -> list[str]:
    return [
        str(s.binary), "-m", str(s.model),
        "-p", str(s.n_prompt), "-n", str(s.n_gen), "-r", str(s.repetitions),
        "-t", str(s.threads), *offload_args(s.n_gpu_layers, s.tensor_split), "-sm", s.split_mode,
        "-d", str(s.depth), "-o", "jsonl",
    ]


def probe_command(s: LlamaBenchSettings) -> list[str]:
    """The same test once, verbose and without warm-up: llama.cpp's load log, for the offload and failures."""
    cmd = bench_command(s)
    cmd[cmd.index("-r") + 1] = "1"
    return [*cmd, "--no-warmup", "-v"]


class IncompleteBenchOutput(EngineError):
    """llama-bench exited normally but its output stops short of whole results: run it once more."""


def _check_samples(t: dict, repetitions: int | None = None) -> None:
    ns, ts = t.get("samples_ns"), t.get("samples_ts")
    name = f"pp{t.get('n_prompt', 0)}/tg{t.get('n_gen', 0)}"
    if not ns or not ts or len(ns) != len(ts):
        raise IncompleteBenchOutput(f"llama-bench's result line for {name} has no samples (samples_ns "
                                    f"{len(ns or [])}, samples_ts {len(ts or [])})")
    if repetitions is not None and len(ns) != repetitions:
        raise IncompleteBenchOutput(f"llama-bench's result line for {name} has {len(ns)} samples of "
                                    f"{repetitions} repetitions")


def json_lines(text: str, tool: str) -> list[dict]:
    """The JSON objects of a bench binary's jsonl output, one per line that starts with '{' (its log lines do
    not); IncompleteBenchOutput naming ``tool`` where one is cut short."""
    tests = []
    for line in (ln.strip() for ln in text.splitlines()):
        if line.startswith("{"):
            try:
                tests.append(json.loads(line))
            except json.JSONDecodeError:
                raise IncompleteBenchOutput(f"{tool}'s result line is cut short: {line[-200:]!r}") from None
    return tests


def parse_jsonl(text: str, settings: LlamaBenchSettings | None = None) -> list[dict]:
    """The result lines of ``-o jsonl``, each with its samples; with ``settings``, a line for each test asked
    (pp and tg) with one sample per repetition. IncompleteBenchOutput where any is missing or cut short."""
    tests = json_lines(text, "llama-bench")
    if not tests:
        raise IncompleteBenchOutput(f"llama-bench printed no results: {text[-500:]!r}")
    for t in tests:
        _check_samples(t, settings.repetitions if settings else None)
    if settings is not None:
        asked = {(settings.n_prompt, 0)} if settings.n_prompt else set()
        asked |= {(0, settings.n_gen)} if settings.n_gen else set()
        got = {(int(t.get("n_prompt", 0)), int(t.get("n_gen", 0))) for t in tests}
        if missing := sorted(asked - got):
            raise IncompleteBenchOutput("llama-bench's output has no result line for "
                                        + ", ".join(f"pp{p}" if p else f"tg{g}" for p, g in missing))
    return tests


def samples_to_rows(tests: list[dict], plan: RunPlan, offload: Offload | None = None,
                    first_round: int = 0) -> pl.DataFrame:
    """One row per repetition sample, its round ``first_round`` + its index; a pp test fills the prefill
    columns, a tg test the decode columns."""
    now = dt.datetime.now(dt.UTC)
    base = plan.row_base()
    rows = []
    for t in tests:
        _check_samples(t)  # never half a row
        n_prompt, n_gen = int(t.get("n_prompt", 0)), int(t.get("n_gen", 0))
        name = "+".join(x for x in (f"pp{n_prompt}" if n_prompt else "", f"tg{n_gen}" if n_gen else "") if x)
        for rep, (ns, ts) in enumerate(zip(t["samples_ns"], t["samples_ts"], strict=True)):
            ms = ns / 1e6
            decode = n_gen > 0 and n_prompt == 0
            rows.append({
                **base,
                # With -fitt llama-bench reports its unfitted default (-1): the configured value stays.
                "n_gpu_layers": base["n_gpu_layers"] if plan.n_gpu_layers == AUTO
                else t.get("n_gpu_layers", plan.n_gpu_layers),
                "n_gpu_layers_offloaded": offload.offloaded if offload else None,
                "n_layers_total": offload.total if offload else None,
                "threads": t.get("n_threads", plan.threads),
                "status": "ok",
                "engine_build": t.get("build_commit"),
                "prompt_id": name,
                "repetition": first_round + rep,
                "max_tokens": n_gen,
                "prompt_tokens": n_prompt,
                "prefill_tokens": n_prompt,
                "generated_tokens": n_gen,
                "prefill_ms": None if decode else ms,
                "decode_ms": ms if decode else None,
                "prefill_tokens_per_s": None if decode else ts,
                "decode_tokens_per_s": ts if decode else None,
                "wall_ms": ms,
                "energy_null_reason": LLAMA_BENCH_ENERGY,
                "started_at": now,
            })
    return pl.DataFrame(rows, schema=RUN_SCHEMA)


def run_bench_binary(cmd: list[str], log_path: Path, settings, append: bool = False,
                     limit: ToolLimit | None = None) -> str:
    """Run a llama.cpp bench binary (``settings.tool``: llama-bench, llama-batched-bench) with stderr to
    ``log_path`` (after what the log holds, with ``append``), its stdout kept there too; stdout back. A failure
    raises EngineFailed (OutOfMemory for a failed allocation) with its diagnosis, which names ``settings.model``,
    ``n_gpu_layers`` and ``ctx_size``. A run past ``limit`` (default ``settings.limit()``, the measured run's) is
    killed: EngineFailed of kind timed_out naming the limit [s], where it came from and the fix."""
    limit = limit or settings.limit()
    run = run_logged(cmd, log_path, append=append, capture_stdout=True, timeout_s=limit.seconds)
    if run.timed_out:
        raise EngineFailed(timed_out(f"{settings.tool} was killed", limit.seconds, limit.source, TOOL_TIMEOUT_KEY,
                                     log_path))
    if run.returncode != 0:
        found = diagnose(settings.tool, run.returncode, run.output, Path(settings.model),
                         f"n_gpu_layers={settings.n_gpu_layers}, ctx_size={settings.ctx_size}")
        raise engine_failure(dataclasses.replace(found, reason=f"{found.reason} (engine log {log_path})"))
    return run.stdout


def run_and_parse(cmd: list[str], log_path: Path, parse: Callable[[str], list[dict]], settings,
                  append: bool = False) -> list[dict]:
    """``parse`` of the bench binary's stdout (run_bench_binary; after what the log holds, with ``append``); where
    it finds the output cut short (IncompleteBenchOutput), it runs once more, into the same log; cut short again,
    an IncompleteBenchOutput that names the log. A failed run (exit code) is not rerun."""
    try:
        return parse(run_bench_binary(cmd, log_path, settings, append=append))
    except IncompleteBenchOutput as first:
        with open(log_path, "a") as log:
            log.write(f"\n# llmbench: the output above stopped short ({first}); running once more\n")
    try:
        return parse(run_bench_binary(cmd, log_path, settings, append=True))
    except IncompleteBenchOutput as again:
        raise IncompleteBenchOutput(f"{settings.tool}'s output stopped short twice ({again}); see both runs in the "
                                    f"engine log {log_path}") from None


def headline_rates(tests: list[dict]) -> list[float]:
    """Each round's rate of a run's tests: the tg test's samples (tokens/s), or the pp test's where there is no
    tg test (n_gen 0)."""
    tg = [t for t in tests if int(t.get("n_gen", 0)) > 0 and int(t.get("n_prompt", 0)) == 0]
    return [float(x) for x in (tg or tests)[0]["samples_ts"]]


def run_llama_bench(settings: LlamaBenchSettings, plan: RunPlan, log_path: Path) -> pl.DataFrame:
    """The probe run, then the measured runs in rounds (one sample of each test per round: ``-r`` rounds per run,
    as many as bench.precision's rule needs; llmbench.core.precision), every sample a row with the job's precision."""
    log_path = Path(log_path)
    probe_log = log_path.with_suffix(".probe.log")
    run_bench_binary(probe_command(settings), probe_log, settings, limit=settings.limit(runs=1))
    offload = parse_offload(probe_log.read_text(errors="replace"))
    rounds = dataclasses.replace(plan.rounds(), metric="tg rate" if settings.n_gen else "pp rate")
    parts: list[pl.DataFrame] = []

    def measure(first: int, k: int) -> list[float | None]:
        run = dataclasses.replace(settings, repetitions=k)
        tests = run_and_parse(bench_command(run), log_path, lambda out: parse_jsonl(out, run), run,
                              append=first > 0)
        parts.append(samples_to_rows(tests, plan, offload, first))
        return headline_rates(tests)

    rounds.run_batches(measure)
    return pl.concat(parts).with_columns(pl.lit(v, RUN_SCHEMA[c]).alias(c) for c, v in rounds.columns().items())


def run_job(job, engine_log: Path) -> pl.DataFrame:
    """A bench job's rows from llama-bench (llmbench.study.job.Job: the build, model, offload and the tool's own
    n_prompt and n_gen), as run_generations gives an engine's."""
    s = job.settings
    settings = LlamaBenchSettings(
        binary=s.build_dir / "bin" / "llama-bench", model=s.model, n_prompt=job.tool_settings["n_prompt"],
        n_gen=job.tool_settings["n_gen"], repetitions=job.plan.repetitions, threads=s.threads,
        n_gpu_layers=s.n_gpu_layers, split_mode=s.split, tensor_split=s.tensor_split, depth=job.depth,
        timeout_s=tool_timeout_s(job),
    )
    return run_llama_bench(settings, job.plan, engine_log)


def tool_timeout_s(job) -> float | None:
    """bench.tool_timeout_s as the job's rule passes it (among its engine params only where the config sets it:
    a limit that is left derived changes no job's params); None derives each run's limit."""
    return (job.params.get("engine") or {}).get("tool_timeout_s")
