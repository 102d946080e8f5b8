"""Memory bandwidth, the denominator of the decode roofline: measured on the CPU, or a GPU's specification via NVML.

CPU: a STREAM-like measurement with numpy over arrays much larger than the last-level cache. Bytes are counted as
STREAM counts them (copy moves 2 arrays, add 3); write-allocate traffic is not counted, so the figure is what a
program sees, a little below what the memory bus carries. numpy releases the GIL in these kernels, so each thread
streams its own slice; every thread first touches its own slice, so on a NUMA machine pages land near their reader.

GPU: NVML gives the memory bus width and the maximum memory clock; bandwidth = bus width / 8 × clock × 2 (double
data rate). For an RTX 4090 (384 bit, 10501 MHz) that is 1008 GB/s and for an H100 SXM (5120 bit, 2619 MHz)
3.35 TB/s, the figures of their data sheets. It is a specification, not a measurement: what a kernel reaches is lower.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from llmbench.devices.nvml import NvmlUnavailable, nvml
from llmbench.study.provenance import cpu_model

CPU_LABEL = "measured on the CPU"
GPU_LABEL = "GPU spec via NVML"
GPU_FORMULA = "memory bus width / 8 × max memory clock × 2 (double data rate)"
MIN_ARRAY_BYTES = 256 * 2**20
CACHE_ROOT = Path("/sys/devices/system/cpu")
# name: (bytes moved per element as STREAM counts them, kernel on one slice of the arrays)
KERNELS: dict[str, tuple[int, Callable[[np.ndarray, np.ndarray, np.ndarray, slice], Any]]] = {
    "copy": (2, lambda a, b, c, s: np.copyto(c[s], a[s])),
    "add": (3, lambda a, b, c, s: np.add(a[s], b[s], out=c[s])),
}


def _size_bytes(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def last_level_cache_bytes(root: Path = CACHE_ROOT) -> tuple[int | None, str]:
    """The machine's last-level cache in bytes (each shared instance counted once) and where that came from."""
    instances: dict[tuple[int, str], int] = {}
    for index in root.glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            shared = (index / "shared_cpu_list").read_text().strip()
            instances[(level, shared)] = _size_bytes((index / "size").read_text())
        except (OSError, ValueError):
            continue  # a cache directory without these files says nothing usable
    if not instances:
        return None, f"no cache sizes under {root}"
    top = max(level for level, _ in instances)
    parts = [size for (level, _), size in instances.items() if level == top]
    return sum(parts), f"L{top}, {len(parts)} instance(s), from {root}/cpu*/cache"


def default_array_bytes(llc_bytes: int | None) -> int:
    """Each array ≥ 4× the last-level cache (STREAM's rule), and never under 256 MiB."""
    return max(4 * (llc_bytes or 0), MIN_ARRAY_BYTES)


def _slices(n: int, parts: int) -> list[slice]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return [slice(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def measure_cpu_bandwidth(threads: int, repetitions: int = 5, array_bytes: int | None = None,
                          clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Best bytes/s over the kernels (copy, add) at 1 thread and at ``threads``, each the best of ``repetitions``.

    The highest rate is the one used, as a roofline needs the most the memory can deliver; every cell of the grid is
    kept in ``runs`` so the choice can be checked.
    """
    if threads < 1 or repetitions < 1:
        raise ValueError(f"threads ({threads}) and repetitions ({repetitions}) must be at least 1")
    llc, llc_source = last_level_cache_bytes()
    array_bytes = array_bytes or default_array_bytes(llc)
    n = array_bytes // 8
    if n < threads:
        raise ValueError(f"array_bytes {array_bytes} is too small for {threads} threads")
    a, b, c = (np.empty(n, dtype=np.float64) for _ in range(3))
    runs = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        def touch(s: slice) -> None:  # first touch by the thread that streams the slice later
            a[s], b[s], c[s] = 1.0, 2.0, 0.0

        list(pool.map(touch, _slices(n, threads)))
        for thread_count in sorted({1, threads}):
            slices = _slices(n, thread_count)
            for name, (arrays, kernel) in KERNELS.items():
                best = float("inf")
                for _ in range(repetitions):
                    t0 = clock()
                    list(pool.map(lambda s, k=kernel: k(a, b, c, s), slices))
                    best = min(best, clock() - t0)
                runs.append({"kernel": name, "threads": thread_count, "best_s": best,
                             "bytes_per_s": arrays * n * 8 / best})
    top = max(runs, key=lambda r: r["bytes_per_s"])
    return {
        "bytes_per_s": top["bytes_per_s"],
        "label": (f"{CPU_LABEL} (numpy {top['kernel']}, {top['threads']} thread(s), best of {repetitions}, "
                  f"3 × {array_bytes / 2**20:.0f} MiB arrays)"),
        "source": "measured",
        "kernel": top["kernel"],
        "threads": top["threads"],
        "threads_tried": sorted({1, threads}),
        "repetitions": repetitions,
        "array_bytes": n * 8,
        "last_level_cache_bytes": llc,
        "last_level_cache_source": llc_source,
        "byte_counting": "STREAM's: copy moves 2 arrays, add 3; write-allocate traffic not counted",
        "runs": runs,
    }


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)  # older pynvml returns bytes


def gpu_spec_bandwidth(pynvml: Any, handle: Any) -> dict[str, Any]:
    """One GPU's memory bandwidth from its specification (bus width × max memory clock × 2), and its parts."""
    bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
    clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
    if not bus_bits or not clock_mhz:
        raise ValueError(f"NVML reports bus width {bus_bits} bit and max memory clock {clock_mhz} MHz")
    return {
        "name": _text(pynvml.nvmlDeviceGetName(handle)),
        "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
        "memory_bus_width_bits": bus_bits,
        "max_memory_clock_mhz": clock_mhz,
        "bytes_per_s": bus_bits / 8 * clock_mhz * 1e6 * 2,
        "label": f"{GPU_LABEL} ({GPU_FORMULA})",
        "source": "specification",
    }


def gpu_bandwidths(pynvml: Any | None = None) -> dict[str, Any]:
    """Every GPU's spec bandwidth by NVML index; {"not_available": reason} where NVML cannot start."""
    try:
        with nvml(pynvml) as lib:
            out: dict[str, Any] = {}
            for i in range(lib.nvmlDeviceGetCount()):
                try:
                    out[str(i)] = gpu_spec_bandwidth(lib, lib.nvmlDeviceGetHandleByIndex(i))
                except Exception as e:  # one GPU NVML cannot read must not hide the others
                    out[str(i)] = {"not_available": f"NVML cannot read GPU {i}'s memory bus ({type(e).__name__}: {e})"}
            return out
    except NvmlUnavailable as e:  # no GPU here
        return {"not_available": str(e)}


def machine_bandwidth(threads: int, repetitions: int = 5, array_bytes: int | None = None,
                      pynvml: Any | None = None) -> dict[str, Any]:
    """The record rule measure_memory_bandwidth writes: the CPU measured, each GPU from its specification."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cpu = measure_cpu_bandwidth(threads, repetitions, array_bytes)
    try:
        model: str | None = cpu_model()
    except (OSError, LookupError):
        model = None  # the record's cpu_model stays null: /proc/cpuinfo is absent or has no model name
    return {
        "cpu": {**cpu, "cpu_model": model, "logical_cores": os.cpu_count()},
        "gpus": gpu_bandwidths(pynvml),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "measured_at": started,
    }
