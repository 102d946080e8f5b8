"""The GGUF quantization types the study knows, ordered by bits per weight.

Nominal bits per weight: for the k-quants and legacy types, llama-quantize's own reference file sizes for
Llama-3-8B (tools/quantize/quantize.cpp, "4.34G ... @ Llama-3-8B") times 8 over 8.03e9 weights; for the i-quants
and ternary types the bpw that the same table states; float types by definition. They are used to order quants
in figures and tables, never as a measurement: measured bits per weight come from the files themselves.
"""

from __future__ import annotations

NOMINAL_BITS_PER_WEIGHT: dict[str, float] = {
    "IQ1_S": 1.56,
    "TQ1_0": 1.69,
    "IQ1_M": 1.75,
    "IQ2_XXS": 2.06,
    "TQ2_0": 2.06,
    "IQ2_XS": 2.31,
    "IQ2_S": 2.5,
    "IQ2_M": 2.7,
    "Q2_K_S": 2.94,
    "Q2_K": 2.95,
    "IQ3_XXS": 3.06,
    "IQ3_XS": 3.3,
    "Q3_K_S": 3.40,
    "IQ3_S": 3.44,
    "IQ3_M": 3.66,
    "Q3_K_M": 3.73,
    "Q3_K_L": 4.02,
    "IQ4_XS": 4.25,
    "Q4_0": 4.32,
    "Q4_K_S": 4.35,
    "IQ4_NL": 4.5,
    "Q4_K_M": 4.56,
    "Q4_1": 4.76,
    "Q5_0": 5.19,
    "Q5_K_S": 5.19,
    "Q5_K_M": 5.31,
    "Q5_1": 5.63,
    "Q6_K": 6.12,
    "Q8_0": 7.93,
    "BF16": 16.0,
    "F16": 16.0,
    "F32": 32.0,
}

KNOWN_QUANTS: tuple[str, ...] = tuple(NOMINAL_BITS_PER_WEIGHT)

# The finest type a ladder is derived from: llama-quantize's F16 of the source file.
REFERENCE_QUANT = "F16"


class UnknownQuantError(ValueError):
    pass


def nominal_bits(quant: str) -> float:
    try:
        return NOMINAL_BITS_PER_WEIGHT[quant]
    except KeyError:
        raise UnknownQuantError(
            f"unknown quant type {quant!r}; known types: {', '.join(KNOWN_QUANTS)}"
        ) from None


def order_by_bits(quants: list[str] | tuple[str, ...]) -> list[str]:
    """Coarsest first; ties keep the catalog's order so the result is deterministic."""
    rank = {q: i for i, q in enumerate(KNOWN_QUANTS)}
    return sorted(set(quants), key=lambda q: (nominal_bits(q), rank[q]))
