"""Energy and money per 1M generated tokens, beside dated cloud prices; unmeasured energy stays unmeasured."""

from __future__ import annotations

import polars as pl

from llmbench.stats import GROUP

J_PER_KWH = 3.6e6


def usd_per_1m_tokens(j_per_token: float, usd_per_kwh: float) -> float:
    return j_per_token * 1e6 / J_PER_KWH * usd_per_kwh


def energy_per_token(runs: pl.DataFrame) -> pl.DataFrame:
    """Per group: J per generated token over all its generations (energy summed over windows, then divided).

    Summing before dividing weights each generation by its tokens and avoids the low readings of short windows.
    """
    return runs.group_by(GROUP).agg(
        pl.col("generated_tokens").sum().alias("generated_tokens"),
        pl.col("decode_tokens_per_s").median().alias("median_decode_tokens_per_s"),
        pl.len().alias("generations"),
        pl.col("energy_j").is_null().any().alias("_any_null"),
        pl.col("energy_j").sum().alias("_energy_j"),
        pl.col("energy_source").drop_nulls().unique().sort().str.join(", ").alias("energy_source"),
        pl.col("energy_null_reason").drop_nulls().unique().sort().str.join("; ").alias("energy_null_reason"),
        pl.col("status_reason").drop_nulls().unique().sort().str.join("; ").alias("not_run_reason"),
    ).with_columns(
        pl.when(pl.col("_any_null")).then(None).otherwise(pl.col("_energy_j") / pl.col("generated_tokens"))
        .alias("j_per_token")
    ).drop("_any_null", "_energy_j")


def cost_table(runs: pl.DataFrame, usd_per_kwh: float, cloud: list[dict]) -> pl.DataFrame:
    """One row per group: J/token, kWh and $ per 1M generated tokens, and each cloud's output price beside."""
    t = energy_per_token(runs).with_columns(
        (pl.col("j_per_token") * 1e6 / J_PER_KWH).alias("kwh_per_1m_tokens"),
        pl.lit(usd_per_kwh).alias("electricity_usd_per_kwh"),
    ).with_columns(
        (pl.col("kwh_per_1m_tokens") * usd_per_kwh).alias("usd_per_1m_tokens"),
        pl.when(pl.col("j_per_token").is_null())
        .then(pl.concat_str(pl.lit("not measured: "), pl.col("energy_null_reason").str.replace("^not measured: ", "")))
        .otherwise(pl.lit("measured"))
        .alias("energy_status"),
    )
    for c in cloud:
        name = c["name"]
        t = t.with_columns(
            pl.lit(c["output_usd_per_1m"]).alias(f"{name} output usd_per_1m ({c['as_of']})"),
            pl.lit(c["input_usd_per_1m"]).alias(f"{name} input usd_per_1m ({c['as_of']})"),
            (pl.col("usd_per_1m_tokens") / c["output_usd_per_1m"]).alias(f"local / {name} output"),
        )
    return t.sort(GROUP)


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def to_markdown(df: pl.DataFrame, note: str = "") -> str:
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        lines.append("| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |")
    return ("\n".join(lines) + "\n") + (f"\n{note}\n" if note else "")
