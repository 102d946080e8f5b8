"""The framework table: one row per tool, what it is (facts kept in each tool's registry record with their
sources) beside what the study measured of it (load time, peak memory, decode speed) and, where it did not run,
why."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import polars as pl

from llmbench.core.quants import order_by_bits, rank
from llmbench.engines.registry import TOOLS
from llmbench.outputs.markdown import LABEL_MARK, Footnotes, fmt, pipe_table
from llmbench.outputs.stats import GROUP, base_level, with_levels

FACT_KEYS = ("family", "installs", "gpu_offload", "multi_gpu", "gguf", "python_api", "sources")
FACT_TITLES = {"installs": "how it installs here", "gpu_offload": "GPU offload", "multi_gpu": "multi-GPU modes",
               "gguf": "GGUF support", "python_api": "Python API"}
SCHEMA = {
    "tool": pl.String, **{k: pl.String for k in FACT_KEYS},
    "ran": pl.String, "generations": pl.Int64,
    "median_load_ms": pl.Float64, "load_null_reason": pl.String,
    "max_peak_rss_bytes": pl.Int64, "peak_rss_null_reason": pl.String,
    "max_gpu_mem_used_bytes": pl.Int64, "gpu_mem_null_reason": pl.String,
    "compare_on": pl.String, "median_decode_tokens_per_s": pl.Float64, "decode_null_reason": pl.String,
    "median_decode_tokens_per_s_all": pl.String, "not_run_here": pl.String,
}


def registry_facts() -> dict[str, dict[str, Any]]:
    """Every registered tool's facts (llmbench.engines.registry), in the registry's order, as plain values."""
    return {name: dataclasses.asdict(t.facts) for name, t in TOOLS.items()}


def compare_point(runs: pl.DataFrame) -> tuple[str, str] | None:
    """The (model, quant) that the most tools ran: the one where their decode speeds compare like for like.

    Ties go to the coarser quant, then the model's name, so the choice does not depend on row order."""
    ok = runs.filter(pl.col("status") == "ok").select("tool", "model", "quant").unique()
    if ok.is_empty():
        return None
    counts = ok.group_by("model", "quant").agg(pl.col("tool").n_unique().alias("tools"))
    order = rank(counts["quant"])
    best = min(counts.iter_rows(named=True), key=lambda r: (-r["tools"], order[r["quant"]], r["model"]))
    return best["model"], best["quant"]


def _ran(ok: pl.DataFrame) -> str | None:
    """'model: quants (split modes)' for what ran, quants coarsest first; a quant whose rows say that what ran is
    not what its label says (quant_label_note: a file's fallbacks, an Ollama tag that moved) marked LABEL_MARK."""
    parts = []
    noted = (ok.filter(pl.col("quant_label_note").is_not_null()) if "quant_label_note" in ok.columns
             else ok.clear()).select("model", "quant").unique().rows()
    for (model,), g in ok.group_by("model", maintain_order=True):
        quants = ", ".join(f"{q} {LABEL_MARK}" if (model, q) in noted else q
                           for q in order_by_bits(g["quant"].unique().to_list()))
        parts.append(f"{model}: {quants} (split {', '.join(sorted(g['split'].unique()))})")
    return "; ".join(sorted(parts)) or None


def _measured(tool: str, mine: pl.DataFrame, point: tuple[str, str] | None) -> dict[str, Any]:
    ok = mine.filter(pl.col("status") == "ok")
    # A job loads once, but its load time is repeated on each of its rows: one value per job, then the median.
    loads = with_levels(ok).group_by(GROUP).agg(pl.col("load_ms").drop_nulls().first())["load_ms"].drop_nulls()
    rss, gpu_mem = ok["peak_rss_bytes"].drop_nulls(), ok["gpu_mem_used_bytes"].drop_nulls()
    gpu_jobs = ok.filter(pl.col("gpus").fill_null(0) > 0)
    not_run = mine.filter(pl.col("status") != "ok")
    reasons = not_run.group_by("status_reason").agg(pl.col("quant").unique()).sort("status_reason")
    not_run_text = "; ".join(
        f"{', '.join(order_by_bits(r['quant']))}: {r['status_reason'] or 'skipped'}"
        for r in reasons.iter_rows(named=True)) or None
    out: dict[str, Any] = {
        "ran": _ran(ok), "generations": ok.height,
        "median_load_ms": loads.median() if loads.len() else None,
        "load_null_reason": None if loads.len() else ("did not run here" if ok.is_empty()
                                                      else f"{tool} reports no load time in this workflow"),
        "max_peak_rss_bytes": rss.max() if rss.len() else None,
        "peak_rss_null_reason": None if rss.len() else ("did not run here" if ok.is_empty()
                                                        else f"{tool}'s engine RSS is not read in this workflow"),
        "max_gpu_mem_used_bytes": gpu_mem.max() if gpu_mem.len() else None,
        "gpu_mem_null_reason": None if gpu_mem.len() else ("did not run here" if ok.is_empty()
                                                           else "no GPU job" if gpu_jobs.is_empty()
                                                           else "GPU memory not read"),
        "not_run_here": not_run_text,
    }
    by_quant = ok.group_by("model", "quant").agg(pl.col("decode_tokens_per_s").median()).drop_nulls()
    out["median_decode_tokens_per_s_all"] = "; ".join(
        f"{model}: " + ", ".join(f"{q} {fmt(speed[q])}" for q in order_by_bits(list(speed)))
        for (model,), g in sorted(by_quant.group_by("model"), key=lambda kg: kg[0])
        for speed in [dict(zip(g["quant"], g["decode_tokens_per_s"], strict=True))]) or None
    if point is None:
        out.update(compare_on=None, median_decode_tokens_per_s=None, decode_null_reason="no tool ran here")
        return out
    # Every split mode the tool ran on that file counts: the 'ran' column names them.
    at = ok.filter((pl.col("model") == point[0]) & (pl.col("quant") == point[1]))["decode_tokens_per_s"].drop_nulls()
    out.update(
        compare_on=f"{point[0]} {point[1]}",
        median_decode_tokens_per_s=at.median() if at.len() else None,
        decode_null_reason=None if at.len() else (
            "did not run here" if ok.is_empty() else f"did not run {point[0]} {point[1]}"),
    )
    return out


def framework_table(runs: pl.DataFrame, facts: Mapping[str, Mapping[str, Any]]) -> pl.DataFrame:
    """One row per tool of ``facts`` (registry_facts()), in its order: the facts, then what the study measured
    one request at a time on an empty context (stats.base_level)."""
    # Speeds compare one request at a time on an empty context; the sweeps have the serving and depth outputs.
    base = base_level(runs)
    point = compare_point(base)
    rows = []
    for tool, entry in facts.items():
        mine = base.filter(pl.col("tool") == tool)
        fact = {k: entry[k] for k in FACT_KEYS if k != "sources"}
        fact["sources"] = "; ".join(entry["sources"])
        if mine.is_empty():
            absent = ("ran only at load levels above 1 or depths above 0 (the serving table and depth figure have "
                      "them)" if (runs["tool"] == tool).any() else "not in this study's config")
            measured = {"generations": 0, "not_run_here": absent, "load_null_reason": absent,
                        "peak_rss_null_reason": absent, "gpu_mem_null_reason": absent, "decode_null_reason": absent}
        else:
            measured = _measured(tool, mine, point)
        rows.append({"tool": tool, **fact, **measured})
    return pl.DataFrame(rows, schema=SCHEMA)


def render_markdown(table: pl.DataFrame) -> str:
    """Two tables for people: what each tool is, then what it did here; reasons and sources as footnotes."""
    note = Footnotes()

    def mib(v: int | None, reason: str | None) -> str:
        return f"{v / 2**20:.0f}" if v is not None else f"— {note(reason or 'not measured')}"

    facts = [[r["tool"], *[r[k] for k in FACT_TITLES], " ".join(note(s) for s in r["sources"].split("; "))]
             for r in table.iter_rows(named=True)]
    points = table["compare_on"].drop_nulls().unique().to_list()
    speed_title = f"median decode tok/s on {points[0]}" if len(points) == 1 else "median decode tok/s"
    measured = []
    for r in table.iter_rows(named=True):
        speed = fmt(r["median_decode_tokens_per_s"]) or f"— {note(r['decode_null_reason'] or 'not measured')}"
        load = (f"{r['median_load_ms'] / 1000:.2f}" if r["median_load_ms"] is not None
                else f"— {note(r['load_null_reason'] or 'not measured')}")
        measured.append([r["tool"], r["ran"] or "—", str(r["generations"]), load,
                         mib(r["max_peak_rss_bytes"], r["peak_rss_null_reason"]),
                         mib(r["max_gpu_mem_used_bytes"], r["gpu_mem_null_reason"]), speed,
                         r["median_decode_tokens_per_s_all"] or "—", r["not_run_here"] or ""])
    return "".join([
        "## The frameworks\n\n",
        pipe_table(["tool", *FACT_TITLES.values(), "sources"], facts), "\n",
        "## What each did here\n\n",
        pipe_table(["tool", "ran (model: quants)", "generations", "median load s", "peak RSS MiB",
                   "GPU memory used MiB", speed_title, "median decode tok/s per quant", "not run here: why"],
                  measured), "\n",
        "How it installs here: what this workflow does; the other facts are the tools' own, checked against the "
        "sources. Load time: the engine's own model load, median over jobs (one load per job). Peak RSS: the "
        "engine's peak resident memory, the largest over its jobs (quants differ); GPU memory: NVML's memory used "
        "on the job's GPUs, the largest over its jobs. Decode tok/s: median over the generations that ran, on the "
        "model and quant the most tools ran, so that the tools compare on the same file; the last speed column "
        f"gives each quant's median. {LABEL_MARK}: what ran is not what the quant's label says (the cost and quality "
        "tables' notes say what it was).\n",
        note.render(),
    ])
