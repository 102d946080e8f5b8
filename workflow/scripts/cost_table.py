"""Energy and $ per 1M generated tokens per group, beside the configured cloud prices; CSV and Markdown."""

import polars as pl

from llmbench.costs import cost_table, render_markdown
from llmbench.logs import script_logging


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p = snakemake.params
        table = cost_table(pl.read_parquet(snakemake.input.runs), p.usd_per_kwh, p.cloud)
        table.write_csv(snakemake.output.csv)
        with open(snakemake.output.md, "w") as fh:
            fh.write(render_markdown(table, p.usd_per_kwh, p.electricity_note, p.cloud))
        log.info("cost table: %d groups", table.height)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
