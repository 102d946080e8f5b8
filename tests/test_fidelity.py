"""The harness benchmark's arithmetic and ordering (its timings are recorded in benchmarks/results, not tested)."""

from llmbench.engines.base import Engine, Generation
from llmbench.fidelity import Comparison, interleaved, metered_decode_rate, verdicts
from llmbench.meters import EnergyMeter


def test_interleaving_alternates_which_condition_goes_first():
    calls = []
    a, b = interleaved(3, lambda i: calls.append(("a", i)) or 1.0, lambda i: calls.append(("b", i)) or 2.0)
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert (a, b) == ([1.0] * 3, [2.0] * 3)


def test_ratio_is_of_medians_and_verdicts_apply_the_thresholds():
    metering = Comparison("m", "metered", "bare", [99.0, 100.0, 500.0], [100.0, 101.0, 1.0])
    assert metering.ratio == 1.0
    fidelity = Comparison("f", "server", "bench", [96.0], [100.0])
    out = verdicts(metering, fidelity)
    assert "meets the >= 0.99 target" in out[0] and "outside ±3%" in out[1]
    assert "misses" in verdicts(Comparison("m", "a", "b", [98.0], [100.0]), fidelity)[0]


class StandInBackend(Engine):
    """A stand-in engine that reports a fixed decode rate."""

    tool = "stand-in"

    def __init__(self):
        self.rss_reads = 0

    def generate(self, prompt, max_tokens, temperature, seed):
        return Generation(3, 3, max_tokens, 1.0, 10.0, 3000.0, 42.0, 12.0, "length", "x")

    def peak_rss_bytes(self):
        self.rss_reads += 1
        return 1


def test_metered_path_opens_and_closes_a_window_and_reads_the_engine_rss():
    backend, meter = StandInBackend(), EnergyMeter([], ["no sensor here"])
    assert metered_decode_rate(backend, meter, "p", 8, 1) == 42.0
    assert backend.rss_reads == 1 and meter._open == {}
