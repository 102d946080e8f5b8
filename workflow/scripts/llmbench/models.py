"""Model files on disk: is this a loadable GGUF, and quants derived from it with llama-quantize."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from llmbench.fetch import atomic_path, sha256_file

GGUF_MAGIC = b"GGUF"


class CorruptModelError(RuntimeError):
    pass


def check_gguf(path: str | Path) -> dict:
    """Parse the GGUF header and tensor table; raise CorruptModelError naming the file and the fix."""
    from gguf import GGUFReader

    path = Path(path)
    fix = "Delete it and run the workflow again so it is fetched or derived anew."
    if not path.exists():
        raise CorruptModelError(f"model file {path} does not exist. {fix}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise CorruptModelError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}). {fix}")
    try:
        reader = GGUFReader(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # the reader raises many kinds on a damaged file
        raise CorruptModelError(f"{path} is a damaged GGUF: {type(e).__name__}: {e}. {fix}") from None
    size = path.stat().st_size
    if end > size:
        raise CorruptModelError(f"{path} is truncated: its tensors end at byte {end:,} but the file has {size:,}. {fix}")
    arch = reader.fields.get("general.architecture")
    return {
        "tensors": len(reader.tensors),
        "bytes": size,
        "architecture": bytes(arch.parts[-1]).decode() if arch else None,
        "weights": int(sum(int(t.n_elements) for t in reader.tensors)),
    }


def quantize_command(binary: Path, src: Path, dest: Path, quant: str, threads: int, allow_requantize: bool) -> list[str]:
    flags = ["--allow-requantize"] if allow_requantize else []
    return [str(binary), *flags, str(src), str(dest), quant, str(threads)]


def derive_quant(
    binary: Path, src: Path, src_record: Path, dest: Path, quant: str, threads: int, allow_requantize: bool, log
) -> dict:
    """Run llama-quantize into a temporary file and move it into place; return the derivation record."""
    check_gguf(src)
    with atomic_path(dest) as part:
        cmd = quantize_command(binary, src, part, quant, threads, allow_requantize)
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"llama-quantize {quant} of {src} failed with exit {proc.returncode}; see {log.name}")
        info = check_gguf(part)
        digest = sha256_file(part)
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
    }
