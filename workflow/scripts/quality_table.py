"""Quality beside speed and cost, one row per model × quant: file size, bits per weight, decode tokens/s, J/token,
KL divergence and perplexity against the reference, and answer accuracy per tool."""

from pathlib import Path

import polars as pl

from llmbench.logs import script_logging
from llmbench.quality import file_facts, quality_table
from llmbench.render import write_quality_markdown


def read_all(paths) -> pl.DataFrame:
    frames = [pl.read_parquet(p) for p in paths]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p = snakemake.params
        runs = pl.read_parquet(snakemake.input.runs)
        # The speed column is llama-server's where it ran (the article's tool), else the first tool that did.
        tools = runs.filter(pl.col("status") == "ok")["tool"].unique(maintain_order=True).to_list()
        speed_tool = "llama-server" if "llama-server" in tools else (tools[0] if tools else "llama-server")
        splits = runs.filter(pl.col("tool") == speed_tool)["split"].unique(maintain_order=True).to_list()
        if splits:
            runs = runs.filter((pl.col("tool") != speed_tool) | (pl.col("split") == splits[0]))
        kld = read_all(snakemake.input.kld)
        if kld.is_empty():
            kld = pl.DataFrame(schema={"model": pl.String, "quant": pl.String})
        table = quality_table(
            file_facts({(m, q): Path(path) for m, q, path in p.files}), kld, read_all(snakemake.input.accuracy),
            runs, speed_tool, usd_per_kwh=p.usd_per_kwh,
        )
        table.write_parquet(snakemake.output.table)
        table.write_csv(snakemake.output.csv)
        speed = speed_tool + (f", split mode {splits[0]}" if splits else "")
        write_quality_markdown(table, p.tools, speed, snakemake.output.md)
        log.info("quality table: %d model × quant rows", table.height)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
