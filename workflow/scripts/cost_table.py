"""Energy and $ per 1M generated tokens per group, beside the configured cloud prices; CSV and Markdown."""

import polars as pl

from llmbench.logs import script_logging
from llmbench.render import write_costs


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p = snakemake.params
        costs = {"electricity_usd_per_kwh": p.usd_per_kwh, "electricity_note": p.electricity_note, "cloud": p.cloud}
        table = write_costs(pl.read_parquet(snakemake.input.runs), costs, snakemake.output.csv, snakemake.output.md)
        log.info("cost table: %d groups", table.height)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
