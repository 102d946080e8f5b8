"""The decision figure: cost per 1M output tokens (or, where energy was not measured, throughput) against mean KLD,
one point per configuration of the decision table (``results/summary/decision.parquet``), those meeting the service
levels filled, their frontier drawn, the cloud prices as lines (llmbench.outputs.decision.figure_data)."""

from __future__ import annotations

import altair as alt
import polars as pl

from llmbench.outputs.decision import SERVICE_MARK, figure_data
from llmbench.outputs.figures.common import OKABE_ITO, notice_chart, title_with_notes, wrap_notes

KLD_TICKS = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]

# KLD of the reference quant is 0: a symmetric log axis draws it, linear below this and logarithmic above.
KLD_LINEAR_BELOW = 1e-3

FRONTIER_NOTE = ("Filled: meets the service levels; hollow: misses one; grey: not judged. The line joins the frontier "
                 "of the configurations that meet them (none other is both closer to the reference and better).")


def decision_figure(table: pl.DataFrame, study: str) -> alt.LayerChart | alt.Chart:
    data, axis, notes = figure_data(table)
    y = axis["y"]
    title = (f"{study}: cost against loss of quality, service levels marked" if axis["clouds"] or
             axis["lower_is_better"] else f"{study}: throughput against loss of quality, service levels marked")
    if data.is_empty():
        return notice_chart(title, notes, "nothing to draw: no configuration has both a mean KLD and a "
                            f"{axis['title']} (reasons above)")
    top = data["kld_mean"].max()
    ticks = [t for t in KLD_TICKS if t <= top * 1.5] or [0.0]
    x = alt.X("kld_mean:Q", scale=alt.Scale(type="symlog", constant=KLD_LINEAR_BELOW),
              axis=alt.Axis(values=ticks, format="~g"),
              title="mean KL divergence vs the model's reference quant (lower is better)")
    tools = sorted(data["tool"].unique().to_list())
    base = alt.Chart(data).encode(x=x, y=alt.Y(f"{y}:Q", title=axis["title"]),
                                  color=alt.Color("tool:N", scale=alt.Scale(domain=tools, range=OKABE_ITO),
                                                  legend=alt.Legend(orient="bottom")))
    frontier = base.transform_filter("datum.on_frontier").mark_line(strokeWidth=1.5).encode(order="kld_mean:Q")
    tooltip = ["tool:N", "model:N", "quant:N", "split:N", "concurrency:Q", "depth:Q", "kld_mean:Q", f"{y}:Q",
               "service:N", "verdict:N", "missed:N"]
    shape = alt.Shape("model:N", legend=alt.Legend(orient="bottom"))

    def marked(service: str, **mark) -> alt.Chart:
        return base.transform_filter(alt.datum.service == service).mark_point(size=80, strokeWidth=1.5, **mark)\
            .encode(shape=shape, tooltip=tooltip)

    points = [marked(SERVICE_MARK[True], filled=True, opacity=1), marked(SERVICE_MARK[False], filled=False),
              marked(SERVICE_MARK[None], filled=False).encode(color=alt.value("#999"))]
    labels = base.mark_text(align="left", dx=7, dy=-7, fontSize=10).encode(text="label:N", color=alt.value("#333"))
    layers = [frontier, *points, labels]
    if axis["max_kld"] is not None:
        floor = alt.Chart(pl.DataFrame({"kld": [axis["max_kld"]], "text": [f"quality floor: KLD ≤ {axis['max_kld']:g}"]}))
        layers += [floor.mark_rule(strokeDash=[2, 2], color="#D55E00").encode(x="kld:Q"),
                   floor.mark_text(align="left", dx=4, y=8, fontSize=10, color="#D55E00").encode(
                       x="kld:Q", text="text:N")]
    if axis["clouds"]:
        clouds = pl.DataFrame({"cloud": list(axis["clouds"]), "price": list(axis["clouds"].values())})
        rule = alt.Chart(clouds).encode(y="price:Q")
        layers += [rule.mark_rule(strokeDash=[4, 3], color="#555"),
                   rule.mark_text(align="right", dy=-6, x="width", fontSize=10, color="#555").encode(
                       text=alt.Text("cloud:N"))]
    return alt.layer(*layers).properties(
        width=520, height=320, title=title_with_notes(title, wrap_notes([FRONTIER_NOTE, *notes])))
