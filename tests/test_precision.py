"""bench.precision: the order-statistic interval of a median, the stopping rule on recorded per-round rates, and
jobs measured in rounds."""

from __future__ import annotations

import polars as pl
import pytest

from llmbench.core.precision import (
    PrecisionError,
    PrecisionSpec,
    Rounds,
    binomial_cdf_half,
    judge,
    median_interval,
    order_statistic_ranks,
    round_rate,
    rounds_needed,
)
from llmbench.devices.meters import EnergyMeter
from llmbench.engines.runs import Prompt, RunPlan, run_generations

# Per-round decode rates [tokens/s] recorded from the default study's llama-server Q8_0 job on the 2-core VM
# (each round: the six prompts once): a steady engine and one whose rounds wander by ±6 %.
STEADY = [121.8, 122.6, 120.9, 121.5, 123.0, 122.1, 121.2, 122.4]
WANDERING = [118.0, 126.5, 112.4, 129.9, 121.0, 110.3, 131.2, 115.7, 127.4, 113.9, 124.8, 109.6]


def test_ranks_match_the_textbook_tables():
    # Campbell & Gardner (BMJ 1988) / Conover (1999) §3.2: n = 20 at 95 % uses x(6) and x(15), exact coverage
    # 1 − 2·P(B ≤ 5) = 95.86 %; n = 10 uses x(2) and x(9), 97.85 %.
    (ranks, coverage) = order_statistic_ranks(20, 0.95)
    assert ranks == (6, 15)
    assert coverage == pytest.approx(0.9586, abs=1e-4)
    (ranks, coverage) = order_statistic_ranks(10, 0.95)
    assert ranks == (2, 9)
    assert coverage == pytest.approx(1 - 2 * 11 / 1024)
    assert binomial_cdf_half(1, 10) == 11 / 1024


def test_too_few_rounds_give_no_interval():
    assert order_statistic_ranks(5, 0.95) is None  # (x1, x5) covers only 93.75 %
    assert rounds_needed(0.95) == 6 and rounds_needed(0.90) == 5
    iv = median_interval([1.0, 2.0, 3.0], 0.95)
    assert iv.median == 2.0 and iv.low is None and iv.half_width is None


def test_interval_arithmetic():
    iv = median_interval([10.0, 9.0, 11.0, 10.5, 9.5, 10.2], 0.95)  # n = 6: (x1, x6) at 96.9 %
    assert iv.ranks == (1, 6) and iv.coverage == pytest.approx(1 - 2 / 64)
    assert (iv.low, iv.high) == (9.0, 11.0)
    assert iv.median == pytest.approx(10.1)
    assert iv.half_width == pytest.approx(1.1 / 10.1)  # the larger side, as a fraction of the median


def spec(**kw) -> PrecisionSpec:
    return PrecisionSpec(**{"target": 0.02, "confidence": 0.95, "min_repetitions": 2, "max_repetitions": 20, **kw})


def stop_point(rates, s):
    """Rounds after which the rule stops on these recorded rates, and its verdict there."""
    for n in range(1, len(rates) + 1):
        v = judge(rates[:n], s, repetitions=2)
        if v.stop:
            return n, v
    return None, judge(rates, s, repetitions=2)


def test_stops_when_the_interval_is_inside_the_target():
    n, v = stop_point(STEADY, spec())
    assert n == 6  # the first round count with a 95 % interval, and it is within ±2 %
    assert v.met is True and v.interval.half_width <= 0.02
    assert v.note.startswith("±") and "95% CI of the median of 6 rounds" in v.note


def test_goes_on_to_max_when_the_target_is_not_met():
    n, v = stop_point(WANDERING, spec(max_repetitions=12))
    assert n == 12 and v.met is False
    assert v.note.startswith("target ±2% not reached:") and "after 12 rounds" in v.note


def test_never_stops_before_min_repetitions():
    n, v = stop_point(STEADY, spec(min_repetitions=8))
    assert n == 8 and v.met is True


def test_without_precision_fixed_repetitions_still_say_their_interval():
    v = judge(STEADY[:2], None, repetitions=2)
    assert v.stop and v.met is None
    assert v.note == "no interval: 2 rounds (a 95% interval of a median needs 6)"
    assert not judge(STEADY[:1], None, repetitions=2).stop


def test_a_round_without_a_rate_is_left_out_and_counts_toward_max():
    v = judge([120.0, None, 121.0, 122.0, 119.0, 120.5], spec(max_repetitions=7), repetitions=2)
    assert not v.stop and v.interval.n == 5
    assert v.note == "no interval: 5 rounds (a 95% interval of a median needs 6); 1 more round left out " \
                     "(contended or not timed)"
    v = judge([120.0, None, 121.0, 122.0, 119.0, 120.5, 121.0], spec(max_repetitions=7), repetitions=2)
    assert v.stop and v.met is True and v.interval.n == 6


@pytest.mark.parametrize("bad, words", [
    ({"target": 0}, "target 0"), ({"target": 1.5}, "target 1.5"), ({"confidence": 1.0}, "confidence 1.0"),
    ({"min_repetitions": 5, "max_repetitions": 4}, "min_repetitions 5"),
    ({"max_repetitions": 4}, "below the 6 rounds a 95% interval"),
])
def test_bad_settings_are_named(bad, words):
    with pytest.raises(PrecisionError, match=words.replace("(", r"\(")):
        spec(**bad)


def test_round_rate_is_tokens_over_decode_time():
    assert round_rate([10, 30], [100.0, 300.0]) == pytest.approx(100.0)
    assert round_rate([10, None], [100.0, 50.0]) is None


def test_run_batches_measures_the_needed_rounds_then_one_at_a_time():
    asked = []
    recorded = iter(WANDERING[:6] + STEADY)  # wide at 6, then steadier rounds

    def measure(first, k):
        asked.append((first, k))
        return [next(recorded) for _ in range(k)]

    rounds = Rounds(2, spec(target=0.15, max_repetitions=9))
    rounds.run_batches(measure)
    assert asked[0] == (0, 6)  # a 95 % interval needs 6 rounds: one llama-bench run with -r 6
    assert all(k == 1 for _, k in asked[1:])
    assert rounds.columns()["precision_rounds"] == len(rounds.rates) <= 9


class SteadyEngine:
    """A stand-in engine: every generation decodes 100 tokens/s, as a steady server would."""

    def __init__(self):
        self.calls = []

    def generate(self, prompt, max_tokens, temperature, seed):
        from llmbench.engines.base import Generation

        self.calls.append((prompt, seed))
        return Generation(text="x", prompt_tokens=5, prefill_tokens=5, generated_tokens=max_tokens, prefill_ms=5.0,
                          decode_ms=max_tokens * 10.0, prefill_tokens_per_s=1000.0, decode_tokens_per_s=100.0,
                          finish_reason="length", ttft_ms=5.0, wall_ms=5.0 + max_tokens * 10.0)

    def before_generation(self, prompt):
        pass

    def peak_rss_bytes(self):
        return None

    def counters(self):
        return None


def plan(**kw) -> RunPlan:
    base = dict(tool="stand-in", model="m", quant="Q4_0", split="none",
                prompts=(Prompt("a", "hi", 8), Prompt("b", "there", 16)), repetitions=2, warmup=0, idle_s=0.0,
                temperature=0.0, seed=1, n_gpu_layers=0, gpus=0, threads=1)
    return RunPlan(**{**base, **kw})


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_steady_job_stops_at_the_first_interval_and_every_round_holds_every_prompt(concurrency):
    engine = SteadyEngine()
    rows = run_generations(engine, plan(precision=spec(), concurrency=concurrency), EnergyMeter([], ["no sensor"]))
    assert rows["precision_rounds"].unique().to_list() == [6]
    assert rows["precision_met"].unique().to_list() == [True]
    assert rows["precision_median"][0] == pytest.approx(100.0)
    by_round = rows.group_by("repetition").agg(pl.col("prompt_id").sort())
    assert sorted(by_round["repetition"].to_list()) == list(range(6))
    assert all(p == ["a"] * concurrency + ["b"] * concurrency for p in by_round["prompt_id"].to_list())


def test_without_precision_a_job_measures_its_repetitions():
    rows = run_generations(SteadyEngine(), plan(repetitions=2), EnergyMeter([], ["no sensor"]))
    assert rows.height == 4 and rows["precision_rounds"][0] == 2
    assert rows["precision_target"][0] is None and rows["precision_met"][0] is None
    assert rows["precision_note"][0].startswith("no interval: 2 rounds")
