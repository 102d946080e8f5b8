"""Figures with altair: box plots of a per-generation metric per quant, one panel per tool × model × split."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

from llmbench.quants import order_by_bits

# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
# Whiskers at 1.5 IQR, points beyond them drawn: Tukey's box plot, as in the article.
TUKEY_EXTENT = 1.5

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]


def box_by_quant(runs: pl.DataFrame, metric: str, title: str, axis_title: str) -> alt.Chart:
    data = runs.filter(pl.col(metric).is_not_null()).with_columns(
        pl.concat_str(["tool", "model", "split"], separator=" · ").alias("panel"),
        (pl.col("quant") + " (ngl " + pl.col("n_gpu_layers").cast(pl.String) + ")").alias("quant_label"),
    )
    order = order_by_bits(data["quant"].unique().to_list())
    labels = (
        data.select("quant", "quant_label").unique().with_columns(
            pl.col("quant").replace_strict({q: i for i, q in enumerate(order)}).alias("rank")
        ).sort("rank")["quant_label"].to_list()
    )
    chart = alt.Chart(data.select("panel", "quant_label", metric)).mark_boxplot(extent=TUKEY_EXTENT, size=22).encode(
        x=alt.X("quant_label:N", sort=labels, title="quant (coarsest left; layers on GPU in brackets)"),
        y=alt.Y(f"{metric}:Q", title=axis_title, scale=alt.Scale(zero=True)),
        color=alt.Color("quant_label:N", sort=labels, scale=alt.Scale(range=OKABE_ITO), legend=None),
    ).properties(width=360, height=240)
    return chart.facet(facet=alt.Facet("panel:N", title=None), columns=2).properties(title=title)



def save_all(chart: alt.Chart, stem: str | Path) -> list[Path]:
    """PNG and SVG through vl-convert, and an HTML page with its scripts inlined (works offline)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, kw in (("png", {"scale_factor": 2}), ("svg", {}), ("html", {"inline": True})):
        path = stem.with_suffix(f".{ext}")
        chart.save(str(path), **kw)
        out.append(path)
    return out
