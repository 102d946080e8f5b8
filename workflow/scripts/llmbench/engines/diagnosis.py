"""Why an engine failed, named for what it is, with its fix: one reading of how it ended and of its own log.

Every engine goes through :func:`diagnose` (llama-server, llama-bench, llama-batched-bench, llama-perplexity,
llama-quantize, llama-cpp-python, transformers, Ollama, vLLM, and the build's smoke test): the exit status or the
signal that ended the process, then the engine's own words. A model file is called corrupt only when the GGUF check
(:func:`llmbench.modelfiles.models.check_gguf`: magic, version, tensor data inside the file) proves it; a loader that refused
a sound file is quoted as such, since re-downloading a sound 40 GB file costs a user hours.

The reason quotes the line that says why (the root cause), never the last line: vLLM ends every failed start with
"Engine core initialization failed. See root cause above", llama.cpp with "failed to load model", Ollama with
"llama runner process has terminated: exit status N"; the cause is the first exception or error line before them
(:func:`root_cause`).

Sources of the wordings: llama.cpp's src/llama-model.cpp, llama-model-loader.cpp and llama-arch.cpp (unknown
architecture, split files), ggml/src/gguf.cpp and ggml.c (tensor types, GGUF version and byte order),
tools/server (context size), ggml-cuda.cu and ggml-alloc.c (allocations); vLLM's v1/core/kv_cache_utils.py and
worker/worker.py (KV cache too small), model_executor/models/registry.py (architectures); Ollama's
llm/server.go ("model requires more system memory", "llama runner process has terminated"); signal names as
Linux gives them (signal(7)).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path

from llmbench.engines.llama_log import OOM_FIX, out_of_memory_line
from llmbench.engines.registry import llama_cpp_programs
from llmbench.modelfiles.models import (
    OTHER_FILE_FIX,
    UNSUPPORTED_GGUF_FORMAT,
    UNSUPPORTED_TENSOR_TYPE,
    CorruptModelError,
    ShardError,
    UnloadableModelError,
    check_gguf,
)

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
# A sound GGUF this llama.cpp does not load (llmbench.modelfiles.models.UnloadableModelError carries them): a ggml type it
# removed or does not know; a GGUF version or byte order it does not read.
GPU_LOST = "gpu_lost"  # the GPU fell off the bus mid-job (NVML: GPU is lost; Xid 79): llmbench.devices.meters
# A tool run or a request stopped at its wall-clock limit (llmbench.core.logs.tool_limit, bench.request_timeout_s).
TIMED_OUT = "timed_out"
EXITED = "exited"

# Engines that run this workflow's own llama.cpp build: an illegal instruction there is fixed by rebuilding it. The
# registry's list (the tools whose records name a llama.cpp binary or libllama, and llama-quantize and
# llama-perplexity), so that a tool added there is diagnosed as one of the build's.
LLAMA_CPP_ENGINES = llama_cpp_programs()
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
VLLM_OOM_FIX = (
    "lower bench.ctx_size (vLLM's --max-model-len: the KV cache of one request that long must fit; vLLM's line "
    "says what would), serve fewer sequences at once (bench.concurrency or tools.vllm.concurrency: vLLM's "
    "--max-num-seqs), spread the model over more GPUs (tools.vllm.gpus: --tensor-parallel-size), or use a smaller "
    "quant; vLLM takes gpu_memory_utilization (0.9 unless tools.vllm.gpu_memory_utilization says) of each GPU's "
    "memory, so other processes on the GPU leave less"
)
OLLAMA_OOM_FIX = ("lower the layers Ollama offloads (tools.ollama.num_gpu, llama.cpp's n_gpu_layers) or "
                  "bench.ctx_size in the config")
OTHER_OOM_FIX = "use a smaller quant or model, a smaller bench.ctx_size, or more GPUs (the tool's gpus) in the config"
CONTEXT_FIX = "raise bench.ctx_size, or lower the prompt's max_tokens or its length"

_GPU_OOM_EXTRA = (
    re.compile(r"requires more (?:gpu|vram|video) memory", re.I),
    re.compile(r"torch\.(?:cuda\.)?OutOfMemoryError|CUDA out of memory", re.I),
    re.compile(r"No available memory for the cache blocks|insufficient (?:GPU|KV cache) memory", re.I),
    # vLLM V1: the KV cache of one max_model_len request does not fit what the weights left (vllm #17618).
    re.compile(r"KV cache is needed, which is larger than the available KV cache memory", re.I),
    # vLLM V0's wording of the same (worker/worker.py, raise_if_cache_size_invalid).
    re.compile(r"larger than the maximum number of tokens that can be stored in KV cache", re.I),
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
    # vLLM's model registry and its GGUF loader.
    re.compile(r"Model architectures \[['\"]([\w.-]+)['\"][^\]]*\] (?:are|is) not supported"),
    re.compile(r"GGUF model with architecture ['\"]?([\w.-]+)['\"]? is not supported", re.I),
)
# A sound file's tensor type the loader does not know (ggml/src/gguf.cpp: a type ggml.c marks "TYPE_… REMOVED, use
# … with runtime repacking", llama.cpp PR #10446, or one past GGML_TYPE_COUNT, "invalid ggml type").
_REMOVED_TYPE = re.compile(r"of type (\d+)\W+TYPE_(\w+) REMOVED, use (\w+) with runtime repacking")
_INVALID_TYPE = re.compile(r"invalid ggml type (\d+)|unknown (?:ggml|tensor) type (\d+)", re.I)
# A GGUF version or byte order the loader does not read (ggml/src/gguf.cpp).
_GGUF_FORMAT = (
    re.compile(r"mismatch between the host and model endianness"),
    re.compile(r"GGUFv1 is no longer supported"),
    re.compile(r"this GGUF file is version (\d+) but this software only supports up to version \d+"),
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
# A logger's prefix before a line's own words: vLLM's "(EngineCore_DP0 pid=494) ERROR 05-20 00:55:13 [core.py:1100] ",
# llama.cpp's timestamped "0.00.203.760 E ".
_PREFIX = re.compile(r"^\s*(?:\([\w.-]+ pid=\d+\)\s*)?"
                     r"(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s*)?"
                     r"(?:\d+\.\d\d\.\d\d\d\.\d\d\d [DIWE] )?")
# Lines that name why: a Python exception ("ValueError: …", "torch.OutOfMemoryError: …"), llama.cpp's loader,
# Ollama's runner, a C++ exception's what(), a tool's "error: …".
_CAUSE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)\b:\s*\S|error loading model:\s*\S|"
                    r"llama runner process has terminated:\s*\S|\bwhat\(\):\s*\S|\berror:\s*\S|GGML_ASSERT\(", re.I)
# Lines that only say that it failed, and where to look: quoted only when nothing names the cause ...
_CONSEQUENCE = re.compile(r"failed to load model\b[^:]*$|process has terminated: exit status|failed to read tensor info|"
                          r"EngineCore failed to start|Traceback \(most recent call last\)", re.I)
# ... and never, since they point elsewhere (vLLM's API server after its engine core died).
_POINTER = re.compile(r"See root cause above|Engine core initialization failed", re.I)


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
                return m, own_words(line)
    return None


def own_words(line: str) -> str:
    """A log line without its logger's prefix (vLLM's process, level, time and source; llama.cpp's timestamp)."""
    return _PREFIX.sub("", line, count=1).strip()


def root_cause(text: str) -> str | None:
    """The line of an engine's log that says why it failed, in its own words: the first exception or error line
    that names a cause (a Python exception, llama.cpp's "error loading model: …", Ollama's runner error, "error:
    …"), since the lines after it only report that it failed ("failed to load model", vLLM's "See root cause
    above"). None where no line names one."""
    for line in map(own_words, text.splitlines()):
        if _CAUSE.search(line) and not _CONSEQUENCE.search(line) and not _POINTER.search(line):
            return line
    return None


def _reason_line(text: str) -> str | None:
    """The line a reason quotes: the root cause, else the last line that reads like an error; never a line that
    only points at another ("See root cause above")."""
    if (cause := root_cause(text)) is not None:
        return cause
    lines = [own_words(line) for line in text.splitlines() if _ERRORISH.search(line) and not _POINTER.search(line)]
    return lines[-1] if lines else None


def _file_check(model: Path | None) -> tuple[str, str] | None:
    """The GGUF check's finding as (kind, its message) where it proves the file damaged (CORRUPT_FILE) or sound
    but not loadable by llama.cpp (the UnloadableModelError's kind); None for a sound file, a split GGUF given
    wrongly (the lone-shard kind says it) or none given."""
    if model is None or not Path(model).is_file():
        return None

    try:
        check_gguf(model)
    except UnloadableModelError as e:
        return e.kind, str(e)
    except ShardError:
        return None
    except CorruptModelError as e:
        return CORRUPT_FILE, str(e)
    except Exception:  # an unreadable file (permissions, I/O): not proof of damage
        return None
    return None


def _oom_fix(engine: str) -> str:
    """The fix of an out-of-GPU-memory failure in the settings this engine takes."""
    name = engine.lower()
    if "vllm" in name:
        return VLLM_OOM_FIX
    if "ollama" in name:
        return OLLAMA_OOM_FIX
    if engine in LLAMA_CPP_ENGINES or "llama" in name:
        return OOM_FIX
    return OTHER_OOM_FIX


def _arch_fix(engine: str) -> str:
    """The fix of an architecture the engine does not know, in its own terms."""
    name = engine.lower()
    if "vllm" in name:
        return ("install a vLLM release that supports it (GGUF needs vllm-gguf-plugin in newer releases), or "
                "run this model with another tool")
    if "ollama" in name:
        return "install a newer Ollama (its own llama.cpp must know the architecture), or another tool"
    return ARCH_FIX


def _unloadable(engine: str, found: tuple[re.Match, str], model: Path | None, kind: str,
                sig: signal.Signals | None) -> Diagnosis:
    """A loader that refused a tensor type or GGUF format: the file check's own words where it has the file (it
    also tells a damaged file, the one case for fetching again), else the engine's line with the fix."""
    checked = _file_check(model)
    if checked is not None:
        return Diagnosis(checked[0], f"{engine} refused the model file (it logged {found[1]!r}): {checked[1]}",
                         found[1], _name(sig))

    m = found[0]
    if kind == UNSUPPORTED_TENSOR_TYPE and m.re is _REMOVED_TYPE:
        fix = (f"use the repo's {m.group(3)} file instead (llama.cpp repacks {m.group(3)} at load; llama.cpp PR "
               f"#10446 removed type {m.group(1)}, {m.group(2)})")
    else:
        fix = OTHER_FILE_FIX
    what = "a tensor type" if kind == UNSUPPORTED_TENSOR_TYPE else "a GGUF version or byte order"
    return Diagnosis(kind, f"{engine} does not load {what} of this model file (it logged {found[1]!r}); the file is "
                     f"not damaged, do not delete it or fetch it again: {fix}", found[1], _name(sig))


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
        line = own_words(line)
        return Diagnosis(GPU_OOM, f"out of memory: {at} logged {line!r}; {_oom_fix(engine)}", line, _name(sig))
    if found := _first(_GPU_OOM_EXTRA, log_text):
        return Diagnosis(GPU_OOM, f"out of GPU memory: {at} logged {found[1]!r}; {_oom_fix(engine)}", found[1],
                         _name(sig))
    if found := _first(_HOST_OOM, log_text):
        return Diagnosis(HOST_OOM, f"out of host memory: {at} logged {found[1]!r}; {HOST_OOM_FIX}", found[1],
                         _name(sig))
    if found := _first((_REMOVED_TYPE, _INVALID_TYPE), log_text):
        return _unloadable(engine, found, model, UNSUPPORTED_TENSOR_TYPE, sig)
    if found := _first(_GGUF_FORMAT, log_text):
        return _unloadable(engine, found, model, UNSUPPORTED_GGUF_FORMAT, sig)
    if found := _first(_UNKNOWN_ARCH, log_text):
        arch = found[0].group(1)
        return Diagnosis(UNKNOWN_ARCHITECTURE, f"this {engine} build does not know architecture {arch!r} (it logged "
                         f"{found[1]!r}); the model file is not at fault: {_arch_fix(engine)}", found[1], _name(sig))
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
    line = _reason_line(log_text)
    if _MODEL_LOAD.search(log_text):
        checked = _file_check(model)
        if checked and checked[0] == CORRUPT_FILE:
            return Diagnosis(CORRUPT_FILE, f"the GGUF check proves the model file damaged: {checked[1]}", checked[1],
                             _name(sig))
        if checked:  # sound, of a type or format llama.cpp does not load: the check's words carry the fix
            return Diagnosis(checked[0], f"{engine} could not load the model (it logged {line!r}): {checked[1]}",
                             line, _name(sig))
        sound = (f"; the GGUF check finds {Path(model).name} sound (magic, version, tensor data inside the file), "
                 "so do not delete it" if model is not None and Path(model).is_file() else "")
        return Diagnosis(EXITED, f"{engine} could not load the model" + (f" ({how})" if how else "") + sound
                         + f": it logged {line!r}; see the engine log", line, _name(sig))
    return Diagnosis(EXITED, f"{engine} " + (how.replace("exit code", "exited with code") if how else "failed")
                     + (f": {line!r}" if line else "") + "; see the engine log", line, _name(sig))


def timed_out(subject: str, limit_s: float, source: str, key: str, log_path: str | Path | None) -> Diagnosis:
    """A run or request stopped at its wall-clock limit (kind TIMED_OUT): ``subject`` says what was stopped
    ("llama-bench was killed"), ``limit_s`` the limit [s], ``source`` where it came from (derived, or the config
    key), ``key`` the config key that raises it; the reason names the engine log to read."""
    return Diagnosis(TIMED_OUT, f"{subject}: it did not finish within its limit of {limit_s:g} s ({source}), so it "
                     f"hung or ran far slower than expected; see the engine log {log_path} for where it stopped, "
                     f"and if the run was healthy but slow, raise {key} in the config")


def _name(sig: signal.Signals | None) -> str | None:
    return sig.name if sig else None
