"""llama.cpp built from the source vendored in the llama-cpp-python sdist, proven on this machine, and recorded.

The first build is native (``-march=native``), as llama.cpp's own docs build it. Before it, where the CPU lists
AMX, a tiny probe (:mod:`llmbench.toolchain.cpu_probe`) asks the kernel for the tile-data permission and runs tile instructions
on a worker thread, as ggml does; where that fails, the first build already leaves AMX out (a VM that lists AMX but
does not enable it would otherwise cost a second whole build). Before any job uses the build, every
built tool runs a few tokens (:mod:`llmbench.toolchain.build_smoke`); where one dies by a signal, the build is redone
without the instruction-set extension at fault (AMX first, where the CPU has it: upstream llama.cpp PR #26954), and
if that still fails, as a portable build with ggml's runtime CPU dispatch (``GGML_BACKEND_DL=ON
GGML_CPU_ALL_VARIANTS=ON``, as llama.cpp's release binaries are built). build.json says what was turned off and
why (``cpu_probe``: before the first build; ``cpu_features_turned_off``: after a build died). Where the native
build runs, nothing more happens: one build.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmbench.core.logs import run_logged
from llmbench.engines.registry import llama_cpp_binaries
from llmbench.toolchain.cpu_probe import AMX_CPUINFO_FLAGS, FEATURE, cpu_flags, not_probed, probe_amx
from llmbench.toolchain.source_archive import trim_manifest

# The binaries built (cmake targets, build.json's tools): the bench tools' of the registry, then its
# QUALITY_BINARIES (llama-quantize, llama-perplexity), so that a llama.cpp tool registered there is built.
TOOLS = llama_cpp_binaries()

# x86-64 extensions a build can leave out, with the GCC/Clang flags that turn each off (an explicit -mno-…
# wins over -march=native whatever the order) and the /proc/cpuinfo flags that say a CPU has it.
CPU_FEATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "amx": (("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"), AMX_CPUINFO_FLAGS),
    "avx512": (("-mno-avx512f",), ("avx512f",)),
    "avx_vnni": (("-mno-avxvnni",), ("avx_vnni",)),
}
CPU_BUILDS = ("native", "portable")
UPSTREAM = {
    "amx": "llama.cpp PR #26954 (open): the AMX tile-data permission (arch_prctl ARCH_REQ_XCOMP_PERM) is requested "
           "on the main thread only, so worker threads fault at the first AMX tile instruction",
}


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class CpuTarget:
    """What the CPU code is compiled for: ``native`` (-march=native) or ``portable`` (every x86/ARM variant,
    chosen at run time), less the extensions in ``exclude`` (keys of CPU_FEATURES)."""

    build: str = "native"
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if self.build not in CPU_BUILDS:
            raise BuildError(f"llama_cpp.cpu_build {self.build!r} is not one of {list(CPU_BUILDS)}")
        unknown = [f for f in self.exclude if f not in CPU_FEATURES]
        if unknown:
            raise BuildError(f"llama_cpp.exclude_cpu_features {unknown} unknown; known: {sorted(CPU_FEATURES)}")

    def cmake_args(self) -> list[str]:
        portable = self.build == "portable"
        flags = " ".join(flag for feature in self.exclude for flag in CPU_FEATURES[feature][0])
        return [
            f"-DGGML_NATIVE={'OFF' if portable else 'ON'}",
            f"-DGGML_BACKEND_DL={'ON' if portable else 'OFF'}",
            f"-DGGML_CPU_ALL_VARIANTS={'ON' if portable else 'OFF'}",
            f"-DCMAKE_C_FLAGS={flags}",
            f"-DCMAKE_CXX_FLAGS={flags}",
        ]

    def describe(self) -> str:
        return self.build + "".join(f" without {f}" for f in self.exclude)


@dataclass(frozen=True)
class BuildSpec:
    version: str
    cuda: bool
    cmake_args: tuple[str, ...] = field(default_factory=tuple)
    cpu_build: str = "native"
    exclude_cpu_features: tuple[str, ...] = ()

    @property
    def variant(self) -> str:
        """The build's cache key: a change of version, CUDA or CPU target builds anew beside the others."""
        cpu = ("-portable" if self.cpu_build == "portable" else "") + "".join(
            f"-no{f.replace('_', '')}" for f in sorted(self.exclude_cpu_features))
        return f"{self.version}-{'cuda' if self.cuda else 'cpu'}{cpu}"

    @property
    def cpu_target(self) -> CpuTarget:
        return CpuTarget(self.cpu_build, tuple(sorted(self.exclude_cpu_features)))


def cmake_configure_args(source: Path, build_dir: Path, spec: BuildSpec, target: CpuTarget | None = None) -> list[str]:
    args = [
        "cmake", "-S", str(source), "-B", str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DGGML_CUDA={'ON' if spec.cuda else 'OFF'}",
        *(target or spec.cpu_target).cmake_args(),
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        # The server's web UI would otherwise be fetched from the hub at build time.
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
        # The tools find their libraries beside them ($ORIGIN), by whatever path the build is reached (the
        # tests link it into each study's resources), not by the absolute path it was built under.
        "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
    ]
    if spec.cuda:
        args.append("-DCMAKE_CUDA_ARCHITECTURES=native")
    return args + list(spec.cmake_args)


def extract_sdist(sdist: Path, dest: Path) -> Path:
    """Unpack the sdist (its .git metadata included, so the build knows its commit); return llama.cpp's root."""
    marker = dest / ".extracted"
    if not marker.exists() or marker.read_text().strip() != sdist.name:  # another archive: unpack it afresh
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with tarfile.open(sdist) as tf:
            tf.extractall(dest, filter="tar")
        marker.write_text(sdist.name + "\n")
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1 or not (roots[0] / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        raise BuildError(f"{sdist.name} does not vendor llama.cpp under vendor/llama.cpp; is it a llama-cpp-python sdist?")
    return roots[0] / "vendor" / "llama.cpp"


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    lines = [line for line in out.splitlines() if line.strip()]
    return lines[-1] if cmd[0].endswith("nvcc") else (lines[0] if lines else None)


def git_commit(source: Path) -> str | None:
    """llama.cpp's commit: git's answer, else the one a trimmed archive's manifest names (a machine without git)."""
    trimmed = trim_manifest(source)
    return _first_line(["git", "-C", str(source), "rev-parse", "HEAD"]) or (trimmed or {}).get("commit")


def _build_step(cmd: list[str], log) -> None:
    """One CMake step with its output in the build log, ``log`` a file open in append mode."""
    log.flush()  # what the build wrote so far comes before the tool's output
    run = run_logged(cmd, log.name, append=True)
    if run.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:3])} … failed with exit {run.returncode}; see the log above")


def next_target(target: CpuTarget, crash, flags: set[str]) -> tuple[CpuTarget, dict] | None:
    """The build to try after ``crash`` (a smoke result whose tool a signal ended), with the record of what is
    turned off and why; None when the portable build failed too. AMX first where the CPU lists it (the known
    fault), then the portable build (ggml picks the CPU variant at run time)."""
    why = {"tool": crash.tool, "signal": crash.signal, "reason": crash.reason, "kernel_log": crash.kernel_log
           or "not readable here (dmesg needs CAP_SYSLOG)", "failed_build": target.describe()}
    if target.build == "native" and "amx" not in target.exclude and set(CPU_FEATURES["amx"][1]) & flags:
        turned_off = {"feature": "amx", "flags": list(CPU_FEATURES["amx"][0]), "why": why, "upstream": UPSTREAM["amx"]}
        return CpuTarget("native", tuple(sorted((*target.exclude, "amx")))), turned_off
    if target.build == "native":
        turned_off = {"feature": "-march=native", "flags": ["-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON",
                      "-DGGML_CPU_ALL_VARIANTS=ON"], "why": why, "upstream": None}
        return CpuTarget("portable", target.exclude), turned_off
    return None


def compile_llama_cpp(source: Path, build_dir: Path, spec: BuildSpec, target: CpuTarget, jobs: int, log) -> list[str]:
    """Configure and build the tools for ``target``; return the configure command.

    CMake is given the real paths: a build reached through a symlink (the tests link one build into each study)
    is then the same build whichever way it is reached; a cache made under another path is configured afresh.
    """
    source, build_dir = Path(source).resolve(), Path(build_dir).resolve()
    made_in = _cmake_cache(build_dir / "CMakeCache.txt").get("CMAKE_CACHEFILE_DIR")
    if made_in is not None and Path(made_in) != build_dir:
        log.write(f"the CMake cache was made in {made_in}: configuring {build_dir} afresh\n")
        (build_dir / "CMakeCache.txt").unlink()
        shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
    configure = cmake_configure_args(source, build_dir, spec, target)
    _build_step(configure, log)
    _build_step(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs), "--target", *TOOLS], log)
    return configure


def first_target(spec: BuildSpec, flags: set[str], log, probe=None) -> tuple[CpuTarget, dict]:
    """The CPU target of the first build, and build.json's ``cpu_probe`` record: the configured target, less AMX
    where the probe (``probe(flags)`` → (run record, verdict), default :func:`llmbench.toolchain.cpu_probe.probe_amx`) saw it
    fail on this machine.

    Only a native build is probed (a CUDA build's CPU code is native too): a portable build, or one configured
    without AMX already, has nothing for the probe to decide. The probe decides flags inside the build job, never
    the build's directory (BuildSpec.variant names what was configured), as the rebuild after a crash does.
    """
    target = spec.cpu_target
    if target.build != "native" or FEATURE in target.exclude:
        why = ("llama_cpp.exclude_cpu_features already leaves amx out" if FEATURE in target.exclude else
               "a portable build chooses its CPU variant at run time")
        return target, {"feature": FEATURE, "lines": [], "verdict": not_probed(why).record(), "turned_off": []}
    run, verdict = (probe or probe_amx)(flags)
    log.write(f"cpu probe ({FEATURE}): {verdict.reason}\n")
    turned_off = []
    if verdict.exclude:
        target = CpuTarget(target.build, tuple(sorted((*target.exclude, FEATURE))))
        turned_off.append({"feature": FEATURE, "flags": list(CPU_FEATURES[FEATURE][0]), "why": verdict.reason,
                           "upstream": UPSTREAM[FEATURE]})
        log.write(f"the first build leaves {FEATURE} out: {target.describe()}\n")
    record = {k: v for k, v in run.items() if k != "stdout"}  # its lines are the verdict's evidence
    return target, {**record, "lines": list(verdict.evidence), "verdict": verdict.record(), "turned_off": turned_off}


def build_llama_cpp(sdist: Path, source_dir: Path, build_dir: Path, spec: BuildSpec, jobs: int, log,
                    compile=compile_llama_cpp, smoke=None, flags: set[str] | None = None, probe=None) -> dict:
    """Build the tools, prove them on this machine (``smoke``, default :func:`llmbench.toolchain.build_smoke.smoke_test`),
    rebuild without the extension at fault while a tool dies by a signal; return the build record (commit, flags,
    compiler, CUDA, the CPU target, what the CPU probe (:func:`first_target`) and the smoke test turned off and why,
    each attempt's smoke results).

    Raises BuildError when the build fails, or when the portable build dies by a signal too; a tool that fails
    otherwise is recorded (``smoke_test``: ok false, its reason) and warned about, and the build stands.
    ``compile``/``smoke``/``probe`` are parameters so that tests can put stand-ins in.
    """
    from llmbench.toolchain.build_smoke import first_crash, smoke_test

    smoke = smoke or smoke_test
    if spec.cuda and shutil.which("nvcc") is None:
        raise BuildError("llama_cpp.cuda is 'on' but nvcc is not on PATH: install the CUDA toolkit or set cuda: off")
    flags = cpu_flags() if flags is None else flags
    if spec.exclude_cpu_features and platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        raise BuildError(f"llama_cpp.exclude_cpu_features {list(spec.exclude_cpu_features)} name x86-64 extensions, "
                         f"but this machine is {platform.machine()}: drop the key (or use cpu_build: portable)")
    source = extract_sdist(sdist, source_dir)
    if not source.parents[1].name.endswith(f"-{spec.version}"):  # a local llama_cpp.source_archive of another one
        raise BuildError(f"{sdist.name} holds {source.parents[1].name}, but llama_cpp.version is {spec.version}: "
                         f"set the version to the archive's, or give that version's archive")
    target, cpu_probe = first_target(spec, flags, log, probe)
    turned_off, attempts = [], []
    while True:
        configure = compile(source, build_dir, spec, target, jobs, log)
        results = smoke(build_dir / "bin", build_dir / "smoke" / f"attempt-{len(attempts) + 1}", jobs)
        attempts.append({"cpu_target": target.describe(), "smoke_test": [r.record() for r in results]})
        for r in results:
            log.write(f"smoke test ({target.describe()}): {r.tool}: {'ok' if r.ok else r.reason} ({r.seconds:.1f} s)\n")
        log.flush()
        crash = first_crash(results)
        if crash is None:
            # A tool that failed otherwise is not this CPU's doing: recorded (build.json, the log) and left to the
            # jobs that use it, whose failed rows will say what it is; the build stands.
            for r in results:
                if not r.ok:
                    log.write(f"warning: {r.tool} failed its smoke test without a signal: {r.reason} (log {r.log})\n")
            break
        step = next_target(target, crash, flags)
        if step is None:
            raise BuildError(f"every llama.cpp build tried dies on this CPU ({', '.join(a['cpu_target'] for a in attempts)}"
                             f"): {crash.tool} ended by {crash.signal}; {crash.reason}. Report it upstream with the "
                             f"build log, or pick a CPU build by hand (llama_cpp.cpu_build, exclude_cpu_features)")
        target, off = step
        turned_off.append(off)
        if off["feature"] == "amx" and cpu_probe["verdict"].get("usable"):
            log.write("the CPU probe found AMX usable, yet a tool died: the smoke test decides\n")
        log.write(f"{crash.tool} died by {crash.signal}: rebuilding as {target.describe()}\n")
        for stale in build_dir.iterdir():  # no library of the failed build may be loaded by the next one
            if stale.name != "smoke":
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    cache = _cmake_cache(build_dir / "CMakeCache.txt")
    return {
        "llama_cpp_python_version": spec.version,
        "sdist": sdist.name,
        "source_trimmed_from": trim_manifest(source),
        "commit": git_commit(source),
        "cuda": spec.cuda,
        "configure_args": configure[5:],
        "cmake_args_extra": list(spec.cmake_args),
        "cpu_target": target.describe(),
        "cpu_build": target.build,
        "cpu_features_excluded": list(target.exclude),
        "cpu_features_turned_off": turned_off,
        "cpu_probe": cpu_probe,
        "cpu_flags_relevant": sorted(f for _, seen in CPU_FEATURES.values() for f in seen if f in flags),
        "smoke_test": attempts[-1]["smoke_test"],
        "attempts": attempts,
        "compiler": cache.get("CMAKE_CXX_COMPILER"),
        "compiler_version": _first_line([cache.get("CMAKE_CXX_COMPILER", "c++"), "--version"]),
        "cuda_version": _first_line(["nvcc", "--version"]) if spec.cuda else None,
        "cmake_version": _first_line(["cmake", "--version"]),
        "machine": platform.machine(),
        "build_jobs": jobs,
        "tools": {t: str(build_dir / "bin" / t) for t in TOOLS},
        "spec": asdict(spec),
    }


def _cmake_cache(path: Path) -> dict[str, str]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and ":" in line.split("=", 1)[0] and not line.startswith(("//", "#")):
                key, value = line.split("=", 1)
                out[key.split(":", 1)[0]] = value
    return out
