"""An engine failure (out of memory, a signal, a model it cannot load) ends a bench job with a 'failed' row (kind,
reason and fix), the job exits normally, and the statistics and cost tables keep that group beside every other
job's results, as they do a 'skipped' one.

The engines here are stand-in executables (small Python scripts, named as such) that print llama.cpp's
out-of-memory lines and exit non-zero; the measured rows are stand-in numbers.
"""

import logging
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from conftest import REPO, bench_job
from llmbench.engines.runs import RUN_SCHEMA, RunPlan, failed_run
from llmbench.outputs.costs import cost_table
from llmbench.outputs.stats import summarize_runs
from llmbench.study.measure import measure

# llama.cpp out-of-memory lines, a stand-in written from the pinned source (see tests/engines/test_llama_log.py).
CUDA_OOM = (REPO / "tests/data/llama_cuda_oom.standin.log").read_text()


def standin(tmp_path: Path, name: str, body: str) -> Path:
    exe = tmp_path / f"standin-{name}"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    exe.chmod(0o755)
    return exe


OOM_EXIT = f"""
    import sys
    sys.stderr.write({CUDA_OOM!r})
    sys.exit(1)
"""


def job(tool: str, tiny_gguf: Path, exe: Path, tmp_path: Path):
    return bench_job(tmp_path, tool, tiny_gguf, exe=exe, n_gpu_layers=81, repetitions=2)


@pytest.mark.parametrize("tool", ["llama-bench", "llama-server"])
def test_out_of_memory_is_a_failed_row_with_the_line_and_the_fix(tmp_path, tiny_gguf, tool):
    j = job(tool, tiny_gguf, standin(tmp_path, tool, OOM_EXIT), tmp_path)
    rows = measure(j, [], logging.getLogger("test"))
    assert rows.columns == list(RUN_SCHEMA) and rows.height == 1
    row = rows.row(0, named=True)
    assert row["status"] == "failed" and row["n_gpu_layers"] == 81
    assert row["status_reason"].startswith(f"out of memory: {tool} (n_gpu_layers=81")
    assert "cudaMalloc failed: out of memory" in row["status_reason"] and "auto" in row["status_reason"]
    assert row["decode_tokens_per_s"] is None and row["energy_null_reason"] == "not measured: the job failed"


def test_any_engine_failure_is_a_failed_row_that_never_blames_a_sound_file(tmp_path, tiny_gguf):
    exe = standin(tmp_path, "llama-server", """
        import sys
        print("llama_model_load: error loading model: tensor 'blk.3.attn_q.weight' data is not within the file bounds")
        sys.exit(1)
    """)
    j = job("llama-server", tiny_gguf, exe, tmp_path)
    rows = measure(j, [], logging.getLogger("test"))
    row = rows.row(0, named=True)
    assert (rows.height, row["status"], row["failure_kind"]) == (1, "failed", "exited")
    assert "not within the file bounds" in row["status_reason"] and "do not delete it" in row["status_reason"]


@pytest.mark.parametrize(("sig", "kind"), [("SIGILL", "illegal_instruction"), ("SIGSEGV", "segmentation_fault"),
                                           ("SIGKILL", "killed")])
@pytest.mark.parametrize("tool", ["llama-bench", "llama-server"])
def test_an_engine_ended_by_a_signal_is_a_failed_row_naming_it(tmp_path, tiny_gguf, tool, sig, kind):
    # A stand-in engine that kills itself with the signal, as the AMX build did on an Intel Xeon.
    exe = standin(tmp_path, tool, f"""
        import os, signal
        print("load_tensors: loading model tensors, this can take a while... (load_mode = mmap)", flush=True)
        os.kill(os.getpid(), signal.{sig})
    """)
    j = job(tool, tiny_gguf, exe, tmp_path)
    rows = measure(j, [], logging.getLogger("test"))
    row = rows.row(0, named=True)
    assert (row["status"], row["failure_kind"], row["failure_signal"]) == ("failed", kind, sig)
    assert "corrupt" not in row["status_reason"] and "delete" not in row["status_reason"].lower()


def test_a_model_the_gguf_check_proves_damaged_is_a_failed_row_saying_so(tmp_path, tiny_gguf):
    tiny_gguf.write_bytes(tiny_gguf.read_bytes()[:-100])
    j = job("llama-server", tiny_gguf, standin(tmp_path, "llama-server", OOM_EXIT), tmp_path)
    row = measure(j, [], logging.getLogger("test")).row(0, named=True)
    assert (row["status"], row["failure_kind"]) == ("failed", "corrupt_model_file")
    assert "is truncated" in row["status_reason"]


def ok_rows(tool: str, quant: str, speeds: list[float]) -> pl.DataFrame:
    """Stand-in measured rows (numbers invented for the test), one per generation."""
    return pl.DataFrame([
        {"tool": tool, "model": "m", "quant": quant, "split": "none", "concurrency": 1, "depth": 0, "status": "ok",
         "prompt_id": "p",
         "repetition": i, "generated_tokens": 100, "decode_tokens_per_s": s, "energy_j": 50.0,
         "energy_window_s": 2.0, "energy_source": "stand-in", "energy_is_estimate": False}
        for i, s in enumerate(speeds)
    ], schema=RUN_SCHEMA)


def test_failed_groups_keep_their_reason_in_stats_and_costs_beside_other_results():
    plan = RunPlan("llama-server", "m", "Q8_0", "none", (), 2, 0, 0.0, 0.7, 1, 81, 1, 2)
    runs = pl.concat([ok_rows("llama-server", "Q4_0", [10.0, 12.0]), failed_run(plan, "out of memory: the fix")])

    stats = summarize_runs(runs, ["decode_tokens_per_s"])
    by_quant = {r["quant"]: r for r in stats.iter_rows(named=True)}
    assert by_quant["Q4_0"]["n"] == 2 and by_quant["Q4_0"]["median"] == 11.0
    assert by_quant["Q8_0"]["n"] == 0 and by_quant["Q8_0"]["not_run_reason"] == "out of memory: the fix"

    costs = {r["quant"]: r for r in cost_table(runs, 0.14, []).iter_rows(named=True)}
    assert costs["Q4_0"]["j_per_token"] == pytest.approx(0.5)
    assert costs["Q8_0"]["j_per_token"] is None and costs["Q8_0"]["not_run_reason"] == "out of memory: the fix"


def test_the_run_summary_lists_every_failed_measurement_with_its_kind_and_reason(tmp_path):
    from llmbench.engines.perplexity import failed_kld_row
    from llmbench.study.accuracy import not_asked
    from llmbench.study.failures import failed_measurements, summary

    plan = RunPlan("llama-server", "m", "Q8_0", "none", (), 2, 0, 0.0, 0.7, 1, 81, 1, 2)
    runs = pl.concat([ok_rows("llama-server", "Q4_0", [10.0]),
                      failed_run(plan, "llama-server died by SIGILL", "illegal_instruction", "SIGILL")])
    runs.write_parquet(tmp_path / "runs.parquet")
    pl.DataFrame([failed_kld_row("m", "Q2_K", "llama-perplexity was killed (SIGKILL)")]).write_parquet(
        tmp_path / "kld.parquet")
    group = {"tool": "ollama", "model": "m", "quant": "Q4_0", "split": "none"}
    not_asked(group, "out of host memory: …", "failed").write_parquet(tmp_path / "acc-failed.parquet")
    not_asked(group, "Ollama is not installed here").write_parquet(tmp_path / "acc-skipped.parquet")

    failed = failed_measurements(tmp_path / "runs.parquet", [tmp_path / "kld.parquet"],
                                 [tmp_path / "acc-failed.parquet", tmp_path / "acc-skipped.parquet",
                                  tmp_path / "absent.parquet"])
    assert failed["measurement"].to_list() == ["bench", "accuracy", "kld"]
    text = summary(failed)
    assert text.startswith("3 measurement(s) failed")
    assert "bench llama-server × m × Q8_0 [illegal_instruction]: llama-server died by SIGILL" in text
    assert "kld m × Q2_K: llama-perplexity was killed (SIGKILL)" in text and "not installed" not in text
    assert failed_measurements(None, [], []).height == 0
