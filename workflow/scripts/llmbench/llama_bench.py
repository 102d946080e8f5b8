"""llama.cpp's llama-bench as a synthetic bench tool: pp (prefill) and tg (decode) tests, raw samples kept.

Its -o jsonl output is parsed by field name (the column set changes between builds); every repetition's own
sample (samples_ns / samples_ts) becomes one row in the run schema, so statistics use the raw samples rather
than llama-bench's mean ± sd.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from llmbench.backend import BackendError
from llmbench.runs import RUN_SCHEMA, RunPlan

LLAMA_BENCH_ENERGY = (
    "not measured: llama-bench times its repetitions inside one process, so no window matches a sample"
)


@dataclass(frozen=True)
class LlamaBenchSettings:
    binary: Path
    model: Path
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    threads: int = 1
    n_gpu_layers: int = 0
    split_mode: str = "none"


def bench_command(s: LlamaBenchSettings) -> list[str]:
    return [
        str(s.binary), "-m", str(s.model),
        "-p", str(s.n_prompt), "-n", str(s.n_gen), "-r", str(s.repetitions),
        "-t", str(s.threads), "-ngl", str(s.n_gpu_layers), "-sm", s.split_mode,
        "-o", "jsonl",
    ]


def parse_jsonl(text: str) -> list[dict]:
    tests = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    if not tests:
        raise BackendError(f"llama-bench printed no results: {text[-500:]!r}")
    return tests


def samples_to_rows(tests: list[dict], plan: RunPlan) -> pl.DataFrame:
    """One row per repetition sample; a pp test fills the prefill columns, a tg test the decode columns."""
    now = dt.datetime.now(dt.UTC)
    rows = []
    for t in tests:
        n_prompt, n_gen = int(t.get("n_prompt", 0)), int(t.get("n_gen", 0))
        name = "+".join(x for x in (f"pp{n_prompt}" if n_prompt else "", f"tg{n_gen}" if n_gen else "") if x)
        for rep, (ns, ts) in enumerate(zip(t["samples_ns"], t["samples_ts"], strict=True)):
            ms = ns / 1e6
            decode = n_gen > 0 and n_prompt == 0
            rows.append({
                **plan.row_base(),
                "n_gpu_layers": t.get("n_gpu_layers", plan.n_gpu_layers),
                "threads": t.get("n_threads", plan.threads),
                "status": "ok",
                "engine_build": t.get("build_commit"),
                "prompt_id": name,
                "repetition": rep,
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


def run_llama_bench(settings: LlamaBenchSettings, plan: RunPlan, log_path: Path) -> pl.DataFrame:
    cmd = bench_command(settings)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode != 0:
        tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-10:])
        raise BackendError(f"llama-bench failed with exit {proc.returncode} on {settings.model}:\n{tail}")
    return samples_to_rows(parse_jsonl(proc.stdout), plan)
