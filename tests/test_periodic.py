"""The periodic thread behind the NVML power sampler and the RAPL wrap poller (llmbench.core.periodic)."""

import threading

from llmbench.core.periodic import Periodic


def test_it_ticks_until_stopped_and_never_after():
    ticks, third = [], threading.Event()

    def tick():
        ticks.append(1)
        if len(ticks) >= 3:
            third.set()

    ticker = Periodic(tick, 0.01, "test-ticker")
    assert not ticker.running
    ticker.start()
    assert ticker.running
    assert third.wait(30)
    ticker.stop()
    assert not ticker.running
    done = len(ticks)
    assert not any(t.name == "test-ticker" for t in threading.enumerate())
    assert len(ticks) == done  # no call after stop returned
    ticker.stop()  # a second stop is harmless


def test_a_stopped_ticker_starts_again():
    ticks, twice = [], threading.Event()
    ticker = Periodic(lambda: (ticks.append(1), len(ticks) >= 2 and twice.set()), 0.01, "again")
    ticker.start()
    ticker.stop()
    ticker.start()
    assert twice.wait(30)
    ticker.stop()
