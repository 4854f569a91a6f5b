#!/usr/bin/env bash
# The GPU check: plcli's GPU path on one CUDA device, in one short run (under 10 minutes on an H100).
#
#   OUT=gpu-out bash scripts/gpu_check.sh
#
# 1. the GPU-marked tests; 2. pretraining throughput, end-to-end (cached views) against model-only,
# in fp32 and bf16-mixed; 3. `make demo`'s pipeline with the default trainer options (accelerator
# auto, so the GPU) on freshly generated espeak-ng demo data; 4. the fast test suite on a machine
# that has a GPU. Each step has its own time limit; logs and JSON land in $OUT.
# PYTHON names the interpreter that has plcli and its dependencies (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
WORK=${WORK:-$(mktemp -d)}
DEMO_TRAIN=${DEMO_TRAIN:-2000}
ACCEL=${ACCEL:-gpu}
mkdir -p "$OUT"
step() {  # step NAME LIMIT_S CMD...: run with a limit, log to $OUT/NAME.log, record rc and seconds
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/steps.txt"
    tail -n 15 "$OUT/$name.log"
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  nproc; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"; } | tee "$OUT/machine.txt"
step gpu-tests 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests
for prec in 32-true bf16-mixed; do
    step "pretrain-throughput-$prec" 120 "$PY" scripts/bench_pretrain.py --accelerator "$ACCEL" \
        --precision "$prec" --clips 2048 --steps 30 --online-workers 0 --json "$OUT/pretrain-$prec.json"
done
step demo 300 "$PY" scripts/demo_pipeline.py --demo-dir "$WORK/demo" --runs "$WORK/runs" \
    -- --train "$DEMO_TRAIN" --engines espeak
cp "$WORK"/runs/eval-*.json "$OUT/" 2>/dev/null || true
step fast-tests 150 "$PY" -m pytest -q -p no:cacheprovider -x tests
