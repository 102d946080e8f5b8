"""Figures: the Vega-Lite specs the charts compile to (fields, quant order, units, facets, colours, notes) and the
files written, through the catalog (llmbench/outputs/catalog.py) as the workflow draws them. All data here is a stand-in
frame shaped like results/summary/runs.parquet (RUN_SCHEMA)."""

from __future__ import annotations

import polars as pl
import pytest

from llmbench.core.precision import PRECISION_COLUMNS, PrecisionSpec, Rounds
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.outputs import catalog
from llmbench.outputs.figures import boxes, common, frameworks
from llmbench.outputs.figures.common import OKABE_ITO, FigureDataError

# Stand-in quants listed out of order on purpose: the figures must sort them by bits per weight.
QUANTS = ["Q8_0", "Q2_K", "Q4_K_M", "F16"]
OLLAMA_REASON = "Ollama is not installed here: no `ollama` binary is on PATH"


def stand_in_runs(energy: bool = True) -> pl.DataFrame:
    """A stand-in for a GPU study's rows: llama-server in two split modes on 2 models, Ollama on one file,
    llama-bench's pp rows (no decode), and a skipped vLLM job. Energy, where asked, is a made-up stand-in."""
    rows = []
    # 8B: -ngl 33 set, no offload logged; 70B: -ngl auto, llama.cpp's log says 60 of 81 layers went to the GPUs.
    for model, ngl, offload in (("llama31-8b", 33, {}),
                                ("llama31-70b", None, {"n_gpu_layers_auto": True, "n_gpu_layers_offloaded": 60,
                                                       "n_layers_total": 81})):
        for qi, quant in enumerate(QUANTS):
            for split in ("layer", "row"):
                for rep in range(4):
                    speed = 100.0 - 10 * qi + rep + (5 if split == "row" else 0)
                    rows.append({"tool": "llama-server", "model": model, "quant": quant, "split": split,
                                 "status": "ok", "repetition": rep, "n_gpu_layers": ngl, **offload,
                                 "generated_tokens": 100,
                                 "decode_tokens_per_s": speed, "prefill_tokens_per_s": 10 * speed,
                                 "ttft_ms": 50.0 + rep, "energy_j": 30.0 + qi if energy else None,
                                 "energy_window_s": 3.0 if energy else 1.0,
                                 "energy_source": "nvml:0,1" if energy else None,
                                 "energy_null_reason": None if energy else "not measured: no NVIDIA GPU",
                                 "energy_is_estimate": False})
    for rep in range(4):
        rows.append({"tool": "ollama", "model": "llama31-8b", "quant": "Q8_0", "split": "none", "status": "ok",
                     "repetition": rep, "n_gpu_layers": None, "generated_tokens": 90,
                     "decode_tokens_per_s": 60.0 + rep, "prefill_tokens_per_s": 500.0, "ttft_ms": 80.0,
                     "energy_j": None, "energy_window_s": 2.5,
                     "energy_null_reason": "not measured: Ollama's server holds the GPU", "energy_is_estimate": None})
        rows.append({"tool": "llama-bench", "model": "llama31-8b", "quant": "Q2_K", "split": "layer",
                     "status": "ok", "repetition": rep, "n_gpu_layers": 33, "generated_tokens": 0,
                     "prefill_tokens_per_s": 900.0 + rep, "energy_null_reason": "not measured: llama-bench"})
    rows.append({"tool": "ollama", "model": "llama31-70b", "quant": "Q8_0", "split": "none", "status": "skipped",
                 "status_reason": OLLAMA_REASON, "n_gpu_layers": None})
    return pl.DataFrame(rows, schema=RUN_SCHEMA)


def spec_of(chart) -> dict:
    return chart.to_dict(format="vega-lite")


def inner(spec: dict) -> dict:
    """The unit spec inside a facet."""
    return spec["spec"]


def test_decode_chart_boxes_per_quant_coarse_to_fine_with_layers_on_gpu_in_labels():
    spec = spec_of(boxes.metric_chart(stand_in_runs(), "s", boxes.DECODE))
    unit = inner(spec)
    assert unit["mark"]["type"] == "boxplot" and unit["mark"]["extent"] == 1.5
    x = unit["encoding"]["x"]
    assert x["field"] == "quant_label"
    # Coarsest first; within a quant, labels in text order (Ollama's null layers: the engine decides).
    assert x["sort"] == ["Q2_K · ngl 33", "Q2_K · ngl 60/81", "Q4_K_M · ngl 33", "Q4_K_M · ngl 60/81",
                         "Q8_0 · ngl 33", "Q8_0 · ngl 60/81", "Q8_0 · ngl default", "F16 · ngl 33", "F16 · ngl 60/81"]
    assert "layers on GPU" in x["title"]
    assert unit["encoding"]["y"]["title"] == "decode speed [tokens/s]"
    assert spec["facet"]["field"] == "panel"
    assert spec["resolve"]["scale"]["x"] == "independent"


def test_layers_on_gpu_label_prefers_what_the_engine_offloaded():
    rows = pl.DataFrame({
        "n_gpu_layers": [33, None, None, -1, 33],
        "n_gpu_layers_auto": [False, True, None, False, False],
        "n_gpu_layers_offloaded": [None, None, None, None, 33],
        "n_layers_total": [None, None, None, None, 33],
    })
    assert rows.select(boxes.ngl_text().alias("ngl"))["ngl"].to_list() == ["33", "auto", "default", "all", "33/33"]


def test_rows_without_offload_columns_still_get_labels():
    runs = stand_in_runs().drop("n_gpu_layers_auto", "n_gpu_layers_offloaded", "n_layers_total")
    data, labels = boxes.quant_labels(runs.filter(pl.col("status") == "ok"))
    assert labels[0] == "Q2_K · ngl 33" and "Q2_K · ngl default" in labels


def test_split_modes_side_by_side_in_colour_blind_safe_colours():
    unit = inner(spec_of(boxes.metric_chart(stand_in_runs(), "s", boxes.DECODE)))
    enc = unit["encoding"]
    assert enc["xOffset"]["field"] == "split" and enc["color"]["field"] == "split"
    assert enc["color"]["scale"]["range"] == OKABE_ITO
    assert enc["color"]["scale"]["domain"] == ["layer", "none", "row"]


def test_panels_are_tool_by_model_and_skipped_jobs_are_named_in_the_subtitle():
    chart = boxes.metric_chart(stand_in_runs(), "s", boxes.DECODE)
    panels = set(chart.data["panel"].to_list())
    assert panels == {"llama-server · llama31-8b", "llama-server · llama31-70b", "ollama · llama31-8b"}
    subtitle = " ".join(spec_of(chart)["title"]["subtitle"])
    assert "skipped, not drawn: ollama (llama31-70b Q8_0)" in subtitle
    assert "no `ollama` binary" in subtitle
    # llama-bench's pp rows carry no decode speed: the tool is named, not drawn as an empty panel.
    assert "decode speed not reported by llama-bench" in subtitle


def test_one_model_shares_the_y_range_and_several_models_do_not():
    one = stand_in_runs().filter(pl.col("model") == "llama31-8b")
    y = inner(spec_of(boxes.metric_chart(one, "s", boxes.DECODE)))["encoding"]["y"]["scale"]
    assert y["domain"] == [0, one["decode_tokens_per_s"].max()]
    y = inner(spec_of(boxes.metric_chart(stand_in_runs(), "s", boxes.DECODE)))["encoding"]["y"]["scale"]
    assert "domain" not in y and y["zero"] is True


def test_prefill_and_ttft_carry_their_units():
    prefill = inner(spec_of(boxes.metric_chart(stand_in_runs(), "s", boxes.PREFILL)))
    assert prefill["encoding"]["y"]["title"] == "prefill speed [prompt tokens/s]"
    ttft = spec_of(boxes.metric_chart(stand_in_runs(), "s", boxes.TTFT))
    assert inner(ttft)["encoding"]["y"]["title"] == "time to first token [ms]"
    assert "time to first token not reported by llama-bench" in " ".join(ttft["title"]["subtitle"])


def test_prefill_from_first_token_is_said_only_where_such_an_engine_ran():
    runs = stand_in_runs()
    assert boxes.prefill_notes(runs) == []
    hf = runs.filter(pl.col("tool") == "ollama", pl.col("status") == "ok").with_columns(tool=pl.lit("transformers"))
    assert "transformers report no prefill time" in boxes.prefill_notes(pl.concat([runs, hf]))[0]


def test_energy_per_token_is_window_energy_over_generated_tokens():
    runs = boxes.with_j_per_token(stand_in_runs())
    server = runs.filter(pl.col("tool") == "llama-server", pl.col("quant") == "Q2_K")
    # Stand-in: Q2_K is the 2nd quant listed (qi = 1), so 31 J over 100 tokens.
    assert server["j_per_token"].to_list() == pytest.approx([0.31] * server.height)
    # No tokens generated (llama-bench's pp rows): no J/token rather than a division by zero.
    assert runs.filter(pl.col("tool") == "llama-bench")["j_per_token"].is_null().all()


def test_energy_chart_draws_split_modes_side_by_side_and_names_what_was_not_measured():
    spec = spec_of(boxes.energy_chart(stand_in_runs(), "s"))
    enc = inner(spec)["encoding"]
    assert enc["y"]["field"] == "j_per_token" and enc["y"]["title"] == "energy per generated token [J/token]"
    assert enc["xOffset"]["field"] == "energy_kind"
    assert enc["color"]["scale"]["domain"] == ["layer", "row"]
    subtitle = " ".join(spec["title"]["subtitle"])
    assert "measured with: nvml:0,1" in subtitle
    assert "energy not reported by ollama: not measured: Ollama's server holds the GPU" in subtitle
    assert "not measured" not in spec["title"]["text"]


def test_energy_estimates_are_labelled_as_such():
    runs = stand_in_runs().with_columns(
        energy_is_estimate=pl.when(pl.col("split") == "row").then(True).otherwise(pl.col("energy_is_estimate")),
        energy_source=pl.when(pl.col("split") == "row").then(pl.lit("estimate: 300 W assumed × window"))
        .otherwise(pl.col("energy_source")))
    spec = spec_of(boxes.energy_chart(runs, "s"))
    assert "row (estimate, not measured)" in inner(spec)["encoding"]["color"]["scale"]["domain"]
    assert "estimate, not a measurement: estimate: 300 W assumed × window" in " ".join(spec["title"]["subtitle"])


def test_no_energy_measured_still_makes_a_figure_that_says_why(tmp_path):
    runs = stand_in_runs(energy=False)
    spec = spec_of(boxes.energy_chart(runs, "s"))
    assert spec["title"]["text"] == "s: energy per generated token: not measured in this study"
    subtitle = " ".join(spec["title"]["subtitle"])
    assert "energy not reported by llama-server: not measured: no NVIDIA GPU" in subtitle
    assert spec["mark"]["type"] == "text"
    written = catalog.output("energy_per_token").draw(runs, "s", tmp_path / "energy_per_token.png")
    assert all(p.stat().st_size > 0 for p in written)


def test_short_energy_windows_are_flagged():
    runs = stand_in_runs().with_columns(energy_window_s=pl.lit(1.0))
    notes = boxes.energy_notes(boxes.with_j_per_token(runs))
    assert any("64 of 64 windows are shorter than 2 s" in n for n in notes)


def test_frameworks_side_by_side_only_on_files_more_than_one_ran():
    chart = frameworks.framework_chart(stand_in_runs(), "s")
    spec = spec_of(chart)
    enc = inner(spec)["encoding"]
    assert enc["xOffset"]["field"] == "engine" and enc["color"]["field"] == "engine"
    assert enc["x"]["sort"] == ["Q2_K", "Q4_K_M", "Q8_0", "F16"]
    assert enc["color"]["scale"]["range"] == OKABE_ITO
    assert spec["facet"]["field"] == "model"
    # 8B Q8_0 ran in llama-server (both splits) and Ollama; the other pairs only in llama-server's two splits,
    # which count as two engines: split modes are compared too.
    drawn = chart.data.group_by("model", "quant").agg(pl.col("engine").unique().sort())
    q8 = drawn.filter(pl.col("model") == "llama31-8b", pl.col("quant") == "Q8_0")["engine"].to_list()[0]
    assert q8 == ["llama-server (layer)", "llama-server (row)", "ollama"]


def test_frameworks_figure_names_files_only_one_framework_ran():
    runs = stand_in_runs().filter(pl.col("split") != "row")
    chart = frameworks.framework_chart(runs, "s")
    subtitle = " ".join(spec_of(chart)["title"]["subtitle"])
    assert "one framework only, not compared: llama31-70b F16 (llama-server (layer))" in subtitle
    assert set(chart.data["quant"].to_list()) == {"Q8_0"}


def test_nothing_to_compare_still_makes_a_figure():
    runs = stand_in_runs().filter(pl.col("tool") == "llama-server", pl.col("split") == "layer")
    spec = spec_of(frameworks.framework_chart(runs, "s"))
    assert spec["mark"]["type"] == "text"
    (rows,) = spec["datasets"].values()
    assert rows[0]["message"].startswith("nothing to compare")


# The figures drawn from the study's rows (the Pareto figure is drawn from the quality table: tests/test_quality.py).
RUNS_FIGURES = [f.name for f in catalog.figures() if dict(f.inputs) == catalog.RUNS]


def draw(name: str, runs: pl.DataFrame, study: str = "s"):
    """The chart of the catalog's figure ``name``, as its rule draws it."""
    return catalog.output(name).function()(runs, study)


@pytest.mark.parametrize("name", RUNS_FIGURES)
def test_every_figure_is_written_as_png_svg_and_html(tmp_path, name):
    written = catalog.output(name).draw(stand_in_runs(), "stand-in study", tmp_path / f"{name}.png")
    assert [p.suffix for p in written] == [".png", ".svg", ".html"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in written[1].read_text()[:500]
    html = written[2].read_text()
    # The page works offline: vega's scripts are inlined, not fetched from a CDN.
    assert "cdn.jsdelivr" not in html and "stand-in study" in html


def test_unknown_figure_and_missing_columns_are_named():
    with pytest.raises(ValueError, match="unknown output 'speed'.*decode_tokens_per_s"):
        catalog.output("speed")
    with pytest.raises(FigureDataError, match="lacks column.*ttft_ms.*rerun"):
        boxes.metric_chart(stand_in_runs().drop("ttft_ms"), "s", boxes.TTFT)



def test_each_figure_of_the_rows_is_drawn_by_its_family_module():
    assert RUNS_FIGURES == ["decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "energy_per_token",
                            "frameworks_decode_tokens_per_s", "serving_throughput", "energy_per_token_by_load",
                            "latency_by_load", "decode_by_depth"]
    assert draw("decode_tokens_per_s", stand_in_runs()).to_dict() == boxes.metric_chart(
        stand_in_runs(), "s", boxes.DECODE).to_dict()
    assert catalog.output("frameworks_decode_tokens_per_s").function() is frameworks.framework_chart


def test_row_and_tensor_split_modes_carry_what_upstream_says_of_them():
    runs = pl.DataFrame({"split": ["layer", "row", "tensor", "tensor"], "status": ["ok", "ok", "ok", "failed"]})
    notes = common.split_mode_notes(runs)
    assert len(notes) == 2 and "deprecated upstream" in notes[0] and "experimental" in notes[1]
    assert common.split_mode_notes(runs.filter(pl.col("split") == "layer")) == []
    assert common.split_mode_notes(runs.filter(pl.col("status") == "failed")) == []  # not drawn: not noted


def stand_in_sweep() -> pl.DataFrame:
    """Stand-in rows of a load and depth sweep (numbers invented): llama-server at 1 and 4 clients on two quants,
    with the levels' energy, and llama-bench's decode at depths 0 and 1024."""
    rows = []
    for quant in ("Q4_0", "Q8_0"):
        for clients in (1, 4):
            for i in range(2 * clients):
                rows.append({"tool": "llama-server", "model": "m", "quant": quant, "split": "none",
                             "concurrency": clients, "depth": 0, "status": "ok", "client": i % clients,
                             "request_start_s": float(i), "request_end_s": i + 1.0, "generated_tokens": 50,
                             "prompt_tokens": 10, "decode_tokens_per_s": 100.0 / clients, "ttft_ms": 20.0 * clients,
                             "itl_ms": [10.0 * clients, 12.0 * clients], "tpot_ms": 11.0, "wall_ms": 1000.0,
                             "level_window_s": 4.0, "level_energy_j": 100.0 * clients})
        for depth, speed in ((0, 200.0), (1024, 150.0)):
            rows.append({"tool": "llama-bench", "model": "m", "quant": quant, "split": "none", "concurrency": 1,
                         "depth": depth, "status": "ok", "generated_tokens": 64, "decode_tokens_per_s": speed})
    return pl.DataFrame(rows, schema=RUN_SCHEMA)


@pytest.mark.parametrize("name", ["serving_throughput", "energy_per_token_by_load", "latency_by_load",
                                  "decode_by_depth"])
def test_the_load_and_depth_figures_draw_one_point_per_level(name):
    spec = draw(name, stand_in_sweep()).to_dict()
    data = [row for rows in spec["datasets"].values() for row in rows]
    assert data and not any("message" in row for row in data)
    if name == "decode_by_depth":
        assert sorted({(r["quant"], r["depth"]) for r in data}) == [("Q4_0", 0), ("Q4_0", 1024), ("Q8_0", 0),
                                                                    ("Q8_0", 1024)]
    elif name == "latency_by_load":
        assert {r["series"] for r in data} == {"Q4_0 TTFT", "Q4_0 ITL", "Q8_0 TTFT", "Q8_0 ITL"}
    else:
        assert sorted({(r["quant"], r["concurrency"]) for r in data}) == [("Q4_0", 1), ("Q4_0", 4), ("Q8_0", 1),
                                                                          ("Q8_0", 4)]
    if name == "serving_throughput":  # 4 clients: 8 requests × 50 tokens over 4 s; each user at 25 tokens/s
        point = next(r for r in data if r["concurrency"] == 4)
        assert (point["server_output_tokens_per_s"], point["per_user_decode_tokens_per_s"]) == (100.0, 25.0)
        # Each point is labelled with its clients at once, as the notes say.
        texts = [layer for layer in spec["spec"]["layer"] if layer["mark"]["type"] == "text"]
        assert [t["encoding"]["text"]["field"] for t in texts] == ["concurrency"]


def test_without_a_sweep_the_load_figures_say_so():
    for name in ("serving_throughput", "latency_by_load", "decode_by_depth"):
        spec = draw(name, stand_in_runs()).to_dict()
        (rows,) = spec["datasets"].values()
        assert rows[0]["message"].startswith("no ") and "sweep" in rows[0]["message"], name


def test_box_figures_draw_one_request_on_an_empty_context_and_say_so():
    """A load level's per-user speeds never mix into the per-quant and per-framework boxes; the notes say so."""
    base = stand_in_runs()
    swept = pl.concat([base, base.filter(pl.col("tool") == "llama-server").with_columns(
        pl.lit(4, pl.Int64).alias("concurrency"), pl.lit(1.0).alias("decode_tokens_per_s"))])
    for draw in (lambda r: boxes.metric_chart(r, "s", boxes.DECODE), lambda r: boxes.energy_chart(r, "s"),
                 lambda r: frameworks.framework_chart(r, "s")):
        chart, alone = draw(swept), draw(base)
        assert chart.data.height == alone.data.height
        assert 1.0 not in chart.data.get_column("decode_tokens_per_s", default=pl.Series([])).to_list()
        assert "one request at a time on an empty context" in " ".join(spec_of(chart)["title"]["subtitle"])
        assert "empty context" not in " ".join(spec_of(alone)["title"]["subtitle"])


def test_a_quant_whose_file_is_not_its_label_is_marked_in_the_boxes_and_named_in_the_notes():
    runs = stand_in_runs().with_columns(
        pl.when(pl.col("quant") == "Q2_K").then(pl.lit("Q2_K here holds 52 % Q4_0 …")).alias("quant_label_note"),
        pl.when(pl.col("quant") == "Q2_K").then(pl.lit("52 % Q4_0, 35 % Q8_0, 13 % Q3_K")).alias("tensor_mix"))
    chart = boxes.metric_chart(runs, "s", boxes.DECODE)
    labels = inner(spec_of(chart))["encoding"]["x"]["sort"]
    assert labels[:2] == ["Q2_K ≠ · ngl 33", "Q2_K ≠ · ngl 60/81"] and "Q8_0 · ngl 33" in labels
    subtitle = spec_of(chart)["title"]["subtitle"]
    assert any(line.startswith("≠: what ran is not what its label says") for line in subtitle)
    assert sum("Q2_K (llama31-" in line and "52 % Q4_0, 35 % Q8_0, 13 % Q3_K" in line for line in subtitle) == 2
    # The frameworks figure marks its quant axis alike.
    all_q2 = runs.with_columns(pl.lit("Q2_K").alias("quant"), pl.lit("Q2_K here holds …").alias("quant_label_note"))
    compared = frameworks.framework_chart(all_q2, "s")
    assert inner(spec_of(compared))["encoding"]["x"]["sort"] == ["Q2_K ≠"]


def precision_of(rates, spec=None):
    """A job's precision columns as the bench writes them (llmbench.core.precision.Rounds.columns)."""
    rounds = Rounds(len(rates), spec)
    for rate in rates:
        rounds.record(rate)
    return rounds.columns()


def with_precision(runs: pl.DataFrame, jobs: dict[tuple[str, str, str, str], dict]) -> pl.DataFrame:
    """``runs`` with the precision columns of the jobs named (tool, model, quant, split); the others none."""
    frame = pl.DataFrame([{"tool": t, "model": m, "quant": q, "split": s, **p} for (t, m, q, s), p in jobs.items()],
                         schema={c: RUN_SCHEMA[c] for c in ("tool", "model", "quant", "split", *PRECISION_COLUMNS)})
    return runs.drop(PRECISION_COLUMNS).join(frame, on=["tool", "model", "quant", "split"], how="left",
                                             maintain_order="left").select(list(RUN_SCHEMA))


ROUNDS_48_52 = [48.0, 49.0, 50.0, 50.0, 51.0, 52.0]  # median 50, 95 % interval (48, 52): ±4.0 %
PRECISE = {("llama-server", "llama31-8b", "Q8_0", "layer"): precision_of(ROUNDS_48_52),
           ("llama-server", "llama31-8b", "Q2_K", "layer"): precision_of(ROUNDS_48_52, PrecisionSpec(0.02, max_repetitions=6)),
           ("ollama", "llama31-8b", "Q8_0", "none"): precision_of([60.0, 61.0])}
LLAMA_SERVER_LINE = ("precision of llama-server (95% CI of the median round decode rate): Q2_K (layer) target ±2% not "
                     "reached: ±4.0% after 6 rounds, Q8_0 (layer) ±4.0%")
OLLAMA_LINE = "precision of ollama (95% CI of the median round decode rate): Q8_0 no interval (2 rounds)"


def test_the_box_notes_say_the_precision_each_job_reached():
    runs = with_precision(stand_in_runs().filter(pl.col("model") == "llama31-8b"), PRECISE)
    assert common.precision_notes(runs.filter(pl.col("status") == "ok")) == [LLAMA_SERVER_LINE, OLLAMA_LINE]
    for chart in (boxes.metric_chart(runs, "s", boxes.DECODE), frameworks.framework_chart(runs, "s")):
        subtitle = " ".join(spec_of(chart)["title"]["subtitle"])
        assert "precision of llama-server (95% CI of the median round decode rate): Q2_K (layer) target" in subtitle
        assert OLLAMA_LINE in subtitle
    # Several models: each box names its model; one split mode per tool: no split named.
    both = with_precision(stand_in_runs().filter(pl.col("split") != "row"),
                          {("llama-server", m, "F16", "layer"): precision_of(ROUNDS_48_52)
                           for m in ("llama31-8b", "llama31-70b")})
    assert common.precision_notes(both) == [
        "precision of llama-server (95% CI of the median round decode rate): llama31-70b F16 ±4.0%, "
        "llama31-8b F16 ±4.0%"]


def test_an_old_study_without_precision_says_nothing_of_it():
    runs = stand_in_runs()
    assert common.precision_notes(runs) == common.precision_notes(runs.drop(PRECISION_COLUMNS)) == []
    for chart in (boxes.metric_chart(runs, "s", boxes.DECODE), boxes.energy_chart(runs, "s"),
                  frameworks.framework_chart(runs, "s")):
        assert "precision of" not in " ".join(spec_of(chart)["title"]["subtitle"])
