import polars as pl
import pytest

from llmbench.runs import RunPlan, skipped_run
from llmbench.stats import summarize, summarize_runs, tukey_flags


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
