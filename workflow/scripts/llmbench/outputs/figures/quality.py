"""Quality against speed or cost: the Pareto figure of mean KL divergence per model (llmbench.outputs.quality's table,
``results/summary/quality.parquet``)."""

from __future__ import annotations

import altair as alt
import polars as pl

from llmbench.outputs.figures.common import OKABE_ITO, label_notes, mark_expr, wrap_notes
from llmbench.outputs.stats import pareto_front

# The quality figure: mean KLD against speed or cost, per model (llmbench.outputs.quality's table).
KEY = ["model", "quant"]


KLD_TITLE = "mean KL divergence vs reference (lower is better)"


FRONTIER_NOTE = "Filled and joined: the Pareto frontier (no other quant is both closer to the reference and better)."


def pareto_chart(table: pl.DataFrame, y: str, y_title: str, title: str, maximise_y: bool = True) -> alt.Chart:
    """Mean KLD (log x) against y per model; the frontier drawn as a line, its points filled, the rest hollow.

    Points without y or with KLD ≤ 0 (the reference itself: a log axis cannot show 0) are left out.
    """
    table = table.with_columns(pl.lit(None, pl.String).alias(c) for c in ("quant_label_note", "tensor_mix")
                               if c not in table.columns)
    data = table.filter(pl.col(y).is_not_null() & (pl.col("kld_mean") > 0)).select(
        *KEY, "kld_mean", y, "quant_label_note", "tensor_mix").with_columns(
        pl.concat_str(pl.col("quant"), mark_expr()).alias("label"))
    data = pareto_front(data, "kld_mean", y, maximise_y).with_columns(
        pl.when(pl.col("on_frontier")).then(pl.lit("on the frontier")).otherwise(pl.lit("dominated")).alias("point"))
    x_enc = alt.X("kld_mean:Q", scale=alt.Scale(type="log"), title=KLD_TITLE)
    colour = alt.Color("model:N", scale=alt.Scale(range=OKABE_ITO), legend=None)
    base = alt.Chart(data).encode(x=x_enc, y=alt.Y(f"{y}:Q", title=y_title), color=colour)
    line = base.transform_filter("datum.on_frontier").mark_line(strokeWidth=1.5).encode(order="kld_mean:Q")
    # Filled on the frontier, hollow off it; Vega-Lite draws no legend for fill opacity, so the subtitle says so.
    points = base.mark_point(size=70, strokeWidth=1.5, filled=False).encode(
        fill=alt.Fill("model:N", scale=alt.Scale(range=OKABE_ITO), legend=None),
        fillOpacity=alt.FillOpacity("point:N", scale=alt.Scale(domain=["on the frontier", "dominated"], range=[1, 0]),
                                    legend=None),
        tooltip=[*KEY, "kld_mean:Q", f"{y}:Q", "point:N"])
    # Labels in dark grey: Okabe–Ito's yellow is a fine point colour but illegible as text on white.
    labels = base.mark_text(align="left", dx=7, dy=-7, fontSize=10).encode(text="label:N", color=alt.value("#333"))
    subtitle = wrap_notes([FRONTIER_NOTE, *label_notes(data)])
    return alt.layer(line, points, labels).properties(width=320, height=240).facet(
        facet=alt.Facet("model:N", title=None), columns=2).properties(title=alt.TitleParams(title, subtitle=subtitle))


def pareto_figure(table: pl.DataFrame, study: str) -> alt.FacetChart:
    """$ per 1M tokens against KLD where energy was measured, else decode speed (and the title says why)."""
    if table["usd_per_1m_tokens"].is_not_null().any():
        return pareto_chart(table, "usd_per_1m_tokens", "$ per 1M generated tokens (energy only)",
                            f"{study}: cost against loss of quality", maximise_y=False)
    return pareto_chart(table, "median_decode_tokens_per_s", "median decode speed [tokens/s]",
                        f"{study}: speed against loss of quality (energy not measured here)")
