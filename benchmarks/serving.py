"""Benchmark of the served model against llama.cpp's engine-side reference, on the default model.

    .venv/bin/python benchmarks/serving.py --levels 1,2,4 --n 6   # after `snakemake --cores all` built llama.cpp

For each load level N: llama-server started for N parallel requests (the workflow's own engine, with --ignore-eos
so that every request generates exactly --tokens tokens and its N slots decode in lockstep), N clients sending the
same prompt at once, --n requests each, through the workflow's own path (llmbench.engines.runs.run_generations); then
llama-batched-bench at batch N, with each sequence's prompt as long as the server counted the prompt, and the same
tokens. Checks (llmbench.study.fidelity.serving_check): the server's aggregate decode (N × the median request's decode
tokens/s, its own timings) against llama-batched-bench's median S_TG, within ±5 %; and llama-server's /metrics
token counters over each level against the client's rows, exactly.

Writes benchmarks/results/serving-<date>-<host>.md (and prints it). Timings live here, never in tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow/scripts"))

from llmbench.devices.meters import open_energy_meter  # noqa: E402
from llmbench.engines.batched_bench import BatchedBenchSettings, batched_bench_command, run_batched_bench  # noqa: E402
from llmbench.engines.llama_server import LlamaServer, LlamaServerSettings  # noqa: E402
from llmbench.engines.runs import Prompt, RunPlan, run_generations  # noqa: E402
from llmbench.study.fidelity import MAX_SERVING_GAP, serving_check, write_report  # noqa: E402
from llmbench.study.provenance import cpu_model  # noqa: E402

PROMPT = "Write three paragraphs about the history of the bicycle."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, default=REPO / "resources/llama.cpp/0.3.36-cpu")
    ap.add_argument("--model", type=Path, default=REPO / "resources/models/smollm2-135m/Q4_0.gguf")
    ap.add_argument("--levels", default="1,2,4", help="concurrent requests (and batch sizes), comma-separated")
    ap.add_argument("--n", type=int, default=6, help="requests per client, and batches per level")
    ap.add_argument("--tokens", type=int, default=64, help="tokens every request and sequence generates")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="sampling temperature of the requests (0: greedy; llama-batched-bench samples nothing)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]

    meter = open_energy_meter([])
    checks, commands = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in levels:
            settings = LlamaServerSettings(binary=a.build / "bin/llama-server", model=a.model, threads=a.threads,
                                           ctx_size=512, parallel=n, extra_args=("--ignore-eos",))
            plan = RunPlan("llama-server", a.model.parent.name, a.model.stem, "none",
                           (Prompt("bicycle", PROMPT, a.tokens),), a.n, 1, 0.0, a.temperature, 1234, 0, 0, a.threads,
                           concurrency=n)
            with LlamaServer(settings, Path(tmp) / f"server-{n}.log") as server:
                rows = run_generations(server, plan, meter, server.facts())
            prompt_tokens = int(rows["prompt_tokens"].drop_nulls().median())
            batch = BatchedBenchSettings(binary=a.build / "bin/llama-batched-bench", model=a.model, batch=n,
                                         n_prompt=prompt_tokens, n_gen=a.tokens, repetitions=a.n, warmup=1,
                                         threads=a.threads)
            batch_plan = RunPlan("llama-batched-bench", plan.model, plan.quant, "none", (), a.n, 1, 0.0, 0.0, 0, 0,
                                 0, a.threads, concurrency=n)
            commands.append(" ".join(batched_bench_command(batch)))
            checks.append(serving_check(n, rows, run_batched_bench(batch, batch_plan, Path(tmp) / f"batched-{n}.log")))

    now = dt.datetime.now(dt.UTC)
    lines = [
        f"# Serving benchmark, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- model: {a.model} ({a.model.stat().st_size:,} bytes); {a.threads} threads; {a.tokens} tokens per request "
        f"and sequence (llama-server --ignore-eos); {a.n} requests per client, {a.n} batches per level; requests at "
        f"temperature {a.temperature:g}",
        f"- prompt: {PROMPT!r}",
        *[f"- llama-batched-bench: `{c}`" for c in commands],
        "",
        "| clients = batch | llama-server: N × median request decode (tok/s) | llama-batched-bench S_TG median "
        "(tok/s) | ratio | server output over the window (tok/s) | median request decode (tok/s) | requests / "
        "batches | server counts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        lines.append(f"| {c.concurrency} | {c.server_aggregate:.1f} | {c.reference:.1f} | {c.ratio:.4f} | "
                     f"{c.server_output:.1f} | {statistics.median(c.request_decode):.1f} | "
                     f"{len(c.request_decode)} / {len(c.batch_decode)} | {c.counts_check} |")
    lines += ["", f"Target: ratio within ±{MAX_SERVING_GAP:.0%}; server and client token counts equal.", "",
              *[f"- {c.verdict()}" for c in checks], ""]
    write_report(a.out, f"serving-t{a.temperature:g}", "\n".join(lines))


if __name__ == "__main__":
    main()
