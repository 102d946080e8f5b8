"""The figures' public names as they were before each chart family became a module of llmbench/outputs/figures, for the
callers that still import them from here (workflow/scripts/compare.py: ratio_chart, save_all; tests/test_quality.py:
pareto_chart, save_all). New code imports the family module; which function draws which figure is the catalog's
(llmbench/outputs/catalog.py)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from llmbench.outputs.catalog import RUNS, figures, output
from llmbench.outputs.figures.boxes import (  # noqa: F401
    DECODE,
    NGL_NOTE,
    OFFLOAD_COLUMNS,
    PREFILL,
    SHORT_WINDOW_S,
    TTFT,
    TWO_LINE_LABELS,
    MetricFigure,
    box_by_quant,
    energy_chart,
    energy_notes,
    metric_chart,
    ngl_text,
    prefill_notes,
    quant_labels,
    with_j_per_token,
)
from llmbench.outputs.figures.common import (  # noqa: F401
    BOX_COLUMNS,
    BOX_OUTLINE,
    LABEL_SEP,
    MIN_BAND,
    OKABE_ITO,
    PANEL_HEIGHT,
    PANEL_WIDTH_STEP,
    SPLIT_MODE_NOTES,
    TUKEY_EXTENT,
    WRAP,
    FigureDataError,
    at_base_level,
    box_step,
    label_notes,
    not_run_notes,
    notice_chart,
    precision_notes,
    save_all,
    split_mode_notes,
    unreported_notes,
)
from llmbench.outputs.figures.frameworks import framework_chart  # noqa: F401
from llmbench.outputs.figures.levels import depth_chart, load_energy_chart, load_latency_chart, serving_chart  # noqa: F401
from llmbench.outputs.figures.quality import FRONTIER_NOTE, KEY, KLD_TITLE, pareto_chart  # noqa: F401
from llmbench.outputs.figures.ratios import ratio_chart  # noqa: F401

# Output stem under results/figures → what draws it from the runs table and the study's name (the catalog's).
FIGURES = {f.name: f.function() for f in figures() if dict(f.inputs) == RUNS}


def write_figure(name: str, runs: pl.DataFrame, study: str, png: str | Path) -> list[Path]:
    """Draw figure ``name`` (a key of FIGURES) and write it as PNG, SVG and HTML beside ``png``."""
    if name not in FIGURES:
        raise FigureDataError(f"unknown figure {name!r}; known figures: {', '.join(FIGURES)}")
    return output(name).draw(runs, study, png)
