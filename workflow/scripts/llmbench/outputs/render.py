"""Statistics, tables and figures from a study's measured rows: what the workflow's last rules write, and what an
unpacked archive re-renders without running a benchmark again.

Which outputs there are, and what makes each, is the catalog's (llmbench/outputs/catalog.py); its functions are named by
string and imported when they run, so the plotting stack (altair, vl-convert) is imported by the figures alone:
the statistics and tables are also made where it is not installed (`snakemake measurements` on a GPU box that
only measures)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from llmbench.core.files import write_atomically
from llmbench.outputs.catalog import OUTPUTS, Figure
from llmbench.outputs.stats import summarize_runs

METRICS = ["decode_tokens_per_s", "prefill_tokens_per_s", "generated_tokens", "energy_j"]


def write_stats(runs: pl.DataFrame, parquet: Path, csv: Path) -> pl.DataFrame:
    stats = summarize_runs(runs, METRICS)
    write_atomically(parquet, stats.write_parquet)
    write_atomically(csv, stats.write_csv)
    return stats


def rerender(results: Path, config: dict) -> list[Path]:
    """Every output of the catalog made again in ``results`` from the summary files it is made from (no benchmark
    runs), with the params ``config`` (the study's, as run) gives; the files written.

    Left as archived: an output the catalog says is ``kept`` (the decode roofline: it needs the model files), and
    one the study did not measure (``when``: the quality outputs where neither KLD nor accuracy ran); an
    ``optional`` input the study did not make is left out of its output's inputs."""
    results = Path(results)
    frames: dict[Path, pl.DataFrame] = {}
    written: list[Path] = []
    for entry in OUTPUTS.values():
        if entry.kept:
            continue
        inputs = {name: results / path for name, path in entry.inputs.items()
                  if name not in entry.optional or (results / path).exists()}
        if entry.when and not all(path.exists() for path in inputs.values()):
            continue
        outputs = {key: results / path for key, path in {**entry.paths(), **entry.extra}.items()}
        for path in outputs.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(entry, Figure):
            (path,) = inputs.values()
            if path not in frames:
                frames[path] = pl.read_parquet(path)
            written += entry.draw(frames[path], config["study"], outputs["png"])
        else:
            entry.write(inputs, entry.config_params(config), outputs)
            written += outputs.values()
    return written
