"""A llama.cpp build proven on this machine before any job uses it: each built tool runs a few tokens of a tiny model.

A build compiled with ``-march=native`` can still die on the machine that compiled it: on Intel Xeons with AMX
(Sapphire, Emerald, Granite Rapids, and the cloud VMs on them) the pinned llama.cpp requests the AMX tile-data
permission on its main thread only (upstream llama.cpp PR #26954, open), so every tool faults at its first matrix
product on a worker thread. Where the kernel refuses AMX, the probe before the first build (:mod:`llmbench.toolchain.cpu_probe`)
has already left it out; this test stays the safety net for a CPU that passes the probe and still faults, and for
every other fault. The smoke test runs what the study runs — llama-quantize, llama-bench,
llama-batched-bench, llama-perplexity, llama-server and llama-cpp-python on the same libllama — with several
threads, on a synthetic ``llama-tiny`` Q4_0
model (a few MB, written here, no download), and says for each tool whether it ran and, if not, how it ended (the
signal, the kernel's words where readable). It takes a few seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llmbench.core.logs import run_logged
from llmbench.engines.diagnosis import diagnose, signal_of

SMOKE_SHAPE, SMOKE_QUANT, SMOKE_SEED = "llama-tiny", "Q4_0", 0
# Enough tokens for two perplexity chunks of 64 tokens, whatever the tiny vocabulary merges.
SMOKE_TEXT = ("The quick brown fox jumps over the lazy dog while the build is checked on this machine. " * 24).strip()
# A prompt of about 160 tokens: its prefill runs batched matrix products, as a bench job's prompts do.
SMOKE_PROMPT = SMOKE_TEXT[:160]
TIMEOUT_S = 120.0
SCRIPTS_DIR = Path(__file__).resolve().parents[2]

# Run in a process of its own, as a bench job runs the binding: a crash must not take the build job with it.
_BINDING_CHECK = """
import sys
from pathlib import Path
from llmbench.engines.base import ToolUnavailable
from llmbench.engines.llama_cpp_python import LlamaCppPython
try:
    engine = LlamaCppPython(Path(sys.argv[1]), Path(sys.argv[2]), threads=int(sys.argv[3]), ctx_size=512)
    with engine:
        g = engine.generate(sys.argv[4], 4, 0.0, 1)
except ToolUnavailable as e:
    print("not installed:", e)
    sys.exit(3)
print("generated", g.generated_tokens, "tokens")
"""


@dataclass(frozen=True)
class SmokeResult:
    """One tool's run: ``ok``; else ``signal`` (e.g. 'SIGILL') or ``returncode``, and ``reason`` (the diagnosis)."""

    tool: str
    ok: bool
    command: str
    seconds: float
    returncode: int | None = None
    signal: str | None = None
    reason: str | None = None
    kernel_log: str | None = None
    log: str | None = None

    def record(self) -> dict:
        return asdict(self)


def smoke_model(workdir: Path) -> Path:
    """The tiny model every tool runs, written once per build directory (same seed, same bytes)."""
    from llmbench.modelfiles.synthetic import write_synthetic_gguf

    path = workdir / f"{SMOKE_SHAPE}-{SMOKE_QUANT}.gguf"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        write_synthetic_gguf(part, SMOKE_SHAPE, SMOKE_QUANT, SMOKE_SEED, "llmbench build smoke test")
        part.rename(path)
    return path


def kernel_words(tool: str, pid: int | None = None) -> str | None:
    """The kernel's own line about a trapped process (``traps: NAME[PID] trap invalid opcode … in lib…``), of that
    pid where known, where the kernel log is readable (dmesg needs CAP_SYSLOG or kernel.dmesg_restrict=0); None
    where it is not, or says nothing."""
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    name = re.escape(Path(tool).name[:15])  # the kernel's comm is 15 characters at most
    number = str(pid) if pid is not None else r"\d+"
    who = rf"{name}\[{number}\]"
    lines = [ln.strip() for ln in out.stdout.splitlines()
             if re.search(who, ln) and re.search(r"trap|segfault|general protection", ln)]
    return lines[-1] if lines else None


def _run(tool: str, cmd: list[str], log: Path, env: dict | None = None, check=None) -> SmokeResult:
    t0 = time.monotonic()
    run = run_logged(cmd, log, capture_stdout=True, stdout_heading="", env=env, timeout_s=TIMEOUT_S)
    seconds = time.monotonic() - t0
    if run.timed_out:
        return SmokeResult(tool, False, " ".join(cmd), seconds,
                           reason=f"{tool} did not finish within {TIMEOUT_S:.0f} s", log=str(log))
    problem = None if run.returncode != 0 else (check(run.stdout, run.output) if check else None)
    if run.returncode == 0 and problem is None:
        return SmokeResult(tool, True, " ".join(cmd), seconds, 0, log=str(log))
    sig = signal_of(run.returncode)
    reason = problem or diagnose(tool, run.returncode, run.output).reason
    return SmokeResult(tool, False, " ".join(cmd), seconds, run.returncode, sig.name if sig else None, reason,
                       kernel_words(cmd[0], run.pid) if sig else None, str(log))


def _server(binary: Path, model: Path, threads: int, log: Path) -> SmokeResult:
    """llama-server started as a bench job starts it, asked for a few tokens, stopped."""
    from llmbench.engines.base import EngineError, EngineFailed
    from llmbench.engines.llama_server import LlamaServer, LlamaServerSettings

    settings = LlamaServerSettings(binary=binary, model=model, threads=threads, ctx_size=512, start_timeout_s=60,
                                   request_timeout_s=60)
    log.unlink(missing_ok=True)
    t0 = time.monotonic()
    try:
        with LlamaServer(settings, log) as server:
            server.generate(SMOKE_PROMPT, 4, 0.0, 1)
    except EngineError as e:
        d = e.diagnosis if isinstance(e, EngineFailed) else diagnose("llama-server", None, str(e))
        return SmokeResult("llama-server", False, f"{binary} (started as a bench job starts it)",
                           time.monotonic() - t0, None, d.signal, d.reason,
                           kernel_words(str(binary)) if d.signal else None, str(log))
    return SmokeResult("llama-server", True, f"{binary} (started as a bench job starts it)", time.monotonic() - t0,
                       log=str(log))


def _json_line(stdout: str, _log: str) -> str | None:
    return None if '"avg_ts"' in stdout else "llama-bench printed no result line"


def _batch_line(stdout: str, _log: str) -> str | None:
    return None if '"speed_tg"' in stdout else "llama-batched-bench printed no result line"


def smoke_test(bin_dir: Path, workdir: Path, threads: int, python: str = sys.executable) -> list[SmokeResult]:
    """Run each built tool of ``bin_dir`` (smoke_tools: the registry's) on the tiny model with ``threads`` threads
    (at least 2: the AMX fault is on worker threads); the results in that order, every tool run even after one
    failed."""
    bin_dir, workdir = Path(bin_dir), Path(workdir)  # as given (relative to the study): build.json is shared
    workdir.mkdir(parents=True, exist_ok=True)
    model = smoke_model(workdir)
    threads = str(max(2, threads))
    corpus = workdir / "smoke-text.txt"
    corpus.write_text(SMOKE_TEXT + "\n")

    def binding() -> SmokeResult:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS_DIR), os.environ.get("PYTHONPATH", "")])}
        run = _run("llama-cpp-python", [python, "-c", _BINDING_CHECK, str(model), str(bin_dir), threads,
                                        SMOKE_PROMPT], workdir / "llama-cpp-python.log", env=env)
        if run.returncode == 3:  # the binding is not installed here: nothing of this build to prove
            return SmokeResult("llama-cpp-python", True, run.command, run.seconds, 3,
                               reason="not checked: llama-cpp-python is not installed in this environment", log=run.log)
        return run

    checks = {
        "llama-quantize": lambda: _run(
            "llama-quantize", [str(bin_dir / "llama-quantize"), "--allow-requantize", str(model),
                               str(workdir / "requantized-Q8_0.gguf"), "Q8_0", threads], workdir / "quantize.log"),
        # A prefill of 64 tokens: batched matrix products, where ggml takes its AMX (and other batched) kernels.
        "llama-bench": lambda: _run(
            "llama-bench", [str(bin_dir / "llama-bench"), "-m", str(model), "-p", "64", "-n", "8", "-r", "1",
                            "-t", threads, "-o", "jsonl"], workdir / "bench.log", check=_json_line),
        # Two sequences in one batch: the batched decode the load axis's reference runs. Eight tests: llama.cpp's
        # log prints from a thread never flushed at exit (llmbench.engines.batched_bench), and a run of a few milliseconds
        # can end before it printed anything (2 tests: 4 runs of 20 printed nothing here; 8 tests: none of 50).
        "llama-batched-bench": lambda: _run(
            "llama-batched-bench", [str(bin_dir / "llama-batched-bench"), "-m", str(model), "-c", "512", "-npp", "32",
                                    "-ntg", "8", "-npl", ",".join(["2"] * 8), "-t", threads, "--output-format",
                                    "jsonl"], workdir / "batched-bench.log", check=_batch_line),
        "llama-perplexity": lambda: _run(
            "llama-perplexity", [str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(corpus), "-c", "64",
                                 "-b", "64", "--chunks", "2", "-t", threads], workdir / "perplexity.log"),
        "llama-server": lambda: _server(bin_dir / "llama-server", model, int(threads), workdir / "server.log"),
        "llama-cpp-python": binding,  # libllama, loaded in-process: run in a process of its own
    }
    return [checks[t]() if t in checks else _no_check(t, bin_dir) for t in smoke_tools()]


def smoke_tools() -> tuple[str, ...]:
    """What the smoke test runs, from the registry: every binary the build makes (as llmbench.toolchain.build.TOOLS), then
    the tools that load its libllama in-process (llama-cpp-python)."""
    from llmbench.engines.registry import LIBLLAMA, TOOLS, llama_cpp_binaries

    return (*llama_cpp_binaries(), *(name for name, t in TOOLS.items() if LIBLLAMA in t.llama_cpp))


def _no_check(tool: str, bin_dir: Path) -> SmokeResult:
    """A llama.cpp tool the registry names that the smoke test has no run of: the build fails saying so, rather than
    a job finding out that the tool cannot run on this machine."""
    return SmokeResult(tool, False, str(bin_dir / tool), 0.0,
                       reason=f"the build's smoke test has no run of {tool} (registered in llmbench/engines/registry.py):"
                              " add one to llmbench/toolchain/build_smoke.py, as every llama.cpp tool is proven before a job "
                              "uses it")


def first_crash(results: list[SmokeResult]) -> SmokeResult | None:
    """The first tool that a signal ended (SIGILL, SIGSEGV, SIGBUS: an instruction or code path this CPU cannot
    run), or None. Other failures are not the CPU's: they fail the build with their diagnosis."""
    for r in results:
        if not r.ok and r.signal in ("SIGILL", "SIGSEGV", "SIGBUS"):
            return r
    return None
