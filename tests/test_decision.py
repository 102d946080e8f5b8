"""The decision table and figure (llmbench.outputs.decision): each constraint judged on the study's recorded tables,
goodput counted per request, the ranking by cost (and by throughput where energy was not measured), "not judged"
where a metric is missing, the workload's machines and cost per day, and the figure's data.

The recorded tables and rows are the default study's on the 2-core VM (tests/data/decision/README.md)."""

from __future__ import annotations

import math
import subprocess
import sys

import polars as pl
import pytest
import yaml

from conftest import REPO
from llmbench.outputs import decision as d

DATA = REPO / "tests/data/decision"
DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())
CLOUD = DEFAULT["costs"]["cloud"]


def recorded():
    return {"serving": pl.read_csv(DATA / "serving.csv", infer_schema_length=None),
            "costs": pl.read_csv(DATA / "cost_per_1m_tokens.csv", infer_schema_length=None),
            "quality": pl.read_csv(DATA / "quality_by_quant.csv", infer_schema_length=None),
            "runs": pl.read_parquet(DATA / "runs.parquet")}


def table(decision=None, cloud=CLOUD, **changed):
    frames = recorded() | changed
    return d.decision_table(frames["serving"], frames["costs"], frames["quality"], frames["runs"],
                            DEFAULT["decision"] if decision is None else decision, cloud)


def row(t: pl.DataFrame, tool="llama-server", quant="Q4_0", concurrency=1) -> dict:
    (r,) = t.filter((pl.col("tool") == tool) & (pl.col("quant") == quant)
                    & (pl.col("concurrency") == concurrency)).iter_rows(named=True)
    return r


@pytest.mark.parametrize(("value", "limit", "upper", "expected"), [
    (279.0, 250.0, True, ("not met", "279 > 250")),
    (84.3, 250.0, True, ("met", "84.3 ≤ 250")),
    (15.7, 30.0, False, ("not met", "15.7 < 30")),
    (0.4, 0.25, False, ("met", "0.4 ≥ 0.25")),
    (None, 50.0, True, ("not judged", "why")),
    (float("nan"), 50.0, True, ("not judged", "why")),
    (1.0, None, True, ("no limit", "")),
])
def test_a_constraint_is_met_missed_not_judged_or_not_set(value, limit, upper, expected):
    assert d.judge(value, limit, upper, "why") == expected


def test_every_serving_configuration_is_judged_against_the_recorded_tables():
    t = table()
    # Every level of a tool that serves requests, and the configurations that did not run; no engine benchmark.
    assert set(t["tool"]) == {"llama-server", "llama-cpp-python", "transformers", "ollama", "vllm"}
    serving = recorded()["serving"].filter(pl.col("tool").is_in(d.candidate_tools()))
    assert t.filter(pl.col("not_run_reason").is_null()).height == serving.height
    # The numbers are the serving and quality tables', not recomputed.
    r = row(t, quant="Q8_0", concurrency=4)
    level = serving.filter((pl.col("tool") == "llama-server") & (pl.col("quant") == "Q8_0")
                           & (pl.col("concurrency") == 4)).row(0, named=True)
    assert r["ttft_ms_p99"] == level["ttft_ms_p99"] and r["itl_ms_p99"] == level["itl_ms_p99"]
    assert r["kld_mean"] == recorded()["quality"].filter(pl.col("quant") == "Q8_0")["kld_mean"].item()
    assert r["accuracy"] == recorded()["quality"].filter(pl.col("quant") == "Q8_0")["accuracy llama-server"].item()
    # 30 questions cannot tell 0.33 from the floor 0.25: met on the measured share, and the note says how sure.
    assert r["accuracy_verdict"] == "met"
    assert r["accuracy_note"] == "0.3333 ≥ 0.25 (uncertain: its Wilson 95 % interval 0.19–0.51 over 30 answers spans " \
                                 "the floor)"
    # Four clients on two cores miss the interactive service levels: the value beside the limit.
    assert r["verdict"] == "fails" and not r["passes"]
    assert r["ttft_verdict"] == "not met" and r["ttft_note"] == f"{level['ttft_ms_p99']:.4g} > 250"
    assert "TTFT p99" in r["missed"] and "ITL p99" in r["missed"]
    # A quant below the quality floor fails for that reason alone.
    q2 = row(t, quant="Q2_K")
    assert q2["meets_service_levels"] is True and q2["meets_quality_floor"] is False
    assert q2["missed"].startswith("mean KLD 0.3805 > 0.1")


def test_goodput_counts_the_requests_that_met_every_service_level_on_their_own_metrics():
    t = table()
    runs = recorded()["runs"].filter((pl.col("tool") == "llama-server") & (pl.col("quant") == "Q4_0")
                                     & (pl.col("concurrency") == 4) & (pl.col("status") == "ok"))
    good = runs.filter((pl.col("ttft_ms") <= 250) & (pl.col("tpot_ms") <= 50)
                       & (pl.col("decode_tokens_per_s") >= 30))
    r = row(t, concurrency=4)
    assert 0 < good.height < runs.height  # some requests of this level missed the TTFT target
    assert runs.filter(pl.col("ttft_ms") > 250).height > 0
    assert r["goodput_requests"] == good.height and r["requests"] == runs.height
    assert r["goodput_requests_per_s"] == pytest.approx(good.height / r["window_s"])
    assert r["goodput_output_tokens_per_s"] == pytest.approx(good["generated_tokens"].sum() / r["window_s"])
    assert r["goodput_share"] == pytest.approx(good.height / runs.height)
    # Without service levels every request counts.
    free = row(table({"quality": {"max_kld": 0.1}}), concurrency=4)
    assert free["goodput_requests"] == runs.height


def test_without_energy_the_passing_configurations_are_ranked_by_throughput_and_say_so():
    t = table()
    ranked = t.filter(pl.col("rank").is_not_null()).sort("rank")
    assert ranked.height == t["passes"].sum() >= 1 and t.filter(~pl.col("passes")).height >= 1
    assert ranked["goodput_output_tokens_per_s"].to_list() == sorted(ranked["goodput_output_tokens_per_s"],
                                                                      reverse=True)
    assert ranked["usd_per_1m_output_tokens"].is_null().all()
    assert all(b.startswith("throughput: energy not measured (CPU energy: no RAPL zones")
               for b in ranked["rank_basis"])
    md = d.render_markdown(t, DEFAULT["decision"], CLOUD)
    best = ranked.row(0, named=True)
    assert f"**llama-server · smollm2-135m · {best['quant']} · split none · 1 client** meets every constraint" in md
    assert "Ranked by throughput: energy not measured" in md
    # Rank 2 is 7.7 % behind rank 1: apart at their ±3.9 % and ±2.7 %, tied where its rounds spread ±10 %.
    assert not ranked["tied_with_rank_1"].fill_null(False).any()
    second = ranked.row(1, named=True)
    gap = 1 - second["goodput_output_tokens_per_s"] / best["goodput_output_tokens_per_s"]
    assert max(best["precision_relative"], second["precision_relative"]) < gap < 0.10
    serving = recorded()["serving"].with_columns(
        pl.when((pl.col("tool") == "llama-server") & (pl.col("quant") == second["quant"])
                & (pl.col("concurrency") == 1)).then(pl.col("precision_median") * 0.9)
        .otherwise(pl.col("precision_low")).alias("precision_low"))
    tied = table(serving=serving)
    assert row(tied, quant=second["quant"])["tied_with_rank_1"] is True
    assert row(tied, quant=best["quant"])["tied_with_rank_1"] is None
    assert (f"Within the measurement's precision of it (the wider of the two jobs' intervals of the median decode "
            f"rate; its own ±3.9%): llama-server {second['quant']}; this machine cannot tell them apart."
            ) in d.render_markdown(tied, DEFAULT["decision"], CLOUD)


def test_with_energy_the_ranking_is_by_cost_and_adds_hardware_where_configured():
    costs = recorded()["costs"]
    # Stand-in energy costs (the VM has no sensor): higher for finer quants, cheapest for Q6_K.
    standin = {"F16": 0.05, "Q8_0": 0.03, "Q6_K": 0.01, "Q5_K_M": 0.02, "Q4_K_M": 0.04}
    costs = costs.with_columns(pl.col("quant").replace_strict(standin, default=None, return_dtype=pl.Float64)
                               .alias("usd_per_1m_tokens"), pl.lit("measured").alias("energy_status"))
    t = table(costs=costs)
    ranked = t.filter(pl.col("rank").is_not_null()).sort("rank")
    assert ranked["quant"].to_list()[:2] == ["Q6_K", "Q5_K_M"]
    assert ranked["rank_basis"][0] == "$ per 1M output tokens: energy only"
    # Local $/day: the workload's output tokens at the energy price (no hardware configured).
    r = ranked.row(0, named=True)
    assert r["local_usd_per_day"] == pytest.approx(0.01 * r["workload_output_tokens_per_day"] / 1e6)
    # With hardware amortization the total ranks, and each machine's day of it is in the local cost per day.
    hardware = costs.with_columns(pl.col("quant").replace_strict({"Q6_K": 0.5, "Q5_K_M": 0.0}, default=0.1,
                                                                 return_dtype=pl.Float64)
                                  .alias("hardware_usd_per_1m_tokens"), pl.lit(13.7).alias("hardware_usd_per_day"))
    t = table(costs=hardware)
    ranked = t.filter(pl.col("rank").is_not_null()).sort("rank")
    assert ranked["quant"][0] == "Q5_K_M"
    assert ranked["rank_basis"][0] == "$ per 1M output tokens: energy + hardware amortization (estimate)"
    r = ranked.row(0, named=True)
    assert r["usd_per_1m_output_tokens"] == pytest.approx(0.02)
    assert r["local_usd_per_day"] == pytest.approx(0.02 * r["workload_output_tokens_per_day"] / 1e6
                                                   + r["machines_needed"] * 13.7)


def test_the_workload_gives_machines_and_cost_per_day_beside_each_cloud_price():
    decision = {**DEFAULT["decision"], "workload": {"requests_per_day": 1_000_000}}
    r = row(table(decision), quant="Q8_0")
    capacity = r["goodput_requests_per_s"] * 86_400
    assert r["machines_needed"] == math.ceil(1_000_000 / capacity) > 1
    gpt4o = CLOUD[0]
    expected = 1_000_000 * (r["prompt_tokens_per_request"] * gpt4o["input_usd_per_1m"]
                            + r["output_tokens_per_request"] * gpt4o["output_usd_per_1m"]) / 1e6
    assert r[f"GPT-4o usd_per_day ({gpt4o['as_of']})"] == pytest.approx(expected)
    assert r["local_usd_per_day"] is None and r["local_usd_per_day_null_reason"].startswith("energy not measured")
    # A workload in output tokens is turned into requests at the level's own output tokens per request.
    tokens = row(table({**DEFAULT["decision"], "workload": {"output_tokens_per_day": 3_000_000}}), quant="Q8_0")
    assert tokens["workload_requests_per_day"] == pytest.approx(3_000_000 / r["output_tokens_per_request"])
    # Sized for the busiest hour: three times the average rate needs three times the capacity.
    peak = row(table({**decision, "workload": {"requests_per_day": 1_000_000, "peak_to_average": 3}}), quant="Q8_0")
    assert peak["machines_needed"] == math.ceil(3 * 1_000_000 / capacity)
    assert peak["local_usd_per_day"] is None and peak[f"GPT-4o usd_per_day ({gpt4o['as_of']})"] == pytest.approx(expected)
    none = row(table({"service_levels": {"ttft_ms_p99": 250}, "workload": {"peak_to_average": 1}}), quant="Q8_0")
    assert none["machines_needed"] is None and none["machines_null_reason"] == "no workload configured (decision.workload)"


def test_what_was_not_measured_is_not_judged_with_the_reason_and_never_passes():
    t = table()
    # llama-cpp-python streams no timed tokens: its ITL is not judged, so it cannot pass even where all else is met.
    cpp = row(t, tool="llama-cpp-python", quant="Q8_0")
    assert cpp["itl_verdict"] == "not judged" and "llama-cpp-python's rows hold no inter-token gaps" in cpp["itl_note"]
    assert cpp["ttft_verdict"] == cpp["kld_verdict"] == cpp["accuracy_verdict"] == "met"
    assert cpp["verdict"] == "not judged" and cpp["passes"] is False and cpp["rank"] is None
    # A tool that did not run: every service level not judged with its reason.
    ollama = row(t, tool="ollama", quant="Q8_0")
    assert ollama["verdict"] == "not run" and not ollama["passes"]
    assert ollama["ttft_note"].startswith("not run: Ollama is not installed here")
    assert ollama["goodput_null_reason"].startswith("not run: Ollama is not installed here")
    # A study without quality: the floor is not judged, nothing passes.
    t = table(quality=None)
    q8 = row(t, quant="Q8_0")
    assert q8["kld_verdict"] == "not judged" and "the study measured no quality" in q8["kld_note"]
    assert not t["passes"].any()
    assert "**No configuration meets every constraint.** The nearest:" in d.render_markdown(t, DEFAULT["decision"],
                                                                                          CLOUD)


def test_where_none_passes_the_nearest_are_named_with_what_each_misses():
    strict = {"service_levels": {"ttft_ms_p99": 86, "itl_ms_p99": 50}, "quality": {"max_kld": 0.1}}
    t = table(strict)
    assert not t["passes"].any()
    nearest = d.nearest(t)
    first = nearest.row(0, named=True)
    assert first["missed"].count(";") == 0 and first["shortfall"] == nearest["shortfall"].drop_nulls().min()
    md = d.render_markdown(t, strict, CLOUD)
    assert f"- {d._config_name(first)}: {first['missed']}" in md


def test_with_no_decision_block_every_configuration_that_ran_is_ranked():
    t = table({})
    assert set(t.filter(pl.col("rank").is_not_null())["verdict"]) == {"no constraints configured"}
    assert t.filter(pl.col("not_run_reason").is_null())["rank"].is_not_null().all()


def test_the_figure_draws_cost_or_throughput_against_kld_with_the_frontier_of_those_meeting_the_levels():
    data, axis, notes = d.figure_data(table())
    assert axis["y"] == "server_output_tokens_per_s" and axis["clouds"] == {} and axis["max_kld"] == 0.1
    assert notes[0].startswith("No cost: energy was not measured here")
    assert any(n.startswith("not drawn: ollama (smollm2-135m Q4_0, smollm2-135m Q8_0): Ollama is not installed")
               for n in notes)
    assert data.height == table().filter(pl.col("not_run_reason").is_null()).height
    services = dict(zip(data["label"], data["service"], strict=True))
    assert services["llama-server Q8_0 ×4"] == "misses a service level"
    assert services["llama-cpp-python Q8_0"] == "service levels not judged"
    assert any(label.endswith("(the answer)") for label in services)
    frontier = data.filter(pl.col("on_frontier"))
    assert (frontier["service"] == "meets the service levels").all()
    assert "llama-server F16" in frontier["label"].to_list()  # the reference: the lowest KLD
    # With a cost, y is the cost, the cloud output prices are drawn, and the frontier minimises the cost.
    costs = recorded()["costs"].with_columns(
        pl.col("quant").replace_strict({"F16": 0.05, "Q8_0": 0.06, "Q4_0": 0.01}, default=None,
                                       return_dtype=pl.Float64).alias("usd_per_1m_tokens"))
    data, axis, _ = d.figure_data(table(costs=costs))
    assert axis["y"] == "usd_per_1m_output_tokens"
    assert axis["clouds"] == {"GPT-4o (2024-10)": 10.0, "GPT-4o mini (2024-10)": 0.6}
    on = set(data.filter(pl.col("on_frontier"))["label"])
    assert "llama-server F16 (the answer)" in on and "llama-server Q8_0" not in on  # dearer and further from the reference


def test_the_figure_is_drawn(tmp_path):
    from llmbench.outputs.catalog import output

    t = table()
    written = output("decision_cost_vs_kld").draw(t, "smollm2-135m-cpu", tmp_path / "decision.png")
    assert {p.suffix for p in written} == {".png", ".svg", ".html"}
    assert "quality floor: KLD ≤ 0.1" in (tmp_path / "decision.svg").read_text()


def test_the_catalog_entry_writes_csv_markdown_and_the_figures_parquet(tmp_path):
    from llmbench.outputs.catalog import output

    entry = output("decision")
    inputs = {"runs": DATA / "runs.parquet", "serving": DATA / "serving.csv",
              "costs": DATA / "cost_per_1m_tokens.csv", "quality": DATA / "quality_by_quant.csv"}
    outputs = {"csv": tmp_path / "decision.csv", "md": tmp_path / "decision.md", "table": tmp_path / "d.parquet"}
    said = entry.write(inputs, entry.config_params(DEFAULT), outputs)
    assert said.startswith("decision table: 17 configurations, ")
    assert pl.read_parquet(outputs["table"]).equals(pl.read_csv(outputs["csv"], infer_schema_length=None).cast(
        pl.read_parquet(outputs["table"]).schema), null_equal=True)
    md = outputs["md"].read_text()
    assert md.startswith("# Which setup meets the service levels and quality floor at the lowest cost")
    assert "Service levels: TTFT p99 ≤ 250 ms, ITL p99 ≤ 50 ms, per-user decode ≥ 30 tok/s." in md
    # Without a quality table (a study that measures none) it is made all the same.
    del inputs["quality"]
    assert entry.write(inputs, entry.config_params(DEFAULT), outputs).startswith("decision table")
    assert entry.section == "Decision" and output("decision_cost_vs_kld").section == "Decision"


def test_the_articles_config_plans_the_decision_with_its_block(tmp_path):
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", REPO / "Snakefile", "-d", tmp_path,
                          "--configfile", REPO / "config/llama31-quantfactory.yaml", "--quiet", "rules"],
                         capture_output=True, text=True, check=True).stdout
    assert "decision_table" in out and "plot_decision" in out
    article = yaml.safe_load((REPO / "config/llama31-quantfactory.yaml").read_text())["decision"]
    assert d.limits(article) == {"ttft": 500, "itl": 100, "decode": 20, "kld": 0.1, "accuracy": 0.5}


def test_a_decision_block_is_checked_with_the_key_and_the_fix_named():
    from llmbench.study.configcheck import ConfigError, load_schema, validate_config

    schema = load_schema(REPO / "workflow/schemas/config.schema.yaml")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["decision"]["service_levels"]["ttft_ms_p99"] = 0
    config["decision"]["workload"]["peak_to_average"] = 0.5
    with pytest.raises(ConfigError) as e:
        validate_config(config, schema)
    assert "decision.service_levels.ttft_ms_p99 = 0 is too small; it must be > 0" in str(e.value)
    assert "decision.workload.peak_to_average = 0.5 is too small; it must be >= 1" in str(e.value)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["quality"]["kld"] = False
    config["decision"]["workload"] = {"requests_per_day": 10, "output_tokens_per_day": 100}
    with pytest.raises(ConfigError) as e:
        validate_config(config, schema)
    said = str(e.value)
    assert ("decision.workload = {'requests_per_day': 10, 'output_tokens_per_day': 100} gives requests_per_day and "
            "output_tokens_per_day: give one of requests_per_day or output_tokens_per_day") in said
    assert ("decision.quality.max_kld = 0.1 judges a measurement this study turns off (quality.kld: false): set "
            "quality.kld: true or drop decision.quality.max_kld") in said
    config["decision"]["workload"] = {"peak_to_average": 3}
    with pytest.raises(ConfigError, match=r"decision.workload = \{'peak_to_average': 3\} gives no volume"):
        validate_config(config, schema)
