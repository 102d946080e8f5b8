"""One row per tool: how it installs here, GPU offload, multi-GPU modes, GGUF support, Python API (facts with their
sources), then its measured load time, peak memory and decode speed, and why it did not run where it did not
(catalog entry frameworks)."""

import polars as pl

from llmbench.core.files import write_atomically, write_text_atomically
from llmbench.core.logs import script_logging
from llmbench.outputs.frameworks import framework_table, registry_facts, render_markdown


def make(inputs: dict, params: dict, outputs: dict) -> str:
    table = framework_table(pl.read_parquet(inputs["runs"]), registry_facts())
    write_atomically(outputs["csv"], table.write_csv)
    write_text_atomically(outputs["md"], render_markdown(table))
    return (f"framework table: {table.height} tools, compared on "
            + (", ".join(table["compare_on"].drop_nulls().unique().to_list()) or "nothing (no tool ran)"))


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        log.info(make(dict(snakemake.input.items()), dict(snakemake.params.items()), dict(snakemake.output.items())))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
