"""Decode tokens/s of every framework side by side on the same model file and quant, one panel per model."""

import polars as pl

from llmbench.logs import script_logging
from llmbench.plots import write_figure


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        runs = pl.read_parquet(snakemake.input.runs)
        for path in write_figure("frameworks_decode_tokens_per_s", runs, snakemake.params.study, snakemake.output.png):
            log.info("wrote %s", path)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
