"""One bench job: start the tool's engine, generate every prompt × repetition, write one row per generation.

A tool that is not installed here ends its job with a 'skipped' row that says why; an engine that fails (out of
memory, killed by a signal, a model it cannot load, …) or a model file the GGUF check proves damaged ends it with
'failed' rows naming what it was and the fix (llmbench.diagnosis), beside the generations that finished: the job
exits normally, so the study goes on to its tables, and the run's summary lists the failure.
"""

import datetime as dt
import json
import signal
import sys
from pathlib import Path

import polars as pl

from llmbench import provenance
from llmbench.backend import BackendError, ToolUnavailable, diagnosis_of
from llmbench.engines import EngineSettings, make_engine
from llmbench.gpu_slots import hold_gpus
from llmbench.llama_bench import LlamaBenchSettings, run_llama_bench
from llmbench.logs import script_logging
from llmbench.meters import open_energy_meter
from llmbench.models import CorruptModelError, check_gguf
from llmbench.runs import Prompt, RunPlan, failed_run, run_generations, skipped_run


def engine_settings(snakemake, plan: RunPlan) -> EngineSettings:
    """The job's engine, from its rule's input and params."""
    p, inp = snakemake.params.plan, snakemake.input
    return EngineSettings(
        tool=plan.tool, model=Path(inp.model) if "model" in inp.keys() else None, n_gpu_layers=plan.n_gpu_layers,
        split=plan.split, gpus=plan.gpus, threads=plan.threads, seed=plan.seed, ctx_size=p["ctx_size"],
        start_timeout_s=p["start_timeout_s"], request_timeout_s=p["request_timeout_s"],
        server=Path(inp.server) if "server" in inp.keys() else None,
        lib_dir=Path(snakemake.params.lib_dir) if "lib_dir" in snakemake.params.keys() else None,
        tag=snakemake.params.get("tag"), tensor_split=tensor_split(p),
    )


def tensor_split(plan_params) -> tuple[float, ...] | None:
    split = plan_params.get("tensor_split")
    return tuple(float(x) for x in split) if split else None


def model_record(inp) -> dict | None:
    """The record written beside the model file (source, sha256, derivation; synthetic shape and seed)."""
    if "model" not in inp.keys():
        return None
    record = Path(inp.model).with_suffix(".json")
    return json.loads(record.read_text()) if record.exists() else None


def model_is_synthetic(record: dict | None) -> bool:
    """Random weights are labelled in every row."""
    return record is not None and record.get("kind") == "synthetic"


def main(snakemake):
    # Snakemake stops jobs with SIGTERM: turn it into an exception so the engine is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with script_logging(snakemake.log[0]) as log:
        w, p = snakemake.wildcards, snakemake.params.plan
        record = model_record(snakemake.input)
        plan = RunPlan(
            tool=snakemake.params.tool, model=w.model, quant=w.quant, split=w.split,
            prompts=tuple(Prompt(x["id"], x["text"], x["max_tokens"]) for x in p["prompts"]),
            repetitions=p["repetitions"], warmup=p["warmup"], idle_s=p["idle_s"], temperature=p["temperature"],
            seed=p["seed"], n_gpu_layers=p["n_gpu_layers"], gpus=snakemake.params.gpus, threads=snakemake.threads,
            estimate_w=p["energy_estimate_w"], model_is_synthetic=model_is_synthetic(record),
        )
        engine_log = Path(snakemake.log[0]).with_suffix(".engine.log")
        engine_log.unlink(missing_ok=True)
        started = dt.datetime.now(dt.UTC).isoformat()
        with hold_gpus(plan.gpus, exclusive=p["exclusive"], job=str(snakemake.output.run)) as gpu_ids:
            if gpu_ids:
                log.info("holding GPUs %s (NVML indices; CUDA_VISIBLE_DEVICES set for the engine)", gpu_ids)
            # Without a GPU here the indices stay nominal, so that the meter says why nothing was read.
            gpu_ids = gpu_ids or list(range(plan.gpus))
            rows = measure(snakemake, plan, gpu_ids, engine_log, log)
            rows.write_parquet(snakemake.output.run)
            provenance.write(snakemake.output.provenance, job_provenance(snakemake, plan, record, gpu_ids, started))
        log.info("wrote %d rows to %s, and how they were measured to %s", rows.height, snakemake.output.run,
                 snakemake.output.provenance)


def job_provenance(snakemake, plan: RunPlan, record: dict | None, gpu_ids: list[int], started: str) -> dict:
    """How the job measured: its own settings (its params: what a config change reruns it for), the build, the
    model files and the machine. The whole study config is archived once, beside the results."""
    inp = snakemake.input
    build = json.loads(Path(inp.build).read_text()) if "build" in inp.keys() else None
    models = [record] if record is not None else []
    settings = {"tool": plan.tool, "model": plan.model, "quant": plan.quant, "split": plan.split,
                "gpus": plan.gpus, "threads": plan.threads, "plan": dict(snakemake.params.plan)}
    return provenance.collect(
        config=settings, build_record=build, model_records=models, gpu_indices=gpu_ids,
        started_at=started, ended_at=dt.datetime.now(dt.UTC).isoformat(), repo=Path(snakemake.scriptdir).parents[1],
    )


def measure(snakemake, plan: RunPlan, gpu_ids: list[int], engine_log: Path, log) -> pl.DataFrame:
    """The job's rows: llama-bench's raw samples, one row per generation, or one 'skipped' or 'failed' row saying
    why."""
    model = Path(snakemake.input.model) if "model" in snakemake.input.keys() else None
    try:
        if model is not None:
            log.info("model %s: %s", model, check_gguf(model))
        if plan.tool == "llama-bench":
            settings = LlamaBenchSettings(
                binary=Path(snakemake.input.bench), model=model, n_prompt=snakemake.params.n_prompt,
                n_gen=snakemake.params.n_gen, repetitions=plan.repetitions, threads=plan.threads,
                n_gpu_layers=plan.n_gpu_layers, split_mode=plan.split, tensor_split=tensor_split(snakemake.params.plan),
            )
            return run_llama_bench(settings, plan, engine_log)
        with open_energy_meter(gpu_ids) as meter:
            log.info("energy: %s", meter.source or "not measured: " + "; ".join(meter.unavailable))
            with make_engine(engine_settings(snakemake, plan), engine_log) as backend:
                facts = backend.facts()
                log.info("%s ready: %s", plan.tool, facts)
                return run_generations(backend, plan, meter, facts)
    except ToolUnavailable as e:
        log.warning("skipped: %s", e)
        return skipped_run(plan, str(e))
    except (BackendError, CorruptModelError) as e:
        found = diagnosis_of(e, plan.tool, engine_log, model)
        log.error("failed (%s): %s (engine log: %s)", found.kind, found.reason, engine_log)
        return failed_run(plan, found.reason, found.kind, found.signal)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
