"""The whole default study (config/config.yaml, untrimmed) through a real single-node SLURM on this machine.

tests/test_slurm.py runs a smaller version of it in CI; this runs all of it once and writes what the scheduler
did: every job's rule, state and GPU request, and the wall time. Run as root where no SLURM is configured:

    .venv/bin/python benchmarks/slurm_default_study.py WORKDIR -o benchmarks/results/slurm-default-study-DATE.md

WORKDIR is a fresh checkout (its own resources/ and results/); the cluster's files go under WORKDIR/.slurm-test.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from slurm_cluster import single_node_slurm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args()
    work = a.workdir.resolve()
    args = [sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm", "--cores", str(os.cpu_count()),
            "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-keep-successful-logs"]
    with single_node_slurm(work / ".slurm-test") as cluster:
        t0 = time.monotonic()
        proc = subprocess.run(args, cwd=work, env={**cluster.env, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                              text=True)
        wall_s = time.monotonic() - t0
        jobs = cluster.jobs()
    (work / "slurm-default-study.log").write_text(proc.stdout + proc.stderr)
    rules = collections.Counter()
    states = collections.Counter()
    gpu_jobs = []
    for job in jobs:
        rule = re.match(r"rule_(\w+?)(?:_wildcards_|$)", job.get("Comment", "")).group(1)
        rules[rule] += 1
        states[job["JobState"]] += 1
        if "gpu" in job.get("TresPerJob", "") + job.get("AllocTRES", ""):
            gpu_jobs.append(f"{rule} ({job.get('TresPerJob') or job.get('AllocTRES')})")
    lines = [
        f"# The default study through a real single-node SLURM ({dt.date.today().isoformat()})",
        "",
        f"`{' '.join(Path(x).name if i == 0 else x for i, x in enumerate(args))}` in a fresh checkout, against the "
        "cluster tests/slurm_cluster.py starts (Debian's slurm-wlm, munge; one node, a stand-in GPU GRES).",
        "",
        f"- exit status {proc.returncode}, wall time {wall_s / 60:.1f} min",
        f"- SLURM jobs: {len(jobs)}, states: {dict(states)}",
        f"- jobs that asked for a GPU: {', '.join(gpu_jobs) or 'none'}",
        "",
        "| rule | SLURM jobs |",
        "|---|---|",
        *[f"| {r} | {n} |" for r, n in sorted(rules.items())],
        "",
    ]
    a.output.write_text("\n".join(lines))
    print("\n".join(lines))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
