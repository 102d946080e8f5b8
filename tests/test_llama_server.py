"""llama-server backend: parsing the server's real answer, and the process lifecycle.

Lifecycle tests use a stand-in executable (a small Python HTTP server that takes llama-server's arguments),
named as such; the real llama-server runs in tests/test_workflow.py.
"""

import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from llmbench.backend import BackendError
from llmbench.llama_server import (
    LlamaServer,
    LlamaServerSettings,
    parse_chat_response,
    parse_chat_stream,
    server_command,
)


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
    with pytest.raises(BackendError, match=r"exited with code 1 while loading .*corrupt or truncated"):
        server.start()


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
