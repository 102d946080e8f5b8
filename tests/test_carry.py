"""The GPU check's bundle: cut into parts under the call limit, staged part by part, joined whole or refused."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO
from llmbench.toolchain.carry import (
    MIB,
    CarryError,
    check_fits,
    closure,
    make_bundle,
    missing_parts,
    stored_wheel,
    unpack_bundle,
)


def files(tmp_path, sizes: dict[str, int]) -> dict:
    out = {}
    for name, size in sizes.items():
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        out[name] = path
    return out


def test_a_bundle_is_cut_into_parts_and_joined_whole(tmp_path):
    import os

    src = files(tmp_path, {"wheels/a.whl": 3000, "src.tar.xz": 10})
    src["noise.bin"] = tmp_path / "in/noise.bin"
    src["noise.bin"].write_bytes(os.urandom(5000))  # incompressible: the stream outgrows one part
    manifest = make_bundle(src, tmp_path / "bundle", part_bytes=2048)
    assert len(manifest["parts"]) >= 3 and all(p["bytes"] <= 2048 for p in manifest["parts"])
    assert manifest["members"] == {"noise.bin": 5000, "src.tar.xz": 10, "wheels/a.whl": 3000}
    names = unpack_bundle(tmp_path / "bundle", tmp_path / "out")
    assert set(names) >= {"wheels/a.whl", "src.tar.xz", "noise.bin"}
    assert (tmp_path / "out/noise.bin").read_bytes() == src["noise.bin"].read_bytes()


def test_a_missing_or_damaged_part_is_named_and_nothing_is_unpacked(tmp_path):
    import os

    src = {"noise.bin": tmp_path / "noise.bin"}
    src["noise.bin"].write_bytes(os.urandom(6000))
    make_bundle(src, tmp_path / "bundle", part_bytes=2048)
    (tmp_path / "bundle/part-02").unlink()
    part3 = tmp_path / "bundle/part-03"
    part3.write_bytes(b"\0" + part3.read_bytes()[1:])
    assert missing_parts(tmp_path / "bundle") == ["part-02", "part-03"]
    with pytest.raises(CarryError, match=r"lacks part-02, part-03: carry .*part-02 then .*part-03"):
        unpack_bundle(tmp_path / "bundle", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_each_call_must_fit_the_limit_with_the_tree():
    manifest = {"parts": [{"name": "part-01", "bytes": 60 * MIB}, {"name": "part-02", "bytes": 10 * MIB}]}
    assert len(check_fits(2 * MIB, manifest)) == 2
    with pytest.raises(CarryError, match=r"part-01 would exceed the 64 MiB"):
        check_fits(5 * MIB, manifest)


def test_a_stored_wheel_holds_the_same_files(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/__init__.py", "x = 1\n" * 100)
        zf.writestr("pkg-1.0.dist-info/RECORD", "")
    (tmp_path / "out").mkdir()
    out = stored_wheel(wheel, tmp_path / "out")
    with zipfile.ZipFile(out) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert zf.read("pkg/__init__.py") == b"x = 1\n" * 100


def test_the_closure_follows_requirements_and_leaves_out_what_the_machine_has():
    needed = closure(["jsonschema"], "3.12")
    assert {"jsonschema", "referencing", "rpds-py", "attrs", "jsonschema-specifications"} <= set(needed)
    assert "attrs" not in closure(["jsonschema"], "3.12", leave_out={"attrs"})
    with pytest.raises(CarryError, match="no-such-package is needed"):
        closure(["no-such-package"])


def test_the_gpu_config_plans_every_job_without_a_gpu(tmp_path):
    """The dry run of benchmarks/gpu/gpu.yaml: every job the GPU check runs, each bench job holding one GPU."""
    import yaml
    from test_plan import planned

    config = yaml.safe_load((REPO / "benchmarks/gpu/gpu.yaml").read_text())
    archive = tmp_path / config["llama_cpp"]["source_archive"]["path"]
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")  # stand-in: the dry run reads no archive, it needs one to exist
    proc = subprocess.run([sys.executable, "-m", "snakemake", "measurements", "-n", "--cores", "16", "--directory",
                           str(tmp_path), "--configfile", str(REPO / "benchmarks/gpu/gpu.yaml"),
                           "--resources", "gpu=1"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned(proc.stdout)
    assert jobs[("take_llama_cpp_source_archive", 0)] == 1 and jobs[("build_llama_cpp", 0)] == 1
    assert ("fetch_llama_cpp_sdist", 0) not in jobs  # no package registry there
    assert jobs[("make_synthetic_gguf", 0)] == 3
    assert jobs[("bench_llama_server", 1)] == 3 and jobs[("bench_llama_bench", 1)] == 2
    assert jobs[("bench_llama_batched_bench", 1)] == 2 and jobs[("bench_llama_cpp_python", 1)] == 1
    assert jobs[("bench_transformers", 1)] == jobs[("bench_vllm", 1)] == 1
    assert not any(rule.startswith("plot_") for rule, _ in jobs)  # no plotting stack needed there
    assert {"serving_table", "roofline_table", "cost_table", "study_config"} <= {rule for rule, _ in jobs}
    assert json.dumps(config["llama_cpp"]["cmake_args"]) == '["-DCMAKE_CUDA_ARCHITECTURES=90"]'
