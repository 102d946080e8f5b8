"""Energy behind one interface of two verbs (as Zeus does): begin_window(name) / end_window(name).

Sensors: NVIDIA's total-energy counter per GPU (nvidia-ml-py, never nvidia-smi) and the CPU zones of RAPL
(/sys/class/powercap), read as the tree they are so that no zone is added to one that contains it. For the job's
GPUs a background sampler of instant power runs too: its trace is the fallback where a GPU has no energy counter,
the cross-check where it has one, and what splits a generation's GPU energy into prefill and decode at the first
token. The meter says which sensors it read, what boundary their sum covers and each sensor's share; where none
could be read the reading is null with the reasons, never a made-up number.

All of a run's energy bookkeeping lives here: the windows (opening an open name or closing an unknown one raises,
naming it, as Zeus does), the idle power (``measure_idle``), the configured estimate where nothing can be read
(``estimated``, flagged on the reading), the prefill/decode cut at the first token (``split_at_first_token``) and
J per generated token (``joules_per_token``), which the cost table, the figures and the comparison all use.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

from llmbench.core.periodic import Periodic
from llmbench.devices.contention import Contention, CpuWatch

POWERCAP = Path("/sys/class/powercap")

# The CPU energy boundaries RAPL can measure without adding a zone to one that contains it (the meter's
# ``cpu_boundary``): the package zones (cores, uncore/graphics and the rest of the socket, whose core/uncore
# subzones are inside them) plus the DRAM zones (a subzone of the package in sysfs, but counted apart from it);
# or the platform zones (psys: the SoC and the platform around it, the packages and DRAM included).
CPU_BOUNDARIES = {"package+dram": "CPU package+DRAM (RAPL)", "platform": "platform (RAPL psys)"}
# The domains each boundary sums, by the first word of a zone's name (package-0, package-0-die-1, psys-1, dram).
BOUNDARY_DOMAINS = {"package+dram": ("package", "dram"), "platform": ("psys",)}
# Powercap control types of RAPL, preferred first. intel-rapl is the MSR (Intel, and AMD/Hygon since Linux 5.11
# under the same name) or TPMI interface; intel-rapl-mmio is the same package reached through the processor's
# MMIO registers: where both are there only the first is read, or the package would count twice.
RAPL_CONTROL_TYPES = {"intel-rapl": "rapl", "intel-rapl-mmio": "rapl-mmio"}
_ZONE_DIR = re.compile(r"^(?P<type>[a-z-]+):(?P<ids>\d+(?::\d+)*)$")


@dataclass(frozen=True)
class EnergyReading:
    energy_j: float | None
    source: str | None
    null_reason: str | None
    window_s: float
    t0: float = 0.0  # perf_counter at begin and end, to cut the GPU power trace at other instants
    t1: float = 0.0
    sampled_gpu_j: float | None = None  # the power trace's integral over the window, beside the counter
    boundary: str | None = None  # what the sum covers, e.g. "GPU (NVML energy counter) + CPU package+DRAM (RAPL)"
    by_sensor_j: dict[str, float] | None = None  # each sensor's joules over the window, by label; they sum to energy_j
    # True where energy_j is bench.energy_estimate_w × the window (``estimated``), not a sensor's reading.
    estimated: bool = False
    # What else ran on the machine over the window (llmbench.devices.contention), where the meter watches it.
    contention: Contention | None = None

    def net_j(self, idle_w: float | None) -> float | None:
        """The window's energy above idle [J]: energy_j less ``idle_w`` (W, ``measure_idle``) × its length; None
        where either is unknown."""
        if self.energy_j is None or idle_w is None:
            return None
        return self.energy_j - idle_w * self.window_s

    def boundary_columns(self) -> dict:
        """The run row's columns saying what was measured: the boundary, and each sensor's joules (JSON)."""
        return {"energy_boundary": self.boundary,
                "energy_by_sensor_j": json.dumps(self.by_sensor_j) if self.by_sensor_j is not None else None}


# A window must span this many updates of its slowest sensor to be used for J/token: NVML's energy counter updates
# about every 100 ms and reads low on short windows (−26% at 0.5 s, −12% at 1 s, ~0% at 5 s; shared/FIELD.md).
MIN_UPDATES = 20


class Sensor(Protocol):
    label: str  # unique within a meter: the key of the sensor's joules in the row
    boundary: str  # what it measures, as the row names it: "GPU (NVML energy counter)", "CPU package+DRAM (RAPL)"
    update_s: float  # how often its reading changes [s]

    def read_j(self) -> float:
        """Cumulative energy in joules; SensorError where the sensor cannot be read now."""
        ...

    def delta_j(self, start: float, end: float) -> float: ...


class SensorError(RuntimeError):
    """A sensor that could not be read (a RAPL file gone, an NVML call that failed): the window it falls in has
    no energy, and says this."""


class DeviceLost(SensorError):
    """The device itself is gone (NVML: "GPU is lost", Xid 79, fallen off the bus): nothing measured on it from
    now on is sound, so the job ends after the generations that finished."""


# NVML return codes after which the GPU answers nothing until the machine is rebooted (nvml.h).
NVML_DEVICE_GONE = {15: "GPU is lost", 16: "GPU requires reset"}
GPU_LOST_FIX = ("the GPU fell off the bus (NVML: {error}): look for an Xid error (79: fallen off the bus) in "
                "`sudo dmesg`, check its power and seating, and reboot the machine before measuring again")


class NvmlCounter:
    """nvmlDeviceGetTotalEnergyConsumption: mJ since the driver loaded (Volta and newer); 64 bits, never wraps."""

    boundary = "GPU (NVML energy counter)"
    update_s = 0.1  # the counter steps about every 100 ms (shared/FIELD.md)

    def __init__(self, pynvml, handle, label: str):
        self._nvml, self._handle, self.label = pynvml, handle, label

    def read_j(self) -> float:
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0
        except self._nvml.NVMLError as e:
            code = getattr(e, "value", None)
            if code in NVML_DEVICE_GONE:
                raise DeviceLost(f"{self.label}: " + GPU_LOST_FIX.format(error=e)) from e
            raise SensorError(f"{self.label}: NVML could not read the energy counter ({e})") from e

    def delta_j(self, start: float, end: float) -> float:
        return end - start


def _now() -> float:
    """The meters' clock (time.perf_counter, s), looked up at each call so that a test may script it."""
    return time.perf_counter()


# A bound on what one RAPL zone draws where the kernel does not say (no constraint_*_max_power_uw; AMD zones
# have none): above any CPU package sold today (AMD EPYC 9005: 500 W TDP), so the wrap period it gives is short.
ASSUMED_MAX_POWER_W = 1000.0
# How many reads a zone gets per shortest wrap period: one read per period sees each wrap only if the power
# never exceeds the bound; four leave room for a late poll.
READS_PER_WRAP = 4
MAX_POLL_S = 5.0


def zone_max_power(zone: Path) -> tuple[float, str]:
    """The highest power a powercap zone can draw [W] and where that figure comes from: the largest of its
    ``constraint_*_max_power_uw`` files (Intel packages), or ASSUMED_MAX_POWER_W where it has none."""
    values = []
    for f in zone.glob("constraint_*_max_power_uw"):
        try:
            values.append(int(f.read_text()) / 1e6)
        except (OSError, ValueError):
            continue
    if values and max(values) > 0:
        return max(values), f"{zone.name}/constraint_*_max_power_uw"
    return ASSUMED_MAX_POWER_W, f"assumed (no constraint_*_max_power_uw in {zone.name})"


class RaplZone:
    """One powercap zone. Its energy_uj counts up and wraps at max_energy_range_uj: 65.5 kJ on AMD EPYC (32 bits
    of 15.3 µJ), which at 225 W is every 291 s (scaphandre; zeus#91). A difference of two reads can undo at most
    one wrap, so the zone unfolds its wraps at every read into a running total (zeus PR #105, pyJoules PR #21),
    and the meter polls it at least READS_PER_WRAP times per ``wrap_s``, the shortest time in which it can wrap.
    Where two reads were further apart than that (a stalled poller, a suspended machine), ``blind_spans`` keeps
    the gap, and a window that holds one is flagged invalid rather than read low."""

    update_s = 0.001  # RAPL's energy status updates about every millisecond (Intel SDM vol. 3B, 15.10.1)

    def __init__(self, zone: Path, label: str | None = None, boundary: str = "CPU (RAPL)",
                 clock: Callable[[], float] | None = None):
        self.zone = zone
        self.label = label or f"rapl:{(zone / 'name').read_text().strip()}"
        self.boundary = boundary
        self.range_j = int((zone / "max_energy_range_uj").read_text()) / 1e6
        self.max_power_w, self.max_power_source = zone_max_power(zone)
        self.wrap_s = self.range_j / self.max_power_w
        self.poll_s = min(self.wrap_s / READS_PER_WRAP, MAX_POLL_S)
        self._clock = clock or _now
        self._lock = threading.Lock()  # the meter's poller and the job's windows read the same zone
        self._raw: float | None = None
        self._last_t = 0.0
        self._total_j = 0.0
        self.blind_spans: list[tuple[float, float]] = []

    def read_j(self) -> float:
        """Joules since the zone's first read, every wrap seen so far unfolded. SensorError where the zone's
        file cannot be read (gone, or root-only: PermissionError is let through for the meter's setup)."""
        with self._lock:
            try:
                raw = int((self.zone / "energy_uj").read_text()) / 1e6
            except PermissionError:
                raise
            except (OSError, ValueError) as e:
                raise SensorError(f"{self.label}: {self.zone / 'energy_uj'} could not be read ({e})") from e
            t = self._clock()
            if self._raw is not None:
                self._total_j += raw - self._raw if raw >= self._raw else raw + self.range_j - self._raw
                if t - self._last_t > self.wrap_s:
                    self.blind_spans.append((self._last_t, t))
            self._raw, self._last_t = raw, t
            return self._total_j

    def delta_j(self, start: float, end: float) -> float:
        return end - start

    def unseen(self, t0: float, t1: float) -> str | None:
        """Why a window [t0, t1] may have lost wraps: the longest gap between two reads overlapping it that was
        longer than ``wrap_s``; None where it has none."""
        spans = [s for s in self.blind_spans if s[1] > t0 and s[0] < t1]
        if not spans:
            return None
        a, b = max(spans, key=lambda s: s[1] - s[0])
        return (f"{self.label} was not read for {b - a:.0f} s inside the window, longer than the {self.wrap_s:.0f} s "
                f"in which its counter can wrap (max_energy_range_uj {self.range_j * 1e6:.0f} at "
                f"{self.max_power_w:g} W, {self.max_power_source}): wraps may be lost, so the window is left out of J "
                "per token")


class CounterPoller:
    """Reads counters that wrap (RAPL zones) on a daemon thread, each at its own ``poll_s``, so that no wrap
    falls between two reads; a read that fails is kept in ``errors`` (the windows it falls in say so)."""

    def __init__(self, sensors: list, clock: Callable[[], float] | None = None):
        self.sensors = sensors
        self.interval_s = min(s.poll_s for s in sensors)
        self.errors: list[tuple[float, str]] = []  # (when, what failed)
        self._clock = clock or _now
        self._ticker = Periodic(self.poll, self.interval_s, "rapl-wrap-poller", self._clock)

    @property
    def running(self) -> bool:
        return self._ticker.running

    def poll(self) -> None:
        for s in self.sensors:
            try:
                s.read_j()
            except (SensorError, OSError) as e:
                self.errors.append((self._clock(), str(e)))

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()


# A trace of a GPU without an energy counter may miss this many samples in a row before a window over it is not
# trusted (a sampler thread is late by a few intervals under load; a second without samples is not a trace).
MAX_TRACE_GAP_SAMPLES = 25


class SampledPower:
    """A GPU without an energy counter: cumulative energy as the integral of the sampler's power trace."""

    boundary = "GPU (NVML sampled power)"

    def __init__(self, sampler, label: str):
        self.sampler, self.label = sampler, label
        self.update_s = sampler.interval_s
        self._since = sampler.samples[0][0]

    def read_j(self) -> float:
        """The trace's integral up to a sample taken now; SensorError (DeviceLost for a GPU that is gone) where
        that sample fails, since the integral would stop at the last good one and read low."""
        if not self.sampler.sample():
            error = self.sampler.last_error
            if getattr(error, "value", None) in NVML_DEVICE_GONE:
                raise DeviceLost(f"{self.label}: " + GPU_LOST_FIX.format(error=error))
            raise SensorError(f"{self.label}: NVML could not read the power ({error})")
        return self.sampler.energy_j(self._since, self.sampler.samples[-1][0]) or 0.0

    def delta_j(self, start: float, end: float) -> float:
        return end - start

    def unseen(self, t0: float, t1: float) -> str | None:
        """Why the window's integral cannot be trusted: a stretch of the trace without samples (NVML failing
        for a while, a stalled thread) over which the power was only interpolated; None where it has none."""
        gap = self.sampler.widest_gap(t0, t1)
        limit = MAX_TRACE_GAP_SAMPLES * self.sampler.interval_s
        if gap is None or gap[1] - gap[0] <= limit:
            return None
        return (f"{self.label}: the power trace has no sample for {gap[1] - gap[0]:.2f} s inside the window "
                f"(more than {MAX_TRACE_GAP_SAMPLES} sampling intervals): its energy there is a guess, so the window "
                "is left out of J per token")


class WindowError(ValueError):
    """An energy window used out of turn: opened under a name already open, or closed under a name not open. A
    bug of the caller, not of the machine: reopening would drop the first start, closing guesses nothing."""


class EnergyMeter:
    """The job's sensors behind begin_window/end_window. Counters that wrap are polled on a thread of their own
    (CounterPoller) while the meter is open. A sensor that cannot be read at either end of a window (or by the
    poller inside it) makes that window's energy null with the reason, never a partial sum of the others; a GPU
    that is gone (``lost``) is said once, for the job to end on."""

    def __init__(self, sensors: list[Sensor], unavailable: list[str], sampler=None, gpu_state=None,
                 clock: Callable[[], float] | None = None, watch: CpuWatch | None = None):
        self.sensors = sensors
        self.watch = watch  # what else used the CPU over each window (llmbench.devices.contention); None: not watched
        self.unavailable = unavailable
        self.sampler = sampler
        self._gpu_state = gpu_state
        self._clock = clock or _now
        self._open: dict[str, tuple[float, list[float | None], list[str]]] = {}
        self.lost: str | None = None  # why the job's GPU is gone (DeviceLost), once a sensor said so
        wrapping = [s for s in sensors if hasattr(s, "poll_s")]
        self.poller = CounterPoller(wrapping, clock) if wrapping else None
        if self.poller is not None:
            self.poller.start()

    @property
    def source(self) -> str | None:
        return " + ".join(s.label for s in self.sensors) or None

    @property
    def boundary(self) -> str | None:
        """What the sum of the sensors covers, each part named once."""
        parts = dict.fromkeys(getattr(s, "boundary", s.label) for s in self.sensors)
        return " + ".join(parts) or None

    def _open_names(self) -> str:
        return "open: " + ", ".join(map(repr, self._open)) if self._open else "none is open"

    def _read_all(self, failures: list[str]) -> list[float | None]:
        """Every sensor now; a sensor that fails reads None and its reason goes into ``failures``."""
        values: list[float | None] = []
        for s in self.sensors:
            try:
                values.append(s.read_j())
            except (SensorError, OSError) as e:
                if isinstance(e, DeviceLost) and self.lost is None:
                    self.lost = str(e)
                failures.append(str(e) if isinstance(e, SensorError) else f"{s.label}: {type(e).__name__}: {e}")
                values.append(None)
        return values

    def begin_window(self, name: str) -> None:
        """Start the window ``name``: every sensor's counter and the clock now. WindowError if ``name`` is open."""
        if name in self._open:
            raise WindowError(f"energy window {name!r} is already open ({self._open_names()}): "
                              f"end_window({name!r}) before opening it again")
        if self.watch is not None:
            self.watch.begin(name)
        failures: list[str] = []
        starts = self._read_all(failures)
        self._open[name] = (self._clock(), starts, failures)

    def opened_at(self, name: str) -> float:
        """When the open window ``name`` began (the meter's clock, time.perf_counter, s): the origin of the times
        inside it."""
        return self._open[name][0]

    def end_window(self, name: str) -> EnergyReading:
        """End the window ``name``: each sensor's joules since begin_window, their sum and the window's length in
        seconds; null with the reasons where no sensor could be read, or where one failed during the window (a
        sum without it would cover less than its boundary says). WindowError if ``name`` is not open."""
        if name not in self._open:
            raise WindowError(f"no energy window {name!r} is open ({self._open_names()}): "
                              f"begin_window({name!r}) first")
        t0, starts, failures = self._open.pop(name)
        ends = self._read_all(failures)
        t1 = self._clock()
        watched = self.watch.end(name, t1 - t0) if self.watch is not None else None
        return replace(self._reading(t0, t1, starts, ends, failures), contention=watched)

    def _reading(self, t0: float, t1: float, starts: list[float | None], ends: list[float | None],
                 failures: list[str]) -> EnergyReading:
        if not self.sensors:
            return EnergyReading(None, None, "not measured: " + "; ".join(self.unavailable), t1 - t0, t0, t1)
        if self.poller is not None:
            failures += [why for t, why in list(self.poller.errors) if t0 <= t <= t1]
        if failures:
            reason = "not measured: a sensor failed during the window: " + "; ".join(dict.fromkeys(failures))
            return EnergyReading(None, self.source, reason, t1 - t0, t0, t1, None, self.boundary)
        deltas = [(s.label, s.delta_j(a, b)) for s, a, b in zip(self.sensors, starts, ends, strict=True)]
        return EnergyReading(sum(j for _, j in deltas), self.source, None, t1 - t0, t0, t1, self.gpu_trace_j(t0, t1),
                             self.boundary, dict(deltas))

    def validity(self, energy: EnergyReading) -> tuple[bool | None, str | None]:
        """Whether a window's reading may be used for J/token: every sensor saw the whole window (no RAPL wrap
        period without a read, no gap in a power trace) and it spans at least MIN_UPDATES updates of the slowest
        sensor; (False, why) where it does not, (None, None) where nothing was measured or it is an
        estimate (no counter to step)."""
        if energy.energy_j is None or energy.estimated or not self.sensors:
            return None, None
        for s in self.sensors:  # a sensor that could not see the whole window (RaplZone, SampledPower)
            why = s.unseen(energy.t0, energy.t1) if hasattr(s, "unseen") else None
            if why is not None:
                return False, why
        slowest = max(self.sensors, key=lambda s: getattr(s, "update_s", 0.0))
        need = MIN_UPDATES * getattr(slowest, "update_s", 0.0)
        if energy.window_s >= need:
            return True, None
        return False, (f"window of {energy.window_s:.3g} s is shorter than {MIN_UPDATES} updates of "
                       f"{slowest.label} ({need:g} s): it reads low, so it is left out of J per token")

    def gpu_trace_j(self, t0: float, t1: float) -> float | None:
        """GPU energy over [t0, t1] from the sampled power trace; None without a GPU sampler."""
        if self.sampler is None:
            return None
        self.sampler.sample()  # the trace must reach t1
        return self.sampler.energy_j(t0, t1)

    @property
    def split_null_reason(self) -> str | None:
        """Why no prefill/decode energy split exists (it needs the GPU power trace), or None."""
        if self.sampler is not None:
            return None
        gpu_problems = [u for u in self.unavailable if u.startswith(("GPU", "NVML"))]
        return "not measured: " + ("; ".join(gpu_problems) or "no GPU power trace (the job uses no GPU)")

    def gpu_state(self) -> dict | None:
        """Each GPU's clocks, temperature, memory and throttle reasons now; None for a job without GPUs."""
        return self._gpu_state() if self._gpu_state is not None else None

    def close(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        for sampler in [self.sampler, *(s.sampler for s in self.sensors if isinstance(s, SampledPower))]:
            if sampler is not None:
                sampler.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def measure_idle(meter: EnergyMeter, seconds: float) -> tuple[float | None, str | None]:
    """Idle power in W with the model loaded: the meter's energy over one window of ``seconds`` (bench.idle_s)
    doing nothing, over its length; (None, why) where nothing can be measured, without waiting."""
    if not meter.sensors:
        return None, "not measured: " + "; ".join(meter.unavailable)
    if seconds <= 0:
        return None, "not measured: bench.idle_s is 0"
    meter.begin_window("idle")
    time.sleep(seconds)
    idle = meter.end_window("idle")
    if idle.energy_j is None:
        return None, idle.null_reason
    return idle.energy_j / idle.window_s, None


def estimated(energy: EnergyReading, watts: float | None) -> EnergyReading:
    """Where nothing was measured and the config asks for it (bench.energy_estimate_w, in W): that power × the
    window's length in J, flagged ``estimated`` and named so in its source; any other reading as it is."""
    if energy.energy_j is not None or not watts:
        return energy
    source = f"estimate: {watts:g} W assumed × window (bench.energy_estimate_w), {energy.null_reason}"
    return replace(energy, energy_j=watts * energy.window_s, source=source, null_reason=None, estimated=True)


@dataclass(frozen=True)
class PhaseEnergy:
    """A generation's GPU energy in J before its first token (prefill) and after it (decode), from the sampled
    power trace; both None with the reason where there is no trace or no first token."""

    prefill_j: float | None
    decode_j: float | None
    null_reason: str | None


def split_at_first_token(meter: EnergyMeter, energy: EnergyReading, ttft_ms: float | None) -> PhaseEnergy:
    """Cut the window ``energy`` at the first token, ``ttft_ms`` after its start (the engine's time to first
    token, in ms; a first token past the window's end is taken at its end), and integrate the meter's GPU power
    trace on each side. With the first thinking token a reasoning model's thinking counts as decode."""
    reason = meter.split_null_reason
    if reason is not None:
        return PhaseEnergy(None, None, reason)
    if ttft_ms is None:
        return PhaseEnergy(None, None, "not measured: the engine reported no first token")
    first = min(energy.t0 + ttft_ms / 1000, energy.t1)
    return PhaseEnergy(meter.gpu_trace_j(energy.t0, first), meter.gpu_trace_j(first, energy.t1), None)


Quantity = TypeVar("Quantity")  # a number, a numpy array or a polars expression


def joules_per_token(energy_j: Quantity, tokens: Quantity) -> Quantity:
    """Energy per generated token in J/token: a window's gross energy (energy_j as the meter read it: prefill and
    decode, idle not subtracted, as the article's P / (tokens/s)) over the tokens generated in it. Over several
    windows pass the sums (energy summed, tokens summed, then divided): each generation weighs by its tokens and
    short windows, which read low on counters that step every ~100 ms, are diluted. Numbers, numpy arrays and
    polars expressions alike; which rows have none (no energy, no token) is the caller's rule, said there."""
    return energy_j / tokens


def nvml_sensors(gpu_indices: list[int]):
    """Per GPU its energy counter, or the sampled power where it has none; plus the sampler and a state reader."""
    if not gpu_indices:
        return [], [], None, None
    from llmbench.devices.nvml import NvmlUnavailable, open_nvml

    try:
        pynvml = open_nvml()  # left open: the sensors read it until the job ends
    except NvmlUnavailable as e:
        return [], [f"GPU energy: {e}"], None, None
    from llmbench.devices.gpu_telemetry import PowerSampler, gpu_snapshot

    sensors, problems, handles, no_counter = [], [], [], []
    for i in gpu_indices:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
        except pynvml.NVMLError as e:
            problems.append(f"GPU {i}: NVML cannot open it ({e})")
            continue
        handles.append(handle)
        sensor = NvmlCounter(pynvml, handle, f"nvml-energy:{uuid}")
        try:
            sensor.read_j()
            sensors.append(sensor)
        except SensorError as e:
            no_counter.append((handle, uuid, e.__cause__ or e))
    if not handles:
        return sensors, problems, None, None
    sampler = PowerSampler(pynvml, handles)
    sampler.start()
    for handle, uuid, e in no_counter:
        # Only this GPU's power goes into its sensor: a sampler of its own.
        own = PowerSampler(pynvml, [handle])
        own.start()
        if not own.samples:
            own.stop()
            problems.append(f"GPU {uuid}: no energy counter ({e}) and no power reading ({'; '.join(own.errors)})")
            continue
        sensors.append(SampledPower(own, f"nvml-sampled-power:{uuid} ({own.source}; no energy counter: {e})"))
    return sensors, problems, sampler, lambda: gpu_snapshot(pynvml, handles)


@dataclass(frozen=True)
class PowercapZone:
    """One zone as /sys/class/powercap lists it: every zone of every control type side by side, the tree in the
    directory names (``intel-rapl:0:2`` is subzone 2 of ``intel-rapl:0``), the domain in the ``name`` file."""

    path: Path
    control_type: str  # intel-rapl, intel-rapl-mmio
    ids: tuple[int, ...]  # (0, 2) for intel-rapl:0:2
    name: str  # as the kernel writes it: package-0, package-0-die-1, core, uncore, dram, psys, psys-1

    @property
    def domain(self) -> str:
        return self.name.split("-")[0]

    @property
    def parent(self) -> tuple[str, tuple[int, ...]] | None:
        return (self.control_type, self.ids[:-1]) if len(self.ids) > 1 else None


def powercap_zones(root: Path = POWERCAP) -> list[PowercapZone]:
    """The RAPL zones under ``root`` that count energy, parents before their subzones."""
    zones = []
    for entry in root.iterdir() if root.is_dir() else []:
        m = _ZONE_DIR.match(entry.name)
        if m is None or m["type"] not in RAPL_CONTROL_TYPES or not (entry / "energy_uj").exists():
            continue
        ids = tuple(int(i) for i in m["ids"].split(":"))
        zones.append(PowercapZone(entry, m["type"], ids, (entry / "name").read_text().strip()))
    return sorted(zones, key=lambda z: (list(RAPL_CONTROL_TYPES).index(z.control_type), z.ids))


def rapl_sensors(root: Path = POWERCAP, boundary: str = "package+dram",
                 clock: Callable[[], float] | None = None) -> tuple[list[Sensor], list[str]]:
    """The zones that make up ``boundary`` (a key of CPU_BOUNDARIES), none inside another: package+DRAM adds the
    package zones and the DRAM zones, never their core/uncore subzones nor psys, which contains them all; platform
    reads the psys zones alone. Each zone is labelled by its path in the tree (``rapl:package-1/dram``)."""
    if boundary not in CPU_BOUNDARIES:
        raise ValueError(f"unknown CPU energy boundary {boundary!r}: choose one of {', '.join(CPU_BOUNDARIES)}")
    zones = powercap_zones(root)
    if not zones:
        return [], [f"CPU energy: no RAPL zones under {root} (absent in many VMs)"]
    control_type = zones[0].control_type  # the preferred interface present; the others reach the same domains
    zones = [z for z in zones if z.control_type == control_type]
    by_id = {(z.control_type, z.ids): z for z in zones}

    def ancestors(z: PowercapZone) -> list[PowercapZone]:
        up = []
        while z.parent in by_id:
            z = by_id[z.parent]
            up.append(z)
        return up

    picked: list[PowercapZone] = []
    for z in zones:
        # DRAM is a subzone of its package in sysfs but RAPL counts it apart from the package: the one
        # parent-child pair that adds up. Any other zone inside a picked one is already in its sum.
        inside = [a for a in ancestors(z) if a in picked and not (z.domain == "dram" and a.domain == "package")]
        if z.domain in BOUNDARY_DOMAINS[boundary] and not inside:
            picked.append(z)
    names = ", ".join(z.name for z in zones)
    if boundary == "package+dram" and not any(z.domain == "package" for z in picked):
        return [], [f"CPU energy: no RAPL package zone under {root} (zones: {names})"]
    if not picked:
        return [], [f"CPU energy: no RAPL psys (platform) zone under {root} (zones: {names}); "
                    "measure the package+dram boundary instead"]
    label = CPU_BOUNDARIES[boundary]
    if boundary == "package+dram" and not any(z.domain == "dram" for z in picked):
        label = "CPU package (RAPL; no DRAM zone)"  # AMD, and Intel clients: DRAM is not in the sum
    prefix = RAPL_CONTROL_TYPES[control_type]
    try:
        sensors = [RaplZone(z.path, f"{prefix}:" + "/".join(a.name for a in [*reversed(ancestors(z)), z]), label,
                            clock) for z in picked]
        for s in sensors:
            s.read_j()
    except PermissionError:
        return [], [f"CPU energy: RAPL under {root} is not readable by this user (root-only since Linux 5.10)"]
    return sensors, []


def open_energy_meter(gpu_indices: list[int], powercap: Path = POWERCAP, cpu_boundary: str = "package+dram",
                      clock: Callable[[], float] | None = None) -> EnergyMeter:
    """The meter of one job: its GPUs (by index among the visible ones) and the CPU within ``cpu_boundary`` (a key
    of CPU_BOUNDARIES); close it when done. The platform boundary is for jobs without GPUs: what psys covers
    beyond the SoC is the platform maker's choice and may hold the GPUs, which would then count twice."""
    if cpu_boundary == "platform" and gpu_indices:
        raise ValueError("the platform energy boundary (RAPL psys) may already contain the GPUs: "
                         "measure a GPU job with the package+dram boundary")
    gpu, gpu_problems, sampler, state = nvml_sensors(gpu_indices)
    cpu, cpu_problems = rapl_sensors(powercap, cpu_boundary, clock)
    # A CPU job's windows are flagged when other processes load the machine; a GPU job's only record it, since
    # GPU jobs on other GPUs may share the host by design (--resources gpu=N).
    return EnergyMeter([*gpu, *cpu], [*gpu_problems, *cpu_problems], sampler, state, clock,
                       CpuWatch(flag=not gpu_indices))
