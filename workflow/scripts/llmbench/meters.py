"""Energy behind one interface of two verbs (as Zeus does): begin_window(name) / end_window(name).

Sensors: NVIDIA's total-energy counter per GPU (nvidia-ml-py, never nvidia-smi) and the CPU package/DRAM
zones of RAPL (/sys/class/powercap). For the job's GPUs a background sampler of instant power runs too: its
trace is the fallback where a GPU has no energy counter, the cross-check where it has one, and what splits a
generation's GPU energy into prefill and decode at the first token. The meter says which sensors it read;
where none could be read the reading is null with the reasons, never a made-up number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class EnergyReading:
    energy_j: float | None
    source: str | None
    null_reason: str | None
    window_s: float
    t0: float = 0.0  # perf_counter at begin and end, to cut the GPU power trace at other instants
    t1: float = 0.0
    sampled_gpu_j: float | None = None  # the power trace's integral over the window, beside the counter


class Sensor(Protocol):
    label: str

    def read_j(self) -> float:
        """Cumulative energy in joules."""
        ...

    def delta_j(self, start: float, end: float) -> float: ...


class NvmlCounter:
    """nvmlDeviceGetTotalEnergyConsumption: mJ since the driver loaded (Volta and newer)."""

    def __init__(self, pynvml, handle, label: str):
        self._nvml, self._handle, self.label = pynvml, handle, label

    def read_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0

    def delta_j(self, start: float, end: float) -> float:
        return end - start


class RaplZone:
    """One powercap zone: energy_uj counts up and wraps at max_energy_range_uj."""

    def __init__(self, zone: Path):
        self.zone = zone
        self.label = f"rapl:{(zone / 'name').read_text().strip()}"
        self.range_j = int((zone / "max_energy_range_uj").read_text()) / 1e6

    def read_j(self) -> float:
        return int((self.zone / "energy_uj").read_text()) / 1e6

    def delta_j(self, start: float, end: float) -> float:
        return end - start if end >= start else end + self.range_j - start


class SampledPower:
    """A GPU without an energy counter: cumulative energy as the integral of the sampler's power trace."""

    def __init__(self, sampler, label: str):
        self.sampler, self.label = sampler, label
        self._since = sampler.samples[0][0]

    def read_j(self) -> float:
        self.sampler.sample()
        return self.sampler.energy_j(self._since, self.sampler.samples[-1][0]) or 0.0

    def delta_j(self, start: float, end: float) -> float:
        return end - start


class EnergyMeter:
    def __init__(self, sensors: list[Sensor], unavailable: list[str], sampler=None, gpu_state=None):
        self.sensors = sensors
        self.unavailable = unavailable
        self.sampler = sampler
        self._gpu_state = gpu_state
        self._open: dict[str, tuple[float, list[float]]] = {}

    @property
    def source(self) -> str | None:
        return " + ".join(s.label for s in self.sensors) or None

    def begin_window(self, name: str) -> None:
        self._open[name] = (time.perf_counter(), [s.read_j() for s in self.sensors])

    def end_window(self, name: str) -> EnergyReading:
        t0, starts = self._open.pop(name)
        ends = [s.read_j() for s in self.sensors]
        t1 = time.perf_counter()
        if not self.sensors:
            return EnergyReading(None, None, "not measured: " + "; ".join(self.unavailable), t1 - t0, t0, t1)
        energy = sum(s.delta_j(a, b) for s, a, b in zip(self.sensors, starts, ends, strict=True))
        return EnergyReading(energy, self.source, None, t1 - t0, t0, t1, self.gpu_trace_j(t0, t1))

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
        for sampler in [self.sampler, *(s.sampler for s in self.sensors if isinstance(s, SampledPower))]:
            if sampler is not None:
                sampler.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def nvml_sensors(gpu_indices: list[int]):
    """Per GPU its energy counter, or the sampled power where it has none; plus the sampler and a state reader."""
    if not gpu_indices:
        return [], [], None, None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], [f"GPU energy: NVML could not start ({e})"], None, None
    from llmbench.gpu_telemetry import PowerSampler, gpu_snapshot

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
        except pynvml.NVMLError as e:
            no_counter.append((handle, uuid, e))
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


def rapl_sensors(root: Path = POWERCAP) -> tuple[list[Sensor], list[str]]:
    """Package zones and their DRAM subzones; cores/uncore are inside the package and are not added twice."""
    zones = sorted(root.glob("intel-rapl:[0-9]*")) if root.exists() else []
    picked = [z for z in zones if z.name.count(":") == 1]
    picked += [z for z in zones if z.name.count(":") == 2 and (z / "name").exists()
               and (z / "name").read_text().strip() == "dram"]
    if not picked:
        return [], [f"CPU energy: no RAPL zones under {root} (absent in many VMs)"]
    try:
        sensors = [RaplZone(z) for z in picked]
        for s in sensors:
            s.read_j()
    except PermissionError:
        return [], [f"CPU energy: RAPL under {root} is not readable by this user (root-only since Linux 5.10)"]
    return sensors, []


def open_energy_meter(gpu_indices: list[int], powercap: Path = POWERCAP) -> EnergyMeter:
    """The meter of one job: its GPUs (by index among the visible ones) and the CPU; close it when done."""
    gpu, gpu_problems, sampler, state = nvml_sensors(gpu_indices)
    cpu, cpu_problems = rapl_sensors(powercap)
    return EnergyMeter([*gpu, *cpu], [*gpu_problems, *cpu_problems], sampler, state)
