"""Every wait has a limit: a llama.cpp tool run is killed at its wall-clock limit (derived from its work, or
bench.tool_timeout_s) and a request is given up at its deadline for the whole response (bench.request_timeout_s),
however slowly the bytes trickle.

The tools here are stand-in executables (small Python scripts, named as such) put where the job expects the
llama.cpp binary, that hang; the engine is a stand-in HTTP server on 127.0.0.1 that trickles one byte of its SSE
answer every 0.2 s. Tests assert what happened and that it ended well before the stand-in would have.
"""

import dataclasses
import http.server
import json
import logging
import math
import os
import signal
import socketserver
import struct
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import bench_job, snakemake_standin, trickle, write_tiny_gguf
from llmbench.core.logs import (
    DECODE_BYTES_PER_S,
    LOAD_BYTES_PER_S,
    PREFILL_BYTES_PER_S,
    QUANTIZE_BYTES_PER_S,
    TOOL_LIMIT_FLOOR_S,
    model_bytes,
    run_logged,
    tool_limit,
)
from llmbench.devices.meters import EnergyMeter
from llmbench.engines.base import Engine, EngineFailed, Generation, diagnosis_of
from llmbench.engines.batched_bench import BatchedBenchSettings, run_batched_bench
from llmbench.engines.diagnosis import TIMED_OUT
from llmbench.engines.llama_bench import LlamaBenchSettings
from llmbench.engines.llama_server import parse_chat_stream
from llmbench.engines.openai_stream import RequestTimedOut, post_stream, request_timed_out
from llmbench.engines.perplexity import (
    PerplexityTimedOut,
    base_file_tokens,
    base_limit,
    kld_command,
    kld_limit,
    parse_kld_summary,
    run_and_parse,
)
from llmbench.engines.runs import Prompt, RunPlan, run_generations
from llmbench.study.measure import measure

# A stand-in llama.cpp tool that hangs: it writes its pid, starts a child that holds its output open, and sleeps.
HANGS = """
    import os, subprocess, sys, time
    open(os.environ.get("STANDIN_PID_FILE", os.devnull), "w").write(str(os.getpid()))
    print("llama_model_load: loading model", file=sys.stderr, flush=True)
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    time.sleep(3600)
"""
GB = 1_000_000_000


def standin(path: Path, body: str) -> Path:
    """Write a stand-in executable for a llama.cpp tool at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- the derived limits -----------------------------------------------------------------------------------------


def test_a_limit_is_the_floor_plus_load_plus_every_token_at_the_floor_rates():
    size = 4_600_000_000  # an 8B model at Q4_K_M
    limit = tool_limit(size, prompt_tokens=512, generated_tokens=128)
    expected = 300 + size / 50e6 + 512 * size / 4e9 + 128 * size / 1e9  # 300 + 92 + 588.8 + 588.8
    assert limit.seconds == math.ceil(expected) == 1570
    assert "derived from the run's work" in limit.source and "bench.tool_timeout_s" in limit.source
    assert "512 prompt tokens" in limit.source and "128 generated tokens" in limit.source


def test_the_floor_rates_are_the_documented_ones():
    assert (TOOL_LIMIT_FLOOR_S, LOAD_BYTES_PER_S, PREFILL_BYTES_PER_S, DECODE_BYTES_PER_S, QUANTIZE_BYTES_PER_S) == (
        300.0, 50e6, 4e9, 1e9, 2e6)


def test_no_limit_is_shorter_than_five_minutes():
    assert tool_limit(0).seconds == 300 and tool_limit(1000, prompt_tokens=10).seconds == 301


def test_the_limit_leaves_a_healthy_run_on_a_slow_two_core_cpu_many_times_its_time():
    # A 2-core CPU with an 8B Q4 model (4.6 GB): about 10 prompt and 2 generated tokens/s (llama.cpp's CPU
    # figures; an assumption of this test, the reason for the floor rates).
    s = LlamaBenchSettings(binary=Path("llama-bench"), model=Path("m.gguf"), n_prompt=512, n_gen=128, repetitions=5)
    size = 4_600_000_000
    runs = s.repetitions + 1  # with llama-bench's warm-up
    healthy_s = runs * (512 / 10 + 128 / 2)
    limit = tool_limit(size, prompt_tokens=runs * 512, generated_tokens=runs * 128)
    assert limit.seconds > 5 * healthy_s


def test_an_override_replaces_the_derived_limit_and_says_so():
    limit = tool_limit(100 * GB, prompt_tokens=10**6, override_s=42)
    assert (limit.seconds, limit.source) == (42.0, "bench.tool_timeout_s in the config")
    with pytest.raises(ValueError, match="bench.tool_timeout_s is 0: give a number of seconds above 0"):
        tool_limit(1, override_s=0)


def test_llama_bench_limits_count_every_test_repetition_warm_up_and_depth(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 1000)
    s = LlamaBenchSettings(binary=tmp_path / "b", model=model, n_prompt=64, n_gen=16, repetitions=3, depth=100)
    # Measured: 3 repetitions and a warm-up; the pp test evaluates depth + 64, the tg test depth and decodes 16.
    assert s.limit() == tool_limit(1000, prompt_tokens=4 * (2 * 100 + 64), generated_tokens=4 * 16)
    assert s.limit(runs=1) == tool_limit(1000, prompt_tokens=2 * 100 + 64, generated_tokens=16)  # the probe
    assert dataclasses.replace(s, timeout_s=7).limit().seconds == 7


def test_without_an_override_each_llama_bench_run_gets_its_derived_limit(tmp_path, monkeypatch):
    from llmbench.engines import llama_bench

    exe = standin(tmp_path / "standin-llama-bench", f"""
        import sys
        sys.stdout.write(open({str(Path(__file__).parent / "data/llama_bench.jsonl")!r}).read())
    """)
    model = tmp_path / "m.gguf"
    with open(model, "wb") as f:  # a sparse stand-in of an 8B Q4 file's size: only its size is read
        f.truncate(4_600_000_000)
    s = LlamaBenchSettings(binary=exe, model=model, n_prompt=32, n_gen=16, repetitions=3)
    given = []

    def recording(cmd, log_path, **kw):
        given.append(kw["timeout_s"])
        return run_logged(cmd, log_path, **kw)

    monkeypatch.setattr(llama_bench, "run_logged", recording)
    plan = RunPlan("llama-bench", "m", "Q4_0", "none", (), 3, 0, 0.0, 0.7, 1, 0, 0, 2)
    llama_bench.run_llama_bench(s, plan, tmp_path / "bench.engine.log")
    assert given == [s.limit(runs=1).seconds, s.limit().seconds]  # the probe's, then the measured run's
    assert TOOL_LIMIT_FLOOR_S < given[0] < given[1]


def test_a_batched_bench_limit_counts_every_sequence_of_every_test(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 1000)
    s = BatchedBenchSettings(binary=tmp_path / "b", model=model, batch=4, n_prompt=32, n_gen=8, depth=10,
                             repetitions=2, warmup=1)
    tests = 1 + 2 + 1  # warm-up, measured, trailing
    assert s.limit() == tool_limit(1000, prompt_tokens=tests * 4 * 42, generated_tokens=tests * 4 * 8)


def test_a_split_model_counts_every_shard(tmp_path):
    for k, size in enumerate((300, 200, 100), start=1):
        (tmp_path / f"m-{k:05d}-of-00003.gguf").write_bytes(b"x" * size)
    (tmp_path / "m-00001-of-00004.gguf").write_bytes(b"x" * 999)  # another set: not counted
    assert model_bytes(tmp_path / "m-00001-of-00003.gguf") == 600
    assert model_bytes(tmp_path / "absent.gguf") == 0 and model_bytes(None) == 0


def base_file(path: Path, n_ctx: int, n_vocab: int, n_chunk: int) -> Path:
    """A stand-in KLD base file: llama-perplexity's header (tools/perplexity/perplexity.cpp), no logits."""
    path.write_bytes(struct.pack("=8sIii", b"_logits_", n_ctx, n_vocab, n_chunk))
    return path


def test_perplexity_limits_count_the_tokens_evaluated(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 1000)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a" * 5000)
    # The reference: chunks × ctx, or the whole corpus counted as a token per byte (and one context more).
    assert base_limit(model, corpus, 256, 4) == tool_limit(1000, prompt_tokens=1024)
    assert base_limit(model, corpus, 256, None) == tool_limit(1000, prompt_tokens=5000 + 256)
    # A quant: its reference's tokens, from the base file's header, at most chunks × ctx.
    base = base_file(tmp_path / "kld-base.bin", 256, 49152, 18)
    assert base_file_tokens(base) == 256 * 18
    assert kld_limit(model, base, 256, None) == tool_limit(1000, prompt_tokens=256 * 18)
    assert kld_limit(model, base, 256, 2) == tool_limit(1000, prompt_tokens=512)
    (tmp_path / "not-a-base.bin").write_bytes(b"nothing")
    assert base_file_tokens(tmp_path / "not-a-base.bin") is None
    assert kld_limit(model, base, 256, None, override_s=3).seconds == 3


# --- a tool that hangs ------------------------------------------------------------------------------------------


def test_a_hanging_llama_bench_is_killed_at_its_limit_and_ends_in_a_failed_row(tmp_path, tiny_gguf, monkeypatch):
    pid_file = tmp_path / "standin.pid"
    monkeypatch.setenv("STANDIN_PID_FILE", str(pid_file))
    exe = standin(tmp_path / "standin-llama-bench", HANGS)
    job = bench_job(tmp_path, "llama-bench", tiny_gguf, exe=exe)
    job = dataclasses.replace(job, params={**job.params, "engine": {**job.params["engine"], "tool_timeout_s": 1}})
    start = time.monotonic()
    rows = measure(job, [], logging.getLogger("test"))
    assert time.monotonic() - start < 30  # the stand-in sleeps an hour
    row = rows.row(0, named=True)
    assert (rows.height, row["status"], row["failure_kind"]) == (1, "failed", TIMED_OUT)
    reason = row["status_reason"]
    assert reason.startswith("llama-bench was killed: it did not finish within its limit of 1 s "
                             "(bench.tool_timeout_s in the config)")
    assert "hung" in reason and "raise bench.tool_timeout_s in the config" in reason and "engine log" in reason
    assert gone(int(pid_file.read_text()))
    probe_log = job.engine_log.with_suffix(".probe.log").read_text()
    assert "still running after 1 s, its limit: killed" in probe_log


def test_a_hanging_batched_bench_is_killed_naming_its_limit(tmp_path, tiny_gguf):
    exe = standin(tmp_path / "standin-llama-batched-bench", HANGS)
    s = BatchedBenchSettings(binary=exe, model=tiny_gguf, batch=2, timeout_s=1)
    plan = RunPlan("llama-batched-bench", "m", "Q4_0", "none", (), 1, 0, 0.0, 0.7, 1, 0, 0, 2)
    start = time.monotonic()
    with pytest.raises(EngineFailed) as e:
        run_batched_bench(s, plan, tmp_path / "bench.engine.log")
    assert time.monotonic() - start < 30
    assert e.value.diagnosis.kind == TIMED_OUT and "llama-batched-bench was killed" in str(e.value)
    assert "within its limit of 1 s (bench.tool_timeout_s in the config)" in str(e.value)


def test_a_hanging_llama_perplexity_is_killed_and_not_run_again(tmp_path, tiny_gguf):
    exe = standin(tmp_path / "standin-llama-perplexity", HANGS)
    base = base_file(tmp_path / "kld-base.bin", 256, 64, 2)
    log = tmp_path / "kld.perplexity.log"
    start = time.monotonic()
    with pytest.raises(PerplexityTimedOut, match=r"^llama-perplexity was killed: it did not finish within its "
                                                 r"limit of 1 s \(bench.tool_timeout_s in the config\)"):
        run_and_parse(kld_command(exe, tiny_gguf, base, 256, 1, None), log, parse_kld_summary,
                      kld_limit(tiny_gguf, base, 256, None, override_s=1))
    assert time.monotonic() - start < 30 and log.read_text().count("$ ") == 1


def test_a_kld_job_whose_tool_hangs_writes_a_failed_row_naming_the_limit(tmp_path, tiny_gguf):
    sys.path.insert(0, str(Path(__file__).parents[1] / "workflow/scripts"))
    import kld

    exe = standin(tmp_path / "standin-llama-perplexity", HANGS)
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"status": "ok", "reference_quant": "F16", "corpus_sha256": "ab"}))
    smk = snakemake_standin(
        tmp_path, wildcards={"model": "m", "quant": "Q4_0"},
        input={"model": str(tiny_gguf), "base": str(base_file(tmp_path / "kld-base.bin", 256, 64, 2)),
               "reference": str(reference), "perplexity": str(exe)},
        params={"ctx_size": 256, "chunks": None, "tool_timeout_s": 1})
    smk["output"] = [str(tmp_path / "kld.parquet")]
    kld.main(smk)
    row = pl.read_parquet(tmp_path / "kld.parquet").row(0, named=True)
    assert row["status"] == "failed" and row["kld_mean"] is None
    assert "llama-perplexity was killed: it did not finish within its limit of 1 s" in row["kld_null_reason"]


def test_a_hanging_llama_quantize_fails_the_job_naming_its_limit_and_leaves_no_file(tmp_path):
    from llmbench.toolchain.quantize import derive_quant

    src = write_tiny_gguf(tmp_path / "F16.gguf")
    record = tmp_path / "F16.json"
    record.write_text("{}")
    exe = standin(tmp_path / "standin-llama-quantize", HANGS)
    dest = tmp_path / "Q4_0.gguf"
    with open(tmp_path / "quantize.log", "a") as log, pytest.raises(RuntimeError) as e:
        derive_quant(exe, src, record, dest, "Q4_0", 1, False, log, timeout_s=1)
    assert str(e.value).startswith(f"llama-quantize Q4_0 of {src}: llama-quantize was killed: it did not finish "
                                   "within its limit of 1 s (bench.tool_timeout_s in the config)")
    assert not dest.exists() and not list(tmp_path.glob("Q4_0.gguf*"))


# --- a request that trickles ------------------------------------------------------------------------------------


class Trickle(http.server.BaseHTTPRequestHandler):
    """A stand-in engine: answers a chat request with an SSE stream of which it sends one byte every 0.2 s for
    15 s, then closes the connection with its answer unfinished (a client without a deadline gets a stream cut
    short then, not a time-out)."""

    protocol_version = "HTTP/1.1"
    line = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n' * 200
    trickle_s = 15.0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(self.line)))
        self.end_headers()
        trickle(self.wfile, self.line, self.trickle_s)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def trickling():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    server.shutdown()
    server.server_close()


def test_a_request_is_given_up_at_its_deadline_however_the_bytes_trickle(trickling, tmp_path):
    start = time.monotonic()
    with pytest.raises(RequestTimedOut) as e:
        post_stream(trickling, {"stream": True}, 1.0, parse_chat_stream, "llama-server", tmp_path / "server.log")
    # A per-read timeout of 1 s would never fire: a byte comes every 0.2 s.
    assert time.monotonic() - start < 10
    assert e.value.diagnosis.kind == TIMED_OUT
    assert str(e.value).startswith("the request to llama-server was given up: it did not finish within its limit "
                                   "of 1 s (bench.request_timeout_s, a deadline for the whole response")
    assert "raise bench.request_timeout_s in the config" in str(e.value)
    assert diagnosis_of(e.value, "llama-server").kind == TIMED_OUT


def test_a_timed_out_request_keeps_the_finished_generations_and_adds_a_failed_row():
    class TimesOutOnFourthCall(Engine):  # a stand-in engine: warm-up, two generations, then a hung request
        tool = "stand-in"
        calls = 0

        def generate(self, prompt, max_tokens, temperature, seed):
            self.calls += 1
            if self.calls == 4:
                raise request_timed_out("llama-server", 1.0, Path("server.log"))
            return Generation(10, 10, 20, 5.0, 100.0, 2000.0, 200.0, 110.0, "stop", "ok")

    plan = RunPlan(tool="stand-in", model="m", quant="Q4_0", split="none", prompts=(Prompt("a", "hi", 8),),
                   repetitions=3, warmup=1, idle_s=0.0, temperature=0.5, seed=100, n_gpu_layers=0, gpus=0, threads=2)
    rows = run_generations(TimesOutOnFourthCall(), plan, EnergyMeter([], ["no sensor"]))
    assert rows["status"].to_list() == ["ok", "ok", "failed"]
    assert rows["failure_kind"][2] == TIMED_OUT and "bench.request_timeout_s" in rows["status_reason"][2]


def test_a_job_interrupted_while_its_tool_runs_kills_the_tool(tmp_path):
    """Snakemake stops a job with SIGTERM (bench.py turns it into SystemExit): the tool goes with it."""
    import subprocess

    pid_file = tmp_path / "standin.pid"
    exe = standin(tmp_path / "standin-llama-bench", HANGS)
    job = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import signal, sys
            from llmbench.core.logs import run_logged
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
            run_logged([{str(exe)!r}], {str(tmp_path / 'tool.log')!r}, capture_stdout=True)
        """)],
        cwd=Path(__file__).parents[1], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] /
                                                                            "workflow/scripts"),
                                            "STANDIN_PID_FILE": str(pid_file)})
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the stand-in tool never started"
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGTERM)
    assert job.wait(timeout=20) == 143
    tool = int(pid_file.read_text())
    for _ in range(100):
        if gone(tool):
            break
        time.sleep(0.05)
    assert gone(tool)
