"""The GPU check's config (benchmarks/gpu/gpu.yaml), planned on a machine without a GPU: every bench job it runs,
by tool, model, quant, split mode and load level, and the config keys it states on purpose."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from conftest import REPO
from llmbench.study.configcheck import validate_config

CONFIG = REPO / "benchmarks/gpu/gpu.yaml"
BENCH_OUTPUT = re.compile(r"results/runs/([\w.-]+)/([\w.-]+)/([\w.-]+)/([\w.-]+)/c(\d+)-d(\d+)\.parquet")


def archive_stand_in(folder) -> None:
    """An empty file where the config names the trimmed source: planning reads no archive, it needs one to exist."""
    archive = folder / yaml.safe_load(CONFIG.read_text())["llama_cpp"]["source_archive"]["path"]
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")


def dry_run(tmp_path) -> str:
    archive_stand_in(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "measurements", "-n", "--cores", "16", "--directory",
                           str(tmp_path), "--configfile", str(CONFIG), "--resources", "gpu=1"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_gpu_config_is_valid_and_states_what_the_check_relies_on(schema, tmp_path, monkeypatch):
    archive_stand_in(tmp_path)
    monkeypatch.chdir(tmp_path)  # the archive's path is checked from the working directory, as check.sh runs it
    config = validate_config(yaml.safe_load(CONFIG.read_text()), schema)
    assert config["llama_cpp"]["cuda"] == "on" and config["llama_cpp"]["cmake_args"] == ["-DCMAKE_CUDA_ARCHITECTURES=90"]
    assert config["bench"]["precision"] is None and config["bench"]["repetitions"] == 2  # fixed rounds: the budget
    assert {t: s["split_modes"] for t, s in config["tools"].items()} == dict.fromkeys(config["tools"], ["none"])
    assert all(s["gpus"] == 1 for s in config["tools"].values())
    assert config["tools"]["llama-server"]["flash_attn"] == "auto" and config["tools"]["llama-cpp-python"]["flash_attn"]
    assert "h200" not in config["study"].lower()  # either Hopper card may be lent


def test_the_gpu_config_plans_every_bench_job_in_split_mode_none(tmp_path):
    out = dry_run(tmp_path)
    jobs = {m.groups() for m in BENCH_OUTPUT.finditer(out)}
    big, tiny = "llama31-8b-synthetic", "llama-tiny-synthetic"
    assert jobs == {
        ("llama-server", big, "Q4_0", "none", "1", "0"),
        ("llama-server", big, "Q4_0", "none", "8", "0"),
        ("llama-server", big, "Q8_0", "none", "1", "0"),
        ("llama-bench", big, "Q4_0", "none", "1", "0"),
        ("llama-bench", big, "Q8_0", "none", "1", "0"),
        ("llama-batched-bench", big, "Q4_0", "none", "1", "0"),
        ("llama-batched-bench", big, "Q4_0", "none", "8", "0"),
        ("llama-cpp-python", big, "Q4_0", "none", "1", "0"),
        ("transformers", tiny, "F16", "none", "1", "0"),
        ("vllm", tiny, "F16", "none", "1", "0"),
    }
    rules = set(re.findall(r"^(?:local)?rule (\w+):", out, re.M))
    assert {"build_llama_cpp", "take_llama_cpp_source_archive", "make_synthetic_gguf", "measure_memory_bandwidth",
            "aggregate", "serving_table", "roofline_table", "cost_table", "study_config"} <= rules
    assert {f"bench_{t.replace('-', '_')}" for t in ("llama-server", "llama-bench", "llama-batched-bench",
                                                     "llama-cpp-python", "transformers", "vllm")} <= rules
    assert "fetch_llama_cpp_sdist" not in rules and not any(r.startswith(("plot_", "kld", "accuracy")) for r in rules)
