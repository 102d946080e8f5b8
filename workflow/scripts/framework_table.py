"""One row per tool: how it installs here, GPU offload, multi-GPU modes, GGUF support, Python API (facts with their
sources), then its measured load time, peak memory and decode speed, and why it did not run where it did not."""

from pathlib import Path

import polars as pl

from llmbench.frameworks import framework_table, load_facts, render_markdown
from llmbench.logs import script_logging


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        runs = pl.read_parquet(snakemake.input.runs)
        facts = load_facts(snakemake.input.facts, runs["tool"].unique().sort().to_list())
        table = framework_table(runs, facts)
        table.write_csv(snakemake.output.csv)
        Path(snakemake.output.md).write_text(render_markdown(table))
        log.info("framework table: %d tools, compared on %s", table.height,
                 ", ".join(table["compare_on"].drop_nulls().unique().to_list()) or "nothing (no tool ran)")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
