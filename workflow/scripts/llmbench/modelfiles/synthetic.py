"""Synthetic-shape models: a GGUF with a real architecture's dimensions and random weights.

Speed and energy of a decoder depend on its shapes and weight types, not on what its weights say, so a file with
Llama 3.1 8B's dimensions in Q4_0 plans a GPU's speed and energy before 4.7 GB are downloaded. Its answers are
noise: no quality metric is ever computed for it, and every output names it synthetic.

The file is written the way ``llama-quantize`` would lay it out for that type (Q4_0: every matrix Q4_0 but the
output matrix Q6_K; Q8_0: all Q8_0; F16: all F16; norms F32), block by block from a seeded generator, so the same
shape, quant and seed give the same bytes. Three choices keep llama.cpp's generation realistic in length:

- scales give every matrix unit-variance outputs, so activations stay finite in F16 arithmetic;
- residual dimension 0 carries a constant (set by the token embeddings, never written by a layer, never read by
  one), and the output matrix turns it into a large negative logit for every token but the filler tokens: an
  end-of-generation token is never sampled, so a generation always runs to its max_tokens, as with a real model
  that has more to say;
- the tokenizer is a byte-level SPM vocabulary (llama.cpp's "llama" model: <0x00>..<0xFF> byte tokens, printable
  filler tokens up to the shape's n_vocab) with Llama 3's special tokens at their real ids and a Llama-3-style chat
  template, so llama-server's chat endpoint works. Prompts tokenize to about one token per byte (Llama 3's own
  tokenizer: about one per four), so prompt token counts are not Llama 3's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GENERATOR = "llmbench.modelfiles.synthetic/1"  # bump when the bytes written for a (shape, quant, seed) change
QUANTS = ("F16", "Q8_0", "Q4_0")
SYNTHETIC_NOTE = "synthetic weights: random values with the architecture's shapes; for speed and energy only"
QUALITY_NULL_REASON = "not measured: synthetic weights"

# Llama 3's special tokens: the last 256 ids of its vocabulary (128000..128255 in Llama 3.1).
_NAMED_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 4: "<|finetune_right_pad_id|>",
                   6: "<|start_header_id|>", 7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>",
                   10: "<|python_tag|>"}
N_SPECIAL = 256
BOS_OFFSET, EOS_OFFSET = 0, 9  # <|begin_of_text|>, <|eot_id|> (the instruct models' end of turn)
FIRST_FILLER = 257  # after <unk> and the 256 byte tokens

# Llama 3's chat format, without its tool-calling and date preamble: llama-server renders it with its Jinja engine
# and, without --jinja, recognises it as its built-in llama3 template.
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Residual dimension 0 holds BIAS_CARRIER in every position; the output matrix maps it to -PENALTY × its
# normalised value for every non-filler token (≈ -1000 and below, against filler logits of order 1).
BIAS_CARRIER = 8.0
PENALTY = 2048.0


@dataclass(frozen=True)
class Shape:
    """The dimensions of a real model (from its config.json), as llama.cpp's llama architecture reads them."""

    name: str
    source: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int
    rope_theta: float
    rms_norm_eps: float
    # Llama 3's RoPE scaling (rope_type llama3): factor, low_freq_factor, high_freq_factor, original context.
    rope_scaling: tuple[float, float, float, int] | None

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


_LLAMA31_ROPE = (8.0, 1.0, 4.0, 8192)
SHAPES: dict[str, Shape] = {
    "llama-3.1-8b": Shape(
        "llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct config.json", n_vocab=128256, n_embd=4096, n_layer=32,
        n_head=32, n_head_kv=8, n_ff=14336, n_ctx_train=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling=_LLAMA31_ROPE),
    "llama-3.1-70b": Shape(
        "llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct config.json", n_vocab=128256, n_embd=8192, n_layer=80,
        n_head=64, n_head_kv=8, n_ff=28672, n_ctx_train=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling=_LLAMA31_ROPE),
    # For tests: Llama 3.1's layout (GQA, RoPE scaling, special ids at the vocabulary's end) at a few MB.
    "llama-tiny": Shape(
        "llama-tiny", "llmbench test shape (Llama 3.1 layout, tiny dimensions)", n_vocab=1024, n_embd=256,
        n_layer=2, n_head=4, n_head_kv=2, n_ff=512, n_ctx_train=4096, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling=_LLAMA31_ROPE),
}

# Bytes per block and values per block of the types written here.
_BLOCK = {"Q4_0": (18, 32), "Q8_0": (34, 32), "Q6_K": (210, 256), "F16": (2, 1), "F32": (4, 1)}
# Standard deviation of a block's integer codes, uniform over their range: Q4_0 q-8 over 0..15, Q8_0 -128..127,
# Q6_K q-32 over 0..63 (scales fixed at 1).
_CODE_SD = {"Q4_0": math.sqrt((16**2 - 1) / 12), "Q8_0": math.sqrt((256**2 - 1) / 12),
            "Q6_K": math.sqrt((64**2 - 1) / 12)}
_FILE_TYPE = {"F16": 1, "Q4_0": 2, "Q8_0": 7}  # gguf.LlamaFileType


class SyntheticError(ValueError):
    pass


def shape_of(name: str) -> Shape:
    if name not in SHAPES:
        raise SyntheticError(f"synthetic shape {name!r} is not known; known: {', '.join(SHAPES)}")
    return SHAPES[name]


def matrix_type(quant: str, tensor: str, n_in: int) -> str:
    """The type llama-quantize gives a matrix in a file of this quant (the output matrix is kept finer)."""
    if quant not in QUANTS:
        raise SyntheticError(f"quant {quant!r} cannot be written synthetically; allowed: {', '.join(QUANTS)}")
    if quant == "Q4_0" and tensor == "output.weight":
        return "Q6_K" if n_in % 256 == 0 else "Q8_0"
    return quant


def tensor_plan(shape: Shape, quant: str) -> list[tuple[str, tuple[int, int] | tuple[int], str]]:
    """(name, (rows, n_in) or (n,), type) of every tensor, in llama.cpp's names and in convert's order."""
    e, kv = shape.n_embd, shape.head_dim * shape.n_head_kv
    plan: list = [("token_embd.weight", (shape.n_vocab, e), matrix_type(quant, "token_embd.weight", e))]
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (e,), "F32"),
            (b + "attn_q.weight", (e, e), quant),
            (b + "attn_k.weight", (kv, e), quant),
            (b + "attn_v.weight", (kv, e), quant),
            (b + "attn_output.weight", (e, e), quant),
            (b + "ffn_norm.weight", (e,), "F32"),
            (b + "ffn_gate.weight", (shape.n_ff, e), quant),
            (b + "ffn_up.weight", (shape.n_ff, e), quant),
            (b + "ffn_down.weight", (e, shape.n_ff), quant),
        ]
    plan += [("output_norm.weight", (e,), "F32"),
             ("output.weight", (shape.n_vocab, e), matrix_type(quant, "output.weight", e))]
    if shape.rope_scaling:
        plan.append(("rope_freqs.weight", (shape.head_dim // 2,), "F32"))
    return plan


def tensor_bytes(dims, ttype: str) -> int:
    size, per = _BLOCK[ttype]
    return math.prod(dims) // per * size


def planned_bytes(shape: Shape, quant: str) -> int:
    """The tensor data of the file (the header adds a few MB of vocabulary): what a GPU has to hold and stream."""
    return sum(tensor_bytes(d, t) for _, d, t in tensor_plan(shape, quant))


def rope_factors(shape: Shape) -> np.ndarray:
    """Llama 3's RoPE scaling factors per frequency, as convert_hf_to_gguf.py computes rope_freqs."""
    factor, low, high, old_ctx = shape.rope_scaling
    dim = shape.head_dim
    freqs = 1.0 / (shape.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int], int, int]:
    """Tokens, scores, token types (gguf TokenType), BOS and EOS ids of the byte-level vocabulary."""
    from gguf import TokenType

    first_special = n_vocab - N_SPECIAL
    if first_special < FIRST_FILLER + 1:
        raise SyntheticError(f"n_vocab {n_vocab} is too small: it needs at least {FIRST_FILLER + 1 + N_SPECIAL}")
    tokens = ["<unk>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [TokenType.UNKNOWN, *[TokenType.BYTE] * 256]
    # Printable fillers: each generated token streams visible text ("▁" is SentencePiece's space).
    tokens += [f"\u2581t{i}" for i in range(FIRST_FILLER, first_special)]
    types += [TokenType.NORMAL] * (first_special - FIRST_FILLER)
    reserved = iter(range(N_SPECIAL))
    for k in range(N_SPECIAL):
        tokens.append(_NAMED_SPECIALS.get(k) or f"<|reserved_special_token_{next(reserved)}|>")
        types.append(TokenType.CONTROL)
    scores = [0.0] * FIRST_FILLER + [-float(i) for i in range(first_special - FIRST_FILLER)] + [0.0] * N_SPECIAL
    return tokens, scores, [int(t) for t in types], first_special + BOS_OFFSET, first_special + EOS_OFFSET


def _f16_bytes(value: float) -> np.ndarray:
    return np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)


def _random_blocks(rng: np.random.Generator, rows: int, n_in: int, ttype: str) -> np.ndarray:
    """Random codes with the scale that gives unit-variance outputs for unit-RMS inputs: (rows, blocks, bytes)."""
    size, per = _BLOCK[ttype]
    nbytes = rows * n_in // per * size
    raw = rng.bit_generator.random_raw(-(-nbytes // 8)).view(np.uint8)[:nbytes]
    blocks = raw.reshape(rows, n_in // per, size)
    d = _f16_bytes(1.0 / (_CODE_SD[ttype] * math.sqrt(n_in)))
    if ttype == "Q6_K":
        blocks[..., 192:208] = 1  # the 16 sub-block scales (int8)
        blocks[..., 208:210] = d
    else:
        blocks[..., 0:2] = d
    return blocks


def _only_first(blocks: np.ndarray, ttype: str, value: float) -> None:
    """Make the first block of each row hold ``value`` at element 0 and zero elsewhere."""
    b = blocks[:, 0]
    if ttype == "Q4_0":  # d·(q−8): q=0 at element 0 (low nibble of byte 0), q=8 elsewhere
        b[:, 0:2] = _f16_bytes(-value / 8)
        b[:, 2:] = 0x88
        b[:, 2] = 0x80
    elif ttype == "Q8_0":  # d·q
        b[:, 0:2] = _f16_bytes(value / 127)
        b[:, 2:] = 0
        b[:, 2] = 127
    elif ttype == "Q6_K":  # d·scale·(q−32), q = low nibble in ql | 2 bits in qh << 4
        b[:, 0:128] = 0
        b[:, 128:192] = 0xAA  # every 2-bit field 2: q = 32, value 0
        b[:, 128] = 0xA8  # element 0: q = 0, value −32·d
        b[:, 192:208] = 1
        b[:, 208:210] = _f16_bytes(-value / 32)
    else:
        raise SyntheticError(f"no block layout for {ttype}")


def _zero_first(blocks: np.ndarray, ttype: str) -> None:
    """Element 0 of each row's first block to zero, the rest kept."""
    b = blocks[:, 0]
    if ttype == "Q4_0":
        b[:, 2] = (b[:, 2] & 0xF0) | 0x08
    elif ttype == "Q8_0":
        b[:, 2] = 0
    elif ttype == "Q6_K":
        b[:, 0] &= 0xF0
        b[:, 128] = (b[:, 128] & 0xFC) | 0x02
    else:
        raise SyntheticError(f"no block layout for {ttype}")


def _penalised(n_vocab: int) -> np.ndarray:
    """Every token but the fillers: <unk>, the bytes (random bytes would stream invalid UTF-8) and the specials."""
    out = np.ones(n_vocab, dtype=bool)
    out[FIRST_FILLER:n_vocab - N_SPECIAL] = False
    return out


def _matrix(rng: np.random.Generator, name: str, rows: int, n_in: int, ttype: str, shape: Shape) -> np.ndarray:
    """One weight matrix (rows = outputs) with the bias-carrier rules applied; block bytes or F16 values."""
    if ttype == "F16":
        w = (rng.standard_normal((rows, n_in), dtype=np.float32) / math.sqrt(n_in)).astype(np.float16)
        if name == "token_embd.weight":
            w *= math.sqrt(n_in)
            w[:, 0] = BIAS_CARRIER
        elif name in ("attn_output.weight", "ffn_down.weight"):
            w[0] = 0
        elif name == "output.weight":
            w[:, 0] = np.where(_penalised(shape.n_vocab), -PENALTY, 0.0)
        return w
    blocks = _random_blocks(rng, rows, n_in, ttype)
    if name == "token_embd.weight":
        blocks[..., 0:2] = _f16_bytes(1.0 / _CODE_SD[ttype])  # unit-variance embeddings
        _only_first(blocks, ttype, BIAS_CARRIER)
    elif name in ("attn_output.weight", "ffn_down.weight"):
        if ttype == "Q6_K":
            blocks[0, :, 208:210] = 0
        else:
            blocks[0, :, 0:2] = 0  # row 0 (residual dimension 0) written by no layer: every block's scale 0
    elif name == "output.weight":
        _zero_first(blocks, ttype)
        penalised = _penalised(shape.n_vocab)
        pen = blocks[penalised]  # a copy (boolean index): written back below
        _only_first(pen, ttype, -PENALTY)
        blocks[penalised] = pen
    return blocks.reshape(rows, -1)


def tensor_data(shape: Shape, quant: str, seed: int, index: int, name: str, dims, ttype: str) -> np.ndarray:
    """One tensor's data: from its own generator (seed, index), so that the bytes never depend on write order."""
    rng = np.random.Generator(np.random.PCG64([seed, index]))
    if ttype == "F32":
        if name == "rope_freqs.weight":
            return rope_factors(shape)
        w = np.ones(dims, dtype=np.float32)
        if name.endswith(("attn_norm.weight", "ffn_norm.weight")):
            w[0] = 0  # no layer reads the bias carrier
        return w
    short = name.rsplit(".", 2)[-2] + ".weight" if name.startswith("blk.") else name
    return _matrix(rng, short, dims[0], dims[1], ttype, shape)


def write_synthetic_gguf(path: str | Path, shape_name: str, quant: str, seed: int, model_name: str = "") -> dict:
    """Write the file and return what it is (shape, seed, tensor types, planned bytes); the caller adds its sha256."""
    from gguf import GGMLQuantizationType, GGUFWriter

    shape = shape_of(shape_name)
    plan = tensor_plan(shape, quant)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(model_name or f"synthetic {shape.name} {quant}")
    writer.add_description(f"{SYNTHETIC_NOTE}; shape {shape.name} ({shape.source}), seed {seed}, {GENERATOR}")
    writer.add_bool("llmbench.modelfiles.synthetic", True)
    writer.add_string("llmbench.modelfiles.synthetic.shape", shape.name)
    writer.add_uint64("llmbench.modelfiles.synthetic.seed", seed)
    writer.add_string("llmbench.modelfiles.synthetic.generator", GENERATOR)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_file_type(_FILE_TYPE[quant])
    writer.add_quantization_version(2)
    tokens, scores, types, bos, eos = vocabulary(shape.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)  # the chat template writes BOS itself
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, dims, ttype in plan:
        if ttype in ("F32", "F16"):
            dtype = np.float32 if ttype == "F32" else np.float16
            writer.add_tensor_info(name, dims, np.dtype(dtype), tensor_bytes(dims, ttype))
        else:
            size, per = _BLOCK[ttype]
            byte_shape = (*dims[:-1], dims[-1] // per * size)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), tensor_bytes(dims, ttype),
                                   raw_dtype=GGMLQuantizationType[ttype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for index, (name, dims, ttype) in enumerate(plan):
        writer.write_tensor_data(tensor_data(shape, quant, seed, index, name, dims, ttype))
    writer.close()
    types_count: dict[str, int] = {}
    for _, _, t in plan:
        types_count[t] = types_count.get(t, 0) + 1
    return {
        "kind": "synthetic",
        "synthetic": True,
        "note": SYNTHETIC_NOTE,
        "shape": shape.name,
        "shape_dims": asdict(shape),
        "seed": seed,
        "quant": quant,
        "generator": GENERATOR,
        "tensor_types": types_count,
        "output_type": dict((n, t) for n, _, t in plan)["output.weight"],
        "tensor_bytes": planned_bytes(shape, quant),
        "tokenizer": "byte-level SPM (llama.cpp 'llama'): ~1 token per prompt byte, not Llama 3's tokenizer",
        "bos_token_id": bos,
        "eos_token_id": eos,
    }



def make_synthetic_model(dest: str | Path, shape_name: str, quant: str, seed: int, model_name: str = "") -> dict:
    """Write the file into place atomically, checked as a loadable GGUF; return its record (with sha256)."""
    from llmbench.core.files import atomic_path, sha256_file
    from llmbench.modelfiles.models import check_gguf
    from llmbench.modelfiles.tensor_mix import tensor_mix

    with atomic_path(dest) as part:
        record = write_synthetic_gguf(part, shape_name, quant, seed, model_name)
        info = check_gguf(part)
        digest = sha256_file(part)
        mix = tensor_mix(part, quant).record()
    return {**record, "sha256": digest, **info, "tensor_mix": mix}
