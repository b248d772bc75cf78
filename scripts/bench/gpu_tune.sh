#!/usr/bin/env bash
# `fraudq tune` on the fine-tuned real model that scripts/bench/gpu_real_model.sh left in WORK, on the same warm
# single-GPU machine: validation split off train.jsonl (labelled; the chat-format calibration file has no
# labels), a 10-bit budget so the 8-bit recipes compete, the winner reported on test0819.jsonl.
# Usage: [COMMIT=SHA] scripts/bench/gpu_tune.sh OUT_DIR [WORK (default /tmp/fraudq-real)] [DATA_DIR (default .gpu/data)]
#   Candidates: scripts/bench/tune_real_model.toml. Writes OUT_DIR/tune.json, tune.md, the plot, tune.log, wall.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: gpu_tune.sh OUT_DIR [WORK] [DATA_DIR]}
work=${2:-/tmp/fraudq-real}
data=${3:-.gpu/data}
model=$work/smollm2-fraud
[ -f "$model/config.json" ] || { echo "gpu_tune.sh: error: $model is missing; run gpu_real_model.sh first" >&2; exit 2; }
if [ -d .whl ] && [ ! -d /tmp/site/gptqmodel ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# GPTQModel's automatic kernel choice tries to download one; name it.
export FRAUDQ_BACKEND=triton FRAUDQ_WORK_DIR=$work/tune-runs
mkdir -p "$out"
start=$(date +%s)
rc=0
python3 -m fraudq tune --model "$model" --calib-data "$data/train.jsonl" --test-data "$data/test0819.jsonl" \
  --bits 4,8 --budget-bits 9 --candidates scripts/bench/tune_real_model.toml 2>&1 | tee "$out/tune.log" || rc=$?
end=$(date +%s)
for f in "$FRAUDQ_WORK_DIR"/tune/tune.json "$FRAUDQ_WORK_DIR"/tune/tune.md "$FRAUDQ_WORK_DIR"/tune/*.png; do
  [ -f "$f" ] && cp "$f" "$out/"
done
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo none)
printf '{"phase": "tune-real-model", "date": "%s", "commit": "%s", "gpu": "%s", "wall_s": %s, "rc": %s}\n' \
  "$(date +%F)" "${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" "$gpu" "$((end - start))" "$rc" > "$out/wall.json"
exit $rc
