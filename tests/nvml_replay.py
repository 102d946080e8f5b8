"""A stand-in for libnvidia-ml.so behind the real pynvml module (nvidia-ml-py): the C functions pynvml calls,
answering through the same ctypes arguments, so that the product's code, pynvml's wrappers and pynvml's error
classes (NVMLError_GpuIsLost, …) all run as they do on a machine with a driver. Only the library is replayed.

``ReplayedGpu`` describes one device as NVML numbers it (PCI bus order, whatever CUDA_VISIBLE_DEVICES says: NVML
ignores it). ``replayed_nvml(monkeypatch, gpus)`` installs the stand-in library into pynvml for one test.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass, field

NVML_SUCCESS, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_GPU_IS_LOST = 0, 2, 3, 15


@dataclass
class ReplayedGpu:
    name: str
    uuid: str
    power_w: float = 300.0  # what its energy counter and power readings say it draws
    energy_step_j: float = 30.0  # the energy counter moves on by this much at each read
    lost_after_energy_reads: int | None = None  # from the read after this many, every call says "GPU is lost"
    energy_counter: bool = True  # False: a GPU older than Volta, whose energy call answers "Not Supported"
    energy_reads: int = 0
    energy_mj: int = 1_000_000
    lost: bool = False
    calls: list[str] = field(default_factory=list)


def _out(ref, value) -> None:
    """Write ``value`` through a byref() argument, as the C library writes through its pointer."""
    ref._obj.value = value


def _text(buf, size, text: str) -> None:
    ctypes.memmove(buf, text.encode() + b"\0", min(len(text) + 1, size.value))


class StandInLibNvml:
    """The stand-in library: attribute lookup gives the C function of that name (pynvml's getattr(nvmlLib, name));
    a function the replay does not know answers NVML_ERROR_NOT_SUPPORTED, as a driver without it would."""

    def __init__(self, gpus: list[ReplayedGpu]):
        self.gpus = gpus
        self.handles: dict[int, int] = {}  # handle pointer value -> index

    def _gpu(self, handle) -> ReplayedGpu | None:
        address = ctypes.cast(handle, ctypes.c_void_p).value
        index = self.handles.get(address)
        return None if index is None else self.gpus[index]

    def _call(self, gpu: ReplayedGpu | None, name: str) -> int | None:
        if gpu is None:
            return NVML_ERROR_INVALID_ARGUMENT
        gpu.calls.append(name)
        return NVML_ERROR_GPU_IS_LOST if gpu.lost else None

    def nvmlInitWithFlags(self, flags):
        return NVML_SUCCESS

    def nvmlShutdown(self):
        return NVML_SUCCESS

    def nvmlDeviceGetCount_v2(self, count_ref):
        _out(count_ref, len(self.gpus))
        return NVML_SUCCESS

    def nvmlDeviceGetHandleByIndex_v2(self, index, device_ref):
        if not 0 <= index.value < len(self.gpus):
            return NVML_ERROR_INVALID_ARGUMENT
        if self.gpus[index.value].lost:
            return NVML_ERROR_GPU_IS_LOST
        address = 0x1000 + index.value
        self.handles[address] = index.value
        ctypes.memmove(ctypes.addressof(device_ref._obj), ctypes.byref(ctypes.c_void_p(address)),
                       ctypes.sizeof(ctypes.c_void_p))
        return NVML_SUCCESS

    def nvmlDeviceGetUUID(self, handle, buf, size):
        gpu = self._gpu(handle)
        if (err := self._call(gpu, "nvmlDeviceGetUUID")) is not None:
            return err
        _text(buf, size, gpu.uuid)
        return NVML_SUCCESS

    def nvmlDeviceGetName(self, handle, buf, size):
        gpu = self._gpu(handle)
        if (err := self._call(gpu, "nvmlDeviceGetName")) is not None:
            return err
        _text(buf, size, gpu.name)
        return NVML_SUCCESS

    def nvmlDeviceGetTotalEnergyConsumption(self, handle, mj_ref):
        gpu = self._gpu(handle)
        if (err := self._call(gpu, "nvmlDeviceGetTotalEnergyConsumption")) is not None:
            return err
        if not gpu.energy_counter:
            return NVML_ERROR_NOT_SUPPORTED
        if gpu.lost_after_energy_reads is not None and gpu.energy_reads >= gpu.lost_after_energy_reads:
            gpu.lost = True
            return NVML_ERROR_GPU_IS_LOST
        gpu.energy_reads += 1
        gpu.energy_mj += round(gpu.energy_step_j * 1000)
        _out(mj_ref, gpu.energy_mj)
        return NVML_SUCCESS

    def nvmlDeviceGetPowerUsage(self, handle, mw_ref):
        gpu = self._gpu(handle)
        if (err := self._call(gpu, "nvmlDeviceGetPowerUsage")) is not None:
            return err
        _out(mw_ref, round(gpu.power_w * 1000))
        return NVML_SUCCESS

    def __getattr__(self, name):
        if name.startswith("nvml"):
            return lambda *args: NVML_ERROR_NOT_SUPPORTED
        raise AttributeError(name)


def replayed_nvml(monkeypatch, gpus: list[ReplayedGpu]) -> StandInLibNvml:
    """Install the stand-in library into the real pynvml module for this test (pynvml.nvmlLib and its cache of
    function pointers); `import pynvml` is the real module."""
    import pynvml

    monkeypatch.setitem(sys.modules, "pynvml", pynvml)  # where an earlier stand-in module was left, the real one
    lib = StandInLibNvml(gpus)
    monkeypatch.setattr(pynvml, "nvmlLib", lib)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setitem(sys.modules, "pynvml", pynvml)
    return lib
