#!/usr/bin/env bash
# On a CUDA machine: the training-step grid of issue 14 (bench/test_step_bench.py): images/s, data
# wait and host syncs per step for {torch, triton} x {torchvision, dali} x {eager, reduce-overhead} at
# batch 256 and 1024, and the loaders alone at 32 and 224 px. JSON and Markdown go to OUT_DIR.
#
#   bash scripts/gpu_step_check.sh [OUT_DIR]        (default ${OUT:-gpu_out}; also the last section
#                                                    of scripts/gpu_kernel_check.sh)
# DALI: when nvidia.dali does not import and DALI_PARTS (default /tmp/dali) holds the parts made by
# scripts/prepare_dali_wheels.sh, they are installed first (bench/results/README.md, "DALI").
# DALI_INSTALL_TIMEOUT (s, default 150) bounds that install, STEP_TIMEOUT (s, default 240 alone, 120
# as a stage of gpu_kernel_check.sh, whose deadline also bounds this script) the grid; the JSON is rewritten after every case, so a cut
# run keeps the cases it finished, most important first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PARTS=${DALI_PARTS:-/tmp/dali}
if ! python -c "import nvidia.dali" 2>/dev/null; then
  if ls "$PARTS"/dali-wheels.tar.part-* > /dev/null 2>&1; then
    timeout "${DALI_INSTALL_TIMEOUT:-150}" bash scripts/install_dali_wheels.sh "$PARTS" 2>&1 | tail -n 5 \
      | tee "$OUT/dali_install.log"
  else
    echo "DALI is not installed and $PARTS holds no parts: the dali cases are skipped" | tee "$OUT/dali_install.log"
  fi
fi
timeout "${STEP_TIMEOUT:-240}" python -m bench.test_step_bench "$OUT" 2>&1 | tail -n 60 | tee "$OUT/step.log"
