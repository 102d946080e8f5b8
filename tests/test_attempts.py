"""A failed measurement measured again (llmbench.study.attempts, and the command the run's summary prints): the
generations that finished stay until a retry finishes more; a retry without a failure replaces them."""

import logging

import polars as pl
import pytest
from test_failed_jobs import ok_rows

from conftest import REPO, bench_job
from llmbench.engines.runs import RunPlan, failed_run
from llmbench.study import attempts, measure
from llmbench.study.failures import failed_measurements, summary

PLAN = RunPlan("llama-server", "m", "Q4_0", "none", (), 12, 0, 0.0, 0.7, 1, 0, 0, 2)


def attempt(finished: int, reason: str | None) -> pl.DataFrame:
    """Rows of an attempt whose engine died after ``finished`` generations (``reason``), or finished them all."""
    rows = ok_rows("llama-server", "Q4_0", [10.0 + i for i in range(finished)])
    return pl.concat([rows, failed_run(PLAN, reason, "killed", "SIGKILL")]) if reason else rows


def test_a_retry_that_fails_sooner_keeps_the_earlier_generations_with_the_latest_failure(tmp_path):
    run = tmp_path / "c1-d0.parquet"
    first = attempts.settle(run, attempt(5, "killed after 5"), "sha-a")
    assert first.height == 6 and attempts.kept_file(run, "sha-a").exists()
    second = attempts.settle(run, attempt(2, "killed after 2"), "sha-a")
    assert second.filter(pl.col("status") == "ok").height == 5
    assert second.filter(pl.col("status") == "failed")["status_reason"].to_list() == ["killed after 2"]
    # One that finishes more is kept instead; one with other settings never mixes with these.
    third = attempts.settle(run, attempt(8, "killed after 8"), "sha-a")
    assert third.filter(pl.col("status") == "ok").height == 8
    other = attempts.settle(run, attempt(1, "killed after 1"), "sha-b")
    assert other.filter(pl.col("status") == "ok").height == 1
    # A retry without a failure is the result, and no kept attempt stays behind.
    done = attempts.settle(run, attempt(12, None), "sha-a")
    assert done.height == 12 and not list(tmp_path.glob("*.failed-attempt-*"))


def test_the_bench_job_writes_the_better_attempt(tmp_path, tiny_gguf, monkeypatch):
    job = bench_job(tmp_path, "llama-server", tiny_gguf, repetitions=12)
    run, prov = tmp_path / "run.parquet", tmp_path / "run.provenance.json"
    for finished, reason in [(5, "killed after 5"), (2, "killed after 2")]:
        # A stand-in for an engine that dies after `finished` generations.
        monkeypatch.setattr(measure, "measure", lambda *a, f=finished, r=reason: attempt(f, r))
        measure.bench(job, run, prov, REPO, logging.getLogger("test"))
    rows = pl.read_parquet(run)
    assert rows.filter(pl.col("status") == "ok").height == 5 and rows["status"][-1] == "failed"


def test_the_run_summary_prints_the_one_command_that_measures_the_failures_again(tmp_path):
    runs = tmp_path / "runs.parquet"
    attempt(5, "killed after 5").write_parquet(runs)
    failed = failed_measurements(runs, run_file=lambda r: f"results/runs/{r['tool']}/{r['model']}/{r['quant']}/"
                                 f"{r['split']}/c{r['concurrency']}-d{r['depth']}.parquet")
    text = summary(failed, "snakemake --cores all --configfile my.yaml")
    assert text.splitlines()[-1] == ("  snakemake --cores all --configfile my.yaml --forcerun "
                                     "results/runs/llama-server/m/Q4_0/none/c1-d0.parquet")
    assert "keeps the generations that finished" in text
    assert "--forcerun" not in summary(failed)  # without the run's command, no half a command


@pytest.mark.parametrize("status", ["ok", "skipped"])
def test_a_job_without_a_failure_keeps_nothing(tmp_path, status):
    rows = attempt(3, None).with_columns(pl.lit(status).alias("status"))
    assert attempts.settle(tmp_path / "r.parquet", rows, "s").equals(rows)
    assert not list(tmp_path.iterdir())
