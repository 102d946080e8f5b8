"""What every figure shares: the colours and box style, the notes under a title (jobs not run and why, tools that
report no value, the quant labels that are not what ran, the precision each box reached, what upstream says of a
split mode), titles with those notes, and writing a chart as PNG, SVG and HTML.

Each chart family is a module of its own beside this one (boxes, frameworks, levels, quality, ratios); the catalog
(llmbench/outputs/catalog.py) names which function draws which figure.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import altair as alt
import polars as pl

from llmbench.core.files import write_atomically
from llmbench.core.quants import rank
from llmbench.outputs.markdown import LABEL_MARK
from llmbench.outputs.stats import BASE_LEVEL_NOTE, base_level, job_precision, precision_text

# Whiskers at 1.5 IQR, points beyond them drawn: Tukey's box plot, as in the article.
TUKEY_EXTENT = 1.5

# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]

# A thin dark outline keeps Okabe–Ito's yellow box visible on white.
BOX_OUTLINE = {"stroke": "#333", "strokeWidth": 0.6}

# Between the parts of a label: a panel's "tool · model", a quant's "Q4_0 · ngl 33".
LABEL_SEP = " · "

# Characters per subtitle line: about the width of two panels at Vega's default 11 px subtitle font.
WRAP = 120

PANEL_WIDTH_STEP = 16  # px per box
MIN_BAND = 56  # px per quant: room for a label like "Q3_K_M" without overlap
PANEL_HEIGHT = 240

# What every figure of the runs table reads besides its metric.
BOX_COLUMNS = ["tool", "model", "quant", "split", "status", "status_reason", "n_gpu_layers"]


class FigureDataError(ValueError):
    pass


def require_columns(runs: pl.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise FigureDataError(
            f"the runs table lacks column(s) {', '.join(missing)}; figures are drawn from results/summary/runs.parquet "
            f"as the aggregate rule writes it (llmbench.engines.runs.RUN_SCHEMA): rerun that rule"
        )


def box_step(boxes: int) -> alt.Step:
    """Width of one box, given how many share a quant's band: never so narrow that the band is narrower than
    its label. (With an xOffset channel, Vega-Lite's step sizes the offset band, i.e. one box.)"""
    return alt.Step(max(PANEL_WIDTH_STEP, -(-MIN_BAND // boxes)), **{"for": "offset"})


def wrap_notes(lines: list[str]) -> list[str]:
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


def mark_expr() -> pl.Expr:
    """" ≠" after a quant whose file is not what its label says (llmbench.modelfiles.tensor_mix), else nothing."""
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


def title_with_notes(title: str, notes: list[str]) -> alt.TitleParams:
    subtitle = wrap_notes(notes)
    return alt.TitleParams(title, subtitle=subtitle, anchor="start") if subtitle else alt.TitleParams(title, anchor="start")


def notice_chart(title: str, notes: list[str], message: str) -> alt.Chart:
    """What a figure is when nothing can be drawn: the message in the plot area, the reasons in the subtitle."""
    return alt.Chart(pl.DataFrame({"message": [message]})).mark_text(fontSize=14, color="#333").encode(
        text="message:N").properties(width=520, height=80, title=title_with_notes(title, notes))


# What upstream says of two of llama.cpp's split modes, for every figure that draws them.
SPLIT_MODE_NOTES = {
    "row": "split mode row: deprecated upstream, superseded by tensor (llama.cpp docs/multi-gpu.md, PR #22729)",
    "tensor": "split mode tensor: experimental in the pinned build (llama-server --help; llama.cpp PR #19378)",
}


def split_mode_notes(runs: pl.DataFrame) -> list[str]:
    """The notes on the split modes drawn (rows that ran)."""
    drawn = set(runs.filter(pl.col("status") == "ok")["split"].unique().to_list())
    return [note for mode, note in SPLIT_MODE_NOTES.items() if mode in drawn]


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
