"""llama-server backend: parsing the server's real answer, and the process lifecycle.

Lifecycle tests use a stand-in executable (a small Python HTTP server that takes llama-server's arguments),
named as such; the real llama-server runs in tests/test_workflow.py.
"""

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from llmbench.backend import BackendError, EngineFailed, OutOfMemory
from llmbench.llama_server import (
    LlamaServer,
    LlamaServerSettings,
    parse_chat_response,
    parse_chat_stream,
    server_command,
)

# llama.cpp out-of-memory lines, a stand-in written from the pinned source (see tests/test_llama_log.py).
CUDA_OOM = (REPO / "tests/data/llama_cuda_oom.standin.log").read_text()


def test_parse_recorded_real_response():
    body = json.loads((REPO / "tests/data/llama_server_chat_response.json").read_text())
    g = parse_chat_response(body, wall_ms=420.0)
    assert (g.prompt_tokens, g.prefill_tokens, g.generated_tokens) == (42, 42, 8)
    assert (g.prefill_ms, g.decode_ms) == (293.742, 85.966)
    assert g.decode_tokens_per_s == pytest.approx(81.42754112090827)
    assert g.finish_reason == "stop" and "Paris" in g.text


def test_parse_recorded_real_stream_with_ttft():
    lines = (REPO / "tests/data/llama_server_chat_stream.txt").read_bytes().splitlines(keepends=True)
    clock = iter([0.25, 0.9])  # read at the first content (250 ms) and at the end (900 ms)
    g = parse_chat_stream(lines, 0.0, clock=lambda: next(clock))
    assert g.ttft_ms == 250.0 and g.wall_ms == 900.0
    assert (g.prompt_tokens, g.generated_tokens) == (42, 12) and g.finish_reason == "length"
    assert g.text.startswith("The") and g.decode_ms == 255.368


def test_stream_without_timings_is_an_error():
    with pytest.raises(BackendError, match="ended without 'timings'"):
        parse_chat_stream([b'data: {"choices":[{"delta":{"content":"x"}}]}\n', b"data: [DONE]\n"], 0.0)


def test_cached_prompt_tokens_count_as_prompt_but_not_as_prefill():
    body = json.loads((REPO / "tests/data/llama_server_chat_response.json").read_text())
    body["timings"].update(cache_n=40, prompt_n=2)
    g = parse_chat_response(body, wall_ms=1.0)
    assert (g.prompt_tokens, g.prefill_tokens) == (42, 2)


def test_answer_without_timings_is_an_error():
    with pytest.raises(BackendError, match="without 'timings'"):
        parse_chat_response({"choices": []}, wall_ms=1.0)


def test_command_carries_offload_split_and_threads(tmp_path):
    s = LlamaServerSettings(binary=Path("llama-server"), model=tmp_path / "m.gguf", n_gpu_layers=33, split_mode="row", threads=8)
    cmd = server_command(s, 8080)
    assert cmd[cmd.index("--n-gpu-layers") + 1] == "33" and cmd[cmd.index("--split-mode") + 1] == "row"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--parallel") + 1] == "1"


def test_a_number_of_layers_runs_as_given_and_auto_lets_llama_cpp_fit(tmp_path):
    fixed = server_command(LlamaServerSettings(binary=Path("s"), model=tmp_path / "m.gguf", n_gpu_layers=20), 1)
    assert fixed[fixed.index("--n-gpu-layers") + 1] == "20" and fixed[fixed.index("--fit") + 1] == "off"
    auto = server_command(LlamaServerSettings(binary=Path("s"), model=tmp_path / "m.gguf", n_gpu_layers="auto",
                                              ctx_size=4096), 1)
    assert auto[auto.index("--n-gpu-layers") + 1] == "auto" and auto[auto.index("--fit") + 1] == "on"
    # The configured context is kept: llama.cpp's fitting only changes what the command leaves unset.
    assert auto[auto.index("--ctx-size") + 1] == "4096"
    # Level 4 puts llama.cpp's load lines (offload, allocation failures) into the log.
    assert auto[auto.index("--log-verbosity") + 1] == "4"


def test_tensor_split_is_passed_and_refused_with_auto(tmp_path):
    s = LlamaServerSettings(binary=Path("s"), model=tmp_path / "m.gguf", n_gpu_layers=81, tensor_split=(3.0, 1.0))
    cmd = server_command(s, 1)
    assert cmd[cmd.index("--tensor-split") + 1] == "3,1"
    with pytest.raises(ValueError, match=r"tensor_split \[3.0, 1.0\] with n_gpu_layers auto.*drop tensor_split"):
        server_command(LlamaServerSettings(binary=Path("s"), model=tmp_path / "m.gguf", n_gpu_layers="auto",
                                           tensor_split=(3.0, 1.0)), 1)


@pytest.mark.parametrize("bad", [-1, "all", 2.5])
def test_bad_layer_count_names_the_value(tmp_path, bad):
    with pytest.raises(ValueError, match=rf"n_gpu_layers {bad!r} is neither"):
        server_command(LlamaServerSettings(binary=Path("s"), model=tmp_path / "m.gguf", n_gpu_layers=bad), 1)


def standin(tmp_path: Path, body: str) -> Path:
    """Write a stand-in for the llama-server executable."""
    exe = tmp_path / "standin-llama-server"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    exe.chmod(0o755)
    return exe


def settings(exe: Path, tmp_path: Path, **kw) -> LlamaServerSettings:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    return LlamaServerSettings(binary=exe, model=model, start_timeout_s=20, **kw)


def test_server_dying_while_loading_says_why(tmp_path):
    exe = standin(tmp_path, """
        import sys
        print("llama_model_load: error loading model: tensor 'blk.3.attn_q.weight' data is not within the file bounds")
        sys.exit(1)
    """)
    server = LlamaServer(settings(exe, tmp_path), tmp_path / "server.log")
    # The 4-byte stand-in model is damaged: only the GGUF check's proof makes it "corrupt".
    with pytest.raises(BackendError, match=r"the GGUF check proves the model file damaged: .*model.gguf is a damaged"):
        server.start()


def test_a_sound_file_the_loader_refuses_is_never_called_corrupt(tmp_path, tiny_gguf):
    exe = standin(tmp_path, """
        import sys
        print("llama_model_load: error loading model: tensor 'blk.3.attn_q.weight' has wrong shape")
        print("llama_model_load_from_file_impl: failed to load model")
        sys.exit(1)
    """)
    s = dataclasses.replace(settings(exe, tmp_path), model=tiny_gguf)
    with pytest.raises(EngineFailed) as e:
        LlamaServer(s, tmp_path / "server.log").start()
    msg = str(e.value)
    assert msg.startswith("llama-server could not load the model (exit code 1); the GGUF check finds tiny.gguf sound")
    assert "do not delete it" in msg and "while loading" in msg
    assert "Delete" not in msg and "corrupt" not in msg
    assert "failed to load model" in msg


@pytest.mark.parametrize(("sig", "kind", "words"), [
    ("SIGILL", "illegal_instruction", "instruction this CPU cannot run"),
    ("SIGSEGV", "segmentation_fault", "segmentation fault"),
    ("SIGKILL", "killed", "out-of-memory killer"),
])
def test_a_server_ended_by_a_signal_is_named_for_it(tmp_path, tiny_gguf, sig, kind, words):
    # A stand-in llama-server that loads (it prints what llama.cpp prints) and then kills itself with the signal.
    exe = standin(tmp_path, f"""
        import os, signal
        print("llama_model_loader: loaded meta data with 30 key-value pairs and 201 tensors from model.gguf")
        print("load_tensors: loading model tensors, this can take a while... (load_mode = mmap)")
        os.kill(os.getpid(), signal.{sig})
    """)
    s = dataclasses.replace(settings(exe, tmp_path), model=tiny_gguf)
    with pytest.raises(EngineFailed) as e:
        LlamaServer(s, tmp_path / "server.log").start()
    d = e.value.diagnosis
    assert (d.kind, d.signal) == (kind, sig)
    assert words in str(e.value) and "corrupt" not in str(e.value) and "delete" not in str(e.value).lower()


def test_out_of_memory_while_loading_is_out_of_memory_with_the_line_and_fix(tmp_path):
    exe = standin(tmp_path, f"""
        import sys
        sys.stderr.write({CUDA_OOM!r})
        sys.exit(1)
    """)
    server = LlamaServer(settings(exe, tmp_path, n_gpu_layers=81), tmp_path / "server.log")
    with pytest.raises(OutOfMemory) as e:
        server.start()
    msg = str(e.value)
    assert msg.startswith("out of memory: llama-server (n_gpu_layers=81, ctx_size=2048)")
    assert "cudaMalloc failed: out of memory" in msg and "set it to auto" in msg
    assert server.proc is None or server.proc.poll() is not None


def test_missing_binary_says_to_build(tmp_path):
    server = LlamaServer(settings(tmp_path / "nope", tmp_path), tmp_path / "server.log")
    with pytest.raises(BackendError, match="does not exist; build llama.cpp first"):
        server.start()


HEALTHY = """
    import http.server, json, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(json.dumps({"build_info": "standin"}).encode())
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_server_is_stopped_when_the_job_fails(tmp_path):
    exe = standin(tmp_path, HEALTHY)
    server = LlamaServer(settings(exe, tmp_path), tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="job failed"):
        with server:
            proc = server.proc
            assert proc.poll() is None and server.facts()["engine_build"] == "standin"
            raise RuntimeError("job failed")
    assert proc.poll() is not None and server.proc is None


def test_dead_server_during_a_run_is_named(tmp_path):
    exe = standin(tmp_path, HEALTHY)
    with LlamaServer(settings(exe, tmp_path), tmp_path / "server.log") as server:
        server.proc.kill()
        server.proc.wait()
        with pytest.raises(BackendError, match="llama-server is not running"):
            server.generate("hi", 4, 0.0, 1)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_server_is_stopped_when_the_job_is_interrupted(tmp_path, signame):
    """Snakemake stops a job with SIGTERM, a user with Ctrl-C (SIGINT): either way the engine goes too."""
    import os
    import signal
    import subprocess
    import time

    exe = standin(tmp_path, HEALTHY)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    job = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import signal, sys, time
            from pathlib import Path
            from llmbench.llama_server import LlamaServer, LlamaServerSettings
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as workflow/scripts/bench.py does
            s = LlamaServerSettings(binary=Path({str(exe)!r}), model=Path({str(model)!r}), start_timeout_s=20)
            with LlamaServer(s, Path({str(tmp_path / 'server.log')!r})) as server:
                print(server.proc.pid, flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "workflow/scripts")},
    )
    server_pid = int(job.stdout.readline())
    os.kill(job.pid, getattr(signal, signame))
    job.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail(f"the engine (pid {server_pid}) outlived its job after {signame}")


@pytest.mark.e2e
def test_real_cpu_server_records_zero_layers_offloaded(tmp_path):
    """The real llama-server of this project's CPU build, with -ngl auto: llama.cpp offloads 0 of n_layer + 1."""
    import os

    from conftest import load_config

    binary = REPO / "resources/llama.cpp" / f"{load_config()['llama_cpp']['version']}-cpu" / "bin/llama-server"
    model = os.environ.get("LLMBENCH_TEST_GGUF")
    if not binary.exists():
        pytest.skip(f"no llama.cpp build at {binary.parent} (run the workflow's rule build_llama_cpp)")
    if not model or not Path(model).is_file():
        pytest.skip("set LLMBENCH_TEST_GGUF to a small chat GGUF (e.g. SmolLM2-135M-Instruct) to run the real server")
    s = LlamaServerSettings(binary=binary, model=Path(model), n_gpu_layers="auto", threads=2, ctx_size=512)
    with LlamaServer(s, tmp_path / "server.log") as server:
        facts = server.facts()
    assert facts["n_gpu_layers"] == "auto" and facts["n_gpu_layers_offloaded"] == 0
    assert facts["n_layers_total"] > 1 and "print_info" in facts["offload_source"]


def test_out_of_memory_during_a_generation_is_out_of_memory(tmp_path):
    """The stand-in answers /health, then dies on the first request as llama.cpp's CUDA abort does."""
    exe = standin(tmp_path, HEALTHY.replace("    http.server.HTTPServer", """\
        def do_POST(self):
            import os
            sys.stderr.write("CUDA error: out of memory\\n  current device: 0, in function alloc at ggml-cuda.cu:1\\n")
            sys.stderr.flush()
            os._exit(134)
    http.server.HTTPServer"""))
    with LlamaServer(settings(exe, tmp_path), tmp_path / "server.log") as server:
        with pytest.raises(OutOfMemory, match=r"logged 'CUDA error: out of memory'"):
            server.generate("hi", 4, 0.0, 1)
