"""One job's settings, read once from what its rule passes (wildcards, input, params, threads, log).

Bench, answer-accuracy and KLD jobs take a ``Job`` instead of the raw ``snakemake`` object: its identity (tool,
model, quant, split mode, GPUs), the engine settings, the run plan (bench jobs) and the model file's record. The
rules pass every setting as a plain value in ``params``, so a config change reruns exactly the jobs it touches.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbench.core.precision import PrecisionSpec
from llmbench.engines.base import EngineSettings
from llmbench.engines.runs import Prompt, RunPlan


@dataclass(frozen=True)
class Job:
    tool: str | None  # None for a job of no bench tool (KLD runs llama-perplexity)
    model: str
    quant: str | None
    split: str
    gpus: int
    threads: int
    log: Path
    concurrency: int = 1  # a bench job's load level: clients sending requests at once
    depth: int = 0  # a bench job's context depth [tokens]
    model_file: Path | None = None  # the GGUF (a split GGUF's first shard); None for an Ollama library tag
    model_record: dict | None = None  # the record beside the model file: source, sha256, derivation
    build_record: dict | None = None  # build.json of the llama.cpp build the job runs
    context_file: Path | None = None  # the text a server's prompts follow at a depth above 0 (the quality corpus)
    settings: EngineSettings | None = None  # the engine's settings (jobs of a generating or llama.cpp tool)
    plan: RunPlan | None = None  # bench jobs: what to generate and how often
    tool_settings: dict[str, Any] = field(default_factory=dict)  # the tool's own keys under tools.<tool>
    params: dict[str, Any] = field(default_factory=dict)  # the rule's params as plain values (for provenance)

    @property
    def engine_log(self) -> Path:
        """The engine's own log, beside the job's."""
        return self.log.with_suffix(".engine.log")

    @property
    def model_is_synthetic(self) -> bool:
        """Random weights, labelled in every row."""
        return (self.model_record or {}).get("kind") == "synthetic"

    @classmethod
    def from_snakemake(cls, smk) -> Job:
        """The job from Snakemake's script object. Params read: ``tool``, ``engine`` (the engine settings, with a
        generating tool's ``options``), ``plan`` (a bench job's run plan), ``tool_settings`` (a runner's options);
        input read: ``model``, ``build``."""
        w, inp, params = smk.wildcards, smk.input, dict(smk.params.items())
        model_file = Path(inp.model) if "model" in inp.keys() else None
        record_file = model_file.with_suffix(".json") if model_file is not None else None
        build_file = Path(inp.build) if "build" in inp.keys() else None
        engine = params.get("engine") or {}
        tool = params.get("tool") or w.get("tool")
        split = w.get("split") or engine.get("split") or "none"
        job = cls(
            tool=tool, model=w.model, quant=w.get("quant"), split=split, gpus=engine.get("gpus", 0),
            threads=smk.threads, log=Path(smk.log[0]), concurrency=int(w.get("concurrency") or 1),
            depth=int(w.get("depth") or 0), model_file=model_file,
            model_record=json.loads(record_file.read_text()) if record_file and record_file.exists() else None,
            build_record=json.loads(build_file.read_text()) if build_file else None,
            context_file=Path(inp.context) if "context" in inp.keys() else None,
            tool_settings=dict(params.get("tool_settings") or {}), params=params,
        )
        if tool is None or not engine:
            return job
        settings = EngineSettings(
            tool=tool, model=model_file, n_gpu_layers=engine["n_gpu_layers"], split=split, gpus=job.gpus,
            threads=job.threads, seed=engine["seed"], ctx_size=engine["ctx_size"],
            start_timeout_s=engine["start_timeout_s"], request_timeout_s=engine["request_timeout_s"],
            build_dir=build_file.parent if build_file else None, tag=engine.get("model_name"),
            concurrency=job.concurrency,
            tensor_split=tuple(float(x) for x in engine["tensor_split"]) if engine.get("tensor_split") else None,
            # A generating tool's options come with its engine settings (accuracy jobs pass only those), a runner's
            # (llama-bench's n_prompt, n_gen) as its tool_settings.
            options=dict(engine.get("options") or job.tool_settings),
        )
        plan = None
        if p := params.get("plan"):
            plan = RunPlan(
                tool=tool, model=job.model, quant=job.quant, split=split,
                prompts=tuple(Prompt(x["id"], x["text"], x["max_tokens"]) for x in p["prompts"]),
                repetitions=p["repetitions"], warmup=p["warmup"], idle_s=p["idle_s"], temperature=p["temperature"],
                seed=settings.seed, n_gpu_layers=settings.n_gpu_layers, gpus=job.gpus, threads=job.threads,
                estimate_w=p["energy_estimate_w"], model_is_synthetic=job.model_is_synthetic,
                concurrency=job.concurrency, depth=job.depth,
                precision=PrecisionSpec.from_config(p.get("precision")),
            )
        return dataclasses.replace(job, settings=settings, plan=plan)
