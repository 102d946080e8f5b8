"""Energy and money per 1M generated tokens, beside dated cloud prices; unmeasured energy stays unmeasured."""

from __future__ import annotations

import polars as pl

from llmbench.quants import KNOWN_QUANTS
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
        pl.col("energy_is_estimate").fill_null(False).any().alias("energy_is_estimate"),
        pl.col("energy_window_s").sum().alias("energy_windows_s"),
        pl.col("energy_window_s").min().alias("shortest_window_s"),
        pl.col("energy_source").drop_nulls().unique().sort().str.join(", ").alias("energy_source"),
        pl.col("energy_null_reason").drop_nulls().unique().sort().str.join("; ").alias("energy_null_reason"),
        pl.col("status_reason").drop_nulls().unique().sort().str.join("; ").alias("not_run_reason"),
    ).with_columns(
        pl.when(pl.col("_any_null")).then(None).otherwise(pl.col("_energy_j") / pl.col("generated_tokens"))
        .alias("j_per_token")
    ).with_columns(
        pl.when(pl.col("j_per_token").is_not_null()).then(pl.format(
            "energy summed over {} windows ({} s in all), over the tokens they generated",
            pl.col("generations"), pl.col("energy_windows_s").round(1),
        )).alias("energy_basis")
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
        .when(pl.col("energy_is_estimate"))
        .then(pl.concat_str(pl.lit("estimate, not measured: "), pl.col("energy_source")))
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
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(table: pl.DataFrame, usd_per_kwh: float, electricity_note: str, cloud: list[dict]) -> str:
    """The cost table for people: quants by bits per weight, one footnote per reason instead of repeated cells."""
    notes: dict[str, int] = {}

    def cell(value, reason: str | None, estimate: str | None = None) -> str:
        if value is not None and estimate:
            return f"{fmt(value)} estimate [{notes.setdefault(estimate, len(notes) + 1)}]"
        if value is not None:
            return fmt(value)
        mark = notes.setdefault(reason or "not measured", len(notes) + 1)
        return f"not measured [{mark}]"

    ranked = table.with_columns(
        pl.col("quant").replace_strict({q: i for i, q in enumerate(KNOWN_QUANTS)}, default=len(KNOWN_QUANTS))
        .alias("_rank")
    ).sort(["tool", "model", "split", "_rank"])
    header = ["tool", "model", "quant", "split", "generations", "median decode tok/s", "J/token",
              "kWh per 1M tokens", "$ per 1M tokens", *[f"local / {c['name']} output" for c in cloud]]
    rows = []
    for r in ranked.iter_rows(named=True):
        reason = r["not_run_reason"] or r["energy_null_reason"]
        estimate = r["energy_status"] if r["energy_is_estimate"] else None
        rows.append([
            r["tool"], r["model"], r["quant"], r["split"], str(r["generations"]),
            fmt(r["median_decode_tokens_per_s"]) or f"not run [{notes.setdefault(reason, len(notes) + 1)}]",
            cell(r["j_per_token"], reason, estimate), cell(r["kwh_per_1m_tokens"], reason, estimate),
            cell(r["usd_per_1m_tokens"], reason, estimate),
            *[cell(r[f"local / {c['name']} output"], reason, estimate) for c in cloud],
        ])
    out = [f"## Local cost per 1M generated tokens at ${usd_per_kwh}/kWh\n\n", _md_table(header, rows)]
    if cloud:
        out += ["\n## Cloud API prices\n\n", _md_table(
            ["API", "input $ per 1M tokens", "output $ per 1M tokens", "as of", "source"],
            [[c["name"], fmt(float(c["input_usd_per_1m"])), fmt(float(c["output_usd_per_1m"])), c["as_of"], c["source"]]
             for c in cloud],
        )]
    out.append(
        "\nJ/token: a group's energy summed over all its generation windows, divided by the tokens they generated "
        "(never one short window alone: NVML's energy counter steps about every 100 ms, so windows under ~2 s "
        "read low).\n"
    )
    out.append(
        f"\nElectricity: ${usd_per_kwh}/kWh ({electricity_note or 'no source given'}). Energy only: hardware, "
        "operations and maintenance are excluded, so a local cost is a lower bound.\n"
    )
    out += [f"\n[{n}] {reason}\n" for reason, n in notes.items()]
    return "".join(out)
