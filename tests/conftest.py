from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def nvml_works() -> bool:
    """Whether this machine has a working NVML (an NVIDIA driver); tests of the no-GPU path skip where it does."""
    from llmbench.devices.nvml import NvmlUnavailable, close_nvml, open_nvml

    try:
        close_nvml(open_nvml())
        return True
    except NvmlUnavailable:
        return False


# A framework added by a test (tests/engines/test_registry.py, test_options.py): this module written as
# workflow/scripts/llmbench/engines/standin_echo.py of a copy of the workflow, with its record in the registry.
STANDIN_ECHO_ENGINE = '''
"""A stand-in engine, for a test only: it answers every prompt with the text its option echo_text gives (else
"echo"), with fixed counts and times, starting nothing."""

from llmbench.engines.base import Engine, Generation


class StandInEcho(Engine):
    tool = "standin-echo"

    def __init__(self, text="echo"):
        self.text = text

    @classmethod
    def from_settings(cls, settings, log_path):
        return cls(settings.options.get("echo_text", "echo"))

    def start(self):
        pass

    def stop(self):
        pass

    def generate(self, prompt, max_tokens, temperature, seed):
        return Generation(prompt_tokens=12, prefill_tokens=12, generated_tokens=max_tokens, prefill_ms=3.0,
                          decode_ms=2.0 * max_tokens, prefill_tokens_per_s=4000.0, decode_tokens_per_s=500.0,
                          wall_ms=3.0 + 2.0 * max_tokens, finish_reason="length", text=self.text, ttft_ms=3.5)

    def facts(self):
        return {"engine_build": "stand-in 1"}
'''


def copy_workflow(tmp_path: Path) -> Path:
    """A copy of the workflow (Snakefile, workflow/, profiles/) and the default config under ``tmp_path``/study: where
    a test adds a framework, figure or table in its one place without touching the repository."""
    work = tmp_path / "study"
    work.mkdir()
    for item in ("Snakefile", "workflow", "profiles"):
        src = REPO / item
        (shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy2(src, work / item))
    (work / "config").mkdir()
    shutil.copy2(REPO / "config/config.yaml", work / "config/config.yaml")
    return work


def run_snakemake(work: Path, *args: str, cores: int = 1) -> str:
    """``snakemake --cores <cores> <args>`` in a copy of the workflow (copy_workflow); its output, or the test fails
    with the end of its output and log."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), *args], cwd=work,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def load_config(name: str = "config.yaml") -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


@pytest.fixture
def default_config() -> dict:
    return copy.deepcopy(load_config())


@pytest.fixture(scope="session")
def schema() -> dict:
    from llmbench.study.configcheck import load_schema

    return load_schema(REPO / "workflow/schemas/config.schema.yaml")


def write_tiny_gguf(path: Path, n: int = 64, *, tensors: Mapping[str, Any] | None = None,
                    block_count: int | None = 1, metadata: Callable[[Any], None] | None = None) -> Path:
    """A real (tiny) llama GGUF written with the gguf package: header, metadata, tensors.

    ``tensors``: name → float array, or (quantized array, GGMLQuantizationType) for a tensor stored as that type;
    by default one float32 token_embd.weight of n × 4. ``block_count`` None writes none; ``metadata(writer)``
    adds further keys after it.
    """
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    if block_count is not None:
        w.add_block_count(block_count)
    if metadata is not None:
        metadata(w)
    for name, data in (tensors or {"token_embd.weight": np.arange(n * 4, dtype=np.float32).reshape(n, 4)}).items():
        if isinstance(data, tuple):
            raw, qtype = data
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


class Namespace(dict):
    """Snakemake's named lists (input, params, wildcards) stand-in: attribute access, keys(), get(), items()."""

    __getattr__ = dict.__getitem__


def snakemake_standin(tmp_path: Path, *, wildcards: dict, input: dict, params: dict, threads: int = 2):
    """A stand-in of the ``snakemake`` object a rule's script gets, for llmbench.study.job.Job.from_snakemake."""
    return Namespace(wildcards=Namespace(wildcards), input=Namespace(input), params=Namespace(params),
                     threads=threads, log=[str(tmp_path / "job.log")])


def bench_job(tmp_path: Path, tool: str, model: Path | None, *, exe: Path | None = None, tag: str | None = None,
              n_gpu_layers: int | str | None = 0, quant: str = "Q4_0", repetitions: int = 1, max_tokens: int = 4,
              tool_settings: dict | None = None, gpus: int = 0, concurrency: int = 1, depth: int = 0,
              context: Path | None = None):
    """A bench job as its rule would pass it (llmbench.study.job.Job), on a stand-in llama.cpp build whose every tool is
    ``exe`` where given."""
    from llmbench.study.job import Job

    inputs = {"model": str(model)} if model else {}
    if context is not None:
        inputs["context"] = str(context)
    if exe is not None:
        build = tmp_path / "standin-build"
        (build / "bin").mkdir(parents=True, exist_ok=True)
        for name in ("llama-server", "llama-bench"):
            (build / "bin" / name).unlink(missing_ok=True)
            (build / "bin" / name).symlink_to(exe)
        (build / "build.json").write_text("{}")
        inputs["build"] = str(build / "build.json")
    engine = {"n_gpu_layers": n_gpu_layers, "tensor_split": None, "gpus": gpus, "seed": 1, "ctx_size": 2048,
              "start_timeout_s": 20, "request_timeout_s": 20, "model_name": tag}
    plan = {"prompts": [{"id": "p", "text": "hi", "max_tokens": max_tokens}], "repetitions": repetitions,
            "warmup": 0, "idle_s": 0.0, "energy_estimate_w": None, "temperature": 0.7, "exclusive": False}
    smk = snakemake_standin(
        tmp_path, wildcards={"model": "m", "quant": quant, "split": "none", "concurrency": str(concurrency),
                             "depth": str(depth)}, input=inputs,
        params={"tool": tool, "engine": engine, "plan": plan,
                "tool_settings": tool_settings or ({"n_prompt": 16, "n_gen": 8} if tool == "llama-bench" else {})},
    )
    return Job.from_snakemake(smk)


def reply_json(handler, code: int, raw: bytes) -> None:
    """An HTTP stand-in server's answer (http.server handler): the status, a JSON body and its length."""
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)


class StreamReplay:
    """A stand-in stream: recorded lines as a server sends them, one every ``step_s`` after the request at t=0,
    and the client's clock beside it (``clock``: the time the latest line arrived)."""

    def __init__(self, lines: list[bytes], step_s: float = 0.1):
        self.lines, self.step_s, self.now = lines, step_s, 0.0

    @classmethod
    def of(cls, path: Path) -> StreamReplay:
        return cls(path.read_bytes().splitlines(keepends=True))

    def __iter__(self):
        for i, line in enumerate(self.lines, 1):
            self.now = i * self.step_s
            yield line

    def clock(self) -> float:
        return self.now


# A stand-in OpenAI-style server (llama-server, vLLM) whose stream trickles one byte every 0.2 s for 15 s: a request
# deadline must end it, not the per-read socket timeout. Its GET answers stand in for /version (vLLM) and the rest.
TRICKLING_SSE_SERVER = """
    import http.server, json, sys, time
    port = int(sys.argv[sys.argv.index("--port") + 1])
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
            self.wfile.write(json.dumps({"version": "standin"} if self.path == "/version" else
                                        {"build_info": "standin"}).encode())
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
            data, end = b'data: {"choices":[{"delta":{"content":"x"}}]}\\n\\n' * 100, time.monotonic() + 15
            try:
                for i in range(len(data)):
                    if time.monotonic() > end:
                        break
                    self.wfile.write(data[i:i + 1]); self.wfile.flush(); time.sleep(0.2)
            except OSError:
                pass
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def trickle(wfile, data: bytes, seconds: float = 15.0, gap_s: float = 0.2) -> None:
    """Write ``data`` to a stand-in server's client one byte every ``gap_s`` for at most ``seconds``: an engine that
    keeps a response alive without finishing it (a client that gives up ends it)."""
    import time

    end = time.monotonic() + seconds
    try:
        for i in range(len(data)):
            if time.monotonic() > end:
                break
            wfile.write(data[i:i + 1])
            wfile.flush()
            time.sleep(gap_s)
    except OSError:  # the client gave up
        pass
