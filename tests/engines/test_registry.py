"""Every tool described once (llmbench/engines/registry.py): the schema, the plan, the rules, the figures, the
framework table and provenance read the registry, so a new framework is its engine module and one record.

The framework added here is a stand-in (``StandInEcho``, named as one): an engine that starts no process and
answers every prompt with fixed counts and times, so that the workflow's own path from registry to figures runs
in seconds on any machine.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import REPO, STANDIN_ECHO_ENGINE, copy_workflow, run_snakemake
from llmbench.engines import registry
from llmbench.engines.base import Engine
from llmbench.engines.registry import TOOLS
from llmbench.study.configcheck import load_schema

STANDIN_RECORD = '''
register(Tool(
    "standin-echo",
    Facts(family="stand-in", installs="written by tests/engines/test_registry.py", gpu_offload="none",
          multi_gpu="none", gguf="reads none", python_api="yes: in-process", sources=("tests/engines/test_registry.py",)),
    engine="llmbench.engines.standin_echo:StandInEcho",
    packages=("pytest",),
))
'''


def test_the_schema_names_exactly_the_registered_tools():
    schema = load_schema(REPO / "workflow/schemas/config.schema.yaml")
    assert schema["properties"]["tools"]["propertyNames"]["enum"] == list(TOOLS)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_each_record_names_its_engine_or_runner_and_its_code(name):
    tool = TOOLS[name]
    assert tool.rule == "bench_" + name.replace("-", "_")
    assert tool.module_files() and all(path.exists() for path in tool.module_files())
    if tool.generates:
        engine = registry._load(tool.engine)
        assert issubclass(engine, Engine) and engine.tool == name
        assert engine.from_settings.__func__ is not Engine.from_settings.__func__
    else:
        assert callable(registry._load(tool.runner))


def test_a_tool_registered_twice_or_with_both_or_neither_entry_is_refused():
    tool = TOOLS["vllm"]
    with pytest.raises(ValueError, match="'vllm' is registered already"):
        registry.register(tool)
    with pytest.raises(ValueError, match="exactly one of engine"):
        registry.register(registry.Tool("x", tool.facts, engine=tool.engine, runner="llmbench.engines.llama_bench:run_job"))
    with pytest.raises(ValueError, match="unknown tool 'mlx'; known tools: llama-server"):
        registry.tool("mlx")


def test_a_vllm_jobs_provenance_records_the_gguf_plugin_version(monkeypatch):
    """vLLM 0.24 and later load GGUF through vllm-gguf-plugin (vLLM PR #39612): its version is part of how a vLLM
    job measured. The installed versions here are stand-ins (neither package is installed on this machine)."""
    from llmbench.study import provenance

    standin = {"vllm": "0.24.0", "vllm-gguf-plugin": "0.1.2"}
    monkeypatch.setattr(provenance.metadata, "version", lambda name: standin.get(name) or "stand-in")
    assert "vllm-gguf-plugin" in provenance.packages()
    assert provenance._package_version("vllm-gguf-plugin") == "0.1.2"


def standin_study(tmp_path: Path) -> Path:
    """A copy of the workflow where the stand-in framework is added in its one place: its module and its record."""
    work = copy_workflow(tmp_path)
    engines = work / "workflow/scripts/llmbench/engines"
    (engines / "standin_echo.py").write_text(textwrap.dedent(STANDIN_ECHO_ENGINE))
    with open(engines / "registry.py", "a") as fh:
        fh.write(STANDIN_RECORD)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(
        study="standin", resources_dir="res",
        models={"tiny-synthetic": {"description": "random weights (synthetic)", "source": {"kind": "synthetic",
                                                                                 "shape": "llama-tiny", "seed": 0},
                         "quants": ["Q4_0", "Q8_0"], "n_gpu_layers": 0}},
        tools={"standin-echo": {"split_modes": ["none"]}},
        bench={**config["bench"], "repetitions": 2, "precision": None, "warmup": 0, "idle_s": 0,
               "prompts": [{"id": "short", "text": "Say hi.", "max_tokens": 8}]},
        quality={"kld": False, "accuracy": False},
        decision=None,  # its floor judges KLD and accuracy, which this study turns off
    )
    (work / "config/config.yaml").write_text(yaml.safe_dump(config))
    return work


def test_a_framework_added_in_one_place_is_planned_run_drawn_tabled_and_recorded(tmp_path):
    work = standin_study(tmp_path)
    plan = run_snakemake(work, "-n", cores=2)
    assert "rule bench_standin_echo:" in plan and re.search(r"^bench_standin_echo\s+2$", plan, re.M)  # two quants
    figure, table = "results/figures/decode_tokens_per_s.png", "results/tables/frameworks.md"
    run_snakemake(work, figure, table, "results/tables/frameworks.csv", cores=2)
    runs = pl.read_parquet(work / "results/summary/runs.parquet")
    assert runs["tool"].unique().to_list() == ["standin-echo"]
    assert runs.height == 2 * 2 and set(runs["status"]) == {"ok"}  # quants × repetitions
    assert runs["decode_tokens_per_s"].to_list() == [500.0] * 4
    assert (work / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frameworks = pl.read_csv(work / "results/tables/frameworks.csv")
    echo = frameworks.filter(pl.col("tool") == "standin-echo").row(0, named=True)
    assert echo["family"] == "stand-in" and echo["generations"] == 4 and echo["median_decode_tokens_per_s"] == 500
    assert "standin-echo" in (work / table).read_text()
    record = json.loads((work / "results/runs/standin-echo/tiny-synthetic/Q4_0/none/c1-d0.provenance.json").read_text())
    assert record["config"]["tool"] == "standin-echo" and "pytest" in record["packages"]
