"""Box plots of decode tokens/s per quant, one panel per tool × model × split mode."""

import polars as pl

from llmbench.logs import script_logging
from llmbench.plots import box_by_quant, save_all


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        runs = pl.read_parquet(snakemake.input.runs)
        chart = box_by_quant(
            runs, "decode_tokens_per_s",
            title=f"{snakemake.params.study}: decode speed per quant (Tukey box plots, whiskers 1.5 IQR)",
            axis_title="decode speed [tokens/s]",
        )
        for path in save_all(chart, snakemake.output.png):
            log.info("wrote %s", path)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
