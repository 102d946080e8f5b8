"""Derive one quant with llama-quantize and record the derivation."""

import json
from pathlib import Path

from llmbench.core.logs import script_logging
from llmbench.toolchain.quantize import derive_quant


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        with open(snakemake.log[0], "a") as qlog:
            record = derive_quant(
                Path(snakemake.input.quantize), Path(snakemake.input.gguf), Path(snakemake.input.record),
                Path(snakemake.output.gguf), snakemake.params.quant, snakemake.threads,
                snakemake.params.allow_requantize, qlog,
                # Passed only where the config sets bench.tool_timeout_s; else the limit is derived from the file.
                timeout_s=snakemake.params.get("tool_timeout_s"),
            )
        Path(snakemake.output.record).write_text(json.dumps(record, indent=2) + "\n")
        log.info("derived %s (%s bytes)", snakemake.output.gguf, f"{record['bytes']:,}")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
