#!/usr/bin/env bash
# The GPU check, run on the GPU machine in the repository's root (benchmarks/gpu/README.md says how to call it):
#   carry .gpu/bundle/part-NN and .gpu/bundle/bundle.json (made by benchmarks/gpu/prepare.py); run this script.
# With a part still missing it only stages the carried one (the next call carries the next). With all there it
# unpacks them, installs the wheels, builds llama.cpp with CUDA (timed) and runs benchmarks/gpu/gpu.yaml through
# Snakemake (--resources gpu=1), then the harness benchmark on the 8B Q4_0, within CHECK_BUDGET_S seconds, and
# writes under $OUT: summary.md, build.json, results.tar.gz (rows, provenance, tables, logs, nvidia-smi) and
# check.log. What finished before the budget ran out is kept and returned.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/.gpu/out}
BUDGET=${CHECK_BUDGET_S:-480}
PY=${PYTHON:-python3}
CONFIG=${CHECK_CONFIG:-benchmarks/gpu/gpu.yaml}  # rehearse.sh, on a CPU machine, gives a CPU variant
BUILD=${CHECK_BUILD:-resources/llama.cpp/0.3.36-cuda}
t0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - t0))); }
mkdir -p "$OUT" .gpu/run
exec > >(tee -a "$OUT/check.log") 2>&1
export PYTHONPATH=$PWD/workflow/scripts PYTHONUNBUFFERED=1
[ -x /usr/local/cuda/bin/nvcc ] && export PATH=$PATH:/usr/local/cuda/bin  # where the CUDA image keeps nvcc

missing=$($PY -c 'from llmbench.toolchain.carry import missing_parts; print(" ".join(missing_parts(".gpu/bundle")))') || exit 2
if [ -n "$missing" ]; then
  echo "staged; still to carry, one call each while this machine is held: $missing"
  exit 0
fi
$PY -c 'from llmbench.toolchain.carry import unpack_bundle; from pathlib import Path; unpack_bundle(Path(".gpu/bundle"), Path(".gpu/unpacked"))' || exit 2
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/llmbench-site \
  .gpu/unpacked/wheels/*.whl || exit 2
export PYTHONPATH=/tmp/llmbench-site:$PYTHONPATH PATH=/tmp/llmbench-site/bin:$PATH

{ nvidia-smi; nvidia-smi -q; nvcc --version; uname -a; $PY -m pip list 2>/dev/null; } > .gpu/run/machine.txt 2>&1
smk=($PY -m snakemake --cores all --resources gpu=1 --configfile "$CONFIG" --scheduler greedy --keep-going)
b0=$(date +%s)
timeout "$(left)" "${smk[@]}" build_llama_cpp
build_rc=$? build_s=$(($(date +%s) - b0))
echo "build: exit $build_rc after ${build_s} s"
if [ "$build_rc" = 0 ]; then
  timeout --signal=INT --kill-after=20 "$(($(left) - 75))" "${smk[@]}" measurements
  echo "study: exit $? with $(left) s of the budget left"
  model=resources/models/llama31-8b-synthetic/Q4_0.gguf
  if [ -f "$model" ] && [ "$(left)" -gt 70 ]; then
    timeout 60 $PY benchmarks/fidelity.py --build "$BUILD" --model "$model" --gpus 0 --n-gpu-layers 99 --n 8 \
      --tokens 256 --threads 8 --out .gpu/run
  fi
fi

cp "$BUILD/build.json" "$OUT/build.json" 2>/dev/null
extra=()
[ -f results/tables/decode_roofline.md ] && extra+=(--extra "Decode roofline (results/tables/decode_roofline.md)=results/tables/decode_roofline.md")
for f in .gpu/run/fidelity-*.md; do [ -f "$f" ] && extra+=(--extra "Harness benchmark: metered against bare decode ($f)=$f"); done
$PY benchmarks/gpu/summary.py --results results --build "$BUILD/build.json" --build-seconds "$build_s" "${extra[@]}" \
  > "$OUT/summary.md" || echo "no summary: see above"
tar czf "$OUT/results.tar.gz" --exclude='*.gguf' results logs .gpu/run "$BUILD/build.json" 2>/dev/null
echo "done in $(($(date +%s) - t0)) s; under \$OUT: $(ls "$OUT" | tr '\n' ' ')"
