"""One bench job measured: its engine (or runner) started, every prompt × repetition generated, one row each.

A tool that is not installed here ends the job with a 'skipped' row that says why; an engine that fails (out of
memory, killed by a signal, a model it cannot load, …) or a model file the GGUF check proves damaged ends it with
'failed' rows naming what it was and the fix (llmbench.engines.diagnosis), beside the generations that finished: the job
exits normally, so the study goes on to its tables, and the run's summary lists the failure.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import tempfile
from pathlib import Path

import polars as pl

from llmbench.core.files import WriteFailed, write_atomically
from llmbench.devices.gpu_slots import hold_gpus
from llmbench.devices.meters import open_energy_meter
from llmbench.engines.base import EngineError, ToolUnavailable, diagnosis_of
from llmbench.engines.registry import tool
from llmbench.engines.runs import failed_run, run_generations, skipped_run
from llmbench.modelfiles.models import CorruptModelError, check_gguf
from llmbench.modelfiles.tensor_mix import TensorMix, file_mix
from llmbench.study import attempts, provenance
from llmbench.study.job import Job


def bench(job: Job, run_file: Path, provenance_file: Path, repo: Path, log: logging.Logger) -> pl.DataFrame:
    """Measure the job on the GPUs it holds, write its rows to ``run_file`` and how they were measured to
    ``provenance_file``; returns the rows."""
    job.engine_log.unlink(missing_ok=True)
    started = dt.datetime.now(dt.UTC).isoformat()
    with hold_gpus(job.gpus, exclusive=job.params["plan"]["exclusive"], job=str(run_file)) as held:
        if held:
            log.info("holding GPUs %s (NVML indices, chosen from %s; CUDA_VISIBLE_DEVICES set for the engine)",
                     [f"{g['nvml_index']}: {g['uuid']}" for g in held.record["held"]], held.record["chosen_by"])
        # Without a GPU here the indices stay nominal, so that the meter says why nothing was read.
        gpu_ids = list(held) or list(range(job.gpus))
        mix = job_mix(job)  # read once from the file itself: a record written before mixes were recorded lacks it
        rows = with_tensor_mix(measure(job, gpu_ids, log), mix)
        # A retry of a failed measurement keeps the earlier attempt's generations until it finishes more.
        rows = attempts.settle(run_file, rows, provenance.config_sha256({"tool": job.tool, **job.params}))
        write_rows(rows, run_file, log)
        provenance.write(provenance_file, job_provenance(job, gpu_ids, started, repo, mix, held.record,
                                                         loaded_model(rows)))
    return rows


def measure(job: Job, gpu_ids: list[int], log: logging.Logger) -> pl.DataFrame:
    """The job's rows: a runner's (llama-bench's raw samples), one row per generation, or one 'skipped' or
    'failed' row saying why."""
    t = tool(job.tool)
    if (why := t.cannot_run(job.concurrency, job.depth)) is not None:
        log.warning("skipped: %s", why)
        return skipped_run(job.plan, why)
    try:
        if job.model_file is not None:
            log.info("model %s: %s", job.model_file, check_gguf(job.model_file))
            # Before any measurement: the rows must be of the file its record names (ModelHashMismatch otherwise).
            log.info("model sha256: %s", provenance.check_model_hashes(job.model_file, job.model_record))
        if not t.generates:
            return t.run(job, job.engine_log)
        with open_energy_meter(gpu_ids) as meter:
            log.info("energy: %s", meter.source or "not measured: " + "; ".join(meter.unavailable))
            with t.make_engine(job.settings, job.engine_log) as engine:
                facts = engine.facts()
                log.info("%s ready: %s", job.tool, facts)
                plan = job.plan
                if job.depth > 0:  # every prompt after `depth` tokens of the context text, by the engine's count
                    plan = dataclasses.replace(plan, context=engine.context_text(
                        job.context_file.read_text(errors="replace"), job.depth))
                return run_generations(engine, plan, meter, facts)
    except ToolUnavailable as e:
        log.warning("skipped: %s", e)
        return skipped_run(job.plan, str(e))
    except (EngineError, CorruptModelError) as e:
        found = diagnosis_of(e, job.tool, job.engine_log, job.model_file)
        log.error("failed (%s): %s (engine log: %s)", found.kind, found.reason, job.engine_log)
        return failed_run(job.plan, found.reason, found.kind, found.signal)


def job_mix(job: Job) -> TensorMix | None:
    """What the job's model file holds under its quant label; None without a file, or for one the GGUF check
    refuses (its rows say why)."""
    if job.model_file is None or job.quant is None:
        return None
    return file_mix(job.model_file, job.quant, job.model_record)


def with_tensor_mix(rows: pl.DataFrame, mix: TensorMix | None) -> pl.DataFrame:
    """``rows`` with the file's tensor mix and, where it is not what its label says, the note (on every row).

    A note the rows already carry (runs.loaded_quant_note: the engine loaded another type than the label, as an
    Ollama library tag that moved) is kept, after the file's own."""
    file_note = pl.lit(mix.note() if mix else None, pl.String)
    engine_note = pl.col("quant_label_note") if "quant_label_note" in rows.columns else pl.lit(None, pl.String)
    note = (pl.when(file_note.is_null()).then(engine_note)
            .when(engine_note.is_null()).then(file_note)
            .otherwise(pl.concat_str([file_note, engine_note], separator="; ")))
    return rows.with_columns(pl.lit(mix.summary() if mix else None, pl.String).alias("tensor_mix"),
                             note.alias("quant_label_note"))


# What an engine says it loaded (engine facts: Ollama's /api/show, the vLLM GGUF plugin), kept in provenance.
LOADED_FACTS = ("loaded_quant", "loaded_quant_from", "loaded_quant_unknown", "quantization_level", "file_type",
                "model_digest", "manifest_digest", "vllm_gguf_plugin")


def loaded_model(rows: pl.DataFrame) -> dict:
    """The facts of ``LOADED_FACTS`` the job's engine reported (its rows' engine_facts), {} where none."""
    facts = rows["engine_facts"].drop_nulls().first() if "engine_facts" in rows.columns else None
    found = json.loads(facts) if facts else {}
    return {k: found[k] for k in LOADED_FACTS if found.get(k) is not None}


def job_provenance(job: Job, gpu_ids: list[int], started: str, repo: Path, mix: TensorMix | None = None,
                   gpu_choice: dict | None = None, loaded: dict | None = None) -> dict:
    """How the job measured: its own settings (its params: what a config change reruns it for), the build, the
    model files (with ``mix``, what the file holds: job_mix), the tool's packages and the machine, and which
    physical GPUs it held and why (``gpu_choice``: gpu_slots.HeldGpus.record), and what the engine says it
    loaded (``loaded``: loaded_model). The whole study config is archived once, beside the results."""
    settings = {"tool": job.tool, "model": job.model, "quant": job.quant, "split": job.split, "gpus": job.gpus,
                "threads": job.threads, **{k: v for k, v in job.params.items() if k != "tool"}}
    models = [{**job.model_record, **({"tensor_mix": mix.record()} if mix else {})}] if job.model_record else []
    if job.model_file is not None and models:  # the hash of the file as the job found it, beside its record's
        models[0]["sha256_seen"] = provenance.model_hashes(job.model_file, job.model_record)
    if loaded and models:
        models[0]["engine_loaded"] = loaded
    elif loaded:  # a model the engine resolved itself (an Ollama tag): what it loaded is the only record there is
        models = [{"source": {"kind": "ollama", "tag": job.settings.tag if job.settings else None},
                   "engine_loaded": loaded}]
    return provenance.collect(
        config=settings, build_record=job.build_record, model_records=models, gpu_indices=gpu_ids,
        started_at=started, ended_at=dt.datetime.now(dt.UTC).isoformat(), repo=repo, gpu_choice=gpu_choice,
    )


def write_rows(rows: pl.DataFrame, run_file: Path, log: logging.Logger) -> None:
    """``rows`` into ``run_file``, whole or not at all (files.write_atomically).

    Where it cannot be written (a full disk above all), the job fails: Snakemake reruns it, since a run file must be
    whole and beside its provenance. Its measured rows are not dropped unsaid: they are kept, for reference only,
    under the temporary folder (TMPDIR, /tmp), usually another filesystem, and the error names the disk, the fix,
    how many generations were measured and where they are, or that they are lost where that fails too."""
    try:
        write_atomically(run_file, rows.write_parquet)
    except WriteFailed as e:
        measured = rows.filter(pl.col("status") == "ok").height if "status" in rows.columns else rows.height
        kept = Path(tempfile.gettempdir()) / "llmbench-unsaved" / "__".join(run_file.parts[-5:])
        try:
            write_atomically(kept, rows.write_parquet)
            where = (f"they were kept at {kept}, for reference only: the study does not read it, and the rerun "
                     "measures again")
        except WriteFailed as again:
            where = f"they are lost: keeping them at {kept} failed too ({again.strerror})"
        log.error("%s; %d measured generation(s) of this job were not written: %s", e, measured, where)
        raise WriteFailed(e.errno, f"{e} The job's {measured} measured generation(s) were not written to "
                                   f"{run_file}: {where}.") from e
