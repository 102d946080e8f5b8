"""Model files on disk: is this a loadable GGUF, what it holds, is a split GGUF whole (quants are derived from
them in llmbench.toolchain.quantize)."""

from __future__ import annotations

import importlib.metadata
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

# The failure kinds of a sound GGUF this llama.cpp cannot load, as llmbench.engines.diagnosis's catalogue names them (it
# reads them from here: a model file's check knows nothing of engines).
UNSUPPORTED_TENSOR_TYPE = "unsupported_tensor_type"
UNSUPPORTED_GGUF_FORMAT = "unsupported_gguf_format"

GGUF_MAGIC = b"GGUF"


class CorruptModelError(RuntimeError):
    """A model file the GGUF check refused. Itself: a damaged file (cut short, not a GGUF, tensor data past its
    end), whose fix is to fetch or derive it again; its subclasses are sound files given or made wrongly."""


class UnloadableModelError(CorruptModelError):
    """A sound GGUF (header whole, tensor data inside the file) that this llama.cpp does not load: a tensor type it
    removed or does not know, a byte order or a GGUF version it does not read. A re-fetch gives the same bytes, so
    the message's fix is another file or another llama.cpp, never deleting this one. ``kind`` is the failure kind
    of the jobs that meet it (llmbench.engines.diagnosis). A CorruptModelError, as ShardError is, only so that every job's
    ``except CorruptModelError`` turns it into a failed row with its own words."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# ggml types llama.cpp no longer loads from a file (ggml.c type_traits: blck_size 0, "TYPE_… REMOVED, use … with
# runtime repacking"): the CPU-repacked layouts removed by llama.cpp PR #10446, which repacks the plain type at load
# instead (ggml.c also keeps 36-38 as removed, though the gguf library no longer lists any of them). Number: (name,
# the plain type it repacks, block [weights] and block size [bytes], which the repacked layout keeps from the plain one).
REMOVED_TYPES = {
    31: ("Q4_0_4_4", "Q4_0", 32, 18),
    32: ("Q4_0_4_8", "Q4_0", 32, 18),
    33: ("Q4_0_8_8", "Q4_0", 32, 18),
    36: ("IQ4_NL_4_4", "IQ4_NL", 32, 18),
    37: ("IQ4_NL_4_8", "IQ4_NL", 32, 18),
    38: ("IQ4_NL_8_8", "IQ4_NL", 32, 18),
}
OTHER_FILE_FIX = "use another file from the same repo, or another llama.cpp version (llama_cpp.version in the config)"
# GGUF versions llama.cpp reads (ggml/src/gguf.cpp: v1 refused since 2023, newer than GGUF_VERSION 3 refused).
READABLE_VERSIONS = (2, 3)


# GGUF metadata value types (gguf spec): scalar struct formats; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Reads GGUF fields (``order`` "<" little-endian, ">" big-endian) from a memory map; running past the end
    raises struct.error."""

    def __init__(self, buf, order: str = "<"):
        self.buf, self.pos, self.order = buf, 0, order

    def read(self, fmt: str):
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
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


def read_header(buf, order: str = "<") -> tuple[int, dict, list[tuple[str, list[int], int, int]], int]:
    """A GGUF's version, metadata, tensor table [(name, dimensions fastest first, ggml type, data offset)] and the
    byte where the header ends; ``order`` is the file's byte order ("<" little-endian, as llama.cpp writes it on
    every common host; ">" big-endian). Raises struct.error/ValueError on a damaged header."""
    c = _Cursor(buf, order)
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
    damaged header (cut short); UnloadableModelError for a sound header this llama.cpp does not load (see
    check_gguf). A truncated data section is check_gguf's to find.
    """
    table, _, problem = _read_table(Path(path))
    if problem is not None:
        raise problem
    return table


def _version_problem(path: Path, field: bytes) -> CorruptModelError | None:
    """What the 4 bytes after the magic say when they are not a version llama.cpp reads: a big-endian file (the
    version byte-swapped: llama.cpp's gguf.cpp asks "is there a mismatch between the host and model endianness?"),
    GGUF v1 or a newer version (sound, unloadable), or neither (damaged). None for a readable version."""
    little, big = struct.unpack("<I", field)[0], struct.unpack(">I", field)[0]
    if little in READABLE_VERSIONS or ((little & 0xFFFF) == 0 and big in READABLE_VERSIONS):
        return None  # a big-endian v2/v3 is walked in its own byte order first, to tell it from a damaged one
    if little == 1 or 3 < little < 1 << 16:
        return UnloadableModelError(
            f"{path} is GGUF version {little}, which llama.cpp does not read (it reads versions "
            f"{' and '.join(map(str, READABLE_VERSIONS))}; ggml's gguf.cpp refuses v1 and any version above 3). The "
            f"file is not damaged, do not delete it or fetch it again: {OTHER_FILE_FIX}.", UNSUPPORTED_GGUF_FORMAT)
    return CorruptModelError(f"{path} is a damaged GGUF: its version field reads {little} (0x{little:08x}), neither "
                             f"a GGUF version nor one byte-swapped. {FIX}")


def _read_table(path: Path) -> tuple[TensorTable, list[tuple[str, int, int]], UnloadableModelError | None]:
    """The tensor table (tensors of a type whose size is unknown left out), those left out as (name, ggml type,
    data offset), and why llama.cpp would not load the file where the header is sound; raises CorruptModelError
    for a damaged header."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    known = {t.value for t in GGMLQuantizationType}
    if not path.exists():
        raise CorruptModelError(f"model file {path} does not exist. {FIX}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
        if magic != GGUF_MAGIC:
            raise CorruptModelError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}). {FIX}")
        field = fh.read(4)
        if len(field) < 4:
            raise CorruptModelError(f"{path} is a damaged GGUF: it ends inside its header ({4 + len(field)} bytes). {FIX}")
        if (problem := _version_problem(path, field)) is not None:
            raise problem
        order = "<" if struct.unpack("<I", field)[0] in READABLE_VERSIONS else ">"
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                version, meta, table, header_end = read_header(buf, order)
                tensors, unsized, odd = [], [], {}
                for name, dims, ttype, offset in table:
                    n = math.prod(dims)
                    if ttype in REMOVED_TYPES:
                        block, type_size = REMOVED_TYPES[ttype][2:]
                        odd.setdefault(ttype, []).append(name)
                    elif ttype in known:
                        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                    else:
                        odd.setdefault(ttype, []).append(name)
                        unsized.append((name, ttype, offset))
                        continue
                    tensors.append(Tensor(name, tuple(dims), ttype, offset, n, n // block * type_size))
                alignment = meta.get("general.alignment") or 32
                data_start = -(-header_end // alignment) * alignment
            except (struct.error, ValueError, KeyError, OverflowError) as e:
                raise CorruptModelError(f"{path} is a damaged GGUF: {type(e).__name__}: {e}. {FIX}") from None
    problem = _type_problem(path, odd) if odd else None
    if order == ">":
        problem = UnloadableModelError(
            f"{path} is a big-endian GGUF (its version field reads {version} byte-swapped; its header is whole): "
            "llama.cpp on this little-endian machine refuses it (\"is there a mismatch between the host and model "
            "endianness?\"). The file is not damaged, do not delete it or fetch it again: use the repo's "
            "little-endian file, or convert a copy with the gguf package's gguf-convert-endian (FILE little).",
            UNSUPPORTED_GGUF_FORMAT)
    return TensorTable(version, meta, tensors, data_start), unsized, problem


def _type_problem(path: Path, odd: dict[int, list[str]]) -> UnloadableModelError:
    """The tensors of a type this llama.cpp does not load (ggml type: tensor names), named with the fix."""
    held, fixes = [], []
    for ttype, names in sorted(odd.items()):
        which = f"{len(names)} tensor{'s' if len(names) > 1 else ''} of ggml type {ttype} (e.g. {names[0]!r})"
        if ttype in REMOVED_TYPES:
            name, plain = REMOVED_TYPES[ttype][:2]
            held.append(f"{which}: {name}, a repacked layout llama.cpp removed (PR #10446; it repacks {plain} for the "
                        "CPU at load instead)")
            fixes.append(f"use the repo's {plain} file (llama.cpp repacks {plain} at load)")
            if ttype == 36:  # the number Microsoft's bitnet.cpp gives its own I2_S (llama.cpp #12997)
                fixes.append("a BitNet I2_S file, which bitnet.cpp also numbers 36, loads only in bitnet.cpp")
        else:
            version = importlib.metadata.version("gguf")
            held.append(f"{which}: a type the gguf library {version} does not know (a newer or a fork's "
                        "quantization; llama.cpp refuses it as \"invalid ggml type\")")
            fixes.append(OTHER_FILE_FIX)
    return UnloadableModelError(
        f"{path} is a sound GGUF (header whole, tensor data inside the file) that llama.cpp does not load: it holds "
        f"{'; '.join(held)}. Do not delete it or fetch it again, the same bytes come back: "
        f"{'; '.join(dict.fromkeys(fixes))}.", UNSUPPORTED_TENSOR_TYPE)


class ShardError(CorruptModelError):
    """A split GGUF given as llama.cpp cannot load it (a shard renamed, not the first, or alone); the files are
    sound, so the fix never deletes them."""


class MissingShardsError(ShardError):
    """The first shard of a split GGUF whose other shards are not beside it; the shard itself is sound."""


# llama.cpp's split naming (llama_split_path): PREFIX-0000K-of-0000N.gguf, K counted from 1.
SHARD_SUFFIX = "-{no:05d}-of-{count:05d}.gguf"


def _walk(path: Path) -> tuple[dict, dict]:
    """One GGUF file's facts and metadata; raise CorruptModelError naming the file and the fix (damaged first: a
    file both cut short and of a type llama.cpp does not load is fetched again before anything else)."""
    header, unsized, problem = _read_table(path)
    size = path.stat().st_size
    end = max((header.data_start + t.offset + t.nbytes for t in header.tensors), default=0)
    # A tensor of an unknown type has no known size, but its data must start inside the file.
    end = max([end, *(header.data_start + offset + 1 for _, _, offset in unsized)])
    if end > size:
        raise CorruptModelError(f"{path} is truncated: its tensors end at byte {end:,} but the file has {size:,}. {FIX}")
    if problem is not None:
        raise problem
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
