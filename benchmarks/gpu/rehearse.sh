#!/usr/bin/env bash
# Rehearse the GPU check on this CPU machine before spending GPU-machine time on it:
#   bash benchmarks/gpu/rehearse.sh        # after benchmarks/gpu/prepare.py
# It copies the working tree as the device tool does (tracked and untracked-not-ignored files, and the carried
# .gpu/bundle), makes a CPython 3.12 environment holding only what the GPU machine's image has of the workflow's
# needs (benchmarks/gpu/device-packages.txt; no torch, so transformers ends 'skipped'), and runs check.sh there with
# a CPU variant of gpu.yaml (cuda off, no layers offloaded, the tiny synthetic shape in the 8B's place). A
# wheel missing from the bundle, a wrong path or a script error shows here. Needs python3.12 and PyPI.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${REHEARSE_DIR:-/tmp/llmbench-gpu-rehearsal}
PY312=${PYTHON312:-python3.12}
rm -rf "$WORK" && mkdir -p "$WORK/tree"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$WORK/tree"
mkdir -p "$WORK/tree/.gpu" && cp -r "$REPO/.gpu/bundle" "$WORK/tree/.gpu/"

# The GPU machine's interpreter: what it has of the packages the workflow imports, at this machine's versions.
"$PY312" -m venv "$WORK/venv"
have=$(cd "$REPO" && "$REPO/.venv/bin/python" - <<'EOF'
import sys
sys.path[:0] = ["workflow/scripts", "benchmarks/gpu"]
from llmbench.toolchain.carry import closure
from prepare import ROOTS, device_packages
# What the bundle's packages need from that machine, and what the workflow imports directly of its packages.
needed = closure([*ROOTS, "pyyaml", "numpy", "huggingface-hub", "prometheus-client", "nvidia-ml-py"], "3.12")
print(" ".join(f"{n}=={v}" for n, v in needed.items() if n in device_packages()))
EOF
)
"$WORK/venv/bin/pip" install -q --disable-pip-version-check $have

# The CPU variant of the GPU config: same jobs and paths, nothing the CPU cannot do.
"$REPO/.venv/bin/python" - "$REPO/benchmarks/gpu/gpu.yaml" "$WORK/tree/.gpu/rehearsal.yaml" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["study"] += "-cpu-rehearsal"
cfg["llama_cpp"].update(cuda="off", cmake_args=[])
for m in cfg["models"].values():
    m["source"]["shape"], m["n_gpu_layers"] = "llama-tiny", 0
for t in cfg["tools"].values():
    t["gpus"] = 0
cfg["bench"]["prompts"] = [dict(p, max_tokens=min(p["max_tokens"], 64)) for p in cfg["bench"]["prompts"]]
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
EOF
cd "$WORK/tree"
PATH="$WORK/venv/bin:$PATH" OUT="$WORK/out" CHECK_CONFIG=.gpu/rehearsal.yaml CHECK_BUILD=resources/llama.cpp/0.3.36-cpu \
  CHECK_BUDGET_S=${CHECK_BUDGET_S:-1500} bash benchmarks/gpu/check.sh
ls -la "$WORK/out"
