"""The frameworks side by side: decode tokens/s of every tool (and split mode) on the same model file and quant."""

from __future__ import annotations

import altair as alt
import polars as pl

from llmbench.core.quants import rank
from llmbench.engines.runs import with_all_columns
from llmbench.outputs.figures.common import (
    BOX_OUTLINE,
    OKABE_ITO,
    PANEL_HEIGHT,
    PANEL_WIDTH_STEP,
    TUKEY_EXTENT,
    at_base_level,
    box_step,
    label_notes,
    mark_expr,
    not_run_notes,
    notice_chart,
    precision_notes,
    require_columns,
    split_mode_notes,
    title_with_notes,
    unreported_notes,
)


def framework_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    """Decode tokens/s of every tool (and split mode) side by side on the same model file and quant, one panel per
    model; only the model × quant pairs that more than one of them ran."""
    metric = "decode_tokens_per_s"
    require_columns(runs, ["tool", "model", "quant", "split", "status", "status_reason", metric])
    title = f"{study}: frameworks on the same model file, decode speed (Tukey box plots, whiskers 1.5 IQR)"
    runs, level = at_base_level(runs)
    notes = [*level, *unreported_notes(runs, metric, "decode speed"), *split_mode_notes(runs), *not_run_notes(runs)]
    data = runs.filter((pl.col("status") == "ok") & pl.col(metric).is_not_null()).with_columns(
        pl.when(pl.col("split") == "none").then(pl.col("tool"))
        .otherwise(pl.format("{} ({})", "tool", "split")).alias("engine"))
    counts = data.group_by("model", "quant").agg(pl.col("engine").n_unique().alias("_n"),
                                                 pl.col("engine").unique().sort().str.join(", ").alias("_who"))
    alone = counts.filter(pl.col("_n") < 2).sort("model", "quant")
    notes += [f"one framework only, not compared: {r['model']} {r['quant']} ({r['_who']})"
              for r in alone.iter_rows(named=True)]
    data = data.join(counts.filter(pl.col("_n") >= 2).select("model", "quant"), on=["model", "quant"], how="semi")
    if data.is_empty():
        return notice_chart(title, notes, "nothing to compare: no model file and quant was run by two frameworks")
    data = with_all_columns(data).with_columns(pl.concat_str(pl.col("quant"), mark_expr()).alias("quant_shown"))
    notes += [*label_notes(data), *precision_notes(data)]
    order = rank(data["quant"])
    quants = [shown for _, shown in sorted(data.select("quant", "quant_shown").unique().iter_rows(),
                                           key=lambda qs: (order[qs[0]], qs[1]))]
    engines = sorted(data["engine"].unique().to_list())
    chart = alt.Chart(data.select("model", "quant", "quant_shown", "engine", metric)).mark_boxplot(
        extent=TUKEY_EXTENT, size=PANEL_WIDTH_STEP - 4, median={"color": "black"},
        outliers={"size": 18}, rule={"color": "#333"}, box=BOX_OUTLINE,
    ).encode(
        x=alt.X("quant_shown:N", sort=quants, title="quant, coarsest left", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("engine:N", sort=engines),
        y=alt.Y(f"{metric}:Q", title="decode speed [tokens/s]", scale=alt.Scale(zero=True)),
        color=alt.Color("engine:N", sort=engines, title="framework",
                        scale=alt.Scale(domain=engines, range=OKABE_ITO),
                        legend=alt.Legend(orient="top", direction="horizontal")),
    ).properties(width=box_step(len(engines)), height=PANEL_HEIGHT)
    return chart.facet(facet=alt.Facet("model:N", title=None, header=alt.Header(labelFontSize=12)), columns=1).resolve_scale(
        x="independent", y="independent").properties(title=title_with_notes(title, notes))
