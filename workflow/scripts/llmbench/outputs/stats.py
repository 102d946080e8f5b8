"""Robust statistics per group: n, median, quartiles, IQR, Tukey outliers at 1.5 IQR, mean and sd; and the
Pareto frontier of two metrics per group."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

# One job's configuration: what its rows are summarised over (a load level and a context depth are jobs of their own).
GROUP = ["tool", "model", "quant", "split", "concurrency", "depth"]
TUKEY_K = 1.5
# Before load levels and context depths every job ran one request at a time on an empty context: rows without
# these columns (an older study, its archive) read so.
LEVEL_DEFAULTS = {"concurrency": 1, "depth": 0}


def with_levels(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with its load level and context depth columns, filled as LEVEL_DEFAULTS where absent or null."""
    return df.with_columns(pl.col(c).fill_null(v) if c in df.columns else pl.lit(v, pl.Int64).alias(c)
                           for c, v in LEVEL_DEFAULTS.items())


BASE_LEVEL_NOTE = "one request at a time on an empty context (the load and depth sweeps have figures of their own)"


def base_level(df: pl.DataFrame) -> pl.DataFrame:
    """The rows of one request at a time on an empty context (concurrency 1, depth 0): what a per-quant or
    per-framework comparison compares, so that a load or depth sweep never mixes into its boxes and medians."""
    return with_levels(df).filter((pl.col("concurrency") == 1) & (pl.col("depth") == 0))


def _q(col: str, q: float) -> pl.Expr:
    # 'linear' is the quartile definition of numpy's default and of box plots drawn by Vega.
    return pl.col(col).quantile(q, interpolation="linear")


def tukey_flags(df: pl.DataFrame, metric: str, by: list[str] = GROUP) -> pl.DataFrame:
    """Add ``{metric}_outlier``: outside [Q1 − 1.5 IQR, Q3 + 1.5 IQR] of its group."""
    df = with_levels(df)
    q1, q3 = _q(metric, 0.25).over(by), _q(metric, 0.75).over(by)
    iqr = q3 - q1
    flag = (pl.col(metric) < q1 - TUKEY_K * iqr) | (pl.col(metric) > q3 + TUKEY_K * iqr)
    # Nulls (a skipped job, a metric not measured) are not outliers.
    return df.with_columns(flag.fill_null(False).alias(f"{metric}_outlier"))


def summarize(df: pl.DataFrame, metrics: list[str], by: list[str] = GROUP) -> pl.DataFrame:
    """One row per group × metric; null values (not measured) are left out of n and reported in n_null."""
    df = with_levels(df)
    parts = []
    for metric in metrics:
        # Statistics are floats whatever the metric's type, so that all metrics stack in one table.
        values = df.filter(pl.col(metric).is_not_null()).with_columns(pl.col(metric).cast(pl.Float64))
        flagged = tukey_flags(values, metric, by)
        stats = flagged.group_by(by).agg(
            pl.len().alias("n"),
            pl.col(metric).median().alias("median"),
            _q(metric, 0.25).alias("q1"),
            _q(metric, 0.75).alias("q3"),
            pl.col(metric).mean().alias("mean"),
            pl.col(metric).std(ddof=1).alias("sd"),
            pl.col(metric).min().alias("min"),
            pl.col(metric).max().alias("max"),
            pl.col(f"{metric}_outlier").sum().cast(pl.Int64).alias("n_outliers"),
        )
        nulls = df.group_by(by).agg(pl.col(metric).is_null().sum().cast(pl.Int64).alias("n_null"))
        stats = nulls.join(stats, on=by, how="left").with_columns(
            pl.lit(metric).alias("metric"),
            pl.col("n").fill_null(0),
            pl.col("n_outliers").fill_null(0),
            (pl.col("q3") - pl.col("q1")).alias("iqr"),
        )
        stats = stats.with_columns(
            (pl.col("q1") - TUKEY_K * pl.col("iqr")).alias("lower_fence"),
            (pl.col("q3") + TUKEY_K * pl.col("iqr")).alias("upper_fence"),
        )
        parts.append(stats)
    cols = [*by, "metric", "n", "n_null", "median", "q1", "q3", "iqr", "lower_fence", "upper_fence",
            "n_outliers", "mean", "sd", "min", "max"]
    return pl.concat([p.select(cols) for p in parts]).sort([*by, "metric"])


def summarize_runs(runs: pl.DataFrame, metrics: list[str]) -> pl.DataFrame:
    """Statistics of the generations that ran; a group whose job was skipped keeps a row with n = 0 and why. Rows
    measured under contention (status 'contended') count as not measured (n_null), their reason in
    not_run_reason. Each row carries its job's precision (job_precision: STATS_PRECISION), null where not
    recorded (a study before rounds, a job that did not run)."""
    from llmbench.engines.runs import without_contended

    precision = job_precision(runs).select(*GROUP, *STATS_PRECISION)
    runs = without_contended(with_levels(runs), metrics)
    reasons = runs.group_by(GROUP).agg(
        pl.col("status_reason").drop_nulls().unique().sort().str.join("; ").alias("not_run_reason")
    ).with_columns(pl.when(pl.col("not_run_reason") == "").then(None).otherwise(pl.col("not_run_reason"))
                   .alias("not_run_reason"))
    return (summarize(runs, metrics).join(reasons, on=GROUP, how="left")
            .join(precision, on=GROUP, how="left", nulls_equal=True).sort([*GROUP, "metric"]))


# A job's precision (llmbench.core.precision; RUN_SCHEMA's precision_* columns, the same on each of its rows): what
# stats.csv carries per group, and the tables' numeric columns beside their "precision" note.
STATS_PRECISION = ["precision_rounds", "precision_median", "precision_low", "precision_high", "precision_confidence",
                   "precision_target", "precision_met", "precision_note"]
TABLE_PRECISION = ["precision", *STATS_PRECISION[:-1]]


def job_precision(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per group (GROUP) with its job's precision columns (precision.PRECISION_COLUMNS): the first
    non-null value of each over the group's rows (skipped and failed rows have none). Rows written before these
    columns existed (an older study, its archive) read them as null: "not recorded"."""
    from llmbench.core.precision import PRECISION_COLUMNS
    from llmbench.engines.runs import RUN_SCHEMA

    runs = with_levels(runs).with_columns(
        pl.lit(None, RUN_SCHEMA[c]).alias(c) for c in PRECISION_COLUMNS if c not in runs.columns)
    return runs.group_by(GROUP).agg(pl.col(c).drop_nulls().first().alias(c) for c in PRECISION_COLUMNS).sort(GROUP)


def with_job_precision(table: pl.DataFrame, runs: pl.DataFrame, on: Sequence[str] = GROUP) -> pl.DataFrame:
    """``table`` (one row per ``on``) with TABLE_PRECISION joined from ``runs``' jobs: ``precision`` the job's
    note, beside its numbers. ``on`` narrower than GROUP: ``runs`` must hold one job per key (quality's one tool)."""
    on = list(on)
    precision = job_precision(runs).sort("precision_rounds", nulls_last=True).unique(on, keep="first")
    precision = precision.select(*on, pl.col("precision_note").alias("precision"), *STATS_PRECISION[:-1])
    return table.join(precision, on=on, how="left", nulls_equal=True, maintain_order="left")


def precision_text(r: dict, short: bool = False) -> str:
    """A job's precision in a few words, from its TABLE_PRECISION (or job_precision) values: "±1.8% (95% CI,
    6 rounds)" (``short``: "±1.8%"), "target ±2% not reached: ±3.1% after 20 rounds" (as its note words it),
    "no interval (2 rounds)", or "not recorded" (a study measured before rounds, or a job that did not run)."""
    n, low, high, mid = (r.get(c) for c in ("precision_rounds", "precision_low", "precision_high",
                                            "precision_median"))
    if n is None:
        return "not recorded"
    if low is None or high is None or not mid:
        return f"no interval ({n} round{'s' * (n != 1)})"
    reached = f"±{max(mid - low, high - mid) / abs(mid):.1%}"
    target = r.get("precision_target")
    if r.get("precision_met") is False and target:
        return f"target ±{target:.0%} not reached: {reached} after {n} rounds"
    if short:
        return reached
    confidence = r.get("precision_confidence")
    return f"{reached} ({f'{confidence:.0%} CI, ' if confidence is not None else ''}{n} rounds)"


def pareto_front(df: pl.DataFrame, x: str, y: str, maximise_y: bool = True,
                 by: Sequence[str] = ("model",)) -> pl.DataFrame:
    """Add ``on_frontier``: no other point of the group has x ≤ and y at least as good, one of them strictly.

    x is minimised (mean KLD). Every pair within a group is compared: groups are a model's few quants.
    """
    by = list(by)
    d = df.with_row_index("_row")
    # NaN counts as missing: it compares as larger than any number in polars and would otherwise dominate.
    pts = d.select("_row", *by, pl.col(x).cast(pl.Float64).fill_nan(None).alias("_x"),
                   pl.col(y).cast(pl.Float64).fill_nan(None).alias("_y")).drop_nulls(["_x", "_y"])
    other = pts.rename({"_row": "_o", "_x": "_ox", "_y": "_oy"})
    pairs = pts.join(other, on=by, nulls_equal=True) if by else pts.join(other, how="cross")
    sign = 1 if maximise_y else -1  # compare sign·y so that larger is always better
    ox, oy, px, py = pl.col("_ox"), sign * pl.col("_oy"), pl.col("_x"), sign * pl.col("_y")
    dominated = pairs.filter((ox <= px) & (oy >= py) & ((ox < px) | (oy > py)))["_row"]
    return d.with_columns(
        (pl.col("_row").is_in(pts["_row"].implode()) & ~pl.col("_row").is_in(dominated.implode()))
        .alias("on_frontier")).drop("_row")
