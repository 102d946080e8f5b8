"""The reference run of a model: llama-perplexity stores its log-probabilities over the corpus (the base file)."""

import json
from pathlib import Path

from llmbench.core.files import sha256_file
from llmbench.core.logs import script_logging
from llmbench.devices.gpu_slots import hold_gpus
from llmbench.engines.perplexity import PerplexityError, base_command, base_limit, parse_base_run, run_and_parse
from llmbench.modelfiles.models import CorruptModelError, check_gguf
from llmbench.study.job import Job


def main(snakemake):
    job = Job.from_snakemake(snakemake)
    # The machine's measurement lock: llama-perplexity's cores must not run beside another study's measurement.
    with script_logging(job.log) as log, hold_gpus(0, job=str(snakemake.output[0])):
        p, corpus, model = snakemake.params, Path(snakemake.input.corpus), job.model_file
        digest = sha256_file(corpus)
        if p.corpus_sha256 and digest != p.corpus_sha256:
            raise PerplexityError(
                f"corpus {corpus} has sha256 {digest} but the config pins {p.corpus_sha256} "
                "(quality.corpus.sha256): restore the file, or pin the new digest if it changed on purpose"
            )
        base = Path(snakemake.output.base)
        record = {"model": job.model, "reference_quant": p.reference, "corpus": str(corpus),
                  "corpus_sha256": digest, "ctx_size": p.ctx_size, "chunks": p.chunks}
        try:
            log.info("reference %s: %s", model, check_gguf(model))
            cmd = base_command(Path(snakemake.input.perplexity), model, corpus, base, p.ctx_size, job.threads,
                               p.chunks)
            # bench.tool_timeout_s is passed only where the config sets it; else the limit is derived.
            limit = base_limit(model, corpus, p.ctx_size, p.chunks, p.get("tool_timeout_s"))
            log.info("llama-perplexity's limit: %g s (%s)", limit.seconds, limit.source)
            # llama-perplexity returns 0 after some errors (e.g. a corpus shorter than two contexts); an output
            # that stops short is run once more.
            ppl, ppl_unc = run_and_parse(cmd, job.log.with_suffix(".perplexity.log"),
                                         lambda text: parse_base_run(text, base, model), limit)
        except (PerplexityError, CorruptModelError) as e:
            # A failed measurement: each quant's KLD job writes a failed row quoting this, and the study goes on.
            log.error("failed: %s", e)
            base.write_bytes(b"")
            Path(snakemake.output.summary).write_text(json.dumps({**record, "status": "failed", "reason": str(e)},
                                                                 indent=2) + "\n")
            return
        Path(snakemake.output.summary).write_text(json.dumps({
            **record, "ppl": ppl, "ppl_unc": ppl_unc,
            "base_bytes": base.stat().st_size, "status": "ok",
        }, indent=2) + "\n")
        log.info("reference PPL %s ± %s", ppl, ppl_unc)

if "snakemake" in globals():
    main(snakemake)  # noqa: F821
