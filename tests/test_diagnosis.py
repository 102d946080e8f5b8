"""Every engine failure named for what it is, with its fix, from real engines' outputs (../shared/cases).

Each case goes through the product as a real job would: a stand-in engine (a small Python script or HTTP server,
named as such) prints the engine's real output, and the bench job's own code (llmbench.study.measure) turns it into its
row. The real engines run in tests/test_workflow.py.
"""

from __future__ import annotations

import http.server
import json
import logging
import signal
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import REPO, bench_job, reply_json
from llmbench.engines.diagnosis import diagnose, signal_of
from llmbench.study.measure import measure

CASES = REPO / "tests/data/cases"


def standin_printing(tmp_path: Path, name: str, text: str, exit_code: int = 1) -> Path:
    exe = tmp_path / f"standin-{name}"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write({text!r})\nsys.exit({exit_code})\n")
    exe.chmod(0o755)
    return exe


def failed_row(job) -> dict:
    rows = measure(job, [], logging.getLogger("test"))
    assert rows.height == 1
    row = rows.row(0, named=True)
    assert row["status"] == "failed"
    return row


@pytest.mark.parametrize("tool", ["llama-server", "llama-bench"])
def test_c17_an_architecture_the_build_does_not_know_is_named_with_the_version_fix(tmp_path, tiny_gguf, tool):
    log = (CASES / "c17_llama_server_unknown_arch.log").read_text()
    j = bench_job(tmp_path, tool, tiny_gguf, exe=standin_printing(tmp_path, tool, log), quant="Q4_K_M")
    row = failed_row(j)
    assert row["failure_kind"] == "unknown_architecture"
    reason = row["status_reason"]
    assert "does not know architecture 'gemma4'" in reason and "pin a newer llama_cpp.version" in reason
    assert "corrupt" not in reason and "delete" not in reason.lower()


def test_c10_a_renamed_shard_the_server_refuses_is_not_called_corrupt(tmp_path):
    d = diagnose("llama-server", 1, (CASES / "c10_llama_server_split_renamed.log").read_text())
    assert d.kind == "split_gguf_shard_alone" and "invalid split file name" in d.line
    assert "NAME-0000K-of-0000N.gguf" in d.reason and "corrupt" not in d.reason


class _Ollama(http.server.BaseHTTPRequestHandler):
    """A stand-in `ollama serve`: the model is pulled; /api/chat answers HTTP 500 with the body it was given."""

    body: bytes = b""

    def _send(self, code: int, raw: bytes) -> None:
        reply_json(self, code, raw)

    def do_GET(self):
        self._send(200, b'{"models": []}' if self.path == "/api/ps" else b'{"version": "0.0.0-standin"}')

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/api/show":
            self._send(404, b'{"error": "model not found"}')
        elif self.path == "/api/pull":
            self._send(200, b'{"status": "success"}')
        else:
            self._send(500, type(self).body)

    def log_message(self, *args):
        pass


@pytest.fixture
def ollama_answering_500(monkeypatch):
    def start(body: bytes) -> None:
        handler = type("Handler", (_Ollama,), {"body": body})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{server.server_port}")
        servers.append(server)

    servers: list = []
    yield start
    for s in servers:
        s.shutdown()


def test_c07a_ollama_out_of_gpu_memory_is_a_failed_row_quoting_cudamalloc_with_the_fix(tmp_path, ollama_answering_500):
    ollama_answering_500((CASES / "c07a_ollama_error_cuda_oom.json").read_bytes())
    j = bench_job(tmp_path, "ollama", None, tag="llama3.1:70b", quant="Q4_K_M")
    row = failed_row(j)
    assert row["failure_kind"] == "out_of_gpu_memory"
    assert "cudaMalloc failed: out of memory" in row["status_reason"]
    assert "n_gpu_layers" in row["status_reason"] and "ctx_size" in row["status_reason"]


def test_ollama_host_memory_refusal_is_a_failed_row_with_the_host_fix(tmp_path, ollama_answering_500):
    body = {"error": "model requires more system memory (61.5 GiB) than is available (22.3 GiB)"}
    ollama_answering_500(json.dumps(body).encode())
    j = bench_job(tmp_path, "ollama", None, tag="llama3.1:70b", quant="Q4_K_M")
    row = failed_row(j)
    assert row["failure_kind"] == "out_of_host_memory"
    assert "(61.5 GiB) than is available (22.3 GiB)" in row["status_reason"]
    assert "smaller quant" in row["status_reason"]


@pytest.mark.parametrize(("text", "kind"), [
    ("llama runner process has terminated: signal: illegal instruction (core dumped)", "illegal_instruction"),
    ("llama runner process has terminated: signal: segmentation fault (core dumped)", "segmentation_fault"),
    ("llama runner process has terminated: signal: killed", "killed"),
    ("Fatal Python error: Illegal instruction", "illegal_instruction"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out_of_gpu_memory"),
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
     "out_of_gpu_memory"),
    ('{"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it", '
     '"type": "exceed_context_size_error"}}', "context_size_exceeded"),
    ("llama_model_load: error loading model: error loading model architecture: unknown model architecture: 'qwen9'",
     "unknown_architecture"),
    ("main: error: invalid value for --split-mode: tensor", "split_mode_unsupported"),
    # The pinned llama-bench with -sm tensor on a CPU-only machine (seen on this project's CI-like VM).
    ("llama_prepare_model_devices: skipping CPU (AMD EPYC) for tensor parallelism\n"
     "llama_prepare_model_devices: LLAMA_SPLIT_MODE_TENSOR needs >= 1 devices\n"
     "llama_bench: error: failed to load model 'm.gguf'", "split_mode_unsupported"),
    ("terminate called after throwing an instance of 'std::bad_alloc'", "out_of_host_memory"),
])
def test_other_wordings_of_the_same_kinds(text, kind):
    assert diagnose("engine", None, text).kind == kind


# What llama-batched-bench of the pinned build prints before its first batch, as on the Intel Xeon with AMX where the
# native build's tools died by SIGILL in ggml_backend_amx_mul_mat (tests/test_build.py); a stand-in's recording.
BATCHED_BENCH_SIGILL = """\
build: 1 (0c1e570) with cc (Debian 14.2.0-19) 14.2.0 for x86_64-linux-gnu
llama_model_loader: loaded meta data with 25 key-value pairs and 21 tensors from tiny.gguf (version GGUF V3 (latest))
load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
load_tensors:   CPU_REPACK model buffer size =     1.12 MiB
llama_context: constructing llama_context
llama_context: n_seq_max     = 2
main: n_kv_max = 512, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0, n_gpu_layers = 0, \
n_threads = 2, n_threads_batch = 2
"""


def test_a_batched_bench_dead_by_an_illegal_instruction_is_named_with_the_rebuild_fix(tmp_path, tiny_gguf):
    """llama-batched-bench runs this workflow's llama.cpp build like llama-bench: its SIGILL is fixed by rebuilding
    (llama_cpp.cpu_build: portable), not by installing another build of it, which the workflow does not do."""
    exe = tmp_path / "standin-llama-batched-bench"
    exe.write_text(f"#!{sys.executable}\nimport os, signal, sys\nsys.stderr.write({BATCHED_BENCH_SIGILL!r})\n"
                   "sys.stderr.flush()\nos.kill(os.getpid(), signal.SIGILL)\n")
    exe.chmod(0o755)
    j = bench_job(tmp_path, "llama-batched-bench", tiny_gguf, exe=exe, tool_settings={"n_prompt": 16, "n_gen": 8})
    (j.settings.build_dir / "bin" / "llama-batched-bench").symlink_to(exe)
    row = failed_row(j)
    assert (row["failure_kind"], row["tool"]) == ("illegal_instruction", "llama-batched-bench")
    reason = row["status_reason"]
    assert reason.startswith("llama-batched-bench died by SIGILL (illegal instruction): this llama.cpp build uses "
                             "an instruction this CPU cannot run: set llama_cpp.cpu_build: portable")
    assert "exclude_cpu_features" in reason and "install a build of it" not in reason
    # The same words wherever its output is read (the build's smoke test diagnoses it by name too).
    assert diagnose("llama-batched-bench", -4, BATCHED_BENCH_SIGILL).reason == diagnose("llama-bench", -4, "").reason \
        .replace("llama-bench", "llama-batched-bench")


@pytest.mark.parametrize(("returncode", "name"), [(-4, "SIGILL"), (-11, "SIGSEGV"), (-9, "SIGKILL"), (1, None)])
def test_the_signal_is_read_from_the_exit_status(returncode, name):
    sig = signal_of(returncode)
    assert (sig.name if sig else None) == name
    d = diagnose("llama-bench", returncode, "")
    assert d.signal == name
    if returncode == -4:
        assert "llama_cpp.cpu_build: portable" in d.reason and "exclude_cpu_features" in d.reason


def test_an_engine_killed_mid_stream_keeps_the_memory_reason_over_the_signal():
    # The kernel's OOM killer or llama.cpp's own failed allocation: the engine's words say more than SIGKILL.
    d = diagnose("llama-server", -signal.SIGKILL, "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 512.00 MiB "
                 "on device 0: cudaMalloc failed: out of memory\n")
    assert d.kind == "out_of_gpu_memory" and d.signal == "SIGKILL"


def test_a_missing_model_is_never_called_corrupt(tmp_path):
    d = diagnose("llama-server", 1, textwrap.dedent("""
        llama_model_load_from_file_impl: failed to load model
    """), tmp_path / "absent.gguf")
    assert "corrupt" not in d.reason and "delete" not in d.reason.lower()


@pytest.fixture
def standin_vllm(monkeypatch):
    """vLLM's engine on this GPU-less machine: its server process a stand-in that prints a recorded vLLM log and
    exits (the real vLLM runs in tests/test_workflow.py where a GPU is lent)."""
    import importlib.util

    from llmbench.engines import vllm

    real = importlib.util.find_spec

    def start(exe: Path) -> None:
        monkeypatch.setattr(vllm.importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
        monkeypatch.setattr(vllm, "nvidia_gpu_present", lambda: True)
        monkeypatch.setattr(vllm, "server_command", lambda settings, port: [str(exe)])

    return start


def test_c308a_vllm_kv_cache_too_small_is_out_of_gpu_memory_quoting_its_root_cause(tmp_path, tiny_gguf, standin_vllm):
    log = (CASES / "c308a_vllm_v1_kv_cache_too_small.log").read_text()
    standin_vllm(standin_printing(tmp_path, "vllm", log))
    row = failed_row(bench_job(tmp_path, "vllm", tiny_gguf, gpus=1, quant="Q8_0"))
    assert row["failure_kind"] == "out_of_gpu_memory"
    reason = row["status_reason"]
    assert ("ValueError: To serve at least one request with the models's max seq len (262144), (36.0 GiB KV cache is "
            "needed, which is larger than the available KV cache memory (6.94 GiB)") in reason
    assert "See root cause above" not in reason and "(EngineCore_DP0" not in reason
    assert "bench.ctx_size" in reason and "--max-num-seqs" in reason and "more GPUs" in reason
    assert "gpu_memory_utilization" in reason and "n_gpu_layers" not in reason


def test_the_root_cause_is_found_above_a_long_traceback(tmp_path, tiny_gguf, standin_vllm):
    # c308a with 300 more traceback lines after it (a deeper stack, another worker's shutdown): still its cause.
    log = (CASES / "c308a_vllm_v1_kv_cache_too_small.log").read_text()
    log += "".join(f'(APIServer pid=312)   File "/usr/lib/python3.12/frame{i}.py", line {i}, in f\n' for i in range(300))
    log += "(APIServer pid=312) RuntimeError: Engine core initialization failed. See root cause above.\n"
    standin_vllm(standin_printing(tmp_path, "vllm", log))
    row = failed_row(bench_job(tmp_path, "vllm", tiny_gguf, gpus=1, quant="Q8_0"))
    assert row["failure_kind"] == "out_of_gpu_memory" and "36.0 GiB KV cache is needed" in row["status_reason"]


@pytest.mark.parametrize(("text", "kind", "quoted"), [
    # vLLM V0's wording of the same cause.
    ("ERROR 01-02 03:04:05 [engine.py:1] ValueError: The model's max seq len (131072) is larger than the maximum "
     "number of tokens that can be stored in KV cache (41024). Try increasing `gpu_memory_utilization` or decreasing "
     "`max_model_len` when initializing the engine.\nRuntimeError: Engine core initialization failed. See root cause "
     "above.", "out_of_gpu_memory", "ValueError: The model's max seq len (131072) is larger"),
    ("(EngineCore_DP0 pid=7) ERROR 01-02 03:04:05 [core.py:1] ValueError: No available memory for the cache blocks. "
     "Try increasing `gpu_memory_utilization` when initializing the engine.\n"
     "RuntimeError: Engine core initialization failed. See root cause above.", "out_of_gpu_memory",
     "ValueError: No available memory for the cache blocks."),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB"
     "\nRuntimeError: Engine core initialization failed. See root cause above.", "out_of_gpu_memory",
     "torch.OutOfMemoryError: CUDA out of memory."),
    # A cause with no kind of its own: the exception is quoted, never the line that points at it.
    ("INFO 01-02 03:04:05 [model.py:1] Resolved architecture: Qwen3VLForConditionalGeneration\n"
     "(EngineCore_DP0 pid=7) ERROR 01-02 03:04:05 [core.py:1] ValueError: Bfloat16 is only supported on GPUs with "
     "compute capability of at least 8.0. Your Tesla T4 GPU has compute capability 7.5.\n"
     "(APIServer pid=3) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
     "exited", "ValueError: Bfloat16 is only supported on GPUs with compute capability of at least 8.0."),
    ("ValueError: Model architectures ['Gemma4ForConditionalGeneration'] are not supported for now. Supported "
     "architectures: dict_keys(['LlamaForCausalLM'])\nRuntimeError: Engine core initialization failed. See root cause "
     "above.", "unknown_architecture", "ValueError: Model architectures ['Gemma4ForConditionalGeneration']"),
])
def test_vllm_failures_quote_the_root_cause_not_the_last_line(text, kind, quoted):
    d = diagnose("vLLM", 1, text)
    assert d.kind == kind and d.line.startswith(quoted) and quoted in d.reason
    assert "See root cause above" not in d.reason


@pytest.mark.parametrize(("engine", "text", "quoted"), [
    ("llama-server", "llama_model_load: error loading model: done_getting_tensors: wrong number of tensors; expected "
     "292, got 291\nllama_model_load_from_file_impl: failed to load model\nsrv load_model: failed to load model, "
     "'m.gguf'\nmain: exiting due to model loading error",
     "llama_model_load: error loading model: done_getting_tensors: wrong number of tensors; expected 292, got 291"),
    ("Ollama", "Error: llama runner process has terminated: error loading model: check_tensor_dims: tensor "
     "'output.weight' not found", "Error: llama runner process has terminated: error loading model: check_tensor_dims"),
    ("llama-bench", "terminate called after throwing an instance of 'std::runtime_error'\n  what():  unknown "
     "argument: --foo\nmain: error: failed to load model 'm.gguf'", "what():  unknown argument: --foo"),
])
def test_other_engines_quote_the_first_line_that_names_the_cause(engine, text, quoted):
    d = diagnose(engine, 1, text)
    assert d.kind == "exited" and d.line.startswith(quoted) and quoted in d.reason


def test_a_log_that_only_points_at_its_cause_quotes_no_pointer():
    d = diagnose("vLLM", 1, "RuntimeError: Engine core initialization failed. See root cause above. Failed core "
                 "proc(s): {}\n")
    assert d.kind == "exited" and d.line is None and "See root cause above" not in d.reason


def test_a_plain_engine_error_gets_the_root_cause_its_log_names(tmp_path):
    from llmbench.engines.base import EngineError, diagnosis_of

    log = tmp_path / "vllm.log"
    log.write_text("INFO starting\n(EngineCore_DP0 pid=7) ERROR 01-02 03:04:05 [core.py:1] ValueError: Bfloat16 is "
                   "only supported on GPUs with compute capability of at least 8.0.\nRuntimeError: Engine core "
                   "initialization failed. See root cause above.\n")
    d = diagnosis_of(EngineError("vLLM stopped answering"), "vllm", log)
    assert d.kind == "exited" and d.reason.startswith("vLLM stopped answering; the engine log names the cause: ")
    assert "ValueError: Bfloat16 is only supported" in d.reason and "See root cause above" not in d.reason
