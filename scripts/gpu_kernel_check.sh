#!/usr/bin/env bash
# On a CUDA machine, in one call: the kernel tests on the GPU, the loss grid, the training-step grid,
# 2B = 262,144, the tile sweep, the fp32 dot A/B and a profile. Logs and JSON go to ${OUT:-gpu_out}/
# (copy the JSON into bench/results/ to keep it).
#
# One deadline bounds the whole script: BUDGET seconds (default 450, i.e. 7.5 minutes, so that one
# call fits a short device lease with room for the machine's start). The stages run most important
# first; each gets the smaller of its own cap and the time left, and a stage with under MIN_STAGE
# seconds left (default 20) is skipped and says so in $OUT/stages.txt. A cut stage keeps what it
# wrote (the benchmarks rewrite their JSON after every case). STEP_CHECK=0 leaves the step grid out.
#
#   OUT=out BUDGET=450 bash scripts/gpu_kernel_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-450}
MIN_STAGE=${MIN_STAGE:-20}
DEADLINE=$(( $(date +%s) + BUDGET ))
: > "$OUT/stages.txt"
ls bench/results/loss_*.json > "$OUT/results_before.txt" 2>/dev/null  # committed files are not copied

# stage NAME CAP_SECONDS COMMAND...: run COMMAND under the smaller of CAP and the time left
stage() {
  local name=$1 cap=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  if [ "$left" -lt "$MIN_STAGE" ]; then
    echo "$name: skipped, ${left} s left of the ${BUDGET} s budget" | tee -a "$OUT/stages.txt"
    return 0
  fi
  local t=$(( cap < left ? cap : left )) start
  start=$(date +%s)
  timeout "$t" "$@"
  local rc=$?
  echo "$name: rc $rc, $(( $(date +%s) - start )) s (limit $t s)" | tee -a "$OUT/stages.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
git log -1 --format='commit %H %cd' 2>/dev/null | tee -a "$OUT/gpu.txt"

# 1. correctness on the GPU first: nothing measured below means anything if these fail
stage tests "${TEST_TIMEOUT:-150}" bash -c "python -m pytest -q --maxfail=10 tests/test_kernel_loss.py \
  tests/test_kernel_quantile.py tests/test_kernel_memory.py tests/test_kernel_fp32_dot.py tests/test_hex_loss.py \
  -p no:cacheprovider 2>&1 | tail -n 40 | tee '$OUT/tests.log'"
# 2. the loss grid against eager, torch.compile and the three plain matmuls (same process)
stage loss_grid "${BENCH_TIMEOUT:-150}" bash -c "python -m pytest -q bench/test_loss_bench.py --benchmark-only \
  -p no:cacheprovider --benchmark-columns=median,rounds -s 2>&1 | tail -n 30 | tee '$OUT/bench.log'"
for f in bench/results/loss_*.json; do  # the file(s) this run wrote
  grep -qxF "$f" "$OUT/results_before.txt" 2>/dev/null || cp "$f" "$OUT/" 2>/dev/null
done
# 3. the training step (issue 14; its own script, also runnable alone)
if [ "${STEP_CHECK:-1}" = 1 ]; then
  stage step "${STEP_TIMEOUT:-120}" env STEP_TIMEOUT="${STEP_TIMEOUT:-120}" bash scripts/gpu_step_check.sh "$OUT"
fi
# 4. memory and time at 2B = 262,144
stage big "${BIG_TIMEOUT:-45}" bash -c "python -m bench._loss_big 262144 2>&1 | tee '$OUT/big.log'"
# 5. one tile configuration for all passes (they must agree bit for bit), 2B = 8,192 and 65,536
stage sweep "${SWEEP_TIMEOUT:-60}" bash -c "python -m bench._tile_sweep '$OUT/tile_sweep.json' 2>&1 | tail -n 14 \
  | tee '$OUT/sweep.log'"
# 6. fp32 A/B: the same fp32 kernel cases with the FMA dot instead of tf32x3 (kernels/config.py
# FP32_DOT); its JSON (machine.fp32_dot = "ieee") goes to $OUT/fp32_ieee/, not bench/results/
mkdir -p "$OUT/fp32_ieee"; ls bench/results/loss_*.json > "$OUT/fp32_ieee/before.txt" 2>/dev/null
stage fp32_ieee "${FP32_TIMEOUT:-45}" env HEXFAST_FP32_DOT=ieee bash -c "python -m pytest -q bench/test_loss_bench.py \
  --benchmark-only -k 'triton and float32' -p no:cacheprovider --benchmark-columns=median,rounds -s 2>&1 \
  | tail -n 12 | tee '$OUT/bench_fp32_ieee.log'"
for f in bench/results/loss_*.json; do
  grep -qxF "$f" "$OUT/fp32_ieee/before.txt" 2>/dev/null || mv "$f" "$OUT/fp32_ieee/" 2>/dev/null
done
# 7. where the time goes (torch.profiler), 2B = 512 and 8,192
stage profile "${PROFILE_TIMEOUT:-40}" bash -c "python -m bench._loss_profile 512 8192 > '$OUT/profile.log' 2>&1"
cat "$OUT/stages.txt"
