"""llama-bench backend: its real -o jsonl output (recorded from this project's build) parsed by field name.

Run tests use a stand-in executable for llama-bench (a small Python script, named as such) that replays the
recorded output and the real probe log, or prints llama.cpp's out-of-memory lines and fails, or prints the
recorded output cut short.
"""

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from conftest import REPO
from llmbench.engines.base import EngineError, OutOfMemory
from llmbench.engines.llama_bench import (
    IncompleteBenchOutput,
    LlamaBenchSettings,
    bench_command,
    parse_jsonl,
    probe_command,
    run_llama_bench,
    samples_to_rows,
)
from llmbench.engines.runs import RUN_SCHEMA, RunPlan

# llama.cpp out-of-memory lines, a stand-in written from the pinned source (see tests/engines/test_llama_log.py).
CUDA_OOM = (REPO / "tests/data/llama_cuda_oom.standin.log").read_text()

PLAN = RunPlan("llama-bench", "smollm2-135m", "Q4_0", "none", (), 3, 0, 0.0, 0.7, 1, 0, 0, 2)


def recorded():
    return parse_jsonl((REPO / "tests/data/llama_bench.jsonl").read_text())


def test_every_repetition_sample_is_a_row():
    tests = recorded()
    rows = samples_to_rows(tests, PLAN)
    assert list(rows.columns) == list(RUN_SCHEMA)
    assert rows.height == sum(len(t["samples_ns"]) for t in tests)
    pp = rows.filter(rows["prompt_id"].str.starts_with("pp"))
    tg = rows.filter(rows["prompt_id"].str.starts_with("tg"))
    assert pp["prefill_tokens_per_s"].is_not_null().all() and pp["decode_tokens_per_s"].is_null().all()
    assert tg["decode_tokens_per_s"].is_not_null().all() and tg["prefill_ms"].is_null().all()
    t = next(t for t in tests if t["n_gen"] > 0)
    assert tg["decode_tokens_per_s"].to_list() == t["samples_ts"]
    assert tg["decode_ms"].to_list() == [ns / 1e6 for ns in t["samples_ns"]]
    assert set(rows["engine_build"]) == {t["build_commit"]}
    assert rows["energy_j"].is_null().all() and rows["energy_null_reason"].is_not_null().all()


def test_unknown_fields_of_another_build_are_ignored():
    t = recorded()[0] | {"some_future_field": 1}
    assert samples_to_rows([t], PLAN).height == len(t["samples_ns"])


def test_no_results_is_an_error():
    with pytest.raises(EngineError, match="printed no results"):
        parse_jsonl("main: error: failed to load model\n")


def test_command_asks_for_jsonl_and_the_settings(tmp_path):
    cmd = bench_command(LlamaBenchSettings(binary=tmp_path / "llama-bench", model=tmp_path / "m.gguf", n_prompt=64,
                                           n_gen=16, repetitions=3, threads=2, n_gpu_layers=33, split_mode="row"))
    assert cmd[cmd.index("-o") + 1] == "jsonl" and cmd[cmd.index("-sm") + 1] == "row"
    assert cmd[cmd.index("-p") + 1] == "64" and cmd[cmd.index("-ngl") + 1] == "33"


def test_auto_is_llama_bench_own_fitting_and_the_split_uses_slashes(tmp_path):
    s = LlamaBenchSettings(binary=tmp_path / "llama-bench", model=tmp_path / "m.gguf", n_gpu_layers="auto")
    cmd = bench_command(s)
    # llama-bench's -ngl takes numbers only: -fitt (a margin in MiB) turns its fitting on instead.
    assert "-ngl" not in cmd and cmd[cmd.index("-fitt") + 1] == "1024"
    split = bench_command(LlamaBenchSettings(binary=tmp_path / "b", model=tmp_path / "m.gguf", n_gpu_layers=81,
                                             tensor_split=(3.0, 1.0)))
    assert split[split.index("-ts") + 1] == "3/1" and split[split.index("-ngl") + 1] == "81"


def test_probe_is_the_same_test_once_and_verbose(tmp_path):
    s = LlamaBenchSettings(binary=tmp_path / "b", model=tmp_path / "m.gguf", n_prompt=64, n_gen=16, repetitions=5)
    probe = probe_command(s)
    assert probe[probe.index("-r") + 1] == "1" and probe[-2:] == ["--no-warmup", "-v"]
    assert probe[probe.index("-p") + 1] == "64" and "-v" not in bench_command(s)


def standin(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "standin-llama-bench"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    exe.chmod(0o755)
    return exe


def test_rows_carry_the_offload_read_from_the_probe(tmp_path):
    exe = standin(tmp_path, f"""
        import sys
        if "-v" in sys.argv:
            sys.stderr.write(open({str(REPO / "tests/data/llama_bench_probe_cpu.log")!r}).read())
        sys.stdout.write(open({str(REPO / "tests/data/llama_bench.jsonl")!r}).read())
    """)
    s = LlamaBenchSettings(binary=exe, model=tmp_path / "m.gguf", n_prompt=32, n_gen=16, repetitions=3,
                           n_gpu_layers="auto")
    plan = RunPlan("llama-bench", "smollm2-135m", "Q4_0", "none", (), 3, 0, 0.0, 0.7, 1, "auto", 0, 2)
    rows = run_llama_bench(s, plan, tmp_path / "bench.engine.log")
    assert rows.height == sum(len(t["samples_ns"]) for t in recorded())
    assert rows["n_gpu_layers"].is_null().all() and rows["n_gpu_layers_auto"].all()
    assert set(rows["n_gpu_layers_offloaded"]) == {0} and set(rows["n_layers_total"]) == {31}
    assert (tmp_path / "bench.engine.probe.log").exists()


def test_out_of_memory_is_out_of_memory_and_other_failures_stay_errors(tmp_path):

    oom = standin(tmp_path, f"""
        import sys
        sys.stderr.write({CUDA_OOM!r} + "main: error: failed to load model\\n")
        sys.exit(1)
    """)
    s = LlamaBenchSettings(binary=oom, model=tmp_path / "m.gguf", n_prompt=512, n_gen=128, n_gpu_layers=81)
    with pytest.raises(OutOfMemory, match=r"^out of memory: llama-bench \(n_gpu_layers=81, ctx_size=640\)"):
        run_llama_bench(s, PLAN, tmp_path / "bench.engine.log")
    (tmp_path / "standin-llama-bench").unlink()
    other = standin(tmp_path, """
        import sys
        sys.stderr.write("main: error: failed to load model 'm.gguf'\\n")
        sys.exit(1)
    """)
    with pytest.raises(EngineError, match=r"^llama-bench could not load the model \(exit code 1\): it logged") as e:
        run_llama_bench(LlamaBenchSettings(binary=other, model=tmp_path / "m.gguf"), PLAN, tmp_path / "b.log")
    assert not isinstance(e.value, OutOfMemory)


RECORDED = (REPO / "tests/data/llama_bench.jsonl").read_text()
WHOLE = LlamaBenchSettings(binary=Path("llama-bench"), model=Path("m.gguf"), n_prompt=32, n_gen=16, repetitions=3)


def cut_outputs() -> dict[str, str]:
    """The recorded output, cut short in each way an interrupted run leaves it."""
    pp, tg = RECORDED.splitlines()
    no_samples = json.loads(tg)
    del no_samples["samples_ns"], no_samples["samples_ts"]
    fewer = json.loads(tg) | {"samples_ns": json.loads(tg)["samples_ns"][:2], "samples_ts": json.loads(tg)["samples_ts"][:2]}
    return {"tg line missing": pp + "\n", "tg line broken": pp + "\n" + tg[: len(tg) // 2],
            "tg line without samples": pp + "\n" + json.dumps(no_samples) + "\n",
            "fewer samples than repetitions": pp + "\n" + json.dumps(fewer) + "\n", "nothing": ""}


@pytest.mark.parametrize("cut", list(cut_outputs()))
def test_an_output_cut_short_is_incomplete(cut):
    with pytest.raises(IncompleteBenchOutput):
        parse_jsonl(cut_outputs()[cut], WHOLE)
    assert len(parse_jsonl(RECORDED, WHOLE)) == 2


def test_a_line_without_samples_never_becomes_half_a_row():
    t = {k: v for k, v in recorded()[1].items() if k not in ("samples_ns", "samples_ts")}
    with pytest.raises(IncompleteBenchOutput, match="has no samples"):
        samples_to_rows([recorded()[0], t], PLAN)


def replaying(tmp_path: Path, outputs: list[str]) -> Path:
    """A stand-in that prints ``outputs[i]`` on its i-th measured run (the probe, with -v, prints the probe log)."""
    count = tmp_path / "runs"
    return standin(tmp_path, f"""
        import pathlib, sys
        if "-v" in sys.argv:
            sys.stderr.write(open({str(REPO / "tests/data/llama_bench_probe_cpu.log")!r}).read())
            sys.exit(0)
        count = pathlib.Path({str(count)!r})
        i = int(count.read_text()) if count.exists() else 0
        count.write_text(str(i + 1))
        sys.stdout.write({outputs!r}[i])
    """)


def test_an_output_cut_short_is_run_once_more(tmp_path):
    exe = replaying(tmp_path, [cut_outputs()["tg line broken"], RECORDED])
    s = dataclasses.replace(WHOLE, binary=exe)
    rows = run_llama_bench(s, PLAN, tmp_path / "bench.engine.log")
    assert rows.height == 6 and (tmp_path / "runs").read_text() == "2"
    log = (tmp_path / "bench.engine.log").read_text()
    assert log.count("$ ") == 2 and "stopped short" in log  # both runs kept in the log, with why


def test_an_output_cut_short_twice_fails_naming_the_log(tmp_path):
    exe = replaying(tmp_path, [cut_outputs()["tg line without samples"]] * 2)
    log = tmp_path / "bench.engine.log"
    with pytest.raises(IncompleteBenchOutput, match=f"stopped short twice .*has no samples.*engine log {log}$"):
        run_llama_bench(dataclasses.replace(WHOLE, binary=exe), PLAN, log)
    assert (tmp_path / "runs").read_text() == "2"


def test_rounds_run_as_many_samples_as_the_precision_rule_needs(tmp_path):
    """bench.precision: a first run with -r 6 (the rounds a 95 % interval of a median needs), then one round per
    run until the interval is within the target; each sample's round is its repetition."""
    from llmbench.core.precision import PrecisionSpec

    # The recorded output's test lines with the stand-in's -r samples; tg rates wander, then settle.
    rates = [118.0, 126.0, 115.0, 124.0, 121.0, 117.0] + [122.0] * 14
    exe = standin(tmp_path, f"""
        import json, pathlib, sys
        if "-v" in sys.argv:
            sys.stderr.write(open({str(REPO / "tests/data/llama_bench_probe_cpu.log")!r}).read())
            sys.exit(0)
        r = int(sys.argv[sys.argv.index("-r") + 1])
        done = pathlib.Path({str(tmp_path / "done")!r})
        first = int(done.read_text()) if done.exists() else 0
        done.write_text(str(first + r))
        for line in open({str(REPO / "tests/data/llama_bench.jsonl")!r}):
            t = json.loads(line)
            ts = {rates!r}[first:first + r] if t["n_gen"] else [t["samples_ts"][0]] * r
            t["samples_ts"], t["samples_ns"] = ts, [t["samples_ns"][0]] * r
            print(json.dumps(t))
    """)
    spec = PrecisionSpec(target=0.05, confidence=0.95, min_repetitions=2, max_repetitions=20)
    plan = dataclasses.replace(PLAN, precision=spec)
    s = dataclasses.replace(WHOLE, binary=exe)
    rows = run_llama_bench(s, plan, tmp_path / "bench.engine.log")
    runs = [line for line in (tmp_path / "bench.engine.log").read_text().splitlines() if line.startswith("$ ")]
    assert [r.split(" -r ")[1].split()[0] for r in runs][:2] == ["6", "1"]
    tg = rows.filter(pl.col("decode_tokens_per_s").is_not_null())
    n = rows["precision_rounds"][0]
    # ±5.4 % after 6 rounds; the 7th brings the interval's wider side to 6/121 = ±4.96 %.
    assert n == 7 and tg["repetition"].to_list() == list(range(7)) and len(runs) == 2
    assert rows["precision_met"].all() and rows["precision_note"][0].startswith("±")
