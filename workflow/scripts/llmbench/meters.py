"""Energy behind one interface of two verbs (as Zeus does): begin_window(name) / end_window(name).

Sensors: NVIDIA's total-energy counter per GPU (nvidia-ml-py, never nvidia-smi) and the CPU package/DRAM
zones of RAPL (/sys/class/powercap). The meter says which sensors it read; where none could be read the
reading is null with the reasons, never a made-up number.
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


class EnergyMeter:
    def __init__(self, sensors: list[Sensor], unavailable: list[str]):
        self.sensors = sensors
        self.unavailable = unavailable
        self._open: dict[str, tuple[float, list[float]]] = {}

    @property
    def source(self) -> str | None:
        return " + ".join(s.label for s in self.sensors) or None

    def begin_window(self, name: str) -> None:
        self._open[name] = (time.perf_counter(), [s.read_j() for s in self.sensors])

    def end_window(self, name: str) -> EnergyReading:
        t0, starts = self._open.pop(name)
        ends = [s.read_j() for s in self.sensors]
        window = time.perf_counter() - t0
        if not self.sensors:
            return EnergyReading(None, None, "not measured: " + "; ".join(self.unavailable), window)
        energy = sum(s.delta_j(a, b) for s, a, b in zip(self.sensors, starts, ends, strict=True))
        return EnergyReading(energy, self.source, None, window)


def nvml_sensors(gpu_indices: list[int]) -> tuple[list[Sensor], list[str]]:
    if not gpu_indices:
        return [], []
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], [f"GPU energy: NVML could not start ({e})"]
    sensors, problems = [], []
    for i in gpu_indices:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            sensor = NvmlCounter(pynvml, handle, f"nvml-energy:{uuid}")
            sensor.read_j()
            sensors.append(sensor)
        except pynvml.NVMLError as e:
            problems.append(f"GPU {i}: no NVML energy counter ({e})")
    return sensors, problems


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
    gpu, gpu_problems = nvml_sensors(gpu_indices)
    cpu, cpu_problems = rapl_sensors(powercap)
    return EnergyMeter([*gpu, *cpu], [*gpu_problems, *cpu_problems])
