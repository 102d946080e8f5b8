"""The served model per load level (llmbench.outputs.serving): throughput, latency percentiles and energy per output token
from stand-in request rows (numbers invented for the test), checked by hand."""

from __future__ import annotations

import polars as pl
import pytest

from llmbench.core.precision import PRECISION_COLUMNS, Rounds
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.outputs.costs import cost_table
from llmbench.outputs.markdown import PRECISION_NOTE
from llmbench.outputs.serving import level_table, render_markdown
from llmbench.outputs.stats import TABLE_PRECISION


def level(energy_j: float | None = 60.0, reason: str | None = None, tool: str = "llama-server") -> pl.DataFrame:
    """Two clients, four requests of 10 output and 5 prompt tokens, in a level window of 4 s."""
    return pl.DataFrame([
        {"tool": tool, "model": "m", "quant": "Q4_0", "split": "none", "concurrency": 2, "depth": 0, "status": "ok",
         "client": i % 2, "request_start_s": float(i), "request_end_s": i + 2.0, "generated_tokens": 10,
         "prompt_tokens": 5, "prefill_tokens": 5, "decode_tokens_per_s": 20.0, "ttft_ms": 100.0 * (i + 1),
         "itl_ms": [10.0, 20.0], "tpot_ms": 15.0, "wall_ms": 2000.0, "level_window_s": 4.0,
         "level_energy_j": energy_j, "level_energy_net_j": None if energy_j is None else energy_j - 20.0,
         "level_energy_null_reason": reason, "energy_null_reason": "not measured per request: shared",
         "server_counts_check": "match: 40 generated and 20 prompt tokens, server and client"}
        for i in range(4)
    ], schema=RUN_SCHEMA)


def test_a_level_by_hand():
    r = level_table(level()).row(0, named=True)
    assert (r["requests"], r["window_s"], r["output_tokens"], r["prompt_tokens"]) == (4, 4.0, 40, 20)
    assert r["server_output_tokens_per_s"] == 10.0 and r["requests_per_s"] == 1.0  # 40 tokens, 4 requests, 4 s
    assert r["per_user_decode_tokens_per_s"] == 20.0
    # TTFT 100, 200, 300, 400 ms (linear percentiles); the ITL pools every gap: 10, 20 four times.
    assert (r["ttft_ms_p50"], r["ttft_ms_p90"], r["ttft_ms_p99"]) == pytest.approx((250.0, 370.0, 397.0))
    assert (r["itl_ms_p50"], r["itl_ms_p99"], r["tpot_ms_p50"], r["e2e_ms_p50"]) == (15.0, 20.0, 15.0, 2000.0)
    # 60 J gross: 1.5 J per output token, 1 J per total token (40 + 20), 2/3 output tokens per joule.
    assert (r["j_per_output_token"], r["j_per_total_token"]) == (1.5, 1.0)
    assert r["output_tokens_per_j"] == pytest.approx(2 / 3) and r["energy_net_j"] == 40.0


def test_unmeasured_energy_stays_null_with_its_reason_and_synthetic_tests_are_no_level():
    bench = pl.DataFrame([{"tool": "llama-bench", "model": "m", "quant": "Q4_0", "split": "none", "status": "ok",
                           "decode_tokens_per_s": 50.0}], schema=RUN_SCHEMA)
    t = level_table(pl.concat([level(None, "not measured: no sensor"), bench]))
    assert t["tool"].to_list() == ["llama-server"]
    r = t.row(0, named=True)
    assert r["j_per_output_token"] is None and r["energy_null_reason"] == "not measured: no sensor"
    md = render_markdown(t, 0.14)
    assert "## llama-server" in md and (
        "| m | Q4_0 | none | 2 | 0 | 4 | 10 | 20 | not recorded | 1 | 250 / 397 | 15 / 20 |") in md
    assert "— [" in md and "not measured: no sensor" in md and "| match [" in md and "equal the rows'" in md


def test_the_cost_of_a_level_is_its_energy_over_its_tokens_at_the_throughput_it_served():
    hardware = {"purchase_usd": 1000.0, "lifetime_years": 1.0, "utilization": 1.0}
    cloud = [{"name": "API", "input_usd_per_1m": 1.0, "output_usd_per_1m": 10.0, "as_of": "2026-11", "source": "s"}]
    r = cost_table(level(), 0.14, cloud, hardware).row(0, named=True)
    assert r["j_per_token"] == 1.5 and "2 clients at once" in r["energy_basis"]
    # Capacity at the server's 10 output tokens/s, not the per-user decode speed of 20.
    assert r["capacity_tokens_per_day"] == 10.0 * 86_400 and "2 clients" in r["hardware_throughput_basis"]
    assert cost_table(level(None, "not measured: no sensor"), 0.14, []).row(0, named=True)["energy_status"] == (
        "not measured: no sensor")


def batches(n: int = 4) -> pl.DataFrame:
    """Three of llama-batched-bench's batches at N sequences: S_TG 300, 320, 340 tok/s; T_PP 200, 250, 300 ms."""
    return pl.DataFrame([
        {"tool": "llama-batched-bench", "model": "m", "quant": "Q4_0", "split": "none", "concurrency": n, "depth": 0,
         "status": "ok", "prompt_id": f"pp64+tg32x{n}", "repetition": i, "max_tokens": 32, "prompt_tokens": n * 64,
         "generated_tokens": n * 32, "prefill_ms": 200.0 + 50 * i, "decode_ms": 400.0, "wall_ms": 650.0,
         "decode_tokens_per_s": 300.0 + 20 * i, "energy_null_reason": "not measured: in one process"}
        for i in range(3)
    ], schema=RUN_SCHEMA)


def test_a_batch_level_is_the_engine_side_reference_beside_the_servers():
    t = level_table(pl.concat([level(), batches()]))
    assert t["tool"].to_list() == ["llama-batched-bench", "llama-server"]
    r = t.row(0, named=True)
    assert (r["requests"], r["output_tokens"], r["prompt_tokens"]) == (12, 3 * 128, 3 * 256)  # sequences, tokens
    assert r["server_output_tokens_per_s"] == 320.0 and r["per_user_decode_tokens_per_s"] == 80.0  # 320 / 4
    assert r["ttft_ms_p50"] == 250.0 and r["tpot_ms_p50"] == 12.5  # T_PP; a decode step: 400 ms / 32
    assert r["window_s"] == pytest.approx(1.95) and r["e2e_ms_p50"] == 650.0
    assert r["requests_per_s"] is None and r["itl_ms_p50"] is None and r["j_per_output_token"] is None
    assert r["energy_null_reason"] == "not measured: in one process" and r["server_counts_check"].startswith(
        "not applicable")
    md = render_markdown(t, 0.14)
    assert "## llama-batched-bench" in md and "engine-side reference" in md
    assert "engine-side reference" not in render_markdown(level_table(level()), 0.14)


def test_the_cost_of_a_batch_level_is_not_measured_and_its_throughput_is_the_batch():
    r = cost_table(batches(), 0.14, []).row(0, named=True)
    assert r["server_output_tokens_per_s"] == 320.0 and r["j_per_token"] is None
    assert r["energy_null_reason"] == "not measured: in one process"


def with_precision(frame: pl.DataFrame, rates: list[float]) -> pl.DataFrame:
    """The job's precision columns as the bench writes them (llmbench.core.precision.Rounds.columns) on every row."""
    rounds = Rounds(len(rates))
    for rate in rates:
        rounds.record(rate)
    return frame.with_columns(pl.lit(v, RUN_SCHEMA[c]).alias(c) for c, v in rounds.columns().items())


def test_each_level_carries_its_jobs_precision():
    # The server's level: 6 rounds of per-user rates 18 … 22, median 20, 95 % interval (18, 22): ±10.0 %;
    # the batch level: 2 rounds, no interval.
    t = level_table(pl.concat([with_precision(level(), [18.0, 19.0, 20.0, 20.0, 21.0, 22.0]),
                               with_precision(batches(), [300.0, 320.0])]))
    assert t.columns[-len(TABLE_PRECISION):] == TABLE_PRECISION
    batch, server = t.row(0, named=True), t.row(1, named=True)
    assert server["precision"] == "±10.0% (95% CI of the median of 6 rounds' decode rates)"
    assert (server["precision_rounds"], server["precision_median"], server["precision_low"],
            server["precision_high"]) == (6, 20.0, 18.0, 22.0)
    assert batch["precision"] == "no interval: 2 rounds (a 95% interval of a median needs 6)"
    md = render_markdown(t, 0.14)
    assert "| per-user decode tok/s | precision | requests/s |" in md and PRECISION_NOTE in md
    assert "| m | Q4_0 | none | 2 | 0 | 4 | 10 | 20 | ±10.0% (95% CI, 6 rounds) | 1 |" in md
    assert "| no interval (2 rounds) [1] |" in md and f"\n[1] {batch['precision']}\n" in md
    # Rows of a study before rounds: the columns are there, empty.
    old = level_table(level().drop(PRECISION_COLUMNS))
    assert old.row(0, named=True)["precision"] is None and old["precision_rounds"].to_list() == [None]
