"""The GGUF quant types the study knows, their nominal bits per weight, and their order.

The names are not kept here: they are read from the type tables of the libraries the study uses, so that a type
a newer library knows (gpt-oss's MXFP4, llama.cpp PR #15091) needs a version pin, not a code change.

- gguf's ``GGMLQuantizationType``: the tensor types (Q4_0, Q4_K, IQ4_NL, TQ2_0, MXFP4, ...). ``GGML_QUANT_SIZES``
  gives each one's block (weights) and type size (bytes), so its bits per weight are exact:
  type_size * 8 / block_size (Q8_0: 34 bytes per 32 weights = 8.5). The integer types (I8 to I64) hold indices
  and counts, not weights, and are left out.
- gguf's ``LlamaFileType``: the file types (``MOSTLY_Q4_K_M`` -> ``Q4_K_M``), the names llama-quantize takes and a
  GGUF states in ``general.file_type``. Most are a tensor type; the K-quant mixes (Q4_K_M, Q3_K_S, ...) and a few
  i-quant mixes are not.
- llama-quantize's table (``QUANT_OPTIONS`` in tools/quantize/quantize.cpp of the pinned llama.cpp, copied below):
  which types it can make, and the nominal size of the mixes.

Nominal bits per weight of a name, the first rule that applies:
1. a tensor type: its exact bits per weight from gguf (Q4_0 4.5, Q8_0 8.5, MXFP4 4.25);
2. a mix llama-quantize's table gives a Llama-3-8B file size for (Q4_K_M "4.58G"): that size in GiB over the
   model's 8.03e9 weights (4.90); one it states a bpw for (IQ3_M "3.66 bpw quantization mix"): that bpw;
   an alias ("alias for Q4_K_M"): its target's;
3. any other name: the bits of the tensor type it is named after (MXFP4_MOE -> MXFP4, a new Q3_K_XL -> Q3_K).
They order quants in figures and tables, never stand for a measurement: measured bits per weight come from the
files themselves. (The table that was kept here before read llama-quantize's GiB as 1e9 bytes, 7 % low.)
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

# llama-quantize's QUANT_OPTIONS: (name, description), as tools/quantize/quantize.cpp lists them in the llama.cpp
# vendored by llama-cpp-python 0.3.36 (the llama_cpp.version the schema pins; the same table is in
# ggml-org/llama.cpp at commit 03161a4eb9a2ec66ef97789f347c5a28279f06ea). `llama-quantize --help` prints it. When
# the pin moves, paste the new table here: the names it can make and the mixes' sizes follow.
LLAMA_QUANTIZE_VERSION = "llama-cpp-python 0.3.36"
LLAMA_QUANTIZE_OPTIONS: tuple[tuple[str, str], ...] = (
    ("Q1_0", " 1.125 bpw quantization"),
    ("Q2_0", " 2.25 bpw quantization (group 64)"),
    ("Q4_0", " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    ("Q4_1", " 4.78G, +0.4511 ppl @ Llama-3-8B"),
    ("MXFP4_MOE", " MXFP4 MoE"),
    ("Q5_0", " 5.21G, +0.1316 ppl @ Llama-3-8B"),
    ("Q5_1", " 5.65G, +0.1062 ppl @ Llama-3-8B"),
    ("IQ2_XXS", " 2.06 bpw quantization"),
    ("IQ2_XS", " 2.31 bpw quantization"),
    ("IQ2_S", " 2.5  bpw quantization"),
    ("IQ2_M", " 2.7  bpw quantization"),
    ("IQ1_S", " 1.56 bpw quantization"),
    ("IQ1_M", " 1.75 bpw quantization"),
    ("TQ1_0", " 1.69 bpw ternarization"),
    ("TQ2_0", " 2.06 bpw ternarization"),
    ("Q2_K", " 2.96G, +3.5199 ppl @ Llama-3-8B"),
    ("Q2_K_S", " 2.96G, +3.1836 ppl @ Llama-3-8B"),
    ("IQ3_XXS", " 3.06 bpw quantization"),
    ("IQ3_S", " 3.44 bpw quantization"),
    ("IQ3_M", " 3.66 bpw quantization mix"),
    ("Q3_K", "alias for Q3_K_M"),
    ("IQ3_XS", " 3.3 bpw quantization"),
    ("Q3_K_S", " 3.41G, +1.6321 ppl @ Llama-3-8B"),
    ("Q3_K_M", " 3.74G, +0.6569 ppl @ Llama-3-8B"),
    ("Q3_K_L", " 4.03G, +0.5562 ppl @ Llama-3-8B"),
    ("IQ4_NL", " 4.50 bpw non-linear quantization"),
    ("IQ4_XS", " 4.25 bpw non-linear quantization"),
    ("Q4_K", "alias for Q4_K_M"),
    ("Q4_K_S", " 4.37G, +0.2689 ppl @ Llama-3-8B"),
    ("Q4_K_M", " 4.58G, +0.1754 ppl @ Llama-3-8B"),
    ("Q5_K", "alias for Q5_K_M"),
    ("Q5_K_S", " 5.21G, +0.1049 ppl @ Llama-3-8B"),
    ("Q5_K_M", " 5.33G, +0.0569 ppl @ Llama-3-8B"),
    ("Q6_K", " 6.14G, +0.0217 ppl @ Llama-3-8B"),
    ("Q8_0", " 7.96G, +0.0026 ppl @ Llama-3-8B"),
    ("F16", "14.00G, +0.0020 ppl @ Mistral-7B"),
    ("BF16", "14.00G, -0.0050 ppl @ Mistral-7B"),
    ("F32", "26.00G              @ 7B"),
    ("COPY", "only copy tensors, no quantizing"),
)
# Llama-3-8B's weights, which the table's sizes (GiB) are of.
LLAMA3_8B_WEIGHTS = 8.03e9
_GIB = 2**30
_SIZE = re.compile(r"^\s*(?P<gib>[0-9.]+)G,.*@ Llama-3-8B$")
_BPW = re.compile(r"^\s*(?P<bpw>[0-9.]+)\s+bpw\b")
_ALIAS = re.compile(r"^alias for (?P<target>\w+)$")
_INTEGER_TYPE = re.compile(r"^I[0-9]+$")

# The finest type a ladder is derived from: llama-quantize's F16 of the source file.
REFERENCE_QUANT = "F16"


class UnknownQuantError(ValueError):
    pass


def tensor_type_bits(quant_sizes: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Bits per weight of each tensor type, from its (block size, type size): type_size * 8 / block_size."""
    return {name: type_size * 8 / block for name, (block, type_size) in quant_sizes.items()
            if not _INTEGER_TYPE.match(name)}


def file_type_names(file_types: Iterable[str]) -> list[str]:
    """llama-quantize's names of gguf's LlamaFileType members: MOSTLY_Q4_K_M -> Q4_K_M, ALL_F32 -> F32."""
    return [name.split("_", 1)[1] for name in file_types if name.startswith(("MOSTLY_", "ALL_"))]


def quantize_table_bits(options: Iterable[tuple[str, str]] = LLAMA_QUANTIZE_OPTIONS) -> dict[str, float]:
    """Nominal bits per weight llama-quantize's table states: a Llama-3-8B file size over its weights, a stated bpw,
    or an alias's target's."""
    options = list(options)
    bits: dict[str, float] = {}
    for name, desc in options:
        if m := _SIZE.match(desc):
            bits[name] = round(float(m["gib"]) * _GIB * 8 / LLAMA3_8B_WEIGHTS, 2)
        elif m := _BPW.match(desc):
            bits[name] = float(m["bpw"])
    for name, desc in options:
        if (m := _ALIAS.match(desc)) and m["target"] in bits:
            bits[name] = bits[m["target"]]
    return bits


def named_after(quant: str, tensor_bits: Mapping[str, float]) -> str | None:
    """The tensor type a name is made of or named after (MXFP4_MOE -> MXFP4, Q4_K_M -> Q4_K), the longest."""
    found = [t for t in tensor_bits if quant == t or quant.startswith(t + "_")]
    return max(found, key=len) if found else None


def catalog(
    quant_sizes: Mapping[str, tuple[int, int]],
    file_types: Iterable[str],
    options: Iterable[tuple[str, str]] = LLAMA_QUANTIZE_OPTIONS,
) -> dict[str, float | None]:
    """Every name gguf knows (tensor types and file types), coarsest first, with its nominal bits per weight (the
    module docstring's rules; None where none applies, ordered last)."""
    tensor_bits = tensor_type_bits(quant_sizes)
    table_bits = quantize_table_bits(options)
    bits: dict[str, float | None] = {}
    for name in [*tensor_bits, *file_type_names(file_types)]:
        if name in tensor_bits:
            bits[name] = tensor_bits[name]
        elif name in table_bits:
            bits[name] = table_bits[name]
        else:
            base = named_after(name, tensor_bits)
            bits[name] = tensor_bits[base] if base else None
    return dict(sorted(bits.items(), key=lambda kv: (math.inf if kv[1] is None else kv[1], kv[0])))


_CATALOG = catalog({t.name: GGML_QUANT_SIZES[t] for t in GGMLQuantizationType}, [f.name for f in LlamaFileType])
_TENSOR_BITS = tensor_type_bits({t.name: GGML_QUANT_SIZES[t] for t in GGMLQuantizationType})

# Every quant name the study accepts, coarsest first (a position in it is a rank by bits per weight).
KNOWN_QUANTS: tuple[str, ...] = tuple(_CATALOG)
NOMINAL_BITS_PER_WEIGHT: dict[str, float] = {q: b for q, b in _CATALOG.items() if b is not None}

# The names llama-quantize can make (a derived ladder's quants), of those gguf can read back.
QUANTIZE_TYPES: tuple[str, ...] = tuple(q for q, _ in LLAMA_QUANTIZE_OPTIONS if q in _CATALOG)


def unknown_quant_message(quant: str) -> str:
    """Why ``quant`` is not a quant name and what to write instead."""
    if quant in dict(LLAMA_QUANTIZE_OPTIONS) and quant != "COPY":
        hint = (f"{quant} is a llama-quantize type the pinned gguf package cannot read (the file check reads every "
                "tensor's type with it): pin a gguf that knows it (requirements.txt, workflow/envs/llmbench.yaml). ")
    elif close := difflib.get_close_matches(quant, KNOWN_QUANTS, n=3, cutoff=0.75):
        hint = f"did you mean {' or '.join(close)}? "
    else:
        hint = ""
    return (f"{quant!r} is not allowed; allowed: {', '.join(KNOWN_QUANTS)}. {hint}These are the tensor and file "
            "types of the pinned gguf package (GGMLQuantizationType, LlamaFileType), spelt as llama-quantize spells "
            "them: correct the name, or pin a gguf that knows the type")


def nominal_bits(quant: str) -> float:
    try:
        return NOMINAL_BITS_PER_WEIGHT[quant]
    except KeyError:
        raise UnknownQuantError(
            f"unknown quant type {quant!r}; known types: {', '.join(KNOWN_QUANTS)}"
        ) from None


def sort_key(quant: str) -> tuple[float, str]:
    """(nominal bits per weight, name): a name no table lists takes the bits of the tensor type it is named after
    (a newer Q3_K_XL those of Q3_K), and goes last where there is none."""
    bits = NOMINAL_BITS_PER_WEIGHT.get(quant)
    if bits is None and (base := named_after(quant, _TENSOR_BITS)):
        bits = _TENSOR_BITS[base]
    return (math.inf if bits is None else bits, quant)


def order_by_bits(quants: Iterable[str]) -> list[str]:
    """Coarsest first; ties by name so the result is deterministic; names no table knows last."""
    return sorted(set(quants), key=sort_key)


def rank(quants: Iterable[str | None]) -> dict[str, int]:
    """Each quant's position, coarsest first, names no table knows last (see sort_key); None is left out.

    The order of tables and figures: ``pl.col("quant").replace_strict(rank(df["quant"]), return_dtype=pl.Int64)``.
    """
    return {q: i for i, q in enumerate(order_by_bits(q for q in quants if q is not None))}


def derivation_problem(quant: str) -> str | None:
    """Why llama-quantize cannot make ``quant``, with what to do instead; None where it can."""
    if quant in QUANTIZE_TYPES:
        return None
    makes = [q for q in QUANTIZE_TYPES if q.startswith(quant + "_")]
    instead = f", or derive {' or '.join(makes)} (mostly {quant} tensors) instead" if makes else ""
    return (f"llama-quantize ({LLAMA_QUANTIZE_VERSION}'s llama.cpp, tools/quantize/quantize.cpp) cannot make {quant}; "
            f"it makes {', '.join(QUANTIZE_TYPES)}. List a published {quant} GGUF under source.files (one file per "
            f"quant from the hub){instead}")
