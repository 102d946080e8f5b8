"""The engine of each bench tool, built from plain settings (what a rule passes), behind the one Engine interface.

Each backend module is imported only when its tool is asked for, so that a job needs only its own tool's packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmbench.backend import Engine

# Tools that generate text through the Engine interface (llama-bench only times synthetic tests).
GENERATING_TOOLS = ("llama-server", "llama-cpp-python", "transformers", "vllm", "ollama")


@dataclass(frozen=True)
class EngineSettings:
    tool: str
    model: Path | None  # the GGUF; None for an Ollama library tag
    n_gpu_layers: int | str | None  # a number, "auto" (llama.cpp fits it; llama.cpp tools only) or None (Ollama decides)
    split: str
    gpus: int
    threads: int
    seed: int
    ctx_size: int
    start_timeout_s: float
    request_timeout_s: float
    server: Path | None = None  # llama-server's binary
    lib_dir: Path | None = None  # the llama.cpp build's libraries, for llama-cpp-python
    tag: str | None = None  # Ollama's model name
    tensor_split: tuple[float, ...] | None = None  # llama.cpp's share of the model per GPU


def make_engine(s: EngineSettings, engine_log: Path) -> Engine:
    if s.tool == "llama-server":
        from llmbench.llama_server import LlamaServer, LlamaServerSettings

        return LlamaServer(
            LlamaServerSettings(
                binary=s.server, model=s.model, n_gpu_layers=s.n_gpu_layers, split_mode=s.split, threads=s.threads,
                ctx_size=s.ctx_size, start_timeout_s=s.start_timeout_s, request_timeout_s=s.request_timeout_s,
                tensor_split=s.tensor_split,
            ),
            engine_log,
        )
    if s.tool == "llama-cpp-python":
        from llmbench.llama_cpp_python_backend import LlamaCppPython

        return LlamaCppPython(
            s.model, s.lib_dir, n_gpu_layers=s.n_gpu_layers, split_mode=s.split, threads=s.threads,
            ctx_size=s.ctx_size, seed=s.seed, tensor_split=s.tensor_split, log_path=engine_log,
        )
    if s.tool == "transformers":
        from llmbench.transformers_backend import TransformersBackend

        return TransformersBackend(s.model, device="cuda" if s.gpus else "cpu", threads=s.threads)
    if s.tool == "vllm":
        from llmbench.vllm_backend import VllmServer, VllmSettings

        return VllmServer(
            VllmSettings(model=s.model, ctx_size=s.ctx_size, gpus=max(s.gpus, 1), seed=s.seed,
                         start_timeout_s=s.start_timeout_s, request_timeout_s=s.request_timeout_s),
            engine_log,
        )
    if s.tool == "ollama":
        from llmbench.ollama_backend import OllamaBackend

        return OllamaBackend(
            # Ollama fits layers to free memory itself when num_gpu is unset: that is its "auto".
            s.tag, engine_log, num_gpu=None if s.n_gpu_layers == "auto" else s.n_gpu_layers, num_thread=s.threads,
            num_ctx=s.ctx_size, start_timeout_s=s.start_timeout_s, request_timeout_s=s.request_timeout_s, gguf=s.model,
        )
    raise ValueError(f"no engine for tool {s.tool!r}; tools that generate: {', '.join(GENERATING_TOOLS)}")
