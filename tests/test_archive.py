"""The study archive: deterministic bytes, a manifest that catches changes, and no secret inside."""

import io
import tarfile

import polars as pl
import pytest

from llmbench.core.files import DamagedResultError
from llmbench.outputs.archive import MANIFEST, _info, build_archive, manifest_text, verify_archive


@pytest.fixture
def members(tmp_path):
    pl.DataFrame({"decode_tokens_per_s": [10.0, 11.0]}).write_parquet(tmp_path / "runs.parquet")
    (tmp_path / "study.yaml").write_text("study: s\n")
    return {"results/summary/runs.parquet": tmp_path / "runs.parquet", "results/config/study.yaml": tmp_path / "study.yaml"}


def test_same_study_archives_to_the_same_bytes_with_a_manifest(members, tmp_path):
    a = build_archive(members, tmp_path / "a.tar.gz", "s-2026-11-26").read_bytes()
    b = build_archive(members, tmp_path / "b.tar.gz", "s-2026-11-26").read_bytes()
    assert a == b
    assert verify_archive(tmp_path / "a.tar.gz") == []
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        names = tar.getnames()
        manifest = tar.extractfile(f"s-2026-11-26/{MANIFEST}").read().decode()
    assert names == [f"s-2026-11-26/{MANIFEST}", "s-2026-11-26/results/config/study.yaml",
                     "s-2026-11-26/results/summary/runs.parquet"]
    assert "  results/summary/runs.parquet\n" in manifest and len(manifest.splitlines()) == 2


def test_a_changed_member_is_caught_by_the_manifest(members, tmp_path):
    build_archive(members, tmp_path / "a.tar.gz", "s")
    with tarfile.open(tmp_path / "a.tar.gz") as src, tarfile.open(tmp_path / "b.tar.gz", "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith("study.yaml"):
                data = b"study: tampered\n"
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    assert verify_archive(tmp_path / "b.tar.gz") == [
        "results/config/study.yaml: sha256 " + __import__("hashlib").sha256(b"study: tampered\n").hexdigest()
        + " but the manifest says " + __import__("hashlib").sha256(b"study: s\n").hexdigest()
    ]


def test_a_secret_value_in_a_text_member_is_refused(members, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_archive_secret_123")
    members["results/config/study.yaml"].write_text("url: https://x/?t=hf_archive_secret_123\n")
    with pytest.raises(ValueError, match="results/config/study.yaml: .*HF_TOKEN.*it was not archived"):
        build_archive(members, tmp_path / "a.tar.gz", "s")
    assert not (tmp_path / "a.tar.gz").exists()


def cut_short(path, keep: float = 0.5) -> None:
    """``path`` truncated to ``keep`` of its bytes with its mtime kept, as a full disk or a killed copy leaves it."""
    st = path.stat()
    path.write_bytes(path.read_bytes()[: int(st.st_size * keep)])
    import os

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_truncated_parquet_is_refused_before_it_is_archived_naming_it(members, tmp_path):
    cut_short(tmp_path / "runs.parquet")
    with pytest.raises(DamagedResultError) as e:
        build_archive(members, tmp_path / "a.tar.gz", "s")
    assert str(tmp_path / "runs.parquet") in str(e.value) and "snakemake --cores all" in str(e.value)
    assert not (tmp_path / "a.tar.gz").exists()


def test_a_cut_short_json_is_refused_before_it_is_archived(members, tmp_path):
    (tmp_path / "c1-d0.provenance.json").write_text('{"models": [{"sha256": "ab')
    members["results/runs/t/m/q/none/c1-d0.provenance.json"] = tmp_path / "c1-d0.provenance.json"
    with pytest.raises(DamagedResultError, match="c1-d0.provenance.json cannot be read"):
        build_archive(members, tmp_path / "a.tar.gz", "s")


def test_verify_archive_names_a_truncated_parquet_that_matches_its_manifest(members, tmp_path):
    # An archive made before build_archive read its members (stand-in, packed here as it packed them): the
    # truncated file's sha256 is in the manifest, so only reading it whole finds it.
    cut_short(tmp_path / "runs.parquet")
    manifest = manifest_text(members).encode()
    with tarfile.open(tmp_path / "old.tar.gz", "w:gz") as tar:
        tar.addfile(_info(f"s/{MANIFEST}", len(manifest)), io.BytesIO(manifest))
        for name, path in sorted(members.items()):
            tar.addfile(_info(f"s/{name}", path.stat().st_size), io.BytesIO(path.read_bytes()))
    problems = verify_archive(tmp_path / "old.tar.gz")
    assert len(problems) == 1
    assert problems[0].startswith("results/summary/runs.parquet cannot be read (")
    assert "rm results/summary/runs.parquet && snakemake --cores all results/summary/runs.parquet" in problems[0]
