"""One quant against its model's reference: llama-perplexity --kl-divergence, parsed into one tidy row."""

import json
from pathlib import Path

import polars as pl

from llmbench.core.logs import script_logging
from llmbench.devices.gpu_slots import hold_gpus
from llmbench.engines.perplexity import (
    PerplexityError,
    failed_kld_row,
    kld_command,
    kld_limit,
    parse_kld_summary,
    run_and_parse,
)
from llmbench.modelfiles.models import CorruptModelError, check_gguf
from llmbench.study.job import Job
from llmbench.study.provenance import check_model_hashes


def main(snakemake):
    job = Job.from_snakemake(snakemake)
    # The machine's measurement lock: llama-perplexity's cores must not run beside another study's measurement.
    with script_logging(job.log) as log, hold_gpus(0, job=str(snakemake.output[0])):
        p, model = snakemake.params, job.model_file
        reference = json.loads(Path(snakemake.input.reference).read_text())
        try:
            if reference.get("status") == "failed":
                raise PerplexityError(f"the reference run of {job.model} failed: {reference['reason']}")
            log.info("model %s: %s", model, check_gguf(model))
            # A divergence of another file than the one its record names would be noise: ModelHashMismatch.
            log.info("model sha256: %s", check_model_hashes(model, job.model_record))
            cmd = kld_command(Path(snakemake.input.perplexity), model, Path(snakemake.input.base), p.ctx_size,
                              job.threads, p.chunks)
            # bench.tool_timeout_s is passed only where the config sets it; else the limit is derived.
            limit = kld_limit(model, Path(snakemake.input.base), p.ctx_size, p.chunks, p.get("tool_timeout_s"))
            log.info("llama-perplexity's limit: %g s (%s)", limit.seconds, limit.source)
            summary = run_and_parse(cmd, job.log.with_suffix(".perplexity.log"), parse_kld_summary, limit)
        except (PerplexityError, CorruptModelError) as e:  # a failed or hung run: its row says why, the study goes on
            log.error("failed: %s", e)
            row = {**failed_kld_row(job.model, job.quant, str(e), reference), "ctx_size": p.ctx_size}
            pl.DataFrame([row]).write_parquet(snakemake.output[0])
            return
        row = {"model": job.model, "quant": job.quant, "reference_quant": reference["reference_quant"],
               "corpus_sha256": reference["corpus_sha256"], "ctx_size": p.ctx_size, **summary, "status": "ok",
               "kld_null_reason": None}
        pl.DataFrame([row]).write_parquet(snakemake.output[0])
        log.info("%s %s: mean KLD %.6f ± %.6f, PPL ratio %.4f", job.model, job.quant, summary["kld_mean"],
                 summary["kld_mean_unc"], summary["ppl_ratio"])

if "snakemake" in globals():
    main(snakemake)  # noqa: F821
