"""Model files on disk: is this a loadable GGUF, and quants derived from it with llama-quantize."""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from llmbench.files import atomic_path, sha256_file
from llmbench.logs import run_logged

GGUF_MAGIC = b"GGUF"


class CorruptModelError(RuntimeError):
    pass


# GGUF metadata value types (gguf spec): scalar struct formats; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Reads little-endian GGUF fields from a memory map; running past the end raises struct.error."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def read(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> bytes:
        n = self.read("Q")
        if self.pos + n > len(self.buf):
            raise struct.error("string runs past the end of the file")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos])

    def value(self, vtype: int):
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.read("I"), self.read("Q")
            if itype in _SCALARS:  # skipped whole: arrays of scalars are never needed here
                self.pos += count * struct.calcsize(_SCALARS[itype])
            else:
                for _ in range(count):
                    self.value(itype)
            return None
        return self.read(_SCALARS[vtype])


def read_header(buf) -> tuple[int, dict, list[tuple[str, list[int], int, int]], int]:
    """A GGUF's version, metadata, tensor table [(name, dimensions fastest first, ggml type, data offset)] and the
    byte where the header ends; raises struct.error/ValueError on a damaged header."""
    c = _Cursor(buf)
    c.pos = 4
    version, n_tensors, n_kv = c.read("I"), c.read("Q"), c.read("Q")
    meta = {}
    for _ in range(n_kv):
        key = c.string().decode(errors="replace")
        meta[key] = c.value(c.read("I"))
    tensors = []
    for _ in range(n_tensors):
        name = c.string().decode(errors="replace")
        dims = [c.read("Q") for _ in range(c.read("I"))]
        tensors.append((name, dims, c.read("I"), c.read("Q")))
    return version, meta, tensors, c.pos


@dataclass(frozen=True)
class Tensor:
    """One entry of a GGUF's tensor table, its size worked out from its ggml type."""

    name: str
    dims: tuple[int, ...]  # fastest first: token_embd is (n_embd, n_vocab)
    ggml_type: int
    offset: int  # bytes from the start of the data section
    weights: int
    nbytes: int


@dataclass(frozen=True)
class TensorTable:
    """A GGUF's header: what the file check and the roofline read of it (no tensor data is read)."""

    version: int
    meta: dict
    tensors: list[Tensor]
    data_start: int  # byte where the data section begins (the header's end, aligned)


FIX = "Delete it and run the workflow again so it is fetched or derived anew."


def read_tensor_table(path: str | Path) -> TensorTable:
    """The header and tensor table of the GGUF at ``path``, each tensor's bytes from gguf's block and type sizes.

    Raises CorruptModelError, naming the file and the fix, for a missing file, one that is not a GGUF, or a
    damaged header (cut short, an unknown tensor type). A truncated data section is check_gguf's to find.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.exists():
        raise CorruptModelError(f"model file {path} does not exist. {FIX}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
        if magic != GGUF_MAGIC:
            raise CorruptModelError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}). {FIX}")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                version, meta, table, header_end = read_header(buf)
                tensors = []
                for name, dims, ttype, offset in table:
                    n = math.prod(dims)
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                    tensors.append(Tensor(name, tuple(dims), ttype, offset, n, n // block * type_size))
                alignment = meta.get("general.alignment") or 32
                data_start = -(-header_end // alignment) * alignment
            except (struct.error, ValueError, KeyError, OverflowError) as e:
                raise CorruptModelError(f"{path} is a damaged GGUF: {type(e).__name__}: {e}. {FIX}") from None
    return TensorTable(version, meta, tensors, data_start)


class ShardError(CorruptModelError):
    """A split GGUF given as llama.cpp cannot load it (a shard renamed, not the first, or alone); the files are
    sound, so the fix never deletes them."""


class MissingShardsError(ShardError):
    """The first shard of a split GGUF whose other shards are not beside it; the shard itself is sound."""


# llama.cpp's split naming (llama_split_path): PREFIX-0000K-of-0000N.gguf, K counted from 1.
SHARD_SUFFIX = "-{no:05d}-of-{count:05d}.gguf"


def _walk(path: Path) -> tuple[dict, dict]:
    """One GGUF file's facts and metadata; raise CorruptModelError naming the file and the fix."""
    header = read_tensor_table(path)
    size = path.stat().st_size
    end = max((header.data_start + t.offset + t.nbytes for t in header.tensors), default=0)
    if end > size:
        raise CorruptModelError(f"{path} is truncated: its tensors end at byte {end:,} but the file has {size:,}. {FIX}")
    arch = header.meta.get("general.architecture")
    info = {
        "gguf_version": header.version,
        "tensors": len(header.tensors),
        "bytes": size,
        "architecture": arch.decode() if isinstance(arch, bytes) else None,
        "weights": sum(t.weights for t in header.tensors),
    }
    return info, header.meta


def _split(meta: dict) -> tuple[int, int] | None:
    """(split.no counted from 0, split.count) of one shard of a split GGUF; None for a whole model."""
    count = meta.get("split.count")
    return (meta.get("split.no") or 0, count) if isinstance(count, int) and count > 1 else None


def split_count(path: str | Path) -> int:
    """How many files the model at ``path`` is split into (its header's split.count); 1 for a whole GGUF, and for
    a file that is not a readable GGUF (check_gguf is what refuses those, naming the fix)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                return 1
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                split = _split(read_header(buf)[1])
    except (OSError, struct.error, ValueError, OverflowError):
        return 1
    return split[1] if split else 1


def check_gguf(path: str | Path) -> dict:
    """Walk the GGUF header and tensor table; raise CorruptModelError naming the file and the fix.

    A split GGUF (llama.cpp PR #6187: split.no, split.count, split.tensors.count in each shard's header) passes as a
    whole only: given its first shard under its shard name, with every other shard beside it, each sound and of the
    same set; the facts returned are then the whole model's. A lone shard is refused naming the missing files.

    A lean walk rather than gguf.GGUFReader, which materialises every metadata array (a 49k-token vocabulary
    takes it seconds): this check runs before every quantize and bench job.
    """
    path = Path(path)
    info, meta = _walk(path)
    split = _split(meta)
    if split is None:
        return info
    no, count = split
    suffix = SHARD_SUFFIX.format(no=no + 1, count=count)
    if not path.name.endswith(suffix) or path.name == suffix:
        raise ShardError(
            f"{path} is shard {no + 1} of {count} of a split GGUF (its header's split.no is {no}, split.count "
            f"{count}) but its name does not end in {suffix}: llama.cpp finds the other shards by that name and "
            "refuses this one (\"invalid split file name\"). The file is sound: keep the shards under their "
            f"published names, PREFIX-0000K-of-{count:05d}.gguf, and give the first one."
        )
    prefix = path.name[: -len(suffix)]
    names = [f"{prefix}{SHARD_SUFFIX.format(no=k, count=count)}" for k in range(1, count + 1)]
    if no != 0:
        raise ShardError(
            f"{path} is shard {no + 1} of {count} of a split GGUF; llama.cpp loads a split GGUF from its first "
            f"shard: give {path.parent / names[0]} instead (the file is sound: keep it beside the first)."
        )
    missing = [name for name in names[1:] if not (path.parent / name).exists()]
    if missing:
        raise MissingShardsError(
            f"{path} is shard 1 of {count} of a split GGUF, but {len(missing)} of its shards are missing beside it "
            f"in {path.parent}: {', '.join(missing)}. llama.cpp loads them by exactly these names. The shard itself "
            "is sound, keep it: fetch the missing ones (running the workflow again fetches each, rule "
            "fetch_hf_shard) or put them there under these names."
        )
    total = dict(info, split_count=count, shards=names)
    for k, name in enumerate(names[1:], start=1):
        shard_info, shard_meta = _walk(path.parent / name)  # a damaged shard is named, with its own fix
        if _split(shard_meta) != (k, count):
            raise CorruptModelError(
                f"{path.parent / name} does not belong with {path.name}: its header says shard "
                f"{shard_meta.get('split.no')} of {shard_meta.get('split.count')}, not {k} of {count} "
                "(split.no counted from 0). The shards come from different files or releases: fetch the set "
                "again from one revision."
            )
        for key in ("tensors", "bytes", "weights"):
            total[key] += shard_info[key]
    expected = meta.get("split.tensors.count")
    if expected is not None and expected != total["tensors"]:
        raise CorruptModelError(
            f"the {count} shards of {path} hold {total['tensors']} tensors but its header's split.tensors.count is "
            f"{expected}: they are not one split GGUF. Fetch the set again from one revision."
        )
    return total


def quantize_command(binary: Path, src: Path, dest: Path, quant: str, threads: int, allow_requantize: bool) -> list[str]:
    flags = ["--allow-requantize"] if allow_requantize else []
    return [str(binary), *flags, str(src), str(dest), quant, str(threads)]


def derive_quant(
    binary: Path, src: Path, src_record: Path, dest: Path, quant: str, threads: int, allow_requantize: bool, log
) -> dict:
    """Run llama-quantize into a temporary file and move it into place; return the derivation record.

    ``log`` is the job's log, open in append mode: llama-quantize's output goes after what it holds."""
    check_gguf(src)
    with atomic_path(dest) as part:
        cmd = quantize_command(binary, src, part, quant, threads, allow_requantize)
        log.flush()
        run = run_logged(cmd, log.name, append=True)
        if run.returncode != 0:
            from llmbench.diagnosis import diagnose

            found = diagnose("llama-quantize", run.returncode, run.output, src)
            raise RuntimeError(f"llama-quantize {quant} of {src}: {found.reason} (log {log.name})")
        info = check_gguf(part)
        digest = sha256_file(part)
        # What the file holds beside what it was asked for: llama-quantize names each tensor that fell back.
        from llmbench.tensor_mix import quantize_warnings, tensor_mix

        fallbacks = quantize_warnings(run.output)
        mix = tensor_mix(part, quant, fallbacks).record()
    parent = json.loads(Path(src_record).read_text())
    return {
        "kind": "derived",
        "quant": quant,
        "from": str(src),
        "from_sha256": parent.get("sha256"),
        "from_record": parent,
        "tool": "llama-quantize",
        "command": [Path(cmd[0]).name, *cmd[1:3], str(dest), *cmd[4:]],
        # A requantized file carries the loss of its source's quantization, whatever its own type says.
        "requantized": allow_requantize,
        "sha256": digest,
        **info,
        "quantize_fallbacks": fallbacks,
        "tensor_mix": mix,
    }
