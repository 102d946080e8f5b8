"""Statistics, tables and figures from a study's measured rows: what the workflow's last rules write, and what an
unpacked archive re-renders without running a benchmark again.

The plotting stack (altair, vl-convert) is imported by the figure functions alone: the statistics and tables are
also made where it is not installed (`snakemake measurements` on a GPU box that only measures)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from llmbench.costs import write_cost_tables
from llmbench.files import write_atomically, write_text_atomically
from llmbench.frameworks import framework_table, registry_facts
from llmbench.frameworks import render_markdown as framework_markdown
from llmbench.quality import render_markdown as quality_markdown
from llmbench.stats import summarize_runs

METRICS = ["decode_tokens_per_s", "prefill_tokens_per_s", "generated_tokens", "energy_j"]


def write_stats(runs: pl.DataFrame, parquet: Path, csv: Path) -> pl.DataFrame:
    stats = summarize_runs(runs, METRICS)
    write_atomically(parquet, stats.write_parquet)
    write_atomically(csv, stats.write_csv)
    return stats




def write_framework_table(runs: pl.DataFrame, csv: Path, md: Path) -> pl.DataFrame:
    table = framework_table(runs, registry_facts())
    write_atomically(csv, table.write_csv)
    write_text_atomically(md, framework_markdown(table))
    return table


def write_quality_markdown(table: pl.DataFrame, tools: list[str], speed: str, md: Path) -> None:
    write_text_atomically(md, f"Speed and energy: {speed}.\n\n" + quality_markdown(table, sorted(set(tools))))


def write_pareto(table: pl.DataFrame, study: str, png: Path) -> list[Path]:
    """$ per 1M tokens against KLD where energy was measured, else decode speed (and the title says why)."""
    from llmbench.plots import pareto_chart, save_all

    if table["usd_per_1m_tokens"].is_not_null().any():
        chart = pareto_chart(table, "usd_per_1m_tokens", "$ per 1M generated tokens (energy only)",
                             f"{study}: cost against loss of quality", maximise_y=False)
    else:
        chart = pareto_chart(table, "median_decode_tokens_per_s", "median decode speed [tokens/s]",
                             f"{study}: speed against loss of quality (energy not measured here)")
    return save_all(chart, png)


def rerender(results: Path, config: dict) -> list[Path]:
    """Everything derived from ``results/summary``'s rows, written again in ``results`` (no benchmark runs).

    The decode roofline is not: it needs the model files themselves, so the archive keeps it as measured."""
    from llmbench.plots import FIGURES, write_figure

    results = Path(results)
    runs = pl.read_parquet(results / "summary/runs.parquet")
    (results / "tables").mkdir(parents=True, exist_ok=True)
    write_stats(runs, results / "summary/stats.parquet", results / "summary/stats.csv")
    write_cost_tables(runs, config["costs"], results / "tables/cost_per_1m_tokens.csv",
                      results / "tables/cost_per_1m_tokens.md")
    write_framework_table(runs, results / "tables/frameworks.csv", results / "tables/frameworks.md")
    written = [results / "summary/stats.csv", results / "tables/cost_per_1m_tokens.md", results / "tables/frameworks.md"]
    for name in FIGURES:  # every figure drawn from the rows, under the name its rule gives it
        written += write_figure(name, runs, config["study"], results / f"figures/{name}.png")
    quality = results / "summary/quality.parquet"
    if quality.exists():
        table = pl.read_parquet(quality)
        # "accuracy {tool}" columns; "accuracy not run" and the "... low/high/n" ones have more words.
        tools = [c.removeprefix("accuracy ") for c in table.columns if c.startswith("accuracy ") and c.count(" ") == 1]
        write_quality_markdown(table, tools, "as archived", results / "tables/quality_by_quant.md")
        written += [results / "tables/quality_by_quant.md"]
        written += write_pareto(table, config["study"], results / "figures/pareto_speed_vs_kld.png")
    return written
