import pytest

from llmbench.quants import KNOWN_QUANTS, UnknownQuantError, nominal_bits, order_by_bits


def test_ladder_is_ordered_coarsest_first():
    ladder = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"]
    assert order_by_bits(ladder) == ["Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16"]


def test_order_is_monotonic_in_bits_for_every_known_quant():
    bits = [nominal_bits(q) for q in order_by_bits(KNOWN_QUANTS)]
    assert bits == sorted(bits)


def test_unknown_quant_names_the_value_and_the_choices():
    with pytest.raises(UnknownQuantError, match=r"'Q9_K'.*Q4_K_M"):
        nominal_bits("Q9_K")


def test_schema_allows_exactly_the_known_quants(schema):
    allowed = schema["$defs"]["model"]["properties"]["quants"]["items"]["enum"]
    assert sorted(allowed) == sorted(KNOWN_QUANTS)
