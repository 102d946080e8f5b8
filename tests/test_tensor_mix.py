"""What a quant file really holds (llmbench.modelfiles.tensor_mix), read from real GGUF headers written here with the gguf
package (tensor data zeros: only the header is read), and llama-quantize's own fallback warnings recorded from this
project's build deriving SmolLM2-135M's Q4_K_M (rows 576 wide)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quant_shape_to_byte_shape

from conftest import REPO, write_tiny_gguf
from llmbench.modelfiles.models import CorruptModelError
from llmbench.modelfiles.tensor_mix import HEADER_SOURCE, WARNING_SOURCE, quantize_warnings, tensor_mix

RECORDED_LOG = REPO / "tests/data/llama_quantize_q4_k_m_fallbacks.log"


def matrix(qtype: str, rows: int, ncols: int):
    """A weight matrix of ``rows`` rows of ``ncols`` weights stored as ``qtype`` (zeros)."""
    t = GGMLQuantizationType[qtype]
    if t == GGMLQuantizationType.F32:
        return np.zeros((rows, ncols), np.float32)
    return np.zeros(quant_shape_to_byte_shape((rows, ncols), t), np.uint8), t


def nbytes(qtype: str, rows: int, ncols: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    return rows * ncols // block * size


def smol_like(tmp_path, name="Q4_K_M.gguf"):
    """Rows 576 wide as SmolLM2-135M's: what llama-quantize makes of a Q4_K_M there, a norm beside."""
    return write_tiny_gguf(tmp_path / name, tensors={
        "token_embd.weight": matrix("Q8_0", 64, 576),  # the tied output: Q6_K wanted, Q8_0 given
        "blk.0.attn_q.weight": matrix("Q5_0", 576, 576),  # Q4_K wanted
        "blk.0.attn_v.weight": matrix("Q8_0", 64, 576),  # Q6_K wanted
        "blk.0.ffn_down.weight": matrix("Q6_K", 576, 1536),  # 1536 = 6 × 256: the K type fits
        "blk.0.ffn_up.weight": matrix("Q4_K", 1536, 512),
        "blk.0.attn_norm.weight": np.ones(576, np.float32),  # F32 in every quant: not in the mix
    })


def test_a_small_models_q4_k_m_is_mostly_fallbacks_read_from_its_header(tmp_path):
    mix = tensor_mix(smol_like(tmp_path), "Q4_K_M")
    sizes = {"Q8_0": nbytes("Q8_0", 64, 576) * 2, "Q5_0": nbytes("Q5_0", 576, 576),
             "Q6_K": nbytes("Q6_K", 576, 1536), "Q4_K": nbytes("Q4_K", 1536, 512)}
    total = sum(sizes.values())
    assert mix.matrices == 5 and {t.type: t.bytes for t in mix.types} == sizes
    assert [t.type for t in mix.types] == sorted(sizes, key=lambda k: -sizes[k])  # largest share first
    assert {t.type: t.share for t in mix.types} == pytest.approx({k: v / total for k, v in sizes.items()})
    assert {t.type: t.nominal_bits_per_weight for t in mix.types} == {"Q8_0": 8.5, "Q5_0": 5.5, "Q6_K": 6.5625,
                                                                      "Q4_K": 4.5}
    weights = 64 * 576 * 2 + 576 * 576 + 576 * 1536 + 1536 * 512
    assert mix.bits_per_weight == pytest.approx(total * 8 / weights) and mix.nominal_bits_per_weight == 4.9
    got = {f.tensor: (f.type, f.intended, f.ncols, f.source) for f in mix.fallbacks}
    assert got == {"token_embd.weight": ("Q8_0", "Q6_K", 576, HEADER_SOURCE),
                   "blk.0.attn_q.weight": ("Q5_0", "Q4_K", 576, HEADER_SOURCE),
                   "blk.0.attn_v.weight": ("Q8_0", "Q6_K", 576, HEADER_SOURCE)}
    assert not mix.matches_label
    note = mix.note()
    assert note.startswith(f"Q4_K_M here holds {mix.summary()} by weight bytes")
    assert "3 of 5 weight matrices fell back from Q4_K, Q6_K (rows 576 wide" in note
    assert "3 judged from the GGUF header" in note and mix.record()["note"] == note


def test_llama_quantizes_warnings_name_the_fallbacks_where_it_derived_the_file(tmp_path):
    warnings = quantize_warnings(RECORDED_LOG.read_text())
    assert warnings["blk.0.attn_q.weight"] == {"ncols": 576, "intended": "Q4_K", "type": "Q5_0"}
    assert warnings["blk.0.attn_v.weight"] == {"ncols": 576, "intended": "Q6_K", "type": "Q8_0"}
    assert len(warnings) == 4  # the token_embd line converts without a warning: the header judges it
    mix = tensor_mix(smol_like(tmp_path), "Q4_K_M", warnings)
    sources = {f.tensor: f.source for f in mix.fallbacks}
    assert sources == {"token_embd.weight": HEADER_SOURCE, "blk.0.attn_q.weight": WARNING_SOURCE,
                       "blk.0.attn_v.weight": WARNING_SOURCE}
    assert "2 named by llama-quantize's warnings; 1 judged from the GGUF header" in mix.note()


def test_a_file_whose_tensors_match_its_label_has_no_note(tmp_path):
    # Llama-3.1-8B's widths (4096, 14336) are multiples of 256: its Q4_K_M is Q4_K and Q6_K.
    path = write_tiny_gguf(tmp_path / "8b.gguf", tensors={
        "blk.0.attn_q.weight": matrix("Q4_K", 64, 4096), "blk.0.ffn_down.weight": matrix("Q6_K", 64, 14336)})
    mix = tensor_mix(path, "Q4_K_M")
    assert mix.matches_label and mix.note() is None and mix.record()["matches_label"] is True
    assert mix.summary() == "84 % Q6_K, 16 % Q4_K"  # 752,640 and 147,456 bytes


def test_the_labels_own_type_is_never_a_fallback(tmp_path):
    # Q4_0 and Q5_0 are 32-block types: rows of 576 hold them; only a K type asked for falls back.
    path = write_tiny_gguf(tmp_path / "q4_0.gguf", tensors={"blk.0.attn_q.weight": matrix("Q4_0", 64, 576)})
    assert tensor_mix(path, "Q4_0").matches_label
    assert tensor_mix(path, "F16").matches_label  # a float label has no K type to fall back from
    # The same tensor under a K label is a fallback from the 2-/3-bit K types.
    assert [f.intended for f in tensor_mix(path, "Q3_K_M").fallbacks] == ["Q2_K or Q3_K"]


def test_a_damaged_file_is_named(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(CorruptModelError, match="not a GGUF"):
        tensor_mix(bad, "Q4_K_M")


def test_a_synthetic_file_is_recorded_as_holding_what_its_label_says(tmp_path):
    from llmbench.modelfiles.synthetic import make_synthetic_model

    record = make_synthetic_model(tmp_path / "Q4_0.gguf", "llama-tiny", "Q4_0", 0, "tiny")
    mix = record["tensor_mix"]
    # Its output matrix is Q6_K as llama-quantize makes it (rows 256 wide): by design, not a fallback.
    assert mix["matches_label"] and mix["note"] is None and mix["fallbacks"] == []
    assert [t["type"] for t in mix["types"]] == ["Q4_0", "Q6_K"]


def test_outside_the_k_and_i_quants_only_the_output_matrix_falls_back(tmp_path):
    # A Q4_0 file asks Q6_K of its output matrix only: rows 576 wide give Q8_0 there, by fallback.
    untied = write_tiny_gguf(tmp_path / "untied.gguf", tensors={
        "token_embd.weight": matrix("Q4_0", 64, 576), "output.weight": matrix("Q8_0", 64, 576),
        "blk.0.attn_q.weight": matrix("Q8_0", 64, 576)})
    assert [(f.tensor, f.intended) for f in tensor_mix(untied, "Q4_0").fallbacks] == [("output.weight", "Q6_K")]
    # MXFP4_MOE keeps all but the experts at Q8_0 by design (gpt-oss's rows are 2880 wide): no fallback.
    moe = write_tiny_gguf(tmp_path / "moe.gguf", tensors={"blk.0.attn_q.weight": matrix("Q8_0", 64, 2880),
                                                          "output.weight": matrix("Q8_0", 64, 2880)})
    assert tensor_mix(moe, "MXFP4_MOE").matches_label
