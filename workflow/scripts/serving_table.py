"""The served model per load level (llmbench.serving): throughput, latency percentiles and energy per output
token of every job of a generating tool; CSV and Markdown."""

import polars as pl

from llmbench.logs import script_logging
from llmbench.serving import write_serving_table


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        table = write_serving_table(pl.read_parquet(snakemake.input.runs), snakemake.params.usd_per_kwh,
                                    snakemake.output.csv, snakemake.output.md)
        log.info("serving table: %d levels", table.height)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
