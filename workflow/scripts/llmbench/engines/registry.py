"""Every bench tool described once: what planning, rules, engines, figures, tables and provenance need to know of it.

A new framework is one engine module in this folder (an ``Engine`` subclass with ``from_settings``) and one
``Tool`` record registered here; the config schema, the plan, the ``bench_<tool>`` rule, the figures, the framework
table and each job's provenance read the record. Engine modules are named by string and imported only when a job
runs them, so that planning and the other tools' jobs need none of their packages.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    build that its jobs run (``"libllama"``: the library, loaded in-process); ``settings`` its own keys under
    ``tools.<name>`` that reach its jobs; ``model_name`` the name its engine knows a model by (Ollama's tag).
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
    settings: tuple[str, ...] = ()
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


def ollama_model_name(model: str, quant: str, source: dict) -> str:
    """The library tag to pull, or the name a study's GGUF is imported under (Ollama's names are lower case)."""
    return source["tag"] if source["kind"] == "ollama" else f"llmbench-{model.lower()}:{quant}"


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
    runner="llmbench.llama_bench:run_job",
    llama_cpp=("llama-bench",),
    fills_depth=True,
    settings=("n_prompt", "n_gen"),
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
    runner="llmbench.batched_bench:run_job",
    llama_cpp=("llama-batched-bench",),
    batches=True,
    fills_depth=True,
    settings=("n_prompt", "n_gen"),
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
    llama_cpp=("libllama",),
    packages=("llama-cpp-python",),
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
    engine="llmbench.engines.transformers:TransformersBackend",
    prefill_is_ttft=True,
    packages=("torch", "transformers", "accelerate"),
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
    engine="llmbench.engines.ollama:OllamaBackend",
    sources=(*GGUF_SOURCES, "ollama"),
    serves=True,
    packages=("ollama",),
    model_name=ollama_model_name,
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
    engine="llmbench.engines.vllm:VllmServer",
    prefill_is_ttft=True,
    tensor_parallel=True,
    serves=True,
    fills_depth=True,
    # The plugin's version is recorded where it is installed: from vLLM 0.24 it is what loads a GGUF.
    packages=("vllm", "vllm-gguf-plugin"),
))
