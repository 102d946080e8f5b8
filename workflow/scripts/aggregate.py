"""All bench runs in one table, Tukey outlier flags added, and the robust statistics per group (catalog entry
stats: the rule writes the rows it makes them from)."""

import polars as pl

from llmbench.core.files import read_parquet_checked, write_atomically
from llmbench.core.logs import script_logging
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.outputs.render import write_stats
from llmbench.outputs.stats import tukey_flags


def make(inputs: dict, params: dict, outputs: dict) -> str:
    """The statistics of the study's rows (``inputs["runs"]``: results/summary/runs.parquet)."""
    stats = write_stats(pl.read_parquet(inputs["runs"]), outputs["stats"], outputs["csv"])
    return f"{stats.height} statistics rows"


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        # By name, in RUN_SCHEMA's order: a run file cut short, damaged or missing a column fails here, naming the
        # file and the command that measures it again (files.DamagedResultError).
        runs = pl.concat([read_parquet_checked(f, columns=list(RUN_SCHEMA)) for f in snakemake.input.runs])
        runs = tukey_flags(runs, "decode_tokens_per_s")
        write_atomically(snakemake.output.runs, runs.write_parquet)
        stats = write_stats(runs, snakemake.output.stats, snakemake.output.csv)
        log.info("%d generations from %d runs; %d statistics rows", runs.height, len(snakemake.input.runs), stats.height)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
