"""What llama.cpp's own log says about a load: the layers it offloaded, and whether it ran out of memory.

The texts are llama.cpp's (src/llama-model.cpp, ggml-cuda.cu, ggml-alloc.c, llama-context.cpp, llama-kv-cache.cpp
of the pinned build); a log is read from its last load, since one log file can hold several attempts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

AUTO = "auto"  # n_gpu_layers: let llama.cpp fit the layers to free device memory


def check_offload(n_gpu_layers: int | str, tensor_split: tuple[float, ...] | None = None) -> None:
    """The offload settings every llama.cpp engine takes, refused with the fix before anything starts."""
    if n_gpu_layers != AUTO and not (isinstance(n_gpu_layers, int) and n_gpu_layers >= 0):
        raise ValueError(f"n_gpu_layers {n_gpu_layers!r} is neither a number of layers (>= 0) nor 'auto'")
    if tensor_split and n_gpu_layers == AUTO:
        raise ValueError(f"tensor_split {list(tensor_split)} with n_gpu_layers auto: llama.cpp's fitting sets the split "
                         "itself and gives up on a given one; drop tensor_split or set n_gpu_layers to a number")

# Printed by load_tensors at info level whenever the build can offload (llama_supports_gpu_offload()).
_OFFLOADED = re.compile(r"load_tensors: offloaded (\d+)/(\d+) layers to GPU")
# Printed at debug level for every repeating layer and the output layer (index n_layer).
_ASSIGNED = re.compile(r"load_tensors: layer +(\d+) assigned to device (\S+?),")
_N_LAYER = re.compile(r"print_info: n_layer(?:_all)? += (\d+)")
_LOAD_START = "load_tensors: loading model tensors"

# Each pattern is a message llama.cpp or ggml prints when an allocation fails; the first match is quoted.
OOM_PATTERNS = (
    re.compile(r"cudaMalloc failed: out of memory"),
    re.compile(r"(?:CUDA|ROCm|MUSA) error: out of memory"),
    re.compile(r"unable to allocate \S+ buffer"),
    re.compile(r"failed to allocate \S+ buffer of size \d+"),
    re.compile(r"failed to allocate buffer for kv cache"),
    re.compile(r"failed to allocate compute (?:pp |tg )?buffers"),
    re.compile(r"ErrorOutOfDeviceMemory|OutOfDeviceMemoryError"),
    re.compile(r"std::bad_alloc"),
)

OOM_FIX = (
    "lower the model's n_gpu_layers (or set it to auto, so llama.cpp fits the layers to free memory) or "
    "bench.ctx_size in the config"
)


@dataclass(frozen=True)
class Offload:
    """Layers llama.cpp put on GPUs out of the model's offloadable layers (repeating layers + output layer)."""

    offloaded: int | None
    total: int | None
    source: str  # which log line it was read from, or why it is unknown

    def facts(self) -> dict:
        return {"n_gpu_layers_offloaded": self.offloaded, "n_layers_total": self.total, "offload_source": self.source}


def last_load(text: str) -> str:
    """The log from its last model load on (the whole text when no load started)."""
    i = text.rfind(_LOAD_START)
    if i < 0:
        return text
    # print_info comes just before load_tensors: keep the lines of that load's header too.
    j = text.rfind("print_info: n_layer", 0, i)
    return text[j if j >= 0 else i:]


def parse_offload(text: str) -> Offload:
    """Layers offloaded, from llama.cpp's own log lines of the last load.

    1. ``load_tensors: offloaded N/M layers to GPU`` (info level; every build that can offload prints it);
    2. else the debug lines ``load_tensors: layer K assigned to device D``, counting the non-CPU devices;
    3. else, where the log shows the model's ``n_layer`` and no offload line, a build without a GPU backend
       offloaded none of its n_layer + 1 layers (llama.cpp prints the offload line only where it can offload).
    """
    text = last_load(text)
    found = _OFFLOADED.findall(text)
    if found:
        n, m = found[-1]
        return Offload(int(n), int(m), "llama.cpp log: load_tensors: offloaded N/M layers to GPU")
    assigned = dict(_ASSIGNED.findall(text))
    if assigned:
        on_gpu = sum(1 for dev in assigned.values() if not dev.upper().startswith("CPU"))
        return Offload(on_gpu, len(assigned), "llama.cpp log: load_tensors: layer K assigned to device D")
    layers = _N_LAYER.findall(text)
    if layers and _LOAD_START in text:
        return Offload(0, int(layers[-1]) + 1,
                       "llama.cpp log: no offload line (printed only by builds that can offload), n_layer from print_info")
    return Offload(None, None, "not found in the engine's log: it shows no model load")


def out_of_memory_line(text: str) -> str | None:
    """The first line of the log where llama.cpp reports a failed allocation, stripped; None if there is none."""
    for line in text.splitlines():
        if any(p.search(line) for p in OOM_PATTERNS):
            return line.strip()
    return None


def oom_reason(engine: str, line: str, n_gpu_layers, ctx_size: int | None) -> str:
    """The 'failed' row's reason: what ran out, the settings it ran with, and the fix."""
    settings = f"n_gpu_layers={n_gpu_layers}" + (f", ctx_size={ctx_size}" if ctx_size else "")
    return f"out of memory: {engine} ({settings}) logged {line!r}; {OOM_FIX}"
