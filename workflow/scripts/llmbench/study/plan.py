"""The study's grid, derived from a validated config: which model files exist and which bench jobs run."""

from __future__ import annotations

import ctypes.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmbench.core.quants import REFERENCE_QUANT, order_by_bits
from llmbench.engines.registry import GGUF_SOURCES, TOOLS, generating_tools


@dataclass(frozen=True)
class BenchJob:
    tool: str
    model: str
    quant: str
    split: str
    gpus: int
    concurrency: int = 1  # clients sending requests at once
    depth: int = 0  # tokens already in the context


def source_kind(model: dict) -> str:
    return model["source"]["kind"]


def derives_ladder(model: dict) -> bool:
    """A model with one source GGUF gets every quant from llama-quantize (an F16 first)."""
    src = model["source"]
    return src["kind"] == "pypi" or (src["kind"] == "hf" and "filename" in src)


def models_where(config: dict, predicate) -> list[str]:
    return [name for name, m in config["models"].items() if predicate(m)]


def derived_models(config: dict) -> list[str]:
    return models_where(config, derives_ladder)


def pypi_models(config: dict) -> list[str]:
    return models_where(config, lambda m: m["source"]["kind"] == "pypi")


def hf_single_models(config: dict) -> list[str]:
    return models_where(config, lambda m: m["source"]["kind"] == "hf" and "filename" in m["source"])


def hf_file_models(config: dict) -> list[str]:
    return models_where(config, lambda m: m["source"]["kind"] == "hf" and "files" in m["source"])


# llama.cpp's split naming (PR #6187, llama_split_path): PREFIX-0000K-of-0000N.gguf, K counted from 1. llama.cpp is
# given the first shard and derives the others' paths from the name it was given, so the names are kept as they are.
SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>[0-9]{5})-of-(?P<count>[0-9]{5})\.gguf$")


def shard_of(filename: str) -> tuple[int, int] | None:
    """(shard number from 1, shard count) of a file named as a shard of a split GGUF, else None."""
    m = SHARD_NAME.match(Path(filename).name)
    return (int(m["no"]), int(m["count"])) if m else None


def shard_name(filename: str, no: int) -> str:
    """The name of shard ``no`` of the split GGUF one of whose shards is ``filename`` (the folder kept)."""
    m = SHARD_NAME.match(filename)
    if m is None:
        raise ValueError(f"{filename!r} is not named as a shard (PREFIX-0000K-of-0000N.gguf)")
    return f"{m['prefix']}-{no:05d}-of-{m['count']}.gguf"


def shard_count(config: dict, model: str, quant: str) -> int:
    """Files a quant is published in: the shard count of a hub file named as a split GGUF's first shard, else 1."""
    src = config["models"][model]["source"]
    entry = src.get("files", {}).get(quant) if src["kind"] == "hf" else None
    split = shard_of(entry["filename"]) if entry else None
    return split[1] if split else 1


def split_quants(config: dict, model: str) -> list[str]:
    """The model's quants published as a split GGUF (fetched one job per shard)."""
    return [q for q in config["models"][model]["quants"] if shard_count(config, model, q) > 1]


def hf_split_models(config: dict) -> list[str]:
    return [m for m in hf_file_models(config) if split_quants(config, m)]


def shard_files(config: dict, model: str, quant: str) -> list[str]:
    """Names the quant's files are kept under beside each other: ``{quant}.gguf``, or for a split GGUF
    ``{quant}-0000K-of-0000N.gguf`` each, the first shard first (the one every tool is given)."""
    n = shard_count(config, model, quant)
    return [f"{quant}.gguf"] if n == 1 else [f"{quant}-{k:05d}-of-{n:05d}.gguf" for k in range(1, n + 1)]


def model_file_name(config: dict, model: str, quant: str) -> str:
    """The file the tools load: the whole GGUF, or a split GGUF's first shard (llama.cpp finds the rest by name;
    a copy or link under another name would be refused as "invalid split file name")."""
    return shard_files(config, model, quant)[0]


def model_path(config: dict, res: str, model: str, quant: str) -> str:
    return f"{res}/models/{model}/{model_file_name(config, model, quant)}"


def model_record_path(config: dict, res: str, model: str, quant: str) -> str:
    """The record beside the model file (a split GGUF's lists every shard)."""
    return str(Path(model_path(config, res, model, quant)).with_suffix(".json"))


def hf_shard_source(config: dict, model: str, quant: str, shard: str) -> dict:
    """What one shard's fetch job needs, as plain values; ``shard`` is the local name's 0000K-of-0000N."""
    src = config["models"][model]["source"]
    entry = src["files"][quant]
    no, count = (int(x) for x in shard.split("-of-"))
    if count != shard_count(config, model, quant) or not 1 <= no <= count:
        raise ValueError(f"{model} {quant} has no shard {shard}")
    pinned = entry.get("shard_sha256") or [None] * count
    return {
        "repo": src["repo"],
        "revision": src["revision"],
        "filename": shard_name(entry["filename"], no),
        "sha256": pinned[no - 1] or (entry.get("sha256") if no == 1 else None),
        "shard": {"no": no, "count": count},
    }


def synthetic_models(config: dict) -> list[str]:
    return models_where(config, lambda m: m["source"]["kind"] == "synthetic")


def synthetic_quants(config: dict) -> list[str]:
    """Quants written synthetically (the config check keeps them to those llmbench.modelfiles.synthetic can write)."""
    return sorted({q for m in synthetic_models(config) for q in config["models"][m]["quants"]})


def ollama_models(config: dict) -> list[str]:
    return models_where(config, lambda m: m["source"]["kind"] == "ollama")


def gguf_models(config: dict) -> list[str]:
    return models_where(config, lambda m: m["source"]["kind"] in GGUF_SOURCES)


def unpinned_revisions(config: dict) -> list[str]:
    sources = {f"models.{name}.source": m["source"] for name, m in config["models"].items()}
    sources["quality.corpus"] = config.get("quality", {}).get("corpus", {})
    return [
        f"{key}.revision = {src['revision']!r}"
        for key, src in sources.items()
        if src.get("kind") == "hf" and not re.fullmatch(r"[0-9a-f]{40}", src["revision"])
    ]


def quants_of(config: dict, model: str) -> list[str]:
    return order_by_bits(config["models"][model]["quants"])


def tool_quants(config: dict, tool: str, model: str) -> list[str]:
    """The model's quants this tool runs: all of them, or those the tool's ``quants`` list keeps."""
    keep = config["tools"][tool].get("quants")
    return [q for q in quants_of(config, model) if keep is None or q in keep]


def tool_models(config: dict, tool: str) -> list[str]:
    """The study's models this tool can run (by the source kinds its registry record takes)."""
    return models_where(config, lambda m: source_kind(m) in TOOLS[tool].sources)


def tool_levels(config: dict, tool: str) -> tuple[list[int], list[int]]:
    """The tool's load levels and context depths: its own lists, or the study's (bench.concurrency, bench.depths)."""
    own, bench = config["tools"][tool], config["bench"]
    return own.get("concurrency") or bench["concurrency"], own.get("depths") or bench["depths"]


def bench_jobs(config: dict) -> list[BenchJob]:
    jobs = []
    for tool, settings in config["tools"].items():
        levels, depths = tool_levels(config, tool)
        sweep = settings.get("sweep_quants")
        for model in tool_models(config, tool):
            for quant in tool_quants(config, tool, model):
                for split in settings["split_modes"]:
                    for concurrency in levels:
                        for depth in depths:
                            swept = concurrency != 1 or depth != 0
                            if swept and sweep is not None and quant not in sweep:
                                continue
                            jobs.append(BenchJob(tool, model, quant, split, settings["gpus"], concurrency, depth))
    return jobs


def reference_quant(config: dict, model: str) -> str:
    """What a model's quants are compared with: the F16 a ladder is derived from, else its finest quant."""
    if derives_ladder(config["models"][model]):
        return REFERENCE_QUANT
    return quants_of(config, model)[-1]


def kld_models(config: dict) -> list[str]:
    """Models whose quants get KL divergence against their reference; never a synthetic one (random weights)."""
    if not config["quality"]["kld"]:
        return []
    return [m for m in gguf_models(config) if m not in synthetic_models(config)]


def accuracy_jobs(config: dict) -> list[BenchJob]:
    """One answer-accuracy job per generating tool × model × quant, in the tool's first split mode (its questions
    are asked one at a time)."""
    if not config["quality"]["accuracy"]:
        return []
    first = {}
    synthetic = set(synthetic_models(config))  # random weights: their answers are noise, never scored
    for job in bench_jobs(config):
        if job.tool in generating_tools() and job.model not in synthetic:
            first.setdefault((job.tool, job.model, job.quant), job)
    return list(first.values())


def alternation(values) -> str:
    """A wildcard constraint matching exactly these values (never an empty pattern)."""
    values = sorted(set(values))
    return "|".join(re.escape(v) for v in values) if values else "(?!)"


def derived_quants(config: dict) -> list[str]:
    """Quants made from the F16 (every derived ladder's quants except the F16 itself)."""
    return sorted({q for m in derived_models(config) for q in config["models"][m]["quants"]} - {REFERENCE_QUANT})


def nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or ctypes.util.find_library("cuda") is not None


def cuda_enabled(setting: str) -> bool:
    """GGML_CUDA for the build.

    'auto' is on when nvcc is on PATH *and* an NVIDIA driver is loaded: nvcc alone (e.g. from pip's CUDA wheels)
    would give an hour-long build whose binaries cannot start without libcuda.
    """
    if setting == "auto":
        return shutil.which("nvcc") is not None and nvidia_driver_present()
    return setting == "on"
