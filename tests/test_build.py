"""The llama.cpp build is proven on this machine before any job uses it, and redone without the extension at fault.

The tools here are stand-ins (small Python scripts named standin-…, installed under the real tools' names) that
kill themselves with a signal, as the native build's tools did on an Intel Xeon with AMX (SIGILL in
ggml_backend_amx_mul_mat); the compile step is a stand-in that installs them. The real build and its smoke test run
in tests/test_workflow.py.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from llmbench.toolchain.build import TOOLS as LLAMA_TOOLS
from llmbench.toolchain.build import BuildError, BuildSpec, CpuTarget, build_llama_cpp, cpu_flags, next_target
from llmbench.toolchain.build_smoke import SmokeResult, first_crash, smoke_test
from llmbench.toolchain.cpu_probe import ProbeVerdict

AMX_CPU = {"avx512f", "amx_tile", "amx_int8", "amx_bf16", "avx2"}
EPYC_CPU = {"avx512f", "avx2"}


def test_default_build_keeps_its_name_and_native_flags():
    spec = BuildSpec("0.3.36", cuda=False)
    assert spec.variant == "0.3.36-cpu"  # where the native build runs, nothing changes: the same cache
    args = spec.cpu_target.cmake_args()
    assert "-DGGML_NATIVE=ON" in args and "-DGGML_BACKEND_DL=OFF" in args and "-DCMAKE_C_FLAGS=" in args


def test_config_choices_change_the_cache_key_and_the_flags():
    spec = BuildSpec("0.3.36", cuda=False, cpu_build="portable", exclude_cpu_features=("amx",))
    assert spec.variant == "0.3.36-cpu-portable-noamx"
    args = spec.cpu_target.cmake_args()
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_BACKEND_DL=ON" in args and "-DGGML_CPU_ALL_VARIANTS=ON" in args
    assert "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in args
    with pytest.raises(BuildError, match=r"exclude_cpu_features \['sse9'\] unknown"):
        CpuTarget("native", ("sse9",))


def test_cpu_flags_are_read_as_the_kernel_lists_them(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx512f amx_tile amx_int8\n")
    assert cpu_flags(info) == {"fpu", "avx512f", "amx_tile", "amx_int8"}
    assert cpu_flags(tmp_path / "absent") == set()


def crash(tool="llama-bench", sig="SIGILL") -> SmokeResult:
    return SmokeResult(tool, False, tool, 0.1, -4, sig, f"{tool} died by {sig}", None, None)


def test_the_ladder_turns_amx_off_first_then_builds_portable():
    step = next_target(CpuTarget(), crash(), AMX_CPU)
    assert step is not None
    target, off = step
    assert target == CpuTarget("native", ("amx",)) and off["feature"] == "amx"
    assert off["why"]["tool"] == "llama-bench" and off["why"]["signal"] == "SIGILL" and "26954" in off["upstream"]
    target2, off2 = next_target(target, crash("llama-server", "SIGSEGV"), AMX_CPU)
    assert target2 == CpuTarget("portable", ("amx",)) and off2["feature"] == "-march=native"
    assert next_target(target2, crash(), AMX_CPU) is None
    # A CPU without AMX goes straight to the portable build.
    assert next_target(CpuTarget(), crash(), EPYC_CPU)[0] == CpuTarget("portable", ())


def fake_sdist(tmp_path: Path) -> Path:
    sdist = tmp_path / "llama_cpp_python-0.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        data = b"project(stand-in)\n"
        info = tarfile.TarInfo("llama_cpp_python-0.0.0/vendor/llama.cpp/CMakeLists.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return sdist


def install_standins(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in LLAMA_TOOLS:
        exe = bin_dir / tool  # a stand-in under the real tool's name
        exe.write_text(f"#!{sys.executable}\n# standin-{tool}\n" + textwrap.dedent(body))
        exe.chmod(0o755)


DIES = """
    import os, signal
    print("load_tensors: loading model tensors, this can take a while... (load_mode = mmap)", flush=True)
    os.kill(os.getpid(), signal.{sig})
"""


def test_the_real_smoke_test_names_each_tool_a_signal_ended(tmp_path):
    bin_dir = tmp_path / "bin"
    install_standins(bin_dir, DIES.format(sig="SIGILL"))
    results = smoke_test(bin_dir, tmp_path / "smoke", threads=2)
    by_tool = {r.tool: r for r in results}
    assert list(by_tool) == ["llama-server", "llama-bench", "llama-batched-bench", "llama-quantize", "llama-perplexity",
                             "llama-cpp-python"]
    for tool in LLAMA_TOOLS:
        r = by_tool[tool]
        assert (r.ok, r.signal) == (False, "SIGILL") and "instruction this CPU cannot run" in r.reason
        assert "this llama.cpp build uses an instruction" in r.reason  # the rebuild fix, llama-batched-bench's too
    assert first_crash(results).tool == "llama-server"
    # The tiny model the tools ran is the workflow's own synthetic llama-tiny, a real GGUF.
    assert (tmp_path / "smoke/llama-tiny-Q4_0.gguf").read_bytes()[:4] == b"GGUF"


def test_the_binaries_built_and_smoke_tested_are_the_registrys():
    """One list: the bench tools' binaries of llmbench/engines/registry.py and its QUALITY_BINARIES are built; the
    smoke test runs each, and the tools that load libllama."""
    from llmbench.engines.diagnosis import LLAMA_CPP_ENGINES
    from llmbench.engines.registry import QUALITY_BINARIES, TOOLS
    from llmbench.toolchain.build_smoke import smoke_tools

    bench = [b for t in TOOLS.values() for b in t.llama_cpp if b != "libllama"]
    assert LLAMA_TOOLS == (*bench, *QUALITY_BINARIES) == ("llama-server", "llama-bench", "llama-batched-bench",
                                                          "llama-quantize", "llama-perplexity")
    assert smoke_tools() == (*LLAMA_TOOLS, "llama-cpp-python")
    assert set(LLAMA_CPP_ENGINES) == set(smoke_tools())


def test_a_registered_binary_the_smoke_test_has_no_run_of_fails_the_build_saying_so(tmp_path, monkeypatch):
    from llmbench.toolchain import build_smoke

    bin_dir = tmp_path / "bin"
    install_standins(bin_dir, "print('stand-in')\n")
    monkeypatch.setattr(build_smoke, "smoke_tools", lambda: ("llama-standin-new",))
    (r,) = smoke_test(bin_dir, tmp_path / "smoke", threads=2)
    assert (r.tool, r.ok, r.signal) == ("llama-standin-new", False, None) and first_crash([r]) is None
    assert "has no run of llama-standin-new" in r.reason and "llmbench/toolchain/build_smoke.py" in r.reason


def standin_probe_says_amx_usable(flags):
    """A stand-in for llmbench.toolchain.cpu_probe.probe_amx: the probe passed, so the smoke test alone decides (a CPU that
    lies to the probe); tests/test_cpu_probe.py puts recorded probe runs in its place."""
    run = {"feature": "amx", "cpu_flags": sorted(flags & {"amx_tile", "amx_int8", "amx_bf16"}), "compiler": "standin"}
    return run, ProbeVerdict(True, "stand-in probe: AMX usable", ("standin",))


def run_build(tmp_path: Path, smoke_outcomes: dict[str, SmokeResult | None], flags: set[str],
              probe=standin_probe_says_amx_usable, cuda: bool = False, **spec_args):
    """build_llama_cpp with a stand-in compile, a smoke stand-in that answers per CPU target, and a stand-in probe."""
    targets = []

    def compile_standin(source, build_dir, spec, target, jobs, log):
        targets.append(target)
        install_standins(build_dir / "bin", "print('stand-in')\n")
        return ["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", *target.cmake_args()]

    def smoke_standin(bin_dir, workdir, threads):
        failure = smoke_outcomes[targets[-1].describe()]
        ok = [SmokeResult(t, True, t, 0.1, 0) for t in ("llama-quantize", "llama-bench", "llama-server")]
        return ok if failure is None else [*ok, failure]

    tmp_path.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    spec = BuildSpec("0.0.0", cuda=cuda, **spec_args)
    info = build_llama_cpp(fake_sdist(tmp_path), tmp_path / "src", tmp_path / "build", spec, 2, log,
                           compile=compile_standin, smoke=smoke_standin, flags=flags, probe=probe)
    return info, targets, log.getvalue()


def test_a_build_that_runs_is_built_once(tmp_path):
    info, targets, _ = run_build(tmp_path, {"native": None}, EPYC_CPU)
    assert targets == [CpuTarget()] and info["cpu_target"] == "native" and info["cpu_features_turned_off"] == []
    assert len(info["attempts"]) == 1 and all(r["ok"] for r in info["smoke_test"])


def test_an_amx_crash_rebuilds_without_amx_and_build_json_says_why(tmp_path):
    info, targets, log = run_build(tmp_path, {"native": crash(), "native without amx": None}, AMX_CPU)
    assert targets == [CpuTarget(), CpuTarget("native", ("amx",))]
    assert info["cpu_target"] == "native without amx" and info["cpu_features_excluded"] == ["amx"]
    (off,) = info["cpu_features_turned_off"]
    assert off["feature"] == "amx" and off["flags"] == ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"]
    assert off["why"]["signal"] == "SIGILL" and off["why"]["tool"] == "llama-bench" and "26954" in off["upstream"]
    assert "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in info["configure_args"]
    assert info["cpu_flags_relevant"] == ["amx_bf16", "amx_int8", "amx_tile", "avx512f"]
    assert "llama-bench died by SIGILL: rebuilding as native without amx" in log


def test_portable_after_amx_and_a_clear_error_when_every_build_dies(tmp_path):
    outcomes = {"native": crash(), "native without amx": crash("llama-server", "SIGSEGV"),
                "portable without amx": None}
    info, targets, _ = run_build(tmp_path, outcomes, AMX_CPU)
    assert targets[-1] == CpuTarget("portable", ("amx",)) and len(info["cpu_features_turned_off"]) == 2
    outcomes["portable without amx"] = crash()
    with pytest.raises(BuildError, match=r"every llama.cpp build tried dies on this CPU .*native, native without amx, "
                                         r"portable without amx.*llama_cpp.cpu_build"):
        run_build(tmp_path / "again", outcomes, AMX_CPU)


def test_a_tool_failing_without_a_signal_is_recorded_and_the_build_stands(tmp_path):
    # Not the CPU's doing: the jobs that use the tool will say what it is in their failed rows.
    broken = SmokeResult("llama-perplexity", False, "x", 0.1, 1, None, "llama-perplexity exited with code 1", None,
                         "smoke/perplexity.log")
    info, targets, log = run_build(tmp_path, {"native": broken}, AMX_CPU)
    assert targets == [CpuTarget()] and info["cpu_features_turned_off"] == []
    assert [r for r in info["smoke_test"] if not r["ok"]][0]["reason"] == "llama-perplexity exited with code 1"
    assert "warning: llama-perplexity failed its smoke test without a signal" in log


def test_the_kernels_words_are_read_for_that_process(tmp_path, monkeypatch):
    # A stand-in dmesg printing the kernel's line for the AMX fault (its format: arch/x86/kernel/traps.c).
    dmesg = tmp_path / "dmesg"
    dmesg.write_text("#!/bin/sh\n"
                     "echo '[  12.0] traps: llama-bench[4101] trap invalid opcode ip:7f sp:7ffd error:0 in "
                     "libggml-cpu.so[7f+9000]'\n"
                     "echo '[  13.0] traps: llama-bench[4242] trap invalid opcode ip:7f sp:7ffd error:0 in "
                     "libggml-cpu.so[7f+9000]'\n")
    dmesg.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    from llmbench.toolchain.build_smoke import kernel_words

    assert "llama-bench[4101] trap invalid opcode" in kernel_words("bin/llama-bench", 4101)
    assert "[4242]" in kernel_words("bin/llama-bench")
    assert kernel_words("bin/llama-server", 4101) is None
