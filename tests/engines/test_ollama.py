"""Ollama backend through the official client.

No Ollama binary can be installed from the registries CI uses, so the client is exercised against a stand-in
HTTP server that answers with bodies in Ollama's documented API format (tests/data/ollama/). Where a real
`ollama` is on PATH, test_real_ollama_server_starts_and_answers runs against it.

The stand-in keeps a prompt cache as Ollama's runner does (one slot holding the last prompt; a repeated prompt is
answered with tests/data/cases/c06: the whole prompt counted, only the uncached part's duration), so that the
tests see whether the backend evicts it between repetitions.
"""

import hashlib
import http.server
import json
import os
import shutil
import sys
import textwrap
import threading

import pytest

from conftest import REPO, reply_json
from llmbench.engines.base import EngineError, ToolUnavailable
from llmbench.engines.ollama import OllamaBackend, parse_chat
from llmbench.engines.process import free_port

DATA = REPO / "tests/data/ollama"
# Ollama's final object for a repeated prompt: prompt_eval_count 2410 (the whole prompt), prompt_eval_duration
# 128 ms (only the part not in its cache).
CACHED = json.loads((REPO / "tests/data/cases/c06_ollama_chat_cached_full_count.json").read_text())
# The same prompt evaluated whole: 2410 tokens in 1.3 s.
UNCACHED = {**CACHED, "prompt_eval_duration": 1_300_000_000}


def test_parse_chat_takes_counts_and_nanosecond_durations_from_ollama():
    g = parse_chat(json.loads((DATA / "chat.json").read_text()), wall_ms=5200.0)
    assert (g.prompt_tokens, g.generated_tokens) == (26, 298)
    assert g.prefill_ms == pytest.approx(383.809) and g.decode_ms == pytest.approx(4799.921)
    assert g.decode_tokens_per_s == pytest.approx(298 / 4.799921)
    assert g.finish_reason == "stop" and g.text.endswith("Paris.")


def test_a_prompt_served_from_cache_gives_no_prefill_rate_and_says_so():
    g = parse_chat(CACHED, wall_ms=1950.0, prefill_cached=True)
    assert g.prefill_cached is True and g.prompt_tokens == 2410
    assert g.prefill_tokens is None and g.prefill_tokens_per_s is None  # never 2410 tokens at 18,828 tok/s
    assert g.decode_tokens_per_s == pytest.approx(32 / 1.7) and g.text == "Paris."


def test_a_prefill_rate_only_where_the_prompt_was_evaluated_whole():
    whole = parse_chat(UNCACHED, wall_ms=3100.0, prefill_cached=False)
    assert whole.prefill_tokens == 2410 and whole.prefill_tokens_per_s == pytest.approx(2410 / 1.3)
    unknown = parse_chat(UNCACHED, wall_ms=3100.0)  # the caller does not know what Ollama's cache held
    assert unknown.prefill_cached is None and unknown.prefill_tokens is None and unknown.prefill_tokens_per_s is None


def test_counts_ollama_leaves_out_are_null_never_zero():
    # Ollama's fields are omitempty: a fully cached prompt's count disappears (ollama/ollama#2068).
    left_out = {k: v for k, v in CACHED.items() if k not in ("prompt_eval_count", "prompt_eval_duration")}
    g = parse_chat(left_out, wall_ms=1950.0, prefill_cached=True)
    assert g.prompt_tokens is None and g.prefill_tokens is None and g.prefill_ms is None
    assert parse_chat({"done": True, "message": {"content": ""}}, 1.0, prefill_cached=False).generated_tokens is None


def test_a_reasoning_model_answer_is_the_content_and_its_thinking_count_unknown():
    body = {**CACHED, "message": {"role": "assistant", "thinking": "6 times 7 is 42.", "content": "42"}}
    g = parse_chat(body, wall_ms=2000.0, prefill_cached=False)
    assert g.text == "42" and g.generated_tokens == 32
    assert g.reasoning_tokens is None  # Ollama's eval_count does not split thinking from answer
    assert g.ttft_ms is None  # the request is not streamed: no first token to time


def test_unfinished_answer_is_an_error():
    with pytest.raises(EngineError, match="unfinished"):
        parse_chat({"done": False}, wall_ms=1.0)


def standin_handler(state: dict):
    """Stand-in for `ollama serve`: the model is absent until pulled, then chat and ps answer. With
    ``state["cache"]`` set, chat answers as Ollama's prompt cache makes it: CACHED where the prompt is the one the
    cache slot holds, UNCACHED otherwise; every chat and generate prompt then fills the slot."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code, body):
            reply_json(self, code, json.dumps(body).encode())

        def do_GET(self):
            if self.path == "/api/version":
                self._send(200, {"version": "0.0.0-standin"})
            elif self.path == "/api/ps":
                self._send(200, json.loads((DATA / "ps.json").read_text()))
            else:
                self._send(404, {"error": "not found"})

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding") == "chunked":  # how the client streams a blob upload
                raw = b""
                while size := int(self.rfile.readline().strip(), 16):
                    raw += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return raw
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self):
            raw = self._body()
            if self.path.startswith("/api/blobs/"):
                state["blobs"][self.path.rsplit("/", 1)[1]] = raw
                self._send(201, {})
                return
            body = json.loads(raw or b"{}")
            state["requests"].append((self.path, body))
            if "record" in state:
                with open(state["record"], "a") as f:
                    f.write(json.dumps([self.path, body]) + "\n")
            if self.path == "/api/create":
                state["pulled"] = True
                self._send(200, {"status": "success"})
            elif self.path == "/api/show":
                if state["pulled"]:
                    self._send(200, {"details": {"quantization_level": "Q8_0"}})
                else:
                    self._send(404, {"error": f"model '{body['model']}' not found"})
            elif self.path == "/api/pull":
                state["pulled"] = True
                self._send(200, {"status": "success"})
            elif self.path == "/api/chat":
                if "cache" not in state:
                    self._send(200, json.loads((DATA / "chat.json").read_text()))
                    return
                prompt = body["messages"][-1]["content"]
                self._send(200, CACHED if state["cache"] == prompt else UNCACHED)
                state["cache"] = prompt
            elif self.path == "/api/generate":
                if "cache" in state:
                    state["cache"] = body["prompt"]
                self._send(200, {**UNCACHED, "response": "x", "prompt_eval_count": 2, "eval_count": 1})

        def log_message(self, *args):
            pass

    return Handler


def new_state(**kw) -> dict:
    return {"pulled": False, "requests": [], "blobs": {}, **kw}


@pytest.fixture
def standin_ollama():
    state = new_state()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), standin_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}", state
    server.shutdown()


def test_backend_pulls_a_missing_model_then_generates_with_the_options(standin_ollama, tmp_path):
    host, state = standin_ollama
    with OllamaBackend("llama3.2:1b", tmp_path / "ollama.log", host=host, num_gpu=81, num_thread=8) as backend:
        g = backend.generate("What is the capital of France?", 32, 0.7, 1234)
        facts = backend.facts()
    assert g.generated_tokens == 298
    paths = [p for p, _ in state["requests"]]
    # A server at OLLAMA_HOST may hold an earlier prompt: its cache is evicted before the first generation too.
    assert paths[:4] == ["/api/show", "/api/pull", "/api/generate", "/api/chat"]
    options = state["requests"][3][1]["options"]
    assert options == {"temperature": 0.7, "seed": 1234, "num_predict": 32, "num_gpu": 81, "num_thread": 8}
    assert facts["engine_build"] == "0.0.0-standin" and facts["vram_fraction"] == pytest.approx(0.5, rel=1e-3)


def test_a_study_gguf_is_imported_as_the_identical_file(standin_ollama, tmp_path, tiny_gguf):
    host, state = standin_ollama
    with OllamaBackend("llmbench/smollm2-135m:Q8_0", tmp_path / "ollama.log", host=host, gguf=tiny_gguf) as backend:
        backend.generate("What is the capital of France?", 32, 0.7, 1234)
    digest = "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert state["blobs"] == {digest: tiny_gguf.read_bytes()}
    paths = [p for p, _ in state["requests"]]
    assert paths[:3] == ["/api/create", "/api/generate", "/api/chat"] and "/api/pull" not in paths
    create = state["requests"][0][1]
    assert create["model"] == "llmbench/smollm2-135m:Q8_0" and create["files"] == {tiny_gguf.name: digest}


def test_repetitions_of_a_job_server_are_measured_uncached(tmp_path, monkeypatch):
    """The job starts `ollama serve` (a stand-in executable on PATH) with one cache slot; every generation after
    the first is preceded by an eviction, so no repetition is served from cache (c06 never comes back)."""
    record, env = tmp_path / "requests.jsonl", tmp_path / "env.json"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ollama"  # the name the backend looks up on PATH
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import http.server, json, os, sys
        sys.path[:0] = [{str(REPO / "tests/engines")!r}, {str(REPO / "tests")!r}, {str(REPO / "workflow/scripts")!r}]
        from test_ollama import new_state, standin_handler
        json.dump({{"OLLAMA_NUM_PARALLEL": os.environ.get("OLLAMA_NUM_PARALLEL")}}, open({str(env)!r}, "w"))
        host, port = os.environ["OLLAMA_HOST"].rsplit(":", 1)
        state = new_state(cache=None, record={str(record)!r})
        http.server.ThreadingHTTPServer((host, int(port)), standin_handler(state)).serve_forever()
    """))
    exe.chmod(0o755)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with OllamaBackend("llama3.1:8b", tmp_path / "ollama.log", start_timeout_s=30, num_ctx=4096) as backend:
        reps = [backend.generate("What is the capital of France?", 32, 0.7, 1234 + i) for i in range(3)]
    assert json.loads(env.read_text()) == {"OLLAMA_NUM_PARALLEL": "1"}
    assert [g.prefill_cached for g in reps] == [False] * 3
    assert [g.prefill_tokens_per_s for g in reps] == [pytest.approx(2410 / 1.3)] * 3
    sent = [json.loads(line) for line in record.read_text().splitlines()]
    asked = [path for path, _ in sent if path in ("/api/chat", "/api/generate")]
    assert asked == ["/api/chat", "/api/generate", "/api/chat", "/api/generate", "/api/chat"]
    evict = next(body for path, body in sent if path == "/api/generate")
    # Raw (no template), one token, and the generations' load options: no reload of the model.
    assert evict["raw"] is True and evict["options"]["num_predict"] == 1 and evict["options"]["num_ctx"] == 4096


def test_a_server_at_ollama_host_is_evicted_but_its_prefill_is_not_vouched_for(standin_ollama, tmp_path):
    """Its number of cache slots is unknown (several would let the eviction miss the prompt's slot): the rows say
    'not known' and give no prefill rate, rather than a rate that may be c06's."""
    host, state = standin_ollama
    state["cache"] = "What is the capital of France?"  # an earlier client of that server asked the same
    with OllamaBackend("llama3.1:8b", tmp_path / "ollama.log", host=host) as backend:
        reps = [backend.generate("What is the capital of France?", 32, 0.7, 1234 + i) for i in range(2)]
    paths = [p for p, _ in state["requests"] if p in ("/api/chat", "/api/generate")]
    assert paths == ["/api/generate", "/api/chat", "/api/generate", "/api/chat"]
    assert [g.prefill_cached for g in reps] == [None, None]
    assert [g.prefill_tokens_per_s for g in reps] == [None, None] and reps[0].prompt_tokens == 2410


def test_missing_gguf_to_import_is_named(standin_ollama, tmp_path):
    host, _ = standin_ollama
    with pytest.raises(EngineError, match="no-such.gguf does not exist"):
        OllamaBackend("m:q", tmp_path / "ollama.log", host=host, gguf=tmp_path / "no-such.gguf").start()


def test_no_server_and_no_binary_means_skipped_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolUnavailable, match="OLLAMA_HOST is unset and no `ollama` binary is on PATH"):
        OllamaBackend("llama3.1:8b", tmp_path / "ollama.log").start()


def test_dead_server_named_in_ollama_host_is_an_error(tmp_path):
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(EngineError, match=f"no Ollama server answers at {host}"):
        OllamaBackend("llama3.1:8b", tmp_path / "ollama.log", host=host, start_timeout_s=2).start()


@pytest.mark.skipif(shutil.which("ollama") is None, reason="no `ollama` binary on PATH")
def test_real_ollama_server_starts_and_answers(tmp_path, monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    backend = OllamaBackend("no-such-model-llmbench-test:latest", tmp_path / "ollama.log")
    with pytest.raises(EngineError, match="could not pull 'no-such-model-llmbench-test:latest'"):
        backend.start()
    assert backend.server.proc is None  # the server the job started was stopped
