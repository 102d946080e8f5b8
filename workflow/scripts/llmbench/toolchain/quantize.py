"""A quant derived from its model's F16 (or another source) by llama.cpp's llama-quantize, and its record.

Above the model files (llmbench.modelfiles.models reads them) and beside the engines (llmbench.engines.diagnosis names a failed
run's cause): deriving runs a built tool, so it lives here rather than inside the module that reads GGUF headers.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmbench.core.files import atomic_path, sha256_file
from llmbench.core.logs import TOOL_TIMEOUT_KEY, model_bytes, run_logged, tool_limit
from llmbench.engines.diagnosis import diagnose, timed_out
from llmbench.modelfiles.models import check_gguf
from llmbench.modelfiles.tensor_mix import quantize_warnings, tensor_mix


def quantize_command(binary: Path, src: Path, dest: Path, quant: str, threads: int, allow_requantize: bool) -> list[str]:
    flags = ["--allow-requantize"] if allow_requantize else []
    return [str(binary), *flags, str(src), str(dest), quant, str(threads)]


def derive_quant(
    binary: Path, src: Path, src_record: Path, dest: Path, quant: str, threads: int, allow_requantize: bool, log,
    timeout_s: float | None = None,
) -> dict:
    """Run llama-quantize into a temporary file and move it into place; return the derivation record.

    ``log`` is the job's log, open in append mode: llama-quantize's output goes after what it holds. The run has a
    wall-clock limit (llmbench.core.logs.tool_limit: loading and quantizing the source's bytes), or ``timeout_s``
    (bench.tool_timeout_s); past it llama-quantize is killed and RuntimeError names the limit, as for its other
    failures (the job fails, no file is left)."""
    check_gguf(src)
    size = model_bytes(src)
    limit = tool_limit(size, quantized_bytes=size, override_s=timeout_s)
    with atomic_path(dest) as part:
        cmd = quantize_command(binary, src, part, quant, threads, allow_requantize)
        log.flush()
        run = run_logged(cmd, log.name, append=True, timeout_s=limit.seconds)
        if run.timed_out:
            found = timed_out("llama-quantize was killed", limit.seconds, limit.source, TOOL_TIMEOUT_KEY, log.name)
            raise RuntimeError(f"llama-quantize {quant} of {src}: {found.reason}")
        if run.returncode != 0:
            found = diagnose("llama-quantize", run.returncode, run.output, src)
            raise RuntimeError(f"llama-quantize {quant} of {src}: {found.reason} (log {log.name})")
        info = check_gguf(part)
        digest = sha256_file(part)
        # What the file holds beside what it was asked for: llama-quantize names each tensor that fell back.
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
