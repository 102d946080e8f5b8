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

from conftest import REPO, TRICKLING_SSE_SERVER, StreamReplay
from llmbench.engines.base import Engine, EngineError, EngineFailed, OutOfMemory, StreamCutShort, diagnosis_of
from llmbench.engines.llama_server import (
    LlamaServer,
    LlamaServerSettings,
    parse_chat_response,
    parse_chat_stream,
    server_command,
)

# llama.cpp out-of-memory lines, a stand-in written from the pinned source (see tests/engines/test_llama_log.py).
CUDA_OOM = (REPO / "tests/data/llama_cuda_oom.standin.log").read_text()
CASES = REPO / "tests/data/cases"
REASONING = CASES / "c01_llama_server_reasoning_stream.txt"
STREAM_ERROR = CASES / "c03a_llama_server_stream_error_data.txt"


def test_parse_recorded_real_response():
    body = json.loads((REPO / "tests/data/llama_server_chat_response.json").read_text())
    g = parse_chat_response(body, wall_ms=420.0)
    assert (g.prompt_tokens, g.prefill_tokens, g.generated_tokens) == (42, 42, 8)
    assert (g.prefill_ms, g.decode_ms) == (293.742, 85.966)
    assert g.decode_tokens_per_s == pytest.approx(81.42754112090827)
    assert g.finish_reason == "stop" and "Paris" in g.text


def test_parse_recorded_real_stream_with_ttft():
    lines = (REPO / "tests/data/llama_server_chat_stream.txt").read_bytes().splitlines(keepends=True)
    replay = StreamReplay(lines)  # one line every 100 ms: the first content is line 3, the last line is 30
    g = parse_chat_stream(replay, 0.0, clock=replay.clock)
    assert g.ttft_ms == pytest.approx(300.0) and g.wall_ms == pytest.approx(3000.0)
    assert len(g.token_times_ms) == 12 and g.token_times_ms[0] == g.ttft_ms  # 12 content chunks, timed
    assert (g.prompt_tokens, g.generated_tokens) == (42, 12) and g.finish_reason == "length"
    assert g.text.startswith("The") and g.decode_ms == 255.368


def test_stream_without_timings_is_an_error():
    with pytest.raises(EngineError, match="ended without 'timings'"):
        parse_chat_stream([b'data: {"choices":[{"delta":{"content":"x"}}]}\n', b"data: [DONE]\n"], 0.0)


def test_reasoning_model_ttft_is_the_first_thinking_token_and_the_answer_is_the_content():
    """Case c01: a reasoning model's stream (build b9554), reasoning_content chunks before the answer."""
    replay = StreamReplay.of(REASONING)
    g = parse_chat_stream(replay, 0.0, clock=replay.clock)
    assert g.ttft_ms == pytest.approx(300.0)  # the first token of any kind, not the answer's (900 ms)
    assert (g.generated_tokens, g.prompt_tokens, g.prefill_tokens) == (23, 17, 17)
    assert g.text == "42" and g.finish_reason == "stop"
    # Counts and times from the last chunk's timings, not the first chunk's (this build times every token).
    assert (g.prefill_ms, g.decode_ms) == (251.51, 322.1) and g.wall_ms == pytest.approx(1400.0)
    # llama-server's timings and usage do not count thinking tokens: unknown, neither 0 nor counted chunks.
    assert g.reasoning_tokens is None


def test_thinking_named_reasoning_also_starts_the_clock():
    replay = StreamReplay([x.replace(b'"reasoning_content"', b'"reasoning"') for x in StreamReplay.of(REASONING).lines])
    g = parse_chat_stream(replay, 0.0, clock=replay.clock)
    assert g.ttft_ms == pytest.approx(300.0) and g.text == "42"


def test_a_reasoning_count_the_server_gives_is_kept():
    lines = StreamReplay.of(REASONING).lines
    final = json.loads(lines[10][len(b"data: "):])
    assert final["choices"][0]["finish_reason"] == "stop"
    final["usage"] = {"completion_tokens": 23, "prompt_tokens": 17, "total_tokens": 40,
                      "completion_tokens_details": {"reasoning_tokens": 21}}
    lines[10] = b"data: " + json.dumps(final).encode() + b"\n"
    g = parse_chat_stream(lines, 0.0)
    assert g.reasoning_tokens == 21 and g.generated_tokens == 23


def test_thinking_is_booked_as_decode_energy():
    """The GPU energy split is cut at TTFT: with the first thinking token, thinking is decode, not prefill."""
    from llmbench.devices.meters import EnergyReading
    from llmbench.engines.runs import gpu_columns

    class ConstantPower:  # a stand-in meter: the GPU draws 100 W all through the window
        split_null_reason = None

        def gpu_trace_j(self, t0, t1):
            return 100.0 * (t1 - t0)

    replay = StreamReplay.of(REASONING)
    g = parse_chat_stream(replay, 0.0, clock=replay.clock)
    window = EnergyReading(None, None, None, window_s=1.4, t0=0.0, t1=1.4)
    cols = gpu_columns(ConstantPower(), window, g.ttft_ms, None, None)
    assert cols["gpu_energy_prefill_j"] == pytest.approx(30.0)  # 0.3 s: the prompt alone
    assert cols["gpu_energy_decode_j"] == pytest.approx(110.0)  # thinking and answer


def test_a_reasoning_run_row_has_the_thinking_count_column():
    from llmbench.devices.meters import EnergyMeter
    from llmbench.engines.runs import Prompt, RunPlan, run_generations

    replay = StreamReplay.of(REASONING)
    g = parse_chat_stream(replay, 0.0, clock=replay.clock)

    class Parsed(Engine):  # a stand-in engine answering the parsed case
        tool = "llama-server"

        def generate(self, *args):
            return g

        def peak_rss_bytes(self):
            return None

    plan = RunPlan(tool="llama-server", model="m", quant="Q4_0", split="none", prompts=(Prompt("a", "hi", 64),),
                   repetitions=1, warmup=0, idle_s=0.0, temperature=0.0, seed=1, n_gpu_layers=0, gpus=0, threads=1)
    row = run_generations(Parsed(), plan, EnergyMeter([], ["no sensor here"])).row(0, named=True)
    assert (row["ttft_ms"], row["generated_tokens"], row["output_text"]) == (pytest.approx(300.0), 23, "42")
    assert "reasoning_tokens" in row and row["reasoning_tokens"] is None


ERROR_LINES = {
    "data": STREAM_ERROR.read_bytes().splitlines(keepends=True),
    # Older builds: a bare error line instead of a data event.
    "bare": [*STREAM_ERROR.read_bytes().splitlines(keepends=True)[:4],
             b'error: {"code":500,"message":"Context size has been exceeded.","type":"server_error"}\n'],
}


@pytest.mark.parametrize("form", ["data", "bare"])
def test_an_error_inside_the_stream_is_the_servers_message(form):
    """Case c03a: the stream ends in the server's error, which is the failure's reason, not missing timings."""
    with pytest.raises(EngineError) as e:
        parse_chat_stream(ERROR_LINES[form], 0.0)
    assert not isinstance(e.value, StreamCutShort)  # the server said why: no second try
    msg = str(e.value)
    assert '"Context size has been exceeded."' in msg and "type server_error, code 500" in msg
    found = diagnosis_of(e.value, "llama-server")
    assert found.kind == "context_size_exceeded" and "Context size has been exceeded." in found.reason


@pytest.mark.parametrize(("line", "kind", "words"), [
    # Newer builds' wording of the same failure.
    (b'data: {"error":{"code":400,"message":"the request exceeds the available context size, try increasing it",'
     b'"type":"exceed_context_size_error","n_prompt_tokens":4100,"n_ctx":4096}}',
     "context_size_exceeded", "the request exceeds the available context size"),
    (b'data: {"error":{"code":500,"message":"Failed to parse input at pos 12","type":"server_error"}}',
     "exited", '"Failed to parse input at pos 12" (type server_error, code 500)'),
    (b'error: Failed to decode the batch', "exited", '"Failed to decode the batch"'),
])
def test_other_stream_errors_quote_the_server(line, kind, words):
    lines = [*StreamReplay.of(REASONING).lines[:4], line + b"\n"]
    with pytest.raises(EngineError) as e:
        parse_chat_stream(lines, 0.0)
    assert words in str(e.value) and not isinstance(e.value, StreamCutShort)
    assert diagnosis_of(e.value, "llama-server").kind == kind


@pytest.mark.parametrize(("keep", "missing"), [
    (10, r"its last 'timings', a finish_reason and \[DONE\]"),  # up to the answer's chunk: timings of 22 tokens
    (2, r"its last 'timings', a finish_reason and \[DONE\]"),
])
def test_a_stream_cut_short_is_no_result(keep, missing):
    with pytest.raises(StreamCutShort, match=rf"^llama-server's stream ended without {missing}: it was cut short"):
        parse_chat_stream(StreamReplay.of(REASONING).lines[:keep], 0.0)


def test_a_stream_with_its_last_chunk_but_no_done_is_a_result():
    assert parse_chat_stream(StreamReplay.of(REASONING).lines[:12], 0.0).generated_tokens == 23


def test_a_stream_cut_in_the_middle_of_a_line_says_so():
    lines = StreamReplay.of(REASONING).lines
    with pytest.raises(StreamCutShort, match=r"cut short before its last chunk, in the middle of the line"):
        parse_chat_stream([*lines[:10], lines[10][:80]], 0.0)


def test_a_line_that_is_not_json_mid_stream_is_an_error_not_a_cut():
    lines = StreamReplay.of(REASONING).lines
    with pytest.raises(EngineError, match="not JSON") as e:
        parse_chat_stream([*lines[:4], b"data: {oops\n", *lines[4:]], 0.0)
    assert not isinstance(e.value, StreamCutShort)


def test_cached_prompt_tokens_count_as_prompt_but_not_as_prefill():
    body = json.loads((REPO / "tests/data/llama_server_chat_response.json").read_text())
    body["timings"].update(cache_n=40, prompt_n=2)
    g = parse_chat_response(body, wall_ms=1.0)
    assert (g.prompt_tokens, g.prefill_tokens) == (42, 2)


def test_answer_without_timings_is_an_error():
    with pytest.raises(EngineError, match="without 'timings'"):
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
    with pytest.raises(EngineError, match=r"the GGUF check proves the model file damaged: .*model.gguf is a damaged"):
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
    # The line that says why, not the loader's closing "failed to load model".
    assert "error loading model: tensor 'blk.3.attn_q.weight' has wrong shape" in msg


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
    assert server.server.proc is None or server.server.proc.poll() is not None


def test_missing_binary_says_to_build(tmp_path):
    server = LlamaServer(settings(tmp_path / "nope", tmp_path), tmp_path / "server.log")
    with pytest.raises(EngineError, match="does not exist; build llama.cpp first"):
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
            proc = server.server.proc
            assert proc.poll() is None and server.facts()["engine_build"] == "standin"
            raise RuntimeError("job failed")
    assert proc.poll() is not None and server.server.proc is None


def test_dead_server_during_a_run_is_named(tmp_path):
    exe = standin(tmp_path, HEALTHY)
    with LlamaServer(settings(exe, tmp_path), tmp_path / "server.log") as server:
        server.server.proc.kill()
        server.server.proc.wait()
        with pytest.raises(EngineError, match="llama-server is not running"):
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
            from llmbench.engines.llama_server import LlamaServer, LlamaServerSettings
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as workflow/scripts/bench.py does
            s = LlamaServerSettings(binary=Path({str(exe)!r}), model=Path({str(model)!r}), start_timeout_s=20)
            with LlamaServer(s, Path({str(tmp_path / 'server.log')!r})) as server:
                print(server.server.proc.pid, flush=True)
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


def serving(tmp_path: Path, *answers: bytes) -> Path:
    """A stand-in llama-server that answers its n-th chat request with ``answers[n]`` (the last one thereafter) and
    counts the requests in tmp_path/requests. An answer starting with b"CUT-CHUNK " is sent with chunked transfer
    encoding and the connection closed in the middle of its chunk, as when the server process goes away."""
    paths = []
    for i, answer in enumerate(answers):
        paths.append(str(tmp_path / f"answer{i}"))
        Path(paths[-1]).write_bytes(answer)
    return standin(tmp_path, f"""
        import http.server, json, os, sys
        port = int(sys.argv[sys.argv.index("--port") + 1])
        answers, count = {paths!r}, {str(tmp_path / "requests")!r}
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers()
                self.wfile.write(json.dumps({{"build_info": "standin"}}).encode())
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                n = os.path.getsize(count) if os.path.exists(count) else 0
                open(count, "a").write("x")
                data = open(answers[min(n, len(answers) - 1)], "rb").read()
                if data.startswith(b"CUT-CHUNK "):
                    data = data[len(b"CUT-CHUNK "):]
                    self.protocol_version = "HTTP/1.1"
                    self.send_response(200); self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
                    self.wfile.write(b"%x\\r\\n" % (len(data) + 1000) + data); self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
                self.wfile.write(data)
            def log_message(self, *a): pass
        http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """)


def requests_made(tmp_path: Path) -> int:
    return (tmp_path / "requests").stat().st_size


FULL = REASONING.read_bytes()
CUT = b"".join(REASONING.read_bytes().splitlines(keepends=True)[:10])


@pytest.mark.parametrize("first", [CUT, b"CUT-CHUNK " + CUT], ids=["ended", "connection-closed-mid-chunk"])
def test_a_request_cut_short_runs_once_more(tmp_path, first):
    with LlamaServer(settings(serving(tmp_path, first, FULL), tmp_path), tmp_path / "server.log") as server:
        g = server.generate("What is 17 + 25?", 64, 0.0, 1)
    assert (g.text, g.generated_tokens) == ("42", 23) and requests_made(tmp_path) == 2


def test_a_request_cut_short_twice_fails_naming_the_engine_log(tmp_path):
    log = tmp_path / "server.log"
    with LlamaServer(settings(serving(tmp_path, CUT), tmp_path), log) as server:
        with pytest.raises(StreamCutShort) as e:
            server.generate("What is 17 + 25?", 64, 0.0, 1)
    assert requests_made(tmp_path) == 2
    assert "cut short again when the request ran once more" in str(e.value) and str(log) in str(e.value)


def test_a_streamed_error_is_not_run_again(tmp_path):
    with LlamaServer(settings(serving(tmp_path, STREAM_ERROR.read_bytes()), tmp_path), tmp_path / "server.log") as s:
        with pytest.raises(EngineError, match=r'"Context size has been exceeded\."') as e:
            s.generate("What is 17 + 25?", 64, 0.0, 1)
    assert requests_made(tmp_path) == 1 and not isinstance(e.value, StreamCutShort)
    assert diagnosis_of(e.value, "llama-server", tmp_path / "server.log").kind == "context_size_exceeded"


def test_a_server_killed_by_a_signal_during_a_request_is_named_for_it(tmp_path, tiny_gguf):
    # A stand-in llama-server that is healthy, then dies by SIGILL at the first request's prefill, as the AMX
    # build did on an Intel Xeon (the fault is on a worker thread, at the first batched matrix product).
    exe = standin(tmp_path, """
        import http.server, json, os, signal, sys
        port = int(sys.argv[sys.argv.index("--port") + 1])
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
            def do_POST(self):
                os.kill(os.getpid(), signal.SIGILL)
            def log_message(self, *a): pass
        http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """)
    s = dataclasses.replace(settings(exe, tmp_path), model=tiny_gguf)
    with LlamaServer(s, tmp_path / "server.log") as server, pytest.raises(EngineFailed) as e:
        server.generate("Hello", 4, 0.0, 1)
    d = e.value.diagnosis
    assert (d.kind, d.signal) == ("illegal_instruction", "SIGILL") and "during a request" in str(e.value)


def test_c315_counters_past_a_million_match_within_their_printed_precision(tmp_path):
    # llama-server's /metrics after the warm-up and after the measured requests (the case's two files), served by
    # a stand-in HTTP server on 127.0.0.1 to the real LlamaServer.counters; the rows hold the case's own sums:
    # 983,805 prompt and 4,545 generated tokens. 1.0166e+06 − 32,792 = 983,808: within ±5 of the printed digits.
    import http.server
    import threading

    from llmbench.engines.runs import counter_deltas, level_columns

    pages = [(CASES / f"c315_llama_server_metrics_{w}.txt").read_bytes() for w in ("before", "after")]

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.pop(0)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        server = LlamaServer(settings(tmp_path / "llama-server", tmp_path), tmp_path / "server.log")
        server.server.port = httpd.server_address[1]  # where a started server would listen
        before, after = server.counters(), server.counters()
    finally:
        httpd.shutdown()
    assert after["prompt_tokens"] == 1_016_600 and after["precision"] == {
        "prompt_tokens": 5.0, "generated_tokens": 0.0, "decode_calls": 0.0}
    assert before["precision"]["prompt_tokens"] == 0.0  # 32792 is printed whole
    counted = counter_deltas(before, after, "llama-server")
    rows = [{"prefill_tokens": 983_805 - 4_000, "generated_tokens": 4_000}, {"prefill_tokens": 4_000,
                                                                             "generated_tokens": 545}]
    from llmbench.devices.meters import EnergyReading

    check = level_columns(EnergyReading(None, None, "not measured", 1.0), None, counted, rows)["server_counts_check"]
    assert check.startswith("match: 4545 generated and 983805 prompt tokens, server and client")
    assert "printed precision: prompt tokens ±5" in check
    # Beyond the printed precision it is still a mismatch, and says the precision it allowed.
    rows[0]["prefill_tokens"] -= 20
    check = level_columns(EnergyReading(None, None, "not measured", 1.0), None, counted, rows)["server_counts_check"]
    assert check.startswith("mismatch: the server counted 4545 generated and 983808.0 prompt tokens")
    assert "beyond the server counters' printed precision: prompt tokens ±5" in check


@pytest.mark.parametrize(("token", "precision"), [("32792", 0.0), ("1.0166e+06", 5.0), ("1.90511e+06", 5.0),
                                                  ("1.23457e+07", 50.0), ("999999", 0.0), ("116.248", 0.0005),
                                                  ("0", 0.0)])
def test_printed_precision_is_half_the_sixth_significant_digit(token, precision):
    from llmbench.engines.process import printed_precision

    found = printed_precision(f"# TYPE x counter\nx {token}\n", {"x": "x"}, 6)
    assert found["x"] == pytest.approx(precision)


# A stand-in llama-server whose answer trickles: one byte of its SSE stream every 0.2 s for 15 s, then it closes
# the connection unfinished. A per-read timeout never fires on it; only a deadline for the whole response does.


def test_a_request_that_trickles_is_given_up_at_its_deadline(tmp_path):
    import time

    from llmbench.engines.openai_stream import RequestTimedOut

    log = tmp_path / "server.log"
    with LlamaServer(settings(standin(tmp_path, TRICKLING_SSE_SERVER), tmp_path, request_timeout_s=1.0), log) as server:
        start = time.monotonic()
        with pytest.raises(RequestTimedOut) as e:
            server.generate("hi", 4, 0.0, 1)
        assert time.monotonic() - start < 10  # the stand-in trickles for 15 s
    assert str(e.value).startswith("the request to llama-server was given up: it did not finish within its limit "
                                   "of 1 s (bench.request_timeout_s")
    assert str(log) in str(e.value) and diagnosis_of(e.value, "llama-server", log).kind == "timed_out"
