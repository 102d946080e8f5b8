"""One of the figures drawn from the study's rows (llmbench.plots.FIGURES: box plots per quant, one panel per
tool × model, split modes side by side), as PNG, SVG and interactive HTML."""

import polars as pl

from llmbench.logs import script_logging
from llmbench.plots import write_figure


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        runs = pl.read_parquet(snakemake.input.runs)
        for path in write_figure(snakemake.params.figure, runs, snakemake.params.study, snakemake.output.png):
            log.info("wrote %s", path)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
