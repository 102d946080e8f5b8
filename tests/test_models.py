import pytest

from llmbench.modelfiles.models import CorruptModelError, check_gguf


def test_real_gguf_passes(tiny_gguf):
    info = check_gguf(tiny_gguf)
    assert info["tensors"] == 1 and info["weights"] == 256 and info["architecture"] == "llama"


def test_truncated_gguf_is_named_with_the_fix(tiny_gguf):
    data = tiny_gguf.read_bytes()
    tiny_gguf.write_bytes(data[: len(data) - 200])
    with pytest.raises(CorruptModelError, match=r"tiny\.gguf .*(truncated|damaged).*Delete it and run the workflow again"):
        check_gguf(tiny_gguf)


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(CorruptModelError, match=r"is not a GGUF file \(starts with b'<htm'"):
        check_gguf(bad)


def test_missing_file(tmp_path):
    with pytest.raises(CorruptModelError, match="does not exist"):
        check_gguf(tmp_path / "nope.gguf")


def test_header_cut_inside_the_metadata_is_damaged(tiny_gguf):
    tiny_gguf.write_bytes(tiny_gguf.read_bytes()[:40])
    with pytest.raises(CorruptModelError, match=r"tiny\.gguf is a damaged GGUF"):
        check_gguf(tiny_gguf)


def test_walk_agrees_with_the_gguf_library(tiny_gguf):
    from gguf import GGUFReader

    reader = GGUFReader(tiny_gguf)
    info = check_gguf(tiny_gguf)
    assert info["tensors"] == len(reader.tensors)
    assert info["weights"] == sum(int(t.n_elements) for t in reader.tensors)
