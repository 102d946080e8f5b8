"""An equal config reruns nothing: rule params do not depend on the order of the config's keys.

Snakemake records every job's params as the repr of each value and its `params` rerun trigger compares those
texts. The workflow test below records them the way Snakemake does after a real run (`--touch` ends every job
through the same bookkeeping as a run that made its files) and lets Snakemake's own dry run compare them against the
same config with every mapping's keys reversed.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml

from conftest import REPO, load_config
from llmbench.core.params import canonical, canonical_param


def reversed_keys(value):
    """The value with the keys of every mapping, at every depth and inside lists, in reversed order."""
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_keys(item) for item in value]
    return value


def test_canonical_sorts_keys_at_every_depth_and_keeps_list_order():
    a = {"b": 1, "a": {"d": [{"y": 2, "x": 1}, 3], "c": (2, {"f": 0, "e": 1})}}
    b = reversed_keys(a) | {"a": {"c": (2, {"e": 1, "f": 0}), "d": [{"x": 1, "y": 2}, 3]}}
    assert repr(a) != repr(b) and a == b
    assert repr(canonical(a)) == repr(canonical(b)) == (
        "{'a': {'c': (2, {'e': 1, 'f': 0}), 'd': [{'x': 1, 'y': 2}, 3]}, 'b': 1}"
    )
    assert canonical([3, 1, 2]) == [3, 1, 2] and canonical((3, 1)) == (3, 1)
    assert canonical({2: "int", "1": "str"}) == {"1": "str", 2: "int"}  # keys of mixed types still sort
    for plain in (None, 1, 1.5, "s", True):
        assert canonical(plain) is plain


def test_a_function_param_keeps_its_signature_and_returns_canonical_values():
    def plan(wildcards, input):
        """A param computed per job."""
        return {"z": wildcards, "a": input}

    wrapped = canonical_param(plan)
    assert list(wrapped("w", input=["i"])) == ["a", "z"]
    # Snakemake reads the signature to know what to pass (and whether the param derives from input or output).
    import inspect

    assert list(inspect.signature(wrapped).parameters) == ["wildcards", "input"] and wrapped.__doc__ == plan.__doc__
    assert canonical_param({"b": 1, "a": 2}) == {"a": 2, "b": 1}


def snakemake(work: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=work,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_the_same_config_with_keys_in_another_order_reruns_nothing(tmp_path):
    work = tmp_path
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / item)
    cfg = load_config()
    (work / "config/as_written.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    flipped = reversed_keys(cfg)
    assert flipped == cfg and repr(flipped) != repr(cfg)
    (work / "config/reversed.yaml").write_text(yaml.safe_dump(flipped, sort_keys=False))
    targets = ("all", "archive")  # the archive's rules too: study_config's param is the whole config

    # Every output of the study made (empty: no job runs), then every job ended by Snakemake's --touch, which
    # records its params in .snakemake/metadata as a run does. runs.parquet is read when the workflow is parsed
    # (it dates the archive), so it holds a real row, written first.
    runs = work / "results/summary/runs.parquet"
    runs.parent.mkdir(parents=True)
    pl.select(started_at=pl.datetime(2025, 1, 2, time_zone="UTC")).write_parquet(runs)
    summary = snakemake(work, *targets, "--summary", "--configfile", "config/as_written.yaml")
    outputs = [line.split("\t")[0] for line in summary.splitlines()[1:] if "\t" in line]
    assert len(outputs) > 100 and str(runs.relative_to(work)) in outputs
    for name in outputs:
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    # --no-hooks: the workflow's onsuccess (the report, the failed-measurements summary) has nothing to read here.
    snakemake(work, *targets, "--touch", "--forceall", "--no-hooks", "--configfile", "config/as_written.yaml")
    assert len(list((work / ".snakemake/metadata").iterdir())) == len(outputs)
    assert "Nothing to be done" in snakemake(work, *targets, "-n", "--configfile", "config/as_written.yaml")

    assert "Nothing to be done" in snakemake(work, *targets, "-n", "--configfile", "config/reversed.yaml")

    # A real change is still seen, through the params trigger alone: the records hold the params.
    flipped["bench"]["seed"] += 1
    (work / "config/changed.yaml").write_text(yaml.safe_dump(flipped, sort_keys=False))
    out = snakemake(work, *targets, "-n", "--rerun-triggers", "params", "--configfile", "config/changed.yaml")
    assert "Params have changed since last execution" in out and "bench_llama_server" in out
