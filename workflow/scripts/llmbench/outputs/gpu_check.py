"""The GPU check's summary (benchmarks/gpu): what one run on a GPU machine showed of the GPU path, from its rows.

Each function reads the study's rows (``results/summary/runs.parquet``, columns of ``runs.RUN_SCHEMA``, ok rows
only) and returns a small table; :func:`summary_markdown` puts them together with the build record. Targets are
the issue's: llama-server's decode within 3 % of llama-bench's tg, NVML's energy counter within 5 % of the
integrated power samples on windows of 5 s or more (the counter updates about every 100 ms and reads low on short
windows: shared/FIELD.md).
"""

from __future__ import annotations

import json

import polars as pl

from llmbench.outputs.markdown import fmt, pipe_table

SERVER_VS_BENCH_TARGET = 0.03
COUNTER_VS_SAMPLED_TARGET = 0.05
LONG_WINDOW_S = 5.0


def ok_rows(runs: pl.DataFrame) -> pl.DataFrame:
    return runs.filter(pl.col("status") == "ok")


def speed(runs: pl.DataFrame) -> pl.DataFrame:
    """Per tool × model × quant × concurrency: rows, median decode and prefill tokens/s, layers offloaded of the
    model's (as parsed from the engine's log), GPU energy per generated token (gross and above idle, J)."""
    return (
        ok_rows(runs)
        .group_by("tool", "model", "quant", "concurrency")
        .agg(
            pl.len().alias("rows"),
            pl.col("decode_tokens_per_s").median().alias("decode_tok_s"),
            pl.col("prefill_tokens_per_s").median().alias("prefill_tok_s"),
            pl.col("n_gpu_layers_offloaded").max().alias("layers_offloaded"),
            pl.col("n_layers_total").max().alias("layers_total"),
            (pl.col("energy_j") / pl.col("generated_tokens")).median().alias("j_per_token"),
            (pl.col("energy_net_j") / pl.col("generated_tokens")).median().alias("j_per_token_net"),
            pl.col("idle_power_w").median().alias("idle_w"),
        )
        .sort("model", "quant", "tool", "concurrency")
    )


def server_vs_bench(runs: pl.DataFrame) -> pl.DataFrame:
    """llama-server's median decode tokens/s at one request over llama-bench's tg, per model × quant."""
    rows = ok_rows(runs).filter((pl.col("concurrency") == 1) & (pl.col("depth") == 0))

    def median_of(tool: str, name: str) -> pl.DataFrame:
        return (rows.filter(pl.col("tool") == tool).group_by("model", "quant")
                .agg(pl.col("decode_tokens_per_s").median().alias(name)))

    return (
        median_of("llama-server", "server_tok_s").join(median_of("llama-bench", "bench_tg_tok_s"), on=["model", "quant"])
        .with_columns((pl.col("server_tok_s") / pl.col("bench_tg_tok_s")).alias("ratio"))
        .with_columns(((pl.col("ratio") - 1).abs() <= SERVER_VS_BENCH_TARGET).alias("within_3pct"))
        .sort("model", "quant")
    )


def counter_joules(by_sensor_json: str | None) -> float | None:
    """The GPUs' energy-counter joules of one row's ``energy_by_sensor_j`` (labels ``nvml-energy:<uuid>``)."""
    if by_sensor_json is None:
        return None
    joules = [j for label, j in json.loads(by_sensor_json).items() if label.startswith("nvml-energy:")]
    return sum(joules) if joules else None


def counter_vs_sampled(runs: pl.DataFrame) -> pl.DataFrame:
    """NVML's energy counter over the power trace's integral on the same windows, by window length (under 1 s,
    1–5 s, 5 s or more): windows, median / min / max ratio, and whether the long windows are within 5 %."""
    rows = ok_rows(runs).filter(pl.col("sampled_gpu_energy_j").is_not_null() & (pl.col("sampled_gpu_energy_j") > 0))
    rows = rows.with_columns(
        pl.col("energy_by_sensor_j").map_elements(counter_joules, return_dtype=pl.Float64).alias("counter_j"))
    rows = rows.filter(pl.col("counter_j").is_not_null()).with_columns(
        (pl.col("counter_j") / pl.col("sampled_gpu_energy_j")).alias("ratio"),
        pl.when(pl.col("energy_window_s") < 1).then(pl.lit("under 1 s"))
        .when(pl.col("energy_window_s") < LONG_WINDOW_S).then(pl.lit("1–5 s"))
        .otherwise(pl.lit("5 s or more")).alias("window"),
    )
    return (
        rows.group_by("window")
        .agg(pl.len().alias("windows"), pl.col("ratio").median().alias("median_ratio"),
             pl.col("ratio").min().alias("min_ratio"), pl.col("ratio").max().alias("max_ratio"))
        .with_columns(pl.when(pl.col("window") == "5 s or more")
                      .then((pl.col("median_ratio") - 1).abs() <= COUNTER_VS_SAMPLED_TARGET)
                      .otherwise(None).alias("within_5pct"))
        .sort("window")
    )


def not_ok(runs: pl.DataFrame) -> pl.DataFrame:
    """Jobs that ended skipped or failed, with why (one line per tool × model × quant × status)."""
    return (runs.filter(pl.col("status") != "ok").group_by("tool", "model", "quant", "status")
            .agg(pl.col("status_reason").first().alias("why")).sort("tool", "model", "quant"))


def _md(df: pl.DataFrame) -> str:
    if df.is_empty():
        return "(none)"
    return pipe_table(df.columns, [[fmt(v) for v in row] for row in df.iter_rows()])


def summary_markdown(runs: pl.DataFrame, build: dict, build_seconds: float | None, extra: dict[str, str]) -> str:
    """The run's summary: the build (commit, CUDA, flags, seconds), then each table; ``extra`` adds sections
    (title: Markdown text) such as the roofline table and the harness benchmark's report."""
    lines = [
        "# GPU check: summary of one run",
        "",
        f"- llama.cpp commit {build.get('commit')}, CUDA {build.get('cuda_version')}, "
        f"configure {' '.join(build.get('configure_args') or [])}",
        f"- build: {f'{build_seconds:.0f} s' if build_seconds is not None else 'not timed'} "
        f"({build.get('build_jobs')} jobs); smoke test: "
        + ", ".join(f"{r['tool']} {'ok' if r.get('ok') else 'failed'}" for r in build.get("smoke_test", [])),
        "",
        "## Speed, offload and energy per tool × model × quant × concurrency",
        _md(speed(runs)),
        "",
        f"## llama-server against llama-bench tg (target within {SERVER_VS_BENCH_TARGET:.0%})",
        _md(server_vs_bench(runs)),
        "",
        f"## NVML energy counter against integrated sampled power (target within {COUNTER_VS_SAMPLED_TARGET:.0%} "
        f"on windows of {LONG_WINDOW_S:.0f} s or more)",
        _md(counter_vs_sampled(runs)),
        "",
        "## Jobs not ok",
        _md(not_ok(runs)),
    ]
    for title, text in extra.items():
        # The section's own headings go one level under its title.
        body = [("###" + line.lstrip("#")) if line.startswith("#") else line for line in text.strip().splitlines()]
        lines += ["", f"## {title}", *body]
    return "\n".join(lines) + "\n"
