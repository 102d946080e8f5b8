"""The AMX probe before the first llama.cpp build: its verdicts, and the build it configures.

The verdicts are read from probe runs kept in tests/data/cpu_probe/: the files without ``standin`` in their name were
recorded on this repository's AMD EPYC test machine; the ``*.standin.json`` ones were written by hand in the probe's
output format, for machines not at hand (Intel Xeons with AMX, an old compiler). The build runs with the stand-in
compile and smoke test of tests/test_build.py. One test compiles and runs the real probe on whatever machine runs it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest
from test_build import AMX_CPU, EPYC_CPU, crash, run_build

from llmbench.toolchain.build import CPU_FEATURES, UPSTREAM, CpuTarget, cpu_flags
from llmbench.toolchain.cpu_probe import ProbeVerdict, parse_probe, probe_amx, verdict_of

DATA = Path(__file__).parent / "data" / "cpu_probe"


def recorded(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def test_an_amd_epyc_is_not_probed_and_nothing_is_turned_off():
    v = verdict_of(recorded("amd-epyc.json"))
    assert (v.probed, v.exclude) == (False, False)
    assert v.reason.startswith("not probed: this CPU does not list AMX") and v.evidence == ()


def test_the_real_epyc_run_names_each_refusal_in_order():
    # The probe run on the EPYC regardless of its cpuinfo: the kernel's real words for "no tile data here".
    run = recorded("amd-epyc-probe-run-anyway.json")
    v = parse_probe(run["stdout"], run["returncode"])
    assert (v.usable, v.exclude) == (False, True)
    assert v.reason == ("the kernel does not offer AMX tile data to programs (ARCH_GET_XCOMP_SUPP 0xe7 lacks "
                        "XTILEDATA, bit 18): the hypervisor or the kernel does not enable it; ARCH_REQ_XCOMP_PERM "
                        "refused: errno 95 (EOPNOTSUPP); a worker thread died by SIGILL at its first tile "
                        "instruction (ldtilecfg)")
    assert v.evidence == ("xcomp_supp 0xe7", "req_xcomp_perm errno 95 (Operation not supported)", "tile_worker start")


@pytest.mark.parametrize(("name", "words"), [
    ("intel-amx-kernel-refuses.standin.json",
     ["the kernel does not offer AMX tile data to programs (ARCH_GET_XCOMP_SUPP 0x2e7 lacks XTILEDATA, bit 18)",
      "ARCH_REQ_XCOMP_PERM refused: errno 95 (EOPNOTSUPP)", "a worker thread died by SIGILL"]),
    ("intel-amx-old-kernel.standin.json",
     ["the kernel does not answer ARCH_GET_XCOMP_SUPP (errno 22 (EINVAL)): kernels before 5.16",
      "ARCH_REQ_XCOMP_PERM refused: errno 22 (EINVAL)"]),
    ("intel-amx-worker-sigill.standin.json",
     ["a worker thread died by SIGILL at its first tile-data instruction (tilezero), though the main thread's "
      "ARCH_REQ_XCOMP_PERM succeeded"]),
])
def test_an_intel_amx_machine_that_fails_any_step_turns_amx_off(name, words):
    v = verdict_of(recorded(name))
    assert (v.feature, v.probed, v.usable, v.exclude) == ("amx", True, False, True)
    for w in words:
        assert w in v.reason
    assert v.evidence == tuple(recorded(name)["stdout"].splitlines())


def test_where_the_kernel_agreed_the_worker_sigill_is_the_only_cause():
    v = verdict_of(recorded("intel-amx-worker-sigill.standin.json"))
    assert v.reason == ("a worker thread died by SIGILL at its first tile-data instruction (tilezero), though the "
                        "main thread's ARCH_REQ_XCOMP_PERM succeeded")


def test_an_intel_amx_machine_that_runs_tiles_keeps_amx():
    v = verdict_of(recorded("intel-amx-works.standin.json"))
    assert (v.probed, v.usable, v.exclude) == (True, True, False)
    assert "XTILEDATA offered" in v.reason and v.evidence[-1] == "done"


def test_a_compiler_too_old_for_the_probe_leaves_the_build_as_before():
    v = verdict_of(recorded("old-compiler.standin.json"))
    assert (v.probed, v.exclude) == (False, False)
    assert v.reason == "not probed: cc cannot build the probe: cc: error: unrecognized command-line option '-mamx-tile'"


def test_a_hang_and_an_odd_exit_are_failures():
    hung = parse_probe("xcomp_supp 0x602e7\nreq_xcomp_perm ok\ntile_worker start\n", None, timed_out_after_s=5.0)
    assert hung.exclude and "did not finish within 5 s (its last line: 'tile_worker start')" in hung.reason
    odd = parse_probe("xcomp_supp 0x602e7\nreq_xcomp_perm ok\nworker_create errno 11 (Resource temporarily "
                      "unavailable)\n", 3)
    assert odd.exclude and odd.reason == ("the probe exited with code 3: its worker thread was not created "
                                          "(errno 11 (EAGAIN))")
    assert parse_probe("", -11).reason.endswith("the probe died by SIGSEGV before its worker thread ran a tile "
                                                "instruction")


def write_standin_compiler(path: Path, probe_body: str | None, error: str = "") -> list[str]:
    """A stand-in C compiler: it writes ``probe_body`` (a Python script) as the "compiled" probe, or fails with
    ``error`` as a compiler without -mamx-tile does."""
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        # standin-cc
        import os, sys
        args = sys.argv[1:]
        if args == ["--version"]:
            print("standin-cc 0.0")
            sys.exit(0)
        if {probe_body is None!r}:
            sys.stderr.write({error!r})
            sys.exit(1)
        out = args[args.index("-o") + 1]
        with open(out, "w") as f:
            f.write("#!{sys.executable}\\n" + {probe_body!r})
        os.chmod(out, 0o755)
        """))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return [str(path)]


def test_the_live_path_compiles_runs_and_judges(tmp_path, monkeypatch):
    # The whole of probe_amx with a stand-in compiler: a probe killed by SIGILL, one that hangs, a failed compile.
    sigill = textwrap.dedent("""\
        import os, signal, sys
        print("xcomp_supp 0x602e7\\nreq_xcomp_perm ok\\ntile_worker start", flush=True)
        os.kill(os.getpid(), signal.SIGILL)
        """)
    run, v = probe_amx(AMX_CPU, cc=write_standin_compiler(tmp_path / "standin-cc", sigill))
    assert run["returncode"] == -4 and run["compiler_version"] == "standin-cc 0.0"
    assert v.exclude and "a worker thread died by SIGILL at its first tile instruction (ldtilecfg)" in v.reason

    monkeypatch.setattr("llmbench.toolchain.cpu_probe.RUN_TIMEOUT_S", 0.5)
    hangs = "import time\nprint('xcomp_supp 0x602e7', flush=True)\ntime.sleep(30)\n"
    run, v = probe_amx(AMX_CPU, cc=write_standin_compiler(tmp_path / "standin-cc-hang", hangs))
    assert run["timed_out_after_s"] == 0.5 and v.exclude and "did not finish within 0.5 s" in v.reason
    assert run["seconds"] < 10

    old = write_standin_compiler(tmp_path / "standin-cc-old", None, "cc1: error: unrecognized command-line option "
                                                                     "'-mamx-tile'\n")
    run, v = probe_amx(AMX_CPU, cc=old)
    assert run["compile_returncode"] == 1 and not v.probed and not v.exclude
    assert v.reason.endswith("cannot build the probe: cc1: error: unrecognized command-line option '-mamx-tile'")

    run, v = probe_amx(AMX_CPU, cc=[str(tmp_path / "no-such-cc")])
    assert run["compile_returncode"] == 127 and not v.probed and "cannot build the probe" in v.reason


def test_the_compiler_is_the_one_cmake_takes(monkeypatch):
    from llmbench.toolchain.cpu_probe import compiler

    monkeypatch.delenv("CC", raising=False)
    assert compiler() == ["cc"]
    monkeypatch.setenv("CC", "ccache gcc-13")
    assert compiler() == ["ccache", "gcc-13"]


def test_the_real_probe_on_this_machine_is_consistent_with_its_cpuinfo():
    # Right on any machine: an AMD EPYC (no AMX listed: not probed) or an Intel Xeon with AMX (probed: whatever
    # the kernel says, a well-formed verdict whose lines are the probe's steps).
    flags = cpu_flags()
    run, v = probe_amx(flags)
    assert isinstance(v, ProbeVerdict) and v.feature == "amx" and v.reason
    lists_amx = bool(set(CPU_FEATURES["amx"][1]) & flags)
    assert bool(run["cpu_flags"]) == lists_amx
    if not lists_amx:
        assert (v.probed, v.exclude) == (False, False) and v.reason.startswith("not probed: this CPU does not list")
        return
    if not v.probed:  # a compiler without -mamx-tile
        assert run["compile_returncode"] != 0 and "cannot build the probe" in v.reason
        return
    assert v.evidence and v.evidence[0].startswith("xcomp_supp") and run["seconds"] < 30
    assert v.exclude == (not v.usable)
    if v.usable:
        assert run["returncode"] == 0 and "tile_worker ok" in v.evidence


# The build with the probe in front of it, with the stand-in compile and smoke test of tests/test_build.py.

def probe_standin(name: str):
    """A stand-in probe that answers with the recorded run ``name``, as probe_amx would have on that machine."""
    calls = []

    def probe(flags):
        calls.append(flags)
        run = recorded(name)
        return run, verdict_of(run)

    probe.calls = calls
    return probe


@pytest.mark.parametrize(("name", "flags", "excluded"), [
    ("amd-epyc.json", EPYC_CPU, False),
    ("intel-amx-kernel-refuses.standin.json", AMX_CPU, True),
    ("intel-amx-old-kernel.standin.json", AMX_CPU, True),
    ("intel-amx-worker-sigill.standin.json", AMX_CPU, True),
    ("intel-amx-works.standin.json", AMX_CPU, False),
    ("old-compiler.standin.json", AMX_CPU, False),
])
def test_the_first_build_leaves_amx_out_exactly_where_the_probe_says(tmp_path, name, flags, excluded):
    first = "native without amx" if excluded else "native"
    info, targets, log = run_build(tmp_path, {first: None}, flags, probe=probe_standin(name))
    assert targets == [CpuTarget("native", ("amx",) if excluded else ())]  # one build
    assert info["cpu_target"] == first and info["cpu_features_turned_off"] == []
    assert info["spec"]["exclude_cpu_features"] == ()  # the configured build, its directory, unchanged
    p = info["cpu_probe"]
    assert p["feature"] == "amx" and p["verdict"] == verdict_of(recorded(name)).record()
    assert p["lines"] == p["verdict"]["evidence"] and "stdout" not in p and p["compiler"] == recorded(name)["compiler"]
    assert verdict_of(p) == verdict_of(recorded(name))  # build.json's record replays to the same verdict
    if excluded:
        (off,) = p["turned_off"]
        assert off == {"feature": "amx", "flags": list(CPU_FEATURES["amx"][0]), "why": p["verdict"]["reason"],
                       "upstream": UPSTREAM["amx"]}
        assert "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in info["configure_args"]
        assert "the first build leaves amx out: native without amx" in log
    else:
        assert p["turned_off"] == [] and "-DCMAKE_C_FLAGS=" in info["configure_args"]
    assert f"cpu probe (amx): {p['verdict']['reason']}" in log


def test_a_cpu_that_lies_to_the_probe_is_still_caught_by_the_smoke_test(tmp_path):
    info, targets, log = run_build(tmp_path, {"native": crash(), "native without amx": None}, AMX_CPU,
                                   probe=probe_standin("intel-amx-works.standin.json"))
    assert targets == [CpuTarget(), CpuTarget("native", ("amx",))] and info["cpu_target"] == "native without amx"
    assert info["cpu_probe"]["verdict"]["usable"] and info["cpu_probe"]["turned_off"] == []
    (off,) = info["cpu_features_turned_off"]
    assert off["feature"] == "amx" and off["why"]["signal"] == "SIGILL"
    assert "the CPU probe found AMX usable, yet a tool died" in log


def test_after_the_probe_turned_amx_off_a_crash_goes_portable(tmp_path):
    outcomes = {"native without amx": crash("llama-server", "SIGSEGV"), "portable without amx": None}
    info, targets, _ = run_build(tmp_path, outcomes, AMX_CPU,
                                 probe=probe_standin("intel-amx-worker-sigill.standin.json"))
    assert targets == [CpuTarget("native", ("amx",)), CpuTarget("portable", ("amx",))]
    assert [o["feature"] for o in info["cpu_probe"]["turned_off"]] == ["amx"]
    assert [o["feature"] for o in info["cpu_features_turned_off"]] == ["-march=native"]
    assert len(info["attempts"]) == 1 + len(info["cpu_features_turned_off"])


@pytest.mark.parametrize(("spec_args", "words"), [
    ({"exclude_cpu_features": ("amx",)}, "llama_cpp.exclude_cpu_features already leaves amx out"),
    ({"cpu_build": "portable"}, "a portable build chooses its CPU variant at run time"),
])
def test_a_build_that_needs_no_probe_runs_none(tmp_path, spec_args, words):
    probe = probe_standin("intel-amx-kernel-refuses.standin.json")
    target = CpuTarget(spec_args.get("cpu_build", "native"), tuple(spec_args.get("exclude_cpu_features", ())))
    info, targets, _ = run_build(tmp_path, {target.describe(): None}, AMX_CPU, probe=probe, **spec_args)
    assert probe.calls == [] and targets == [target]
    assert info["cpu_probe"] == {"feature": "amx", "lines": [], "turned_off": [],
                                 "verdict": {"usable": False, "reason": f"not probed: {words}", "evidence": [],
                                             "feature": "amx", "probed": False, "exclude": False}}


def test_a_cuda_build_probes_its_native_cpu_code_too(tmp_path, monkeypatch):
    nvcc = tmp_path / "bin" / "nvcc"  # a stand-in nvcc: only its presence on PATH is asked
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\n# standin-nvcc\necho 'Cuda compilation tools, release 0.0 (stand-in)'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{nvcc.parent}{os.pathsep}{os.environ['PATH']}")
    info, targets, _ = run_build(tmp_path / "study", {"native without amx": None}, AMX_CPU,
                                 probe=probe_standin("intel-amx-kernel-refuses.standin.json"), cuda=True)
    assert targets == [CpuTarget("native", ("amx",))] and info["cuda"] and info["cpu_probe"]["turned_off"]
