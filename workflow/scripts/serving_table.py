"""The served model per load level (llmbench.outputs.serving): throughput, latency percentiles and energy per output
token of every job of a generating tool; CSV and Markdown (catalog entry serving)."""

import polars as pl

from llmbench.core.logs import script_logging
from llmbench.outputs.serving import write_serving_table


def make(inputs: dict, params: dict, outputs: dict) -> str:
    table = write_serving_table(pl.read_parquet(inputs["runs"]), params["usd_per_kwh"], outputs["csv"],
                                outputs["md"])
    return f"serving table: {table.height} levels"


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        log.info(make(dict(snakemake.input.items()), dict(snakemake.params.items()), dict(snakemake.output.items())))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
