"""llama.cpp built from the source vendored in the llama-cpp-python sdist, with what the build was recorded."""

from __future__ import annotations

import platform
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

TOOLS = ("llama-server", "llama-bench", "llama-quantize", "llama-perplexity")


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuildSpec:
    version: str
    cuda: bool
    cmake_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def variant(self) -> str:
        return f"{self.version}-{'cuda' if self.cuda else 'cpu'}"


def cmake_configure_args(source: Path, build_dir: Path, spec: BuildSpec) -> list[str]:
    args = [
        "cmake", "-S", str(source), "-B", str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DGGML_CUDA={'ON' if spec.cuda else 'OFF'}",
        "-DGGML_NATIVE=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        # The server's web UI would otherwise be fetched from the hub at build time.
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
    ]
    if spec.cuda:
        args.append("-DCMAKE_CUDA_ARCHITECTURES=native")
    return args + list(spec.cmake_args)


def extract_sdist(sdist: Path, dest: Path) -> Path:
    """Unpack the sdist (its .git metadata included, so the build knows its commit); return llama.cpp's root."""
    marker = dest / ".extracted"
    if not marker.exists():
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
    return _first_line(["git", "-C", str(source), "rev-parse", "HEAD"])


def run_logged(cmd: list[str], log) -> None:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:3])} … failed with exit {proc.returncode}; see the log above")


def build_llama_cpp(sdist: Path, source_dir: Path, build_dir: Path, spec: BuildSpec, jobs: int, log) -> dict:
    """Configure and build the tools; return the build record (commit, flags, compiler, CUDA)."""
    if spec.cuda and shutil.which("nvcc") is None:
        raise BuildError("llama_cpp.cuda is 'on' but nvcc is not on PATH: install the CUDA toolkit or set cuda: off")
    source = extract_sdist(sdist, source_dir)
    configure = cmake_configure_args(source, build_dir, spec)
    run_logged(configure, log)
    run_logged(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs), "--target", *TOOLS], log)
    cache = _cmake_cache(build_dir / "CMakeCache.txt")
    return {
        "llama_cpp_python_version": spec.version,
        "sdist": sdist.name,
        "commit": git_commit(source),
        "cuda": spec.cuda,
        "configure_args": configure[5:],
        "cmake_args_extra": list(spec.cmake_args),
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
