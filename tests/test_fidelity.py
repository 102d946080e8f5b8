"""The harness benchmark's arithmetic and ordering (its timings are recorded in benchmarks/results, not tested)."""

import pytest

from llmbench.devices.meters import EnergyMeter
from llmbench.engines.base import Engine, Generation
from llmbench.study.fidelity import Comparison, interleaved, metered_decode_rate, verdicts


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


def test_the_serving_check_compares_the_server_over_its_slots_with_the_batch_and_reads_the_counts():
    import polars as pl

    from llmbench.engines.runs import RUN_SCHEMA
    from llmbench.study.fidelity import serving_check

    # Stand-in rows: 2 clients, 4 requests at 48, 50, 50, 52 tok/s each; batches of 2 at S_TG 95, 100, 105.
    server = pl.DataFrame([{"tool": "llama-server", "status": "ok", "concurrency": 2, "decode_tokens_per_s": v,
                            "generated_tokens": 64, "level_window_s": 8.0,
                            "server_counts_check": "match: 256 generated and 80 prompt tokens, server and client"}
                           for v in (48.0, 50.0, 50.0, 52.0)], schema=RUN_SCHEMA)
    batch = pl.DataFrame([{"tool": "llama-batched-bench", "status": "ok", "concurrency": 2, "decode_tokens_per_s": v}
                          for v in (95.0, 100.0, 105.0)], schema=RUN_SCHEMA)
    c = serving_check(2, server, batch)
    assert (c.server_aggregate, c.reference, c.ratio, c.server_output) == (100.0, 100.0, 1.0, 32.0)
    assert c.counts_match and "within ±5%" in c.verdict() and "match exactly" in c.verdict()
    slow = serving_check(2, server.with_columns(pl.col("decode_tokens_per_s") * 0.9,
                                                pl.lit("mismatch: the server counted 250").alias("server_counts_check")),
                         batch)
    assert slow.ratio == pytest.approx(0.9) and "outside ±5%" in slow.verdict() and "do not match" in slow.verdict()
    with pytest.raises(ValueError, match="0 batches"):
        serving_check(2, server, batch.clear())
