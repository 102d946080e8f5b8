"""Quality beside speed and cost, one row per model × quant: file size, bits per weight, decode tokens/s, J/token,
KL divergence and perplexity against the reference, and answer accuracy per tool (catalog entry quality_by_quant:
the rule writes results/summary/quality.parquet, which the table and the Pareto figure are made from)."""

from pathlib import Path

import polars as pl

from llmbench.core.files import write_atomically, write_text_atomically
from llmbench.core.logs import script_logging
from llmbench.outputs.quality import file_facts, quality_table, render_markdown


def read_all(paths) -> pl.DataFrame:
    frames = [pl.read_parquet(p) for p in paths]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def make(inputs: dict, params: dict, outputs: dict) -> str:
    """CSV and Markdown of the quality table (``inputs["table"]``). ``params``: ``tools`` whose answer accuracy the
    study measured and ``speed`` (whose speed and energy the table shows); where absent (an archive rendered again)
    read from the table's columns, and the speed said to be as archived."""
    table = pl.read_parquet(inputs["table"])
    # "accuracy {tool}" columns; "accuracy not run" and the "... low/high/n" ones have more words.
    tools = params.get("tools")
    if tools is None:
        tools = [c.removeprefix("accuracy ") for c in table.columns if c.startswith("accuracy ") and c.count(" ") == 1]
    write_atomically(outputs["csv"], table.write_csv)
    speed = params.get("speed") or "as archived"
    write_text_atomically(outputs["md"], f"Speed and energy: {speed}.\n\n" + render_markdown(table, sorted(set(tools))))
    return f"quality table: {table.height} model × quant rows"


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
        write_atomically(snakemake.output.table, table.write_parquet)
        speed = speed_tool + (f", split mode {splits[0]}" if splits else "")
        outputs = {"csv": snakemake.output.csv, "md": snakemake.output.md}
        log.info(make({"table": snakemake.output.table}, {"tools": p.tools, "speed": speed}, outputs))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
