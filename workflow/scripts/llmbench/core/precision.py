"""How precise a job's headline number is, and when it has measured enough (bench.precision).

A job measures in rounds: every prompt once per round, so every round holds the same prompt mix. Its headline
statistic is the median of the per-round decode rates (a round's generated tokens over its decode time): a prompt
that decodes slower than another shifts every round alike, so the mix does not widen it, as it widens the spread of
single generations. Its confidence interval is the distribution-free one of a median, between two order
statistics of the rounds: (x₍ᵣ₎, x₍ₙ₋ᵣ₊₁₎) covers the population median with probability 1 − 2·P(B ≤ r − 1),
B ~ Binomial(n, ½), whatever the rates' distribution (Conover, *Practical Nonparametric Statistics*, 3rd ed., 1999,
§3.2; Campbell & Gardner, "Calculating confidence intervals for some non-parametric analyses", BMJ 296:1454, 1988,
whose table gives ranks 6 and 15 for n = 20 at 95 %). Its coverage is exact, never an approximation that is too
optimistic at a few rounds (a bootstrap of 3 rounds would call their range a 95 % interval; its coverage is 75 %).
So a 95 % interval needs at least 6 rounds (5 at 90 %): with fewer there is none, and the job goes on.

The stopping rule: after each round, stop once at least ``min_repetitions`` rounds are measured and the interval
lies within ±``target`` of the median (relative), or at ``max_repetitions`` rounds, whether the target was met or
not (said in the rows). Without bench.precision a job measures ``bench.repetitions`` rounds, as before, and its rows
still say the interval those rounds reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

# What an interval is reported at where bench.precision does not say (a fixed-repetitions study).
DEFAULT_CONFIDENCE = 0.95


class PrecisionError(ValueError):
    pass


@dataclass(frozen=True)
class PrecisionSpec:
    """bench.precision: stop once the interval of the median round rate is within ±``target`` (a fraction of the
    median) at ``confidence``, after at least ``min_repetitions`` and at most ``max_repetitions`` rounds."""

    target: float
    confidence: float = DEFAULT_CONFIDENCE
    min_repetitions: int = 2
    max_repetitions: int = 20

    def __post_init__(self):
        if not 0 < self.target < 1:
            raise PrecisionError(f"bench.precision.target {self.target!r} must be a fraction in (0, 1), e.g. 0.05 "
                                 "for ±5 % of the median")
        if not 0.5 <= self.confidence < 1:
            raise PrecisionError(f"bench.precision.confidence {self.confidence!r} must be in [0.5, 1), e.g. 0.95")
        if not 1 <= self.min_repetitions <= self.max_repetitions:
            raise PrecisionError(f"bench.precision: min_repetitions {self.min_repetitions!r} must be at least 1 and "
                                 f"at most max_repetitions {self.max_repetitions!r}")
        if self.max_repetitions < (need := rounds_needed(self.confidence)):
            raise PrecisionError(f"bench.precision.max_repetitions {self.max_repetitions} is below the {need} rounds a "
                                 f"{self.confidence:.0%} interval of a median needs: raise it to {need} or more")

    @classmethod
    def from_config(cls, value: dict | None) -> PrecisionSpec | None:
        return None if not value else cls(**value)


@dataclass(frozen=True)
class MedianInterval:
    """The median of ``n`` values and its distribution-free interval (``low``, ``high``) at ``coverage`` (exact,
    at least the confidence asked for), between the order statistics of 1-based ``ranks``; ``low``/``high`` None
    where ``n`` is too small for that confidence."""

    n: int
    median: float | None
    low: float | None = None
    high: float | None = None
    coverage: float | None = None
    ranks: tuple[int, int] | None = None

    @property
    def half_width(self) -> float | None:
        """The interval's larger side as a fraction of the median (``0.03``: within ±3 %); None without one."""
        if self.low is None or self.high is None or not self.median:
            return None
        return max(self.median - self.low, self.high - self.median) / abs(self.median)


def binomial_cdf_half(k: int, n: int) -> float:
    """P(B ≤ k) for B ~ Binomial(n, ½), exact."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if k >= 0 else 0.0


def order_statistic_ranks(n: int, confidence: float) -> tuple[tuple[int, int], float] | None:
    """The narrowest symmetric pair of 1-based ranks (r, n − r + 1) whose interval covers the median with at least
    ``confidence``, and its exact coverage; None where even (x₍₁₎, x₍ₙ₎) falls short (too few values)."""
    best = None
    for r in range(1, n // 2 + 1):
        coverage = 1 - 2 * binomial_cdf_half(r - 1, n)
        if coverage < confidence:
            break
        best = ((r, n - r + 1), coverage)
    return best


def rounds_needed(confidence: float) -> int:
    """The fewest values that give a median interval at ``confidence`` (6 at 95 %, 5 at 90 %)."""
    n = 1
    while order_statistic_ranks(n, confidence) is None:
        n += 1
    return n


def median_interval(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> MedianInterval:
    """The median of ``values`` and its order-statistic interval at ``confidence`` (module docstring)."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return MedianInterval(0, None)
    median = (xs[(n - 1) // 2] + xs[n // 2]) / 2
    found = order_statistic_ranks(n, confidence)
    if found is None:
        return MedianInterval(n, median)
    (r, s), coverage = found
    return MedianInterval(n, median, xs[r - 1], xs[s - 1], coverage, (r, s))


def round_rate(generated_tokens: Iterable[int | None], decode_ms: Iterable[float | None]) -> float | None:
    """A round's decode rate [tokens/s]: its generated tokens over its decode time, both summed over the round's
    generations (each as the engine counted and timed it); None where a generation lacks either."""
    tokens, ms = list(generated_tokens), list(decode_ms)
    if not tokens or any(t is None for t in tokens) or any(m is None for m in ms) or not sum(ms):
        return None
    return sum(tokens) / (sum(ms) / 1000)


@dataclass(frozen=True)
class Verdict:
    """Where a job stands after its rounds so far: ``stop`` or go on, its interval, whether the target is met (None
    without a target), and what a table says of it."""

    stop: bool
    interval: MedianInterval
    met: bool | None
    note: str


def judge(rates: Sequence[float | None], spec: PrecisionSpec | None, repetitions: int,
          metric: str = "decode rate") -> Verdict:
    """The stopping rule on the per-round ``rates`` so far (module docstring). Without ``spec`` a job stops after
    ``repetitions`` rounds. A round without a rate (measured beside another load, or not timed by the engine) is
    left out of the interval, and counts toward max_repetitions."""
    n = len(rates)
    confidence = spec.confidence if spec else DEFAULT_CONFIDENCE
    measured = [r for r in rates if r is not None]
    interval = median_interval(measured, confidence)
    width = interval.half_width
    if spec is None:
        met, last = None, n >= repetitions
    else:
        met = width is not None and width <= spec.target
        last = n >= spec.max_repetitions
    stop = last or (spec is not None and met and n >= spec.min_repetitions)
    return Verdict(stop, interval, met, describe(interval, spec, confidence, n - len(measured), metric))


def describe(interval: MedianInterval, spec: PrecisionSpec | None, confidence: float, left_out: int = 0,
             metric: str = "decode rate") -> str:
    """What a table cell says of a job's precision, e.g. "±1.8 % (95 % CI of the median of 6 rounds' decode
    rates)", "target ±2 % not reached: ±3.1 % after 20 rounds", "no interval: 3 rounds (a 95 % interval of a
    median needs 6)"; rounds ``left_out`` (no rate) are named."""
    n = interval.n
    left = (f"; {left_out} more round{'s' * (left_out != 1)} left out (contended or not timed)" if left_out
            else "")
    width = interval.half_width
    if width is None:
        return (f"no interval: {n} round{'s' * (n != 1)} (a {confidence:.0%} interval of a median needs "
                f"{rounds_needed(confidence)}){left}")
    reached = f"±{width:.1%}"
    if spec is not None and width > spec.target:
        return f"target ±{spec.target:.0%} not reached: {reached} after {n} rounds{left}"
    return f"{reached} ({confidence:.0%} CI of the median of {n} rounds' {metric}s){left}"


@dataclass
class Rounds:
    """A job's rounds, one at a time: iterate for the next round's index (0-based: the rows' ``repetition``),
    ``record`` each finished round's rate; the iteration ends where ``judge`` says stop."""

    repetitions: int
    spec: PrecisionSpec | None = None
    metric: str = "decode rate"
    rates: list[float | None] = field(default_factory=list)
    stopped_early: bool = False

    def __iter__(self) -> Iterator[int]:
        limit = self.spec.max_repetitions if self.spec else self.repetitions
        while len(self.rates) < limit:
            before = len(self.rates)
            yield before
            if len(self.rates) == before:
                raise RuntimeError("a round ended without its rate recorded (Rounds.record)")
            if self.verdict().stop:
                return

    def record(self, rate: float | None) -> None:
        self.rates.append(rate)

    def first_batch(self) -> int:
        """The rounds before the rule can first stop: ``repetitions`` without bench.precision; else
        min_repetitions, or the rounds its confidence needs for an interval where that is more."""
        if self.spec is None:
            return self.repetitions
        return min(self.spec.max_repetitions, max(self.spec.min_repetitions, rounds_needed(self.spec.confidence)))

    def run_batches(self, measure: Callable[[int, int], list[float | None]]) -> None:
        """For a tool that measures several rounds per process (llama-bench's -r, llama-batched-bench's batch
        listed again): ``measure(first, k)`` measures rounds first … first + k − 1 and returns their rates; the
        first batch is every round the rule needs before it can stop, then one round at a time until it stops."""
        k = self.first_batch()
        while True:
            rates = measure(len(self.rates), k)
            if len(rates) != k:
                raise RuntimeError(f"a batch of {k} rounds returned {len(rates)} rates")
            self.rates.extend(rates)
            if self.verdict().stop:
                return
            k = 1

    def verdict(self) -> Verdict:
        return judge(self.rates, self.spec, self.repetitions, self.metric)

    def columns(self) -> dict:
        """The job's precision, the same on each of its rows (RUN_SCHEMA's precision_* columns)."""
        v = self.verdict()
        iv = v.interval
        return {"precision_rounds": len(self.rates), "precision_median": iv.median,
                "precision_low": iv.low, "precision_high": iv.high, "precision_coverage": iv.coverage,
                "precision_confidence": self.spec.confidence if self.spec else DEFAULT_CONFIDENCE,
                "precision_target": self.spec.target if self.spec else None, "precision_met": v.met,
                "precision_note": v.note}


PRECISION_COLUMNS = ["precision_rounds", "precision_median", "precision_low", "precision_high", "precision_coverage",
                     "precision_confidence", "precision_target", "precision_met", "precision_note"]
