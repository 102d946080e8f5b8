"""vLLM backend: parsing vLLM's streamed answer, the command line, 'not installed / no GPU', and the lifecycle.

Lifecycle tests run a stand-in for vLLM (a tiny ``vllm.entrypoints.openai.api_server`` package written into
tmp_path that serves /health, /version and a canned stream), named as such; the real vLLM needs a GPU.
"""

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, nvml_works
from llmbench import vllm_backend
from llmbench.backend import BackendError, ToolUnavailable
from llmbench.vllm_backend import VllmServer, VllmSettings, nvidia_gpu_present, parse_vllm_stream, server_command

STREAM = REPO / "tests/data/vllm_chat_stream.txt"


def stream_lines() -> list[bytes]:
    return STREAM.read_bytes().splitlines(keepends=True)


def test_parse_stream_in_vllms_format():
    """The fixture follows vLLM's chat_completion_stream_generator (vllm/entrypoints/openai/serving_chat.py):
    chunks serialised with model_dump_json(exclude_unset=True), a first chunk with the role and empty content,
    one chunk per detokenized delta, finish_reason and stop_reason on the last choice, then, for
    ``stream_options: {"include_usage": true}`` (OpenAI's documented streaming option), a last chunk with
    ``choices: []`` and ``usage``, then ``data: [DONE]``. It is written by hand from that code and OpenAI's
    format, not recorded from a live server (no GPU where it was written)."""
    clock = iter([0.25, 0.9])  # read at the first content (250 ms) and at the end (900 ms)
    g = parse_vllm_stream(stream_lines(), 0.0, clock=lambda: next(clock))
    assert g.ttft_ms == 250.0 and g.wall_ms == 900.0
    assert (g.prefill_ms, g.decode_ms) == (250.0, pytest.approx(650.0))
    # 11 content chunks, 12 tokens: counts are the engine's usage, never counted chunks
    assert (g.prompt_tokens, g.prefill_tokens, g.generated_tokens) == (42, 42, 12)
    assert g.decode_tokens_per_s == pytest.approx(11 / 650 * 1000)
    assert g.finish_reason == "length" and g.text == "The capital of France is Paris. It is known for its"


def test_stream_without_usage_is_an_error():
    lines = [x for x in stream_lines() if b'"usage"' not in x]
    with pytest.raises(BackendError, match="ended without 'usage'"):
        parse_vllm_stream(lines, 0.0)


def test_streamed_error_is_named():
    lines = [b'data: {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}\n']
    with pytest.raises(BackendError, match="CUDA out of memory"):
        parse_vllm_stream(lines, 0.0)


def test_cached_prompt_tokens_count_as_prompt_but_not_as_prefill():
    details = b'"completion_tokens":12,"prompt_tokens_details":{"cached_tokens":32}}'
    lines = [x.replace(b'"completion_tokens":12}', details) for x in stream_lines()]
    g = parse_vllm_stream(lines, 0.0)
    assert (g.prompt_tokens, g.prefill_tokens) == (42, 10)


def test_command_is_how_a_user_starts_vllm(tmp_path):
    s = VllmSettings(model=tmp_path / "m.gguf", ctx_size=4096, gpus=2, seed=7)
    cmd = server_command(s, 8000)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flag = {k: cmd[cmd.index(k) + 1] for k in ("--model", "--tokenizer", "--host", "--port", "--seed",
                                               "--max-model-len", "--tensor-parallel-size")}
    assert flag == {"--model": str(s.model), "--tokenizer": str(s.model), "--host": "127.0.0.1", "--port": "8000",
                    "--seed": "7", "--max-model-len": "4096", "--tensor-parallel-size": "2"}
    assert "--disable-log-requests" not in cmd  # removed in vLLM 0.12; request logging is off by default
    s.tokenizer = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert server_command(s, 8000)[cmd.index("--tokenizer") + 1] == s.tokenizer


def test_no_vllm_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ToolUnavailable, match=r"vLLM is not installed .*pip install vllm; it needs an NVIDIA GPU"):
        VllmServer(VllmSettings(model=tmp_path / "m.gguf"), tmp_path / "engine.log").start()


def test_no_gpu_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(vllm_backend, "nvidia_gpu_present", lambda: False)
    with pytest.raises(ToolUnavailable, match="vLLM needs an NVIDIA GPU"):
        VllmServer(VllmSettings(model=tmp_path / "m.gguf"), tmp_path / "engine.log").start()


@pytest.mark.skipif(nvml_works(), reason="this machine has a working NVML")
def test_gpu_check_finds_none_without_driver(tmp_path):
    assert nvidia_gpu_present(tmp_path / "absent") is False


def standin_vllm(tmp_path: Path, server_body: str, monkeypatch) -> Path:
    """Write a stand-in for the vllm package (only its OpenAI server module) and make it importable."""
    root = tmp_path / "standin"
    pkg = root / "vllm/entrypoints/openai"
    pkg.mkdir(parents=True)
    for d in (root / "vllm", root / "vllm/entrypoints", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(textwrap.dedent(server_body))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.setattr(vllm_backend, "nvidia_gpu_present", lambda: True)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    return model


SERVING = f"""
    import http.server, json, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
            self.wfile.write(json.dumps({{"version": "standin"}} if self.path == "/version" else {{}}).encode())
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            open(sys.argv[sys.argv.index("--model") + 1] + ".request.json", "w").write(json.dumps(body))
            self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
            self.wfile.write(open({str(STREAM)!r}, "rb").read())
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_generation_through_the_server_and_stop(tmp_path, monkeypatch):
    model = standin_vllm(tmp_path, SERVING, monkeypatch)
    with VllmServer(VllmSettings(model=model, start_timeout_s=30), tmp_path / "engine.log") as server:
        proc = server.proc
        g = server.generate("What is the capital of France?", 12, 0.0, 42)
        facts = server.facts()
        assert server.peak_rss_bytes() > 0
    assert proc.poll() is not None and server.proc is None
    assert g.generated_tokens == 12 and g.ttft_ms is not None and g.wall_ms >= g.ttft_ms
    sent = json.loads(Path(f"{model}.request.json").read_text())
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert (sent["model"], sent["seed"], sent["temperature"], sent["max_tokens"]) == (str(model), 42, 0.0, 12)
    assert facts["engine_build"] == "standin" and facts["n_gpu_layers"] == -1 and facts["load_ms"] > 0


def test_server_dying_while_loading_says_why(tmp_path, monkeypatch):
    model = standin_vllm(tmp_path, """
        import sys
        print("ValueError: No supported config format found in model.gguf")
        sys.exit(1)
    """, monkeypatch)
    server = VllmServer(VllmSettings(model=model, start_timeout_s=30), tmp_path / "engine.log")
    with pytest.raises(BackendError, match=r"exited with code 1: .*No supported config format.*\(while loading"):
        server.start()
