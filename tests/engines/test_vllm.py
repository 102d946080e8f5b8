"""vLLM backend: parsing vLLM's streamed answer, the command line, 'not installed / no GPU', and the lifecycle.

Lifecycle tests run a stand-in for vLLM (a tiny ``vllm.entrypoints.openai.api_server`` package written into
tmp_path that serves /health, /version and a canned stream), named as such; the real vLLM needs a GPU.
"""

import importlib.util
import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, TRICKLING_SSE_SERVER, StreamReplay, bench_job, nvml_works
from llmbench.engines import registry
from llmbench.engines import vllm as vllm_backend
from llmbench.engines.base import EngineError, StreamCutShort, ToolUnavailable, diagnosis_of
from llmbench.engines.vllm import Vllm, VllmSettings, nvidia_gpu_present, parse_vllm_stream, server_command
from llmbench.study.measure import measure

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
    replay = StreamReplay(stream_lines())
    g = parse_vllm_stream(replay, 0.0, clock=replay.clock)
    # The first content is line 3 (after the role chunk and its blank line), the end the last line, 28: one line
    # every 100 ms.
    assert g.ttft_ms == pytest.approx(300.0) and g.wall_ms == pytest.approx(2800.0)
    assert (g.prefill_ms, g.decode_ms) == (pytest.approx(300.0), pytest.approx(2500.0))
    # 11 content chunks, 12 tokens: counts are the engine's usage, never counted chunks; the chunks' times give
    # the inter-token gaps.
    assert (g.prompt_tokens, g.prefill_tokens, g.generated_tokens) == (42, 42, 12)
    assert g.decode_tokens_per_s == pytest.approx(11 / 2500 * 1000)
    assert g.token_times_ms == pytest.approx([300.0 + 200.0 * k for k in range(11)])
    assert g.finish_reason == "length" and g.text == "The capital of France is Paris. It is known for its"


def test_stream_without_usage_is_an_error():
    lines = [x for x in stream_lines() if b'"usage"' not in x]
    with pytest.raises(EngineError, match="ended without 'usage'"):
        parse_vllm_stream(lines, 0.0)


def test_streamed_error_is_named():
    lines = [b'data: {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}\n']
    with pytest.raises(EngineError, match="CUDA out of memory"):
        parse_vllm_stream(lines, 0.0)


def test_cached_prompt_tokens_count_as_prompt_but_not_as_prefill():
    details = b'"completion_tokens":12,"prompt_tokens_details":{"cached_tokens":32}}'
    lines = [x.replace(b'"completion_tokens":12}', details) for x in stream_lines()]
    g = parse_vllm_stream(lines, 0.0)
    assert (g.prompt_tokens, g.prefill_tokens) == (42, 10)


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    """One vLLM chat.completion.chunk as chat_completion_stream_generator writes it (exclude_unset), and the blank
    line after it."""
    body = {"id": "chatcmpl-c0ffee", "object": "chat.completion.chunk", "created": 1795590112, "model": "m.gguf",
            "choices": [] if usage else [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def reasoning_stream(field: str = "reasoning_content", details: dict | None = None) -> list[bytes]:
    """A reasoning model's answer as vLLM streams it with a --reasoning-parser: thinking deltas, then the answer."""
    usage = {"prompt_tokens": 17, "total_tokens": 40, "completion_tokens": 23}
    if details is not None:
        usage["completion_tokens_details"] = details
    text = b"".join([
        chunk({"role": "assistant", "content": ""}), chunk({field: "Okay"}), chunk({field: ", 17 + 25 = 42."}),
        chunk({"content": "42"}), chunk({}, finish="stop"), chunk(usage=usage), b"data: [DONE]\n\n",
    ])
    return text.splitlines(keepends=True)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_model_ttft_is_the_first_thinking_token(field):
    replay = StreamReplay(reasoning_stream(field))
    g = parse_vllm_stream(replay, 0.0, clock=replay.clock)
    assert g.ttft_ms == pytest.approx(300.0)  # the first thinking delta (line 3), not the answer (line 7)
    assert (g.prompt_tokens, g.generated_tokens, g.text, g.finish_reason) == (17, 23, "42", "stop")
    # Prefill is bounded by TTFT; the thinking is decode.
    assert g.prefill_ms == pytest.approx(300.0) and g.decode_ms == pytest.approx(g.wall_ms - 300.0)
    assert g.reasoning_tokens is None  # this usage does not say: unknown, never 0 or counted chunks


def test_a_reasoning_count_vllm_gives_is_kept():
    g = parse_vllm_stream(reasoning_stream(details={"reasoning_tokens": 21}), 0.0)
    assert g.reasoning_tokens == 21


@pytest.mark.parametrize("line", [
    # vLLM before ErrorInfo: the ErrorResponse (object "error") inside "error".
    b'data: {"error": {"object": "error", "message": "This model\'s maximum context length is 2048 tokens. However, '
    b'you requested 2100 tokens.", "type": "BadRequestError", "param": null, "code": 400}}',
    # vLLM with ErrorInfo.
    b'data: {"error": {"message": "This model\'s maximum context length is 2048 tokens. However, you requested 2100 '
    b'tokens.", "type": "BadRequestError", "param": null, "code": 400}}',
    # An ErrorResponse chunk on its own.
    b'data: {"object": "error", "message": "This model\'s maximum context length is 2048 tokens. However, you '
    b'requested 2100 tokens.", "type": "BadRequestError", "param": null, "code": 400}',
])
def test_an_error_inside_the_stream_is_vllms_message(line):
    with pytest.raises(EngineError) as e:
        parse_vllm_stream([*reasoning_stream()[:4], line + b"\n"], 0.0)
    msg = str(e.value)
    assert "maximum context length is 2048 tokens" in msg and "(type BadRequestError, code 400)" in msg
    assert not isinstance(e.value, StreamCutShort)
    assert diagnosis_of(e.value, "vLLM").kind == "context_size_exceeded"


@pytest.mark.parametrize(("keep", "missing"), [
    (8, r"'usage', a finish_reason and \[DONE\]"),  # up to the answer
    (10, r"'usage' and \[DONE\]"),  # the finish_reason came, the usage did not
])
def test_a_stream_cut_short_is_no_result(keep, missing):
    with pytest.raises(StreamCutShort, match=rf"^vLLM's stream ended without {missing}: it was cut short"):
        parse_vllm_stream(reasoning_stream()[:keep], 0.0)


def test_a_stream_cut_in_the_middle_of_a_line_says_so():
    lines = reasoning_stream()
    with pytest.raises(StreamCutShort, match="in the middle of the line"):
        parse_vllm_stream([*lines[:10], lines[10][:40]], 0.0)


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
        Vllm(VllmSettings(model=tmp_path / "m.gguf"), tmp_path / "engine.log").start()


def test_no_gpu_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(vllm_backend, "nvidia_gpu_present", lambda: False)
    standin_distributions(monkeypatch)  # whatever vLLM this machine has, its GGUF check is not what is tested
    with pytest.raises(ToolUnavailable, match="vLLM needs an NVIDIA GPU"):
        Vllm(VllmSettings(model=tmp_path / "m.gguf"), tmp_path / "engine.log").start()


def standin_distributions(monkeypatch, **installed: str) -> None:
    """Stand-in pip distributions for the vLLM module's version lookups (``installed``: name with '-' as '_' ->
    version); every other distribution is 'not installed'. vLLM itself is not installed here."""
    versions = {name.replace("_", "-"): v for name, v in installed.items()}
    monkeypatch.setattr(vllm_backend, "installed_version", lambda distribution: versions.get(distribution))


def refuse_server_start(monkeypatch) -> None:
    """Any server start fails the test: the GGUF check must come before it."""
    def started(*a, **kw):
        raise AssertionError("the vLLM server was started before the GGUF plugin check")

    monkeypatch.setattr(vllm_backend.ServerProcess, "start", started)


def test_vllm_024_without_the_gguf_plugin_is_skipped_with_the_install_line(tmp_path, monkeypatch):
    """vLLM PR #39612: from 0.24, GGUF loads only through vllm-gguf-plugin. Said before anything starts, so that the
    job ends 'skipped' (measure turns ToolUnavailable into a skipped row) instead of failing inside vLLM."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(vllm_backend, "nvidia_gpu_present", lambda: True)
    standin_distributions(monkeypatch, vllm="0.24.1")
    refuse_server_start(monkeypatch)
    with pytest.raises(ToolUnavailable) as raised:
        Vllm(VllmSettings(model=tmp_path / "m.gguf"), tmp_path / "engine.log").start()
    why = str(raised.value)
    assert why.startswith("vLLM 0.24.1 (in ") and "distribution 'vllm-gguf-plugin' not found" in why
    assert "pip install vllm-gguf-plugin" in why and "PR #39612" in why and "vllm<0.24" in why


def test_the_bench_job_on_a_gguf_without_the_plugin_is_a_skipped_row(tmp_path, monkeypatch, tiny_gguf):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(vllm_backend, "nvidia_gpu_present", lambda: True)
    standin_distributions(monkeypatch, vllm="0.24.0")
    refuse_server_start(monkeypatch)
    rows = measure(bench_job(tmp_path, "vllm", tiny_gguf, gpus=1), [], logging.getLogger("test"))
    row = rows.row(0, named=True)
    assert (rows.height, row["status"]) == (1, "skipped")
    assert row["status_reason"].startswith("vLLM 0.24.0 (in ") and "pip install vllm-gguf-plugin" in row["status_reason"]


@pytest.mark.parametrize("version", ["0.24.0rc1", "0.24.0+cu129", "1.0.0"])
def test_every_build_from_024_on_needs_the_plugin(version):
    assert "pip install vllm-gguf-plugin" in vllm_backend.gguf_plugin_problem(version, None)


@pytest.mark.parametrize(("vllm", "plugin"), [("0.23.2", None), ("0.11.0", None), ("0.24.0", "0.1.0"),
                                              (None, None), ("not-a-version", None)])
def test_no_plugin_problem_where_vllm_loads_gguf_or_its_version_is_unknown(vllm, plugin):
    assert vllm_backend.gguf_plugin_problem(vllm, plugin) is None


@pytest.mark.parametrize(("installed", "plugin"), [({"vllm": "0.23.1"}, None),
                                                   ({"vllm": "0.24.0", "vllm_gguf_plugin": "0.1.2"}, "0.1.2")])
def test_a_vllm_that_can_load_the_gguf_runs_and_names_the_plugin(tmp_path, monkeypatch, installed, plugin):
    """vLLM 0.23 loads GGUF itself; 0.24 with the plugin runs on, the plugin's version in the engine facts (and,
    through the registry's package list, in the job's provenance)."""
    model = standin_vllm(tmp_path, SERVING, monkeypatch)
    standin_distributions(monkeypatch, **installed)
    with Vllm(VllmSettings(model=model, start_timeout_s=30), tmp_path / "engine.log") as server:
        g = server.generate("What is the capital of France?", 12, 0.0, 42)
        facts = server.facts()
    assert g.generated_tokens == 12 and facts["vllm_gguf_plugin"] == plugin
    assert "vllm-gguf-plugin" in registry.tool("vllm").packages


def test_no_vllm_is_skipped_as_before_whatever_the_plugin(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    standin_distributions(monkeypatch, vllm_gguf_plugin="0.1.2")
    refuse_server_start(monkeypatch)
    with pytest.raises(ToolUnavailable, match=r"^vLLM is not installed in the job's Python environment .*: pip "
                                              r"install vllm; it needs an NVIDIA GPU$"):
        Vllm(VllmSettings(model=tmp_path / "m.gguf"), tmp_path / "engine.log").start()


def test_the_plugin_is_not_asked_for_a_model_that_is_no_gguf(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(vllm_backend, "nvidia_gpu_present", lambda: False)
    standin_distributions(monkeypatch, vllm="0.24.0")
    with pytest.raises(ToolUnavailable, match="vLLM needs an NVIDIA GPU"):  # the next check, not the plugin's
        Vllm(VllmSettings(model=tmp_path / "hf-model-dir"), tmp_path / "engine.log").start()


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
    standin_distributions(monkeypatch)  # the stand-in package has no distribution metadata
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
    with Vllm(VllmSettings(model=model, start_timeout_s=30), tmp_path / "engine.log") as server:
        proc = server.server.proc
        g = server.generate("What is the capital of France?", 12, 0.0, 42)
        facts = server.facts()
        assert server.peak_rss_bytes() > 0
    assert proc.poll() is not None and server.server.proc is None
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
    server = Vllm(VllmSettings(model=model, start_timeout_s=30), tmp_path / "engine.log")
    with pytest.raises(EngineError, match=r"exited with code 1: .*No supported config format.*\(while loading"):
        server.start()


SERVING_IN_TURN = """
    import http.server, json, os, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    model = sys.argv[sys.argv.index("--model") + 1]
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
            self.wfile.write(json.dumps({"version": "standin"} if self.path == "/version" else {}).encode())
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            count = model + ".requests"
            n = os.path.getsize(count) if os.path.exists(count) else 0
            open(count, "a").write("x")
            answers = sorted(p for p in os.listdir(os.path.dirname(model)) if p.startswith("answer"))
            data = open(os.path.join(os.path.dirname(model), answers[min(n, len(answers) - 1)]), "rb").read()
            self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
            self.wfile.write(data)
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def serve_in_turn(tmp_path: Path, monkeypatch, *answers: list[bytes]) -> Path:
    """A stand-in vLLM answering its n-th chat request with answers[n] (the last one thereafter)."""
    model = standin_vllm(tmp_path, SERVING_IN_TURN, monkeypatch)
    for i, lines in enumerate(answers):
        (tmp_path / f"answer{i}").write_bytes(b"".join(lines))
    return model


def test_a_request_cut_short_runs_once_more(tmp_path, monkeypatch):
    model = serve_in_turn(tmp_path, monkeypatch, reasoning_stream()[:8], reasoning_stream())
    with Vllm(VllmSettings(model=model, start_timeout_s=30), tmp_path / "engine.log") as server:
        g = server.generate("What is 17 + 25?", 64, 0.0, 1)
    assert (g.text, g.generated_tokens) == ("42", 23)
    assert Path(f"{model}.requests").read_text() == "xx"


def test_a_request_cut_short_twice_fails_naming_the_engine_log(tmp_path, monkeypatch):
    model = serve_in_turn(tmp_path, monkeypatch, reasoning_stream()[:8])
    log = tmp_path / "engine.log"
    with Vllm(VllmSettings(model=model, start_timeout_s=30), log) as server:
        with pytest.raises(StreamCutShort) as e:
            server.generate("What is 17 + 25?", 64, 0.0, 1)
    assert "cut short again when the request ran once more" in str(e.value) and str(log) in str(e.value)
    assert Path(f"{model}.requests").read_text() == "xx"


TOKENIZING = """
    import http.server, json, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
            self.wfile.write(json.dumps({"version": "standin"} if self.path == "/version" else {}).encode())
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            # One token per word, as vLLM's protocol answers: /tokenize gives count and ids, /detokenize the prompt.
            if self.path == "/tokenize":
                assert body["add_special_tokens"] is False and body["model"]
                words = body["prompt"].split()
                out = {"count": len(words), "max_model_len": 4096, "tokens": list(range(len(words)))}
            else:
                out = {"prompt": " ".join(f"w{i}" for i in body["tokens"])}
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
            self.wfile.write(json.dumps(out).encode())
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_a_context_at_a_depth_is_counted_by_vllms_own_tokenizer(tmp_path, monkeypatch):
    model = standin_vllm(tmp_path, TOKENIZING, monkeypatch)
    with Vllm(VllmSettings(model=model, start_timeout_s=30), tmp_path / "engine.log") as server:
        assert server.context_text("one two three four five", 3) == "w0 w1 w2"
        with pytest.raises(EngineError, match="holds 5 tokens by vLLM's tokenizer, fewer than the depth 9"):
            server.context_text("one two three four five", 9)


def test_a_request_that_trickles_is_given_up_at_its_deadline(tmp_path, monkeypatch):
    """A stand-in vLLM whose answer comes one byte every 0.2 s for 15 s: given up at bench.request_timeout_s (1 s
    here) for the whole response, not per read."""
    import time

    model = standin_vllm(tmp_path, TRICKLING_SSE_SERVER, monkeypatch)
    log = tmp_path / "engine.log"
    with Vllm(VllmSettings(model=model, start_timeout_s=30, request_timeout_s=1.0), log) as server:
        start = time.monotonic()
        with pytest.raises(EngineError) as e:
            server.generate("What is 17 + 25?", 64, 0.0, 1)
        assert time.monotonic() - start < 10
    assert diagnosis_of(e.value, "vLLM", log).kind == "timed_out"
    assert str(e.value).startswith("the request to vLLM was given up: it did not finish within its limit of 1 s "
                                   "(bench.request_timeout_s")
