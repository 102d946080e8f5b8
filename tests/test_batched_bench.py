"""llama-batched-bench as the load axis's engine-side reference: its real ``--output-format jsonl`` output (recorded
from this project's build: SmolLM2-135M Q4_0, 4 sequences of pp 64 + tg 32, four tests) read by field name into
one row per measured batch; and what it leaves out or cuts short is an error, never half a result.

Stand-ins of the binary (Python scripts under its name) print recorded lines, named as such; the real binary runs in
tests/test_workflow.py's study."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from llmbench.engines.base import EngineError
from llmbench.engines.batched_bench import (
    BATCHED_BENCH_ENERGY,
    BatchedBenchSettings,
    batched_bench_command,
    batches_to_rows,
    parse_jsonl,
    run_batched_bench,
)
from llmbench.engines.llama_bench import IncompleteBenchOutput
from llmbench.engines.runs import RUN_SCHEMA, RunPlan

RECORDED = REPO / "tests/data/llama_batched_bench.jsonl"


def settings(**kw) -> BatchedBenchSettings:
    base = dict(binary=Path("/b/llama-batched-bench"), model=Path("/m/Q4_0.gguf"), batch=4, n_prompt=64, n_gen=32,
                repetitions=2, warmup=1, threads=2)
    return BatchedBenchSettings(**{**base, **kw})


def plan(concurrency: int = 4) -> RunPlan:
    return RunPlan("llama-batched-bench", "smollm2-135m", "Q4_0", "none", (), 2, 1, 0, 0.0, 0, 0, 0, 2,
                   concurrency=concurrency)


def test_command_lists_the_batch_once_per_test_with_a_trailing_one_and_a_context_that_fits():
    cmd = batched_bench_command(settings(depth=100))
    arg = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    # warm-up 1 + repetitions 2 + the trailing test whose line may be lost at exit
    assert arg["-npl"] == "4,4,4,4"
    assert arg["-npp"] == "164" and arg["-ntg"] == "32"  # depth + n_prompt per sequence
    assert arg["-c"] == str(4 * (164 + 32))
    assert arg["--n-gpu-layers"] == "0" and arg["--split-mode"] == "none" and arg["--output-format"] == "jsonl"
    assert "-pps" not in cmd  # every sequence its own prompt, as every client of a server
    assert arg["--log-verbosity"] == "4"  # llama.cpp's load lines: the layers offloaded


def test_auto_offload_and_an_empty_prompt_are_refused_before_running():
    with pytest.raises(ValueError, match="fitted number of layers"):
        batched_bench_command(settings(n_gpu_layers="auto"))
    with pytest.raises(ValueError, match="at least 1 token"):
        batched_bench_command(settings(n_prompt=0))


def test_recorded_output_gives_the_measured_batches_warm_up_and_trailing_dropped():
    lines = RECORDED.read_text().splitlines()
    tests = parse_jsonl("\n".join(lines), settings())
    assert [t["t_tg"] for t in tests] == pytest.approx([0.410731, 0.402574])
    # The trailing test's line lost at exit is no loss.
    assert parse_jsonl("\n".join(lines[:3]), settings()) == tests


def test_rows_hold_the_whole_batch_and_its_rates():
    rows = batches_to_rows(parse_jsonl(RECORDED.read_text(), settings()), plan(), settings(), build="0c1e570")
    assert rows.schema == RUN_SCHEMA and rows.height == 2
    r = rows.row(0, named=True)
    assert (r["concurrency"], r["repetition"], r["prompt_id"]) == (4, 0, "pp64+tg32x4")
    assert r["prompt_tokens"] == r["prefill_tokens"] == 4 * 64 and r["generated_tokens"] == 4 * 32
    assert r["prefill_ms"] == pytest.approx(253.969) and r["decode_ms"] == pytest.approx(410.731)
    # S_TG is the batch's: all four sequences' tokens over the decode time.
    assert r["decode_tokens_per_s"] == pytest.approx(r["generated_tokens"] / r["decode_ms"] * 1e3, rel=1e-5)
    assert r["prefill_tokens_per_s"] == pytest.approx(r["prefill_tokens"] / r["prefill_ms"] * 1e3, rel=1e-5)
    assert r["energy_j"] is None and r["energy_null_reason"] == BATCHED_BENCH_ENERGY
    assert (r["status"], r["engine_build"], r["threads"]) == ("ok", "0c1e570", 2)


@pytest.mark.parametrize("text, words", [
    ("", "0 result lines"),
    ("\n".join(RECORDED.read_text().splitlines()[:2]), "2 result lines"),  # a test that did not fit -c
    (RECORDED.read_text()[:-40], "cut short"),
    (RECORDED.read_text().replace('"pl": 4', '"pl": 2'), "not the test asked"),
    (RECORDED.read_text().replace('"t_tg": 0.410731', '"t_tg": 0.0'), "not positive"),
    (RECORDED.read_text().replace('"speed_tg": 311.639496, ', ''), "lacks speed_tg"),
])
def test_an_output_missing_or_cut_short_is_incomplete(text, words):
    with pytest.raises(IncompleteBenchOutput, match=words):
        parse_jsonl(text, settings())


def stand_in(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "llama-batched-bench"  # a stand-in under the real tool's name
    exe.write_text(f"#!{sys.executable}\n# standin-llama-batched-bench\n" + textwrap.dedent(body))
    exe.chmod(0o755)
    return exe


def test_a_run_that_printed_too_few_lines_runs_once_more_then_fails_naming_the_log(tmp_path):
    counter = tmp_path / "runs"
    exe = stand_in(tmp_path, f"""
        import pathlib
        c = pathlib.Path({str(counter)!r}); n = int(c.read_text()) if c.exists() else 0; c.write_text(str(n + 1))
        lines = pathlib.Path({str(RECORDED)!r}).read_text().splitlines()
        print("\\n".join(lines if n else lines[:1]))
    """)
    rows = run_batched_bench(settings(binary=exe), plan(), tmp_path / "engine.log")
    assert rows.height == 2 and counter.read_text() == "2"
    assert "running once more" in (tmp_path / "engine.log").read_text()

    counter.unlink()
    short = stand_in(tmp_path, f"""
        import pathlib
        print(pathlib.Path({str(RECORDED)!r}).read_text().splitlines()[0])
    """)
    with pytest.raises(IncompleteBenchOutput, match=r"stopped short twice .*engine\.log"):
        run_batched_bench(settings(binary=short), plan(), tmp_path / "engine.log")


def test_a_failed_run_is_diagnosed_naming_its_log(tmp_path):
    exe = stand_in(tmp_path, """
        import sys
        print("llama_batched_bench: error: unable to load model", file=sys.stderr)
        sys.exit(1)
    """)
    with pytest.raises(EngineError) as e:
        run_batched_bench(settings(binary=exe), plan(), tmp_path / "engine.log")
    assert "llama-batched-bench could not load the model (exit code 1)" in str(e.value)
    assert str(tmp_path / "engine.log") in str(e.value)
