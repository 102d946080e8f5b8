"""One bench job: start the tool's engine, generate every prompt × repetition, write one row per generation.

A tool that is not installed here ends its job with a 'skipped' row that says why; any other failure fails
the job (and only that job: every other job's results are separate files).
"""

import signal
import sys
from pathlib import Path

import polars as pl

from llmbench.backend import Backend, ToolUnavailable
from llmbench.llama_bench import LlamaBenchSettings, run_llama_bench
from llmbench.logs import script_logging
from llmbench.meters import open_energy_meter
from llmbench.models import check_gguf
from llmbench.runs import Prompt, RunPlan, run_generations, skipped_run


def make_backend(snakemake, plan: RunPlan, engine_log: Path) -> Backend:
    """The engine of the job's tool; imported here so that a job needs only its own tool's packages."""
    p, tool = snakemake.params.plan, plan.tool
    model = Path(snakemake.input.model) if "model" in snakemake.input.keys() else None
    if tool == "llama-server":
        from llmbench.llama_server import LlamaServer, LlamaServerSettings

        settings = LlamaServerSettings(
            binary=Path(snakemake.input.server), model=model, n_gpu_layers=plan.n_gpu_layers, split_mode=plan.split,
            threads=plan.threads, ctx_size=p["ctx_size"], start_timeout_s=p["start_timeout_s"],
            request_timeout_s=p["request_timeout_s"],
        )
        return LlamaServer(settings, engine_log)
    if tool == "llama-cpp-python":
        from llmbench.llama_cpp_python_backend import LlamaCppPython

        return LlamaCppPython(
            model, Path(snakemake.params.lib_dir), n_gpu_layers=plan.n_gpu_layers, split_mode=plan.split,
            threads=plan.threads, ctx_size=p["ctx_size"], seed=plan.seed,
        )
    if tool == "transformers":
        from llmbench.transformers_backend import TransformersBackend

        return TransformersBackend(model, device="cuda" if plan.gpus else "cpu", threads=plan.threads)
    if tool == "vllm":
        from llmbench.vllm_backend import VllmServer, VllmSettings

        settings = VllmSettings(
            model=model, ctx_size=p["ctx_size"], gpus=max(plan.gpus, 1), seed=plan.seed,
            start_timeout_s=p["start_timeout_s"], request_timeout_s=p["request_timeout_s"],
        )
        return VllmServer(settings, engine_log)
    if tool == "ollama":
        from llmbench.ollama_backend import OllamaBackend

        return OllamaBackend(
            snakemake.params.tag, engine_log, num_gpu=plan.n_gpu_layers, num_thread=plan.threads,
            num_ctx=p["ctx_size"], start_timeout_s=p["start_timeout_s"], request_timeout_s=p["request_timeout_s"],
            gguf=model,
        )
    raise ValueError(f"no backend for tool {tool!r}")


def main(snakemake):
    # Snakemake stops jobs with SIGTERM: turn it into an exception so the engine is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with script_logging(snakemake.log[0]) as log:
        w, p = snakemake.wildcards, snakemake.params.plan
        plan = RunPlan(
            tool=snakemake.params.tool, model=w.model, quant=w.quant, split=w.split,
            prompts=tuple(Prompt(x["id"], x["text"], x["max_tokens"]) for x in p["prompts"]),
            repetitions=p["repetitions"], warmup=p["warmup"], idle_s=p["idle_s"], temperature=p["temperature"],
            seed=p["seed"], n_gpu_layers=p["n_gpu_layers"], gpus=snakemake.params.gpus, threads=snakemake.threads,
            estimate_w=p["energy_estimate_w"],
        )
        engine_log = Path(snakemake.log[0]).with_suffix(".engine.log")
        engine_log.unlink(missing_ok=True)
        rows = measure(snakemake, plan, engine_log, log)
        rows.write_parquet(snakemake.output[0])
        log.info("wrote %d rows to %s", rows.height, snakemake.output[0])


def measure(snakemake, plan: RunPlan, engine_log: Path, log) -> pl.DataFrame:
    """The job's rows: llama-bench's raw samples, one row per generation, or one 'skipped' row saying why."""
    if "model" in snakemake.input.keys():
        model = Path(snakemake.input.model)
        log.info("model %s: %s", model, check_gguf(model))
    if plan.tool == "llama-bench":
        settings = LlamaBenchSettings(
            binary=Path(snakemake.input.bench), model=model, n_prompt=snakemake.params.n_prompt,
            n_gen=snakemake.params.n_gen, repetitions=plan.repetitions, threads=plan.threads,
            n_gpu_layers=plan.n_gpu_layers, split_mode=plan.split,
        )
        return run_llama_bench(settings, plan, engine_log)
    try:
        with open_energy_meter(list(range(plan.gpus))) as meter:
            log.info("energy: %s", meter.source or "not measured: " + "; ".join(meter.unavailable))
            with make_backend(snakemake, plan, engine_log) as backend:
                facts = backend.facts()
                log.info("%s ready: %s", plan.tool, facts)
                return run_generations(backend, plan, meter, facts)
    except ToolUnavailable as e:
        log.warning("skipped: %s", e)
        return skipped_run(plan, str(e))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
