"""Figures with altair, from a study's rows (``results/summary/runs.parquet``, one row per generation).

Box plots of a per-generation metric per quant (coarsest quant left, by nominal bits per weight), one panel per
tool × model, split modes side by side; and the frameworks side by side on the same model file and quant. Rows
whose job did not run, and tools that report no value for a metric, are not drawn: the subtitle names them and
says why, so that an absent box is never silent.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import polars as pl

from llmbench.engines.registry import TOOLS
from llmbench.files import write_atomically
from llmbench.markdown import LABEL_MARK
from llmbench.meters import joules_per_token
from llmbench.quants import order_by_bits, rank
from llmbench.runs import with_all_columns
from llmbench.serving import level_table
from llmbench.stats import BASE_LEVEL_NOTE, GROUP, base_level, job_precision, pareto_front, precision_text, with_levels

# Whiskers at 1.5 IQR, points beyond them drawn: Tukey's box plot, as in the article.
TUKEY_EXTENT = 1.5

# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]

# A thin dark outline keeps Okabe–Ito's yellow box visible on white.
BOX_OUTLINE = {"stroke": "#333", "strokeWidth": 0.6}

# Quant labels are "Q4_0 · ngl 33"; the axis draws them on two lines so they can stay horizontal.
LABEL_SEP = " · "
TWO_LINE_LABELS = f"split(datum.label, '{LABEL_SEP}')"

# Characters per subtitle line: about the width of two panels at Vega's default 11 px subtitle font.
WRAP = 120

PANEL_WIDTH_STEP = 16  # px per box
MIN_BAND = 56  # px per quant: room for a label like "Q3_K_M" without overlap
PANEL_HEIGHT = 240

# NVML's energy counter steps about every 100 ms: a window under ~2 s reads low (FIELD.md).
SHORT_WINDOW_S = 2.0


# What every box-per-quant figure reads besides its metric.
BOX_COLUMNS = ["tool", "model", "quant", "split", "status", "status_reason", "n_gpu_layers"]


NGL_NOTE = ("ngl: layers on GPU, offloaded/total as the engine's log says where it does; else the setting"
            " (auto: llama.cpp fits it; default: the engine decides; all)")


class FigureDataError(ValueError):
    pass


def _require(runs: pl.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise FigureDataError(
            f"the runs table lacks column(s) {', '.join(missing)}; figures are drawn from results/summary/runs.parquet "
            f"as the aggregate rule writes it (llmbench.runs.RUN_SCHEMA): rerun that rule"
        )


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


def box_step(boxes: int) -> alt.Step:
    """Width of one box, given how many share a quant's band: never so narrow that the band is narrower than
    its label. (With an xOffset channel, Vega-Lite's step sizes the offset band, i.e. one box.)"""
    return alt.Step(max(PANEL_WIDTH_STEP, -(-MIN_BAND // boxes)), **{"for": "offset"})


def _wrap(lines: list[str]) -> list[str]:
    return [part for line in lines for part in textwrap.wrap(line, WRAP, subsequent_indent="    ")]


def not_run_notes(runs: pl.DataFrame) -> list[str]:
    """One line per tool and reason whose jobs did not run (status other than ok), naming model and quants."""
    rows = runs.filter(pl.col("status") != "ok")
    if rows.is_empty():
        return []
    groups = rows.group_by("tool", "status", "status_reason").agg(
        pl.format("{} {}", "model", "quant").unique().sort().str.join(", ").alias("what")
    ).sort("tool", "status_reason")
    return [f"{r['status']}, not drawn: {r['tool']} ({r['what']}): {r['status_reason'] or 'no reason recorded'}"
            for r in groups.iter_rows(named=True)]


def at_base_level(runs: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The rows a per-quant or per-framework box compares (stats.base_level), and a note where a load or depth
    sweep was left out of it."""
    base = base_level(runs)
    return base, [f"{BASE_LEVEL_NOTE}"] if base.height < runs.height else []


def unreported_notes(runs: pl.DataFrame, metric: str, what: str, reason_column: str | None = None) -> list[str]:
    """Tools that ran but gave no value of ``metric`` in any row, with the recorded reason where there is one."""
    ok = runs.filter(pl.col("status") == "ok")
    tools = ok.group_by("tool").agg(
        pl.col(metric).is_not_null().any().alias("has"),
        (pl.col(reason_column).drop_nulls().unique().sort().str.join("; ") if reason_column
         else pl.lit("")).alias("why"),
    ).filter(~pl.col("has"))
    # Tools sharing a reason share a line: a CPU study has the same one for every engine.
    lines = tools.group_by("why").agg(pl.col("tool").sort().str.join(", ")).sort("tool")
    return [f"{what} not reported by {r['tool']}" + (f": {r['why']}" if r["why"] else "")
            for r in lines.iter_rows(named=True)]


def _mark() -> pl.Expr:
    """" ≠" after a quant whose file is not what its label says (llmbench.tensor_mix), else nothing."""
    return pl.when(pl.col("quant_label_note").is_not_null()).then(pl.lit(f" {LABEL_MARK}")).otherwise(pl.lit(""))


def label_notes(data: pl.DataFrame) -> list[str]:
    """One line per marked quant drawn, naming what ran: what its file holds ("≠ Q4_K_M (m): 52 % Q5_0, …"), or
    for a model the engine resolved itself (an Ollama tag, no file of the study) the engine's own note."""
    if "quant_label_note" not in data.columns:
        return []
    marked = data.filter(pl.col("quant_label_note").is_not_null()).select(
        "model", "quant", pl.coalesce("tensor_mix", "quant_label_note").alias("tensor_mix")).unique()
    marked = marked.with_columns(pl.col("quant").replace_strict(rank(marked["quant"]), return_dtype=pl.Int64)
                                 .alias("_rank")).sort("model", "_rank")
    if marked.is_empty():
        return []
    return [f"{LABEL_MARK}: what ran is not what its label says (a file's tensors that fell back, by weight bytes, "
            "or the type the engine loaded; the quality table's notes name them):",
            *[f"    {r['quant']} ({r['model']}): {r['tensor_mix']}" for r in marked.iter_rows(named=True)]]


def precision_notes(data: pl.DataFrame) -> list[str]:
    """One line per tool drawn: the precision each of its jobs (boxes) reached (stats.precision_text, short), e.g.
    "precision of llama-server (95% CI of the median round decode rate): Q8_0 ±1.2%, Q4_0 target ±2% not
    reached: ±3.1% after 20 rounds"; the model named where the figure has several, the split mode where the tool
    ran several. Nothing where no row records a precision (a study measured before rounds)."""
    # A tool's split modes are named where it drew boxes in more than one, whether or not each recorded a precision.
    jobs = job_precision(data).with_columns(pl.col("split").n_unique().over("tool").alias("_splits"))
    jobs = jobs.filter(pl.col("precision_rounds").is_not_null())
    if jobs.is_empty():
        return []
    jobs = jobs.with_columns(pl.col("quant").replace_strict(rank(jobs["quant"]), return_dtype=pl.Int64).alias("_rank"))
    models = jobs["model"].n_unique() > 1
    lines = []
    for (tool, confidence), rows in jobs.sort("tool", "model", "_rank", "split", "concurrency", "depth").group_by(
            "tool", "precision_confidence", maintain_order=True):
        boxes = [(f"{r['model']} " if models else "") + r["quant"] + (f" ({r['split']})" if r["_splits"] > 1 else "")
                 + f" {precision_text(r, short=True)}" for r in rows.iter_rows(named=True)]
        ci = f"{confidence:.0%} CI" if confidence is not None else "CI"
        lines.append(f"precision of {tool} ({ci} of the median round decode rate): {', '.join(boxes)}")
    return lines


def quant_labels(data: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Add ``quant_label`` ("Q4_0 · ngl 33/33": layers on GPU per tool × model × quant, "a, b" where split modes
    differ) and return the labels ordered coarse to fine by nominal bits per weight."""
    key = ["tool", "model", "quant"]
    data = data.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in
                             {**OFFLOAD_COLUMNS, "quant_label_note": pl.String}.items() if c not in data.columns)
    ngl = data.with_columns(ngl_text().alias("_ngl")).group_by(key).agg(
        pl.col("_ngl").unique().sort().str.join(", ").alias("_ngl"))
    data = data.join(ngl, on=key, how="left").with_columns(
        pl.format("{}{}{}ngl {}", "quant", _mark(), pl.lit(LABEL_SEP), "_ngl").alias("quant_label")).drop("_ngl")
    labels = data.select("quant", "quant_label").unique().with_columns(
        pl.col("quant").replace_strict(rank(data["quant"]), return_dtype=pl.Int64).alias("_rank")
    ).sort("_rank", "quant_label")["quant_label"].to_list()
    return data, labels


def _title(title: str, notes: list[str]) -> alt.TitleParams:
    subtitle = _wrap(notes)
    return alt.TitleParams(title, subtitle=subtitle, anchor="start") if subtitle else alt.TitleParams(title, anchor="start")


def notice_chart(title: str, notes: list[str], message: str) -> alt.Chart:
    """What a figure is when nothing can be drawn: the message in the plot area, the reasons in the subtitle."""
    return alt.Chart(pl.DataFrame({"message": [message]})).mark_text(fontSize=14, color="#333").encode(
        text="message:N").properties(width=520, height=80, title=_title(title, notes))


def box_by_quant(runs: pl.DataFrame, metric: str, title: str, axis_title: str, notes: list[str] | None = None,
                 series: str = "split", series_title: str = "split mode") -> alt.Chart | alt.FacetChart:
    """Tukey box plots of ``metric`` per quant, one panel per tool × model, ``series`` (split mode) side by side.

    Panels have their own x axis (only the quants that tool ran). The y range is the same in every panel while
    the study has one model, so that tools compare at a glance, and per panel otherwise (8B and 70B differ
    tenfold); each panel draws its own y axis, as Vega misplaces a shared one beside panels of unequal width.
    """
    _require(runs, [*BOX_COLUMNS, metric, series])
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
        x="independent", y="independent").properties(title=_title(title, notes))


# What upstream says of two of llama.cpp's split modes, for every figure that draws them.
SPLIT_MODE_NOTES = {
    "row": "split mode row: deprecated upstream, superseded by tensor (llama.cpp docs/multi-gpu.md, PR #22729)",
    "tensor": "split mode tensor: experimental in the pinned build (llama-server --help; llama.cpp PR #19378)",
}


def split_mode_notes(runs: pl.DataFrame) -> list[str]:
    """The notes on the split modes drawn (rows that ran)."""
    drawn = set(runs.filter(pl.col("status") == "ok")["split"].unique().to_list())
    return [note for mode, note in SPLIT_MODE_NOTES.items() if mode in drawn]


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
    _require(runs, [*BOX_COLUMNS, figure.metric])
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
    _require(runs, [*BOX_COLUMNS, "energy_j", "generated_tokens", "energy_is_estimate", "energy_source",
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


def framework_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    """Decode tokens/s of every tool (and split mode) side by side on the same model file and quant, one panel per
    model; only the model × quant pairs that more than one of them ran."""
    metric = "decode_tokens_per_s"
    _require(runs, ["tool", "model", "quant", "split", "status", "status_reason", metric])
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
    data = with_all_columns(data).with_columns(pl.concat_str(pl.col("quant"), _mark()).alias("quant_shown"))
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
        x="independent", y="independent").properties(title=_title(title, notes))


def _level_lines(data: pl.DataFrame, x: str, y: str, x_title: str, y_title: str, color: str = "quant",
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
    level (clients at once), one line per quant, one panel per tool × model (llmbench.serving.level_table)."""
    title = f"{study}: the served model, server output against per-user decode speed, one point per load level"
    table = level_table(runs).filter(pl.col("depth") == 0)
    notes = ["server output tokens/s: all requests' output tokens over the level's window; per user: the median of "
             "the requests' own decode speeds; labels: clients at once", *not_run_notes(runs)]
    if table.filter(pl.col("concurrency") > 1).is_empty():
        return notice_chart(title, notes, "no load sweep: no job ran more than one request at a time")
    chart = _level_lines(table, "per_user_decode_tokens_per_s", "server_output_tokens_per_s",
                         "per-user decode speed [tokens/s]", "server output [tokens/s]", label="concurrency")
    return chart.properties(title=_title(title, notes))


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
    chart = _level_lines(measured, "concurrency", "j_per_output_token", "clients at once",
                         "energy per output token [J/token]")
    return chart.properties(title=_title(title, notes))


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
    chart = _level_lines(long, "concurrency", "ms", "clients at once", "latency [ms]", color="series",
                         color_title="quant and latency", dash="percentile")
    return chart.properties(title=_title(title, notes))


def depth_chart(runs: pl.DataFrame, study: str) -> alt.FacetChart | alt.Chart:
    """Median decode tokens/s against the context depth (tokens already in the context), one line per quant, one
    panel per tool × model; one request at a time."""
    title = f"{study}: decode speed against context depth"
    _require(runs, [*BOX_COLUMNS, "decode_tokens_per_s"])
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
    chart = _level_lines(data, "depth", "decode_tokens_per_s", "context depth [tokens]", "decode speed [tokens/s]")
    return chart.properties(title=_title(title, notes))


# Output stem under results/figures → what draws it from the runs table and the study's name.
FIGURES: dict[str, Callable[[pl.DataFrame, str], alt.TopLevelMixin]] = {
    **{f.metric: functools.partial(metric_chart, figure=f) for f in (DECODE, PREFILL, TTFT)},
    "energy_per_token": energy_chart,
    "frameworks_decode_tokens_per_s": framework_chart,
    "serving_throughput": serving_chart,
    "energy_per_token_by_load": load_energy_chart,
    "latency_by_load": load_latency_chart,
    "decode_by_depth": depth_chart,
}


def write_figure(name: str, runs: pl.DataFrame, study: str, png: str | Path) -> list[Path]:
    """Draw figure ``name`` (a key of FIGURES) and write it as PNG, SVG and HTML beside ``png``."""
    if name not in FIGURES:
        raise FigureDataError(f"unknown figure {name!r}; known figures: {', '.join(FIGURES)}")
    return save_all(FIGURES[name](runs, study), png)


def save_all(chart: alt.TopLevelMixin, stem: str | Path) -> list[Path]:
    """PNG and SVG through vl-convert, and an HTML page with its scripts inlined (works offline)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, kw in (("png", {"scale_factor": 2}), ("svg", {}), ("html", {"inline": True})):
        path = stem.with_suffix(f".{ext}")
        # Under a temporary name (format given: altair reads it from the suffix otherwise), moved into place whole.
        write_atomically(path, lambda tmp, ext=ext, kw=kw: chart.save(str(tmp), format=ext, **kw))
        out.append(path)
    return out


# The quality figure: mean KLD against speed or cost, per model (llmbench.quality's table).
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
        pl.concat_str(pl.col("quant"), _mark()).alias("label"))
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
    subtitle = _wrap([FRONTIER_NOTE, *label_notes(data)])
    return alt.layer(line, points, labels).properties(width=320, height=240).facet(
        facet=alt.Facet("model:N", title=None), columns=2).properties(title=alt.TitleParams(title, subtitle=subtitle))


def ratio_chart(table: pl.DataFrame) -> alt.Chart:
    """Decode-speed ratio B/A per group with its bootstrap interval; the dashed rule at 1 is "no change"."""
    data = table.filter(pl.col("decode_ratio").is_not_null()).select(
        pl.concat_str([pl.col(c).cast(pl.String) for c in GROUP], separator=" · ").alias("group"), "tool", "decode_ratio", "decode_low", "decode_high")
    base = alt.Chart(data).encode(y=alt.Y("group:N", title=None, sort=None),
                                  color=alt.Color("tool:N", scale=alt.Scale(range=OKABE_ITO)))
    bars = base.mark_rule(strokeWidth=2).encode(x=alt.X("decode_low:Q", title="decode tok/s ratio B/A (95 % CI)",
                                                        scale=alt.Scale(zero=False)), x2="decode_high:Q")
    points = base.mark_point(filled=True, size=60).encode(
        x="decode_ratio:Q", tooltip=["group:N", "decode_ratio:Q", "decode_low:Q", "decode_high:Q"])
    one = alt.Chart(pl.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 4], color="#333").encode(x="x:Q")
    return alt.layer(bars, points, one).properties(width=420, title="decode speed, B over A")
