"""A full disk is named: the write fails saying "no space left on device", with the path, the filesystem and the
fix; nothing partial is left under the result's name; a bench job's measured rows are kept elsewhere or said lost.

The full disk is a real 64 KiB tmpfs where this machine lets the test mount one (root), and otherwise, and also,
a write stand-in that raises what polars raises on a full disk (its message, copied from polars 1.x on a full
tmpfs: "parquet: File out of specification: underlying IO error: No space left on device (os error 28)").
"""

import errno
import logging
import shutil
import subprocess

import numpy as np
import polars as pl
import pytest

from llmbench.core.files import WriteFailed, write_atomically, write_failure, write_text_atomically
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.study.measure import write_rows

POLARS_FULL = "parquet: File out of specification: underlying IO error: No space left on device (os error 28)"


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 64 KiB tmpfs (skips where mounting is not allowed: the stand-in tests below still run)."""
    where = tmp_path / "small"
    where.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the stand-in tests cover the same path")
    yield where
    subprocess.run(["umount", str(where)], check=True)


def big_frame() -> pl.DataFrame:
    return pl.DataFrame({"x": np.random.default_rng(1).random(200_000)})  # ~1.6 MB: never fits 64 KiB


def test_a_parquet_on_a_full_filesystem_names_the_path_and_leaves_nothing(full_disk):
    dest = full_disk / "stats.parquet"
    with pytest.raises(WriteFailed) as e:
        write_atomically(dest, big_frame().write_parquet)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value).startswith(f"no space left on device writing {dest} (filesystem {full_disk} (")
    assert "free space on that filesystem" in str(e.value)
    assert list(full_disk.iterdir()) == []  # no truncated stats.parquet, no temporary file


def test_a_text_on_a_full_filesystem_keeps_the_previous_whole_file(full_disk):
    dest = full_disk / "report.md"
    dest.write_text("the previous table\n")
    with pytest.raises(WriteFailed, match=f"no space left on device writing {dest}"):
        write_text_atomically(dest, "x" * 200_000)
    assert dest.read_text() == "the previous table\n" and [p.name for p in full_disk.iterdir()] == ["report.md"]


def test_a_polars_full_disk_error_is_named_as_such(tmp_path):
    def standin_write(path):  # writes part of the file, then fails as polars does on a full disk
        path.write_bytes(b"PAR1" + b"\0" * 100)
        raise pl.exceptions.ComputeError(POLARS_FULL)

    with pytest.raises(WriteFailed) as e:
        write_atomically(tmp_path / "runs.parquet", standin_write)
    assert e.value.errno == errno.ENOSPC and f"no space left on device writing {tmp_path / 'runs.parquet'}" in str(
        e.value)
    assert list(tmp_path.iterdir()) == []


def test_the_reports_error_text_is_read_as_a_full_disk():
    # make_report (workflow/rules/common.smk) reads the cause from the report subprocess's stderr.
    said = RuntimeError("OSError: [Errno 28] No space left on device: 'results/.report.123.part.html'")
    failed = write_failure(said, "results/report.html")
    assert failed is not None and str(failed).startswith("no space left on device writing results/report.html")
    assert write_failure(RuntimeError("KeyError: 'figure'"), "results/report.html") is None


def rows(n: int) -> pl.DataFrame:
    return pl.DataFrame([{"status": "ok", "tool": "llama-server"}] * n, schema=RUN_SCHEMA)


def test_a_bench_job_on_a_full_disk_keeps_its_measured_rows_and_says_where(tmp_path, monkeypatch):
    fallback = tmp_path / "tmp"
    monkeypatch.setattr("tempfile.tempdir", str(fallback))
    real = pl.DataFrame.write_parquet

    def full_results_disk(self, path, *a, **kw):  # the results disk is full; the temporary folder is not
        if str(path).startswith(str(fallback)):
            return real(self, path, *a, **kw)
        raise pl.exceptions.ComputeError(POLARS_FULL)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full_results_disk)
    run_file = tmp_path / "results/runs/llama-server/m/Q8_0/none/c1-d0.parquet"
    with pytest.raises(WriteFailed) as e:
        write_rows(rows(12), run_file, logging.getLogger("t"))
    kept = fallback / "llmbench-unsaved" / "llama-server__m__Q8_0__none__c1-d0.parquet"
    said = str(e.value)
    assert said.startswith(f"no space left on device writing {run_file}") and "12 measured generation(s)" in said
    assert f"kept at {kept}" in said and not run_file.exists()
    assert pl.read_parquet(kept).height == 12


def test_a_bench_job_whose_rows_cannot_be_kept_anywhere_says_they_are_lost(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(pl.DataFrame, "write_parquet",
                        lambda self, path, *a, **kw: (_ for _ in ()).throw(pl.exceptions.ComputeError(POLARS_FULL)))
    with pytest.raises(WriteFailed, match=r"12 measured generation\(s\) were not written .*: they are lost"):
        write_rows(rows(12), tmp_path / "r/llama-server/m/Q8_0/none/c1-d0.parquet", logging.getLogger("t"))
