"""File utilities: a file's sha256, and a file that appears whole or not at all."""

import hashlib
import os

import pytest

from llmbench.core.files import atomic_path, sha256_file


def test_sha256_of_a_file_larger_than_one_chunk_is_that_of_its_bytes(tmp_path, monkeypatch):
    import llmbench.core.files

    monkeypatch.setattr(llmbench.core.files, "CHUNK", 7)  # several chunks and a short last one
    data = bytes(range(256)) * 3
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_atomic_path_gives_the_file_the_usual_mode(tmp_path):
    with atomic_path(tmp_path / "f.gguf") as part:
        part.write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.gguf").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_block_leaves_neither_the_file_nor_its_part(tmp_path):
    dest = tmp_path / "sub" / "f.gguf"
    with pytest.raises(RuntimeError), atomic_path(dest) as part:
        part.write_bytes(b"half")
        raise RuntimeError("download cut")
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_a_finished_block_replaces_the_old_file(tmp_path):
    dest = tmp_path / "f.gguf"
    dest.write_bytes(b"old")
    with atomic_path(dest) as part:
        assert part.parent == dest.parent and part != dest
        part.write_bytes(b"new")
    assert dest.read_bytes() == b"new" and list(tmp_path.iterdir()) == [dest]
