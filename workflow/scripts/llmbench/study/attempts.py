"""A failed measurement measured again: the generations that finished stay until a retry finishes more.

Snakemake removes a job's outputs before it runs it again (`--forcerun`, the command the run's summary prints), so a
job whose engine died after 5 of 12 generations would lose them to a retry that dies sooner. A job that ends with a
'failed' row therefore keeps its rows beside its output, under the name of its settings, and its next attempt with
the same settings writes whichever attempt finished more generations, with the latest failure; an attempt without a
failure replaces them, and the kept copy goes.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from llmbench.core.files import atomic_path


def kept_file(run_file: Path, settings_sha256: str) -> Path:
    """Where a failed attempt of the job writing ``run_file`` with these settings is kept (beside it, not one of its
    outputs, so that Snakemake leaves it)."""
    run_file = Path(run_file)
    return run_file.with_name(f"{run_file.stem}.failed-attempt-{settings_sha256[:16]}.parquet")


def _finished(rows: pl.DataFrame) -> int:
    return rows.filter(pl.col("status") != "failed").height


def settle(run_file: Path, rows: pl.DataFrame, settings_sha256: str) -> pl.DataFrame:
    """The rows the job writes: ``rows`` where they hold no failure (every kept attempt of the job removed), or
    where a kept attempt with the same settings finished no more generations; otherwise the kept attempt's finished
    rows with this attempt's failed row. A failed result is kept for the next attempt."""
    run_file = Path(run_file)
    failed = rows.filter(pl.col("status") == "failed")
    if failed.is_empty():
        for old in run_file.parent.glob(f"{run_file.stem}.failed-attempt-*.parquet"):
            old.unlink(missing_ok=True)
        return rows
    kept_path = kept_file(run_file, settings_sha256)
    result = rows
    if kept_path.exists():
        kept = pl.read_parquet(kept_path)
        if _finished(kept) > _finished(rows):
            result = pl.concat([kept.filter(pl.col("status") != "failed"), failed], how="diagonal_relaxed")
            result = result.select(rows.columns).cast(rows.schema)
    with atomic_path(kept_path) as part:
        result.write_parquet(part)
    return result
