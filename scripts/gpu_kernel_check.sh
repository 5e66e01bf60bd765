#!/usr/bin/env bash
# On a CUDA machine: the kernel tests on the GPU, a profile, 2B = 262,144, and the loss benchmark.
# Logs and JSON go to ${OUT:-gpu_out}/ (copy the JSON into bench/results/ to keep it).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout ${TEST_TIMEOUT:-200} python -m pytest -q --maxfail=10 tests/test_kernel_loss.py tests/test_kernel_quantile.py \
    tests/test_kernel_memory.py tests/test_kernel_fp32_dot.py tests/test_hex_loss.py -p no:cacheprovider 2>&1 | tail -n 40 | tee "$OUT/tests.log"
# one tile configuration for all passes (they must agree bit for bit), 2B = 8,192 and 65,536
timeout ${SWEEP_TIMEOUT:-90} python -m bench._tile_sweep "$OUT/tile_sweep.json" 2>&1 | tail -n 14 | tee "$OUT/sweep.log"
timeout ${PROFILE_TIMEOUT:-60} python -m bench._loss_profile 512 8192 > "$OUT/profile.log" 2>&1
timeout ${BIG_TIMEOUT:-80} python -m bench._loss_big 262144 2>&1 | tee "$OUT/big.log"
timeout ${BENCH_TIMEOUT:-240} python -m pytest -q bench/test_loss_bench.py --benchmark-only \
    -p no:cacheprovider --benchmark-columns=median,rounds -s 2>&1 | tail -n 30 | tee "$OUT/bench.log"
cp bench/results/loss_NVIDIA*.json "$OUT/" 2>/dev/null || true
# fp32 A/B: the same fp32 kernel cases with the FMA dot instead of tf32x3 (kernels/config.py
# FP32_DOT); its JSON (machine.fp32_dot = "ieee") goes to $OUT/fp32_ieee/, not bench/results/
mkdir -p "$OUT/fp32_ieee"; ls bench/results/loss_NVIDIA*.json > "$OUT/fp32_ieee/before.txt" 2>/dev/null
HEXFAST_FP32_DOT=ieee timeout ${FP32_TIMEOUT:-60} python -m pytest -q bench/test_loss_bench.py --benchmark-only \
    -k "triton and float32" -p no:cacheprovider --benchmark-columns=median,rounds -s 2>&1 | tail -n 12 \
    | tee "$OUT/bench_fp32_ieee.log"
for f in bench/results/loss_NVIDIA*.json; do
  grep -qxF "$f" "$OUT/fp32_ieee/before.txt" 2>/dev/null || mv "$f" "$OUT/fp32_ieee/" 2>/dev/null
done

# ---- training step (issue 14; scripts/gpu_step_check.sh, separate from the kernel checks above) ----
# The step/loader grid; bound by STEP_TIMEOUT (default 240 s). STEP_CHECK=0 leaves it out.
if [ "${STEP_CHECK:-1}" = 1 ]; then
  bash scripts/gpu_step_check.sh "$OUT"
fi
