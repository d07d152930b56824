#!/usr/bin/env bash
# One GPU run: build the extension, the two floors, every test at full size, every benchmark.
# Logs and JSON go to $OUT (default ./gpu_out). Uses the machine's python3 with torch installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
PY=${PY:-python3}
status=0
step() { echo "== $1"; shift; "$@" || { echo "!! failed: $*"; status=1; }; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
step build bash -c "$PY -m pip install --no-build-isolation --no-deps -e . > '$OUT/build.log' 2>&1"
step info bash -c "$PY -m t2i_fast.info | tee '$OUT/info.txt'"
step floors $PY benchmarks/floors.py --json "$OUT/floors.json"
step tests bash -c "$PY -m pytest tests -q -x -p no:cacheprovider ${TEST_ARGS:-} 2>&1 | tee '$OUT/tests.log' | tail -25"
step bench bash -c "$PY -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider \
  --benchmark-json='$OUT/bench.json' ${BENCH_ARGS:-} > '$OUT/bench.log' 2>&1; tail -5 '$OUT/bench.log'"
step report $PY benchmarks/report.py "$OUT/bench.json" --floors "$OUT/floors.json" --out "$OUT/report.md"
tail -60 "$OUT/report.md" 2>/dev/null
exit $status
