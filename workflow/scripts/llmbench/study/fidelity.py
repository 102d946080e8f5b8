"""Does measuring disturb what is measured, and does our llama-server path agree with llama.cpp's own benchmarks?

Checks of the harness itself, run as benchmarks (benchmarks/fidelity.py, benchmarks/serving.py), never as
pass/fail tests:
- metering overhead: decode tokens/s of generations made through the bench's measured path (energy window,
  sensors, engine RSS) against bare generations, interleaved so that drift of the machine hits both alike;
- fidelity: llama-server's decode tokens/s against llama-bench's tg test at the same threads and length;
- serving: llama-server at N concurrent requests against llama-batched-bench at batch N (aggregate decode), and
  the server's own token counters against the client's rows.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmbench.devices.meters import EnergyMeter
from llmbench.engines.base import Engine

# Thresholds of the issues that asked for these checks.
MIN_METERED_RATIO = 0.99
MAX_FIDELITY_GAP = 0.03
MAX_SERVING_GAP = 0.05


@dataclass(frozen=True)
class Comparison:
    name: str
    a_label: str
    b_label: str
    a: list[float]
    b: list[float]

    @property
    def ratio(self) -> float:
        """Median of a over median of b."""
        return statistics.median(self.a) / statistics.median(self.b)


def interleaved(n: int, first: Callable[[int], float], second: Callable[[int], float]) -> tuple[list[float], list[float]]:
    """Run ``first`` and ``second`` alternately n times each (ABBA order, so neither always goes first)."""
    a, b = [], []
    for i in range(n):
        order = (first, second) if i % 2 == 0 else (second, first)
        for f in order:
            (a if f is first else b).append(f(i))
    return a, b


def metered_decode_rate(backend: Engine, meter: EnergyMeter, prompt: str, max_tokens: int, seed: int) -> float:
    """One generation through the bench's measured path: energy window around it, engine RSS after it."""
    meter.begin_window("fidelity")
    g = backend.generate(prompt, max_tokens, 0.0, seed)
    meter.end_window("fidelity")
    backend.peak_rss_bytes()
    return g.decode_tokens_per_s


def bare_decode_rate(backend: Engine, prompt: str, max_tokens: int, seed: int) -> float:
    return backend.generate(prompt, max_tokens, 0.0, seed).decode_tokens_per_s


def verdicts(metering: Comparison, fidelity: Comparison) -> list[str]:
    return [
        f"metering overhead: metered/bare = {metering.ratio:.4f} "
        f"({'meets' if metering.ratio >= MIN_METERED_RATIO else 'misses'} the >= {MIN_METERED_RATIO} target)",
        f"fidelity: llama-server/llama-bench tg = {fidelity.ratio:.4f} "
        f"({'within' if abs(fidelity.ratio - 1) <= MAX_FIDELITY_GAP else 'outside'} ±{MAX_FIDELITY_GAP:.0%})",
    ]


@dataclass(frozen=True)
class ServingCheck:
    """One load level N: llama-server's requests (the workflow's rows of a level) against llama-batched-bench's
    batches at N (its rows), both on the same model, prompt length and tokens per sequence."""

    concurrency: int
    request_decode: list[float]  # each request's decode tokens/s, llama-server's own timings
    batch_decode: list[float]  # each batch's S_TG: decode tokens/s of all N sequences together
    server_output: float  # all requests' output tokens over the level's window [tokens/s], on the client's clock
    counts_check: str  # runs.level_columns' server_counts_check ("match: …" or why not)

    @property
    def server_aggregate(self) -> float:
        """N × the median request's decode tokens/s: the server's decode rate over its N slots, which decode in
        lockstep when every request has the same prompt and length (--ignore-eos)."""
        return self.concurrency * statistics.median(self.request_decode)

    @property
    def reference(self) -> float:
        return statistics.median(self.batch_decode)

    @property
    def ratio(self) -> float:
        return self.server_aggregate / self.reference

    @property
    def counts_match(self) -> bool:
        return self.counts_check.startswith("match")

    def verdict(self) -> str:
        gap = "within" if abs(self.ratio - 1) <= MAX_SERVING_GAP else "outside"
        counts = "match exactly" if self.counts_match else f"do not match ({self.counts_check})"
        return (f"{self.concurrency} at once: llama-server aggregate decode / llama-batched-bench S_TG = "
                f"{self.ratio:.4f} ({gap} ±{MAX_SERVING_GAP:.0%}); server and client token counts {counts}")


def serving_check(concurrency: int, server_rows, batch_rows) -> ServingCheck:
    """The check of one level from polars frames in RUN_SCHEMA: ``server_rows`` one level's 'ok' request rows
    (runs.run_generations at that concurrency), ``batch_rows`` llama-batched-bench's rows at the same N. Raises
    ValueError where either has no row that ran."""
    import polars as pl

    ok = server_rows.filter(pl.col("status") == "ok")
    batches = batch_rows.filter(pl.col("status") == "ok")
    if ok.is_empty() or batches.is_empty():
        raise ValueError(f"level {concurrency}: {ok.height} requests and {batches.height} batches ran; both are needed")
    window = ok["level_window_s"].drop_nulls()
    return ServingCheck(
        concurrency=concurrency,
        request_decode=ok["decode_tokens_per_s"].drop_nulls().to_list(),
        batch_decode=batches["decode_tokens_per_s"].drop_nulls().to_list(),
        server_output=ok["generated_tokens"].sum() / window[0] if len(window) else float("nan"),
        counts_check=ok["server_counts_check"].drop_nulls().first() or "not checked: no server counts in the rows",
    )


def write_report(out: Path, stem: str, text: str) -> Path:
    """A benchmark's Markdown report written as ``out/<stem>-<UTC date>-<host>.md`` and printed; its path back."""
    import datetime as dt
    import platform

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}-{dt.datetime.now(dt.UTC):%Y-%m-%d}-{platform.node()}.md"
    path.write_text(text)
    print(text)
    print(f"written to {path}")
    return path
