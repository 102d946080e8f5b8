"""The GPU check's summary tables, on stand-in rows (a real run's rows come back from the GPU machine)."""

from __future__ import annotations

import json

import polars as pl

from llmbench.outputs.gpu_check import counter_joules, counter_vs_sampled, server_vs_bench, speed, summary_markdown

COUNTER = "nvml-energy:GPU-1234"


def row(tool, quant, decode, *, concurrency=1, status="ok", window=1.0, counter=None, sampled=None, gen=100):
    return {
        "tool": tool, "model": "llama31-8b-synthetic", "quant": quant, "concurrency": concurrency, "depth": 0,
        "status": status, "status_reason": None if status == "ok" else "vllm is not installed here",
        "decode_tokens_per_s": decode, "prefill_tokens_per_s": None if decode is None else 10 * decode, "n_gpu_layers_offloaded": 33,
        "n_layers_total": 33, "generated_tokens": gen, "energy_j": counter, "energy_net_j": None if counter is None
        else counter - 50.0, "idle_power_w": 50.0, "energy_window_s": window, "sampled_gpu_energy_j": sampled,
        "energy_by_sensor_j": json.dumps({COUNTER: counter}) if counter is not None else None,
    }


def runs() -> pl.DataFrame:
    return pl.DataFrame([
        row("llama-server", "Q4_0", 198.0, counter=300.0, sampled=310.0, window=0.5),
        row("llama-server", "Q4_0", 202.0, counter=1000.0, sampled=1020.0, window=6.0),
        row("llama-server", "Q4_0", 600.0, concurrency=8, counter=2000.0, sampled=2010.0, window=8.0),
        row("llama-bench", "Q4_0", 205.0), row("llama-bench", "Q4_0", 195.0),
        row("llama-server", "Q8_0", 100.0), row("llama-bench", "Q8_0", 125.0),
        row("vllm", "F16", None, status="skipped"),
    ])


def test_speed_is_the_median_per_tool_quant_and_level_of_ok_rows():
    df = speed(runs())
    server = df.filter((pl.col("tool") == "llama-server") & (pl.col("quant") == "Q4_0"))
    assert server["concurrency"].to_list() == [1, 8] and server["rows"].to_list() == [2, 1]
    assert server["decode_tok_s"][0] == 200.0 and server["layers_offloaded"][0] == 33
    assert server["j_per_token"][0] == 6.5  # median of 300/100 and 1000/100
    assert "vllm" not in df["tool"].to_list()


def test_llama_server_is_compared_with_llama_bench_tg_at_one_request():
    df = server_vs_bench(runs())
    assert df["quant"].to_list() == ["Q4_0", "Q8_0"]
    assert df["ratio"].to_list() == [1.0, 0.8] and df["within_3pct"].to_list() == [True, False]


def test_the_counter_is_compared_with_the_samples_by_window_length():
    df = counter_vs_sampled(runs())
    by = {r["window"]: r for r in df.iter_rows(named=True)}
    assert set(by) == {"under 1 s", "5 s or more"}
    assert by["5 s or more"]["windows"] == 2 and by["5 s or more"]["within_5pct"] is True
    assert by["under 1 s"]["within_5pct"] is None  # no target on short windows: the counter reads low there
    assert counter_joules(json.dumps({COUNTER: 2.0, "rapl:package-0": 5.0})) == 2.0
    assert counter_joules(json.dumps({"nvml-sampled-power:GPU-1": 2.0})) is None


def test_the_summary_holds_every_section_and_the_skipped_jobs():
    build = {"commit": "0c1e570", "cuda_version": "Cuda compilation tools, release 13.0", "configure_args": ["-X"],
             "build_jobs": 16, "smoke_test": [{"tool": "llama-server", "ok": True}]}
    text = summary_markdown(runs(), build, 201.4, {"Decode roofline": "## Decode speed\n\n| a |\n|---|\n"})
    assert "build: 201 s (16 jobs)" in text and "llama-server ok" in text
    assert "vllm is not installed here" in text and "## Decode roofline\n### Decode speed\n" in text


def test_the_measurements_target_needs_no_plotting_stack():
    """`snakemake measurements` runs where altair and vl-convert are not installed (the GPU machine): no module
    its rules' scripts import, at import time, imports them."""
    import ast
    import subprocess
    import sys

    from conftest import REPO

    scripts = REPO / "workflow/scripts"
    rule_scripts = ["aggregate.py", "cost_table.py", "framework_table.py", "roofline_table.py", "serving_table.py",
                    "quality_table.py", "study_config.py", "bench.py", "measure_bandwidth.py", "build_llama_cpp.py",
                    "make_synthetic_gguf.py", "take_source_archive.py"]
    modules = sorted({node.module for s in rule_scripts for node in ast.parse((scripts / s).read_text()).body
                      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmbench")})
    assert "llmbench.outputs.render" in modules and "llmbench.study.measure" in modules  # what they import at their top
    blocked = "import sys; sys.modules.update(altair=None, vl_convert=None); import " + ", ".join(modules)
    proc = subprocess.run([sys.executable, "-c", blocked], cwd=scripts, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
