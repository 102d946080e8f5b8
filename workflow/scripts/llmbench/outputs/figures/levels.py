"""Lines over load and context depth: the served model's throughput per load level, energy and latency against
load (llmbench.outputs.serving's level table), and decode speed against the context depth. One point per level, one line
per quant, one panel per tool × model.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from llmbench.core.quants import order_by_bits
from llmbench.outputs.figures.common import (
    BOX_COLUMNS,
    LABEL_SEP,
    OKABE_ITO,
    PANEL_HEIGHT,
    not_run_notes,
    notice_chart,
    require_columns,
    title_with_notes,
)
from llmbench.outputs.serving import level_table
from llmbench.outputs.stats import GROUP, with_levels


def level_lines(data: pl.DataFrame, x: str, y: str, x_title: str, y_title: str, color: str = "quant",
                 color_title: str = "quant", dash: str | None = None, label: str | None = None) -> alt.FacetChart:
    """Points joined by lines in ``x`` order, one line per ``color`` (and ``dash``) value, one panel per tool ×
    model; each point labelled with its ``label`` column where one is given."""
    data = data.with_columns(pl.concat_str(["tool", "model"], separator=LABEL_SEP).alias("panel"))
    values = sorted(data[color].unique().to_list()) if color != "quant" else order_by_bits(data[color].unique().to_list())
    base = alt.Chart(data).encode(
        x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(zero=False)),
        y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(zero=True)),
        color=alt.Color(f"{color}:N", sort=values, title=color_title, scale=alt.Scale(domain=values, range=OKABE_ITO),
                        legend=alt.Legend(orient="top", direction="horizontal")),
        **({"strokeDash": alt.StrokeDash(f"{dash}:N", title=None)} if dash else {}),
        tooltip=[*(f"{c}:N" for c in ("tool", "model", "quant", "split")), f"{x}:Q", f"{y}:Q"],
    )
    line = base.mark_line(point=True).encode(order=alt.Order(f"{x}:Q"),
                                               detail=[f"{c}:N" for c in ("split", "quant", *([dash] if dash else []))])
    if label:
        line = alt.layer(line, base.mark_text(align="left", dx=5, dy=-6, fontSize=10).encode(
            text=alt.Text(f"{label}:N"), color=alt.value("#333")))
    return line.properties(width=300, height=PANEL_HEIGHT).facet(
        facet=alt.Facet("panel:N", title=None, header=alt.Header(labelFontSize=12)), columns=2,
    ).resolve_scale(x="independent", y="independent")


def serving_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    """The serving curve: the server's output tokens/s against each user's decode tokens/s, one point per load
    level (clients at once), one line per quant, one panel per tool × model (llmbench.outputs.serving.level_table)."""
    title = f"{study}: the served model, server output against per-user decode speed, one point per load level"
    table = level_table(runs).filter(pl.col("depth") == 0)
    notes = ["server output tokens/s: all requests' output tokens over the level's window; per user: the median of "
             "the requests' own decode speeds; labels: clients at once", *not_run_notes(runs)]
    if table.filter(pl.col("concurrency") > 1).is_empty():
        return notice_chart(title, notes, "no load sweep: no job ran more than one request at a time")
    chart = level_lines(table, "per_user_decode_tokens_per_s", "server_output_tokens_per_s",
                         "per-user decode speed [tokens/s]", "server output [tokens/s]", label="concurrency")
    return chart.properties(title=title_with_notes(title, notes))


def load_energy_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    """J per output token against the load level: the level's gross energy over its window over all its
    requests' output tokens, one line per quant, one panel per tool × model."""
    title = f"{study}: energy per output token against load"
    table = level_table(runs).filter(pl.col("depth") == 0)
    reasons = table.filter(pl.col("j_per_output_token").is_null())["energy_null_reason"].drop_nulls().unique().sort()
    notes = ["the level's gross energy over its whole window (every request of every client; idle not subtracted) "
             "over their output tokens", *[f"not measured: {r.removeprefix('not measured: ')}" for r in reasons]]
    measured = table.filter(pl.col("j_per_output_token").is_not_null())
    if measured.is_empty():
        return notice_chart(f"{study}: energy per output token against load: not measured in this study", notes,
                            "nothing to draw: no level's energy was measured (reasons above)")
    chart = level_lines(measured, "concurrency", "j_per_output_token", "clients at once",
                         "energy per output token [J/token]")
    return chart.properties(title=title_with_notes(title, notes))


def load_latency_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    """TTFT and inter-token latency, p50 and p99, against the load level, one panel per tool × model."""
    title = f"{study}: time to first token and inter-token latency against load (p50 solid, p99 dashed)"
    table = level_table(runs).filter(pl.col("depth") == 0)
    notes = ["TTFT on the client's clock from sending the request; ITL: gaps between streamed tokens, pooled over "
             "all requests of the level"]
    if table.filter(pl.col("concurrency") > 1).is_empty():
        return notice_chart(title, notes, "no load sweep: no job ran more than one request at a time")
    long = table.unpivot(index=[*GROUP], on=["ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99"],
                         variable_name="measure", value_name="ms").with_columns(
        pl.concat_str([pl.col("quant"), pl.col("measure").str.extract(r"^(ttft|itl)").str.to_uppercase()],
                      separator=" ").alias("series"),
        pl.col("measure").str.extract(r"(p\d+)$").alias("percentile"),
    ).drop_nulls("ms")
    chart = level_lines(long, "concurrency", "ms", "clients at once", "latency [ms]", color="series",
                         color_title="quant and latency", dash="percentile")
    return chart.properties(title=title_with_notes(title, notes))


def depth_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    """Median decode tokens/s against the context depth (tokens already in the context), one line per quant, one
    panel per tool × model; one request at a time."""
    title = f"{study}: decode speed against context depth"
    require_columns(runs, [*BOX_COLUMNS, "decode_tokens_per_s"])
    runs = with_levels(runs)
    data = runs.filter((pl.col("status") == "ok") & (pl.col("concurrency") == 1)
                       & pl.col("decode_tokens_per_s").is_not_null()).group_by(GROUP).agg(
        pl.col("decode_tokens_per_s").median())
    notes = ["median decode speed of each job, one request at a time; depth: tokens in the context before the test",
             *not_run_notes(runs.filter(pl.col("depth") > 0))]
    if data["depth"].n_unique() < 2:
        return notice_chart(title, notes, "no depth sweep: every job ran on an empty context")
    swept = data.group_by("tool", "model", "quant").agg(pl.col("depth").n_unique().alias("_n")).filter(pl.col("_n") > 1)
    data = data.join(swept.select("tool", "model", "quant"), on=["tool", "model", "quant"], how="semi")
    chart = level_lines(data, "depth", "decode_tokens_per_s", "context depth [tokens]", "decode speed [tokens/s]")
    return chart.properties(title=title_with_notes(title, notes))
