"""A daemon thread that calls a function at a fixed period until stopped: the clock of the NVML power sampler
(llmbench.devices.gpu_telemetry) and of the RAPL wrap poller (llmbench.devices.meters)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Periodic:
    """Calls ``tick()`` every ``interval_s`` seconds on a daemon thread named ``name``, on a drift-free schedule (the
    n-th call is due n intervals after ``start``: a slow call delays the next one, not every later one). ``stop``
    waits for a call in progress and no call follows it."""

    def __init__(self, tick: Callable[[], None], interval_s: float, name: str,
                 clock: Callable[[], float] = time.perf_counter):
        self._tick, self.interval_s, self.name, self._clock = tick, interval_s, name, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _run(self) -> None:
        due = self._clock()
        while not self._stop.is_set():
            due += self.interval_s
            self._stop.wait(max(0.0, due - self._clock()))
            if not self._stop.is_set():
                self._tick()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
