"""The framework table: each tool's facts from its registry record beside what the study measured of it."""

from __future__ import annotations

import polars as pl
import pytest

from llmbench.engines import registry
from llmbench.engines.registry import TOOLS, Facts
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.outputs import frameworks


def fact(**over):
    base = {k: f"{k} fact" for k in frameworks.FACT_KEYS}
    return {**base, "sources": ["https://example.org/doc"], **over}


def rows(tool, quant, speeds, *, load_ms=None, rss=None, gpus=0, gpu_mem=None, split="none", model="m"):
    return [{"tool": tool, "model": model, "quant": quant, "split": split, "status": "ok", "repetition": i,
             "decode_tokens_per_s": s, "load_ms": load_ms, "peak_rss_bytes": rss, "gpus": gpus,
             "gpu_mem_used_bytes": gpu_mem} for i, s in enumerate(speeds)]


def skipped(tool, quant, reason):
    return [{"tool": tool, "model": "m", "quant": quant, "split": "none", "status": "skipped",
             "status_reason": reason, "gpus": 0}]


def stand_in_study() -> pl.DataFrame:
    """Stand-in runs: llama-server on two quants, transformers on Q4_0 only, vLLM skipped."""
    return pl.DataFrame(
        rows("llama-server", "Q4_0", [100.0, 110.0, 120.0], rss=300 * 2**20)
        + rows("llama-server", "Q8_0", [80.0], rss=400 * 2**20)
        + rows("transformers", "Q4_0", [12.0, 14.0], load_ms=20_000.0, rss=1200 * 2**20)
        + rows("transformers", "Q4_0", [13.0], load_ms=30_000.0, rss=1100 * 2**20, split="layer")
        + skipped("vllm", "Q4_0", "vLLM needs an NVIDIA GPU") + skipped("vllm", "Q8_0", "vLLM needs an NVIDIA GPU"),
        schema=RUN_SCHEMA)


def test_every_registered_tool_has_every_fact_with_its_sources():
    facts = frameworks.registry_facts()
    assert list(facts) == list(TOOLS)
    for tool, entry in facts.items():
        assert all(entry[k] for k in frameworks.FACT_KEYS), tool
        assert isinstance(entry["sources"], tuple) and entry["sources"], tool


def test_a_tool_with_an_empty_fact_is_refused_at_registration():
    empty = Facts(family="x", installs="", gpu_offload="x", multi_gpu="x", gguf="x", python_api="x", sources=("s",))
    with pytest.raises(ValueError, match=r"'mlx' lacks the facts installs"):
        registry.register(registry.Tool("mlx", empty, engine="llmbench.engines.mlx:Mlx"))
    assert "mlx" not in TOOLS


def test_compare_point_is_what_most_tools_ran():
    assert frameworks.compare_point(stand_in_study()) == ("m", "Q4_0")
    assert frameworks.compare_point(pl.DataFrame(skipped("vllm", "Q4_0", "x"), schema=RUN_SCHEMA)) is None
    # A tie goes to the coarser quant.
    tie = pl.DataFrame(rows("a", "Q8_0", [1.0]) + rows("b", "Q2_K", [1.0]), schema=RUN_SCHEMA)
    assert frameworks.compare_point(tie) == ("m", "Q2_K")


def test_table_rows_measurements_and_reasons():
    facts = {"llama-server": fact(), "transformers": fact(), "vllm": fact(), "ollama": fact()}
    t = frameworks.framework_table(stand_in_study(), facts)
    assert t["tool"].to_list() == list(facts) and t.columns == list(frameworks.SCHEMA)
    server, tf, vllm, ollama = (t.row(i, named=True) for i in range(4))
    # Decode speed compared on m Q4_0; the per-quant column keeps every quant, coarsest first.
    assert server["median_decode_tokens_per_s"] == 110.0 and server["compare_on"] == "m Q4_0"
    assert server["median_decode_tokens_per_s_all"] == "m: Q4_0 110, Q8_0 80"
    assert server["max_peak_rss_bytes"] == 400 * 2**20 and server["generations"] == 4
    assert server["median_load_ms"] is None and "reports no load time" in server["load_null_reason"]
    assert server["gpu_mem_null_reason"] == "no GPU job"
    # One load per job, then the median: (20 s + 30 s) / 2, not weighted by the jobs' row counts.
    assert tf["median_load_ms"] == 25_000.0 and tf["compare_on"] == "m Q4_0"
    assert tf["median_decode_tokens_per_s"] == 13.0  # both split modes' rows
    assert tf["ran"] == "m: Q4_0 (split layer, none)"
    assert vllm["ran"] is None and vllm["median_decode_tokens_per_s"] is None
    assert vllm["not_run_here"] == "Q4_0, Q8_0: vLLM needs an NVIDIA GPU"
    assert vllm["decode_null_reason"] == "did not run here"
    assert ollama["not_run_here"] == "not in this study's config" and ollama["generations"] == 0
    assert server["sources"] == "https://example.org/doc"


def test_gpu_memory_is_the_largest_over_gpu_jobs():
    runs = pl.DataFrame(rows("vllm", "Q4_0", [300.0], gpus=1, gpu_mem=20 * 2**30)
                        + rows("vllm", "Q8_0", [200.0], gpus=1, gpu_mem=30 * 2**30), schema=RUN_SCHEMA)
    r = frameworks.framework_table(runs, {"vllm": fact()}).row(0, named=True)
    assert r["max_gpu_mem_used_bytes"] == 30 * 2**30 and r["gpu_mem_null_reason"] is None


def test_markdown_has_both_tables_and_footnotes():
    facts = frameworks.registry_facts()
    md = frameworks.render_markdown(frameworks.framework_table(stand_in_study(), facts))
    assert "## The frameworks" in md and "## What each did here" in md
    assert "median decode tok/s on m Q4_0 |" in md
    assert md.count("\n| llama-server |") == 2 and md.count("\n| vllm |") == 2
    assert "vLLM needs an NVIDIA GPU" in md and "not in this study's config" in md
    assert "https://docs.ollama.com/faq#how-does-ollama-load-models-on-multiple-gpus" in md
    assert "| 1200 |" in md  # transformers' peak RSS in MiB


def test_speeds_compare_one_request_on_an_empty_context_only():
    """A load level's per-user speed (4 clients) and a depth's decode never mix into the framework comparison."""
    base = pl.DataFrame(rows("llama-server", "Q4_0", [100.0, 110.0]), schema=RUN_SCHEMA)
    loaded = base.with_columns(pl.lit(4, pl.Int64).alias("concurrency"), pl.lit(30.0).alias("decode_tokens_per_s"))
    deep = base.with_columns(pl.lit(1024, pl.Int64).alias("depth"), pl.lit(20.0).alias("decode_tokens_per_s"))
    only_loaded = pl.DataFrame(rows("vllm", "Q4_0", [300.0]), schema=RUN_SCHEMA).with_columns(
        pl.lit(8, pl.Int64).alias("concurrency"))
    t = frameworks.framework_table(pl.concat([base, loaded, deep, only_loaded]),
                                   {"llama-server": fact(), "vllm": fact()})
    server, vllm = t.row(0, named=True), t.row(1, named=True)
    assert server["median_decode_tokens_per_s"] == 105.0 and server["generations"] == 2
    assert vllm["generations"] == 0 and "load levels above 1" in vllm["not_run_here"]


def test_a_quant_that_ran_as_another_type_is_marked_in_what_ran():
    # An Ollama tag labelled Q4_0 whose engine loaded Q4_K_M (c312): its rows carry the note, so "ran" marks it.
    runs = stand_in_study().with_columns(
        pl.when((pl.col("tool") == "transformers") & (pl.col("quant") == "Q4_0"))
        .then(pl.lit("Q4_0 is not what ran: … Q4_K_M by its /api/show")).otherwise(None).alias("quant_label_note"))
    t = frameworks.framework_table(runs, {"llama-server": fact(), "transformers": fact()})
    assert t.row(1, named=True)["ran"] == "m: Q4_0 ≠ (split layer, none)"
    assert t.row(0, named=True)["ran"] == "m: Q4_0, Q8_0 (split none)"
    assert "≠: what ran is not what the quant's label says" in frameworks.render_markdown(t)
