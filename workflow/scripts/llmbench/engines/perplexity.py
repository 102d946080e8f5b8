"""Quality of a quant as llama.cpp measures it: llama-perplexity's KL divergence against a reference's logits.

The reference (the F16, or the finest quant a model has) runs once with ``--kl-divergence-base FILE``, which
stores its log-probabilities over the corpus; each quant then runs with ``--kl-divergence-base FILE
--kl-divergence`` and prints mean KLD with its uncertainty, KLD percentiles, PPL and the PPL ratio to the
reference, and how often both pick the same top token. Its summary is parsed by label, into one tidy row.

An output cut short (a summary without its percentiles, a reference run without its final estimate, while the
tool exited 0) is not a result: ``run_and_parse`` runs the tool once more, and fails naming the log if the
second output is cut short too; never half a row.

Every run has a wall-clock limit (llmbench.core.logs.tool_limit): derived from the model's size and the tokens it
evaluates (:func:`base_limit`, :func:`kld_limit`), or bench.tool_timeout_s. A run past it is killed and raises
PerplexityTimedOut naming the limit, which the quality jobs write as a failed row like any other failure.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from llmbench.core.logs import TOOL_TIMEOUT_KEY, ToolLimit, model_bytes, run_logged, tool_limit

T = TypeVar("T")

# The reference scored against itself prints "-nan" for uncertainties of zero spread: a float, as Python reads it.
_NUM = r"([-+]?(?:[0-9.]+(?:e[-+]?[0-9]+)?|nan|inf))"
_PM = rf"{_NUM}\s*(?:±|\+/-)\s*{_NUM}"

# Summary line label → (column of the value, column of its uncertainty or None). Labels as the tool prints them.
_SUMMARY: dict[str, tuple[str, str | None]] = {
    r"Mean PPL\(Q\)\s*:": ("ppl", "ppl_unc"),
    r"Mean PPL\(base\)\s*:": ("ppl_base", "ppl_base_unc"),
    r"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:": ("ln_ppl_ratio", "ln_ppl_ratio_unc"),
    r"Mean PPL\(Q\)/PPL\(base\)\s*:": ("ppl_ratio", "ppl_ratio_unc"),
    r"Mean\s+KLD:": ("kld_mean", "kld_mean_unc"),
    r"Mean\s+Δp:": ("delta_p_mean_pct", "delta_p_mean_unc_pct"),
    r"RMS Δp\s*:": ("delta_p_rms_pct", "delta_p_rms_unc_pct"),
    r"Same top p:": ("same_top_p_pct", "same_top_p_unc_pct"),
}
_KLD_QUANTILES = {
    "Maximum": "kld_max", "99.9%": "kld_p99_9", "99.0%": "kld_p99", "95.0%": "kld_p95", "90.0%": "kld_p90",
    "Median": "kld_median", "10.0%": "kld_p10", "5.0%": "kld_p5", "1.0%": "kld_p1", "0.1%": "kld_p0_1",
    "Minimum": "kld_min",
}
REQUIRED = ("ppl", "ppl_base", "ppl_ratio", "kld_mean", "kld_mean_unc", "kld_median", "kld_p99", "same_top_p_pct")
# A whole summary: the required values and every KLD percentile (printed between the mean and "Same top p").
COMPLETE = tuple(dict.fromkeys((*REQUIRED, *_KLD_QUANTILES.values())))


class PerplexityError(RuntimeError):
    """llama-perplexity failed, or printed no usable summary; the message names the log."""


class IncompleteOutput(PerplexityError):
    """llama-perplexity exited normally but its output stops short of what a row needs: run it once more."""


class PerplexityTimedOut(PerplexityError):
    """llama-perplexity ran past its wall-clock limit and was killed; the message names the limit, where it came
    from and the fix (never rerun: a hang is not an output cut short)."""


# The base file's header (tools/perplexity/perplexity.cpp): "_logits_", then n_ctx (uint32), n_vocab and n_chunk
# (int32), in the host's byte order; the tokens of n_chunk contexts follow.
_BASE_HEADER = struct.Struct("=8sIii")


def base_file_tokens(base_file: Path) -> int | None:
    """The tokens a base file's reference run evaluated (n_ctx × n_chunk of its header); None where the file is
    not one (llama-perplexity then refuses it at once)."""
    try:
        with open(base_file, "rb") as f:
            magic, n_ctx, _, n_chunk = _BASE_HEADER.unpack(f.read(_BASE_HEADER.size))
    except (OSError, struct.error):
        return None
    return n_ctx * n_chunk if magic == b"_logits_" and n_chunk > 0 else None


def base_limit(model: Path, corpus: Path, ctx: int, chunks: int | None, override_s: float | None = None) -> ToolLimit:
    """The reference run's limit: ``chunks`` contexts of ``ctx`` tokens, or with no chunks the whole corpus,
    counted as one token per byte (a token is at least one byte of text, so this bounds it from above)."""
    corpus_bytes = Path(corpus).stat().st_size if Path(corpus).is_file() else 0
    tokens = ctx * chunks if chunks else corpus_bytes + ctx
    return tool_limit(model_bytes(model), prompt_tokens=tokens, override_s=override_s)


def kld_limit(model: Path, base_file: Path, ctx: int, chunks: int | None, override_s: float | None = None) -> ToolLimit:
    """A quant's KLD run's limit: the tokens of the base file (its reference's), at most ``chunks`` × ``ctx``; one
    context where the file is not a base file (the tool then stops at once)."""
    tokens = base_file_tokens(base_file) or ctx
    if chunks:
        tokens = min(tokens, ctx * chunks)
    return tool_limit(model_bytes(model), prompt_tokens=tokens, override_s=override_s)


def base_command(binary: Path, model: Path, corpus: Path, base_file: Path, ctx: int, threads: int,
                 chunks: int | None) -> list[str]:
    cmd = [str(binary), "-m", str(model), "-f", str(corpus), "--kl-divergence-base", str(base_file),
           "-c", str(ctx), "-t", str(threads)]
    return cmd + (["--chunks", str(chunks)] if chunks else [])


def kld_command(binary: Path, model: Path, base_file: Path, ctx: int, threads: int, chunks: int | None) -> list[str]:
    # The corpus's tokens are stored in the base file: every quant is scored on exactly the reference's tokens.
    cmd = [str(binary), "-m", str(model), "--kl-divergence-base", str(base_file), "--kl-divergence",
           "-c", str(ctx), "-t", str(threads)]
    return cmd + (["--chunks", str(chunks)] if chunks else [])


def parse_kld_summary(text: str) -> dict[str, float]:
    """The summary that ``--kl-divergence`` prints, by label → {column: value}; IncompleteOutput where any value
    of a whole summary (``COMPLETE``: the required ones and every KLD percentile) is missing."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        for label, (col, unc) in _SUMMARY.items():
            if m := re.match(rf"{label}\s*{_PM}", line):
                out[col], out[unc] = float(m.group(1)), float(m.group(2))
        if m := re.match(rf"(Maximum|Median|Minimum|[0-9.]+%)\s+KLD:\s*{_NUM}$", line):
            name = m.group(1) if not m.group(1)[0].isdigit() else f"{float(m.group(1)[:-1]):.1f}%"
            if name in _KLD_QUANTILES:
                out[_KLD_QUANTILES[name]] = float(m.group(2))
    missing = [c for c in COMPLETE if c not in out]
    if missing:
        raise IncompleteOutput(f"llama-perplexity's output has no {', '.join(missing)}")
    return out


def parse_base_run(text: str, base_file: Path, model: Path) -> tuple[float, float]:
    """The reference run's final PPL ± uncertainty, with its base file written. llama-perplexity returns 0 after
    some errors (a corpus shorter than two contexts): those logged errors are failures (PerplexityError); an
    output that just stops before its final estimate, or an empty base file, is IncompleteOutput."""
    final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
    base_file = Path(base_file)
    if final is not None and base_file.exists() and base_file.stat().st_size > 0:
        return float(final.group(1)), float(final.group(2))
    errors = "\n".join(line for line in text.splitlines() if " E " in line or "error" in line.lower())
    if errors:
        raise PerplexityError(f"the reference run of {model} produced no base file: {errors}")
    raise IncompleteOutput(f"the reference run of {model} stopped before "
                           + ("its final estimate" if final is None else f"writing its base file {base_file}"))


def run_perplexity(cmd: list[str], log_path: Path, append: bool = False, limit: ToolLimit | None = None) -> str:
    """Run llama-perplexity with its output in ``log_path`` (after what the log holds, with ``append``); return
    this run's output. Its exit code is not enough: some of its errors (a base file from another model, too few
    tokens) return 0 after printing the error. Past ``limit`` it is killed: PerplexityTimedOut."""
    run = run_logged(cmd, log_path, append=append, timeout_s=limit.seconds if limit else None)
    if run.timed_out:
        from llmbench.engines.diagnosis import timed_out

        raise PerplexityTimedOut(timed_out("llama-perplexity was killed", limit.seconds, limit.source,
                                           TOOL_TIMEOUT_KEY, log_path).reason)
    if run.returncode != 0:
        from llmbench.engines.diagnosis import diagnose

        raise PerplexityError(f"{diagnose('llama-perplexity', run.returncode, run.output).reason} (log {log_path})")
    return run.output


def run_and_parse(cmd: list[str], log_path: Path, parse: Callable[[str], T], limit: ToolLimit | None = None) -> T:
    """``parse(run_perplexity(cmd, log_path, limit=limit))``; where the parse finds the output cut short
    (IncompleteOutput), it runs once more, into the same log; cut short again, a PerplexityError that names the
    log. A failed run (exit code, a logged error, past its limit) is not rerun."""
    try:
        return parse(run_perplexity(cmd, log_path, limit=limit))
    except IncompleteOutput as first:
        with open(log_path, "a") as log:
            log.write(f"\n# llmbench: the output above stopped short ({first}); running once more\n")
    try:
        return parse(run_perplexity(cmd, log_path, append=True, limit=limit))
    except IncompleteOutput as again:
        raise PerplexityError(f"llama-perplexity's output stopped short twice ({again}); see both runs in the "
                              f"log {log_path}") from None


def failed_kld_row(model: str, quant: str, reason: str, reference: dict | None = None) -> dict:
    """A quant's KLD row when its measurement failed: every value null, the reason kept (the table shows it)."""
    from llmbench.engines.runs import shareable_reason

    values = {c: None for c in (*REQUIRED, "kld_p99")}
    return {"model": model, "quant": quant, "reference_quant": (reference or {}).get("reference_quant"),
            "corpus_sha256": (reference or {}).get("corpus_sha256"), **values, "status": "failed",
            "kld_null_reason": shareable_reason(reason)}
