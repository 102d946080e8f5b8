"""What failed in a study's measurements, said at the end of the run that made them.

A bench, accuracy or KLD job whose engine fails writes 'failed' rows with the diagnosis and exits normally, so that
every other result, table, figure and the report are made; the run then ends with this summary and a non-zero
exit status (the workflow's onsuccess hook raises), so that a script can tell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl

FAILURE_SCHEMA = {"measurement": pl.String, "tool": pl.String, "model": pl.String, "quant": pl.String,
                  "split": pl.String, "kind": pl.String, "reason": pl.String, "file": pl.String}


def _read(paths: Iterable[str | Path]) -> pl.DataFrame:
    """The files that exist, each row with the file it came from (``file``)."""
    frames = [pl.read_parquet(p).with_columns(pl.lit(str(p)).alias("file")) for p in paths if Path(p).exists()]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _failed(df: pl.DataFrame, measurement: str, reason: str, kind: str | None,
            file: Callable[[dict], str] | None = None) -> pl.DataFrame:
    if df.is_empty() or "status" not in df.columns:
        return pl.DataFrame(schema=FAILURE_SCHEMA)
    lit = {c: pl.col(c) if c in df.columns else pl.lit(None, pl.String) for c in ("tool", "split")}
    failed = df.filter(pl.col("status") == "failed")
    if file is not None:  # rows of the study's table: the file each came from, by its group
        failed = failed.with_columns(pl.Series("file", [file(r) for r in failed.iter_rows(named=True)],
                                               dtype=pl.String))
    return failed.select(
        pl.lit(measurement).alias("measurement"), lit["tool"].alias("tool"), "model", "quant", lit["split"].alias("split"),
        (pl.col(kind) if kind and kind in df.columns else pl.lit(None, pl.String)).alias("kind"),
        pl.col(reason).alias("reason"),
        (pl.col("file") if "file" in failed.columns else pl.lit(None, pl.String)).alias("file"),
    ).unique(maintain_order=True).cast(FAILURE_SCHEMA)


def failed_measurements(runs: str | Path | None, kld: Iterable[str | Path] = (),
                        accuracy: Iterable[str | Path] = (),
                        run_file: Callable[[dict], str] | None = None) -> pl.DataFrame:
    """Every failed measurement of the study's result files (those that exist): one row per bench group, KLD
    quant or accuracy group, with its kind (bench rows carry it), reason and the file the job writes (for a bench
    group ``run_file(row)`` names it from the row's tool, model, quant, split, concurrency and depth).
    Columns: FAILURE_SCHEMA."""
    bench = _read([runs]).drop("file", strict=False) if runs else pl.DataFrame()
    return pl.concat([
        _failed(bench, "bench", "status_reason", "failure_kind", run_file),
        _failed(_read(accuracy), "accuracy", "status_reason", None),
        _failed(_read(kld), "kld", "kld_null_reason", None),
    ])


def summary(failed: pl.DataFrame, rerun: str | None = None) -> str:
    """Lines for the end of the run: how many measurements failed, and each with its reason; with ``rerun`` (the
    run's own command, e.g. "snakemake --cores all --configfile …"), the one command that measures them again."""
    lines = [f"{failed.height} measurement(s) failed; every other result, table, figure and the report were made, "
             "each showing the failure with its reason:"]
    for r in failed.iter_rows(named=True):
        where = " × ".join(str(r[c]) for c in ("tool", "model", "quant", "split") if r[c] not in (None, "none"))
        lines.append(f"  - {r['measurement']} {where}" + (f" [{r['kind']}]" if r["kind"] else "") + f": {r['reason']}")
    files = failed["file"].drop_nulls().unique(maintain_order=True).to_list()
    if files and rerun:
        lines.append("To measure them again once the cause is fixed (a retry keeps the generations that finished "
                     "until it finishes more; every table is made again after it):")
        lines.append(f"  {rerun} --forcerun {' '.join(files)}")
    return "\n".join(lines)
