"""Energy and $ per 1M generated tokens per group, beside the configured cloud prices; CSV and Markdown."""

import polars as pl

from llmbench.costs import write_cost_tables
from llmbench.logs import script_logging


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p = snakemake.params
        costs = {"electricity_usd_per_kwh": p.usd_per_kwh, "electricity_note": p.electricity_note, "cloud": p.cloud,
                 "hardware": p.hardware}
        table = write_cost_tables(pl.read_parquet(snakemake.input.runs), costs, snakemake.output.csv,
                                  snakemake.output.md)
        log.info("cost table: %d groups, hardware amortization %s", table.height,
                 "included (estimate)" if p.hardware else "not configured")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
