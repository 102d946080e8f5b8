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
import logging
import os
import shutil
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from conftest import REPO, bench_job, reply_json, trickle, write_tiny_gguf
from llmbench.devices.meters import EnergyMeter
from llmbench.engines.base import EngineError, ToolUnavailable
from llmbench.engines.ollama import Ollama, file_type_name, loaded_model, parse_chat
from llmbench.engines.process import free_port
from llmbench.engines.runs import Prompt, RunPlan, loaded_quant_note, run_generations
from llmbench.study.measure import bench

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


# Ollama's own names of the file types the stand-in's imports use (its FileType.String(), fs/ggml/type.go): the
# stand-in answers quantization_level as Ollama does, apart from gguf's table the backend reads.
OLLAMA_FILE_TYPE_NAMES = {1: "F16", 2: "Q4_0", 7: "Q8_0", 15: "Q4_K_M"}
# A pulled library model's /api/show (the default of the stand-in; c312's JSON where a test sets state["show"]).
PULLED_SHOW = {"modelfile": "FROM /usr/share/ollama/.ollama/models/blobs/sha256-" + "ab" * 32 + "\n",
               "details": {"format": "gguf", "quantization_level": "Q8_0"}, "model_info": {"general.file_type": 7}}


def imported_show(blob: bytes, digest: str) -> dict:
    """/api/show of a model made FROM an uploaded GGUF blob, as Ollama answers it: model_info holds the blob's
    header keys (general.file_type where the file states one), the Modelfile names the blob by its sha256."""
    import gguf

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(blob)
        f.flush()
        field = gguf.GGUFReader(f.name).fields.get("general.file_type")
        info = {"general.file_type": int(field.contents())} if field is not None else {}
    level = OLLAMA_FILE_TYPE_NAMES.get(info.get("general.file_type"), "unknown")
    return {"modelfile": f"FROM /root/.ollama/models/blobs/{digest.replace(':', '-')}\n",
            "details": {"format": "gguf", "quantization_level": level}, "model_info": info}


def standin_handler(state: dict):
    """Stand-in for `ollama serve`: the model is absent until pulled, then chat and ps answer. With
    ``state["cache"]`` set, chat answers as Ollama's prompt cache makes it: CACHED where the prompt is the one the
    cache slot holds, UNCACHED otherwise; every chat and generate prompt then fills the slot. /api/show answers
    ``state["show"]`` for a pulled model (PULLED_SHOW by default) and what the uploaded blob holds for a created one;
    /api/tags ``state["tags"]``; /api/chat ``state["chat"]`` where set."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code, body):
            reply_json(self, code, json.dumps(body).encode())

        def do_GET(self):
            if self.path == "/api/version":
                self._send(200, {"version": "0.0.0-standin"})
            elif self.path == "/api/ps":
                self._send(200, json.loads((DATA / "ps.json").read_text()))
            elif self.path == "/api/tags":
                self._send(200, {"models": state.get("tags", [])})
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
                digest = next(iter(body["files"].values()))
                state["show"] = imported_show(state["blobs"][digest], digest)
                self._send(200, {"status": "success"})
            elif self.path == "/api/show":
                if state["pulled"] and not state.get("show_fails"):
                    self._send(200, state.get("show", PULLED_SHOW))
                else:
                    self._send(404, {"error": f"model '{body['model']}' not found"})
            elif self.path == "/api/pull":
                state["pulled"] = True
                self._send(200, {"status": "success"})
            elif self.path == "/api/chat":
                if state.get("trickle"):
                    self._trickle(json.dumps(json.loads((DATA / "chat.json").read_text())).encode())
                    return
                if "cache" not in state:
                    self._send(200, state.get("chat") or json.loads((DATA / "chat.json").read_text()))
                    return
                prompt = body["messages"][-1]["content"]
                self._send(200, CACHED if state["cache"] == prompt else UNCACHED)
                state["cache"] = prompt
            elif self.path == "/api/generate":
                if "cache" in state:
                    state["cache"] = body["prompt"]
                self._send(200, {**UNCACHED, "response": "x", "prompt_eval_count": 2, "eval_count": 1})

        def _trickle(self, raw: bytes) -> None:
            """The answer one byte every 0.2 s for 15 s, then the connection closed with it unfinished."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            trickle(self.wfile, raw)
            self.close_connection = True

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
    with Ollama("llama3.2:1b", tmp_path / "ollama.log", host=host, num_gpu=81, num_thread=8) as backend:
        g = backend.generate("What is the capital of France?", 32, 0.7, 1234)
        facts = backend.facts()
    assert g.generated_tokens == 298
    paths = [p for p, _ in state["requests"]]
    # A server at OLLAMA_HOST may hold an earlier prompt: its cache is evicted before the first generation too.
    # After the pull, /api/show says what the tag holds (its quant and weights: the rows' label check).
    assert paths[:5] == ["/api/show", "/api/pull", "/api/show", "/api/generate", "/api/chat"]
    options = state["requests"][4][1]["options"]
    assert options == {"temperature": 0.7, "seed": 1234, "num_predict": 32, "num_gpu": 81, "num_thread": 8}
    assert facts["engine_build"] == "0.0.0-standin" and facts["vram_fraction"] == pytest.approx(0.5, rel=1e-3)


def test_an_answer_that_trickles_is_given_up_at_its_deadline(standin_ollama, tmp_path):
    """Ollama's client times each read (httpx): an answer trickling a byte every 0.2 s would never time out. The
    deadline is the whole answer's, bench.request_timeout_s (1 s here) from the request's start."""
    from llmbench.engines.openai_stream import RequestTimedOut

    host, state = standin_ollama
    log = tmp_path / "ollama.log"
    with Ollama("llama3.2:1b", log, host=host, request_timeout_s=1.0) as backend:
        assert backend.generate("hi", 8, 0.0, 1).generated_tokens == 298  # a whole answer: nothing cut
        state["trickle"] = True
        start = time.monotonic()
        with pytest.raises(RequestTimedOut) as e:
            backend.generate("What is the capital of France?", 32, 0.7, 1234)
        assert time.monotonic() - start < 10  # the stand-in trickles for 15 s
    assert e.value.diagnosis.kind == "timed_out" and str(log) in str(e.value)
    assert str(e.value).startswith("the request to Ollama was given up: it did not finish within its limit of 1 s "
                                   "(bench.request_timeout_s")


def test_a_study_gguf_is_imported_as_the_identical_file(standin_ollama, tmp_path, tiny_gguf):
    host, state = standin_ollama
    with Ollama("llmbench/smollm2-135m:Q8_0", tmp_path / "ollama.log", host=host, gguf=tiny_gguf) as backend:
        backend.generate("What is the capital of France?", 32, 0.7, 1234)
    digest = "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert state["blobs"] == {digest: tiny_gguf.read_bytes()}
    paths = [p for p, _ in state["requests"]]
    assert paths[:4] == ["/api/create", "/api/show", "/api/generate", "/api/chat"] and "/api/pull" not in paths
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
    with Ollama("llama3.1:8b", tmp_path / "ollama.log", start_timeout_s=30, num_ctx=4096) as backend:
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
    with Ollama("llama3.1:8b", tmp_path / "ollama.log", host=host) as backend:
        reps = [backend.generate("What is the capital of France?", 32, 0.7, 1234 + i) for i in range(2)]
    paths = [p for p, _ in state["requests"] if p in ("/api/chat", "/api/generate")]
    assert paths == ["/api/generate", "/api/chat", "/api/generate", "/api/chat"]
    assert [g.prefill_cached for g in reps] == [None, None]
    assert [g.prefill_tokens_per_s for g in reps] == [None, None] and reps[0].prompt_tokens == 2410


CASES = REPO / "tests/data/cases"
# c312: `llama3.1:8b` as Ollama's library serves it today (/api/show), its /api/tags entry of 2026 (the tag was
# re-pointed from a Q4_0 file to a Q4_K_M one, ollama/ollama#1543) and a final /api/chat object.
C312_SHOW = json.loads((CASES / "c312_ollama_show_llama31_8b.json").read_text())
C312_TAGS = [json.loads(line) for line in (CASES / "c312_ollama_tag_drift.txt").read_text().splitlines()
             if line.startswith("{")]
C312_TODAY = next(t for t in C312_TAGS if t.get("modified_at", "").startswith("2026"))
C312_CHAT = json.loads((CASES / "c312_ollama_chat_final.json").read_text())
C312_WEIGHTS = "sha256:667b0c1932bc6ffc593ed1d03f895bf2dc8dc6df21db3042284a6f4416b06a29"
C312_MANIFEST = "sha256:46e0c10c039e019119339687c3c1757cc81b9da49709a3b3924863ba87ca666e"


def test_what_a_library_tag_holds_is_read_from_show_and_tags():
    m = loaded_model("llama3.1:8b", C312_SHOW, {"models": C312_TAGS[1:]})
    assert (m.quant, m.file_type, m.quantization_level) == ("Q4_K_M", 15, "Q4_K_M")
    assert m.weights_digest == C312_WEIGHTS and m.manifest_digest == C312_MANIFEST
    assert "general.file_type 15 = MOSTLY_Q4_K_M" in m.described()
    # The article's pull of 2024 lists the same name under another manifest: the digest tells the files apart.
    assert loaded_model("llama3.1:8b", C312_SHOW, {"models": C312_TAGS[:1]}).manifest_digest != C312_MANIFEST


def test_the_file_type_number_is_read_through_gguf_not_ollamas_name():
    assert [file_type_name(n) for n in (15, 2, 7, 0, 1, 15 | 1024)] == ["Q4_K_M", "Q4_0", "Q8_0", "F32", "F16",
                                                                        "Q4_K_M"]
    assert file_type_name(None) is None and file_type_name(100_000) is None
    # Without a number, Ollama's own name stands in; its "unknown" is no type.
    no_number = {"details": {"quantization_level": "Q5_K_M"}, "model_info": {}}
    assert loaded_model("m", no_number).quant == "Q5_K_M"
    assert loaded_model("m", {"details": {"quantization_level": "unknown"}, "model_info": {}}).quant is None


def c312_plan(quant: str) -> RunPlan:
    return RunPlan(tool="ollama", model="ollama-llama3.1-8b", quant=quant, split="none",
                   prompts=(Prompt("p", "What is 6 times 7? Answer with the number.", 8),), repetitions=1, warmup=0,
                   idle_s=0.0, temperature=0.0, seed=1, n_gpu_layers=None, gpus=0, threads=2)


def c312_server(state: dict) -> None:
    state.update(pulled=True, show=C312_SHOW, tags=[C312_TODAY], chat=C312_CHAT)


def test_a_tag_that_moved_marks_its_rows_with_what_ran_and_its_digest(standin_ollama, tmp_path):
    """c312 through the real backend and the real row building: the config says Q4_0 (the article's label), the
    tag holds Q4_K_M today; the rows keep the config's label, marked (quant_label_note, shown as ≠ in the tables)
    with the real type, and name the weights the engine loaded."""
    host, state = standin_ollama
    c312_server(state)
    with Ollama("llama3.1:8b", tmp_path / "ollama.log", host=host) as backend:
        rows = run_generations(backend, c312_plan("Q4_0"), EnergyMeter([], ["no sensor here"]), backend.facts())
    row = rows.row(0, named=True)
    assert (row["status"], row["quant"], row["output_text"], row["generated_tokens"]) == ("ok", "Q4_0", "42", 3)
    note = row["quant_label_note"]
    assert note.startswith("Q4_0 is not what ran: Ollama's llama3.1:8b is Q4_K_M by its /api/show")
    assert "general.file_type 15 = MOSTLY_Q4_K_M" in note and "ollama/ollama#1543" in note
    assert "label it Q4_K_M" in note
    assert row["model_digest"] == C312_WEIGHTS
    facts = json.loads(row["engine_facts"])
    assert facts["manifest_digest"] == C312_MANIFEST and facts["loaded_quant"] == "Q4_K_M"


def test_a_tag_labelled_as_what_it_holds_is_not_marked(standin_ollama, tmp_path):
    host, state = standin_ollama
    c312_server(state)
    with Ollama("llama3.1:8b", tmp_path / "ollama.log", host=host) as backend:
        rows = run_generations(backend, c312_plan("Q4_K_M"), EnergyMeter([], ["no sensor here"]), backend.facts())
    assert rows["quant_label_note"].to_list() == [None] and rows["model_digest"].to_list() == [C312_WEIGHTS]
    assert loaded_quant_note("Q4_K", backend.facts()) is None  # the tensor type Q4_K_M is named after


def test_the_bench_job_keeps_the_tags_mark_beside_the_files_mix(standin_ollama, tmp_path, monkeypatch):
    """The whole job (llmbench.study.measure.bench): a library tag has no file of the study, so no tensor mix; the
    engine's mark must survive the step that writes the file's mix and note."""
    host, state = standin_ollama
    c312_server(state)
    monkeypatch.setenv("OLLAMA_HOST", host)
    job = bench_job(tmp_path, "ollama", None, tag="llama3.1:8b", quant="Q4_0", n_gpu_layers=None)
    rows = bench(job, tmp_path / "run.parquet", tmp_path / "provenance.json", REPO, logging.getLogger("test"))
    row = rows.row(0, named=True)
    assert row["status"] == "ok" and row["tensor_mix"] is None
    assert row["quant_label_note"].startswith("Q4_0 is not what ran") and row["model_digest"] == C312_WEIGHTS
    # Provenance names what the engine loaded: the tag, its quant by /api/show and both digests.
    (model,) = json.loads((tmp_path / "provenance.json").read_text())["models"]
    assert model["source"] == {"kind": "ollama", "tag": "llama3.1:8b"}
    assert model["engine_loaded"]["loaded_quant"] == "Q4_K_M" and model["engine_loaded"]["model_digest"] == C312_WEIGHTS
    assert model["engine_loaded"]["manifest_digest"]


@pytest.mark.parametrize(("label", "file_type"), [("Q8_0", 7), ("Q4_0", 2), ("F16", 1)])
def test_a_study_gguf_imported_into_ollama_agrees_with_its_label(standin_ollama, tmp_path, monkeypatch, label,
                                                                 file_type):
    """The default study imports its own GGUF (made by llama-quantize, which writes general.file_type): the whole
    job's rows carry no mark, and the digest is the file's own sha256."""
    host, _ = standin_ollama
    model = write_tiny_gguf(tmp_path / f"{label}.gguf", metadata=lambda w: w.add_file_type(file_type))
    monkeypatch.setenv("OLLAMA_HOST", host)
    job = bench_job(tmp_path, "ollama", model, tag=f"llmbench-m:{label}", quant=label, n_gpu_layers=None)
    rows = bench(job, tmp_path / "run.parquet", tmp_path / "provenance.json", REPO, logging.getLogger("test"))
    row = rows.row(0, named=True)
    assert row["status"] == "ok" and row["quant_label_note"] is None
    assert row["model_digest"] == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert json.loads(row["engine_facts"])["loaded_quant"] == label
    (record,) = json.loads((tmp_path / "provenance.json").read_text())["models"]
    assert record["engine_loaded"]["model_digest"] == row["model_digest"]  # beside the file's own record


def test_an_imported_gguf_that_states_no_file_type_is_not_marked(standin_ollama, tmp_path, tiny_gguf):
    host, _ = standin_ollama
    with Ollama("llmbench-m:Q8_0", tmp_path / "ollama.log", host=host, gguf=tiny_gguf) as backend:
        facts = backend.facts()
    assert facts["loaded_quant"] is None and facts["quantization_level"] == "unknown"
    assert loaded_quant_note("Q8_0", facts) is None  # not known is not "different"


def test_an_imported_gguf_of_another_type_is_marked_naming_the_file(standin_ollama, tmp_path):
    host, _ = standin_ollama
    model = write_tiny_gguf(tmp_path / "m.gguf", metadata=lambda w: w.add_file_type(2))  # Q4_0
    with Ollama("llmbench-m:Q8_0", tmp_path / "ollama.log", host=host, gguf=model) as backend:
        note = loaded_quant_note("Q8_0", backend.facts())
    assert note.startswith("Q8_0 is not what ran: Ollama's llmbench-m:Q8_0, imported from m.gguf, is Q4_0")
    assert "label the file Q4_0" in note


def test_a_server_that_cannot_show_the_model_still_measures_and_says_the_label_is_unchecked(standin_ollama, tmp_path):
    host, state = standin_ollama
    state["show_fails"] = True  # /api/show answers 404 even after the pull
    with Ollama("llama3.1:8b", tmp_path / "ollama.log", host=host) as backend:
        rows = run_generations(backend, c312_plan("Q4_0"), EnergyMeter([], ["no sensor here"]), backend.facts())
    row = rows.row(0, named=True)
    assert row["status"] == "ok" and row["quant_label_note"] is None and row["model_digest"] is None
    assert "/api/show of 'llama3.1:8b' answered HTTP 404" in json.loads(row["engine_facts"])["loaded_quant_unknown"]


def test_missing_gguf_to_import_is_named(standin_ollama, tmp_path):
    host, _ = standin_ollama
    with pytest.raises(EngineError, match="no-such.gguf does not exist"):
        Ollama("m:q", tmp_path / "ollama.log", host=host, gguf=tmp_path / "no-such.gguf").start()


def test_no_server_and_no_binary_means_skipped_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolUnavailable, match="OLLAMA_HOST is unset and no `ollama` binary is on PATH"):
        Ollama("llama3.1:8b", tmp_path / "ollama.log").start()


def test_dead_server_named_in_ollama_host_is_an_error(tmp_path):
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(EngineError, match=f"no Ollama server answers at {host}"):
        Ollama("llama3.1:8b", tmp_path / "ollama.log", host=host, start_timeout_s=2).start()


@pytest.mark.skipif(shutil.which("ollama") is None, reason="no `ollama` binary on PATH")
def test_real_ollama_server_starts_and_answers(tmp_path, monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    backend = Ollama("no-such-model-llmbench-test:latest", tmp_path / "ollama.log")
    with pytest.raises(EngineError, match="could not pull 'no-such-model-llmbench-test:latest'"):
        backend.start()
    assert backend.server.proc is None  # the server the job started was stopped
