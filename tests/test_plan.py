"""Planning the studies: which jobs exist and which GPUs they declare, on a machine without GPU or network."""

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter

from conftest import REPO, load_config
from llmbench.study import plan as study
from llmbench.study.configcheck import validate_config


def dry_run(*args):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "4", *args],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def planned(out: str) -> Counter:
    """(rule, gpu resource) of every job in a dry run's listing."""
    jobs = Counter()
    for block in re.split(r"\n(?=(?:local)?rule )", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            gpu = re.search(r"resources:.*\bgpu=(\d+)", block)
            jobs[(m.group(1), int(gpu.group(1)) if gpu else 0)] += 1
    return jobs


def test_article_study_plans_every_job_with_its_gpus(schema):
    cfg = validate_config(load_config("llama31-quantfactory.yaml"), schema)
    jobs = planned(dry_run("--resources", "gpu=2", "--configfile", "config/llama31-quantfactory.yaml"))
    hf_files = sum(len(m["quants"]) for m in cfg["models"].values() if m["source"]["kind"] == "hf")
    assert hf_files == 15
    assert jobs[("fetch_hf_quant", 0)] == hf_files
    # Every file in three split modes (layer, row, tensor); the files of the quants swept (Q4_K_M and Q8_0: three
    # of them) also at 2, 4, 8, 16 clients (llama-server) and at depths 4096 and 32768 (llama-bench).
    swept = sum(len({"Q4_K_M", "Q8_0"} & set(m["quants"])) for m in cfg["models"].values() if m["source"]["kind"] == "hf")
    assert swept == 3
    assert jobs[("bench_llama_server", 2)] == hf_files * 3 + swept * 3 * 4
    assert jobs[("bench_llama_bench", 2)] == hf_files * 3 + swept * 3 * 2
    # The library tags, and QuantFactory's Q4_0, Q4_K_M, Q8_0 (8B) and Q4_0, Q4_K_M (70B) imported.
    assert jobs[("bench_ollama", 2)] == 5 + 5
    assert jobs[("bench_llama_cpp_python", 2)] == 3 and jobs[("bench_vllm", 2)] == 2 * 5  # 1 to 16 clients
    # llama.cpp's engine-side reference at llama-server's batch sizes, on the swept files, in three split modes.
    assert jobs[("bench_llama_batched_bench", 2)] == swept * 3 * 5
    assert not any(rule.startswith("quantize") or rule == "fetch_pypi_model" for rule, _ in jobs)
    bench = sum(n for (rule, _), n in jobs.items() if rule.startswith("bench_"))
    assert len(study.bench_jobs(cfg)) == bench == hf_files * 6 + swept * 3 * 6 + 10 + 3 + 10 + swept * 3 * 5
    # Quality: every file against its model's finest quant over wikitext-2, and answers of every generating tool
    # (llama-server in its first split mode only).
    assert jobs[("fetch_corpus", 0)] == 1 and jobs[("kld_base", 0)] == 2 and jobs[("kld", 0)] == hf_files
    assert jobs[("answer_accuracy", 2)] == hf_files + 3 + 10 + 2 == len(study.accuracy_jobs(cfg))
    assert [study.reference_quant(cfg, m) for m in ("llama31-8b", "llama31-70b")] == ["Q8_0", "Q4_K_M"]


def test_default_study_plans_the_ladder_on_the_cpu_through_every_tool(schema):
    jobs = planned(dry_run("--forceall"))
    # Every quant at one request on an empty context; llama-server also at 4 clients, llama-bench also at depth
    # 1024, on the two quants each sweeps; llama-cpp-python on the two quants the frameworks are compared on.
    assert jobs[("bench_llama_cpp_python", 0)] == 2
    assert jobs[("bench_llama_server", 0)] == jobs[("bench_llama_bench", 0)] == 8 + 2
    # The slow or absent tools run the quants their `quants` list keeps.
    assert jobs[("bench_transformers", 0)] == 1 and jobs[("bench_ollama", 0)] == 2
    assert jobs[("quantize_reference", 0)] == 1 and jobs[("quantize", 0)] == 7
    assert jobs[("kld_base", 0)] == 1 and jobs[("kld", 0)] == 8
    assert jobs[("answer_accuracy", 0)] == 8 + 2 + 1 + 2  # llama-server, llama-cpp-python, transformers, ollama
    # vLLM needs a GPU and says so in its resources; it ends 'skipped' where there is none.
    assert sorted(key for key in jobs if key[1]) == [("answer_accuracy", 1), ("bench_vllm", 1)]
    assert jobs[("bench_vllm", 1)] == jobs[("answer_accuracy", 1)] == 2


def test_a_load_level_or_depth_is_a_job_of_its_own_and_adding_one_reruns_only_its_jobs(schema):
    cfg = validate_config(load_config(), schema)
    jobs = study.bench_jobs(cfg)
    server = {(j.quant, j.concurrency, j.depth) for j in jobs if j.tool == "llama-server"}
    assert ("Q4_0", 4, 0) in server and ("Q8_0", 4, 0) in server and ("Q6_K", 4, 0) not in server
    bench = {(j.quant, j.concurrency, j.depth) for j in jobs if j.tool == "llama-bench"}
    assert ("Q8_0", 1, 1024) in bench and ("Q2_K", 1, 1024) not in bench
    cfg["tools"]["llama-server"]["concurrency"] = [1, 4, 8]
    added = set(study.bench_jobs(cfg)) - set(jobs)
    assert {(j.tool, j.quant, j.concurrency) for j in added} == {("llama-server", "Q8_0", 8), ("llama-server", "Q4_0", 8)}


def test_a_deleted_provenance_file_schedules_its_bench_job_again(tmp_path):
    # The study's workflow copied, every output of a forced dry run stood in by an empty file newer than its
    # inputs: nothing to do. Deleting one job's .provenance.json must plan that job (and what reads its rows).
    work = tmp_path / "study"
    work.mkdir()
    shutil.copy(REPO / "Snakefile", work)
    for name in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "4", *args], cwd=work,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    later = time.time() + 3600
    for listed in re.findall(r"^    output: (.*)$", run("--forceall"), re.M):
        for path in map(work.joinpath, listed.split(", ")):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            os.utime(path, (later, later))
    assert "Nothing to be done" in run()
    provenance = next((work / "results/runs/llama-server").rglob("c1-d0.provenance.json"))
    provenance.unlink()
    jobs = planned(run())
    assert jobs[("bench_llama_server", 0)] == 1 and jobs[("aggregate", 0)] == 1
    assert f"Missing output files: {provenance.relative_to(work)}" in run()
