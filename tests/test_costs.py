"""Cost tables on stand-in frames: every energy value here is made up for the arithmetic, not measured."""

import re

import polars as pl
import pytest

from llmbench.core.precision import Rounds
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.outputs.costs import (
    RULE_NO_OUTLIERS,
    RULE_OUTLIERS,
    check_hardware,
    cost_table,
    render_markdown,
    usd_per_1m_tokens,
    write_cost_tables,
)
from llmbench.outputs.markdown import PRECISION_NOTE
from llmbench.outputs.stats import TABLE_PRECISION

ENERGY_NOT_MEASURED = "not measured: CPU energy: no RAPL zones under /sys/class/powercap (absent in many VMs)"
SKIPPED = "Ollama is not installed here"
CLOUD = [{"name": "GPT-4o", "input_usd_per_1m": 2.5, "output_usd_per_1m": 10.0, "as_of": "2024-10", "source": "s"}]
# $1 a day: 1461 days = 4 years of 365.25 days.
HARDWARE = {"name": "stand-in box", "purchase_usd": 1461, "lifetime_years": 4, "utilization": 0.5,
            "as_of": "2024-10", "note": "stand-in"}
TO_USD = 1e6 / 3.6e6 * 0.14  # $ per 1M tokens per J/token at $0.14/kWh


def runs(energy, tokens=(100, 300), estimate=False, tool="llama-server", quant="Q4_0", speed=None):
    """A stand-in group of generations: energy per generation [J] and its generated tokens."""
    n = len(tokens)
    speed = speed or [50.0 + 20.0 * i for i in range(n)]
    return pl.DataFrame(
        {
            "tool": [tool] * n, "model": ["m"] * n, "quant": [quant] * n, "split": ["none"] * n,
            "status": ["ok"] * n,
            "generated_tokens": list(tokens), "decode_tokens_per_s": speed,
            "energy_j": energy, "energy_window_s": [2.5] * n,
            "energy_source": [None if e is None else "nvml" for e in energy],
            "energy_null_reason": [ENERGY_NOT_MEASURED if e is None else None for e in energy],
            "energy_is_estimate": [estimate] * n,
            "status_reason": [None] * n,
        },
        schema_overrides={"energy_j": pl.Float64, "status_reason": pl.String, "decode_tokens_per_s": pl.Float64,
                          "energy_source": pl.String, "energy_null_reason": pl.String},
    )


def skipped(tool="ollama"):
    return pl.DataFrame(
        {"tool": [tool], "model": ["m"], "quant": ["Q4_0"], "split": ["none"], "status": ["skipped"],
         "generated_tokens": [None], "decode_tokens_per_s": [None], "energy_j": [None], "energy_window_s": [None],
         "energy_source": [None], "energy_null_reason": ["not measured: the job was skipped"],
         "energy_is_estimate": [None], "status_reason": [SKIPPED]},
        schema=runs([1.0], tokens=(1,)).schema,
    )


# Per-generation J/token 1.0, 1.1, 1.2, 1.3, 5.0: Q1 1.1, Q3 1.3, IQR 0.2, upper fence 1.6, so 5.0 is an outlier.
WITH_OUTLIER = runs([100.0, 110.0, 120.0, 130.0, 500.0], tokens=(100,) * 5, speed=[90.0, 95.0, 100.0, 105.0, 110.0])
# Per-generation J/token 1, 2, 3: mean 2, sd 1, fences 0 and 4, no outlier; pooled 1200 J / 500 tokens = 2.4.
NO_OUTLIER = runs([100.0, 200.0, 900.0], tokens=(100, 100, 300), quant="Q8_0", speed=[90.0, 100.0, 110.0])


def test_usd_per_million_tokens_matches_the_field_formula():
    # $0.14/kWh: 0.0389 $ per 1M tokens per J/token.
    assert usd_per_1m_tokens(1.0, 0.14) == pytest.approx(0.0388889, rel=1e-5)


def test_energy_is_summed_over_generations_before_dividing():
    t = cost_table(runs([40.0, 80.0]), 0.14, CLOUD).row(0, named=True)
    assert t["j_per_token"] == pytest.approx(120 / 400)
    assert t["kwh_per_1m_tokens"] == pytest.approx(0.3 * 1e6 / 3.6e6)
    assert t["usd_per_1m_tokens"] == pytest.approx(usd_per_1m_tokens(0.3, 0.14))
    assert t["local / GPT-4o output"] == pytest.approx(usd_per_1m_tokens(0.3, 0.14) / 10.0)
    assert t["energy_status"] == "measured"
    assert t["energy_basis"] == "energy summed over 2 windows (5.0 s in all), over the tokens they generated"


def test_a_group_with_outliers_reports_median_and_iqr_and_keeps_mean_and_sd():
    r = cost_table(WITH_OUTLIER, 0.14, CLOUD).row(0, named=True)
    assert r["j_per_token"] == pytest.approx(960 / 500)  # the pooled headline is unchanged
    assert r["per_generation_n"] == 5 and r["per_generation_outliers"] == 1
    assert r["j_per_token_median"] == pytest.approx(1.2)
    assert (r["j_per_token_q1"], r["j_per_token_q3"], r["j_per_token_iqr"]) == pytest.approx((1.1, 1.3, 0.2))
    assert r["j_per_token_mean"] == pytest.approx(9.6 / 5)
    assert r["reported_rule"] == RULE_OUTLIERS == "median ± IQR"
    assert r["usd_per_1m_tokens_reported"] == pytest.approx(1.2 * TO_USD)
    assert r["usd_per_1m_tokens_reported_spread"] == pytest.approx(0.2 * TO_USD)
    assert r["kwh_per_1m_tokens_reported"] == pytest.approx(1.2 / 3.6)
    assert r["kwh_per_1m_tokens_reported_spread"] == pytest.approx(0.2 / 3.6)
    # Both column sets are always there.
    assert r["usd_per_1m_tokens_mean"] == pytest.approx(9.6 / 5 * TO_USD)
    assert r["usd_per_1m_tokens_sd"] is not None and r["usd_per_1m_tokens_iqr"] == pytest.approx(0.2 * TO_USD)


def test_a_group_without_outliers_reports_mean_and_sd_and_keeps_median_and_iqr():
    r = cost_table(NO_OUTLIER, 0.14, CLOUD).row(0, named=True)
    assert r["j_per_token"] == pytest.approx(2.4)
    assert r["per_generation_n"] == 3 and r["per_generation_outliers"] == 0
    assert r["reported_rule"] == RULE_NO_OUTLIERS == "mean ± sd"
    assert r["usd_per_1m_tokens_reported"] == pytest.approx(2.0 * TO_USD)
    assert r["usd_per_1m_tokens_reported_spread"] == pytest.approx(1.0 * TO_USD)
    assert r["usd_per_1m_tokens_median"] == pytest.approx(2.0 * TO_USD)
    assert r["usd_per_1m_tokens_iqr"] == pytest.approx(1.0 * TO_USD)  # Q1 1.5, Q3 2.5


def test_generations_without_tokens_count_in_the_pooled_value_only():
    # A llama-bench prefill-only sample: energy but no generated token.
    r = cost_table(runs([40.0, 80.0, 20.0], tokens=(100, 300, 0)), 0.14, []).row(0, named=True)
    assert r["j_per_token"] == pytest.approx(140 / 400)
    assert r["per_generation_n"] == 2
    assert r["j_per_token_mean"] == pytest.approx((0.4 + 80 / 300) / 2)


def test_unmeasured_energy_stays_null_with_its_reason():
    t = cost_table(runs([None, None]), 0.14, CLOUD)
    row = t.row(0, named=True)
    assert row["j_per_token"] is None and row["usd_per_1m_tokens"] is None
    assert row["energy_status"] == ENERGY_NOT_MEASURED
    assert "GPT-4o output usd_per_1m (2024-10)" in t.columns and "GPT-4o input usd_per_1m (2024-10)" in t.columns
    stats = [c for c in t.columns if c.endswith(("_median", "_q1", "_q3", "_iqr", "_mean", "_sd", "_reported",
                                                 "_reported_spread")) and not c.startswith("precision_")]
    assert len(stats) == 3 * 8 and all(row[c] is None for c in stats)
    assert row["reported_rule"] is None and row["per_generation_outliers"] is None


def test_one_unmeasured_generation_makes_the_whole_group_unmeasured():
    row = cost_table(runs([40.0, None]), 0.14, []).row(0, named=True)
    assert row["j_per_token"] is None and row["j_per_token_median"] is None and row["usd_per_1m_tokens_mean"] is None


def test_an_estimate_is_labelled_as_one_in_the_table():
    r = runs([40.0, 80.0], estimate=True).with_columns(energy_source=pl.lit("estimate: 65 W assumed × window"))
    t = cost_table(r, 0.14, CLOUD)
    assert t.row(0, named=True)["energy_status"] == "estimate, not measured: estimate: 65 W assumed × window"
    md = render_markdown(t, 0.14, "test price", CLOUD)
    assert "| 0.3 estimate [1] |" in md and "[1] estimate, not measured: estimate: 65 W assumed × window" in md


def test_hardware_amortization_and_break_even_by_hand():
    cloud = [*CLOUD, {"name": "cheap", "input_usd_per_1m": 0.01, "output_usd_per_1m": 0.05, "as_of": "2024-10",
                      "source": "s"},
             {"name": "close", "input_usd_per_1m": 0.01, "output_usd_per_1m": 0.1, "as_of": "2024-10", "source": "s"}]
    r = cost_table(NO_OUTLIER, 0.14, cloud, HARDWARE).row(0, named=True)
    local = 2.4 * TO_USD  # 0.09333 $ per 1M from energy
    assert r["hardware_usd_per_day"] == pytest.approx(1.0)
    # $1 a day over 0.5 × 100 tokens/s × 86,400 s = 4.32M tokens a day.
    assert r["hardware_usd_per_1m_tokens"] == pytest.approx(1e6 / 4.32e6)
    assert r["total_usd_per_1m_tokens"] == pytest.approx(local + 1e6 / 4.32e6)
    assert r["capacity_tokens_per_day"] == pytest.approx(8.64e6)
    assert "decode tokens/s" in r["hardware_throughput_basis"]
    # $1 a day / ($10 − local) per 1M tokens.
    assert r["break-even vs GPT-4o tokens_per_day"] == pytest.approx(1e6 / (10.0 - local))
    assert r["break-even vs GPT-4o above capacity"] is False
    assert r["break-even vs GPT-4o null_reason"] is None
    # The cloud is cheaper than the local energy alone: no volume breaks even.
    assert r["break-even vs cheap tokens_per_day"] is None
    assert "at or above cheap's output price" in r["break-even vs cheap null_reason"]
    # A thin margin: 1e6 / 0.00667 = 150M tokens a day, beyond the 8.64M the machine makes.
    assert r["break-even vs close tokens_per_day"] == pytest.approx(1e6 / (0.1 - local))
    assert r["break-even vs close above capacity"] is True


def test_break_even_at_equal_prices_is_null():
    # Local energy price exactly the cloud's: 1 J/token at $0.36/kWh = $0.1 per 1M.
    cloud = [{"name": "same", "input_usd_per_1m": 0.0, "output_usd_per_1m": 0.1, "as_of": "2024-10", "source": "s"}]
    r = cost_table(runs([100.0, 300.0]), 0.36, cloud, HARDWARE).row(0, named=True)
    assert r["usd_per_1m_tokens"] == pytest.approx(0.1)
    assert r["break-even vs same tokens_per_day"] is None and "never breaks even" in r["break-even vs same null_reason"]


def test_hardware_without_measured_energy_gives_the_hardware_share_only():
    r = cost_table(runs([None, None], speed=[100.0, 100.0]), 0.14, CLOUD, HARDWARE).row(0, named=True)
    assert r["hardware_usd_per_1m_tokens"] == pytest.approx(1e6 / 4.32e6)
    assert r["total_usd_per_1m_tokens"] is None
    assert r["break-even vs GPT-4o tokens_per_day"] is None
    assert r["break-even vs GPT-4o null_reason"] == ENERGY_NOT_MEASURED


def test_a_skipped_job_has_no_throughput_and_says_why():
    t = cost_table(pl.concat([NO_OUTLIER, skipped()]), 0.14, CLOUD, HARDWARE)
    r = t.filter(pl.col("tool") == "ollama").row(0, named=True)
    assert r["hardware_usd_per_1m_tokens"] is None and r["capacity_tokens_per_day"] is None
    assert r["hardware_null_reason"] == f"no decode throughput measured: {SKIPPED}"
    assert r["per_generation_n"] == 0 and r["reported_rule"] is None


def test_without_hardware_there_are_no_amortization_columns():
    assert not [c for c in cost_table(NO_OUTLIER, 0.14, CLOUD).columns if "hardware" in c or "break-even" in c]


@pytest.mark.parametrize("key, value", [("utilization", 0), ("utilization", 1.5), ("purchase_usd", -1),
                                        ("lifetime_years", None)])
def test_bad_hardware_names_the_key_and_the_value(key, value):
    with pytest.raises(ValueError, match=rf"costs\.hardware\.{key} = {value!r}"):
        check_hardware({**HARDWARE, key: value})


def test_markdown_has_one_section_per_tool_with_units_and_the_rule():
    frame = pl.concat([WITH_OUTLIER, NO_OUTLIER, runs([None, None], tool="transformers"), skipped()])
    md = render_markdown(cost_table(frame, 0.14, CLOUD, HARDWARE), 0.14, "test price", CLOUD, HARDWARE)
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections == ["## Cloud API prices", "## llama-server", "## ollama", "## transformers"]
    assert ("| model | quant | split | clients | depth | generations | median decode [tok/s] | precision | "
            "J/token (pooled) | "
            "kWh per 1M tokens (pooled) | $ per 1M tokens (pooled) | kWh per 1M: median ± IQR | "
            "kWh per 1M: mean ± sd | $ per 1M: median ± IQR | $ per 1M: mean ± sd | "
            "$ per 1M reported (article's rule) | local / GPT-4o output price |") in md
    assert f"{1.2 * TO_USD:.4g} ± {0.2 * TO_USD:.4g} (median ± IQR; Tukey outliers: 1 of 5)" in md
    assert f"{2.0 * TO_USD:.4g} ± {1.0 * TO_USD:.4g} (mean ± sd; Tukey outliers: 0 of 3)" in md
    # Quants coarsest first within a tool.
    assert md.index("| m | Q4_0 | none | 1 | 0 | 5 |") < md.index("| m | Q8_0 | none | 1 | 0 | 3 |")
    assert f"| m | Q4_0 | none | 1 | 0 | 2 | 60 | not recorded | {ENERGY_NOT_MEASURED} | not measured |" in md
    assert f"| m | Q4_0 | none | 1 | 0 | 1 | not run: {SKIPPED} | not run | not run |" in md
    assert "OUTPUT price" in md and "| GPT-4o | 2.5 | 10 | 2024-10 | s |" in md
    assert "### llama-server: with hardware amortization (estimate)" in md
    assert "hardware $ per 1M tokens (estimate)" in md and "break-even vs GPT-4o [tokens/day]" in md
    assert "| 8,640,000 |" in md  # capacity at 100 tokens/s
    assert "Hardware amortization is an estimate, not a measurement" in md


def test_cost_tables_are_written_as_csv_and_markdown(tmp_path):
    costs = {"electricity_usd_per_kwh": 0.14, "electricity_note": "test price", "cloud": CLOUD, "hardware": None}
    table = write_cost_tables(pl.concat([WITH_OUTLIER, NO_OUTLIER]), costs, tmp_path / "c.csv", tmp_path / "c.md")
    csv = pl.read_csv(tmp_path / "c.csv")
    assert csv.height == table.height == 2
    assert {"usd_per_1m_tokens_median", "usd_per_1m_tokens_iqr", "usd_per_1m_tokens_mean", "usd_per_1m_tokens_sd",
            "reported_rule", "GPT-4o output usd_per_1m (2024-10)"} <= set(csv.columns)
    assert (tmp_path / "c.md").read_text().startswith("# Cost per 1M generated tokens")


def test_the_measurement_boundary_is_named_in_the_table():
    measured = runs([100.0, 300.0]).with_columns(pl.lit("CPU package+DRAM (RAPL)").alias("energy_boundary"))
    table = cost_table(measured, 0.14, CLOUD)
    assert table["energy_boundary"].to_list() == ["CPU package+DRAM (RAPL)"]
    assert "Energy measured at: CPU package+DRAM (RAPL)." in render_markdown(table, 0.14, "", CLOUD)
    # Rows from before the boundary was recorded: no column, no line.
    assert "Energy measured at" not in render_markdown(cost_table(runs([100.0, 300.0]), 0.14, CLOUD), 0.14, "", CLOUD)


def test_windows_too_short_for_their_sensor_are_left_out_and_counted():
    short = "window of 0.5 s is shorter than 20 updates of nvml:0 (2 s): it reads low, so it is left out of J per token"
    frame = runs([100.0, 900.0], tokens=(100, 300)).with_columns(
        pl.Series("energy_valid", [False, True]), pl.Series("energy_invalid_reason", [short, None]))
    r = cost_table(frame, 0.14, []).row(0, named=True)
    assert r["j_per_token"] == 3.0 and (r["energy_windows_used"], r["energy_windows"]) == (1, 2)  # 900 J / 300
    assert r["energy_basis"].startswith("energy summed over 1 of 2 windows") and short in r["energy_basis"]
    none_used = cost_table(frame.with_columns(pl.lit(False).alias("energy_valid"),
                                              pl.lit(short).alias("energy_invalid_reason")), 0.14, [])
    assert none_used["j_per_token"][0] is None
    assert none_used["energy_status"][0] == f"not measured: every {short}"


def test_the_markdown_says_how_many_windows_a_pooled_value_used():
    short = "window of 0.5 s is shorter than 20 updates of nvml:0 (2 s): it reads low, so it is left out of J per token"
    frame = runs([100.0, 900.0], tokens=(100, 300)).with_columns(
        pl.Series("energy_valid", [False, True]), pl.Series("energy_invalid_reason", [short, None]))
    md = render_markdown(cost_table(frame, 0.14, []), 0.14, "test price", [])
    assert "| 3 [1] |" in md and "[1] energy summed over 1 of 2 windows" in md


def test_a_quant_whose_file_is_not_its_label_is_marked_with_the_real_mix():
    note = "Q4_0 here holds 67 % Q4_0, 33 % Q8_0 by weight bytes"
    frame = pl.concat([WITH_OUTLIER.with_columns(pl.lit(note).alias("quant_label_note")), NO_OUTLIER],
                      how="diagonal_relaxed")
    t = cost_table(frame, 0.14, CLOUD, HARDWARE)
    assert t.filter(pl.col("quant") == "Q4_0")["quant_label_note"].to_list() == [note]
    md = render_markdown(t, 0.14, "test price", CLOUD, HARDWARE)
    marker = md.split("| m | Q4_0 ≠ ")[1].split(" ")[0]
    assert f"\n{marker} {note}\n" in md and md.count("| m | Q4_0 ≠ ") == 2  # both tables: energy and hardware
    assert "| m | Q8_0 | none |" in md


def test_no_credential_in_a_price_note_or_source_reaches_the_tables(tmp_path):
    # configcheck refuses these in a config; the writer redacts them too, for tables written from elsewhere.
    token, key = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "Zx9Yw8Vu7Ts6"
    cloud = [{**CLOUD[0], "source": f"https://prices.example.com/api?api_key={key}"}]
    costs = {"electricity_usd_per_kwh": 0.14, "electricity_note": f"tariff page, token {token}", "cloud": cloud,
             "hardware": {**HARDWARE, "note": f"quote from https://bob:{key}@shop.example.com/q"}}
    write_cost_tables(pl.concat([WITH_OUTLIER, NO_OUTLIER]), costs, tmp_path / "c.csv", tmp_path / "c.md")
    written = (tmp_path / "c.csv").read_text() + (tmp_path / "c.md").read_text()
    assert token not in written and key not in written
    assert "tariff page, token [redacted:hf-token]" in written
    assert "api_key=[redacted:url-credential]" in written and "bob:[redacted:url-password]@shop" in written


def precision_of(rates):
    """A job's precision columns as the bench writes them (llmbench.core.precision.Rounds.columns), fixed repetitions."""
    rounds = Rounds(len(rates))
    for rate in rates:
        rounds.record(rate)
    return rounds.columns()


def with_precision(frame, rates):
    return frame.with_columns(pl.lit(v, RUN_SCHEMA[c]).alias(c) for c, v in precision_of(rates).items())


def test_each_group_carries_its_jobs_precision_in_csv_and_markdown(tmp_path):
    # Q4_0: 6 rounds 48 … 52, median 50, 95 % interval (48, 52): ±4.0 %; Q8_0: 2 rounds, no interval; ollama skipped.
    frame = pl.concat([with_precision(WITH_OUTLIER, [48.0, 49.0, 50.0, 50.0, 51.0, 52.0]),
                       with_precision(NO_OUTLIER, [50.0, 52.0]), skipped()], how="diagonal_relaxed")
    costs = {"electricity_usd_per_kwh": 0.14, "electricity_note": "test price", "cloud": [], "hardware": None}
    t = write_cost_tables(frame, costs, tmp_path / "c.csv", tmp_path / "c.md")
    assert set(TABLE_PRECISION) <= set(t.columns)
    rows = {(r["tool"], r["quant"]): r for r in pl.read_csv(tmp_path / "c.csv").iter_rows(named=True)}
    q4, q8, ollama = rows["llama-server", "Q4_0"], rows["llama-server", "Q8_0"], rows["ollama", "Q4_0"]
    assert q4["precision"] == "±4.0% (95% CI of the median of 6 rounds' decode rates)"
    assert (q4["precision_rounds"], q4["precision_median"], q4["precision_low"], q4["precision_high"]) == (
        6, 50.0, 48.0, 52.0)
    assert q4["precision_confidence"] == 0.95 and q4["precision_target"] is None and q4["precision_met"] is None
    assert q8["precision"] == "no interval: 2 rounds (a 95% interval of a median needs 6)"
    assert q8["precision_rounds"] == 2 and q8["precision_low"] is None
    assert ollama["precision"] is None and ollama["precision_rounds"] is None
    md = (tmp_path / "c.md").read_text()
    assert "| median decode [tok/s] | precision | J/token (pooled) |" in md
    assert "| m | Q4_0 | none | 1 | 0 | 5 | 100 | ±4.0% (95% CI, 6 rounds) |" in md
    mark = re.search(r"\| m \| Q8_0 \| none \| 1 \| 0 \| 3 \| 100 \| no interval \(2 rounds\) (\[\d+\]) \|", md)
    assert mark and f"\n{mark.group(1)} {q8['precision']}\n" in md
    assert f"| not run: {SKIPPED} | not run |" in md and PRECISION_NOTE in md
