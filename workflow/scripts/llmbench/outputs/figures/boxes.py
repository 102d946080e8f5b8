"""Box plots per quant, from a study's rows (``results/summary/runs.parquet``, one row per generation): decode and
prefill speed, time to first token, energy per generated token.

Tukey boxes of a per-generation metric per quant (coarsest quant left, by nominal bits per weight), one panel per
tool × model, split modes side by side. Rows whose job did not run, and tools that report no value for a metric,
are not drawn: the subtitle names them and says why, so that an absent box is never silent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import altair as alt
import polars as pl

from llmbench.core.quants import rank
from llmbench.devices.meters import joules_per_token
from llmbench.engines.registry import TOOLS
from llmbench.engines.runs import with_all_columns
from llmbench.outputs.figures.common import (
    BOX_COLUMNS,
    BOX_OUTLINE,
    LABEL_SEP,
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

# Quant labels are "Q4_0 · ngl 33"; the axis draws them on two lines so they can stay horizontal.
TWO_LINE_LABELS = f"split(datum.label, '{LABEL_SEP}')"

# NVML's energy counter steps about every 100 ms: a window under ~2 s reads low (FIELD.md).
SHORT_WINDOW_S = 2.0

NGL_NOTE = ("ngl: layers on GPU, offloaded/total as the engine's log says where it does; else the setting"
            " (auto: llama.cpp fits it; default: the engine decides; all)")

# Offload columns that rows written before they existed lack: read as unknown.
OFFLOAD_COLUMNS = {"n_gpu_layers_auto": pl.Boolean, "n_gpu_layers_offloaded": pl.Int64, "n_layers_total": pl.Int64}


def ngl_text() -> pl.Expr:
    """Layers on GPU as a label: what the engine's log says it offloaded, of how many ("33/33"), where known;
    else the setting: "auto" (llama.cpp fits it), "default" (null: the engine decides, as Ollama), "all" (a
    negative count, as vLLM)."""
    n, off, total = pl.col("n_gpu_layers"), pl.col("n_gpu_layers_offloaded"), pl.col("n_layers_total")
    return (
        pl.when(off.is_not_null() & total.is_not_null()).then(pl.format("{}/{}", off, total))
        .when(off.is_not_null()).then(off.cast(pl.String))
        .when(pl.col("n_gpu_layers_auto").fill_null(False)).then(pl.lit("auto"))
        .when(n.is_null()).then(pl.lit("default"))
        .when(n < 0).then(pl.lit("all"))
        .otherwise(n.cast(pl.String))
    )


def quant_labels(data: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Add ``quant_label`` ("Q4_0 · ngl 33/33": layers on GPU per tool × model × quant, "a, b" where split modes
    differ) and return the labels ordered coarse to fine by nominal bits per weight."""
    key = ["tool", "model", "quant"]
    data = data.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in
                             {**OFFLOAD_COLUMNS, "quant_label_note": pl.String}.items() if c not in data.columns)
    ngl = data.with_columns(ngl_text().alias("_ngl")).group_by(key).agg(
        pl.col("_ngl").unique().sort().str.join(", ").alias("_ngl"))
    data = data.join(ngl, on=key, how="left").with_columns(
        pl.format("{}{}{}ngl {}", "quant", mark_expr(), pl.lit(LABEL_SEP), "_ngl").alias("quant_label")).drop("_ngl")
    labels = data.select("quant", "quant_label").unique().with_columns(
        pl.col("quant").replace_strict(rank(data["quant"]), return_dtype=pl.Int64).alias("_rank")
    ).sort("_rank", "quant_label")["quant_label"].to_list()
    return data, labels


def box_by_quant(runs: pl.DataFrame, metric: str, title: str, axis_title: str, notes: list[str] | None = None,
                 series: str = "split", series_title: str = "split mode") -> alt.Chart | alt.FacetChart:
    """Tukey box plots of ``metric`` per quant, one panel per tool × model, ``series`` (split mode) side by side.

    Panels have their own x axis (only the quants that tool ran). The y range is the same in every panel while
    the study has one model, so that tools compare at a glance, and per panel otherwise (8B and 70B differ
    tenfold); each panel draws its own y axis, as Vega misplaces a shared one beside panels of unequal width.
    """
    require_columns(runs, [*BOX_COLUMNS, metric, series])
    notes = [*(notes or []), *split_mode_notes(runs), *not_run_notes(runs)]
    data = runs.filter((pl.col("status") == "ok") & pl.col(metric).is_not_null())
    if data.is_empty():
        return notice_chart(title, notes, f"nothing to draw: no {axis_title} in any row that ran (reasons above)")
    notes += [NGL_NOTE, *label_notes(data), *precision_notes(data)]
    data, labels = quant_labels(data.with_columns(pl.concat_str(["tool", "model"], separator=LABEL_SEP).alias("panel")))
    series_values = sorted(data[series].unique().to_list())
    y_scale = (alt.Scale(domain=[0, data[metric].max()], nice=True) if data["model"].n_unique() == 1
               else alt.Scale(zero=True))
    chart = alt.Chart(data.select("panel", "quant_label", series, metric)).mark_boxplot(
        extent=TUKEY_EXTENT, size=PANEL_WIDTH_STEP - 4, median={"color": "black"},
        outliers={"size": 18}, rule={"color": "#333"}, box=BOX_OUTLINE,
    ).encode(
        x=alt.X("quant_label:N", sort=labels, title="quant, coarsest left; ngl: layers on GPU",
                axis=alt.Axis(labelAngle=0, labelExpr=TWO_LINE_LABELS, labelLimit=90)),
        xOffset=alt.XOffset(f"{series}:N", sort=series_values),
        y=alt.Y(f"{metric}:Q", title=axis_title, scale=y_scale),
        color=alt.Color(f"{series}:N", sort=series_values, title=series_title,
                        scale=alt.Scale(domain=series_values, range=OKABE_ITO),
                        legend=alt.Legend(orient="top", direction="horizontal")),
    ).properties(width=box_step(len(series_values)), height=PANEL_HEIGHT)
    return chart.facet(facet=alt.Facet("panel:N", title=None, header=alt.Header(labelFontSize=12)), columns=2).resolve_scale(
        x="independent", y="independent").properties(title=title_with_notes(title, notes))


@dataclass(frozen=True)
class MetricFigure:
    """A box-per-quant figure of one timing column of the runs table, and what its title and notes say."""

    metric: str  # the runs table's column drawn
    what: str  # the metric in words, for "… not reported by <tool>"
    title: str  # after "<study>: "
    axis_title: str
    notes: Callable[[pl.DataFrame], list[str]] = lambda runs: []  # before the tools that report no value


def metric_chart(runs: pl.DataFrame, study: str, figure: MetricFigure) -> alt.FacetChart | alt.Chart:
    """Tukey box plots of ``figure.metric`` per quant (box_by_quant), titled and annotated as ``figure`` says."""
    require_columns(runs, [*BOX_COLUMNS, figure.metric])
    runs, level = at_base_level(runs)
    return box_by_quant(
        runs, figure.metric,
        title=f"{study}: {figure.title} (Tukey box plots, whiskers 1.5 IQR)",
        axis_title=figure.axis_title,
        notes=[*level, *figure.notes(runs), *unreported_notes(runs, figure.metric, figure.what)],
    )


def prefill_notes(runs: pl.DataFrame) -> list[str]:
    # Engines that report no prefill time of their own time prefill as the time to the first token (registry).
    ttft_tools = {name for name, t in TOOLS.items() if t.prefill_is_ttft}
    ran = sorted(set(runs.filter(pl.col("status") == "ok")["tool"].to_list()) & ttft_tools)
    if not ran:
        return []
    return [f"{', '.join(ran)} report no prefill time: there prefill is the time to the first token, so the speed"
            " drawn is a lower bound"]


DECODE = MetricFigure("decode_tokens_per_s", "decode speed", "decode speed per quant", "decode speed [tokens/s]")


PREFILL = MetricFigure("prefill_tokens_per_s", "prefill speed", "prefill (prompt processing) speed per quant",
                       "prefill speed [prompt tokens/s]", prefill_notes)


TTFT = MetricFigure("ttft_ms", "time to first token", "time to first token per quant", "time to first token [ms]",
                    lambda runs: ["time to first token on the client's clock, from sending the request"])


def with_j_per_token(runs: pl.DataFrame) -> pl.DataFrame:
    """``j_per_token`` per generation: its window's gross energy over the tokens it generated (prefill included,
    as the article's P / (tokens/s)); null where no energy or no token. Estimates are marked in ``energy_kind``."""
    require_columns(runs, [*BOX_COLUMNS, "energy_j", "generated_tokens", "energy_is_estimate", "energy_source",
                    "energy_window_s", "energy_null_reason"])
    runs = with_all_columns(runs)
    return runs.with_columns(
        # A window too short for its sensor (meters.validity) is left out, as in the cost table.
        pl.when((pl.col("generated_tokens") > 0) & pl.col("energy_valid").fill_null(True))
        .then(joules_per_token(pl.col("energy_j"), pl.col("generated_tokens"))).alias("j_per_token"),
        pl.when(pl.col("energy_is_estimate").fill_null(False))
        .then(pl.col("split") + " (estimate, not measured)").otherwise(pl.col("split")).alias("energy_kind"),
    )


def energy_notes(runs: pl.DataFrame) -> list[str]:
    ok = runs.filter((pl.col("status") == "ok") & pl.col("j_per_token").is_not_null())
    notes = ["gross energy of each generation's window (prefill + decode, idle not subtracted) over its generated"
             " tokens; the cost table sums energy over all windows before dividing"]
    sources = ok.filter(~pl.col("energy_is_estimate").fill_null(False))["energy_source"].drop_nulls().unique().sort()
    if len(sources):
        notes.append("measured with: " + ", ".join(sources))
    estimates = ok.filter(pl.col("energy_is_estimate").fill_null(False))["energy_source"].drop_nulls().unique().sort()
    notes += [f"estimate, not a measurement: {s}" for s in estimates]
    left_out = runs.filter((pl.col("status") == "ok") & (pl.col("energy_valid") == False))  # noqa: E712
    if left_out.height:
        notes.append(f"{left_out.height} windows left out: {left_out['energy_invalid_reason'][0]}")
    short = ok.filter(pl.col("energy_window_s") < SHORT_WINDOW_S).height
    if short:
        notes.append(f"{short} of {ok.height} windows are shorter than {SHORT_WINDOW_S:g} s: NVML's counter steps"
                     " about every 100 ms, so these read low")
    return notes + unreported_notes(runs, "j_per_token", "energy", "energy_null_reason")


def energy_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    """J per generated token per quant, split modes side by side; where no energy was measured the figure says
    so in its title and lists the recorded reasons."""
    runs, level = at_base_level(with_j_per_token(runs))
    title = f"{study}: energy per generated token per quant (Tukey box plots, whiskers 1.5 IQR)"
    if runs.filter(pl.col("status") == "ok")["j_per_token"].is_null().all():
        title = f"{study}: energy per generated token: not measured in this study"
    return box_by_quant(runs, "j_per_token", title=title, axis_title="energy per generated token [J/token]",
                        notes=[*level, *energy_notes(runs)], series="energy_kind", series_title="split mode")


def decode_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    return metric_chart(runs, study, DECODE)


def prefill_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    return metric_chart(runs, study, PREFILL)


def ttft_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    return metric_chart(runs, study, TTFT)
