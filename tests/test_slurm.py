"""The study through a real SLURM scheduler: profiles/slurm submits every job with sbatch to a single-node cluster
(Debian's slurm-wlm and munge) that the test starts and stops, and the GPU requests reach sbatch as --gpus.

The llama.cpp build is cached in the checkout's resources/ exactly as in test_workflow.py (whichever runs first
builds it, here as a SLURM job).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import yaml
from slurm_cluster import missing_binaries, single_node_slurm

from conftest import REPO, load_config

CACHE = REPO / "resources"
MODEL = "smollm2-135m"
# The default study, smaller: one quant (and the F16 it is scored against), one prompt, one repetition.
QUANT = "Q4_0"


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def failed_job_logs(work: Path) -> str:
    """The end of each SLURM job log that reports an error (the plugin keeps them all here)."""
    tails = []
    for log in sorted((work / ".snakemake/slurm_logs").rglob("*.log")):
        text = log.read_text(errors="replace")
        if re.search(r"^(Error in rule|\w+Exception|Traceback|Missing files)", text, re.M):
            tails.append(f"--- {log.relative_to(work)}\n{text[-3000:]}")
    return "\n".join(tails)


def write_config(work: Path) -> str:
    cfg = load_config()
    cfg["resources_dir"] = "res"
    cfg["models"][MODEL]["quants"] = [QUANT]
    cfg["tools"]["llama-bench"].update(n_prompt=32, n_gen=16, depths=[0])
    cfg["tools"]["llama-server"]["concurrency"] = [1]  # the load sweep runs in test_workflow.py
    # transformers (a quarter of the default study's time) runs in test_workflow.py; the scheduler is tested here.
    del cfg["tools"]["transformers"]
    for tool in ("ollama", "vllm"):
        cfg["tools"][tool]["quants"] = [QUANT]
    # vLLM keeps the default study's gpus: 1, so one job asks SLURM for a GPU (the cluster's stand-in GRES).
    assert cfg["tools"]["vllm"]["gpus"] == 1
    cfg["quality"].update(chunks=2, questions="workflow/data/test-questions.yaml")
    questions = yaml.safe_load((work / "workflow/data/accuracy-questions.yaml").read_text())
    questions["questions"] = questions["questions"][:2]
    (work / "workflow/data/test-questions.yaml").write_text(yaml.safe_dump(questions))
    cfg["bench"].update(
        repetitions=1, precision=None, warmup=0, idle_s=0,
        prompts=[{"id": "capital", "text": "What is the capital of France? Answer in one sentence.", "max_tokens": 16}],
    )
    (work / "config" / "slurm-test.yaml").write_text(yaml.safe_dump(cfg))
    return "config/slurm-test.yaml"


def slurm_available_or_skip() -> None:
    """In CI (CI=true) a missing SLURM is a failure: .ci/run installs it. Elsewhere the test skips, saying why."""
    why = []
    if missing := missing_binaries():
        why.append(f"missing {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        why.append("the test cluster's daemons must run as root")
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("SLURM test cannot run in CI: " + "; ".join(why))
        pytest.skip("; ".join(why))


def slurm_resources(**resources) -> SimpleNamespace:
    """A stand-in for a Snakemake job's resources as the plugin reads them (attribute and .get access)."""
    ns = SimpleNamespace(**resources)
    ns.get = lambda key, default=None: resources.get(key, default)
    return ns


def submit_command(threads: int = 2, **resources) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=slurm_resources(**resources), threads=threads)
    params = {"run_uuid": "u", "slurm_logfile": "l.log", "comment_str": "rule_x", "account": "",
              "partition": "", "workdir": "/shared/study"}
    # The plugin appends the GPU options to what get_submit_command builds, as its run_job does.
    return get_submit_command(job, params) + set_gres_string(job)


def test_gpu_resource_becomes_sbatch_gpus():
    assert re.search(r" --gpus=2\b", submit_command(gpu=2))
    assert " --gpus=h100:1" in submit_command(gpu=1, gpu_model="h100")
    cpu_only = submit_command(gpu=0)
    assert "--gpus" not in cpu_only and "--gres" not in cpu_only and "--cpus-per-task=2" in cpu_only


def test_bench_rules_declare_their_tools_gpus_as_the_gpu_resource():
    """The resource the plugin maps is the one each bench and accuracy job declares from the tool's gpus."""
    rules = (REPO / "workflow/rules/bench.smk").read_text() + (REPO / "workflow/rules/quality.smk").read_text()
    # One bench rule per registered tool, made in a loop, and the accuracy rule (test_plan checks each job's value).
    assert len(re.findall(r"resources:\n\s+gpu=(?:tool_gpus\(_tool\.name\)|accuracy_gpus),", rules)) == 2


def test_slurm_profile_uses_the_plugin_and_sets_no_local_gpu_cap():
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "gpu" not in profile.get("resources", {})  # SLURM queues GPU jobs itself
    pins = (REPO / "requirements.txt").read_text()
    assert re.search(r"^snakemake-executor-plugin-slurm==[\d.]+$", pins, re.M)


@pytest.mark.e2e
def test_default_study_runs_through_a_real_slurm_scheduler(tmp_path_factory):
    slurm_available_or_skip()
    work = tmp_path_factory.mktemp("slurm-study")
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / item)
    for shared in ("llama.cpp", "src"):  # the build cache shared with test_workflow.py and the Quickstart
        (CACHE / shared).mkdir(parents=True, exist_ok=True)
        (work / "res").mkdir(exist_ok=True)
        (work / "res" / shared).symlink_to(CACHE / shared)
    # --cores: the CPUs a job of a whole-machine rule (build, quantize, KLD, bench) asks SLURM for: the node's.
    args = [sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm", "--cores", str(os.cpu_count()),
            "--configfile", write_config(work),
            # The test cluster has no accounting: no account to charge, and sacct cannot report states.
            "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-keep-successful-logs",
            "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
            "--latency-wait", "5"]
    dry = subprocess.run([*args, "-n"], cwd=work, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr[-4000:]
    planned = job_counts(dry.stdout)
    with single_node_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        proc = subprocess.run(args, cwd=work, capture_output=True, text=True,
                              env={**cluster.env, "PYTHONUNBUFFERED": "1"})
        assert proc.returncode == 0, f"{proc.stderr[-6000:]}\n{failed_job_logs(work)}\n{cluster.logs()}"
        jobs = cluster.jobs()

    # Every job but the local target rule went through sbatch and finished there.
    by_rule = {}
    for job in jobs:
        assert job["JobState"] == "COMPLETED", job
        rule = re.match(r"rule_(\w+?)(?:_wildcards_|$)", job["Comment"]).group(1)
        by_rule.setdefault(rule, []).append(job)
    # The local target rule aside, the scheduler ran exactly the jobs Snakemake planned.
    assert {r: len(js) for r, js in by_rule.items()} == {r: n for r, n in planned.items() if r != "all"}
    assert planned["bench_vllm"] == 1 and planned["bench_llama_server"] == 1
    assert all(Path(j["WorkDir"]) == work for j in jobs)
    # The GPU request reached the scheduler: vLLM's job held the node's (stand-in) GPU, the CPU jobs none.
    [vllm] = by_rule["bench_vllm"]
    assert "gpu:1" in vllm.get("TresPerJob", "") or "gres/gpu=1" in vllm.get("AllocTRES", ""), vllm
    [server] = by_rule["bench_llama_server"]
    assert "gpu" not in server.get("TresPerJob", "") + server.get("AllocTRES", "")
    # The plugin's per-job logs name the SLURM job ids.
    logged = {p.stem for p in (work / ".snakemake/slurm_logs").rglob("*.log")}
    assert {j["JobId"] for j in jobs} <= logged

    # And the study's results are those of the local run: rows, statistics, tables.
    runs = pl.read_parquet(work / "results/summary/runs.parquet")
    server_rows = runs.filter(pl.col("tool") == "llama-server")
    assert server_rows.height == 1 and (server_rows["generated_tokens"] > 0).all()
    assert set(runs.filter(pl.col("tool") == "vllm")["status"]) == {"skipped"}
    assert (work / "results/summary/stats.csv").stat().st_size > 0
    assert "GPT-4o mini" in (work / "results/tables/cost_per_1m_tokens.md").read_text()
    assert QUANT in (work / "results/tables/quality_by_quant.md").read_text()
    assert (work / "results/figures/decode_tokens_per_s.png").read_bytes()[:4] == b"\x89PNG"


def test_slurm_gpus_outside_a_job_are_none():
    from llmbench.devices.slurm import slurm_gpu_indices, slurm_nvml_ids

    assert slurm_gpu_indices({}) is None
    assert slurm_nvml_ids(4, {"SLURM_JOB_ID": "7"}) is None  # a CPU job: no GPUs allocated


def test_slurm_gpus_map_to_nvml_ids_with_and_without_cgroup_fencing():
    from llmbench.devices.slurm import slurm_nvml_ids

    # Stand-in environments as slurmd sets them for `sbatch --gpus=2` on a 4-GPU node.
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "3,1", "CUDA_VISIBLE_DEVICES": "1,3"}
    assert slurm_nvml_ids(4, env) == [1, 3]  # NVML sees the whole node: SLURM's indices
    assert slurm_nvml_ids(2, env) == [0, 1]  # ConstrainDevices: NVML sees the job's two, from 0
    assert slurm_nvml_ids(4, {**env, "SLURM_STEP_GPUS": "2"}) == [2]  # inside an srun step, the step's
    with pytest.raises(ValueError, match="NVML sees only 3"):
        slurm_nvml_ids(3, {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "1,3"})
    with pytest.raises(ValueError, match="SLURM_JOB_GPUS='gpu0'"):
        slurm_nvml_ids(4, {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "gpu0"})
