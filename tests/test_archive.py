"""The study archive: deterministic bytes, a manifest that catches changes, and no secret inside."""

import io
import tarfile

import pytest

from llmbench.archive import MANIFEST, build_archive, verify_archive


@pytest.fixture
def members(tmp_path):
    (tmp_path / "runs.parquet").write_bytes(b"PAR1 rows PAR1")
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
