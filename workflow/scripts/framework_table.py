"""One row per tool: how it installs here, GPU offload, multi-GPU modes, GGUF support, Python API (facts with their
sources), then its measured load time, peak memory and decode speed, and why it did not run where it did not."""

import polars as pl

from llmbench.logs import script_logging
from llmbench.render import write_framework_table


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        runs = pl.read_parquet(snakemake.input.runs)
        table = write_framework_table(runs, snakemake.output.csv, snakemake.output.md)
        log.info("framework table: %d tools, compared on %s", table.height,
                 ", ".join(table["compare_on"].drop_nulls().unique().to_list()) or "nothing (no tool ran)")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
