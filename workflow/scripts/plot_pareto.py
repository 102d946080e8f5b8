"""Pareto figure: speed (or $ per 1M tokens where energy was measured) against mean KL divergence, per model."""

import polars as pl

from llmbench.logs import script_logging
from llmbench.render import write_pareto


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        for path in write_pareto(pl.read_parquet(snakemake.input.table), snakemake.params.study, snakemake.output.png):
            log.info("wrote %s", path)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
