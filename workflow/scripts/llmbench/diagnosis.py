"""Why an engine failed, named for what it is, with its fix: one reading of how it ended and of its own log.

Every engine goes through :func:`diagnose` (llama-server, llama-bench, llama-perplexity, llama-quantize,
llama-cpp-python, transformers, Ollama, vLLM, and the build's smoke test): the exit status or the signal that ended
the process, then the engine's own words. A model file is called corrupt only when the GGUF check
(:func:`llmbench.models.check_gguf`: magic, version, tensor data inside the file) proves it; a loader that refused
a sound file is quoted as such, since re-downloading a sound 40 GB file costs a user hours.

Sources of the wordings: llama.cpp's src/llama-model.cpp, llama-model-loader.cpp and llama-arch.cpp (unknown
architecture, split files), tools/server (context size), ggml-cuda.cu and ggml-alloc.c (allocations); Ollama's
llm/server.go ("model requires more system memory", "llama runner process has terminated"); signal names as
Linux gives them (signal(7)).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path

from llmbench.engines.llama_log import OOM_FIX, out_of_memory_line

# Kinds of failure, as the `failure_kind` column of a failed row names them.
ILLEGAL_INSTRUCTION = "illegal_instruction"
SEGFAULT = "segmentation_fault"
KILLED = "killed"
ABORTED = "aborted"
GPU_OOM = "out_of_gpu_memory"
HOST_OOM = "out_of_host_memory"
UNKNOWN_ARCHITECTURE = "unknown_architecture"
SPLIT_MODE_UNSUPPORTED = "split_mode_unsupported"
LONE_SHARD = "split_gguf_shard_alone"
CONTEXT_EXCEEDED = "context_size_exceeded"
CORRUPT_FILE = "corrupt_model_file"
EXITED = "exited"

# Engines that run this workflow's own llama.cpp build: an illegal instruction there is fixed by rebuilding it.
LLAMA_CPP_ENGINES = ("llama-server", "llama-bench", "llama-perplexity", "llama-quantize", "llama-cpp-python")
REBUILD_FIX = (
    "this llama.cpp build uses an instruction this CPU cannot run: set llama_cpp.cpu_build: portable (ggml's "
    "runtime CPU dispatch, as llama.cpp's release binaries) or list the extension in llama_cpp.exclude_cpu_features "
    "(e.g. [amx]) in the config, and run the workflow again: the build is redone under a new name"
)
HOST_OOM_FIX = (
    "the host ran out of memory: use a smaller quant or model, a smaller bench.ctx_size, fewer concurrent jobs "
    "(--cores, --resources), or a machine with more RAM"
)
ARCH_FIX = "pin a newer llama_cpp.version in the config (its llama.cpp must know the architecture)"
CONTEXT_FIX = "raise bench.ctx_size, or lower the prompt's max_tokens or its length"

_GPU_OOM_EXTRA = (
    re.compile(r"requires more (?:gpu|vram|video) memory", re.I),
    re.compile(r"torch\.(?:cuda\.)?OutOfMemoryError|CUDA out of memory", re.I),
    re.compile(r"No available memory for the cache blocks|insufficient (?:GPU|KV cache) memory", re.I),
)
_HOST_OOM = (
    re.compile(r"model requires more system memory \([^)]*\) than is available \([^)]*\)"),
    re.compile(r"std::bad_alloc"),
    re.compile(r"Cannot allocate memory|MemoryError\b|Out of memory: Killed process"),
    re.compile(r"failed to mmap|mmap failed", re.I),
)
_UNKNOWN_ARCH = (
    re.compile(r"unknown model architecture: '([^']+)'"),
    re.compile(r"unknown (?:model )?architecture:? ['\"]?([\w.-]+)", re.I),
    re.compile(r"model architecture ['\"]?([\w.-]+)['\"]? is not supported", re.I),
)
_SPLIT_MODE = (
    re.compile(r"(?:split[_ ]mode|split mode) \S* ?(?:is )?not supported[^\n]*", re.I),
    re.compile(r"invalid value for --split-mode|unknown split mode|invalid split_mode", re.I),
    re.compile(r"split_mode (?:row|tensor) (?:requires|is only supported)[^\n]*", re.I),
    # The pinned build on a CPU-only machine: llama_prepare_model_devices skips the CPU for tensor parallelism.
    re.compile(r"LLAMA_SPLIT_MODE_TENSOR needs >= \d+ devices?"),
)
_LONE_SHARD = (
    re.compile(r"invalid split file name: (\S+)"),
    re.compile(r"(?:failed to|could not) (?:open|load) split file[^\n]*", re.I),
    re.compile(r"split\.count[^\n]*(?:mismatch|missing)", re.I),
)
_CONTEXT = (
    re.compile(r"Context size has been exceeded\.?"),
    re.compile(r"exceed(?:s|ed)?_context_size_error|exceeds the available context size", re.I),
    re.compile(r"the request exceeds the available context size|input length exceeds the context", re.I),
    re.compile(r"maximum context length is \d+ tokens|longer than the maximum model length", re.I),
)
# A signal named in an engine's own words (Ollama's runner, a Python child's fatal error handler).
_SIGNAL_WORDS = (
    (re.compile(r"signal: illegal instruction|Fatal Python error: Illegal instruction|SIGILL", re.I), signal.SIGILL),
    (re.compile(r"signal: segmentation fault|Fatal Python error: Segmentation fault|SIGSEGV", re.I), signal.SIGSEGV),
    (re.compile(r"signal: killed\b", re.I), signal.SIGKILL),
)
_MODEL_LOAD = re.compile(r"failed to load model|error loading model|unable to load model|invalid magic|"
                         r"gguf_init_from_file|failed to read (?:tensor|key|magic)", re.I)
_ASSERT = re.compile(r"GGML_ASSERT\([^\n]*|GGML_ABORT[^\n]*|terminate called[^\n]*")
_ERRORISH = re.compile(r"error|failed|fatal|exception|abort", re.I)


@dataclass(frozen=True)
class Diagnosis:
    """What ended an engine: ``kind`` (one of this module's constants), ``reason`` (one sentence for a failed row:
    what happened, the engine's own line quoted, the fix), ``line`` (that line) and ``signal`` (e.g. 'SIGILL')."""

    kind: str
    reason: str
    line: str | None = None
    signal: str | None = None


def signal_of(returncode: int | None) -> signal.Signals | None:
    """The signal that ended a child process (Python's subprocess gives ``-N``), or None."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode)
    except ValueError:
        return None


def _first(patterns, text: str) -> tuple[re.Match, str] | None:
    for line in text.splitlines():
        for p in patterns:
            m = p.search(line)
            if m:
                return m, line.strip()
    return None


def _last_errorish(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if _ERRORISH.search(line)]
    return lines[-1] if lines else None


def _file_check(model: Path | None) -> str | None:
    """The GGUF check's finding when it proves the file damaged; None for a sound file or none given."""
    if model is None or not Path(model).is_file():
        return None
    from llmbench.models import CorruptModelError, check_gguf

    try:
        check_gguf(model)
    except CorruptModelError as e:
        return str(e)
    except Exception:  # a lone shard or an unreadable file: said by the kinds above, not as corruption
        return None
    return None


def diagnose(engine: str, returncode: int | None = None, log_text: str = "", model: Path | None = None,
             settings: str = "", signal_hint: signal.Signals | None = None) -> Diagnosis:
    """Name the failure of ``engine`` from its exit status (``-N`` for a signal, as subprocess gives it), its
    log or error text, and (for load failures) the GGUF check of ``model``. ``settings`` (e.g. "n_gpu_layers=99,
    ctx_size=4096") is quoted in memory failures. Never raises."""
    at = f"{engine} ({settings})" if settings else engine
    sig = signal_of(returncode) or signal_hint
    if sig is None:
        said = _first([p for p, _ in _SIGNAL_WORDS], log_text)
        if said:
            sig = next(s for p, s in _SIGNAL_WORDS if p.search(said[1]))

    if (line := out_of_memory_line(log_text)) and "bad_alloc" not in line:
        return Diagnosis(GPU_OOM, f"out of memory: {at} logged {line!r}; {OOM_FIX}", line, _name(sig))
    if found := _first(_GPU_OOM_EXTRA, log_text):
        return Diagnosis(GPU_OOM, f"out of GPU memory: {at} logged {found[1]!r}; {OOM_FIX}", found[1], _name(sig))
    if found := _first(_HOST_OOM, log_text):
        return Diagnosis(HOST_OOM, f"out of host memory: {at} logged {found[1]!r}; {HOST_OOM_FIX}", found[1],
                         _name(sig))
    if found := _first(_UNKNOWN_ARCH, log_text):
        arch = found[0].group(1)
        return Diagnosis(UNKNOWN_ARCHITECTURE, f"this {engine} build does not know architecture {arch!r} (it logged "
                         f"{found[1]!r}); the model file is not at fault: {ARCH_FIX}", found[1], _name(sig))
    if found := _first(_LONE_SHARD, log_text):
        return Diagnosis(LONE_SHARD, f"{engine} could not load the split GGUF's shards (it logged {found[1]!r}): "
                         "every shard must lie beside the first under its published name "
                         "(NAME-0000K-of-0000N.gguf) and the first shard must be the file given", found[1], _name(sig))
    if found := _first(_SPLIT_MODE, log_text):
        return Diagnosis(SPLIT_MODE_UNSUPPORTED, f"{engine} does not support this split mode here (it logged "
                         f"{found[1]!r}): drop it from the tool's split_modes or use a build and devices that have "
                         "it (row and tensor need a CUDA build and several GPUs)", found[1], _name(sig))
    if found := _first(_CONTEXT, log_text):
        return Diagnosis(CONTEXT_EXCEEDED, f"context size exceeded: {engine} said {found[1]!r}; {CONTEXT_FIX}",
                         found[1], _name(sig))

    if sig == signal.SIGILL:
        fix = REBUILD_FIX if engine in LLAMA_CPP_ENGINES else (
            f"this {engine} uses an instruction this CPU cannot run: install a build of it made for this CPU "
            "(or report it to its maintainers with the log)")
        return Diagnosis(ILLEGAL_INSTRUCTION, f"{engine} died by SIGILL (illegal instruction): {fix}", None, "SIGILL")
    if sig == signal.SIGKILL:
        return Diagnosis(KILLED, f"{engine} was killed (SIGKILL), most often by the kernel's out-of-memory killer "
                         f"(host RAM; `dmesg` says 'Out of memory: Killed process'); {HOST_OOM_FIX}", None, "SIGKILL")
    if sig in (signal.SIGSEGV, signal.SIGBUS):
        quoted = _first((_ASSERT,), log_text)
        return Diagnosis(SEGFAULT, f"{engine} crashed with a segmentation fault ({sig.name})"
                         + (f" after logging {quoted[1]!r}" if quoted else "")
                         + "; the model file is not blamed: if it repeats, try llama_cpp.cpu_build: portable or "
                         "report it upstream with the engine log", quoted[1] if quoted else None, sig.name)
    if sig == signal.SIGABRT:
        quoted = _first((_ASSERT,), log_text)
        return Diagnosis(ABORTED, f"{engine} aborted (SIGABRT)" + (f": {quoted[1]!r}" if quoted else "")
                         + "; see the engine log", quoted[1] if quoted else None, "SIGABRT")

    how = f"ended by {sig.name}" if sig else (f"exit code {returncode}" if returncode else None)
    line = _last_errorish(log_text)
    if _MODEL_LOAD.search(log_text):
        found = _file_check(model)
        if found:
            return Diagnosis(CORRUPT_FILE, f"the GGUF check proves the model file damaged: {found}", found, _name(sig))
        sound = (f"; the GGUF check finds {Path(model).name} sound (magic, version, tensor data inside the file), "
                 "so do not delete it" if model is not None and Path(model).is_file() else "")
        return Diagnosis(EXITED, f"{engine} could not load the model" + (f" ({how})" if how else "") + sound
                         + f": it logged {line!r}; see the engine log", line, _name(sig))
    return Diagnosis(EXITED, f"{engine} " + (how.replace("exit code", "exited with code") if how else "failed")
                     + (f": {line!r}" if line else "") + "; see the engine log", line, _name(sig))


def _name(sig: signal.Signals | None) -> str | None:
    return sig.name if sig else None
