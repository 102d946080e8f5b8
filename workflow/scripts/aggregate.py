"""All bench runs in one table, Tukey outlier flags added, and the robust statistics per group."""

import polars as pl

from llmbench.logs import script_logging
from llmbench.render import write_stats
from llmbench.runs import RUN_SCHEMA
from llmbench.stats import tukey_flags


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        # By name, in RUN_SCHEMA's order: a run file missing a column fails here, naming the file.
        runs = pl.concat([pl.read_parquet(f, columns=list(RUN_SCHEMA)) for f in snakemake.input.runs])
        runs = tukey_flags(runs, "decode_tokens_per_s")
        runs.write_parquet(snakemake.output.runs)
        stats = write_stats(runs, snakemake.output.stats, snakemake.output.stats_csv)
        log.info("%d generations from %d runs; %d statistics rows", runs.height, len(snakemake.input.runs), stats.height)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
