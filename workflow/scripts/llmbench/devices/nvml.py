"""NVML (nvidia-ml-py, imported as pynvml) started the one way every GPU reader here starts it.

nvmlInit is reference-counted: each reader starts and shuts down its own, and the meters' NVML stays open while
provenance or the bandwidth record opens and closes theirs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class NvmlUnavailable(RuntimeError):
    """NVML could not start: no nvidia-ml-py, no NVIDIA library or driver (a machine without a GPU)."""


def open_nvml(pynvml: Any | None = None) -> Any:
    """Start NVML and return the pynvml module (or ``pynvml``, a stand-in for tests); the caller shuts it down.

    Raises NvmlUnavailable("NVML could not start (ErrorType: message)") where it cannot start.
    """
    try:
        if pynvml is None:
            import pynvml
        pynvml.nvmlInit()
    except Exception as e:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        raise NvmlUnavailable(f"NVML could not start ({type(e).__name__}: {e})") from None
    return pynvml


def close_nvml(pynvml: Any) -> None:
    """nvmlShutdown, quietly: nothing read before depends on it, and a stand-in may lack it."""
    try:
        pynvml.nvmlShutdown()
    except Exception:
        pass


@contextlib.contextmanager
def nvml(pynvml: Any | None = None) -> Iterator[Any]:
    """NVML started for the block (the pynvml module yielded), shut down after it; NvmlUnavailable as open_nvml."""
    lib = open_nvml(pynvml)
    try:
        yield lib
    finally:
        close_nvml(lib)
