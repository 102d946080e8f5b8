"""The served model per load level: one row per job of a generating tool, as serving benchmarks report a level.

From the job's request rows (runs.request_columns, runs.level_columns): the server's output tokens/s over the
level's window, each user's decode speed, requests/s, TTFT, inter-token latency (ITL) and time per output token
(TPOT) percentiles, and the level's energy per output token, per total token (prompt + output) and tokens per
joule. Definitions follow vLLM's benchmark_serving (TTFT, TPOT, ITL, output throughput) and ML.ENERGY's
leaderboard (energy per output token over the whole batch's window).
"""

from __future__ import annotations

import polars as pl

from llmbench.devices.meters import joules_per_token
from llmbench.engines.registry import batching_tools
from llmbench.engines.runs import with_all_columns
from llmbench.outputs.stats import GROUP, with_job_precision, with_levels

PERCENTILES = (50, 90, 99)
SCHEMA = {
    "requests": pl.Int64, "window_s": pl.Float64, "output_tokens": pl.Int64, "prompt_tokens": pl.Int64,
    "server_output_tokens_per_s": pl.Float64, "requests_per_s": pl.Float64, "per_user_decode_tokens_per_s": pl.Float64,
    **{f"ttft_ms_p{p}": pl.Float64 for p in PERCENTILES}, **{f"itl_ms_p{p}": pl.Float64 for p in PERCENTILES},
    "tpot_ms_p50": pl.Float64, "e2e_ms_p50": pl.Float64,
    "energy_j": pl.Float64, "energy_net_j": pl.Float64, "j_per_output_token": pl.Float64,
    "j_per_total_token": pl.Float64, "output_tokens_per_j": pl.Float64, "energy_null_reason": pl.String,
    "server_counts_check": pl.String,
}


def batch_levels(runs: pl.DataFrame) -> pl.DataFrame:
    """The engine-side reference per level: one row per group of a batching tool (llama-batched-bench), columns
    as SCHEMA. Its rows are batches of N sequences decoded together in-process: the server output is the median of
    their S_TG (decode_tokens_per_s, the batch's), per user that over N; TTFT is their T_PP (every prompt of the
    batch at once), TPOT T_TG over the tokens each sequence generated; no requests, windows, ITL or energy."""
    ok = runs.filter((pl.col("status") == "ok") & pl.col("tool").is_in(batching_tools()))
    t = ok.group_by(GROUP).agg(
        (pl.len() * pl.col("concurrency").first()).alias("requests"),
        (pl.col("wall_ms").sum() / 1e3).alias("window_s"),
        pl.col("generated_tokens").sum().alias("output_tokens"),
        pl.col("prompt_tokens").sum().alias("prompt_tokens"),
        pl.col("decode_tokens_per_s").median().alias("server_output_tokens_per_s"),
        (pl.col("decode_tokens_per_s").median() / pl.col("concurrency").first()).alias("per_user_decode_tokens_per_s"),
        *[pl.col("prefill_ms").quantile(p / 100, "linear").alias(f"ttft_ms_p{p}") for p in PERCENTILES],
        (pl.col("decode_ms") / pl.col("max_tokens")).median().alias("tpot_ms_p50"),
        pl.col("wall_ms").median().alias("e2e_ms_p50"),
        pl.col("energy_null_reason").drop_nulls().first(),
        pl.lit(BATCH_COUNTS).alias("server_counts_check"),
    )
    return t.with_columns(pl.lit(None, SCHEMA[c]).alias(c) for c in SCHEMA if c not in t.columns).select(
        *GROUP, *(pl.col(c).cast(d) for c, d in SCHEMA.items()))


BATCH_COUNTS = "not applicable: no server (llama-batched-bench counts the tokens it decodes itself)"


def level_table(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per group (tool, model, quant, split, concurrency, depth) whose requests ran (rows with a request
    start: llama-bench's synthetic tests have none), and per group of a batching tool (batch_levels), sorted;
    columns as SCHEMA.

    Throughput is the output tokens of all requests over the level's measured window [s] (from before the first
    request to after the last); the per-user decode speed is the median of the requests' own. ITL percentiles pool
    every gap of every request. Energy is the level's gross energy over its window (null with the reason where
    not measured); J per output token divides it by the output tokens, J per total token by prompt + output.
    Each row ends with its job's precision (stats.TABLE_PRECISION: ``precision`` its note, then its numbers).
    """
    runs = with_levels(with_all_columns(runs))
    ok = runs.filter((pl.col("status") == "ok") & pl.col("request_start_s").is_not_null())
    batches = batch_levels(runs)
    if ok.is_empty():
        return with_job_precision(batches, runs).sort(GROUP)
    window = pl.coalesce(pl.col("level_window_s").first(),
                         pl.col("request_end_s").max() - pl.col("request_start_s").min())
    t = ok.group_by(GROUP).agg(
        pl.len().alias("requests"),
        window.alias("window_s"),
        pl.col("generated_tokens").sum().alias("output_tokens"),
        pl.col("prompt_tokens").sum().alias("prompt_tokens"),
        pl.col("decode_tokens_per_s").median().alias("per_user_decode_tokens_per_s"),
        *[pl.col("ttft_ms").quantile(p / 100, "linear").alias(f"ttft_ms_p{p}") for p in PERCENTILES],
        *[pl.col("itl_ms").explode().quantile(p / 100, "linear").alias(f"itl_ms_p{p}") for p in PERCENTILES],
        pl.col("tpot_ms").median().alias("tpot_ms_p50"),
        pl.col("wall_ms").median().alias("e2e_ms_p50"),
        pl.col("level_energy_j").first().alias("energy_j"),
        pl.col("level_energy_net_j").first().alias("energy_net_j"),
        pl.col("level_energy_null_reason").first().alias("energy_null_reason"),
        pl.col("level_energy_valid").first().fill_null(True).alias("_valid"),
        pl.col("level_energy_invalid_reason").first().alias("_invalid"),
        pl.col("server_counts_check").first(),
    ).with_columns(
        # A level's window too short for its sensor (meters.validity) gives no energy per token, with the reason.
        pl.when(pl.col("_valid")).then(pl.col("energy_j")).alias("energy_j"),
        pl.when(pl.col("_valid")).then(pl.col("energy_net_j")).alias("energy_net_j"),
        pl.when(pl.col("_valid")).then(pl.col("energy_null_reason"))
        .otherwise(pl.concat_str(pl.lit("not measured: "), pl.col("_invalid"))).alias("energy_null_reason"),
    ).with_columns(
        (pl.col("output_tokens") / pl.col("window_s")).alias("server_output_tokens_per_s"),
        (pl.col("requests") / pl.col("window_s")).alias("requests_per_s"),
        joules_per_token(pl.col("energy_j"), pl.col("output_tokens")).alias("j_per_output_token"),
        joules_per_token(pl.col("energy_j"), pl.col("output_tokens") + pl.col("prompt_tokens"))
        .alias("j_per_total_token"),
        (pl.col("output_tokens") / pl.col("energy_j")).alias("output_tokens_per_j"),
    )
    table = pl.concat([t.select(*GROUP, *(pl.col(c).cast(d) for c, d in SCHEMA.items())), batches])
    return with_job_precision(table, runs).sort(GROUP)


def render_markdown(table: pl.DataFrame, usd_per_kwh: float) -> str:
    """The levels for people: one section per tool, one row per model × quant × split × level × depth; energy and
    $ per 1M output tokens at the configured electricity price, or why not measured, as footnotes."""
    from llmbench.outputs.costs import usd_per_1m_tokens
    from llmbench.outputs.markdown import PRECISION_NOTE, Footnotes, fmt, pipe_table, precision_cell

    note = Footnotes()
    parts = ["# The served model per load level\n\n"]
    if table.is_empty():
        return parts[0] + "No generating tool ran a request here: nothing to report per load level.\n"
    header = ["model", "quant", "split", "clients", "depth", "requests", "server output tok/s",
              "per-user decode tok/s", "precision", "requests/s", "TTFT p50 / p99 ms", "ITL p50 / p99 ms", "TPOT p50 ms",
              "J per output token", f"$ per 1M output tokens at {usd_per_kwh:g} $/kWh", "tokens/J", "server counts"]
    for (tool,), rows in table.group_by("tool", maintain_order=True):
        body = []
        for r in rows.iter_rows(named=True):
            energy = r["j_per_output_token"]
            body.append([
                r["model"], r["quant"], r["split"], str(r["concurrency"]), str(r["depth"]), str(r["requests"]),
                fmt(r["server_output_tokens_per_s"]), fmt(r["per_user_decode_tokens_per_s"]), precision_cell(r, note),
                fmt(r["requests_per_s"]) or "—", pair(r["ttft_ms_p50"], r["ttft_ms_p99"]),
                pair(r["itl_ms_p50"], r["itl_ms_p99"]), fmt(r["tpot_ms_p50"]),
                fmt(energy) if energy is not None else f"— {note(r['energy_null_reason'] or 'not measured')}",
                fmt(usd_per_1m_tokens(energy, usd_per_kwh)) if energy is not None else "—",
                fmt(r["output_tokens_per_j"]) if r["output_tokens_per_j"] is not None else "—",
                counts_cell(r["server_counts_check"], note),
            ])
        parts += [f"## {tool}\n\n", pipe_table(header, body), "\n"]
    parts.append(
        "Clients: requests sent at once, each client in a closed loop (its next request when its last one ended). "
        "Server output tok/s: the output tokens of all requests over the level's window; per-user decode: the "
        "median of the requests' own decode speeds. TTFT: time to the first token on the client's clock; ITL: the "
        "gaps between streamed tokens, pooled over all requests; TPOT: (end-to-end − TTFT) / (output tokens − 1). "
        "Energy: the level's gross energy over its window over its output tokens (idle not subtracted; the CSV "
        "has the idle-subtracted energy too). Server counts: the engine's own token counters against the rows'. "
        f"{PRECISION_NOTE} At more than one client a round's rate is each user's: the round's output tokens over its "
        "requests' decode time.\n")
    if table["tool"].is_in(batching_tools()).any():
        parts.append(
            "\nllama-batched-bench is llama.cpp's engine-side reference, no server: N sequences decoded in one batch "
            "in its own process. Its server output is the batch's decode tokens/s (S_TG), per user that over N, TTFT "
            "the batch's prefill of every prompt at once, TPOT one decode step; requests: sequences. A server at N "
            "clients below it lost that much to scheduling, HTTP and sampling.\n")
    return "".join(parts) + note.render()


def pair(p50: float | None, p99: float | None) -> str:
    """A "p50 / p99" cell; "—" where the level has neither (a batch has no requests' gaps)."""
    from llmbench.outputs.markdown import fmt

    return "—" if p50 is None and p99 is None else f"{fmt(p50)} / {fmt(p99)}"


MATCH_NOTE = ("match: the engine's own token counters (llama-server's /metrics) over the level equal the rows' "
              "generated and prompt tokens; the counts are in the CSV's server_counts_check")


def counts_cell(check: str | None, note) -> str:
    """The server-counts cell: "match" under one shared note, anything else with its own words as a note."""
    if check and check.startswith("match"):
        return f"match {note(MATCH_NOTE)}"
    return f"{(check or 'not checked').split(':')[0]} {note(check or 'not checked')}"


def write_serving_table(runs: pl.DataFrame, usd_per_kwh: float, csv, md) -> pl.DataFrame:
    """The level table as CSV (every column, ITL percentiles included) and Markdown."""
    from llmbench.core.files import write_atomically, write_text_atomically  # whole or not at all; a full disk named

    table = level_table(runs)
    write_atomically(csv, table.write_csv)
    write_text_atomically(md, render_markdown(table, usd_per_kwh))
    return table
