"""Synthetic-shape models: real dimensions, random weights written block by block, labelled synthetic everywhere.

The files here use the tiny test shape (a few MB); the 8B and 70B shapes are checked by their planned tensors only.
One test (e2e) runs the real llama-server of the cached CPU build on the tiny file.
"""

import copy
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from conftest import REPO, bench_job, load_config
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.modelfiles.models import check_gguf
from llmbench.modelfiles.synthetic import (
    BIAS_CARRIER,
    FIRST_FILLER,
    N_SPECIAL,
    PENALTY,
    QUALITY_NULL_REASON,
    QUANTS,
    SHAPES,
    make_synthetic_model,
    planned_bytes,
    tensor_plan,
    vocabulary,
)
from llmbench.outputs.quality import quality_table, render_markdown
from llmbench.study import plan as study
from llmbench.study.configcheck import ConfigError, validate_config

SERVER = REPO / "resources/llama.cpp" / f"{load_config()['llama_cpp']['version']}-cpu" / "bin/llama-server"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    out = {}
    for quant in QUANTS:
        path = tmp_path_factory.mktemp(quant) / f"{quant}.gguf"
        out[quant] = (path, make_synthetic_model(path, "llama-tiny", quant, seed=7, model_name="tiny-synthetic"))
    return out


def test_presets_hold_llama_31_dimensions_and_weight_counts():
    s8, s70 = SHAPES["llama-3.1-8b"], SHAPES["llama-3.1-70b"]
    assert (s8.n_embd, s8.n_layer, s8.n_head, s8.n_head_kv, s8.n_ff, s8.n_vocab) == (4096, 32, 32, 8, 14336, 128256)
    assert (s70.n_embd, s70.n_layer, s70.n_head, s70.n_head_kv, s70.n_ff) == (8192, 80, 64, 8, 28672)
    assert s8.rope_theta == 500000.0 and s8.n_ctx_train == 131072 and s8.rope_scaling == (8.0, 1.0, 4.0, 8192)
    weights = sum(int(np.prod(d)) for _, d, _ in tensor_plan(s8, "Q4_0"))
    assert weights == 8_030_261_248 + 64  # Llama 3.1 8B's parameters, plus the 64 RoPE scaling factors
    # llama-quantize's Q4_0 layout: Q4_0 matrices, Q6_K output: 4.33 GiB of tensors, as the real file.
    assert planned_bytes(s8, "Q4_0") == 4_653_375_744
    assert dict((n, t) for n, _, t in tensor_plan(s8, "Q4_0"))["output.weight"] == "Q6_K"


def test_schema_lists_exactly_the_presets(schema):
    assert schema["$defs"]["source_synthetic"]["properties"]["shape"]["enum"] == list(SHAPES)


def test_same_seed_writes_the_same_bytes_and_another_seed_does_not(tiny, tmp_path):
    path, record = tiny["Q4_0"]
    again = make_synthetic_model(tmp_path / "again.gguf", "llama-tiny", "Q4_0", seed=7, model_name="tiny-synthetic")
    other = make_synthetic_model(tmp_path / "other.gguf", "llama-tiny", "Q4_0", seed=8, model_name="tiny-synthetic")
    assert (tmp_path / "again.gguf").read_bytes() == path.read_bytes()
    assert again["sha256"] == record["sha256"] != other["sha256"]


@pytest.mark.parametrize("quant", QUANTS)
def test_file_is_a_labelled_llama_gguf_of_the_planned_types(tiny, quant):
    path, record = tiny[quant]
    assert check_gguf(path)["architecture"] == "llama"
    assert record["kind"] == "synthetic" and record["shape"] == "llama-tiny" and record["seed"] == 7
    r = GGUFReader(path)
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("llmbench.modelfiles.synthetic") is True and field("llmbench.modelfiles.synthetic.shape") == "llama-tiny"
    assert field("llama.block_count") == 2 and field("llama.attention.head_count_kv") == 2
    assert field("tokenizer.ggml.model") == "llama" and len(field("tokenizer.ggml.tokens")) == 1024
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["token_embd.weight"] == quant and types["blk.0.attn_norm.weight"] == "F32"
    assert types["output.weight"] == {"Q4_0": "Q6_K"}.get(quant, quant)
    assert sum(int(t.n_bytes) for t in r.tensors) == record["tensor_bytes"]


def test_vocabulary_puts_llama3_specials_at_their_ids():
    tokens, _, types, bos, eos = vocabulary(128256)
    assert (tokens[128000], tokens[128009], tokens[128255]) == (
        "<|begin_of_text|>", "<|eot_id|>", "<|reserved_special_token_247|>")
    assert (bos, eos) == (128000, 128009)
    assert tokens[1 + 0x0A] == "<0x0A>" and types[1 + 0x0A] == 6 and types[128009] == 3
    assert len(set(tokens)) == len(tokens) == 128256


@pytest.mark.parametrize("quant", QUANTS)
def test_weights_are_finite_and_no_end_token_can_win(tiny, quant):
    """Residual dimension 0 carries a constant no layer writes or reads; the output matrix turns it into a large
    negative logit for every token but the fillers, so generation always runs to max_tokens."""
    r = GGUFReader(tiny[quant][0])
    w = {t.name: dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(x) for x in t.shape])))
         for t in r.tensors}
    assert all(np.isfinite(v).all() for v in w.values())
    assert np.allclose(w["token_embd.weight"][:, 0], BIAS_CARRIER, rtol=1e-3)  # Q8_0: an f16 scale of 8/127
    out = w["output.weight"][:, 0]
    fillers = np.zeros(1024, dtype=bool)
    fillers[FIRST_FILLER:1024 - N_SPECIAL] = True
    assert np.allclose(out[~fillers], -PENALTY, rtol=1e-3) and (out[fillers] == 0).all()
    for layer in range(2):
        assert (w[f"blk.{layer}.attn_output.weight"][0] == 0).all() and (w[f"blk.{layer}.ffn_down.weight"][0] == 0).all()
        assert w[f"blk.{layer}.attn_norm.weight"][0] == 0 == w[f"blk.{layer}.ffn_norm.weight"][0]
    # Unit-variance outputs for unit-RMS inputs: entries of sd about 1/sqrt(n_in).
    sd = w["blk.0.ffn_gate.weight"].std() * np.sqrt(256)
    assert 0.8 < sd < 1.2


@pytest.mark.e2e
def test_real_llama_server_generates_exactly_max_tokens_on_the_tiny_file(tiny, tmp_path):
    from llmbench.engines.llama_server import LlamaServer, LlamaServerSettings

    if not SERVER.exists():
        pytest.skip(f"no llama.cpp build at {SERVER.parent} (run the workflow's rule build_llama_cpp)")
    settings = LlamaServerSettings(binary=SERVER, model=tiny["Q4_0"][0], threads=2, start_timeout_s=120)
    server = LlamaServer(settings, tmp_path / "server.log")
    server.start()
    try:
        gens = [server.generate("Write three paragraphs about the history of the bicycle.", n, t, seed)
                for n, t, seed in [(48, 0.7, 1), (64, 0.0, 2)]]
    finally:
        server.stop()
    assert [g.generated_tokens for g in gens] == [48, 64]
    assert all(g.finish_reason == "length" and g.prompt_tokens > 50 and g.text.strip() for g in gens)


def synthetic_config(schema, name="llama-tiny-synthetic", **source) -> dict:
    cfg = copy.deepcopy(load_config())
    cfg["models"][name] = {"source": {"kind": "synthetic", "shape": "llama-tiny", **source}, "quants": ["Q4_0", "F16"]}
    return cfg


def test_config_fills_the_seed_and_plans_bench_but_no_quality_jobs(schema):
    cfg = validate_config(synthetic_config(schema), schema)
    assert cfg["models"]["llama-tiny-synthetic"]["source"]["seed"] == 0
    assert study.synthetic_models(cfg) == ["llama-tiny-synthetic"] and study.synthetic_quants(cfg) == ["F16", "Q4_0"]
    assert {(j.tool, j.quant) for j in study.bench_jobs(cfg) if j.model == "llama-tiny-synthetic"} >= {
        ("llama-server", "Q4_0"), ("llama-bench", "F16")}
    assert "llama-tiny-synthetic" not in study.kld_models(cfg)
    assert all(j.model != "llama-tiny-synthetic" for j in study.accuracy_jobs(cfg))
    assert "smollm2-135m" in study.kld_models(cfg)


def test_config_refuses_a_synthetic_model_not_named_so_or_a_quant_it_cannot_write(schema):
    cfg = synthetic_config(schema, name="llama-tiny")
    cfg["models"]["llama-tiny"]["quants"] = ["Q4_K_M"]
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, schema)
    msg = str(e.value)
    assert "models.llama-tiny: a model with source kind synthetic" in msg and "llama-tiny-synthetic" in msg
    assert "'Q4_K_M' cannot be written synthetically; allowed: F16, Q8_0, Q4_0" in msg


def test_config_names_an_unknown_shape(schema):
    cfg = synthetic_config(schema)
    cfg["models"]["llama-tiny-synthetic"]["source"]["shape"] = "llama-9b"
    with pytest.raises(ConfigError, match=r"shape = 'llama-9b' is not allowed; allowed: llama-3.1-8b"):
        validate_config(cfg, schema)


def test_synthetic_study_config_is_valid_and_gpu_only(schema):
    cfg = validate_config(load_config("synthetic-llama31-8b.yaml"), schema)
    (model,) = cfg["models"]
    assert "synthetic" in model and cfg["models"][model]["source"]["shape"] == "llama-3.1-8b"
    assert cfg["llama_cpp"]["cuda"] == "on" and cfg["models"][model]["n_gpu_layers"] >= 33
    assert {t: s["gpus"] for t, s in cfg["tools"].items()} == {"llama-server": 1, "llama-bench": 1}
    assert study.kld_models(cfg) == [] and study.accuracy_jobs(cfg) == []


def test_bench_rows_say_synthetic_from_the_model_record(tiny, tmp_path):
    path, record = tiny["Q4_0"]
    path.with_suffix(".json").write_text(json.dumps(record))
    real = tmp_path / "real.gguf"
    real.write_bytes(b"")
    real.with_suffix(".json").write_text(json.dumps({"kind": "derived"}))
    assert bench_job(tmp_path, "llama-server", path).plan.model_is_synthetic
    assert not bench_job(tmp_path, "llama-server", real).plan.model_is_synthetic
    assert not bench_job(tmp_path, "ollama", None, tag="x:y").plan.model_is_synthetic  # a library tag: no file of ours
    assert RUN_SCHEMA["model_is_synthetic"] == pl.Boolean


def test_quality_table_says_synthetic_weights_are_not_measured():
    """Stand-in rows: one synthetic model beside a real one."""
    runs = pl.DataFrame(
        [{"tool": "llama-server", "model": m, "quant": "Q4_0", "split": "none", "status": "ok",
          "model_is_synthetic": m.endswith("synthetic"), "decode_tokens_per_s": 50.0, "generated_tokens": 10,
          "energy_j": None, "energy_window_s": 1.0, "energy_null_reason": "not measured: stand-in",
          "energy_is_estimate": False} for m in ("real", "tiny-synthetic")], schema=RUN_SCHEMA)
    files = pl.DataFrame(schema={"model": pl.String, "quant": pl.String, "file_bytes": pl.Int64,
                                 "bits_per_weight": pl.Float64})
    kld = pl.DataFrame({"model": ["real"], "quant": ["Q4_0"], "kld_mean": [0.05], "kld_mean_unc": [0.001],
                        "kld_p99": [0.5], "ppl": [10.0], "ppl_ratio": [1.02], "ppl_ratio_unc": [0.01],
                        "same_top_p_pct": [95.0], "reference_quant": ["F16"]})
    accuracy = pl.DataFrame(schema={"tool": pl.String, "model": pl.String, "quant": pl.String,
                                    "question_id": pl.String, "correct": pl.Boolean, "status": pl.String,
                                    "status_reason": pl.String})
    table = quality_table(files, kld, accuracy, runs, usd_per_kwh=0.14)
    reasons = dict(zip(table["model"], table["quality_null_reason"], strict=True))
    assert reasons == {"real": None, "tiny-synthetic": QUALITY_NULL_REASON}
    md = render_markdown(table, ["llama-server"])
    synthetic_line = next(line for line in md.splitlines() if "tiny-synthetic" in line)
    assert "not measured [" in synthetic_line
    assert f"] {QUALITY_NULL_REASON}\n" in md


def test_synthetic_study_dry_run_writes_the_file_and_benches_it_on_one_gpu():
    from test_plan import dry_run, planned

    jobs = planned(dry_run("--resources", "gpu=1", "--configfile", "config/synthetic-llama31-8b.yaml"))
    assert jobs[("make_synthetic_gguf", 0)] == 1
    assert jobs[("bench_llama_server", 1)] == jobs[("bench_llama_bench", 1)] == 1
    assert not any(rule in ("kld", "kld_base", "answer_accuracy", "quality_table") for rule, _ in jobs)


@pytest.mark.e2e
def test_real_llama_server_at_two_concurrent_requests_counts_as_its_clients(tiny, tmp_path):
    """Two clients at once against the real llama-server (two slots): every request is a row with its client,
    its times and its inter-token gaps, and the server's own /metrics counters equal the rows' token counts."""
    from llmbench.devices.meters import EnergyMeter
    from llmbench.engines.llama_server import LlamaServer, LlamaServerSettings
    from llmbench.engines.runs import Prompt, RunPlan, run_generations

    if not SERVER.exists():
        pytest.skip(f"no llama.cpp build at {SERVER.parent} (run the workflow's rule build_llama_cpp)")
    settings = LlamaServerSettings(binary=SERVER, model=tiny["Q4_0"][0], threads=2, start_timeout_s=120, parallel=2,
                                   ctx_size=512)
    plan = RunPlan(tool="llama-server", model="tiny-synthetic", quant="Q4_0", split="none",
                   prompts=(Prompt("a", "Write about bicycles.", 24), Prompt("b", "Name three rivers.", 16)),
                   repetitions=2, warmup=1, idle_s=0.0, temperature=0.0, seed=1, n_gpu_layers=0, gpus=0, threads=2,
                   concurrency=2)
    with LlamaServer(settings, tmp_path / "server.log") as server:
        rows = run_generations(server, plan, EnergyMeter([], ["no sensor here"]), server.facts())
    assert rows.height == 2 * 2 * 2 and set(rows["status"]) == {"ok"}  # clients × prompts × repetitions
    assert sorted(rows["client"].unique()) == [0, 1] and (rows["concurrency"] == 2).all()
    assert rows["generated_tokens"].to_list() == [24 if p == "a" else 16 for p in rows["prompt_id"]]
    assert rows["server_counts_check"][0].startswith("match: 160 generated")
    assert rows["server_generated_tokens"][0] == rows["generated_tokens"].sum()
    # Each request's gaps between streamed tokens after the first; its time per output token from the engine's count.
    assert all(len(gaps) == n - 1 for gaps, n in zip(rows["itl_ms"], rows["generated_tokens"], strict=True))
    assert (rows["tpot_ms"] > 0).all() and (rows["request_end_s"] > rows["request_start_s"]).all()
    assert rows["energy_j"].is_null().all() and rows["level_energy_null_reason"][0].startswith("not measured")


@pytest.mark.e2e
def test_real_llama_server_at_a_depth_follows_that_many_context_tokens(tiny, tmp_path):
    """A job at depth 64: every prompt follows the first 64 tokens of the context text by llama-server's own
    tokenizer, so the engine counts at least 64 prompt tokens more than the prompt alone."""
    import logging

    from llmbench.study.measure import measure

    if not SERVER.exists():
        pytest.skip(f"no llama.cpp build at {SERVER.parent} (run the workflow's rule build_llama_cpp)")
    corpus = REPO / "workflow/data/quality-corpus.txt"
    rows = {}
    for depth in (0, 64):
        job = bench_job(tmp_path / f"d{depth}", "llama-server", tiny["Q4_0"][0], exe=SERVER, depth=depth,
                        context=corpus if depth else None, max_tokens=4)
        rows[depth] = measure(job, [], logging.getLogger("test"))
    assert [r["status"].to_list() for r in rows.values()] == [["ok"], ["ok"]]
    assert rows[64]["depth"][0] == 64
    assert rows[64]["prompt_tokens"][0] - rows[0]["prompt_tokens"][0] >= 64
