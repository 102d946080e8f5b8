import math

import polars as pl
import pytest

from conftest import REPO, write_tiny_gguf
from llmbench.core.precision import PRECISION_COLUMNS, Rounds
from llmbench.engines.perplexity import parse_kld_summary
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.outputs.costs import usd_per_1m_tokens
from llmbench.outputs.markdown import PRECISION_NOTE
from llmbench.outputs.plots import pareto_chart, save_all
from llmbench.outputs.quality import file_facts, quality_table, render_markdown
from llmbench.outputs.stats import TABLE_PRECISION, pareto_front
from llmbench.study.accuracy import wilson_interval

NO_RAPL = "not measured: CPU energy: no RAPL zones under /sys/class/powercap (absent in many VMs)"
KLD_Q4_0 = parse_kld_summary((REPO / "tests/data/llama_perplexity_kld_q4_0.txt").read_text())
RUN_COLUMNS = ["tool", "model", "quant", "split", "status", "status_reason", "generated_tokens", "decode_tokens_per_s",
               "energy_j", "energy_window_s", "energy_source", "energy_null_reason", "energy_is_estimate"]


def run(quant, energy_j=None, tokens=100, tps=50.0, tool="llama-server", status="ok", reason=None, model="m"):
    ok = status == "ok"
    return {"tool": tool, "model": model, "quant": quant, "split": "none", "status": status, "status_reason": reason,
            "generated_tokens": tokens if ok else None, "decode_tokens_per_s": tps if ok else None,
            "energy_j": energy_j, "energy_window_s": 2.5 if ok else None,
            "energy_source": "nvml" if energy_j is not None else None,
            "energy_null_reason": None if energy_j is not None else (NO_RAPL if ok else "not measured: job skipped"),
            "energy_is_estimate": False}


def runs_frame(rows):
    return pl.DataFrame(rows, schema={c: RUN_SCHEMA[c] for c in RUN_COLUMNS})


def acc_rows(tool, quant, correct, status="ok", reason=None, model="m"):
    return [{"tool": tool, "model": model, "quant": quant, "question_id": f"q{i}", "correct": c, "status": status,
             "status_reason": reason} for i, c in enumerate(correct)]


ACC_SCHEMA = {"tool": pl.String, "model": pl.String, "quant": pl.String, "question_id": pl.String,
              "correct": pl.Boolean, "status": pl.String, "status_reason": pl.String}
FILES = pl.DataFrame({"model": ["m"] * 4, "quant": ["F16", "Q6_K", "Q8_0", "Q4_0"],
                      "file_bytes": [2_000_000, 1_075_000, 1_062_500, 562_500], "weights": [1_000_000] * 4}
                     ).with_columns((pl.col("file_bytes") * 8 / pl.col("weights")).alias("bits_per_weight"),
                                    pl.Series("nominal_bits_per_weight", [16.0, 6.5625, 8.5, 4.5]),
                                    pl.Series("tensor_mix", ["100 % F16", "84 % Q8_0, 16 % Q6_K", "100 % Q8_0",
                                                             "100 % Q4_0"]),
                                    pl.Series("quant_label_note", [None, "Q6_K here holds 84 % Q8_0", None, None]))
KLD = pl.DataFrame([{"model": "m", "quant": "Q4_0", "reference_quant": "F16", **KLD_Q4_0},
                    {"model": "m", "quant": "Q2_K", "reference_quant": "F16", **KLD_Q4_0, "kld_mean": 0.9}])
RUNS = runs_frame([run("Q4_0", 40.0, 100, 50.0), run("Q4_0", 80.0, 300, 70.0),  # measured: 120 J / 400 tokens
                   run("Q8_0", None, 100, 30.0), run("Q8_0", None, 100, 34.0),
                   run("F16", status="skipped", reason="F16 does not fit in memory"),
                   run("Q4_0", 1.0, 100, 999.0, tool="ollama")])  # another tool: not the speed tool
ACCURACY = pl.DataFrame(acc_rows("llama-server", "Q4_0", [True] * 16 + [False] * 14)
                        + acc_rows("vllm", "Q4_0", [None] * 30, "skipped", "vLLM needs a GPU; none here")
                        + acc_rows("llama-server", "Q8_0", [True] * 20), schema=ACC_SCHEMA)


@pytest.fixture(scope="module")
def table():
    return quality_table(FILES, KLD, ACCURACY, RUNS, usd_per_kwh=0.14)


def row(table, quant):
    return table.filter(pl.col("quant") == quant).row(0, named=True)


def test_file_facts_measures_bits_per_weight_from_the_files(tmp_path):
    small = write_tiny_gguf(tmp_path / "small.gguf", n=64)
    large = write_tiny_gguf(tmp_path / "large.gguf", n=4096)
    facts = file_facts({("m", "F32"): small, ("m2", "F32"): large})
    assert facts.columns == ["model", "quant", "file_bytes", "weights", "nominal_bits_per_weight", "tensor_mix",
                             "quant_label_note", "bits_per_weight"]
    # What the files hold, read from their headers: F32 matrices, as the label says.
    assert facts["tensor_mix"].to_list() == ["100 % F32"] * 2 and facts["quant_label_note"].to_list() == [None] * 2
    assert facts["nominal_bits_per_weight"].to_list() == [32.0, 32.0]
    assert facts["weights"].to_list() == [256, 16384]
    assert facts["file_bytes"].to_list() == [small.stat().st_size, large.stat().st_size]
    assert facts["bits_per_weight"].to_list() == [b * 8 / w for b, w in zip(facts["file_bytes"], facts["weights"],
                                                                         strict=True)]
    # F32 tensors: 32 bits per weight plus the header, which the file size includes (negligible in a large file).
    small_bpw, large_bpw = facts["bits_per_weight"]
    assert small_bpw > 32.0 and large_bpw == pytest.approx(32.0, rel=5e-3) and large_bpw < small_bpw


def test_quality_table_keeps_every_quant_any_input_knows_ordered_by_bits(table):
    # Q2_K is known only from KLD (nominal 2.95 bpw), Q6_K only from its file; Q6_K's measured 8.6 bpw puts it
    # after Q8_0 (8.5), against the nominal order.
    assert table["quant"].to_list() == ["Q2_K", "Q4_0", "Q8_0", "Q6_K", "F16"]
    assert table.columns[:27] == [
        "model", "quant", "file_bytes", "bits_per_weight", "nominal_bits_per_weight", "tensor_mix",
        "quant_label_note", "median_decode_tokens_per_s", "precision", "precision_rounds", "precision_median",
        "precision_low", "precision_high", "precision_confidence", "precision_target", "precision_met",
        "speed_null_reason",
        "j_per_token", "energy_null_reason", "energy_is_estimate", "usd_per_1m_tokens", "kld_mean", "kld_mean_unc",
        "kld_p99", "ppl", "ppl_ratio", "ppl_ratio_unc"]
    q4 = row(table, "Q4_0")
    assert q4["bits_per_weight"] == 4.5 and q4["file_bytes"] == 562_500
    assert q4["kld_mean"] == 0.251615 and q4["kld_mean_unc"] == 0.00444 and q4["kld_p99"] == 0.959786
    assert q4["ppl_ratio"] == 1.189145 and q4["same_top_p_pct"] == 69.921 and q4["reference_quant"] == "F16"
    q8 = row(table, "Q8_0")
    assert q8["kld_mean"] is None and q8["ppl_ratio"] is None and q8["reference_quant"] == "F16"
    assert row(table, "Q2_K")["file_bytes"] is None and row(table, "Q2_K")["kld_mean"] == 0.9


def test_speed_and_energy_of_the_speed_tool_only_with_cost_table_semantics(table):
    q4 = row(table, "Q4_0")
    assert q4["median_decode_tokens_per_s"] == 60.0  # ollama's 999 tok/s is not mixed in
    assert q4["j_per_token"] == pytest.approx(120 / 400) and q4["energy_null_reason"] is None
    assert q4["usd_per_1m_tokens"] == pytest.approx(usd_per_1m_tokens(0.3, 0.14))
    q8 = row(table, "Q8_0")
    assert q8["median_decode_tokens_per_s"] == 32.0 and q8["speed_null_reason"] is None
    assert q8["j_per_token"] is None and q8["usd_per_1m_tokens"] is None and q8["energy_null_reason"] == NO_RAPL
    f16 = row(table, "F16")
    assert f16["median_decode_tokens_per_s"] is None and f16["speed_null_reason"] == "F16 does not fit in memory"
    assert row(table, "Q6_K")["speed_null_reason"] == "no llama-server runs"
    ollama = row(quality_table(FILES, KLD, ACCURACY, RUNS, "ollama", usd_per_kwh=0.14), "Q4_0")
    assert ollama["median_decode_tokens_per_s"] == 999.0 and ollama["j_per_token"] == pytest.approx(0.01)


def test_runs_of_several_split_modes_must_be_chosen_by_the_caller():
    two = RUNS.with_columns(pl.when(pl.col("quant") == "Q8_0").then(pl.lit("layer")).otherwise("split").alias("split"))
    with pytest.raises(ValueError, match="split modes"):
        quality_table(FILES, KLD, ACCURACY, two, usd_per_kwh=0.14)


def test_accuracy_per_tool_with_wilson_bounds_and_skipped_tools_listed(table):
    q4 = row(table, "Q4_0")
    low, high = wilson_interval(16, 30)
    assert q4["accuracy llama-server"] == pytest.approx(16 / 30) and q4["accuracy llama-server n"] == 30
    assert q4["accuracy llama-server low"] == pytest.approx(low) and q4["accuracy llama-server high"] == pytest.approx(high)
    assert q4["accuracy vllm"] is None and q4["accuracy vllm n"] == 0
    assert q4["accuracy not run"] == "vllm: vLLM needs a GPU; none here"
    q8 = row(table, "Q8_0")
    assert q8["accuracy llama-server"] == 1.0 and q8["accuracy llama-server high"] == 1.0
    assert q8["accuracy vllm"] is None and q8["accuracy vllm n"] is None and q8["accuracy not run"] is None
    assert table.columns[-9:] == [
        "accuracy llama-server", "accuracy llama-server low", "accuracy llama-server high", "accuracy llama-server n",
        "accuracy vllm", "accuracy vllm low", "accuracy vllm high", "accuracy vllm n", "accuracy not run"]


def test_render_markdown_footnotes_reasons_and_formats_accuracy(table):
    md = render_markdown(table, ["llama-server", "vllm"])
    low, high = wilson_interval(16, 30)
    assert f"0.53 [{low:.2f}, {high:.2f}] (n=30)" == "0.53 [0.36, 0.70] (n=30)"
    cells = {c[1]: c for c in ([x.strip() for x in line.split("|")[1:-1]] for line in md.splitlines()
                                if line.startswith("| m |"))}
    q4 = cells["Q4_0"]
    # Rows measured before jobs recorded their precision (no precision_* columns) say so.
    assert q4[2:11] == ["0.5", "4.50 (4.50)", "100 % Q4_0", "60", "not recorded", "0.3", "0.2516 ± 0.0044",
                        "1.189 ± 0.020", "69.9"]
    assert q4[11] == "0.53 [0.36, 0.70] (n=30)" and q4[12].startswith("not run [")
    q8 = cells["Q8_0"]
    assert q8[7].startswith("not measured [") and q8[8] == "not measured" and q8[11] == "1.00 [0.84, 1.00] (n=20)"
    # One footnote per reason, its number in the cell.
    assert f"\n{q8[7].removeprefix('not measured ')} {NO_RAPL}\n" in md
    assert f"\n{q4[12].removeprefix('not run ')} vllm: vLLM needs a GPU; none here\n" in md
    f16 = cells["F16"]
    assert f16[5] == f16[7].replace("not measured", "not run") and f16[6] == "not run" and f16[8] == "reference"
    assert f"\n{f16[5].removeprefix('not run ')} F16 does not fit in memory\n" in md
    # A file that is not what its label says: the label marked, the real mix in its footnote; the others unmarked.
    q6 = next(c for c in cells.values() if c[1].startswith("Q6_K"))
    assert q6[1].startswith("Q6_K ≠ [") and q6[3] == "8.60 (6.56)" and q6[4] == "84 % Q8_0, 16 % Q6_K"
    assert f"\n{q6[1].removeprefix('Q6_K ≠ ')} Q6_K here holds 84 % Q8_0\n" in md
    assert q4[1] == "Q4_0" and "≠" not in q8[1]
    assert md.count("] no llama-server runs\n") == 1 and "] llama-server: no accuracy rows for this quant\n" in md
    assert "Wilson 95 % interval" in md and "reference quant's logits" in md

def frontier(points, maximise_y=True, by=("model",)):
    df = pl.DataFrame(points, schema={"model": pl.String, "x": pl.Float64, "y": pl.Float64}, orient="row")
    return pareto_front(df, "x", "y", maximise_y, by)["on_frontier"].to_list()


def test_pareto_front_drops_dominated_points():
    assert frontier([("m", 0.1, 10.0), ("m", 0.2, 5.0), ("m", 0.3, 20.0)]) == [True, False, True]
    assert frontier([("m", 0.1, 10.0), ("m", 0.2, 5.0), ("m", 0.3, 20.0)], maximise_y=False) == [True, True, False]
    assert frontier([("m", 0.5, 1.0)]) == [True]


def test_pareto_front_ties():
    # Identical points do not dominate each other; equal x with worse y, or equal y with larger x, is dominated.
    assert frontier([("m", 0.1, 10.0), ("m", 0.1, 10.0)]) == [True, True]
    assert frontier([("m", 0.1, 10.0), ("m", 0.1, 9.0)]) == [True, False]
    assert frontier([("m", 0.1, 10.0), ("m", 0.2, 10.0)]) == [True, False]
    assert frontier([("m", 0.1, 10.0), ("m", 0.2, 10.0)], maximise_y=False) == [True, False]


def test_pareto_front_nulls_are_off_it_and_dominate_nothing():
    points = [("m", None, 100.0), ("m", 0.1, None), ("m", math.nan, 100.0), ("m", 0.2, 5.0), ("m", 0.3, 4.0)]
    assert frontier(points) == [False, False, False, True, False]
    assert frontier([("m", None, None)]) == [False]


def test_pareto_front_per_group_and_over_all():
    points = [("a", 0.1, 10.0), ("a", 0.2, 20.0), ("b", 0.3, 5.0), ("b", 0.4, 1.0)]
    assert frontier(points) == [True, True, True, False]
    assert frontier(points, by=()) == [True, True, False, False]
    df = pareto_front(pl.DataFrame({"model": ["a"], "x": [1], "y": [2]}), "x", "y")
    assert df.columns == ["model", "x", "y", "on_frontier"] and df["on_frontier"].dtype == pl.Boolean


def test_pareto_chart_saves_png_and_offline_html(table, tmp_path):
    chart = pareto_chart(table, "median_decode_tokens_per_s", "median decode speed (tokens/s)",
                         "Quality vs speed (energy not measured here)", maximise_y=True)
    spec = chart.to_dict()
    (data,) = spec["datasets"].values()
    # Q8_0 has no KLD and F16 no speed: only Q4_0 can be drawn.
    assert [d["quant"] for d in data] == ["Q4_0"] and data[0]["on_frontier"] is True
    assert spec["title"]["text"] == "Quality vs speed (energy not measured here)"
    assert "frontier" in " ".join(spec["title"]["subtitle"]) and data[0]["label"] == "Q4_0"
    png, svg, html = save_all(chart, tmp_path / "pareto")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "<svg" in svg.read_text()[:500]
    page = html.read_text()
    assert "vega" in page and "cdn.jsdelivr" not in page


def test_a_pareto_point_whose_file_is_not_its_label_is_marked_and_named(table):
    marked = table.with_columns(
        pl.when(pl.col("quant") == "Q4_0").then(pl.lit("Q4_0 here holds 67 % Q4_0, 33 % Q8_0")).alias("quant_label_note"),
        pl.when(pl.col("quant") == "Q4_0").then(pl.lit("67 % Q4_0, 33 % Q8_0")).alias("tensor_mix"))
    spec = pareto_chart(marked, "median_decode_tokens_per_s", "speed", "t").to_dict()
    (data,) = spec["datasets"].values()
    assert data[0]["label"] == "Q4_0 ≠"
    assert "    Q4_0 (m): 67 % Q4_0, 33 % Q8_0" in spec["title"]["subtitle"]


def precision_of(rates):
    """A job's precision columns as the bench writes them (llmbench.core.precision.Rounds.columns), fixed repetitions."""
    rounds = Rounds(len(rates))
    for rate in rates:
        rounds.record(rate)
    return rounds.columns()


def test_the_decode_speed_carries_the_precision_of_the_speed_tools_job():
    # llama-server Q4_0: 6 rounds 48 … 52, ±4.0 %; ollama Q4_0: 2 rounds, no interval; Q8_0: none recorded.
    jobs = pl.DataFrame([{"tool": "llama-server", "quant": "Q4_0", **precision_of([48.0, 49.0, 50.0, 50.0, 51.0, 52.0])},
                         {"tool": "ollama", "quant": "Q4_0", **precision_of([50.0, 52.0])}],
                        schema={"tool": pl.String, "quant": pl.String, **{c: RUN_SCHEMA[c] for c in PRECISION_COLUMNS}})
    runs = RUNS.join(jobs, on=["tool", "quant"], how="left", maintain_order="left")
    t = quality_table(FILES, KLD, ACCURACY, runs, usd_per_kwh=0.14)
    q4 = row(t, "Q4_0")
    assert q4["precision"] == "±4.0% (95% CI of the median of 6 rounds' decode rates)"
    assert (q4["precision_rounds"], q4["precision_median"], q4["precision_low"], q4["precision_high"]) == (
        6, 50.0, 48.0, 52.0)
    assert q4["precision_met"] is None and q4["precision_target"] is None
    assert row(t, "Q8_0")["precision"] is None and row(t, "F16")["precision_rounds"] is None
    ollama = row(quality_table(FILES, KLD, ACCURACY, runs, "ollama", usd_per_kwh=0.14), "Q4_0")
    assert ollama["precision"] == "no interval: 2 rounds (a 95% interval of a median needs 6)"
    md = render_markdown(t, ["llama-server"])
    cells = {c[1]: c for c in ([x.strip() for x in line.split("|")[1:-1]] for line in md.splitlines()
                                if line.startswith("| m |"))}
    assert "| decode tok/s | precision | J/token |" in md and PRECISION_NOTE in md
    assert cells["Q4_0"][5:7] == ["60", "±4.0% (95% CI, 6 rounds)"]
    assert cells["Q8_0"][6] == "not recorded" and cells["F16"][6] == "not run"
    # A quality table archived before these columns existed renders as not recorded.
    old = render_markdown(t.drop(TABLE_PRECISION), ["llama-server"])
    assert "| 60 | not recorded |" in old
