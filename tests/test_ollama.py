"""Ollama backend through the official client.

No Ollama binary can be installed from the registries CI uses, so the client is exercised against a stand-in
HTTP server that answers with bodies in Ollama's documented API format (tests/data/ollama/). Where a real
`ollama` is on PATH, test_real_ollama_server_starts_and_answers runs against it.
"""

import hashlib
import http.server
import json
import shutil
import threading

import pytest

from conftest import REPO
from llmbench.backend import BackendError, ToolUnavailable, free_port
from llmbench.ollama_backend import OllamaBackend, parse_chat

DATA = REPO / "tests/data/ollama"


def test_parse_chat_takes_counts_and_nanosecond_durations_from_ollama():
    g = parse_chat(json.loads((DATA / "chat.json").read_text()), wall_ms=5200.0)
    assert (g.prompt_tokens, g.generated_tokens) == (26, 298)
    assert g.prefill_ms == pytest.approx(383.809) and g.decode_ms == pytest.approx(4799.921)
    assert g.decode_tokens_per_s == pytest.approx(298 / 4.799921)
    assert g.finish_reason == "stop" and g.text.endswith("Paris.")


def test_unfinished_answer_is_an_error():
    with pytest.raises(BackendError, match="unfinished"):
        parse_chat({"done": False}, wall_ms=1.0)


@pytest.fixture
def standin_ollama():
    """Stand-in for `ollama serve`: the model is absent until pulled, then chat and ps answer."""
    state = {"pulled": False, "requests": [], "blobs": {}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code, body):
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

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
                self._send(200, json.loads((DATA / "chat.json").read_text()))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
    assert paths[:3] == ["/api/show", "/api/pull", "/api/chat"]
    options = state["requests"][2][1]["options"]
    assert options == {"temperature": 0.7, "seed": 1234, "num_predict": 32, "num_gpu": 81, "num_thread": 8}
    assert facts["engine_build"] == "0.0.0-standin" and facts["vram_fraction"] == pytest.approx(0.5, rel=1e-3)


def test_a_study_gguf_is_imported_as_the_identical_file(standin_ollama, tmp_path, tiny_gguf):
    host, state = standin_ollama
    with OllamaBackend("llmbench/smollm2-135m:Q8_0", tmp_path / "ollama.log", host=host, gguf=tiny_gguf) as backend:
        backend.generate("What is the capital of France?", 32, 0.7, 1234)
    digest = "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert state["blobs"] == {digest: tiny_gguf.read_bytes()}
    paths = [p for p, _ in state["requests"]]
    assert paths[:2] == ["/api/create", "/api/chat"] and "/api/pull" not in paths
    create = state["requests"][0][1]
    assert create["model"] == "llmbench/smollm2-135m:Q8_0" and create["files"] == {tiny_gguf.name: digest}


def test_missing_gguf_to_import_is_named(standin_ollama, tmp_path):
    host, _ = standin_ollama
    with pytest.raises(BackendError, match="no-such.gguf does not exist"):
        OllamaBackend("m:q", tmp_path / "ollama.log", host=host, gguf=tmp_path / "no-such.gguf").start()


def test_no_server_and_no_binary_means_skipped_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolUnavailable, match="OLLAMA_HOST is unset and no `ollama` binary is on PATH"):
        OllamaBackend("llama3.1:8b", tmp_path / "ollama.log").start()


def test_dead_server_named_in_ollama_host_is_an_error(tmp_path):
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(BackendError, match=f"no Ollama server answers at {host}"):
        OllamaBackend("llama3.1:8b", tmp_path / "ollama.log", host=host, start_timeout_s=2).start()


@pytest.mark.skipif(shutil.which("ollama") is None, reason="no `ollama` binary on PATH")
def test_real_ollama_server_starts_and_answers(tmp_path, monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    backend = OllamaBackend("no-such-model-llmbench-test:latest", tmp_path / "ollama.log")
    with pytest.raises(BackendError, match="could not pull 'no-such-model-llmbench-test:latest'"):
        backend.start()
    assert backend.proc is None  # the server the job started was stopped
