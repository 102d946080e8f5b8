"""Decode speed against the memory-bandwidth bound per tool × model × quant × split: bytes read per token from each
GGUF's tensor table, bandwidth from rule measure_memory_bandwidth's record (CPU measured, GPU specification)."""

import json
from pathlib import Path

import polars as pl

from llmbench.logs import script_logging
from llmbench.roofline import device_table, render_markdown, roofline_table, traffic_table


def job_gpus(path: str) -> dict | None:
    """The provenance record's per-GPU entries (keyed by NVML index), or None where the job left none."""
    p = Path(path)
    return json.loads(p.read_text()).get("gpus", {}) if p.exists() else None


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p = snakemake.params
        runs = pl.read_parquet(snakemake.input.runs)
        machine = json.loads(Path(snakemake.input.bandwidth).read_text())
        traffic = traffic_table({(m, q): Path(path) for m, q, path in p.files})
        provenance = {tuple(job): job_gpus(path) for *job, path in p.provenance}
        table = roofline_table(runs, traffic, device_table(runs, traffic, provenance, machine))
        table.write_csv(snakemake.output.csv)
        Path(snakemake.output.md).write_text(render_markdown(table))
        log.info("roofline: %d groups, %d with a bound", table.height, table["bound_tokens_per_s"].is_not_null().sum())


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
