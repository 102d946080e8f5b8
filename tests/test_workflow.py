"""The real workflow end to end on a small study: real llama.cpp build, real model, real llama-server.

The llama.cpp sdist and build are cached in the checkout's resources/ (shared with the Quickstart) so that a
test run builds at most once; everything else happens in a fresh working directory per test module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import polars as pl
import pytest
import yaml
from test_params import reversed_keys
from test_report import assert_report_shows, render_report, require_chromium

from conftest import REPO, load_config
from llmbench.devices.meters import open_energy_meter
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.outputs.archive import verify_archive
from llmbench.outputs.stats import GROUP

pytestmark = pytest.mark.e2e
CACHE = REPO / "resources"
MODEL = "smollm2-135m"


# Set for every workflow run of these tests: its value must never reach a result, a log or the archive.
SECRET = {"HF_TOKEN": "hf_e2e_secret_value_0123456789"}


def snakemake(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **SECRET},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def write_config(work: Path, quants: list[str]) -> str:
    """The default study, smaller: fewer quants, two prompts, two repetitions."""
    cfg = load_config()
    cfg["resources_dir"] = "res"
    cfg["models"][MODEL]["quants"] = quants
    cfg["tools"]["llama-bench"] = {"split_modes": ["none"], "gpus": 0, "n_prompt": 32, "n_gen": 16, "depths": [0, 256],
                                   "sweep_quants": ["Q8_0"]}
    # The served model: llama-server at two concurrent requests too, on one quant.
    cfg["tools"]["llama-server"].update(concurrency=[1, 2], sweep_quants=["Q8_0"])
    cfg["tools"]["llama-batched-bench"].update(n_prompt=32, n_gen=16, concurrency=[1, 2], quants=["Q8_0"])
    for slow_or_absent in ("transformers", "ollama", "vllm"):
        cfg["tools"][slow_or_absent]["quants"] = ["Q4_0"]
    cfg["tools"]["llama-cpp-python"].pop("quants", None)  # every quant, as llama-server: adding one runs both
    # Quality on a smaller scale: six chunks of the corpus, one question of each category.
    cfg["quality"].update(chunks=6, questions="workflow/data/test-questions.yaml")
    questions = yaml.safe_load((work / "workflow/data/accuracy-questions.yaml").read_text())
    firsts = {q["category"]: q for q in reversed(questions["questions"])}
    questions["questions"] = list(firsts.values())
    (work / "workflow/data/test-questions.yaml").write_text(yaml.safe_dump(questions))
    cfg["bench"].update(
        repetitions=2,
        precision=None,  # fixed rounds: the row counts below; the stopping rule has tests of its own
        prompts=[
            {"id": "capital", "text": "What is the capital of France? Answer in one sentence.", "max_tokens": 24},
            {"id": "sky", "text": "Explain in one short paragraph why the sky is blue.", "max_tokens": 48},
        ],
    )
    (work / "config" / "test.yaml").write_text(yaml.safe_dump(cfg))
    return "config/test.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("study")
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / item)
    for shared in ("llama.cpp", "src"):
        (CACHE / shared).mkdir(parents=True, exist_ok=True)
        (work / "res").mkdir(exist_ok=True)
        (work / "res" / shared).symlink_to(CACHE / shared)
    snakemake(work, "--configfile", write_config(work, ["Q8_0", "Q4_0"]))
    return work


def test_llama_bench_rows_are_its_raw_samples(study):
    runs = pl.read_parquet(study / "results/summary/runs.parquet").filter(pl.col("tool") == "llama-bench")
    assert runs.height == (2 + 1) * 2 * 2  # (quants + Q8_0 at depth 256) × (pp32, tg16) × repetitions
    assert sorted(runs.filter(pl.col("quant") == "Q8_0")["depth"].unique()) == [0, 256]
    assert sorted(runs["prompt_id"].unique()) == ["pp32", "tg16"]
    assert (runs.filter(pl.col("prompt_id") == "tg16")["decode_tokens_per_s"] > 0).all()
    assert re.fullmatch(r"[0-9a-f]{7,}", runs["engine_build"][0])


def test_study_writes_one_row_per_generation_with_engine_counts(study):
    runs = pl.read_parquet(study / "results/summary/runs.parquet").filter(pl.col("tool") == "llama-server")
    assert set(RUN_SCHEMA) <= set(runs.columns)
    loaded, runs = runs.filter(pl.col("concurrency") == 2), runs.filter(pl.col("concurrency") == 1)
    assert runs.height == 2 * 2 * 2 and loaded.height == 2 * 2 * 2  # quants (or clients) × prompts × repetitions
    # Two clients at once against the real llama-server: its own /metrics counts equal the rows'.
    assert sorted(loaded["client"].unique()) == [0, 1] and loaded["server_counts_check"][0].startswith("match: ")
    assert loaded["server_generated_tokens"][0] == loaded["generated_tokens"].sum()
    serving = pl.read_csv(study / "results/tables/serving.csv").filter(pl.col("tool") == "llama-server")
    assert sorted(serving["concurrency"].to_list()) == [1, 1, 2] and (serving["server_output_tokens_per_s"] > 0).all()
    # Beside it, llama.cpp's engine-side reference: the real llama-batched-bench, 1 and 2 sequences in one batch.
    batched = pl.read_parquet(study / "results/summary/runs.parquet").filter(pl.col("tool") == "llama-batched-bench")
    assert batched.height == 2 * 2 and set(batched["status"]) == {"ok"}  # levels × repetitions
    assert sorted(batched["generated_tokens"].unique()) == [16, 32] and (batched["decode_tokens_per_s"] > 0).all()
    assert (batched["n_layers_total"] > 0).all()  # its own log's load lines: the layers it offloaded, of all
    reference = pl.read_csv(study / "results/tables/serving.csv").filter(pl.col("tool") == "llama-batched-bench")
    assert reference["concurrency"].to_list() == [1, 2] and (reference["server_output_tokens_per_s"] > 0).all()
    assert sorted(runs["quant"].unique()) == ["Q4_0", "Q8_0"]
    assert (runs["generated_tokens"] > 0).all() and (runs["generated_tokens"] <= runs["max_tokens"]).all()
    # cache_prompt is off, so every repetition processes its whole prompt.
    assert (runs["prefill_tokens"] == runs["prompt_tokens"]).all()
    assert (runs["decode_tokens_per_s"] > 0).all() and (runs["prefill_ms"] > 0).all()
    assert (runs["ttft_ms"] > 0).all() and (runs["ttft_ms"] < runs["wall_ms"]).all()
    meter = open_energy_meter([])
    if meter.sensors:  # a machine with readable RAPL measures CPU energy
        assert (runs["energy_j"] > 0).all() and set(runs["energy_source"]) == {meter.source}
    else:
        assert runs["energy_j"].is_null().all()
        assert set(runs["energy_null_reason"]) == {"not measured: " + "; ".join(meter.unavailable)}
    assert (runs["energy_window_s"] > 0).all()
    assert (runs["peak_rss_bytes"] > 50 * 2**20).all()  # the engine holds at least the ~90 MB model
    assert "paris" in " ".join(runs.filter(pl.col("prompt_id") == "capital")["output_text"]).lower()


@pytest.mark.parametrize("tool", ["llama-cpp-python", "transformers"])
def test_in_process_frameworks_give_engine_counts_phase_times_and_memory(study, tool):
    runs = pl.read_parquet(study / "results/summary/runs.parquet").filter(pl.col("tool") == tool)
    assert runs.height == (2 if tool == "llama-cpp-python" else 1) * 2 * 2 and set(runs["status"]) == {"ok"}
    assert (runs["generated_tokens"] > 0).all() and (runs["generated_tokens"] <= runs["max_tokens"]).all()
    assert (runs["prefill_tokens"] == runs["prompt_tokens"]).all() and (runs["prefill_ms"] > 0).all()
    assert (runs["ttft_ms"] > 0).all() and (runs["ttft_ms"] < runs["wall_ms"]).all()
    assert (runs["load_ms"] > 0).all() and (runs["peak_rss_bytes"] > 100 * 2**20).all()
    assert runs["energy_j"].is_null().all() == (not open_energy_meter([]).sensors)
    if tool == "llama-cpp-python":
        # The binding ran the workflow's own llama.cpp build, the one llama-server ran.
        loaded = {Path(p).resolve() for p in runs["engine_library"]}
        assert loaded == {(study / "res/llama.cpp/0.3.36-cpu/bin/libllama.so").resolve()}
        assert "paris" in " ".join(runs.filter(pl.col("prompt_id") == "capital")["output_text"]).lower()
    else:
        assert runs["engine_build"][0].startswith("transformers ")


def test_tools_absent_here_end_skipped_with_the_reason(study):
    runs = pl.read_parquet(study / "results/summary/runs.parquet").filter(pl.col("tool").is_in(["ollama", "vllm"]))
    reasons = dict(zip(runs["tool"], runs["status_reason"], strict=True))
    assert runs.height == 2 and set(runs["status"]) == {"skipped"}
    if shutil.which("ollama") is None and "OLLAMA_HOST" not in os.environ:
        assert "no `ollama` binary is on PATH" in reasons["ollama"]
    assert "vLLM" in reasons["vllm"]
    table = (study / "results/tables/cost_per_1m_tokens.md").read_text()
    # Q4_0 is marked: its tied output matrix fell back from Q6_K to Q8_0 (rows 576 wide), as llama-quantize warned.
    assert "## vllm" in table and re.search(r"\| smollm2-135m \| Q4_0 ≠ \[\d+\] \| none \| 1 \| 0 \| 1 \| not run: ", table)


def test_study_renders_statistics_figures_and_cost_table(study):
    stats = pl.read_csv(study / "results/summary/stats.csv")
    decode = stats.filter((pl.col("metric") == "decode_tokens_per_s") & (pl.col("tool") == "llama-server"))
    # Q4_0 and Q8_0 at one client (2 prompts × 2 repetitions), Q8_0 at two clients (each sends them all).
    assert decode.height == 3 and sorted(decode["n"]) == [4, 4, 8]
    assert {"median", "q1", "q3", "iqr", "n_outliers", "mean", "sd"} <= set(stats.columns)
    png = study / "results/figures/decode_tokens_per_s.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (study / "results/figures/decode_tokens_per_s.svg").read_text()[:500]
    html = (study / "results/figures/decode_tokens_per_s.html").read_text()
    assert "vega" in html and "cdn.jsdelivr" not in html
    md = (study / "results/tables/cost_per_1m_tokens.md").read_text()
    assert "not measured" in md and "GPT-4o mini" in md
    costs = pl.read_csv(study / "results/tables/cost_per_1m_tokens.csv")
    for stat in ("median", "iqr", "mean", "sd"):
        assert f"usd_per_1m_tokens_{stat}" in costs.columns, stat
    assert any("GPT-4o" in c and "input" in c for c in costs.columns)
    assert any("GPT-4o" in c and "output" in c for c in costs.columns)
    for figure in ("prefill_tokens_per_s", "ttft_ms", "energy_per_token", "frameworks_decode_tokens_per_s"):
        assert (study / f"results/figures/{figure}.png").read_bytes()[:4] == b"\x89PNG", figure
    frameworks = pl.read_csv(study / "results/tables/frameworks.csv")
    assert set(frameworks["tool"]) == {"llama-server", "llama-bench", "llama-batched-bench", "llama-cpp-python",
                                       "transformers", "ollama", "vllm"}
    roofline = pl.read_csv(study / "results/tables/decode_roofline.csv")
    server = roofline.filter(pl.col("tool") == "llama-server")
    assert server.height == 3 and (server["fraction_of_bound"] > 0).all()
    build = yaml.safe_load((study / "res/llama.cpp/0.3.36-cpu/build.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", build["commit"]) and build["cuda"] is False
    derived = yaml.safe_load((study / f"res/models/{MODEL}/Q4_0.json").read_text())
    assert derived["from_record"]["requantized"] is True and derived["from_record"]["from_record"]["kind"] == "pypi"


def test_quality_rows_beside_speed_and_the_pareto_figure(study):
    quality = pl.read_parquet(study / "results/summary/quality.parquet")
    assert quality["quant"].to_list() == ["Q4_0", "Q8_0"]  # by bits per weight, coarsest first
    assert (quality["kld_mean"] > 0).all() and (quality["ppl_ratio"] > 0.9).all()
    assert set(quality["reference_quant"]) == {"F16"}
    assert (quality["median_decode_tokens_per_s"] > 0).all() and (quality["bits_per_weight"] > 4).all()
    for tool in ("llama-server", "llama-cpp-python"):
        assert (quality[f"accuracy {tool} n"] == 4).all()
    assert "ollama" in quality["accuracy not run"][0] and "vllm" in quality["accuracy not run"][0]
    answers = pl.read_parquet(study / "results/quality/accuracy/llama-server/smollm2-135m/Q8_0.parquet")
    assert answers.height == 4 and answers["reply"].str.len_chars().min() > 0
    md = (study / "results/tables/quality_by_quant.md").read_text()
    assert "Q4_0" in md and "not run [" in md
    assert (study / "results/figures/pareto_speed_vs_kld.png").read_bytes()[:4] == b"\x89PNG"
    reference = yaml.safe_load((study / "results/quality/kld/smollm2-135m/reference.json").read_text())
    assert reference["corpus_sha256"] == load_config()["quality"]["corpus"]["sha256"] and reference["ppl"] > 1


# The report's results: path → the label it is listed under. Checked before the tests below change the study.
REPORTED = {
    "results/figures/decode_tokens_per_s.png": "decode tokens/s per quant",
    "results/figures/decode_tokens_per_s.html": "decode tokens/s per quant",
    "results/figures/pareto_speed_vs_kld.png": "speed or cost vs KLD",
    "results/figures/pareto_speed_vs_kld.html": "speed or cost vs KLD",
    "results/tables/cost_per_1m_tokens.csv": "energy and $ per 1M tokens",
    "results/tables/cost_per_1m_tokens.md": "energy and $ per 1M tokens",
    "results/tables/quality_by_quant.csv": "quality per quant",
    "results/tables/quality_by_quant.md": "quality per quant",
    "results/summary/stats.csv": "statistics per group and metric",
    "results/figures/prefill_tokens_per_s.png": "prefill tokens/s per quant",
    "results/figures/ttft_ms.png": "time to first token",
    "results/figures/energy_per_token.png": "J per generated token",
    "results/figures/frameworks_decode_tokens_per_s.png": "decode tokens/s by framework",
    "results/tables/frameworks.md": "frameworks compared",
    "results/tables/decode_roofline.md": "decode against bandwidth bound",
    "results/tables/decision.md": "decision: service levels, quality floor, cost",
    "results/tables/decision.csv": "decision: service levels, quality floor, cost",
    "results/figures/decision_cost_vs_kld.png": "decision: cost vs KLD, service levels marked",
    "results/figures/decision_cost_vs_kld.html": "decision: cost vs KLD, service levels marked",
}


def test_study_run_makes_the_report_and_chromium_shows_every_figure(study, tmp_path):
    # Made by the workflow itself after the study's run (onsuccess), not by this test.
    report = study / "results/report.html"
    assert report.stat().st_size > 0
    text = report.read_text()
    assert "llmbench study" in text and "smollm2-135m-cpu" in text  # the landing page, rendered with the config
    require_chromium()
    shot = tmp_path / "report.png"
    seen = render_report(report, show="results/figures/decode_tokens_per_s.png", screenshot=shot)
    assert_report_shows(seen, REPORTED)
    assert set(seen["categories"]) == {"Decision", "Figures", "Tables"}
    assert seen["shown"]["path"] == "results/figures/decode_tokens_per_s.png" and seen["shown"]["width"] > 100
    assert "not measured" in seen["results"]["results/tables/cost_per_1m_tokens.md"]["caption"].lower()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_archive_with_manifest_and_provenance_no_secret_rerenders_and_compares_with_itself(study, tmp_path):
    snakemake(study, "archive", "--configfile", "config/test.yaml")
    [archive] = (study / "results/archive").glob("*.tar.gz")
    assert archive.name == "smollm2-135m-cpu.tar.gz"
    assert verify_archive(archive) == []
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        blobs = [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
    [top] = {name.split("/")[0] for name in names}
    assert re.fullmatch(r"smollm2-135m-cpu-\d{4}-\d{2}-\d{2}", top)  # the day the rows were measured
    assert not any(SECRET["HF_TOKEN"].encode() in blob for blob in blobs)
    # Nor anywhere else the workflow writes: results, logs, Snakemake's own records of params and logs.
    for folder in ("results", "logs", ".snakemake"):
        for path in (study / folder).rglob("*"):
            if path.is_file() and path.stat().st_size < 50 * 2**20:
                assert SECRET["HF_TOKEN"].encode() not in path.read_bytes(), path
    for member in ("MANIFEST.sha256", "results/config/study.yaml", "results/tables/quality_by_quant.md",
                   f"results/runs/llama-server/{MODEL}/Q8_0/none/c1-d0.provenance.json", "results/figures/decode_tokens_per_s.svg",
                   f"resources/models/{MODEL}/Q8_0.json", "results/figures/energy_per_token.svg",
                   "results/tables/frameworks.md", "results/tables/decode_roofline.csv",
                   "results/hardware/memory_bandwidth.json"):
        assert f"{top}/{member}" in names, member
    prov = json.loads((study / f"results/runs/llama-server/{MODEL}/Q8_0/none/c1-d0.provenance.json").read_text())
    assert prov["llama_cpp"]["commit"] and prov["models"][0]["sha256"] and prov["cpu"]["model"]
    assert re.fullmatch(r"[0-9a-f]{64}", prov["config_sha256"]) and prov["packages"]["polars"]
    # A second call with nothing changed rewrites nothing.
    before = archive.stat().st_mtime_ns
    again = snakemake(study, "archive", "--configfile", "config/test.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
    assert archive.stat().st_mtime_ns == before
    # Unpacked elsewhere, the figures and tables come back from the archived rows, with no benchmark.
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    for derived in ("figures/decode_tokens_per_s.png", "tables/cost_per_1m_tokens.md", "summary/stats.csv"):
        (tmp_path / top / "results" / derived).unlink(missing_ok=True)
    subprocess.run([sys.executable, str(REPO / "workflow/scripts/rerender.py"), str(tmp_path / top)], check=True)
    for derived in ("figures/decode_tokens_per_s.png", "tables/cost_per_1m_tokens.md", "summary/stats.csv",
                    "figures/pareto_speed_vs_kld.png"):
        assert (tmp_path / top / "results" / derived).stat().st_size > 0, derived
    # Compared with itself: every group listed, every ratio exactly 1.
    out = tmp_path / "compare"
    subprocess.run([sys.executable, str(REPO / "workflow/scripts/compare.py"), str(archive), str(archive), "-o", str(out)],
                   check=True)
    table = pl.read_csv(out / "compare.csv")
    runs = pl.read_parquet(study / "results/summary/runs.parquet")
    assert table.height == runs.select(GROUP).unique().height  # one row per job: load levels and depths apart
    assert set(table["present"]) == {"both"}
    assert (table.filter(pl.col("decode_ratio").is_not_null())["decode_ratio"] == 1.0).all()


def test_second_run_has_nothing_to_do(study):
    out = snakemake(study, "-n", "--configfile", "config/test.yaml").stdout
    assert "Nothing to be done" in out


def test_adding_a_quant_reruns_only_that_quant_and_what_follows(study):
    kept = study / f"results/runs/llama-server/{MODEL}/Q8_0/none/c1-d0.parquet"
    before = kept.stat().st_mtime_ns
    cfg = write_config(study, ["Q8_0", "Q4_0", "Q2_K"])
    plan = job_counts(snakemake(study, "-n", "--configfile", cfg).stdout)
    # transformers, Ollama and vLLM run only Q4_0 here (their `quants`), so Q2_K adds no job of theirs.
    assert plan == {"quantize": 1, "bench_llama_server": 1, "bench_llama_bench": 1, "bench_llama_cpp_python": 1,
                    "kld": 1, "answer_accuracy": 2, "aggregate": 1, "plot_decode_speed": 1, "cost_table": 1,
                    "quality_table": 1, "plot_pareto": 1, "plot_prefill_speed": 1, "plot_ttft": 1,
                    "plot_energy_per_token": 1, "plot_frameworks": 1, "framework_table": 1, "roofline_table": 1,
                    "serving_table": 1, "plot_serving_throughput": 1, "plot_energy_by_load": 1,
                    "plot_latency_by_load": 1, "plot_decode_by_depth": 1,
                    "decision_table": 1, "plot_decision": 1, "all": 1}
    snakemake(study, "--configfile", cfg)
    assert kept.stat().st_mtime_ns == before
    assert pl.read_parquet(study / "results/summary/runs.parquet")["quant"].n_unique() == 3
    # The coarser quant strays further from the F16's predictions.
    quality = pl.read_parquet(study / "results/summary/quality.parquet")
    kld = dict(zip(quality["quant"], quality["kld_mean"], strict=True))
    assert kld["Q2_K"] > kld["Q4_0"] > kld["Q8_0"] > 0


def test_each_quant_file_says_what_it_holds(study):
    """SmolLM2-135M's rows are 576 wide: the real llama-quantize's Q2_K falls back for most tensors and says so."""
    record = json.loads((study / f"res/models/{MODEL}/Q2_K.json").read_text())
    mix = record["tensor_mix"]
    assert not mix["matches_label"] and mix["bits_per_weight"] > mix["nominal_bits_per_weight"]
    warned = [f for f in mix["fallbacks"] if f["source"] == "llama-quantize's warning"]
    assert warned and len(warned) == len(record["quantize_fallbacks"])
    assert {f["intended"] for f in warned} <= {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"} and {f["ncols"] for f in warned} == {576}
    assert json.loads((study / f"res/models/{MODEL}/Q8_0.json").read_text())["tensor_mix"]["matches_label"]
    runs = pl.read_parquet(study / "results/summary/runs.parquet").filter(pl.col("tool") == "llama-server")
    notes = dict(runs.group_by("quant").agg(pl.col("quant_label_note").drop_nulls().first()).iter_rows())
    assert notes["Q2_K"].startswith("Q2_K here holds ") and notes["Q8_0"] is None
    quality = (study / "results/tables/quality_by_quant.md").read_text()
    assert f"| {MODEL} | Q2_K ≠ [" in quality and f"| {MODEL} | Q8_0 |" in quality
    prov = json.loads((study / f"results/runs/llama-server/{MODEL}/Q2_K/none/c1-d0.provenance.json").read_text())
    assert prov["models"][0]["tensor_mix"]["summary"] == mix["summary"]


def test_corrupt_model_is_a_failed_measurement_and_the_study_goes_on(study):
    cfg = write_config(study, ["Q8_0", "Q4_0", "Q2_K"])
    bad = study / f"res/models/{MODEL}/Q4_0.gguf"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    others = {q: study / f"results/runs/llama-server/{MODEL}/{q}/none/c1-d0.parquet" for q in ("Q8_0", "Q2_K")}
    mtimes = {q: p.stat().st_mtime_ns for q, p in others.items()}
    proc = snakemake(study, "--configfile", cfg, check=False)
    # Every job ran to its end; the run says what failed and exits non-zero so that a script can tell.
    assert proc.returncode != 0 and "measurement(s) failed" in proc.stderr + proc.stdout
    row = pl.read_parquet(study / f"results/runs/llama-server/{MODEL}/Q4_0/none/c1-d0.parquet").row(0, named=True)
    assert (row["status"], row["failure_kind"]) == ("failed", "corrupt_model_file")
    assert "Q4_0.gguf is truncated" in row["status_reason"] and "Delete it and run the workflow again" in row[
        "status_reason"]
    assert {q: p.stat().st_mtime_ns for q, p in others.items()} == mtimes
    assert "Q4_0.gguf is truncated" in (study / "results/tables/cost_per_1m_tokens.md").read_text()
    assert "failed [" in (study / "results/tables/quality_by_quant.md").read_text()


def test_the_same_config_with_keys_in_another_order_reruns_nothing(study):
    # The study made whole first: the corrupt-model test leaves a truncated Q4_0 file and its failed rows behind.
    q4_0 = study / f"results/runs/llama-server/{MODEL}/Q4_0/none/c1-d0.parquet"
    if not q4_0.exists() or "failed" in pl.read_parquet(q4_0)["status"].to_list():
        (study / f"res/models/{MODEL}/Q4_0.gguf").unlink(missing_ok=True)
    snakemake(study, "--configfile", "config/test.yaml")
    assert "Nothing to be done" in snakemake(study, "-n", "--configfile", "config/test.yaml").stdout

    cfg = yaml.safe_load((study / "config/test.yaml").read_text())
    flipped = reversed_keys(cfg)
    assert flipped == cfg and repr(flipped) != repr(cfg)
    (study / "config/reversed.yaml").write_text(yaml.safe_dump(flipped, sort_keys=False))
    out = snakemake(study, "-n", "--configfile", "config/reversed.yaml").stdout
    assert "Nothing to be done" in out


def test_build_was_proven_here_before_any_job_used_it(study):
    build = json.loads((study / "res/llama.cpp/0.3.36-cpu/build.json").read_text())
    tools = [r["tool"] for r in build["smoke_test"]]
    # Every binary built, in the order the registry lists them (llmbench.engines.registry), then the binding.
    from llmbench.toolchain.build_smoke import smoke_tools

    assert tools == list(smoke_tools())
    assert set(tools) == {"llama-quantize", "llama-bench", "llama-batched-bench", "llama-perplexity", "llama-server",
                          "llama-cpp-python"}
    assert all(r["ok"] for r in build["smoke_test"]), build["smoke_test"]
    # Native where it runs (an AMD EPYC); "native without amx" where the native build died (an Intel Xeon with AMX),
    # with the tool, the signal and the upstream reference in build.json.
    assert build["cpu_target"] in ("native", "native without amx", "portable", "portable without amx")
    for off in build["cpu_features_turned_off"]:
        assert off["why"]["signal"] in ("SIGILL", "SIGSEGV", "SIGBUS") and off["why"]["tool"] in tools
    assert len(build["attempts"]) == 1 + len(build["cpu_features_turned_off"])


def test_an_engine_that_dies_fails_its_cells_and_every_other_output_is_made(study, tmp_path):
    # A stand-in `ollama` on PATH (no Ollama installs from these registries) that dies by SIGILL when the job
    # starts `ollama serve`, as a binary built for another CPU does.
    standin = tmp_path / "bin" / "ollama"
    standin.parent.mkdir()
    standin.write_text("#!/bin/sh\n# standin-ollama\nkill -ILL $$\n")
    standin.chmod(0o755)
    for made in (f"results/runs/ollama/{MODEL}/Q4_0/none/c1-d0.parquet", f"results/quality/accuracy/ollama/{MODEL}/Q4_0.parquet"):
        (study / made).unlink()
    outputs = [study / f for f in ("results/summary/stats.csv", "results/tables/cost_per_1m_tokens.md",
                                   "results/tables/frameworks.md", "results/tables/quality_by_quant.md",
                                   "results/figures/decode_tokens_per_s.svg", "results/report.html")]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    env_path = f"{standin.parent}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/test.yaml"],
                          cwd=study, capture_output=True, text=True,
                          env={**os.environ, "PATH": env_path, "PYTHONUNBUFFERED": "1", **SECRET})
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "2 measurement(s) failed" in log and "bench ollama × smollm2-135m × Q4_0 [illegal_instruction]" in log
    row = pl.read_parquet(study / f"results/runs/ollama/{MODEL}/Q4_0/none/c1-d0.parquet").row(0, named=True)
    assert (row["status"], row["failure_kind"], row["failure_signal"]) == ("failed", "illegal_instruction", "SIGILL")
    assert "`ollama serve` died by SIGILL" in row["status_reason"]
    # Every table, figure and the report made again, each showing the failure with its reason.
    assert all(p.stat().st_mtime_ns > before[p] for p in outputs)
    for table in outputs[:4]:
        assert "died by SIGILL" in table.read_text(), table
    assert "failed, not drawn: ollama" in (study / "results/figures/decode_tokens_per_s.svg").read_text()
    assert "Report of the study" in log
