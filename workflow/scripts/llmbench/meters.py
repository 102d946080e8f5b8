"""Energy behind one interface of two verbs (as Zeus does): begin_window(name) / end_window(name).

Sensors: NVIDIA's total-energy counter per GPU (nvidia-ml-py, never nvidia-smi) and the CPU zones of RAPL
(/sys/class/powercap), read as the tree they are so that no zone is added to one that contains it. For the job's
GPUs a background sampler of instant power runs too: its trace is the fallback where a GPU has no energy counter,
the cross-check where it has one, and what splits a generation's GPU energy into prefill and decode at the first
token. The meter says which sensors it read, what boundary their sum covers and each sensor's share; where none
could be read the reading is null with the reasons, never a made-up number.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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

    def boundary_columns(self) -> dict:
        """The run row's columns saying what was measured: the boundary, and each sensor's joules (JSON)."""
        return {"energy_boundary": self.boundary,
                "energy_by_sensor_j": json.dumps(self.by_sensor_j) if self.by_sensor_j is not None else None}


class Sensor(Protocol):
    label: str  # unique within a meter: the key of the sensor's joules in the row
    boundary: str  # what it measures, as the row names it: "GPU (NVML energy counter)", "CPU package+DRAM (RAPL)"

    def read_j(self) -> float:
        """Cumulative energy in joules."""
        ...

    def delta_j(self, start: float, end: float) -> float: ...


class NvmlCounter:
    """nvmlDeviceGetTotalEnergyConsumption: mJ since the driver loaded (Volta and newer)."""

    boundary = "GPU (NVML energy counter)"

    def __init__(self, pynvml, handle, label: str):
        self._nvml, self._handle, self.label = pynvml, handle, label

    def read_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0

    def delta_j(self, start: float, end: float) -> float:
        return end - start


class RaplZone:
    """One powercap zone: energy_uj counts up and wraps at max_energy_range_uj."""

    def __init__(self, zone: Path, label: str | None = None, boundary: str = "CPU (RAPL)"):
        self.zone = zone
        self.label = label or f"rapl:{(zone / 'name').read_text().strip()}"
        self.boundary = boundary
        self.range_j = int((zone / "max_energy_range_uj").read_text()) / 1e6

    def read_j(self) -> float:
        return int((self.zone / "energy_uj").read_text()) / 1e6

    def delta_j(self, start: float, end: float) -> float:
        return end - start if end >= start else end + self.range_j - start


class SampledPower:
    """A GPU without an energy counter: cumulative energy as the integral of the sampler's power trace."""

    boundary = "GPU (NVML sampled power)"

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

    @property
    def boundary(self) -> str | None:
        """What the sum of the sensors covers, each part named once."""
        parts = dict.fromkeys(getattr(s, "boundary", s.label) for s in self.sensors)
        return " + ".join(parts) or None

    def begin_window(self, name: str) -> None:
        self._open[name] = (time.perf_counter(), [s.read_j() for s in self.sensors])

    def end_window(self, name: str) -> EnergyReading:
        t0, starts = self._open.pop(name)
        ends = [s.read_j() for s in self.sensors]
        t1 = time.perf_counter()
        if not self.sensors:
            return EnergyReading(None, None, "not measured: " + "; ".join(self.unavailable), t1 - t0, t0, t1)
        deltas = [(s.label, s.delta_j(a, b)) for s, a, b in zip(self.sensors, starts, ends, strict=True)]
        return EnergyReading(sum(j for _, j in deltas), self.source, None, t1 - t0, t0, t1, self.gpu_trace_j(t0, t1),
                             self.boundary, dict(deltas))

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


def rapl_sensors(root: Path = POWERCAP, boundary: str = "package+dram") -> tuple[list[Sensor], list[str]]:
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
        sensors = [RaplZone(z.path, f"{prefix}:" + "/".join(a.name for a in [*reversed(ancestors(z)), z]), label)
                   for z in picked]
        for s in sensors:
            s.read_j()
    except PermissionError:
        return [], [f"CPU energy: RAPL under {root} is not readable by this user (root-only since Linux 5.10)"]
    return sensors, []


def open_energy_meter(gpu_indices: list[int], powercap: Path = POWERCAP,
                      cpu_boundary: str = "package+dram") -> EnergyMeter:
    """The meter of one job: its GPUs (by index among the visible ones) and the CPU within ``cpu_boundary`` (a key
    of CPU_BOUNDARIES); close it when done. The platform boundary is for jobs without GPUs: what psys covers
    beyond the SoC is the platform maker's choice and may hold the GPUs, which would then count twice."""
    if cpu_boundary == "platform" and gpu_indices:
        raise ValueError("the platform energy boundary (RAPL psys) may already contain the GPUs: "
                         "measure a GPU job with the package+dram boundary")
    gpu, gpu_problems, sampler, state = nvml_sensors(gpu_indices)
    cpu, cpu_problems = rapl_sensors(powercap, cpu_boundary)
    return EnergyMeter([*gpu, *cpu], [*gpu_problems, *cpu_problems], sampler, state)
