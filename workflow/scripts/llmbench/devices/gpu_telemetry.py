"""GPU telemetry through NVML (nvidia-ml-py, imported as pynvml; never nvidia-smi): a power trace sampled in the
background, a snapshot of each GPU's state, and a cross-check of the trace against NVML's energy counter.

Instant power comes from the field NVML_FI_DEV_POWER_INSTANT (nvmlDeviceGetFieldValues). Where that field is not
supported the sampler falls back to nvmlDeviceGetPowerUsage, which on Ampere (except GA100) and newer is a
1-second trailing average, so short windows integrate a smeared trace; the sampler's ``source`` says which.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from llmbench.core.periodic import Periodic

INSTANT = "nvml-field:POWER_INSTANT"
AVERAGE = "nvml-power-usage (1 s trailing average on Ampere and newer, except GA100)"
# nvmlClocksEventReason* bits (called nvmlClocksThrottleReason* before NVML 12.2); same values in both.
CLOCK_EVENT_REASONS = {
    0x1: "GpuIdle", 0x2: "ApplicationsClocksSetting", 0x4: "SwPowerCap", 0x8: "HwSlowdown", 0x10: "SyncBoost",
    0x20: "SwThermalSlowdown", 0x40: "HwThermalSlowdown", 0x80: "HwPowerBrakeSlowdown", 0x100: "DisplayClockSetting",
}
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")  # by nvmlValueType_t


class PowerSampler:
    """Samples the summed instant power of ``handles`` every ``interval_s`` on a daemon thread (perf_counter clock).

    start() and stop() each take one sample themselves, so any window between them is covered by the trace.
    """

    def __init__(self, pynvml: Any, handles: Sequence[Any], interval_s: float = 0.02,
                 clock: Callable[[], float] = time.perf_counter):
        if not 0.01 <= interval_s <= 0.05:
            raise ValueError(f"interval_s must be within 0.01–0.05 s, not {interval_s}")
        self._nvml, self.handles, self.interval_s, self._clock = pynvml, list(handles), interval_s, clock
        self.samples: list[tuple[float, tuple[float, ...]]] = []  # (t, watts per GPU); one list: appends are atomic
        self.errors: list[str] = []
        self.last_error: Exception | None = None
        self._ticker = Periodic(self.sample, interval_s, "nvml-power-sampler", clock)
        self.source = self._pick_source()

    def _instant_w(self, handle: Any) -> float:
        v = self._nvml.nvmlDeviceGetFieldValues(handle, [self._nvml.NVML_FI_DEV_POWER_INSTANT])[0]
        if v.nvmlReturn != 0:  # NVML_SUCCESS: each field carries its own status
            raise self._nvml.NVMLError(v.nvmlReturn)
        return float(getattr(v.value, _VALUE_MEMBERS[v.valueType])) / 1000.0  # mW

    def _average_w(self, handle: Any) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW

    def _pick_source(self) -> str:
        try:
            for h in self.handles:
                self._instant_w(h)
            self._read = self._instant_w
            return INSTANT
        except (self._nvml.NVMLError, AttributeError) as e:  # not supported, or a pynvml without the field
            self.errors.append(f"POWER_INSTANT unavailable ({e}); using nvmlDeviceGetPowerUsage")
            self._read = self._average_w
            return AVERAGE

    def sample(self) -> bool:
        """Read every GPU once and record the sum's parts at the read's midpoint; False where NVML failed (the
        error kept in ``errors`` and ``last_error``)."""
        before = self._clock()
        try:
            watts = tuple(self._read(h) for h in self.handles)
        except self._nvml.NVMLError as e:
            self.errors.append(f"sample at {before:.3f}: {e}")
            self.last_error = e
            return False
        self.record((before + self._clock()) / 2, watts)
        return True

    def widest_gap(self, t0: float, t1: float) -> tuple[float, float] | None:
        """The longest stretch between two samples that overlaps [t0, t1] (s, s), or None with under two samples."""
        times = [t for t, _ in list(self.samples)]
        gaps = [(a, b) for a, b in itertools.pairwise(times) if b > t0 and a < t1]
        return max(gaps, key=lambda g: g[1] - g[0]) if gaps else None

    def record(self, t: float, watts: Sequence[float]) -> None:
        """Append one sample (the sampling thread's path, and how tests inject a trace)."""
        self.samples.append((t, tuple(watts)))

    @property
    def running(self) -> bool:
        return self._ticker.running

    def start(self) -> None:
        self.sample()
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()
        self.sample()

    def energy_j(self, t0: float, t1: float) -> float | None:
        """Trapezoidal integral of the summed power over [t0, t1], interpolated at the ends; None where the
        trace does not cover the window (never an extrapolated number)."""
        samples = list(self.samples)
        if len(samples) < 2 or t0 < samples[0][0] or t1 > samples[-1][0] or t1 < t0:
            return None
        t, p = [s[0] for s in samples], [sum(s[1]) for s in samples]

        def at(x: float) -> float:  # linear interpolation inside the trace
            i = min(max(bisect.bisect_right(t, x), 1), len(t) - 1)
            return p[i - 1] + (p[i] - p[i - 1]) * (x - t[i - 1]) / (t[i] - t[i - 1]) if t[i] > t[i - 1] else p[i]

        pts = [(t0, at(t0)), *((x, y) for x, y in zip(t, p, strict=True) if t0 < x < t1), (t1, at(t1))]
        return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in itertools.pairwise(pts))

    def trace(self) -> pl.DataFrame:
        """One row per sample and GPU: t_s (perf_counter), gpu (position in handles), power_w, source."""
        rows = [(t, i, w) for t, ws in list(self.samples) for i, w in enumerate(ws)]
        return pl.DataFrame(rows, schema={"t_s": pl.Float64, "gpu": pl.Int64, "power_w": pl.Float64},
                            orient="row").with_columns(source=pl.lit(self.source))


def clock_event_reasons(pynvml: Any, handle: Any) -> list[str]:
    """Current clock-event (throttle) reasons by name; the older call where the driver lacks the newer one."""
    newer = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    mask = None
    if newer is not None:
        try:
            mask = newer(handle)
        except pynvml.NVMLError as e:
            if getattr(e, "value", None) != getattr(pynvml, "NVML_ERROR_FUNCTION_NOT_FOUND", 13):
                raise
    if mask is None:
        mask = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    return names + ([f"0x{unknown:x}"] if unknown else [])


def gpu_snapshot(pynvml: Any, handles: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """Each GPU's state now, by position in ``handles``; a field NVML cannot read is None, its error in 'errors'."""
    fields: dict[str, Callable[[Any], Any]] = {
        "memory_used_bytes": lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).used,
        "sm_clock_mhz": lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
        "temperature_c": lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        "clock_event_reasons": lambda h: clock_event_reasons(pynvml, h),
        "power_limit_w": lambda h: pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
    }
    out: dict[int, dict[str, Any]] = {}
    for i, h in enumerate(handles):
        snap: dict[str, Any] = {"errors": {}}
        for name, read in fields.items():
            try:
                snap[name] = read(h)
            except (pynvml.NVMLError, AttributeError) as e:
                snap[name] = None
                snap["errors"][name] = f"{type(e).__name__}: {e}"
        out[i] = snap
    return out


def cross_check(counter_j: float | None, sampled_j: float | None) -> float | None:
    """(sampled − counter) / counter: how far the integrated trace is from NVML's energy counter."""
    if counter_j is None or sampled_j is None or counter_j == 0:
        return None
    return (sampled_j - counter_j) / counter_j
