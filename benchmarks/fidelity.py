"""Benchmark of the harness: metering overhead and llama-server vs llama-bench, on the default model.

    .venv/bin/python benchmarks/fidelity.py            # after `snakemake --cores all` built llama.cpp and the model
    python benchmarks/fidelity.py --build resources/llama.cpp/0.3.36-cuda --model M.gguf --gpus 0 --n-gpu-layers 99
                                                       # on a GPU: the meter reads GPU 0's counter and samples power

Writes benchmarks/results/fidelity-<date>-<host>.md (and prints it). Timings live here, never in tests.
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
from llmbench.engines.llama_bench import LlamaBenchSettings, bench_command, run_llama_bench  # noqa: E402
from llmbench.engines.llama_server import LlamaServer, LlamaServerSettings  # noqa: E402
from llmbench.engines.runs import Prompt, RunPlan  # noqa: E402
from llmbench.study.fidelity import (  # noqa: E402
    Comparison,
    bare_decode_rate,
    interleaved,
    metered_decode_rate,
    verdicts,
    write_report,
)

PROMPT = "Write three paragraphs about the history of the bicycle."


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, default=REPO / "resources/llama.cpp/0.3.36-cpu")
    ap.add_argument("--model", type=Path, default=REPO / "resources/models/smollm2-135m/Q4_0.gguf")
    ap.add_argument("--n", type=int, default=20, help="generations per condition")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per generation and llama-bench -n")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    ap.add_argument("--gpus", type=lambda s: [int(i) for i in s.split(",")], default=[],
                    help="GPU indices the meter reads (NVML counter and power sampler), e.g. 0")
    ap.add_argument("--n-gpu-layers", type=int, default=0, help="layers offloaded (-ngl) by both tools")
    a = ap.parse_args()

    meter = open_energy_meter(a.gpus)
    with tempfile.TemporaryDirectory() as tmp:
        server = LlamaServer(
            LlamaServerSettings(binary=a.build / "bin/llama-server", model=a.model, threads=a.threads,
                                n_gpu_layers=a.n_gpu_layers),
            Path(tmp) / "server.log",
        )
        with server:
            for i in range(2):  # warm-up
                bare_decode_rate(server, PROMPT, a.tokens, i)
            metered, bare = interleaved(
                a.n,
                lambda i: metered_decode_rate(server, meter, PROMPT, a.tokens, i),
                lambda i: bare_decode_rate(server, PROMPT, a.tokens, i),
            )
        settings = LlamaBenchSettings(binary=a.build / "bin/llama-bench", model=a.model, n_prompt=0, n_gen=a.tokens,
                                      repetitions=a.n, threads=a.threads, n_gpu_layers=a.n_gpu_layers)
        plan = RunPlan("llama-bench", a.model.parent.name, a.model.stem, "none", (Prompt("tg", "", a.tokens),),
                       a.n, 0, 0, 0.0, 0, 0, 0, a.threads)
        tg = run_llama_bench(settings, plan, Path(tmp) / "bench.log")["decode_tokens_per_s"].drop_nulls().to_list()

    metering = Comparison("metering overhead", "metered", "bare", metered, bare)
    fidelity = Comparison("llama-server vs llama-bench", "llama-server", "llama-bench tg", metered + bare, tg)
    now = dt.datetime.now(dt.UTC)
    lines = [
        f"# Harness benchmark, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- model: {a.model} ({a.model.stat().st_size:,} bytes); {a.threads} threads; {a.tokens} tokens per generation;"
        f" {a.n_gpu_layers} layers offloaded",
        f"- energy sensors the meter read: {meter.source or 'none (' + '; '.join(meter.unavailable) + ')'}",
        f"- llama-bench: `{' '.join(bench_command(settings))}`",
        "",
        "| check | median A (tok/s) | median B (tok/s) | n | ratio A/B |",
        "|---|---|---|---|---|",
    ]
    for c in (metering, fidelity):
        lines.append(f"| {c.name}: {c.a_label} / {c.b_label} | {statistics.median(c.a):.1f} | "
                     f"{statistics.median(c.b):.1f} | {len(c.a)} / {len(c.b)} | {c.ratio:.4f} |")
    lines += ["", *[f"- {v}" for v in verdicts(metering, fidelity)], ""]
    meter.close()
    write_report(a.out, "fidelity", "\n".join(lines))


if __name__ == "__main__":
    main()
