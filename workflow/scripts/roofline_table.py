"""Decode speed against the memory-bandwidth bound per tool × model × quant × split: bytes read per token from each
GGUF's tensor table, bandwidth from rule measure_memory_bandwidth's record (CPU measured, GPU specification)
(catalog entry decode_roofline)."""

import json
from pathlib import Path

import polars as pl

from llmbench.core.files import write_atomically, write_text_atomically
from llmbench.core.logs import script_logging
from llmbench.outputs.roofline import device_table, render_markdown, roofline_table, traffic_table


def job_gpus(path: str) -> dict | None:
    """The provenance record's per-GPU entries (keyed by NVML index), or None where the job left none."""
    p = Path(path)
    return json.loads(p.read_text()).get("gpus", {}) if p.exists() else None


def make(inputs: dict, params: dict, outputs: dict) -> str:
    runs = pl.read_parquet(inputs["runs"])
    machine = json.loads(Path(inputs["bandwidth"]).read_text())
    traffic = traffic_table({(m, q): Path(path) for m, q, path in params["files"]})
    provenance = {tuple(job): job_gpus(path) for *job, path in params["provenance"]}
    table = roofline_table(runs, traffic, device_table(runs, traffic, provenance, machine))
    write_atomically(outputs["csv"], table.write_csv)
    write_text_atomically(outputs["md"], render_markdown(table))
    return f"roofline: {table.height} groups, {table['bound_tokens_per_s'].is_not_null().sum()} with a bound"


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        log.info(make(dict(snakemake.input.items()), dict(snakemake.params.items()), dict(snakemake.output.items())))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
