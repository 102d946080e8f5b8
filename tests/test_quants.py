import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from llmbench.core import quants
from llmbench.core.quants import (
    KNOWN_QUANTS,
    NOMINAL_BITS_PER_WEIGHT,
    QUANTIZE_TYPES,
    UnknownQuantError,
    catalog,
    derivation_problem,
    nominal_bits,
    order_by_bits,
    rank,
)


def test_ladder_is_ordered_coarsest_first():
    ladder = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"]
    assert order_by_bits(ladder) == ["Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16"]


def test_order_is_monotonic_in_bits_for_every_known_quant():
    bits = [nominal_bits(q) for q in order_by_bits(KNOWN_QUANTS)]
    assert bits == sorted(bits)


def test_known_quants_are_already_in_rank_order_with_bits_for_each():
    # costs, roofline and quality rank by position in KNOWN_QUANTS: it must be the bits order.
    assert list(KNOWN_QUANTS) == order_by_bits(KNOWN_QUANTS)
    assert set(NOMINAL_BITS_PER_WEIGHT) == set(KNOWN_QUANTS)


def test_unknown_quant_names_the_value_and_the_choices():
    with pytest.raises(UnknownQuantError, match=r"'Q9_K'.*Q4_K_M"):
        nominal_bits("Q9_K")


def test_every_gguf_tensor_and_file_type_is_known():
    tensor_types = {t.name for t in GGMLQuantizationType} - {"I8", "I16", "I32", "I64"}
    file_types = {f.name.split("_", 1)[1] for f in LlamaFileType if f.name != "GUESSED"}
    assert set(KNOWN_QUANTS) == tensor_types | file_types
    assert {"MXFP4", "TQ2_0", "IQ4_NL", "Q4_K_M", "MXFP4_MOE"} <= set(KNOWN_QUANTS)


@pytest.mark.parametrize("quant, bits", [("Q8_0", 8.5), ("Q4_0", 4.5), ("MXFP4", 4.25), ("TQ2_0", 2.0625),
                                         ("IQ4_NL", 4.5), ("F16", 16.0)])
def test_bits_of_a_plain_type_come_from_gguf_block_and_type_size(quant, bits):
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[quant]]
    assert nominal_bits(quant) == bits == type_size * 8 / block


def test_bits_of_a_mix_come_from_llama_quantizes_table():
    # Q4_K_M: "4.58G ... @ Llama-3-8B", GiB over 8.03e9 weights; IQ3_M: "3.66 bpw quantization mix".
    assert nominal_bits("Q4_K_M") == round(4.58 * 2**30 * 8 / 8.03e9, 2) == 4.9
    assert nominal_bits("IQ3_M") == 3.66
    # Named after its tensor type where the table states no size.
    assert nominal_bits("MXFP4_MOE") == nominal_bits("MXFP4")


def test_a_new_type_is_ranked_without_a_code_change():
    # Names no table lists take their tensor type's bits (or go last), so old rows and new types still sort.
    assert order_by_bits(["Q8_0", "FOO", "MXFP4", "Q4_K_M", "Q3_K_XL"]) == ["Q3_K_XL", "MXFP4", "Q4_K_M", "Q8_0",
                                                                             "FOO"]
    assert rank(["F16", "MXFP4", "Q4_0"]) == {"MXFP4": 0, "Q4_0": 1, "F16": 2}
    # A gguf that knows one more tensor type and file type: both known, both in bits order.
    sizes = {t.name: GGML_QUANT_SIZES[t] for t in GGMLQuantizationType} | {"Q3_0": (32, 14)}
    new = catalog(sizes, [f.name for f in LlamaFileType] + ["MOSTLY_Q3_0_X"])
    assert new["Q3_0"] == 3.5 and new["Q3_0_X"] == 3.5
    names = list(new)
    assert names.index("IQ3_S") < names.index("Q3_0") < names.index("Q3_K_S")


def test_only_types_llama_quantize_makes_can_be_derived():
    assert {"F16", "Q8_0", "Q4_K_M", "IQ4_NL", "TQ2_0", "MXFP4_MOE"} <= set(QUANTIZE_TYPES)
    assert derivation_problem("Q4_K_M") is None
    why = derivation_problem("MXFP4")
    assert "cannot make MXFP4" in why and "source.files" in why and "MXFP4_MOE" in why
    # Every name llama-quantize makes that gguf can read is a known quant; Q2_0 (not in gguf 0.19.0) is neither.
    assert set(QUANTIZE_TYPES) <= set(KNOWN_QUANTS)
    assert "Q2_0" not in QUANTIZE_TYPES and "Q2_0" in dict(quants.LLAMA_QUANTIZE_OPTIONS)


def test_schema_leaves_quant_names_to_the_libraries(schema):
    # No hand-kept enum: configcheck checks the names against KNOWN_QUANTS.
    assert "enum" not in schema["$defs"]["model"]["properties"]["quants"]["items"]
    assert "enum" not in schema["$defs"]["tool"]["properties"]["quants"]["items"]
