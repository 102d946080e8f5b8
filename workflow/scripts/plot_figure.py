"""A figure of the catalog (llmbench/outputs/catalog.py), drawn from its one summary file as PNG, SVG and interactive HTML:
the rule's entry is found by the rule's name."""

import polars as pl

from llmbench.core.logs import script_logging
from llmbench.outputs.catalog import by_rule


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        figure = by_rule(snakemake.rule)
        (name,) = figure.inputs
        frame = pl.read_parquet(snakemake.input[name])
        for path in figure.draw(frame, snakemake.params.study, snakemake.output.png):
            log.info("wrote %s", path)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
