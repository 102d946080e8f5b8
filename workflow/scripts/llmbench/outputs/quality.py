"""Quality against speed and cost per quant: KL divergence to the reference, accuracy, tokens/s, J/token and $.

One row per model × quant joins what the study measured about it; whatever was not measured stays null (with its
reason where one is known), so a quant never disappears from the view because one of its parts is missing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from llmbench.core.quants import NOMINAL_BITS_PER_WEIGHT, rank
from llmbench.modelfiles.models import CorruptModelError, check_gguf
from llmbench.modelfiles.synthetic import QUALITY_NULL_REASON
from llmbench.modelfiles.tensor_mix import file_mix
from llmbench.outputs.costs import energy_per_token, usd_per_1m_tokens
from llmbench.outputs.markdown import (
    LABEL_MARK,
    PRECISION_NOTE,
    Footnotes,
    fmt,
    marked_quant,
    pipe_table,
    precision_cell,
)
from llmbench.outputs.stats import TABLE_PRECISION, base_level, with_job_precision
from llmbench.study.accuracy import accuracy_table

KEY = ["model", "quant"]
FILE_MIX = ["nominal_bits_per_weight", "tensor_mix", "quant_label_note"]
KLD_COLUMNS = ["kld_mean", "kld_mean_unc", "kld_p99", "ppl", "ppl_ratio", "ppl_ratio_unc", "same_top_p_pct",
               "reference_quant"]
FILE_SCHEMA = {"model": pl.String, "quant": pl.String, "file_bytes": pl.Int64, "weights": pl.Int64,
               "nominal_bits_per_weight": pl.Float64, "tensor_mix": pl.String, "quant_label_note": pl.String}


def file_facts(files: dict[tuple[str, str], Path]) -> pl.DataFrame:
    """Size and weight count of each (model, quant) file, bits per weight measured from the file (header
    included) beside the label's nominal, and what its weight matrices hold (llmbench.modelfiles.tensor_mix): the mix by
    bytes, and where the file is not what its label says, the note."""
    rows = []
    for (m, q), p in files.items():
        try:
            info = check_gguf(p)
        except CorruptModelError:  # its jobs' failed rows say why; the table is made for every other file
            info = {"bytes": None, "weights": None}
        mix = file_mix(p, q) if info["bytes"] is not None else None
        rows.append({"model": m, "quant": q, "file_bytes": info["bytes"], "weights": info["weights"],
                     "nominal_bits_per_weight": NOMINAL_BITS_PER_WEIGHT.get(q),
                     "tensor_mix": mix.summary() if mix else None, "quant_label_note": mix.note() if mix else None})
    return pl.DataFrame(rows, schema=FILE_SCHEMA).with_columns(
        (pl.col("file_bytes") * 8 / pl.col("weights")).alias("bits_per_weight"))


def _speed(runs: pl.DataFrame, tool: str, usd_per_kwh: float) -> pl.DataFrame:
    """Decode speed and J/token of one tool over its generations that ran, with the same semantics as the cost table,
    one request at a time on an empty context (the load and depth sweeps have tables of their own)."""
    mine = base_level(runs).filter(pl.col("tool") == tool)
    ok = mine.filter(pl.col("status") == "ok")
    if ok["split"].n_unique() > 1:
        # One row per model × quant: mixing split modes would silently pick one; the caller must choose.
        raise ValueError(f"runs of {tool} have split modes {sorted(ok['split'].unique())}; pass runs of one split")
    speed = energy_per_token(ok).select(
        *KEY, "median_decode_tokens_per_s", "j_per_token", "energy_is_estimate",
        # energy_per_token joins no reasons into "", which is not a reason.
        pl.col("energy_null_reason").replace("", None),
        usd_per_1m_tokens(pl.col("j_per_token"), usd_per_kwh).alias("usd_per_1m_tokens"),
        pl.lit(True).alias("_ran"),
    )
    # The precision of its median decode rate (stats.TABLE_PRECISION): one job per model × quant here.
    speed = with_job_precision(speed, ok, on=KEY)
    # Why a model × quant has no speed: its skipped jobs' reasons (a job that never ran leaves no row at all).
    skipped = mine.group_by(KEY).agg(
        (pl.col("status") == "ok").any().alias("_ran"),
        pl.col("status_reason").drop_nulls().unique().sort().str.join("; ").replace("", "skipped")
        .alias("speed_null_reason"))
    return skipped.filter(~pl.col("_ran")).drop("_ran").join(speed, on=KEY, how="full", coalesce=True)


def _accuracy(accuracy: pl.DataFrame) -> pl.DataFrame:
    """Wide accuracy columns per tool (Wilson 95 % bounds, n) and the skipped tools with their reasons."""
    table = accuracy_table(accuracy, ["tool", *KEY])
    tools = sorted(table["tool"].unique())
    wide = accuracy.select(KEY).unique()
    for tool in tools:  # a handful of tools: a join per tool names the columns plainly
        names = {"accuracy": f"accuracy {tool}", "wilson_low": f"accuracy {tool} low",
                 "wilson_high": f"accuracy {tool} high", "n": f"accuracy {tool} n"}
        part = table.filter(pl.col("tool") == tool).select(*KEY, *names).rename(names)
        wide = wide.join(part, on=KEY, how="left")
    not_run = accuracy.filter(pl.col("status") != "ok").group_by(KEY).agg(
        pl.format("{}: {}", "tool", pl.col("status_reason").fill_null("skipped")).unique().sort().str.join("; ")
        .alias("accuracy not run"))
    return wide.join(not_run, on=KEY, how="left")


def quality_table(files: pl.DataFrame, kld: pl.DataFrame, accuracy: pl.DataFrame, runs: pl.DataFrame,
                  speed_tool: str = "llama-server", *, usd_per_kwh: float) -> pl.DataFrame:
    """One row per model × quant known to any input, quants by bits per weight within a model (coarsest first)."""
    speed = _speed(runs, speed_tool, usd_per_kwh)
    acc = _accuracy(accuracy)
    # A failed KLD job leaves its row with the reason; KLD files written before that column have none.
    kld = kld.with_columns(pl.lit(None, pl.String).alias(c) for c in ("kld_null_reason",) if c not in kld.columns)
    kld = kld.with_columns(pl.lit(None, pl.String).alias(c) for c in KLD_COLUMNS if c not in kld.columns)
    files = files.with_columns(pl.lit(None, t).alias(c) for c, t in FILE_SCHEMA.items() if c not in files.columns)
    frames = [files.select(*KEY, "file_bytes", "bits_per_weight", *FILE_MIX), speed,
              kld.select(*KEY, *KLD_COLUMNS, "kld_null_reason"), acc]
    table = pl.concat([f.select(KEY) for f in frames]).unique()
    for f in frames:
        table = table.join(f, on=KEY, how="left")
    # Order by the measured bpw; a quant without a file falls back on its nominal bpw, unknown types go last.
    nominal = pl.col("quant").replace_strict(NOMINAL_BITS_PER_WEIGHT, default=None, return_dtype=pl.Float64)
    order = pl.col("quant").replace_strict(rank(table["quant"]), return_dtype=pl.Int64)
    table = table.with_columns(
        pl.when(pl.col("_ran").is_null() & pl.col("speed_null_reason").is_null())
        .then(pl.lit(f"no {speed_tool} runs")).otherwise(pl.col("speed_null_reason")).alias("speed_null_reason"),
        # The reference of a model is the same for all its quants: filled in where a quant has no KLD row.
        pl.col("reference_quant").drop_nulls().first().over("model").alias("reference_quant"),
        # Random weights (runs say model_is_synthetic): no KLD or accuracy is planned for them, and the table says why.
        pl.when(pl.col("model").is_in(_synthetic_models(runs).implode())).then(pl.lit(QUALITY_NULL_REASON))
        .otherwise(None).alias("quality_null_reason"),
    ).sort(["model", pl.coalesce("bits_per_weight", nominal), order, "quant"], nulls_last=True)
    acc_cols = [c for c in acc.columns if c not in KEY]
    return table.select(*KEY, "file_bytes", "bits_per_weight", *FILE_MIX, "median_decode_tokens_per_s",
                        *TABLE_PRECISION, "speed_null_reason",
                        "j_per_token", "energy_null_reason", "energy_is_estimate", "usd_per_1m_tokens",
                        *KLD_COLUMNS, "kld_null_reason", "quality_null_reason", *acc_cols)


def _synthetic_models(runs: pl.DataFrame) -> pl.Series:
    if "model_is_synthetic" not in runs.columns:
        return pl.Series("model", [], pl.String)
    return runs.filter(pl.col("model_is_synthetic").fill_null(False))["model"].unique()


def render_markdown(table: pl.DataFrame, tools: Sequence[str]) -> str:
    """The quality table for people: one footnote per reason instead of repeated cells."""
    note = Footnotes()

    def pm(value: float | None, unc: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}" + ("" if unc is None else f" ± {unc:.{digits}f}")

    def tool_reason(not_run: str | None, tool: str) -> str:
        # "tool: reason; tool: reason" back to this tool's reason; a reason may itself contain "; ".
        others = "|".join(re.escape(t) for t in tools)
        m = re.search(rf"(?:^|; ){re.escape(tool)}: (.*?)(?=; (?:{others}): |$)", not_run or "")
        return f"{tool}: {m.group(1)}" if m else f"{tool}: no accuracy rows for this quant"

    header = ["model", "quant", "file MiB", "bpw (nominal)", "tensor mix", "decode tok/s", "precision", "J/token",
              "mean KLD",
              "PPL ratio", "same top %", *[f"accuracy {t}" for t in tools]]
    rows = []
    for r in table.iter_rows(named=True):
        energy_reason = r["energy_null_reason"] or r["speed_null_reason"] or "not measured"
        if r["j_per_token"] is None:
            joule = f"not measured {note(energy_reason)}"
        else:
            joule = fmt(r["j_per_token"]) + (f" estimate {note('J/token is an estimate, not a measurement')}"
                                             if r["energy_is_estimate"] else "")
        kld = pm(r["kld_mean"], r["kld_mean_unc"], 4) or ("reference" if r["quant"] == r["reference_quant"]
                                                          else "not measured")
        if r.get("kld_null_reason") and r["kld_mean"] is None:
            kld = f"failed {note(r['kld_null_reason'])}"
        synthetic = r.get("quality_null_reason")
        if synthetic:
            kld = f"not measured {note(synthetic)}"
        accuracy = []
        for t in tools:
            if synthetic:
                accuracy.append(f"not run {note(synthetic)}")
            elif r.get(f"accuracy {t}") is None:
                accuracy.append(f"not run {note(tool_reason(r['accuracy not run'], t))}")
            else:
                accuracy.append(f"{r[f'accuracy {t}']:.2f} [{r[f'accuracy {t} low']:.2f}, "
                                f"{r[f'accuracy {t} high']:.2f}] (n={r[f'accuracy {t} n']})")
        rows.append([
            r["model"], marked_quant(r["quant"], r.get("quant_label_note"), note),
            "" if r["file_bytes"] is None else f"{r['file_bytes'] / 2**20:.1f}",
            pm(r["bits_per_weight"], None, 2) + (f" ({r['nominal_bits_per_weight']:.2f})"
                                                 if r.get("nominal_bits_per_weight") is not None else ""),
            r.get("tensor_mix") or "",
            fmt(r["median_decode_tokens_per_s"]) or f"not run {note(r['speed_null_reason'] or 'not run')}",
            "not run" if r["median_decode_tokens_per_s"] is None else precision_cell(r, note),
            joule, kld, pm(r["ppl_ratio"], r["ppl_ratio_unc"], 3), pm(r["same_top_p_pct"], None, 1), *accuracy,
        ])
    out = ["## Quality, speed and energy per quant\n\n", pipe_table(header, rows), "\n",
           "File MiB and bpw: measured from the GGUF file (its size × 8 over its weight count, header included); in "
           "brackets the bits per weight the quant's label promises (llama-quantize's own figure). Tensor mix: the "
           "ggml types of the file's weight matrices by share of bytes, read from its header; a quant marked "
           f"{LABEL_MARK} holds other types than its label says (tensors that fell back, or the engine loaded another "
           "type: an Ollama tag that moved), its note names them. "
           "Decode tok/s: median over the generations that ran; J/token: energy summed over all generation windows, "
           "divided by the tokens they generated (as in the cost table). Mean KLD (± its uncertainty): "
           "llama-perplexity's KL divergence of the quant's token distribution from the reference quant's logits, "
           "over the whole corpus; PPL ratio: perplexity over the reference's; same top %: how often both pick the "
           "same most likely token. Accuracy: share of exactly checkable questions answered correctly, with the "
           "Wilson 95 % interval and the number of answers judged. "
           f"{PRECISION_NOTE}\n"]
    out.append(note.render())
    return "".join(out)

