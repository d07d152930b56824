#!/usr/bin/env bash
# One GPU validation run from a bare machine (torch and triton installed, no network), within
# GPU_CHECK_SECONDS (default 525 s): device, build, info, floors, the GPU tests at full size
# (both kernel families, every backend), the benchmark cases of the record, the other op
# benchmarks, the model benchmarks, then the record and the report.
#
#   COMMIT=<sha> OUT=<dir> bash benchmarks/gpu_check.sh     (or `make gpu-check` in a checkout)
#
# The copy of the tree on a GPU machine has no .git: pass the commit of the tree in COMMIT (the
# Makefile does, from git, with "+changes" when tracked files differ from it). Everything goes
# to $OUT (default ./gpu_out), the 8 FILES: build.log (device, build, info), floors.json,
# tests.log, tests.json (the tests' --validation-json counts), bench.log, bench.json, report.md
# and record.json (benchmarks/record.py: commit it under the directory that step prints).
# Each step has its own time budget, cut so that the run ends in time with RESERVE seconds left
# for the record and the report; a step that fails, times out or finds no time or no GPU left
# marks the run failed (exit 1) and the later steps still run and write their files.
# TEST_ARGS and BENCH_ARGS add pytest arguments to the tests and to every benchmark run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
PY=${PY:-python3}
LIMIT=${GPU_CHECK_SECONDS:-525}
RESERVE=40  # the record and report steps, and the 20 s a step may take to stop when cut
COMMIT=${COMMIT:-}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export T2I_FAST_CUDA=${T2I_FAST_CUDA:-1} PYTHONUNBUFFERED=1
FILES=(build.log floors.json tests.log tests.json bench.log bench.json report.md record.json)
mkdir -p "$OUT"
(cd "$OUT" && rm -f "${FILES[@]}")  # nothing of an earlier run mixes with this one
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STEPS=$WORK/steps.tsv
: > "$STEPS"
status=0
have_gpu=0

# step NAME BUDGET NEEDS LOG COMMAND...: NEEDS is gpu, any, or final (any, and may use the
# reserve); the command's output is appended to $OUT/LOG.
step() {
    local name=$1 budget=$2 needs=$3 log=$OUT/$4 start=$SECONDS rc note="" left
    shift 4
    left=$((LIMIT - SECONDS))
    [[ $needs == final ]] || left=$((left - RESERVE))
    ((budget > left)) && budget=$left
    echo "== $name (up to ${budget}s)" | tee -a "$log"
    if [[ $needs == gpu && $have_gpu == 0 ]]; then
        rc=-1 note="not run: needs a CUDA device, and none is visible"
    elif ((budget < 5)); then
        rc=-1 note="not run: no time left of the ${LIMIT}s"
    else
        # SIGINT first: pytest then ends its session and still writes its JSON.
        timeout -s INT -k 20 "$budget" bash -c '"$@"' "$name" "$@" >> "$log" 2>&1
        rc=$?
        ((rc == 124 || rc == 137)) && note="timed out after ${budget}s"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$note" >> "$STEPS"
    if ((rc != 0)); then
        status=1
        echo "!! $name failed (exit $rc${note:+: $note}); see $log" | tee -a "$log"
    fi
    return $((rc != 0))
}

device() {
    if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    $PY -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'
print(torch.cuda.get_device_name(0))"
}

benchmarks() {  # benchmarks JSON PYTEST_ARGS...
    local json=$1
    shift
    $PY -m pytest "$@" --benchmark-only -q -p no:cacheprovider --benchmark-json="$json" \
        ${BENCH_ARGS:-}
}

report() {
    if [[ ! -f $OUT/bench.json ]]; then
        echo "no bench.json: no benchmark step wrote results"
        return 1
    fi
    local floors=()
    [[ -f $OUT/floors.json ]] && floors=(--floors "$OUT/floors.json")
    $PY benchmarks/report.py "$OUT/bench.json" ${floors[@]+"${floors[@]}"} --out "$OUT/report.md" \
        > /dev/null
}

export -f device benchmarks report  # run by `timeout` in a child shell
export PY OUT
step device 60 any build.log device && have_gpu=1
step build 240 gpu build.log $PY -m pip install --no-build-isolation --no-deps -e .
step info 30 any build.log $PY -m t2i_fast.info
step floors 60 gpu bench.log $PY benchmarks/floors.py --json "$OUT/floors.json"
step tests 240 gpu tests.log $PY -m pytest tests -m "gpu or not slow" -q -p no:cacheprovider \
    --validation-json "$OUT/tests.json" ${TEST_ARGS:-}
step bench-record 120 gpu bench.log benchmarks "$WORK/bench_record.json" benchmarks \
    --ignore=benchmarks/test_bench_model.py -m record
step bench-ops 240 gpu bench.log benchmarks "$WORK/bench_ops.json" benchmarks \
    --ignore=benchmarks/test_bench_model.py -m "not record"
step bench-model 180 gpu bench.log benchmarks "$WORK/bench_model.json" \
    benchmarks/test_bench_model.py
step record 20 final bench.log $PY benchmarks/record.py --out-dir "$OUT" --tests "$OUT/tests.json" \
    --steps "$STEPS" --commit "$COMMIT" --bench "$WORK/bench_record.json" \
    "$WORK/bench_ops.json" "$WORK/bench_model.json"
step report 10 final bench.log report

[[ -f $OUT/report.md ]] && tail -40 "$OUT/report.md"
ls -l "$OUT"
echo "== steps (exit code, seconds, note)"
column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
grep -h "^record:" "$OUT/bench.log" 2>/dev/null | tail -1
exit $status
