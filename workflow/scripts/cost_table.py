"""Energy and $ per 1M generated tokens per group, beside the configured cloud prices; CSV and Markdown (catalog
entry cost_per_1m_tokens)."""

import polars as pl

from llmbench.core.logs import script_logging
from llmbench.outputs.costs import write_cost_tables


def make(inputs: dict, params: dict, outputs: dict) -> str:
    costs = {"electricity_usd_per_kwh": params["usd_per_kwh"], "electricity_note": params["electricity_note"],
             "cloud": params["cloud"], "hardware": params["hardware"]}
    table = write_cost_tables(pl.read_parquet(inputs["runs"]), costs, outputs["csv"], outputs["md"])
    return (f"cost table: {table.height} groups, hardware amortization "
            + ("included (estimate)" if params["hardware"] else "not configured"))


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        log.info(make(dict(snakemake.input.items()), dict(snakemake.params.items()), dict(snakemake.output.items())))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
