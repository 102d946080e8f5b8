import polars as pl
import pytest

from llmbench.core.precision import PRECISION_COLUMNS, PrecisionSpec, Rounds
from llmbench.engines.runs import RUN_SCHEMA, RunPlan, skipped_run, with_all_columns
from llmbench.outputs.stats import (
    STATS_PRECISION,
    job_precision,
    precision_text,
    summarize,
    summarize_runs,
    tukey_flags,
)


def frame(values, quant="Q4_0"):
    return pl.DataFrame(
        {"tool": "llama-server", "model": "m", "quant": quant, "split": "none", "x": values},
        schema_overrides={"x": pl.Float64},
    )


def test_quartiles_iqr_and_tukey_outlier():
    # Q1 = 2, Q3 = 4 (linear interpolation), IQR = 2, fences at -1 and 7: only 100 is outside.
    df = frame([1.0, 2.0, 3.0, 4.0, 5.0, 2.0, 3.0, 4.0, 100.0])
    s = summarize(df, ["x"]).row(0, named=True)
    assert (s["n"], s["median"], s["q1"], s["q3"], s["iqr"]) == (9, 3.0, 2.0, 4.0, 2.0)
    assert (s["lower_fence"], s["upper_fence"], s["n_outliers"]) == (-1.0, 7.0, 1)
    assert s["mean"] == pytest.approx(124 / 9)
    assert s["sd"] == pytest.approx(pl.Series([1.0, 2, 3, 4, 5, 2, 3, 4, 100]).std())
    flags = tukey_flags(df, "x")["x_outlier"].to_list()
    assert flags == [False] * 8 + [True]


def test_groups_are_separate_and_nulls_are_counted_not_used():
    df = pl.concat([frame([10.0, 11.0, 12.0]), frame([1.0, None, 3.0], quant="Q8_0")])
    s = summarize(df, ["x"]).sort("quant")
    assert s["quant"].to_list() == ["Q4_0", "Q8_0"]
    assert s["n"].to_list() == [3, 2]
    assert s["n_null"].to_list() == [0, 1]
    assert s["median"].to_list() == [11.0, 2.0]


def test_metric_never_measured_gives_n_zero_and_null_statistics():
    s = summarize(frame([None, None]), ["x"]).row(0, named=True)
    assert s["n"] == 0 and s["n_null"] == 2
    assert s["median"] is None and s["mean"] is None


def test_skipped_job_keeps_its_group_with_the_reason_and_no_numbers():
    plan = RunPlan("ollama", "m", "Q4_0", "none", (), 1, 0, 0.0, 0.7, 1, None, 0, 2)
    ran = frame([10.0, 12.0]).with_columns(pl.col("x").alias("decode_tokens_per_s"), status_reason=pl.lit(None, pl.String))
    runs = pl.concat([ran.select("tool", "model", "quant", "split", "decode_tokens_per_s", "status_reason"),
                      skipped_run(plan, "Ollama is not installed here").select(
                          "tool", "model", "quant", "split", "decode_tokens_per_s", "status_reason")])
    s = summarize_runs(runs, ["decode_tokens_per_s"]).sort("tool")
    assert s["tool"].to_list() == ["llama-server", "ollama"]
    assert s["n"].to_list() == [2, 0] and s["median"].to_list() == [11.0, None]
    assert s["not_run_reason"].to_list() == [None, "Ollama is not installed here"]


def test_integer_and_float_metrics_stack_in_one_table():
    df = frame([1.0, 2.0, 3.0]).with_columns(tokens=pl.Series([10, 20, 30], dtype=pl.Int64))
    s = summarize(df, ["x", "tokens"]).sort("metric")
    assert s["metric"].to_list() == ["tokens", "x"]
    assert s["max"].to_list() == [30.0, 3.0] and s.schema["min"] == pl.Float64


def precision_of(rates, spec=None):
    """A job's precision columns as the bench writes them (llmbench.core.precision.Rounds.columns)."""
    rounds = Rounds(len(rates), spec)
    for rate in rates:
        rounds.record(rate)
    return rounds.columns()


# Round rates 48 … 52: median 50, 95 % interval (x₍₁₎, x₍₆₎) = (48, 52), coverage 1 − 2/64: ±4.0 %.
SIX = precision_of([48.0, 49.0, 50.0, 50.0, 51.0, 52.0])


def job_rows(quant, precision=None, status="ok", reason=None, n=2):
    rows = [{"tool": "llama-server", "model": "m", "quant": quant, "split": "none", "status": status,
             "status_reason": reason, "decode_tokens_per_s": 50.0 + i if status == "ok" else None,
             **(precision or {})} for i in range(n)]
    return with_all_columns(pl.DataFrame(rows, schema={c: RUN_SCHEMA[c] for c in rows[0]})).select(list(RUN_SCHEMA))


def test_each_stats_row_carries_its_jobs_precision_and_a_skipped_job_none():
    runs = pl.concat([job_rows("Q4_0", SIX), job_rows("Q8_0", status="skipped", reason="no room", n=1)])
    s = summarize_runs(runs, ["decode_tokens_per_s", "generated_tokens"]).sort("quant", "metric")
    assert [c for c in s.columns if c.startswith("precision_")] == STATS_PRECISION
    q4 = s.filter(pl.col("quant") == "Q4_0")
    assert q4.height == 2 and q4.select(STATS_PRECISION).n_unique() == 1  # every metric's row of the job alike
    r = q4.row(0, named=True)
    assert (r["precision_rounds"], r["precision_median"], r["precision_low"], r["precision_high"]) == (6, 50.0, 48.0, 52.0)
    assert (r["precision_confidence"], r["precision_target"], r["precision_met"]) == (0.95, None, None)
    assert r["precision_note"] == "±4.0% (95% CI of the median of 6 rounds' decode rates)"
    q8 = s.filter(pl.col("quant") == "Q8_0").row(0, named=True)
    assert q8["not_run_reason"] == "no room" and all(q8[c] is None for c in STATS_PRECISION)


def test_job_precision_takes_the_first_value_recorded_and_reads_an_old_study_as_not_recorded():
    runs = job_rows("Q4_0", SIX, n=3).with_columns(  # a row without them (a failed generation's) is passed over
        pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col(c)).alias(c) for c in PRECISION_COLUMNS)
    p = job_precision(runs).row(0, named=True)
    assert (p["concurrency"], p["depth"], p["precision_rounds"], p["precision_coverage"]) == (1, 0, 6, 1 - 2 / 64)
    old = pl.DataFrame({"tool": ["t"], "model": ["m"], "quant": ["Q4_0"], "split": ["none"],
                        "status": ["ok"], "status_reason": [None], "decode_tokens_per_s": [50.0]})
    assert job_precision(old).select(PRECISION_COLUMNS).row(0) == (None,) * len(PRECISION_COLUMNS)
    s = summarize_runs(old, ["decode_tokens_per_s"]).row(0, named=True)
    assert s["median"] == 50.0 and all(s[c] is None for c in STATS_PRECISION)


def test_precision_in_a_few_words():
    assert precision_text(SIX) == "±4.0% (95% CI, 6 rounds)" and precision_text(SIX, short=True) == "±4.0%"
    missed = precision_of([48.0, 49.0, 50.0, 50.0, 51.0, 52.0], PrecisionSpec(0.02, max_repetitions=6))
    assert missed["precision_met"] is False
    assert precision_text(missed) == precision_text(missed, short=True) == missed["precision_note"] == (
        "target ±2% not reached: ±4.0% after 6 rounds")
    met = precision_of([49.5, 49.8, 50.0, 50.0, 50.2, 50.5], PrecisionSpec(0.02, max_repetitions=6))
    assert met["precision_met"] is True and precision_text(met) == "±1.0% (95% CI, 6 rounds)"
    assert precision_text(precision_of([50.0, 52.0])) == "no interval (2 rounds)"
    assert precision_text({}) == precision_text({"precision_rounds": None}) == "not recorded"
