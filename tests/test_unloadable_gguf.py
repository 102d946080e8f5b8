"""A sound GGUF that llama.cpp does not load is named as such, never as damaged (../shared/cases, c301).

tests/data/cases/c301_qwen25coder3b_q4_0_4_4.gguf is a sound GGUF whose tensors include ggml type 31 (Q4_0_4_4,
removed by llama.cpp PR #10446); the .txt beside it holds what llama.cpp prints when it meets one. The variants
(byte-swapped, other versions, other types, cut short) are built from it here, each as llama.cpp's gguf.cpp would
see it. A damaged file is the only one whose fix is to fetch it again.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import sys
from pathlib import Path

import pytest

from conftest import REPO, bench_job
from llmbench.engines.base import diagnosis_of
from llmbench.modelfiles.models import FIX, CorruptModelError, UnloadableModelError, check_gguf, read_tensor_table

CASE = REPO / "tests/data/cases/c301_qwen25coder3b_q4_0_4_4.gguf"
LLAMA_SAYS = next(line for line in (REPO / "tests/data/cases/c301_qwen25coder3b_q4_0_4_4.txt").read_text().splitlines()
                  if line.startswith("gguf_init_from_file"))
# Byte offsets in the case's header (general.architecture, general.name, general.file_type, qwen2.block_count, then
# token_embd.weight Q8_0, blk.0.attn_k.weight of type 31, blk.0.attn_norm.weight F32).
KV_END = 192


def advises_deleting(text: str) -> bool:
    """True where a message tells the user to delete or fetch again the file, rather than not to."""
    rest = re.sub(r"do not delete it(?: or fetch it again)?", "", text, flags=re.I)
    return bool(re.search(r"\bdelete\b|\bre-?fetch|fetch(?:ed)? (?:it )?(?:again|anew)", rest, re.I))


def test_the_advice_check_tells_advice_from_its_negation():
    assert advises_deleting(f"m.gguf is a damaged GGUF: ValueError: 31 is not a valid GGMLQuantizationType. {FIX}")
    assert not advises_deleting("The file is sound: do not delete it or fetch it again: use the repo's Q4_0 file.")


def tensor_type_at(data: bytes, name: bytes) -> int:
    """Where the ggml type of tensor ``name`` lies in the header (after its name, n_dims and dims)."""
    at = data.index(name) + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return at + 4 + 8 * n_dims


def with_type(tmp_path: Path, ttype: int) -> Path:
    data = bytearray(CASE.read_bytes())
    struct.pack_into("<I", data, tensor_type_at(bytes(data), b"blk.0.attn_k.weight"), ttype)
    path = tmp_path / f"type{ttype}.gguf"
    path.write_bytes(bytes(data))
    return path


def big_endian(tmp_path: Path) -> Path:
    """The case's file as a big-endian host writes it: every header field byte-swapped (strings kept), the tensor
    data where it was (the header is as long in either byte order)."""
    src = CASE.read_bytes()
    out, pos = bytearray(b"GGUF"), 4

    def copy(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, src, pos)
        pos += struct.calcsize(fmt)
        out.extend(struct.pack(">" + fmt, value))
        return value

    def string():
        nonlocal pos
        n = copy("Q")
        out.extend(src[pos:pos + n])
        pos += n

    copy("I")
    n_tensors, n_kv = copy("Q"), copy("Q")
    for _ in range(n_kv):
        string()
        vtype = copy("I")
        if vtype == 8:
            string()
        else:
            copy({4: "I", 5: "i"}[vtype])  # the case's metadata holds strings and 32-bit integers only
    assert pos == KV_END
    for _ in range(n_tensors):
        string()
        for _ in range(copy("I")):
            copy("Q")
        copy("I")
        copy("Q")
    out.extend(src[pos:])
    path = tmp_path / "big_endian.gguf"
    path.write_bytes(bytes(out))
    return path


def with_version(tmp_path: Path, version: int) -> Path:
    data = bytearray(CASE.read_bytes())
    struct.pack_into("<I", data, 4, version)
    path = tmp_path / f"v{version}.gguf"
    path.write_bytes(bytes(data))
    return path


# --- the file check -------------------------------------------------------------------------------------------


def test_c301_the_removed_type_is_a_sound_file_with_the_q4_0_fix():
    with pytest.raises(UnloadableModelError) as e:
        check_gguf(CASE)
    msg = str(e.value)
    assert e.value.kind == "unsupported_tensor_type"
    assert "sound GGUF" in msg and "ggml type 31" in msg and "Q4_0_4_4" in msg and "'blk.0.attn_k.weight'" in msg
    assert "PR #10446" in msg and "use the repo's Q4_0 file (llama.cpp repacks Q4_0 at load)" in msg
    assert "damaged" not in msg and not advises_deleting(msg)


def test_c301_the_tensor_table_readers_say_the_same():
    # read_tensor_table is what the fetch's tensor mix and the roofline read the file with.
    with pytest.raises(UnloadableModelError, match=r"ggml type 31 .*Q4_0_4_4"):
        read_tensor_table(CASE)


@pytest.mark.parametrize(("ttype", "name", "plain"), [(32, "Q4_0_4_8", "Q4_0"), (33, "Q4_0_8_8", "Q4_0"),
                                                      (36, "IQ4_NL_4_4", "IQ4_NL"), (38, "IQ4_NL_8_8", "IQ4_NL")])
def test_every_removed_repacked_type_names_its_plain_type(tmp_path, ttype, name, plain):
    with pytest.raises(UnloadableModelError) as e:
        check_gguf(with_type(tmp_path, ttype))
    msg = str(e.value)
    assert f"ggml type {ttype}" in msg and name in msg and f"use the repo's {plain} file" in msg
    assert not advises_deleting(msg)


def test_a_type_the_gguf_library_does_not_know_asks_for_another_file_or_llama_cpp(tmp_path):
    with pytest.raises(UnloadableModelError) as e:
        check_gguf(with_type(tmp_path, 99))
    msg = str(e.value)
    assert e.value.kind == "unsupported_tensor_type" and "ggml type 99" in msg and "does not know" in msg
    assert "another file from the same repo, or another llama.cpp version (llama_cpp.version" in msg
    assert not advises_deleting(msg)


def test_a_big_endian_file_is_named_with_its_byte_order(tmp_path):
    path = big_endian(tmp_path)
    assert struct.unpack_from("<I", path.read_bytes(), 4)[0] == 3 << 24  # what llama.cpp reads on this host
    with pytest.raises(UnloadableModelError) as e:
        check_gguf(path)
    msg = str(e.value)
    assert e.value.kind == "unsupported_gguf_format" and "big-endian" in msg and "gguf-convert-endian" in msg
    assert not advises_deleting(msg)


@pytest.mark.parametrize("version", [99, 1])
def test_a_gguf_version_llama_cpp_does_not_read_is_named(tmp_path, version):
    with pytest.raises(UnloadableModelError) as e:
        check_gguf(with_version(tmp_path, version))
    msg = str(e.value)
    assert e.value.kind == "unsupported_gguf_format" and f"GGUF version {version}," in msg
    assert "another llama.cpp version (llama_cpp.version" in msg and not advises_deleting(msg)


def test_a_truncated_file_of_a_removed_type_is_damaged_and_fetched_again(tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(CASE.read_bytes()[:-100])
    with pytest.raises(CorruptModelError) as e:
        check_gguf(cut)
    assert not isinstance(e.value, UnloadableModelError)
    assert "truncated" in str(e.value) and FIX in str(e.value)


def test_a_file_of_an_unknown_type_whose_data_lies_past_its_end_is_damaged(tmp_path):
    data = bytearray(CASE.read_bytes())
    struct.pack_into("<I", data, tensor_type_at(bytes(data), b"blk.0.attn_norm.weight"), 99)
    path = tmp_path / "cut.gguf"
    # The data section starts at byte 384; the last tensor, now of a type of unknown size, at 384 + 832: the file
    # keeps every byte of the tensors before it and none of its own.
    path.write_bytes(bytes(data[:384 + 832]))
    with pytest.raises(CorruptModelError) as e:
        check_gguf(path)
    assert not isinstance(e.value, UnloadableModelError) and FIX in str(e.value)


@pytest.mark.parametrize(("cut", "why"), [(100, "damaged"), (6, "damaged")])
def test_a_header_cut_short_is_damaged(tmp_path, cut, why):
    path = tmp_path / "short.gguf"
    path.write_bytes(CASE.read_bytes()[:cut])
    with pytest.raises(CorruptModelError, match=why) as e:
        check_gguf(path)
    assert not isinstance(e.value, UnloadableModelError) and FIX in str(e.value)


def test_a_garbage_version_is_damaged(tmp_path):
    with pytest.raises(CorruptModelError, match="version field reads") as e:
        check_gguf(with_version(tmp_path, 0xDEADBEEF))
    assert not isinstance(e.value, UnloadableModelError) and FIX in str(e.value)


def test_a_big_endian_file_cut_short_is_damaged(tmp_path):
    path = big_endian(tmp_path)
    path.write_bytes(path.read_bytes()[:KV_END + 10])
    with pytest.raises(CorruptModelError) as e:
        check_gguf(path)
    assert not isinstance(e.value, UnloadableModelError) and FIX in str(e.value)


# --- the fetch ------------------------------------------------------------------------------------------------

REPO_ID, COMMIT = "bartowski/Qwen2.5-Coder-3B-Instruct-GGUF", "0123456789abcdef0123456789abcdef01234567"
PUBLISHED = "Qwen2.5-Coder-3B-Instruct-Q4_0_4_4.gguf"


class Fields(dict):
    """Snakemake's input/output/params/wildcards stand-in: attribute access and keys()."""

    __getattr__ = dict.__getitem__


def test_c301_the_fetch_says_unloadable_and_never_to_fetch_again(tmp_path, monkeypatch):
    """rule fetch_hf_quant's script on a hub cache that holds the published file (offline, as in test_fetch.py)."""
    import fetch_hf_model
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{REPO_ID.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / "c301").write_bytes(CASE.read_bytes())
    (repo_dir / "snapshots" / COMMIT).mkdir(parents=True)
    (repo_dir / "snapshots" / COMMIT / PUBLISHED).symlink_to("../../blobs/c301")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    out = tmp_path / "resources/models/qwen25coder3b"
    job = Fields(input=Fields(), output=Fields(gguf=str(out / "Q4_0_4_4.gguf"), record=str(out / "Q4_0_4_4.json")),
                 params=Fields(source={"repo": REPO_ID, "filename": PUBLISHED, "revision": COMMIT}),
                 wildcards=Fields(model="qwen25coder3b", quant="Q4_0_4_4"), log=[str(tmp_path / "fetch.log")])
    with pytest.raises(UnloadableModelError) as e:
        fetch_hf_model.main(job)
    assert "ggml type 31" in str(e.value) and "use the repo's Q4_0 file" in str(e.value)
    assert not advises_deleting(str(e.value))
    assert not advises_deleting(Path(job.log[0]).read_text())


# --- the jobs that meet it ------------------------------------------------------------------------------------


def test_c301_a_bench_job_ends_failed_with_the_unloadable_kind(tmp_path):
    from llmbench.study.measure import measure

    # The file check runs before any engine: the stand-in llama-server is never started.
    exe = tmp_path / "standin-llama-server"
    exe.write_text(f"#!{sys.executable}\nraise SystemExit('the stand-in must not run')\n")
    exe.chmod(0o755)
    rows = measure(bench_job(tmp_path, "llama-server", CASE, exe=exe, quant="Q4_0_4_4"), [], logging.getLogger("t"))
    row = rows.row(0, named=True)
    assert (row["status"], row["failure_kind"]) == ("failed", "unsupported_tensor_type")
    assert "use the repo's Q4_0 file" in row["status_reason"] and not advises_deleting(row["status_reason"])


def test_diagnosis_of_the_error_gives_its_kind():
    with pytest.raises(UnloadableModelError) as e:
        check_gguf(CASE)
    d = diagnosis_of(e.value, "llama-server")
    assert d.kind == "unsupported_tensor_type" and d.reason == str(e.value)


def test_c301_llama_cpp_s_own_line_is_the_unloadable_kind_with_or_without_the_file(tmp_path):
    from llmbench.engines.diagnosis import diagnose

    log = f"{LLAMA_SAYS}\ngguf_init_from_file_impl: failed to read tensor info\n" \
          "llama_model_load: error loading model: llama_model_loader: failed to load model from m.gguf\n"
    for model in (CASE, None):
        d = diagnose("llama-server", 1, log, model)
        assert d.kind == "unsupported_tensor_type" and d.line == LLAMA_SAYS
        assert "Q4_0 file" in d.reason and not advises_deleting(d.reason)


@pytest.mark.parametrize(("line", "kind"), [
    ("gguf_init_from_file_impl: tensor 'blk.0.ffn_down.weight' of type 36 (TYPE_IQ4_NL_4_4 REMOVED, use IQ4_NL with "
     "runtime repacking) has 2048 elements per row, not a multiple of block size (0)", "unsupported_tensor_type"),
    ("gguf_init_from_file_impl: tensor 'blk.0.attn_q.weight' has invalid ggml type 42 (NONE)",
     "unsupported_tensor_type"),
    ("gguf_init_from_file_impl: failed to load model: this GGUF file version 50331648 is extremely large, is there a "
     "mismatch between the host and model endianness?", "unsupported_gguf_format"),
    ("gguf_init_from_file_impl: this GGUF file is version 4 but this software only supports up to version 3",
     "unsupported_gguf_format"),
    ("Error: llama runner process has terminated: error loading model: gguf_init_from_file_impl: tensor "
     "'blk.0.attn_k.weight' of type 31: TYPE_Q4_0_4_4 REMOVED, use Q4_0 with runtime repacking",
     "unsupported_tensor_type"),
])
def test_other_wordings_of_an_unloadable_file(line, kind):
    from llmbench.engines.diagnosis import diagnose

    d = diagnose("Ollama", 1, f"{line}\nllama_model_load_from_file_impl: failed to load model\n")
    assert d.kind == kind and not advises_deleting(d.reason)


def test_an_invalid_type_in_a_damaged_file_is_still_damaged(tmp_path):
    from llmbench.engines.diagnosis import diagnose

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(with_type(tmp_path, 99).read_bytes()[:700])
    d = diagnose("llama-server", 1, "gguf_init_from_file_impl: tensor 'blk.0.attn_k.weight' has invalid ggml "
                 "type 99 (NONE)\n", cut)
    assert d.kind == "corrupt_model_file" and FIX in d.reason


def test_the_roofline_table_says_why_it_read_no_bytes_in_the_file_s_own_words():
    from llmbench.outputs.roofline import traffic_table

    row = traffic_table({("qwen25coder3b", "Q4_0_4_4"): CASE}).row(0, named=True)
    assert "ggml type 31" in row["bytes_null_reason"] and not advises_deleting(row["bytes_null_reason"])


def test_the_tensor_mix_of_the_fetch_record_is_left_out_not_called_damaged():
    from llmbench.modelfiles.tensor_mix import file_mix

    assert file_mix(CASE, "Q4_0_4_4", record=json.loads("{}")) is None
