"""What was measured is what was hashed, and a damaged results file is named.

A bench job hashes the model file it runs (cached by the file's stat) and fails with a 'failed' row naming both
hashes, the path and the fix where the file is not the one its record names; its provenance records the hash it
saw. `aggregate` names a run file it cannot read. The engine is a stand-in executable (named as such) that must
never be started here.
"""

import json
import logging
import os
import sys

import polars as pl
import pytest

from conftest import REPO, Namespace, bench_job
from llmbench.core.files import DamagedResultError, cached_sha256, sha256_file
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.study.measure import bench, measure
from llmbench.study.provenance import ModelHashMismatch, check_model_hashes, model_hashes


def flip(path, offset: int = -1) -> None:
    """One byte of ``path`` inverted in place (at ``offset``; the last one by default: tensor data)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def recorded(gguf) -> str:
    """The record a fetch or derive job writes beside the file (only its sha256 matters here)."""
    digest = sha256_file(gguf)
    gguf.with_suffix(".json").write_text(json.dumps({"kind": "derived", "quant": "Q4_0", "sha256": digest}))
    return digest


@pytest.fixture
def never_started(tmp_path):
    """A stand-in engine that fails loudly: a job that reaches it measured a file it should have refused."""
    exe = tmp_path / "standin-engine"
    exe.write_text(f"#!{sys.executable}\nimport sys\nprint('STAND-IN ENGINE STARTED')\nsys.exit(1)\n")
    exe.chmod(0o755)
    return exe


def test_a_byte_flipped_after_the_record_fails_the_job_naming_both_hashes(tmp_path, tiny_gguf, never_started):
    old = recorded(tiny_gguf)
    flip(tiny_gguf)
    new = sha256_file(tiny_gguf)
    rows = measure(bench_job(tmp_path, "llama-server", tiny_gguf, exe=never_started), [], logging.getLogger("t"))
    assert rows.height == 1 and rows.columns == list(RUN_SCHEMA)
    row = rows.row(0, named=True)
    assert (row["status"], row["failure_kind"]) == ("failed", "corrupt_model_file")
    reason = row["status_reason"]
    assert old in reason and new in reason and tiny_gguf.name in reason and "delete it" in reason
    assert "STAND-IN ENGINE STARTED" not in reason


def test_the_provenance_records_the_hash_the_job_saw_not_the_records(tmp_path, tiny_gguf, never_started):
    old = recorded(tiny_gguf)
    flip(tiny_gguf)
    job = bench_job(tmp_path, "llama-server", tiny_gguf, exe=never_started)
    rows = bench(job, tmp_path / "run.parquet", tmp_path / "run.provenance.json", REPO, logging.getLogger("t"))
    assert rows["status"].to_list() == ["failed"]
    assert pl.read_parquet(tmp_path / "run.parquet")["status"].to_list() == ["failed"]
    model = json.loads((tmp_path / "run.provenance.json").read_text())["models"][0]
    seen = model["sha256_seen"]
    assert model["sha256"] == old  # the record, copied as it is
    assert seen["files"][0]["sha256"] == sha256_file(tiny_gguf) != old and seen["matches_record"] is False


def test_a_sound_file_passes_and_is_hashed_once(tmp_path, tiny_gguf):
    digest = recorded(tiny_gguf)
    record = json.loads(tiny_gguf.with_suffix(".json").read_text())
    first = check_model_hashes(tiny_gguf, record)
    assert first["matches_record"] is True and first["files"][0]["hashed"] == "read"
    again = model_hashes(tiny_gguf, record)
    assert again["files"][0] == {**first["files"][0], "hashed": "cached"} and again["files"][0]["sha256"] == digest


def test_the_cache_is_not_fooled_by_a_file_changed_with_its_mtime_kept(tiny_gguf):
    digest, cached = cached_sha256(tiny_gguf)
    assert not cached and cached_sha256(tiny_gguf) == (digest, True)
    st = tiny_gguf.stat()
    flip(tiny_gguf)
    os.utime(tiny_gguf, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before: only ctime tells
    assert tiny_gguf.stat().st_mtime_ns == st.st_mtime_ns
    assert cached_sha256(tiny_gguf) == (sha256_file(tiny_gguf), False) and sha256_file(tiny_gguf) != digest


def test_every_shard_of_a_split_gguf_is_checked(tmp_path):
    # Plain bytes standing in for shards: the hash check reads bytes, not GGUF structure.
    names = [f"m-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    for k, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([k]) * 1000)
    record = {"sha256": sha256_file(tmp_path / names[0]), "split_count": 3,
              "shards": [{"no": k + 1, "file": n, "sha256": sha256_file(tmp_path / n)} for k, n in enumerate(names)]}
    assert [f["file"] for f in check_model_hashes(tmp_path / names[0], record)["files"]] == [
        str(tmp_path / n) for n in names]
    flip(tmp_path / names[1], 500)
    with pytest.raises(ModelHashMismatch) as e:
        check_model_hashes(tmp_path / names[0], record)
    assert names[1] in str(e.value) and record["shards"][1]["sha256"] in str(e.value)
    assert sha256_file(tmp_path / names[1]) in str(e.value)


def test_a_model_without_a_recorded_sha256_is_hashed_but_not_judged(tmp_path, tiny_gguf):
    seen = check_model_hashes(tiny_gguf, None)
    assert seen["matches_record"] is None and seen["files"][0]["sha256"] == sha256_file(tiny_gguf)


def test_aggregate_names_the_run_file_it_cannot_read(tmp_path):
    import aggregate

    good, bad = tmp_path / "good.parquet", tmp_path / "runs/llama-server/m/Q8_0/none/c1-d0.parquet"
    bad.parent.mkdir(parents=True)
    frame = pl.DataFrame([{c: None for c in RUN_SCHEMA}], schema=RUN_SCHEMA)
    frame.write_parquet(good)
    frame.write_parquet(bad)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    smk = Namespace(input=Namespace(runs=[str(good), str(bad)]), log=[str(tmp_path / "aggregate.log")],
                    output=Namespace(runs=str(tmp_path / "out/runs.parquet"), stats=str(tmp_path / "out/stats.parquet"),
                                     stats_csv=str(tmp_path / "out/stats.csv")))
    with pytest.raises(DamagedResultError) as e:
        aggregate.main(smk)
    assert e.value.path == bad
    assert str(e.value).startswith(f"{bad} cannot be read (")
    assert f"rm {bad} && snakemake --cores all {bad}" in str(e.value)
    assert not (tmp_path / "out/runs.parquet").exists()
