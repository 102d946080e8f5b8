"""Whether this machine lets a program use AMX, asked before the first llama.cpp build rather than after it.

A CPU can list ``amx_tile``/``amx_int8``/``amx_bf16`` in /proc/cpuinfo while the kernel or the hypervisor does not let
programs use the tile data (a VM whose XCR0 leaves XTILEDATA off, a kernel before 5.16): ``-march=native`` then
compiles ggml's AMX kernels in, and every tool dies by SIGILL at its first matrix product on a worker thread
(UPSTREAM["amx"] in :mod:`llmbench.toolchain.build`: the pinned llama.cpp requests the permission on the main thread only).
The smoke test (:mod:`llmbench.toolchain.build_smoke`) catches that, but only after a whole native build, and the rebuild
without AMX costs a second one.

So a tiny C program, built by the compiler the build will use, does what ggml does, in the kernel's words
(Documentation/arch/x86/xstate.rst): ``arch_prctl(ARCH_GET_XCOMP_SUPP)`` (which extended features the kernel offers
programs; XTILEDATA is bit 18), ``arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`` on the main thread, then tile
instructions (ldtilecfg, tilezero, tilerelease) in a worker thread, as llama.cpp's compute threads run them. It prints
one line per step, with unbuffered output so that the lines before a fatal signal reach us. Where any step fails, the
first build already leaves AMX out; the smoke test stays the safety net for a CPU that passes the probe and still
faults.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FEATURE = "amx"
XTILEDATA_BIT = 18
COMPILE_TIMEOUT_S = 60.0  # a compiler on a machine another build keeps busy
RUN_TIMEOUT_S = 5.0  # the probe takes milliseconds; a hang must not hold the build
COMPILE_FLAGS = ("-O1", "-mamx-tile", "-pthread")

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* From the kernel's arch/x86/include/uapi/asm/prctl.h and Documentation/arch/x86/xstate.rst: libc headers may
   predate them. */
#define ARCH_GET_XCOMP_SUPP 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Palette 1 as the Intel SDM lays out the 64-byte tile configuration; one tile of 16 rows x 64 bytes. */
struct tile_config {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* The tile instructions run where llama.cpp runs them, on a thread other than the one that asked permission. */
static void *tile_worker(void *unused) {
    static struct tile_config cfg __attribute__((aligned(64)));
    (void)unused;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    cfg.colsb[0] = 64;
    cfg.rows[0] = 16;
    printf("tile_worker start\n");
    _tile_loadconfig(&cfg);
    printf("tile_worker ldtilecfg ok\n");
    _tile_zero(0);
    printf("tile_worker tilezero ok\n");
    _tile_release();
    printf("tile_worker ok\n");
    return NULL;
}

int main(void) {
    unsigned long mask = 0;
    pthread_t worker;
    int err;
    /* Unbuffered: the lines printed before a SIGILL are the evidence. */
    setvbuf(stdout, NULL, _IONBF, 0);
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_SUPP, &mask) == 0)
        printf("xcomp_supp 0x%lx\n", mask);
    else
        printf("xcomp_supp errno %d (%s)\n", errno, strerror(errno));
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0)
        printf("req_xcomp_perm ok\n");
    else
        printf("req_xcomp_perm errno %d (%s)\n", errno, strerror(errno));
    /* Run the worker even after a refusal: ggml goes on too, and its fault is what the verdict must foresee. */
    err = pthread_create(&worker, NULL, tile_worker, NULL);
    if (err != 0) {
        printf("worker_create errno %d (%s)\n", err, strerror(err));
        return 3;
    }
    pthread_join(worker, NULL);
    printf("done\n");
    return 0;
}
"""

# Where the worker got to, by the last line it printed: the instruction it died at is the next one.
_WORKER_STEPS = (
    ("tile_worker ok", "after its tile instructions"),
    ("tile_worker tilezero ok", "at tilerelease"),
    ("tile_worker ldtilecfg ok", "at its first tile-data instruction (tilezero)"),
    ("tile_worker start", "at its first tile instruction (ldtilecfg)"),
)


@dataclass(frozen=True)
class ProbeVerdict:
    """What the probe says of ``feature``: ``usable``, ``reason`` in plain words, ``evidence`` (the probe's lines).

    ``probed`` is False where the probe did not run (the CPU does not list the feature, the compiler cannot build the
    probe, the build does not need it): nothing is then turned off, and the smoke test decides as before.
    """

    usable: bool
    reason: str
    evidence: tuple[str, ...] = ()
    feature: str = FEATURE
    probed: bool = True

    @property
    def exclude(self) -> bool:
        """Whether the first build leaves the feature out: only where the probe ran and saw it fail."""
        return self.probed and not self.usable

    def record(self) -> dict:
        return {**asdict(self), "evidence": list(self.evidence), "exclude": self.exclude}


def not_probed(reason: str) -> ProbeVerdict:
    return ProbeVerdict(False, f"not probed: {reason}", probed=False)


def _errno_words(rest: str) -> str:
    """``errno 95 (Operation not supported)`` → ``errno 95 (EOPNOTSUPP)``: the name is what the kernel docs use."""
    parts = rest.split()
    try:
        number = int(parts[1])
    except (IndexError, ValueError):
        return rest
    # Linux gives 95 two names; the kernel's code and docs say EOPNOTSUPP.
    name = "EOPNOTSUPP" if number == errno.EOPNOTSUPP else errno.errorcode.get(number, "?")
    return f"errno {number} ({name})"


def _step(lines: tuple[str, ...], key: str) -> str | None:
    """What the probe printed after ``key`` (the first such line), or None where it printed no such line."""
    for line in lines:
        if line == key or line.startswith(key + " "):
            return line[len(key):].strip()
    return None


def parse_probe(stdout: str, returncode: int | None, timed_out_after_s: float | None = None) -> ProbeVerdict:
    """The verdict on one run of the probe: its stdout and return code (negative: the signal that ended it, as
    :mod:`subprocess` reports it), or ``timed_out_after_s`` where it was stopped. Every failed step is named, the
    first cause first."""
    lines = tuple(line.strip() for line in stdout.splitlines() if line.strip())
    causes = []
    supp = _step(lines, "xcomp_supp")
    if supp is None:
        causes.append("the probe printed no ARCH_GET_XCOMP_SUPP answer")
    elif supp.startswith("errno"):
        causes.append(f"the kernel does not answer ARCH_GET_XCOMP_SUPP ({_errno_words(supp)}): kernels before 5.16 "
                      f"cannot give programs AMX tile data")
    else:
        try:
            mask = int(supp, 16)
        except ValueError:
            mask = None
        if mask is None:
            causes.append(f"the probe's ARCH_GET_XCOMP_SUPP answer {supp!r} is not a number")
        elif not mask >> XTILEDATA_BIT & 1:
            causes.append(f"the kernel does not offer AMX tile data to programs (ARCH_GET_XCOMP_SUPP {supp} lacks "
                          f"XTILEDATA, bit {XTILEDATA_BIT}): the hypervisor or the kernel does not enable it")
    perm = _step(lines, "req_xcomp_perm")
    if perm is None:
        causes.append("the probe printed no ARCH_REQ_XCOMP_PERM answer")
    elif perm != "ok":
        causes.append(f"ARCH_REQ_XCOMP_PERM refused: {_errno_words(perm)}")
    where = next((at for step, at in _WORKER_STEPS if step in lines), None)
    if timed_out_after_s is not None:
        causes.append(f"the probe did not finish within {timed_out_after_s:g} s (its last line: "
                      f"{lines[-1] if lines else 'none'!r})")
    elif returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if where is None:
            causes.append(f"the probe died by {name} before its worker thread ran a tile instruction")
        else:
            after = ", though the main thread's ARCH_REQ_XCOMP_PERM succeeded" if perm == "ok" else ""
            causes.append(f"a worker thread died by {name} {where}{after}")
    elif returncode != 0:
        created = _step(lines, "worker_create")
        causes.append(f"the probe exited with code {returncode}"
                      + (f": its worker thread was not created ({_errno_words(created)})" if created else ""))
    elif "tile_worker ok" not in lines:
        causes.append("the probe ended without its worker's tile_worker ok line")
    if causes:
        return ProbeVerdict(False, "; ".join(causes), lines)
    return ProbeVerdict(True, f"AMX tile instructions ran on a worker thread after the main thread's "
                              f"ARCH_REQ_XCOMP_PERM (ARCH_GET_XCOMP_SUPP {supp}, XTILEDATA offered)", lines)


# The /proc/cpuinfo flags that say a CPU has AMX (llmbench.toolchain.build.CPU_FEATURES names them for its flags too).
AMX_CPUINFO_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as the kernel lists them (x86: the 'flags' line; ARM: 'Features'); empty if unread."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def amx_flags(flags: set[str]) -> list[str]:
    return sorted(set(AMX_CPUINFO_FLAGS) & set(flags))


def _first_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in lines if "error" in line.lower()), lines[0] if lines else "no message")


def verdict_of(run: dict) -> ProbeVerdict:
    """The verdict on a probe run as :func:`probe_amx` records it (as tests/data/cpu_probe/ keeps them, or as
    build.json's ``cpu_probe`` keeps it, its ``lines`` for the output): the CPU's AMX flags, the compile's outcome,
    the probe's output."""
    if not run.get("cpu_flags"):
        return not_probed(f"this CPU does not list AMX ({', '.join(AMX_CPUINFO_FLAGS)}) in /proc/cpuinfo, "
                          f"so the native build has none to leave out")
    if run.get("compile_returncode") != 0:
        return not_probed(f"{run.get('compiler') or 'the C compiler'} cannot build the probe: "
                          f"{_first_error_line(run.get('compile_stderr') or '')}")
    stdout = run["stdout"] if run.get("stdout") is not None else "\n".join(run.get("lines") or ())  # build.json's
    return parse_probe(stdout, run.get("returncode"), run.get("timed_out_after_s"))


def compiler() -> list[str]:
    """The C compiler the build's CMake will take: ``$CC`` (with any arguments in it, as CMake takes them), else
    ``cc``. The probe is built by it so that what it can compile is what -march=native can compile."""
    return shlex.split(os.environ.get("CC", "")) or ["cc"]


def _version(cc: list[str]) -> str | None:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if lines else None


def probe_amx(flags: set[str], cc: list[str] | None = None) -> tuple[dict, ProbeVerdict]:
    """Compile and run the probe where the CPU lists AMX; return the run's record (for build.json) and the verdict.

    A missing compiler, a failed compile, a crash or a hang of the probe are each a verdict, not an exception.
    """
    run = {"feature": FEATURE, "cpu_flags": amx_flags(flags), "compiler": None, "compiler_path": None,
           "compiler_version": None, "compile_command": None, "compile_returncode": None, "compile_stderr": None,
           "stdout": None, "returncode": None, "timed_out_after_s": None, "seconds": None}
    if not run["cpu_flags"]:
        return run, verdict_of(run)
    cc = cc or compiler()
    run.update(compiler=shlex.join(cc), compiler_path=shutil.which(cc[0]), compiler_version=_version(cc))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmbench-cpu-probe-") as tmp:
        source, exe = Path(tmp) / "amx_probe.c", Path(tmp) / "amx_probe"
        source.write_text(PROBE_C)
        command = [*cc, *COMPILE_FLAGS, "-o", exe.name, source.name]  # relative: the record names no temp dir
        run["compile_command"] = command
        try:
            built = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, cwd=tmp)
            run.update(compile_returncode=built.returncode, compile_stderr=built.stderr[-4000:])
        except OSError as e:
            run.update(compile_returncode=127, compile_stderr=f"error: {e}")
        except subprocess.TimeoutExpired:
            run.update(compile_returncode=124, compile_stderr=f"error: did not finish within {COMPILE_TIMEOUT_S:g} s")
        if run["compile_returncode"] == 0:
            try:
                ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
                run.update(stdout=ran.stdout, returncode=ran.returncode)
            except subprocess.TimeoutExpired as e:
                out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                run.update(stdout=out, timed_out_after_s=RUN_TIMEOUT_S)
    run["seconds"] = round(time.monotonic() - t0, 3)
    return run, verdict_of(run)


if __name__ == "__main__":  # for a look at a machine by hand: PYTHONPATH=workflow/scripts python3 -m llmbench.toolchain.cpu_probe
    import json

    found, verdict = probe_amx(cpu_flags())
    print(json.dumps({**found, "verdict": verdict.record()}, indent=2))
