#!/usr/bin/env bash
# One benchmark phase on a single-GPU machine without registry or internet access.
# Usage: [COMMIT=SHA] scripts/bench/bench_gpu.sh PHASE OUT_DIR [DATA_DIR]
#   PHASE: quality | speed | engines | check | scaling | scaling7b (each sized to finish within 10 minutes);
#   DATA_DIR defaults to .gpu/data (the anti_fraud JSONL files, copied in beside the checkout)
#   Needs the offline wheel bundle in .whl/ (gptqmodel 7.5.0 and what it needs, optimum, liger-kernel).
# Merge the phases' JSON files with: python scripts/bench/bench_merge.py OUT_DIR... --out docs/bench/DATE-CARD.json
set -euo pipefail
cd "$(dirname "$0")/../.."
phase=${1:?usage: bench_gpu.sh PHASE OUT_DIR [DATA_DIR]}
out=${2:?usage: bench_gpu.sh PHASE OUT_DIR [DATA_DIR]}
data=${3:-.gpu/data}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export GPTQMODEL_CPU_WORKERS=${GPTQMODEL_CPU_WORKERS:-$(nproc)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 scripts/bench/bench_gpu.py --phase "$phase" --data "$data" --out "$out"
