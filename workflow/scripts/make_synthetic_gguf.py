"""Write a synthetic-shape model: a real architecture's dimensions, random weights, one quant; record what it is."""

import json
import time
from pathlib import Path

from llmbench.core.logs import script_logging
from llmbench.modelfiles.synthetic import make_synthetic_model


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        src, quant = snakemake.params.source, snakemake.params.quant
        t0 = time.perf_counter()
        record = make_synthetic_model(snakemake.output.gguf, src["shape"], quant, src["seed"], snakemake.wildcards.model)
        seconds = time.perf_counter() - t0  # logged, not recorded: the record is a function of shape, quant and seed
        Path(snakemake.output.record).write_text(json.dumps(record, indent=2) + "\n")
        log.info("wrote synthetic %s %s (seed %d): %s bytes in %.1f s, sha256 %s", src["shape"], quant, src["seed"],
                 f"{record['bytes']:,}", seconds, record["sha256"])


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
