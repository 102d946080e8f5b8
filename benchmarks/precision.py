"""Benchmark of repetitions that stop at a stated precision against fixed repetitions, on the default study's
llama-server jobs.

    .venv/bin/python benchmarks/precision.py    # after `snakemake --cores all` built llama.cpp and the quants

For every llama-server job of the config (each quant at one client, the sweep quants at every load level), the
workflow's own path (llmbench.engines.runs.run_generations on a started llama-server, the config's prompts, warm-up,
temperature and seed) measures twice: with fixed repetitions (bench.repetitions) and with a precision rule
(bench.precision of the config, or --target/--confidence/--min/--max). For each: the machine time of the job's
measurement (engine start to its last row) and the precision it reached (the median of the per-round decode rates
and its order-statistic interval, llmbench.core.precision). Fixed repetitions are judged at the same confidence, so
the two columns say what each way bought.

Writes benchmarks/results/precision-<date>-<host>.md (and prints it). Timings live here, never in tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow/scripts"))

from llmbench.core.precision import PrecisionSpec  # noqa: E402
from llmbench.devices.meters import open_energy_meter  # noqa: E402
from llmbench.engines.llama_server import LlamaServer, LlamaServerSettings  # noqa: E402
from llmbench.engines.runs import Prompt, RunPlan, run_generations  # noqa: E402
from llmbench.study.provenance import cpu_model  # noqa: E402


def jobs(config: dict, model: str) -> list[tuple[str, int]]:
    """(quant, clients) of the config's llama-server jobs on ``model``: every quant at 1 client, the sweep quants
    at each load level above 1."""
    server = config["tools"]["llama-server"]
    quants = server.get("quants") or config["models"][model]["quants"]
    levels = [c for c in server.get("concurrency", [1]) if c > 1]
    return [(q, 1) for q in quants] + [(q, c) for q in server.get("sweep_quants", []) for c in levels]


def measure(build: Path, model_file: Path, plan: RunPlan, threads: int, ctx_size: int) -> tuple[float, dict]:
    """Seconds from the engine's start to the job's last row, and the job's precision columns."""
    settings = LlamaServerSettings(binary=build / "bin/llama-server", model=model_file, threads=threads,
                                   ctx_size=ctx_size, parallel=plan.concurrency)
    started = time.perf_counter()
    with open_energy_meter([]) as meter, LlamaServer(settings, Path(os.devnull)) as engine:
        rows = run_generations(engine, plan, meter, engine.facts())
    return time.perf_counter() - started, rows.row(0, named=True)


def cell(p: dict) -> str:
    return f"{p['precision_rounds']} rounds, {p['precision_note']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "config/config.yaml")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--build", type=Path, default=REPO / "resources/llama.cpp/0.3.36-cpu")
    ap.add_argument("--models", type=Path, default=REPO / "resources/models")
    ap.add_argument("--target", type=float, help="bench.precision.target (default: the config's)")
    ap.add_argument("--confidence", type=float)
    ap.add_argument("--min", type=int, dest="min_repetitions")
    ap.add_argument("--max", type=int, dest="max_repetitions")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    a = ap.parse_args()
    config = yaml.safe_load(a.config.read_text())
    bench = config["bench"]
    given = {k: getattr(a, k) for k in ("target", "confidence", "min_repetitions", "max_repetitions")
             if getattr(a, k) is not None}
    spec = PrecisionSpec(**{**(bench.get("precision") or {}), **given})
    prompts = tuple(Prompt(p["id"], p["text"], p["max_tokens"]) for p in bench["prompts"])
    base = RunPlan("llama-server", a.model, "", "none", prompts, bench["repetitions"], bench["warmup"], 0.0,
                   bench["temperature"], bench["seed"], 0, 0, a.threads)

    lines = [f"# Precision rule against fixed repetitions: default study's llama-server jobs ({dt.date.today()})", "",
             f"Machine: {platform.node()}, {cpu_model()}, {a.threads} threads. Command: "
             f"`.venv/bin/python benchmarks/precision.py {' '.join(sys.argv[1:])}`.", "",
             f"Fixed: bench.repetitions = {bench['repetitions']} rounds. Precision: target ±{spec.target:.0%} at "
             f"{spec.confidence:.0%}, {spec.min_repetitions}–{spec.max_repetitions} rounds. A round: the "
             f"{len(prompts)} prompts once (each of the clients at a load level above 1). Time: the engine's start "
             "to the job's last row.", "",
             "| quant | clients | fixed: time [s] | fixed: precision | rule: time [s] | rule: precision |",
             "| --- | ---: | ---: | --- | ---: | --- |"]
    totals = [0.0, 0.0]
    met = 0
    todo = jobs(config, a.model)
    for quant, clients in todo:
        model_file = a.models / a.model / f"{quant}.gguf"
        plan = dataclasses.replace(base, quant=quant, concurrency=clients)
        fixed_s, fixed = measure(a.build, model_file, plan, a.threads, bench["ctx_size"])
        rule_s, rule = measure(a.build, model_file, dataclasses.replace(plan, precision=spec), a.threads,
                               bench["ctx_size"])
        totals[0] += fixed_s
        totals[1] += rule_s
        met += bool(rule["precision_met"])
        lines.append(f"| {quant} | {clients} | {fixed_s:.1f} | {cell(fixed)} | {rule_s:.1f} | {cell(rule)} |")
        print(lines[-1], flush=True)
    lines += ["", f"In all: fixed {totals[0]:.0f} s, rule {totals[1]:.0f} s; the rule met its target on {met} of "
              f"{len(todo)} jobs.", ""]
    text = "\n".join(lines)
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"precision-{dt.date.today()}-{platform.node()}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
