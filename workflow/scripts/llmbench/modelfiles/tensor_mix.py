"""What a quant file really holds: the tensor types behind its label, and the tensors that fell back.

A quant label (Q4_K_M) names what llama-quantize was asked for, not what every tensor became. K-quant and most
i-quant types pack 256 weights per block, so a tensor whose rows (its first dimension, ncols) are not a multiple of
256 cannot take them: llama-quantize falls back to a 32-block type and warns ("ncols 576 not divisible by 256
(required for type q5_K) -> falling back to q5_1"). Small models that teams run have such rows (SmolLM2-135M
576, Qwen2.5-0.5B 896, Gemma 3 270M 640), so their "Q4_K_M" may be mostly Q5_0 and Q8_0.

The fallback table is llama.cpp's ``tensor_type_fallback`` (src/llama-quant.cpp of the pinned build, llama.cpp
0c1e570): Q2_K, Q3_K, Q2_0, TQ1_0, TQ2_0 -> Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0; the 256-block i-quants
-> IQ4_NL; F16 where even that block does not divide the row. A file the workflow derived carries llama-quantize's
own warnings (its record's ``quantize_fallbacks``); for any other file a tensor is counted as a fallback from its
header alone: its type is one of those fallback types, not the label's own type, and its rows are not a multiple
of the 256-weight block it would otherwise have had.

The mix counts the weight matrices (tensors of two or more dimensions); the one-dimensional norms and biases are
F32 in every quant and are left out, as llama-quantize leaves them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from llmbench.core.quants import NOMINAL_BITS_PER_WEIGHT, named_after
from llmbench.modelfiles.models import read_tensor_table

QK_K = 256  # weights per block of the K-quant and 256-block i-quant types
_IQ_256 = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS")
# llama.cpp src/llama-quant.cpp tensor_type_fallback: the type asked for -> the type a tensor gets instead.
FALLBACK_OF: dict[str, str] = {
    **dict.fromkeys(("Q2_K", "Q3_K", "Q2_0", "TQ1_0", "TQ2_0"), "Q4_0"),
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
    **dict.fromkeys(_IQ_256, "IQ4_NL"),
}
WARNING_SOURCE = "llama-quantize's warning"
HEADER_SOURCE = "row width in the GGUF header"
SHARE_SHOWN = 0.005  # types under half a percent of the bytes are summed as "other"
# llama-quantize's warning (llama-quant.cpp), one per tensor that fell back.
_WARNING = re.compile(
    r"warning:\s+(?P<tensor>\S+)\s+- ncols\s+(?P<ncols>\d+) not divisible by\s+(?P<block>\d+) \(required for type\s+"
    r"(?P<intended>\S+)\)\s+(?:\(WARNING: must use F16 due to unusual shape\)\s+)?-> falling back to\s+(?P<got>\S+)")


@dataclass(frozen=True)
class TypeShare:
    type: str
    tensors: int
    weights: int
    bytes: int
    share: float  # of the weight matrices' bytes
    nominal_bits_per_weight: float | None  # the type's own: type size × 8 / block size (gguf)


@dataclass(frozen=True)
class Fallback:
    tensor: str
    type: str  # what the tensor holds
    intended: str  # the type llama-quantize was to give it ("Q4_K"; "Q2_K or Q3_K" where the header cannot tell)
    ncols: int
    source: str  # WARNING_SOURCE or HEADER_SOURCE


@dataclass(frozen=True)
class TensorMix:
    """A file's weight matrices by ggml type, its measured bits per weight, and its fallbacks (label: the quant)."""

    label: str
    matrices: int
    types: list[TypeShare]
    bits_per_weight: float  # of the weight matrices: their bytes × 8 over their weights
    nominal_bits_per_weight: float | None  # of the label (llmbench.core.quants)
    fallbacks: list[Fallback] = field(default_factory=list)

    @property
    def matches_label(self) -> bool:
        return not self.fallbacks

    def summary(self) -> str:
        """The mix by weight bytes, largest first: "52 % Q5_0, 31 % Q8_0, 10 % Q6_K, 8 % Q4_K"."""
        shown = [t for t in self.types if t.share >= SHARE_SHOWN]
        rest = sum(t.share for t in self.types if t.share < SHARE_SHOWN)
        parts = [f"{_pct(t.share)} {t.type}" for t in shown]
        return ", ".join(parts + ([f"{_pct(rest)} other"] if rest else []))

    def note(self) -> str | None:
        """What the label does not say, for a footnote or caption; None where every tensor is of the label's kind."""
        if self.matches_label:
            return None
        widths = sorted({f.ncols for f in self.fallbacks})
        intended = sorted({f.intended for f in self.fallbacks})
        warned = sum(f.source == WARNING_SOURCE for f in self.fallbacks)
        how = "; ".join(part for part in (
            f"{warned} named by llama-quantize's warnings" if warned else "",
            f"{len(self.fallbacks) - warned} judged from the GGUF header" if warned < len(self.fallbacks) else "",
        ) if part)
        nominal = (f", nominal {self.nominal_bits_per_weight:.2f}" if self.nominal_bits_per_weight is not None
                   else "")
        return (f"{self.label} here holds {self.summary()} by weight bytes ({self.bits_per_weight:.2f} bits per "
                f"weight{nominal}): {len(self.fallbacks)} of {self.matrices} weight matrices fell back from "
                f"{', '.join(intended)} (rows {', '.join(map(str, widths))} wide, not a multiple of the type's "
                f"{QK_K}-weight block; {how})")

    def record(self) -> dict:
        """For the model's .json and provenance."""
        return {
            "label": self.label,
            "weight_matrices": self.matrices,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "nominal_bits_per_weight": self.nominal_bits_per_weight,
            "types": [vars(t) | {"share": round(t.share, 4)} for t in self.types],
            "fallbacks": [vars(f) for f in self.fallbacks],
            "summary": self.summary(),
            "matches_label": self.matches_label,
            "note": self.note(),
        }


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %" if share >= 0.01 else "<1 %"


def quantize_warnings(log_text: str) -> dict[str, dict]:
    """llama-quantize's fallback warnings: tensor name -> {ncols, intended, type} (types upper case, as gguf)."""
    return {m["tensor"]: {"ncols": int(m["ncols"]), "intended": m["intended"].upper(), "type": m["got"].upper()}
            for m in _WARNING.finditer(log_text)}


def _label_type(label: str) -> str | None:
    """The tensor type a label is made of or named after (Q4_K_M -> Q4_K, Q8_0 -> Q8_0)."""
    return named_after(label, {t.name: 0.0 for t in GGMLQuantizationType})


def _kind(name: str) -> str:
    """K-quant, i-quant, ternary, or another (legacy 32-block, MXFP4, float) type or label."""
    return "K" if "_K" in name else "IQ" if name.startswith("IQ") else "TQ" if name.startswith("TQ") else "other"


def _header_fallback(type_name: str, ncols: int, dims: int, label: str, is_output: bool) -> str | None:
    """The type(s) a tensor fell back from, judged from the header alone; None where it did not fall back.

    In a K, i- or ternary-quant file the fallback comes from a type of the label's kind. In a file of another
    label only the output matrix (or the token embedding tied to it) is asked a K type: Q6_K in the legacy 32-block
    quants (Q4_0 … Q5_1), which falls back to Q8_0; elsewhere (Q8_0, MXFP4_MOE's Q8_0 for all but the experts, a
    float) nothing is a fallback."""
    own = _label_type(label)
    if type_name == own or own is None or own in ("F16", "BF16", "F32"):
        return None
    if type_name == "F16" and dims >= 2 and ncols % 32:
        return "a quantized type (no 32-weight block fits its rows)"
    if ncols % QK_K == 0:
        return None
    froms = [k for k, v in FALLBACK_OF.items() if v == type_name]
    if _kind(label) != "other":
        family = [k for k in froms if _kind(k) == _kind(label)]
    else:
        family = ["Q6_K"] if is_output and type_name == "Q8_0" and own in LEGACY else []
    return " or ".join(family) if family else None


LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")


def tensor_mix(paths: Path | Iterable[Path], label: str, warnings: Mapping[str, dict] | None = None) -> TensorMix:
    """The mix of the GGUF at ``paths`` (a whole file, or every shard of a split one) under the quant ``label``;
    ``warnings`` (quantize_warnings of the llama-quantize run that made it, where the workflow derived it) name the
    fallbacks exactly. Raises CorruptModelError (llmbench.modelfiles.models) for a file that is not a readable GGUF."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    warnings = warnings or {}
    by_type: dict[str, list[int]] = {}
    fallbacks, weights, nbytes, matrices = [], 0, 0, 0
    tables = [read_tensor_table(path) for path in paths]
    # A model without its own output matrix reads the token embedding as its output (tied): quantized as one.
    tied = not any(t.name == "output.weight" for table in tables for t in table.tensors)
    output = {"output.weight", *(("token_embd.weight",) if tied else ())}
    for table in tables:
        for t in table.tensors:
            if len(t.dims) < 2:
                continue  # a norm or bias: F32 in every quant
            name = GGMLQuantizationType(t.ggml_type).name
            matrices += 1
            acc = by_type.setdefault(name, [0, 0, 0])
            acc[0] += 1
            acc[1] += t.weights
            acc[2] += t.nbytes
            weights += t.weights
            nbytes += t.nbytes
            if t.name in warnings:
                w = warnings[t.name]
                fallbacks.append(Fallback(t.name, name, w["intended"], w["ncols"], WARNING_SOURCE))
            elif (intended := _header_fallback(name, t.dims[0], len(t.dims), label, t.name in output)) is not None:
                fallbacks.append(Fallback(t.name, name, intended, t.dims[0], HEADER_SOURCE))
    types = sorted(
        (TypeShare(name, n, w, b, b / nbytes if nbytes else 0.0, _bits(name)) for name, (n, w, b) in by_type.items()),
        key=lambda s: (-s.bytes, s.type))
    return TensorMix(label, matrices, types, nbytes * 8 / weights if weights else 0.0,
                     NOMINAL_BITS_PER_WEIGHT.get(label), fallbacks)


def _bits(type_name: str) -> float | None:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return size * 8 / block


def file_mix(path: Path, label: str, record: Mapping | None = None) -> TensorMix | None:
    """The mix of a study's model file: every shard where it is split, with llama-quantize's warnings where its
    record (``record``, else the .json beside it) has them; None for a file the GGUF check refuses (the jobs that
    use it say why)."""
    import json

    from llmbench.modelfiles.models import CorruptModelError, check_gguf

    path = Path(path)
    beside = path.with_suffix(".json")
    if record is None and beside.exists():
        record = json.loads(beside.read_text())
    try:
        shards = check_gguf(path).get("shards") or [path.name]
        return tensor_mix([path.parent / name for name in shards], label, (record or {}).get("quantize_fallbacks"))
    except CorruptModelError:
        return None
