"""Pareto figure: speed (or $ per 1M tokens where energy was measured) against mean KL divergence, per model."""

import polars as pl

from llmbench.logs import script_logging
from llmbench.plots import save_all
from llmbench.quality import pareto_chart


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        table = pl.read_parquet(snakemake.input.table)
        study = snakemake.params.study
        if table["usd_per_1m_tokens"].is_not_null().any():
            chart = pareto_chart(table, "usd_per_1m_tokens", "$ per 1M generated tokens (energy only)",
                                 f"{study}: cost against loss of quality", maximise_y=False)
        else:
            chart = pareto_chart(table, "median_decode_tokens_per_s", "median decode speed [tokens/s]",
                                 f"{study}: speed against loss of quality (energy not measured here)")
        for path in save_all(chart, snakemake.output.png):
            log.info("wrote %s", path)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
