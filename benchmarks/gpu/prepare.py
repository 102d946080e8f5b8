"""Prepare the GPU check's bundle on this (CPU) machine: what benchmarks/gpu/check.sh needs on the GPU machine.

    .venv/bin/python benchmarks/gpu/prepare.py            # after `pip install -r requirements.txt`

Writes .gpu/bundle/ (git-ignored): part-NN files (one xz stream: the llama.cpp source trimmed from the pinned sdist,
and the Python wheels for CPython 3.12 that the workflow needs and that machine lacks) and bundle.json, then checks
that each call (the working tree plus one part) stays under the 64 MiB a call carries. It prints the calls to make.
Needs PyPI: pip downloads the wheels, and the sdist unless resources/src/ holds it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow/scripts"))

import yaml  # noqa: E402

from llmbench.modelfiles.fetch import pip_download, verify_sha256  # noqa: E402
from llmbench.toolchain.carry import MIB, check_fits, closure, make_bundle, normalized, stored_wheel, tree_bytes  # noqa: E402
from llmbench.toolchain.source_archive import trim_sdist  # noqa: E402

CONFIG = REPO / "benchmarks/gpu/gpu.yaml"
# What the workflow imports on the GPU machine to plan, measure and tabulate (not the figures: altair and
# vl-convert stay here, and workflow/scripts/rerender.py draws them from the returned results).
ROOTS = ["snakemake", "polars", "jsonschema", "gguf", "llama-cpp-python"]
# Imported only by Snakemake's ILP scheduler; check.sh runs --scheduler greedy. Its wheel holds a 20 MB solver.
NOT_CARRIED = {"pulp"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "linux_x86_64"]


def device_packages() -> set[str]:
    lines = (REPO / "benchmarks/gpu/device-packages.txt").read_text().splitlines()
    return {normalized(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def pip(*args: str, check: bool = True) -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0 and check:
        raise SystemExit(f"pip {' '.join(args[:4])} … failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.returncode == 0


def wheels(dest: Path, sdist: Path) -> list[Path]:
    """The wheels to carry, stored (not deflated), for CPython 3.12 on manylinux x86-64."""
    needed = closure(ROOTS, "3.12", device_packages() | NOT_CARRIED)
    binding = needed.pop("llama-cpp-python")
    raw = dest / "raw"
    raw.mkdir(parents=True)
    for name, version in needed.items():
        if not pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                   "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(raw), f"{name}=={version}", check=False):
            # Published as an sdist alone (connection-pool): built here, and carried only if pure Python.
            pip("wheel", "--no-deps", "-w", str(raw), f"{name}=={version}")
            built = [w for w in raw.glob("*.whl") if normalized(w.name.split("-")[0]) == name]
            if not built or not built[0].name.endswith("-none-any.whl"):
                raise SystemExit(f"{name}=={version} has no wheel for CPython 3.12 on manylinux x86-64 and did not "
                                 f"build as pure Python here ({[w.name for w in built]})")
    # The binding without its own llama.cpp (as requirements.txt installs it): pure Python over the build's
    # libllama.so, the same wheel for any CPython 3.
    pip("wheel", "--no-deps", "--config-settings=cmake.define.LLAMA_BUILD=OFF",
        "--config-settings=cmake.define.LLAVA_BUILD=OFF", "-w", str(raw), str(sdist))
    built = sorted(raw.glob("llama_cpp_python-*.whl"))
    if [w.name.split("-")[1] for w in built] != [binding]:
        raise SystemExit(f"expected llama_cpp_python {binding}'s wheel, pip built {[w.name for w in built]}")
    stored = dest / "stored"
    stored.mkdir()
    return [stored_wheel(w, stored) for w in sorted(raw.glob("*.whl"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".gpu/bundle")
    ap.add_argument("--part-mib", type=float, default=60.0, help="largest part (MiB); a call also carries the tree")
    a = ap.parse_args()

    config = yaml.safe_load(CONFIG.read_text())
    version = config["llama_cpp"]["version"]
    pinned = yaml.safe_load((REPO / "config/config.yaml").read_text())["llama_cpp"]["sdist_sha256"]
    archive = config["llama_cpp"]["source_archive"]
    with tempfile.TemporaryDirectory(prefix="llmbench-gpu-") as tmp:
        tmp = Path(tmp)
        sdist = REPO / f"resources/src/llama_cpp_python-{version}.tar.gz"
        if not sdist.exists():
            sdist = pip_download(f"llama-cpp-python=={version}", tmp, binary=False)
        verify_sha256(sdist, pinned, f"llama-cpp-python {version} sdist")
        trimmed = tmp / Path(archive["path"]).name
        manifest = trim_sdist(sdist, trimmed)
        digest = verify_sha256(trimmed, None, "trimmed source")
        if digest != archive["sha256"]:
            raise SystemExit(f"the trimmed source's sha256 is {digest}, but {CONFIG.relative_to(REPO)} pins "
                             f"{archive['sha256']}: the trim changed (llmbench.toolchain.source_archive); pin the new one there")
        carried = wheels(tmp / "wheels", sdist)
        files = {f"wheels/{w.name}": w for w in carried} | {trimmed.name: trimmed}
        bundle = make_bundle(files, a.out, int(a.part_mib * MIB), {"source": manifest,
                                                                   "config": str(CONFIG.relative_to(REPO))})
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout.split("\0")
    lines = check_fits(tree_bytes([REPO / f for f in tracked if f]), bundle)
    print(json.dumps({"members": bundle["members"]}, indent=1))
    print(*lines, sep="\n")
    rel = a.out.relative_to(REPO)
    for i, part in enumerate(bundle["parts"], 1):
        last = i == len(bundle["parts"])
        print(f"call {i}: carry [{rel}/{part['name']}, {rel}/bundle.json]; command: "
              f"bash benchmarks/gpu/check.sh{'' if last else ' (stages the part, runs when all are there)'}")
    shutil.rmtree(a.out / "raw", ignore_errors=True)


if __name__ == "__main__":
    main()
