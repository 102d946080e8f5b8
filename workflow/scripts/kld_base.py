"""The reference run of a model: llama-perplexity stores its log-probabilities over the corpus (the base file)."""

import json
import re
from pathlib import Path

from llmbench.fetch import sha256_file
from llmbench.logs import script_logging
from llmbench.models import CorruptModelError, check_gguf
from llmbench.perplexity import PerplexityError, base_command, run_logged


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p, corpus, model = snakemake.params, Path(snakemake.input.corpus), Path(snakemake.input.model)
        digest = sha256_file(corpus)
        if p.corpus_sha256 and digest != p.corpus_sha256:
            raise PerplexityError(
                f"corpus {corpus} has sha256 {digest} but the config pins {p.corpus_sha256} "
                "(quality.corpus.sha256): restore the file, or pin the new digest if it changed on purpose"
            )
        base = Path(snakemake.output.base)
        record = {"model": snakemake.wildcards.model, "reference_quant": p.reference, "corpus": str(corpus),
                  "corpus_sha256": digest, "ctx_size": p.ctx_size, "chunks": p.chunks}
        try:
            log.info("reference %s: %s", model, check_gguf(model))
            cmd = base_command(Path(snakemake.input.perplexity), model, corpus, base, p.ctx_size, snakemake.threads,
                               p.chunks)
            text = run_logged(cmd, Path(snakemake.log[0]).with_suffix(".perplexity.log"))
            final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
            if final is None or not base.exists() or base.stat().st_size == 0:
                # llama-perplexity returns 0 after some errors (e.g. a corpus shorter than two contexts).
                tail = "\n".join(line for line in text.splitlines() if " E " in line or "error" in line.lower())
                raise PerplexityError(f"the reference run of {model} produced no base file: {tail or text[-800:]}")
        except (PerplexityError, CorruptModelError) as e:
            # A failed measurement: each quant's KLD job writes a failed row quoting this, and the study goes on.
            log.error("failed: %s", e)
            base.write_bytes(b"")
            Path(snakemake.output.summary).write_text(json.dumps({**record, "status": "failed", "reason": str(e)},
                                                                 indent=2) + "\n")
            return
        Path(snakemake.output.summary).write_text(json.dumps({
            **record, "ppl": float(final.group(1)), "ppl_unc": float(final.group(2)),
            "base_bytes": base.stat().st_size, "status": "ok",
        }, indent=2) + "\n")
        log.info("reference PPL %s ± %s", final.group(1), final.group(2))

if "snakemake" in globals():
    main(snakemake)  # noqa: F821
