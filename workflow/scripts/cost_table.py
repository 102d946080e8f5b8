"""Energy and $ per 1M generated tokens per group, beside the configured cloud prices; CSV and Markdown."""

import polars as pl

from llmbench.costs import cost_table, to_markdown
from llmbench.logs import script_logging


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p = snakemake.params
        table = cost_table(pl.read_parquet(snakemake.input.runs), p.usd_per_kwh, p.cloud)
        table.write_csv(snakemake.output.csv)
        clouds = "; ".join(f"{c['name']}: {c['source']}, {c['as_of']}" for c in p.cloud) or "none configured"
        note = (
            f"Electricity at ${p.usd_per_kwh}/kWh ({p.electricity_note or 'no source given'}). "
            f"Energy only: hardware, operations and maintenance are excluded, so local cost is a lower bound. "
            f"Cloud prices: {clouds}."
        )
        with open(snakemake.output.md, "w") as fh:
            fh.write(to_markdown(table, note))
        log.info("cost table: %d groups", table.height)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
