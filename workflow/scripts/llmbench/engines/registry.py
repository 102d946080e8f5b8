"""Every bench tool described once: what planning, rules, engines, figures, tables and provenance need to know of it.

A new framework is one engine module in this folder (an ``Engine`` subclass with ``from_settings``) and one
``Tool`` record registered here; the config schema, the plan, the ``bench_<tool>`` rule, the figures, the framework
table and each job's provenance read the record. Engine modules are named by string and imported only when a job
runs them, so that planning and the other tools' jobs need none of their packages.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: the engines' base module needs the registry's lists (llmbench.engines.diagnosis)
    from llmbench.engines.base import Engine, EngineSettings

# A synthetic model is a GGUF written here (random weights, a real architecture's shapes): every GGUF tool runs it.
GGUF_SOURCES = ("pypi", "hf", "synthetic")
PACKAGE = Path(__file__).resolve().parents[1]  # workflow/scripts/llmbench


@dataclass(frozen=True)
class Facts:
    """What the framework table states of a tool, each fact checked against ``sources`` (November 2026).

    ``installs`` says how THIS workflow gets the tool; the others are the tool's own.
    """

    family: str
    installs: str
    gpu_offload: str
    multi_gpu: str
    gguf: str
    python_api: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Tool:
    """One bench tool.

    ``engine`` ("module:Class" under llmbench) generates through the Engine interface; a tool without one runs
    through ``runner`` ("module:function", called as ``runner(job, engine_log) -> rows``), as llama-bench, which
    times synthetic tests and generates no text. ``llama_cpp`` names the binaries of this workflow's llama.cpp
    build that its jobs run (``"libllama"``: the library, loaded in-process); ``options`` its own keys under
    ``tools.<name>``; ``model_name`` the name its engine knows a model by (Ollama's tag).
    """

    name: str
    facts: Facts
    engine: str | None = None
    runner: str | None = None
    sources: tuple[str, ...] = GGUF_SOURCES
    llama_cpp: tuple[str, ...] = ()
    # Whether its prefill time is the client's time to the first token (the API gives no phase times): then
    # prefill holds queueing and the first decode step too, and its rate is a lower bound.
    prefill_is_ttft: bool = False
    # Whether a job spreads every layer over its GPUs (tensor parallel) whatever the split wildcard says.
    tensor_parallel: bool = False
    # Whether it serves concurrent requests (a server with parallel slots); a tool that does not runs load level 1
    # only, its jobs at higher levels end 'skipped' with the reason.
    serves: bool = False
    # Whether it runs a load level N as one batch of N sequences in its own process (llama-batched-bench): the
    # engine-side reference for the servers at N; its rows are batches, their decode tokens/s the batch's.
    batches: bool = False
    # Whether it runs at a context depth above 0 (llama-bench's -d; a server's prompt after that many tokens of the
    # quality corpus, counted by its own tokenizer); the others' jobs there end 'skipped'.
    fills_depth: bool = False
    packages: tuple[str, ...] = ()  # pip distributions a job's provenance records
    # Its own keys under tools.<name>: option name -> a JSON-schema fragment (type, range or enum, default,
    # description). configcheck.load_schema adds them to the keys every tool takes ($defs/tool) as this tool's
    # properties, so a key given to a tool that declares no such option is refused at parse time. A set value reaches
    # the job as EngineSettings.options (null, the engines' default here, passes nothing: the engine's own default
    # holds); "x-via" names the engine setting an option reaches the job through instead.
    options: Mapping[str, dict] = field(default_factory=dict, compare=False)
    model_name: Callable[[str, str, dict], str] | None = field(default=None, compare=False)

    @property
    def generates(self) -> bool:
        return self.engine is not None

    @property
    def rule(self) -> str:
        """Its bench rule's name (rule names are Python identifiers)."""
        return "bench_" + self.name.replace("-", "_")

    @property
    def uses_build(self) -> bool:
        return bool(self.llama_cpp)

    def module_files(self) -> list[Path]:
        """The package files of its engine or runner (a change reruns its jobs)."""
        return [PACKAGE / (ref.split(":")[0].removeprefix("llmbench.").replace(".", "/") + ".py")
                for ref in (self.engine, self.runner) if ref]

    def make_engine(self, settings: EngineSettings, log_path: Path) -> Engine:
        if self.engine is None:
            raise ValueError(f"{self.name} generates no text (it runs {self.runner}); tools that do: "
                             f"{', '.join(generating_tools())}")
        return _load(self.engine).from_settings(settings, log_path)

    def run(self, job, engine_log: Path):
        return _load(self.runner)(job, engine_log)

    def cannot_run(self, concurrency: int, depth: int) -> str | None:
        """Why a job at this load level and context depth cannot run with this tool, or None."""
        if concurrency > 1 and not (self.serves or self.batches):
            return (f"{self.name} serves one request at a time (it is no server with parallel slots): load level "
                    f"{concurrency} is not run; the tools that run concurrent requests are "
                    f"{', '.join(t for t, r in TOOLS.items() if r.serves or r.batches)}")
        if depth > 0 and not self.fills_depth:
            return (f"{self.name} is not run at context depth {depth} here: only "
                    f"{', '.join(t for t, r in TOOLS.items() if r.fills_depth)} fill a context to a depth")
        return None


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


TOOLS: dict[str, Tool] = {}


def register(tool: Tool) -> Tool:
    """Add a tool (a name registered twice is refused: two records would disagree)."""
    if tool.name in TOOLS:
        raise ValueError(f"tool {tool.name!r} is registered already")
    empty = [k for k, v in dataclasses.asdict(tool.facts).items() if not v]
    if empty:
        raise ValueError(f"tool {tool.name!r} lacks the facts {', '.join(empty)}: the framework table states each, "
                         "with its sources")
    if (tool.engine is None) == (tool.runner is None):
        raise ValueError(f"tool {tool.name!r} needs exactly one of engine (it generates) or runner")
    for name, spec in tool.options.items():
        if not {"default", "description"} <= spec.keys():
            raise ValueError(f"tool {tool.name!r} option {name!r} needs a default and a description: the schema "
                             "shows both to whoever writes a config")
    TOOLS[tool.name] = tool
    return tool


def tool(name: str) -> Tool:
    try:
        return TOOLS[name]
    except KeyError:
        raise ValueError(f"unknown tool {name!r}; known tools: {', '.join(TOOLS)}") from None


def generating_tools() -> tuple[str, ...]:
    """Tools that generate text through the Engine interface (llama-bench only times synthetic tests)."""
    return tuple(name for name, t in TOOLS.items() if t.generates)


def batching_tools() -> tuple[str, ...]:
    """Tools whose rows at a load level above 1 are batches run in-process, not requests to a server."""
    return tuple(name for name, t in TOOLS.items() if t.batches)


def job_options(tool: str, section: Mapping | None) -> dict:
    """The options of ``tool`` its config section (``tools.<tool>``) sets, as its jobs receive them: an option left
    null (the engine's own default) or one that reaches the job through another setting ("x-via") is left out, so
    that an option nobody sets changes no job's params."""
    section = section or {}
    return {name: section[name] for name, spec in TOOLS[tool].options.items()
            if "x-via" not in spec and section.get(name) is not None}


# llama.cpp binaries the build makes that no bench tool runs: llama-quantize derives a model's quant ladder from its
# source file (rule quantize) and llama-perplexity measures each quant's KL divergence (the quality rules). They time
# nothing, so they have no Tool record (no bench rule, no rows); they are named here so that the build, its smoke
# test and the diagnosis take every llama.cpp program from this one module.
QUALITY_BINARIES = ("llama-quantize", "llama-perplexity")
LIBLLAMA = "libllama"  # a record's llama_cpp entry for the library, loaded in-process (llama-cpp-python)


def llama_cpp_binaries() -> tuple[str, ...]:
    """Every binary the llama.cpp build makes: the bench tools' (their records' ``llama_cpp``), then
    QUALITY_BINARIES."""
    bench = (b for t in TOOLS.values() for b in t.llama_cpp if b != LIBLLAMA)
    return tuple(dict.fromkeys((*bench, *QUALITY_BINARIES)))


def llama_cpp_programs() -> tuple[str, ...]:
    """Every program that runs this workflow's llama.cpp build, by the name its failures are diagnosed under: the
    tools whose records name a binary or libllama, then QUALITY_BINARIES."""
    return tuple(dict.fromkeys((*(name for name, t in TOOLS.items() if t.uses_build), *QUALITY_BINARIES)))


def ollama_model_name(model: str, quant: str, source: dict) -> str:
    """The library tag to pull, or the name a study's GGUF is imported under (Ollama's names are lower case)."""
    return source["tag"] if source["kind"] == "ollama" else f"llmbench-{model.lower()}:{quant}"


def llama_cpp_bench_options(tool: str, n_prompt: str, n_gen: str) -> dict[str, dict]:
    """n_prompt and n_gen of llama-bench and llama-batched-bench, described as ``tool`` runs them."""
    return {
        "n_prompt": {"type": "integer", "minimum": 0, "default": 512, "description": f"{tool}: {n_prompt}"},
        "n_gen": {"type": "integer", "minimum": 0, "default": 128, "description": f"{tool}: {n_gen}"},
    }


def extra_args_option(tool: str, example: str) -> dict:
    return {
        "type": ["array", "null"], "items": {"type": "string"}, "default": None,
        "description": (f"More {tool} arguments, appended to the command line each job builds (e.g. {example}); "
                        "null adds none. They are part of the job's params (a change reruns its jobs) and provenance."),
    }


LLAMA_SERVER_FACTS = Facts(
    family='llama.cpp',
    installs=(
        'built from source by rule build_llama_cpp: the llama.cpp vendored in the pinned llama-cpp-python sdist '
        '(sha256-checked), CMake Release, GGML_CUDA=on where nvcc and an NVIDIA driver are found'
    ),
    gpu_offload=(
        'automatic by default in this build (-ngl auto with --fit on, fitting layers to free GPU memory); this study'
        ' sets -ngl per model from the config (manual)'
    ),
    multi_gpu=(
        '--split-mode layer (pipelined, default), row (weights split by rows), none; --tensor-split shares'
    ),
    gguf='native (its own format)',
    python_api='none in the binary; an OpenAI-compatible HTTP server (llama-bench is a command-line benchmark)',
    sources=(
        'llama-server --help of the pinned build (llama.cpp 0c1e570): -ngl default auto, --fit default on, --split-mode',
        'https://github.com/ggml-org/llama.cpp/blob/master/docs/multi-gpu.md',
    ),
)


register(Tool(
    "llama-server",
    LLAMA_SERVER_FACTS,
    engine="llmbench.engines.llama_server:LlamaServer",
    llama_cpp=("llama-server",),
    serves=True,
    fills_depth=True,
    options={
        # YAML 1.1 reads a bare on/off as true/false: both spellings are taken.
        "flash_attn": {
            "enum": [True, False, "on", "off", "auto", None], "default": None,
            "x-allowed": "on (or true), off (or false), auto, or null",
            "description": ("llama-server's --flash-attn: on (true), off (false) or auto (llama.cpp turns it on where "
                            "the device supports it); null passes none, so the build's default (auto) holds."),
        },
        "extra_args": extra_args_option("llama-server", "[--cache-type-k, q8_0, --cache-type-v, q8_0]"),
    },
))
register(Tool(
    "llama-bench",
    dataclasses.replace(
        LLAMA_SERVER_FACTS,
        gpu_offload=(
            'manual: -ngl (default -1, all layers, in this build); this study sets it per model from the config'
        ),
        sources=(
            'llama-bench --help of the pinned build (llama.cpp 0c1e570): -ngl default -1, -sm default layer',
            'https://github.com/ggml-org/llama.cpp/blob/master/tools/llama-bench/README.md',
        ),
    ),
    runner="llmbench.engines.llama_bench:run_job",
    llama_cpp=("llama-bench",),
    fills_depth=True,
    options=llama_cpp_bench_options(
        "llama-bench", "prompt tokens of its synthetic prefill test (-p).", "tokens of its synthetic decode test (-n).",
    ),
))
register(Tool(
    "llama-batched-bench",
    dataclasses.replace(
        LLAMA_SERVER_FACTS,
        gpu_offload=(
            'manual: -ngl (llama.cpp common arguments; it loads the model without --fit); this study sets it per '
            'model from the config, "auto" as the layers llama-server\'s fitting chooses'
        ),
        python_api='none: a command-line benchmark of N sequences decoded in one batch (-npl), in-process',
        sources=(
            'tools/batched-bench/batched-bench.cpp and README.md of the pinned build (llama.cpp 0c1e570): -npp, '
            '-ntg, -npl, --output-format jsonl; a test whose context exceeds -c is skipped',
            'https://github.com/ggml-org/llama.cpp/tree/master/tools/batched-bench',
        ),
    ),
    runner="llmbench.engines.batched_bench:run_job",
    llama_cpp=("llama-batched-bench",),
    batches=True,
    fills_depth=True,
    options=llama_cpp_bench_options(
        "llama-batched-bench", "prompt tokens of each sequence after the depth (-npp depth + n_prompt; at least 1).",
        "tokens each sequence generates (-ntg).",
    ),
))
register(Tool(
    "llama-cpp-python",
    Facts(
        family='llama.cpp',
        installs=(
            'pip (requirements.txt), pinned 0.3.36 with LLAMA_BUILD=OFF: no llama.cpp of its own, it loads the '
            'libllama.so of rule build_llama_cpp through LLAMA_CPP_LIB_PATH'
        ),
        gpu_offload='manual: Llama(n_gpu_layers=...), default 0 (CPU only), -1 for all layers',
        multi_gpu='split_mode (layer default, row, none) and tensor_split, as llama.cpp',
        gguf='native (llama.cpp underneath)',
        python_api='yes: llama_cpp.Llama, in-process',
        sources=(
            'llama_cpp/llama.py of llama-cpp-python 0.3.36 (Llama.__init__ defaults n_gpu_layers=0, split_mode=LAYER)',
            'https://llama-cpp-python.readthedocs.io/en/latest/api-reference/',
        ),
    ),
    engine="llmbench.engines.llama_cpp_python:LlamaCppPython",
    llama_cpp=(LIBLLAMA,),
    packages=("llama-cpp-python",),
    options={
        "flash_attn": {
            "type": ["boolean", "null"], "default": None,
            "description": ("Llama(flash_attn=...): true turns flash attention on, false off; null passes none, so "
                            "the binding's default holds (off in llama-cpp-python 0.3.36, where llama-server's "
                            "default is auto)."),
        },
    },
))
register(Tool(
    "transformers",
    Facts(
        family='Hugging Face',
        installs=(
            'pip (requirements.txt), transformers 5.24.0 with torch 2.13.0 (CPU build here; the CUDA build on a GPU '
            'server)'
        ),
        gpu_offload=(
            'manual: the device is chosen (this study: cpu, or cuda for a GPU job); device_map="auto" (accelerate) can '
            'place layers on GPUs and the CPU automatically'
        ),
        multi_gpu=(
            'device_map="auto" spreads layers over GPUs (one after the other); tp_plan="auto" for tensor parallelism'
        ),
        gguf="loads by de-quantizing to float32 (gguf_file=): the quantization's memory and speed gain is lost",
        python_api='yes: AutoModelForCausalLM.generate, in-process',
        sources=(
            'https://huggingface.co/docs/transformers/gguf',
            'https://huggingface.co/docs/accelerate/usage_guides/big_modeling',
        ),
    ),
    engine="llmbench.engines.transformers:Transformers",
    prefill_is_ttft=True,
    packages=("torch", "transformers", "accelerate"),
    options={
        "dtype": {
            "enum": ["float32", "bfloat16", "float16", None], "default": None,
            "description": ("torch dtype the de-quantized weights are loaded and run in (from_pretrained(dtype=...)); "
                            "null: float32 on the CPU, bfloat16 on a GPU."),
        },
    },
))
register(Tool(
    "ollama",
    Facts(
        family='Ollama (llama.cpp based)',
        installs=(
            'not from PyPI or Debian: the ollama binary from ollama.com (the job starts `ollama serve`, or uses '
            'OLLAMA_HOST); the Python client `ollama` comes from requirements.txt'
        ),
        gpu_offload=(
            'automatic: Ollama estimates the layers that fit in free GPU memory; num_gpu (layers) overrides it'
        ),
        multi_gpu='automatic: a model that fits one GPU goes on one GPU, otherwise it is spread across all of them',
        gguf='imported (a Modelfile FROM the .gguf; the workflow uploads the blob and creates the model)',
        python_api='HTTP API with an official Python client (ollama.generate/chat)',
        sources=(
            'https://docs.ollama.com/faq#how-does-ollama-load-models-on-multiple-gpus',
            'https://docs.ollama.com/import',
            'https://github.com/ollama/ollama/blob/main/docs/modelfile.md (num_gpu)',
        ),
    ),
    engine="llmbench.engines.ollama:Ollama",
    sources=(*GGUF_SOURCES, "ollama"),
    serves=True,
    packages=("ollama",),
    model_name=ollama_model_name,
    options={
        "num_gpu": {
            "type": ["integer", "null"], "minimum": 0, "default": None, "x-via": "n_gpu_layers",
            "description": ("layers Ollama offloads (its num_gpu option) for a model given as an Ollama library tag; "
                            "null lets Ollama decide. It reaches the job as its n_gpu_layers (a study's GGUF takes "
                            "the model's n_gpu_layers)."),
        },
    },
))
register(Tool(
    "vllm",
    Facts(
        family='vLLM',
        installs=(
            'pip install vllm on the GPU server (not in requirements.txt: several GB, NVIDIA GPU only); vLLM 0.24 and '
            'later also need pip install vllm-gguf-plugin for GGUF (a job on a GGUF without it is skipped, saying so)'
        ),
        gpu_offload='whole model on the GPU(s); --cpu-offload-gb moves part of the weights to CPU memory',
        multi_gpu="--tensor-parallel-size (this study, over the job's GPUs) and --pipeline-parallel-size",
        gguf=(
            "experimental and under-optimized, single-file GGUF only; the base model's Hugging Face tokenizer is "
            "advised; built in up to vLLM 0.23, from 0.24 only through the vllm-gguf-plugin package"
        ),
        python_api='yes: vllm.LLM in-process, and an OpenAI-compatible server (this study uses the server)',
        sources=(
            'https://docs.vllm.ai/en/latest/features/quantization/gguf/',
            'https://docs.vllm.ai/en/latest/configuration/engine_args/',
            'https://github.com/vllm-project/vllm/pull/39612 (GGUF moved to vllm-gguf-plugin; RFC #39583)',
        ),
    ),
    engine="llmbench.engines.vllm:Vllm",
    prefill_is_ttft=True,
    tensor_parallel=True,
    serves=True,
    fills_depth=True,
    # The plugin's version is recorded where it is installed: from vLLM 0.24 it is what loads a GGUF.
    packages=("vllm", "vllm-gguf-plugin"),
    options={
        "gpu_memory_utilization": {
            "type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1, "default": None,
            "description": ("vLLM's --gpu-memory-utilization: the share of each GPU's memory it takes for weights, "
                            "activations and KV cache; null passes none, so vLLM's default (0.9) holds. Lower it "
                            "where other processes share the GPU."),
        },
        "extra_args": extra_args_option("vLLM", "[--enforce-eager]"),
    },
))
